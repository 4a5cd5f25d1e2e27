"""The health function, called through what function_app.py registers."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func


def test_health_is_registered_on_api_health_and_answers_ok(functions: dict[str, Any]) -> None:
    health = functions["health"]
    trigger = next(b for b in health.get_bindings() if b.type == "httpTrigger")
    assert trigger.route == "health"
    request = func.HttpRequest(method="GET", url="http://localhost/api/health", body=b"")
    response = health.get_user_function()(request)
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"
