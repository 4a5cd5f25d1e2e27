"""Use case: fetch an env (`GET /api/envs/{env}`) for an authenticated caller.

A caller not in the env's `access:` list and an env that does not exist get the same refusal, so
callers cannot find out which envs exist.  If any variable fails, nothing is handed out (never a
partial bundle): the variables' names and failure reasons are.  Every fetch is audited (keyed
fingerprints and versions, never values); a fetch whose audit record cannot be stored hands out
nothing (fails closed).  The HTTP edge (functions/http_api.py) authenticates the caller, picks the
format and maps the outcome and these errors to responses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from core import telemetry
from core.access import Principal, may_fetch
from core.errors import NotFoundError
from core.render import UnrepresentableValue, render
from core.runtime import Runtime
from core.state.audit import AuditWriteError

log = logging.getLogger("vaultrelay.api")

FETCH_ACTION = "env.fetch"
MAX_ENV_LENGTH = 128


class FetchRefused(Exception):
    """The caller may not fetch the env, or it does not exist (one answer for both)."""


class ResolutionFailed(Exception):
    """Variables of the env did not resolve; `failures` holds their names and reasons (never values)."""

    def __init__(self, env: str, failures: list[dict[str, str]]) -> None:
        super().__init__(f"env {env}: {', '.join(f['name'] for f in failures)} did not resolve")
        self.env = env
        self.failures = failures


class NotRepresentable(Exception):
    """A value cannot be written in the format asked for (names and reasons only)."""


class AuditUnavailable(Exception):
    """The fetch could not be audited, so nothing is handed out."""


@dataclass(frozen=True)
class Fetched:
    text: str
    format: str


def printable(env: str) -> str:
    """`env` as audit records and logs show it: escaped when not printable, at most MAX_ENV_LENGTH."""
    return (env if env.isprintable() else env.encode("unicode_escape").decode())[:MAX_ENV_LENGTH]


def audit(runtime: Runtime, actor: str, env: str, detail: dict[str, str], *, required: bool = False) -> None:
    """Record a fetch.  A failure is logged; with `required` (values are about to be handed out)
    it is raised as well.

    Raises:
        AuditWriteError: `required` and the record could not be stored.
    """
    safe_env = printable(env)
    try:
        runtime.audit_sink().record(actor, FETCH_ACTION, safe_env, detail)
    except Exception as exc:  # a broken sink must not turn a fetch into a 500; it is logged
        if not isinstance(exc, AuditWriteError):
            log.exception("audit sink failed for %s on env %s", FETCH_ACTION, safe_env)
        if required:
            raise AuditWriteError(f"{FETCH_ACTION} on {safe_env} was not audited") from None


def unauthenticated(runtime: Runtime, env: str, status: int, error: str | None) -> None:
    """Count (and log) a request without a valid token: an embedder's sink gets a record each;
    the audit table gets one row per cause and window, not one per request."""
    if runtime.audit_overridden:
        audit(runtime, "anonymous", env, {"outcome": "unauthenticated", "status": str(status)})
    else:
        runtime.anonymous_audit().record(f"{status}-{error or 'no_token'}", printable(env), {"status": str(status)})


def authorize(runtime: Runtime, env: str, principal: Principal) -> None:
    """Whether `principal` may fetch `env` (refusals are audited).

    Raises:
        FetchRefused: not in the env's access list, or no such env.
    """
    config = runtime.config
    if env not in config.envs or not may_fetch(config.access_ids, env, principal):
        audit(runtime, principal.actor, env, {"outcome": "denied", "via": principal.via})
        raise FetchRefused(env)


def fetch_env(runtime: Runtime, env: str, principal: Principal, fmt: str) -> Fetched:
    """The env resolved and rendered as `fmt` (json, dotenv, shell) for `principal`, audited.

    Raises:
        FetchRefused: the caller may not fetch it, or it does not exist.
        ResolutionFailed: a variable did not resolve (nothing is handed out).
        NotRepresentable: a value cannot be written as `fmt`.
        AuditUnavailable: the fetch could not be audited (nothing is handed out).
    """
    authorize(runtime, env, principal)
    began = time.perf_counter()
    try:
        bundle = runtime.connections.resolve(env)
    except NotFoundError:
        audit(runtime, principal.actor, env, {"outcome": "denied", "via": principal.via})
        raise FetchRefused(env) from None
    telemetry.record_resolve(time.perf_counter() - began, failed=bool(bundle.failures))
    if bundle.failures:
        for failure in bundle.failures.values():
            telemetry.record_failure(failure.reason, "resolve")
        failures = [{"name": name, "reason": bundle.failures[name].reason} for name in sorted(bundle.failures)]
        for name in sorted(bundle.failures):
            log.warning("env %s: %s", env, bundle.failures[name])
        audit(runtime, principal.actor, env, {"outcome": "failed", "via": principal.via, "failed": ",".join(f["name"] for f in failures)})
        raise ResolutionFailed(env, failures)
    try:
        text = render(bundle.as_plain_dict(), fmt)
    except UnrepresentableValue as exc:
        # Names and reasons only; the caller can ask for a format that carries any value.
        audit(runtime, principal.actor, env, {"outcome": "not_representable", "via": principal.via, "format": fmt,
                                              "failed": ",".join(exc.problems)})
        raise NotRepresentable(str(exc)) from None
    prints, key_source = runtime.audit_fingerprinter()
    detail: dict[str, Any] = {"outcome": "ok", "via": principal.via, "format": fmt, "variables": str(len(bundle.values)),
                              "fingerprint_key": key_source}
    for name, item in sorted(bundle.values.items()):
        detail[f"fp.{name}"] = prints.of(item.value)
        if item.version:
            detail[f"version.{name}"] = str(item.version)
    try:
        audit(runtime, principal.actor, env, detail, required=True)
    except Exception:
        # No values without an audit record: fail closed (logged by the sink, without values).
        telemetry.record_failure("audit_unavailable", "audit")
        raise AuditUnavailable(env) from None
    return Fetched(text, fmt)
