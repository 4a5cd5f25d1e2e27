"""`GET /api/health`: liveness of the Function app; `?deep=1` adds readiness."""

from __future__ import annotations

import json
import logging

import azure.functions as func

bp = func.Blueprint()
NO_CONTEXT: func.Context = None  # type: ignore[assignment]  # the host passes it; tests may not
log = logging.getLogger("vaultrelay.functions")

_TRUE = {"1", "true", "yes"}


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest, context: func.Context = NO_CONTEXT) -> func.HttpResponse:
    """Liveness: answers 200 while the worker runs; no store is contacted.

    With `?deep=1`, readiness: 200 when the config loads and every store's identity can get a
    token for each audience it needs, else 503; `{"status": ...}` only, unless the caller is an
    admin (its bearer token): then the stores and audiences too, never values."""
    if (req.params.get("deep") or "").strip().lower() in _TRUE:
        from core import telemetry
        from functions.http import internal_error

        with telemetry.invocation(context, "health"):
            try:
                return _readiness(req)
            except Exception:  # a bug: logged with its traceback, answered without detail
                log.exception("GET /api/health?deep=1 failed")
                return internal_error()
    return func.HttpResponse(
        json.dumps({"status": "ok"}),
        status_code=200,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _readiness(req: func.HttpRequest) -> func.HttpResponse:
    """Readiness (core.app.readiness): 200 or 503; the detail only to an admin."""
    from core.app.readiness import readiness
    from core.runtime import ConfigUnavailable, live_runtime
    from functions.http import health_admin, json_response, lowered

    live = live_runtime()
    try:
        runtime = live.current()
    except ConfigUnavailable as exc:
        log.error("readiness: %s", exc)
        # No config: no admin list either, so nobody gets more than the status.
        return json_response(503, {"status": "unavailable"})
    ready, detail = readiness(runtime, live.source_status())
    status = 200 if ready else 503
    if not health_admin(runtime, lowered(req)):
        return json_response(status, {"status": detail["status"]})
    return json_response(status, detail)
