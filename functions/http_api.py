"""The HTTP API: `GET /api/envs/{env}` and the admin routes, each calling its own use case in
core/app (fetch_env, sync, rotate, drift, status); functions/http.py holds what they share
(JSON answers, the current runtime, callers, format negotiation).

Only `azure.functions` is imported here; the core loads on the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions.http import Answered, internal_error, json_response

bp = func.Blueprint()
log = logging.getLogger("vaultrelay.functions")

FORBIDDEN_BODY = {"error": "forbidden", "message": "the caller may not fetch this env, or it does not exist"}
AUDIT_UNAVAILABLE_BODY = {"error": "unavailable", "message": "the fetch could not be audited, so nothing is returned; try again later"}

# The host always passes `context` (invocation and trace ids for the logs); tests may call a
# function with the request alone.  Annotated as Context (not Optional): the worker requires that.
NO_CONTEXT: func.Context = None  # type: ignore[assignment]


@bp.route(route="envs/{env}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_env(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """The resolved env as JSON, dotenv or shell (format query or Accept); callers authenticate
    with an Entra bearer token (or App Service Authentication) and must be in the env's access list."""
    from core import telemetry

    with telemetry.invocation(context, "get_env"):
        env = req.route_params.get("env", "")
        try:
            telemetry.annotate(env=env)
            response = _get_env(req, env)
            telemetry.annotate(outcome=str(response.status_code))
            log.info("GET /api/envs/%s: %d", telemetry.safe_name(env), response.status_code)
        except Exception:  # a bug: logged with its traceback, answered without detail
            log.exception("GET /api/envs/{env} failed")
            return internal_error()
        return response


def _get_env(req: func.HttpRequest, env: str) -> func.HttpResponse:
    from core.app import fetch_env as use_case
    from core.render import MEDIA_TYPES
    from functions import http

    headers = http.lowered(req)
    try:
        runtime = http.runtime("env fetch")
        principal = http.caller(runtime, headers, "env fetch", env=env)
        use_case.authorize(runtime, env, principal)
        fmt = http.negotiated_format(dict(req.params), headers)
        fetched = use_case.fetch_env(runtime, env, principal, fmt)
    except Answered as answered:
        return answered.response
    except use_case.FetchRefused:
        return json_response(403, FORBIDDEN_BODY)
    except use_case.ResolutionFailed as exc:
        return json_response(502, {"error": "resolution_failed", "env": env, "failures": exc.failures})
    except use_case.NotRepresentable as exc:
        return json_response(406, {"error": "not_acceptable", "message": f"{exc}; ask for format=json"})
    except use_case.AuditUnavailable:
        return json_response(503, AUDIT_UNAVAILABLE_BODY, http.RETRY_LATER)
    return func.HttpResponse(fetched.text.encode(), status_code=200, mimetype=MEDIA_TYPES[fetched.format], charset="utf-8",
                             headers={**http.NO_STORE, "Vary": "Accept, Authorization"})


def _admin(req: func.HttpRequest, context: func.Context | None, function: str, action: str, subject: str,
           run: Callable[[Any, Any], tuple[int, Any]], *, env: str | None = None) -> func.HttpResponse:
    """An admin route: the current runtime, an admin caller, then `run(runtime, principal)` ->
    (status, document); the use case's errors are converted here (a 400 is the request's own
    problem, not an action: not audited).  Answers carry names, never values."""
    from core import telemetry
    from core.errors import ConfigError, NotFoundError
    from functions import http

    with telemetry.invocation(context, function, env=env):
        try:
            try:
                runtime = http.runtime(action)
                principal = http.admin_caller(runtime, req, action, subject)
                status, document = run(runtime, principal)
            except Answered as answered:
                return answered.response
            except NotFoundError as exc:
                return json_response(404, {"error": "not_found", "message": str(exc)})
            except ConfigError as exc:
                return json_response(409, {"error": "not_configured", "message": "; ".join(p.message for p in exc.problems)})
            if status != 400:
                http.record_admin(runtime, principal.actor, action, subject, {"outcome": str(status)})
            return json_response(status, document)
        except Exception:
            log.exception("admin %s failed", action)
            return internal_error()


def _sync(req: func.HttpRequest, env: str | None) -> Callable[[Any, Any], tuple[int, Any]]:
    def run(runtime: Any, principal: Any) -> tuple[int, Any]:
        from core.app.fetch_env import printable
        from core.app.sync import sync
        from functions.http import flag

        dry_run = flag(req, "dry_run")
        outcome = sync(runtime, env, dry_run=dry_run, trigger=printable(f"http:{principal.actor}")[:200])
        if outcome.items is not None:
            return 202, {"enqueued": [{"id": i.id, "envs": i.envs} for i in outcome.items], "envs": sum(len(i.envs) for i in outcome.items)}
        report = outcome.report
        assert report is not None
        return (200 if report.ok else 502), {"ok": report.ok, "dry_run": dry_run, "minted": report.minted, "failures": report.failures,
                                             "targets": [t.as_dict() for t in report.targets]}

    return run


@bp.route(route="sync", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def sync_all(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Sync every env that has targets now (admins only); answers what changed, by name."""
    return _admin(req, context, "sync_all", "sync", "", _sync(req, None))


@bp.route(route="sync/{env}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def sync_env(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Sync one env now (admins only)."""
    env = req.route_params.get("env", "")
    return _admin(req, context, "sync_env", "sync", env, _sync(req, env), env=env)


@bp.route(route="rotate/{name}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def rotate(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Rotate one key rotation (e.g. `storage:myaccount`) now if due, or with `?force=1` (admins only)."""
    from functions.http import flag

    name = req.route_params.get("name", "")

    def run(runtime: Any, principal: Any) -> tuple[int, Any]:
        from core.app.rotate import rotate

        reports = rotate(runtime, name, force=flag(req, "force"))
        return (502 if any(r.outcome == "error" for r in reports) else 200), {"rotations": [r.as_dict() for r in reports]}

    return _admin(req, context, "rotate", "rotate", name, run)


@bp.route(route="drift/{env}/{target}/accept", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def accept_drift(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Accept the drift recorded for one target (every drifted name, or `?names=A,B`) (admins only)."""
    env, target = req.route_params.get("env", ""), req.route_params.get("target", "")

    def run(runtime: Any, principal: Any) -> tuple[int, Any]:
        from core.app.drift import accept_drift

        names = [n for n in str(req.params.get("names", "")).split(",") if n]
        accepted = accept_drift(runtime, env, target, names)
        if any(t.outcome == "busy" for t in accepted):
            return 409, {"error": "busy", "message": f"a sync of env {env} is running; try again"}
        return (502 if any(t.outcome == "error" for t in accepted) else 200), {"targets": [t.as_dict() for t in accepted]}

    return _admin(req, context, "accept_drift", "accept_drift", env, run, env=env)


@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def status(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Per env and target: last push, drift, last error; rotations (admins only, no values)."""

    def run(runtime: Any, principal: Any) -> tuple[int, Any]:
        from core.app.status import status
        from core.expiry import DEFAULT_WINDOW, parse_window

        try:
            asked = req.params.get("expiring")
            window = parse_window(asked) if asked else DEFAULT_WINDOW
        except ValueError as exc:
            return 400, {"error": "bad_request", "message": f"expiring: {exc}"}
        found = status(runtime, window)
        document: dict[str, Any] = {"targets": found.targets, "rotations": found.rotations, "poisoned": found.poisoned,
                                    "expiry_window_seconds": int(window.total_seconds()),
                                    "expiring": [i.as_dict() for i in found.expiring]}
        if found.expiry_error is not None:
            log.warning("expiry view unavailable: %s", type(found.expiry_error).__name__)
            document["expiry_error"] = f"expiry view unavailable: {type(found.expiry_error).__name__}"
        return 200, document

    return _admin(req, context, "status", "status", "", run)
