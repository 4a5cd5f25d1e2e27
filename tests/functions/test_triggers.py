"""The timer, the Event Grid trigger and the admin routes, through what function_app.py registers,
against the sandbox (state in Azurite Tables, targets in the sandbox's Key Vault)."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
import yaml
from azure.functions.timer import TimerRequest
from azure.keyvault.secrets import SecretClient

from core.push import SyncEngine
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.functions.apihelpers import AUDIENCE, body_json, keyvault_event, request, serving, write_config


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def api(seeded: SandboxClient, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    """The example config, with this module's own state tables and target secret names."""
    path = write_config(tmp_path_factory.mktemp("triggers") / "vaultrelay.yaml", seeded)
    config = yaml.safe_load(path.read_text())
    config["state"]["table_prefix"] = f"t{tag}"
    config["targets"] = {"vault": {"type": "keyvault", "env": "production", "store": "azure", "vault": "kv-target", "prefix": f"fn-{tag}-"}}
    for name in ("staging", "broken"):
        config["envs"].pop(name, None)
        config["access"].pop(name, None)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)}, audit=MemoryAuditSink())
    with serving(api):
        yield api
    api.close()


@pytest.fixture(scope="module")
def target(seeded: SandboxClient) -> SecretClient:
    return SecretClient(seeded.vault_url("kv-target"), seeded.admin_credential())


def call(functions: dict[str, Any], name: str, req: func.HttpRequest) -> func.HttpResponse:
    return functions[name].get_user_function()(req)


def bearer(sandbox: SandboxClient, identity: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sandbox.issue_token(identity, AUDIENCE)}"}


def event(event_type: str, vault: str, name: str, *, event_id: str | None = None, version: str = "0" * 32) -> func.EventGridEvent:
    return func.EventGridEvent(
        id=event_id or str(uuid.uuid4()), topic=f"/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{vault}",
        subject=name, event_type=event_type, event_time=dt.datetime.now(dt.UTC), data_version="1",
        data={"Id": f"https://{vault}.vault.azure.net/secrets/{name}/{version}", "VaultName": vault, "ObjectType": "Secret",
              "ObjectName": name, "Version": version, "NBF": None, "EXP": None},
    )


def test_the_triggers_are_registered(functions: dict[str, Any]) -> None:
    timer = next(b for b in functions["sync_timer"].get_bindings() if b.type == "timerTrigger")
    assert timer.schedule == "%VAULTRELAY_SYNC_SCHEDULE%" and timer.use_monitor is True
    assert any(b.type == "eventGridTrigger" for b in functions["keyvault_events"].get_bindings())
    routes = {f: next(b for b in functions[f].get_bindings() if b.type == "httpTrigger").route
              for f in ("sync_all", "sync_env", "rotate", "status", "accept_drift")}
    assert routes == {"sync_all": "sync", "sync_env": "sync/{env}", "rotate": "rotate/{name}", "status": "status",
                      "accept_drift": "drift/{env}/{target}/accept"}


def test_admin_routes_need_an_admin(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient) -> None:
    assert call(functions, "sync_all", request("POST", "/api/sync")).status_code == 401
    denied = call(functions, "status", request("GET", "/api/status", headers=bearer(seeded, "caller")))
    assert denied.status_code == 403 and body_json(denied)["error"] == "forbidden"


def test_timer_syncs_then_an_unchanged_tick_writes_nothing(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, tag: str, target: SecretClient) -> None:
    timer = functions["sync_timer"].get_user_function()
    timer(TimerRequest(past_due=True))
    assert target.get_secret(f"fn-{tag}-database-password").value == "s3cr3t-db-password"
    engine = SyncEngine(api.current())
    writes = engine.state.writes
    seeded.reset_counters()
    timer(TimerRequest())
    assert engine.state.writes == writes
    assert not any(k.startswith("keyvault:Set") for k in seeded.counters()["by_endpoint"])


def test_admin_sync_status_and_rotate(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, tag: str) -> None:
    admin = bearer(seeded, "admin")
    synced = call(functions, "sync_env", request("POST", "/api/sync/production", headers=admin, route_params={"env": "production"}))
    assert synced.status_code == 200, synced.get_body()
    assert body_json(synced)["ok"] is True
    status = call(functions, "status", request("GET", "/api/status", headers=admin))
    document = body_json(status)
    assert status.status_code == 200 and document["targets"][0]["target"] == "vault" and document["targets"][0]["variables"] == 12
    assert "s3cr3t-db-password" not in status.get_body().decode()
    # The expiry view: what the example mints (SAS, tokens) expires soon and is renewed by vaultrelay.
    assert document["expiry_window_seconds"] == 30 * 86400
    minted = [i for i in document["expiring"] if i["kind"] in ("sas", "token")]
    assert minted and all(i["renewable"] and i["envs"] for i in minted)
    narrow = body_json(call(functions, "status", request("GET", "/api/status", headers=admin, params={"expiring": "1m"})))
    assert narrow["expiry_window_seconds"] == 60 and len(narrow["expiring"]) <= len(document["expiring"])
    bad = call(functions, "status", request("GET", "/api/status", headers=admin, params={"expiring": "soon"}))
    assert bad.status_code == 400 and "expiring" in body_json(bad)["message"]
    unknown = call(functions, "rotate", request("POST", "/api/rotate/storage:nope", headers=admin, route_params={"name": "storage:nope"}))
    assert unknown.status_code == 404 and "storage:sandboxstore" in body_json(unknown)["message"]
    missing_env = call(functions, "sync_env", request("POST", "/api/sync/nope", headers=admin, route_params={"env": "nope"}))
    assert missing_env.status_code == 404


def test_admin_accepts_drift_over_http(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, tag: str, target: SecretClient) -> None:
    admin = bearer(seeded, "admin")
    assert call(functions, "sync_env", request("POST", "/api/sync/production", headers=admin, route_params={"env": "production"})).status_code == 200
    name = f"fn-{tag}-database-password"
    target.set_secret(name, "edited-by-hand")  # no vaultrelay tags: drift, whatever the second
    synced = body_json(call(functions, "sync_env", request("POST", "/api/sync/production", headers=admin, route_params={"env": "production"})))
    assert synced["targets"][0]["drift"] == ["DATABASE_PASSWORD"] and synced["targets"][0]["writes"] == 0
    drifted = body_json(call(functions, "status", request("GET", "/api/status", headers=admin)))["targets"][0]
    assert drifted["drift"] == "DATABASE_PASSWORD" and drifted["drift_found"]["DATABASE_PASSWORD"]

    route = {"env": "production", "target": "vault"}
    path = "/api/drift/production/vault/accept"
    denied = call(functions, "accept_drift", request("POST", path, headers=bearer(seeded, "caller"), route_params=route))
    assert denied.status_code == 403
    unknown = call(functions, "accept_drift", request("POST", "/api/drift/production/nope/accept", headers=admin,
                                                      route_params={"env": "production", "target": "nope"}))
    assert unknown.status_code == 404
    accepted = call(functions, "accept_drift", request("POST", path, headers=admin, route_params=route))
    assert accepted.status_code == 200
    (row,) = body_json(accepted)["targets"]
    assert (row["outcome"], row["drift"]) == ("accepted", ["DATABASE_PASSWORD"])
    assert "edited-by-hand" not in accepted.get_body().decode()
    assert body_json(call(functions, "status", request("GET", "/api/status", headers=admin)))["targets"][0]["drift"] == ""
    assert target.get_secret(name).value == "edited-by-hand"


def test_new_secret_version_event_resyncs_the_env_once(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, tag: str, target: SecretClient) -> None:
    handler = functions["keyvault_events"].get_user_function()
    handler(event("Microsoft.KeyVault.SecretNewVersionCreated", "kv-source", "database-password"))  # settle
    SecretClient(seeded.vault_url("kv-source"), seeded.admin_credential()).set_secret("database-password", f"new-{tag}")
    delivered = event("Microsoft.KeyVault.SecretNewVersionCreated", "kv-source", "database-password")
    handler(delivered)
    assert target.get_secret(f"fn-{tag}-database-password").value == f"new-{tag}"
    raw = {"id": delivered.id, "eventType": delivered.event_type, "data": delivered.get_json()}
    assert keyvault_event(api, raw)["outcome"] == "duplicate"
    SecretClient(seeded.vault_url("kv-source"), seeded.admin_credential()).set_secret("database-password", "s3cr3t-db-password")
    handler(event("Microsoft.KeyVault.SecretNewVersionCreated", "kv-source", "database-password"))


def test_cloudevents_unknown_and_malformed_events_are_acknowledged(api: LiveRuntime) -> None:
    cloud = {"id": str(uuid.uuid4()), "type": "Microsoft.KeyVault.SecretNewVersionCreated", "source": "/subscriptions/x",
             "specversion": "1.0", "data": {"VaultName": "kv-source", "ObjectName": "api-key", "Version": "1" * 32}}
    assert keyvault_event(api, cloud)["outcome"] == "synced"
    unknown = {"id": str(uuid.uuid4()), "eventType": "Microsoft.KeyVault.SecretNewVersionCreated", "data": {"VaultName": "elsewhere", "ObjectName": "x"}}
    assert keyvault_event(api, unknown)["outcome"] == "ignored"
    malformed = keyvault_event(api, {"id": "m1", "eventType": "Microsoft.KeyVault.SecretNewVersionCreated", "data": "nope"})
    assert malformed["outcome"] == "malformed" and "data" in malformed["detail"]
    other = {"id": str(uuid.uuid4()), "eventType": "Microsoft.KeyVault.KeyNewVersionCreated", "data": {"VaultName": "kv-source", "ObjectName": "k"}}
    assert keyvault_event(api, other)["outcome"] == "ignored"


def test_near_expiry_of_a_secret_vaultrelay_does_not_own_is_a_status_warning(api: LiveRuntime) -> None:
    outcome = keyvault_event(api, {"id": str(uuid.uuid4()), "eventType": "Microsoft.KeyVault.SecretNearExpiry",
                                  "data": {"VaultName": "kv-source", "ObjectName": "api-key"}})
    assert outcome["outcome"] == "warning" and outcome["envs"] == ["production"]
    warnings = [r for r in api.current().state.query("rotations", "warning") if r.key == "kv-source:api-key"]
    assert warnings and "not managed by vaultrelay" in json.dumps(warnings[0].fields)


def test_near_expiry_of_a_minted_sas_resyncs_without_reminting_a_token_that_is_not_due(api: LiveRuntime, target: SecretClient, tag: str) -> None:
    engine = SyncEngine(api.current())
    # Minted now, by this module's state: the example's tokens are kept in the shared state vault
    # under names made of their parameters, where another module's sync may have left them.
    engine.sync(force_mint=True)
    minted = [r for r in engine.state.query("rotations", "sas")]
    assert minted, "the example env mints SAS tokens"
    before = target.get_secret(f"fn-{tag}-storage-sas").value
    outcome = keyvault_event(api, {"id": str(uuid.uuid4()), "eventType": "Microsoft.KeyVault.SecretNearExpiry",
                                  "data": {"VaultName": "kv-state", "ObjectName": minted[0].key}})
    assert outcome["outcome"] == "synced" and outcome["envs"] == ["production"] and "not due" in outcome["detail"]
    assert target.get_secret(f"fn-{tag}-storage-sas").value == before
