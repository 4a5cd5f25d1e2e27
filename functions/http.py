"""What the HTTP functions share and `azure.functions` does not give: JSON answers with the
no-store headers, the current runtime (503 while the config cannot be loaded), callers
authenticated from the request's headers, and the format of `GET /api/envs/{env}` negotiated
from `?format=` or `Accept`.  Responses are `func.HttpResponse`; no values ever reach a log."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import azure.functions as func

log = logging.getLogger("vaultrelay.api")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"}
INTERNAL_ERROR = b'{"error": "internal", "message": "internal error"}\n'
UNAVAILABLE = {"error": "unavailable", "message": "the config cannot be loaded"}
RETRY_LATER = {"Retry-After": "30"}
TRUE = ("1", "true", "yes")


def json_response(status: int, document: Any, headers: Mapping[str, str] | None = None) -> func.HttpResponse:
    """`document` as the JSON body (sorted keys, a final newline) with the no-store headers."""
    return func.HttpResponse((json.dumps(document, sort_keys=True) + "\n").encode(), status_code=status,
                             mimetype="application/json", charset="utf-8", headers={**NO_STORE, **(headers or {})})


def internal_error() -> func.HttpResponse:
    return func.HttpResponse(INTERNAL_ERROR, status_code=500, mimetype="application/json", headers={"Cache-Control": "no-store"})


def lowered(req: func.HttpRequest) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in req.headers.items()}


def flag(req: func.HttpRequest, name: str) -> bool:
    return str(req.params.get(name, "")).lower() in TRUE


class Answered(Exception):
    """The request is answered before its use case runs (no config, no caller, not allowed)."""

    def __init__(self, response: func.HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def runtime(what: str) -> Any:
    """The runtime of the current config (core.runtime.live_runtime).

    Raises:
        Answered: 503, the config cannot be loaded.
    """
    from core.runtime import ConfigUnavailable, live_runtime

    try:
        return live_runtime().current()
    except ConfigUnavailable as exc:
        log.error("%s refused: %s", what, exc)
        raise Answered(json_response(503, UNAVAILABLE, RETRY_LATER)) from None


def caller(runtime: Any, headers: Mapping[str, str], what: str, *, env: str | None = None) -> Any:
    """The authenticated caller (core.access.Principal).  With `env` (an env fetch), a request
    without a valid token is counted for the audit.

    Raises:
        Answered: 401 / 400 (with a `WWW-Authenticate` challenge), or 503 when tokens cannot be checked.
    """
    from core.access import AuthError, AuthUnavailable

    try:
        return runtime.authenticator().authenticate(headers)
    except AuthError as exc:
        if env is not None:
            from core.app.fetch_env import unauthenticated

            unauthenticated(runtime, env, exc.status, exc.error)
        body = {"error": "unauthorized" if exc.status == 401 else "bad_request", "message": exc.description}
        raise Answered(json_response(exc.status, body, {"WWW-Authenticate": exc.www_authenticate})) from None
    except AuthUnavailable as exc:
        log.error("%s refused: %s", what, exc)
        raise Answered(json_response(503, {"error": "unavailable", "message": exc.public}, RETRY_LATER)) from None


def admin_caller(runtime: Any, req: func.HttpRequest, action: str, subject: str) -> Any:
    """The caller of an admin route, who must be in `api.admins` or carry the admin role.

    Raises:
        Answered: as `caller`, or 403 (audited).
    """
    from core.access import is_admin

    principal = caller(runtime, lowered(req), action)
    api = runtime.config.api
    if not is_admin(api.admin_ids, api.admin_role, principal):
        record_admin(runtime, principal.actor, action, subject, {"outcome": "denied"})
        raise Answered(json_response(403, {"error": "forbidden", "message": "this route needs an admin (api.admins or the admin role)"}))
    return principal


def health_admin(runtime: Any, headers: Mapping[str, str]) -> bool:
    """Whether the caller of a readiness check is an admin (anything else, a bad token included,
    is answered like an anonymous probe: health checks are never refused)."""
    from core.access import AuthError, AuthUnavailable, is_admin

    if "authorization" not in headers and not any(k.startswith("x-ms-client-principal") for k in headers):
        return False
    try:
        principal = runtime.authenticator().authenticate(headers)
    except (AuthError, AuthUnavailable):
        return False
    api = runtime.config.api
    return is_admin(api.admin_ids, api.admin_role, principal)


def record_admin(runtime: Any, actor: str, action: str, subject: str, detail: dict[str, str]) -> None:
    """Audit an admin route's call (`admin.<action>`); a failure is logged, never raised (the
    action already ran and its answer carries no values)."""
    from core.app.fetch_env import MAX_ENV_LENGTH
    from core.state.audit import AuditWriteError

    try:
        runtime.audit_sink().record(actor, f"admin.{action}", subject[:MAX_ENV_LENGTH], detail)
    except AuditWriteError:
        pass  # logged by the sink
    except Exception:
        log.exception("audit sink failed for admin.%s", action)


def negotiated_format(params: Mapping[str, str], headers: Mapping[str, str]) -> str:
    """The format of an env: `?format=` (json, dotenv, shell), else the best of `Accept`.

    Raises:
        Answered: 400 (an unknown `format`) or 406 (nothing in `Accept` can be served).
    """
    from core.render import FORMATS, negotiate

    requested = params.get("format")
    if requested is not None:
        if requested in FORMATS:
            return requested
        raise Answered(json_response(400, {"error": "bad_request", "message": f"format must be one of {', '.join(FORMATS)}"}))
    fmt = negotiate(headers.get("accept"))
    if fmt is None:
        raise Answered(json_response(406, {"error": "not_acceptable",
                                           "message": "no acceptable representation: use application/json, text/plain or text/x-shellscript"}))
    return fmt
