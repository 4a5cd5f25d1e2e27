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
        from functions.http_api import internal_error, to_http_response

        with telemetry.invocation(context, "health"):
            try:
                from core.app.http_api import default_api

                return to_http_response(default_api().readiness(dict(req.headers.items())))
            except Exception:  # a bug: logged with its traceback, answered without detail
                log.exception("GET /api/health?deep=1 failed")
                return internal_error()
    return func.HttpResponse(
        json.dumps({"status": "ok"}),
        status_code=200,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )
