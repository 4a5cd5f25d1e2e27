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


def test_deep_readiness_says_only_ok_or_not_to_anyone_but_an_admin(
    functions: dict[str, Any], seeded: Any, tmp_path: Any,
) -> None:
    """Stores, audiences and the config source name the deployment's identities and resources:
    anonymous probes, callers who are not admins and bad tokens get `{"status": ...}` only."""
    import os

    from core.runtime import LiveRuntime
    from core.state.audit import MemoryAuditSink
    from tests.functions.apihelpers import AUDIENCE, client_principal, foreign_token, request, serving, write_config

    config = write_config(tmp_path / "vaultrelay.yaml", seeded)
    health = functions["health"].get_user_function()
    admin_oid = seeded.identities["admin"].object_id
    callers = {
        "anonymous": {},
        "caller (fetches envs, not an admin)": {"Authorization": f"Bearer {seeded.issue_token('caller', AUDIENCE)}"},
        "admin's token for another audience": {"Authorization": f"Bearer {seeded.issue_token('admin', 'api://elsewhere')}"},
        "a token the tenant did not sign": {"Authorization": f"Bearer {foreign_token(seeded, kid='health-kid', identity='admin')}"},
        "forged App Service principal in bearer mode": {"X-MS-CLIENT-PRINCIPAL": client_principal([("oid", admin_oid)])},
        "garbage": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())
    with serving(api):
        for who, headers in callers.items():
            response = health(request("GET", "/api/health", params={"deep": "1"}, headers=headers))
            assert response.status_code == 200, who
            assert json.loads(response.get_body()) == {"status": "ok"}, who
            assert response.headers["Cache-Control"] == "no-store"
        detail = health(request("GET", "/api/health", params={"deep": "1"},
                                headers={"Authorization": f"Bearer {seeded.issue_token('admin', AUDIENCE)}"}))
        document = json.loads(detail.get_body())
        assert detail.status_code == 200 and document["status"] == "ok"
        assert document["config_source"] == {"kind": "file", "ok": True} and document["stores"]["azure"]["ok"] is True
        # the admin role works like the admin list
        role = seeded.issue_token("other", AUDIENCE, claims={"roles": ["VaultRelay.Admin"]})
        by_role = health(request("GET", "/api/health", params={"deep": "1"}, headers={"Authorization": f"Bearer {role}"}))
        assert "stores" in json.loads(by_role.get_body())
    api.close()
