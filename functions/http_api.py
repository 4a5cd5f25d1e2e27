"""`GET /api/envs/{env}`: an env's resolved bundle for an authorized caller (see core/app/http_api.py).

Only `azure.functions` is imported here; the engine loads on the first request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import azure.functions as func

if TYPE_CHECKING:
    from core.app.http_api import ApiResponse

bp = func.Blueprint()
log = logging.getLogger("vaultrelay.functions")

INTERNAL_ERROR = b'{"error": "internal", "message": "internal error"}\n'


# The host always passes `context` (invocation and trace ids for the logs); tests may call a
# function with the request alone.  Annotated as Context (not Optional): the worker requires that.
NO_CONTEXT: func.Context = None  # type: ignore[assignment]


@bp.route(route="envs/{env}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_env(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """The resolved env as JSON, dotenv or shell (format query or Accept); callers authenticate
    with an Entra bearer token (or App Service Authentication) and must be in the env's access list."""
    from core import telemetry

    with telemetry.invocation(context, "get_env"):
        try:
            from core.app.http_api import default_api

            response = default_api().fetch_env(
                req.route_params.get("env", ""), query=dict(req.params), headers=dict(req.headers.items()),
            )
        except Exception:  # a bug: logged with its traceback, answered without detail
            log.exception("GET /api/envs/{env} failed")
            return internal_error()
        return to_http_response(response)


def to_http_response(response: ApiResponse) -> func.HttpResponse:
    """A core.app.http_api.ApiResponse as the Functions host's response."""
    return func.HttpResponse(
        response.body, status_code=response.status, mimetype=response.media_type, charset="utf-8",
        headers=dict(response.headers),
    )


def internal_error() -> func.HttpResponse:
    return func.HttpResponse(INTERNAL_ERROR, status_code=500, mimetype="application/json", headers={"Cache-Control": "no-store"})


def _admin(action: str, req: func.HttpRequest, context: func.Context | None, function: str, **names: str) -> func.HttpResponse:
    from core import telemetry

    with telemetry.invocation(context, function, env=names.get("env")):
        try:
            from core.app.http_api import default_api

            response = default_api().admin(action, headers=dict(req.headers.items()), query=dict(req.params), **names)
        except Exception:
            log.exception("admin %s failed", action)
            return internal_error()
        return to_http_response(response)


@bp.route(route="sync", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def sync_all(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Sync every env that has targets now (admins only); answers what changed, by name."""
    return _admin("sync", req, context, "sync_all")


@bp.route(route="sync/{env}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def sync_env(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Sync one env now (admins only)."""
    return _admin("sync", req, context, "sync_env", env=req.route_params.get("env", ""))


@bp.route(route="rotate/{name}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def rotate(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Rotate one key rotation (e.g. `storage:myaccount`) now if due, or with `?force=1` (admins only)."""
    return _admin("rotate", req, context, "rotate", name=req.route_params.get("name", ""))


@bp.route(route="drift/{env}/{target}/accept", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def accept_drift(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Accept the drift recorded for one target (every drifted name, or `?names=A,B`) (admins only)."""
    return _admin("accept_drift", req, context, "accept_drift", env=req.route_params.get("env", ""),
                  name=req.route_params.get("target", ""))


@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def status(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Per env and target: last push, drift, last error; rotations (admins only, no values)."""
    return _admin("status", req, context, "status")
