"""Key Vault events with names Key Vault could never produce are acknowledged as malformed (Event
Grid does not retry them for 24 hours), and events about vaults the config does not name write
nothing to state: through the Event Grid function function_app.py registers, state in Azurite."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
import yaml

from core.push import SyncEngine
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from core.state.tables import TABLES
from sandbox.client import SandboxClient
from tests.functions.apihelpers import keyvault_event, serving, write_config

NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"


@pytest.fixture(scope="module")
def api(seeded: SandboxClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    path = write_config(tmp_path_factory.mktemp("events") / "vaultrelay.yaml", seeded)
    config = yaml.safe_load(path.read_text())
    config["state"]["table_prefix"] = f"ev{uuid.uuid4().hex[:8]}"
    config["targets"] = {"vault": {"type": "keyvault", "env": "production", "store": "azure", "vault": "kv-target", "prefix": "ev-"}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)}, audit=MemoryAuditSink())
    with serving(api):
        yield api
    api.close()


def event(event_type: str, vault: str, name: str, version: str = "0" * 32, event_id: str | None = None) -> func.EventGridEvent:
    return func.EventGridEvent(
        id=event_id or str(uuid.uuid4()), topic="/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v",
        subject=name, event_type=event_type, event_time=dt.datetime.now(dt.UTC), data_version="1",
        data={"Id": "https://v.vault.azure.net/secrets/n", "VaultName": vault, "ObjectType": "Secret", "ObjectName": name,
              "Version": version, "NBF": None, "EXP": None},
    )


def all_rows(api: LiveRuntime) -> list[tuple[str, str, str, dict[str, Any]]]:
    state = api.current().state
    return [(table, r.partition, r.key, r.fields) for table in TABLES for r in state.query(table)]


HOSTILE = [
    ("kv-source", "api-key/../../x"),          # a slash
    ("kv-source", "a#b?c"),                   # # and ?
    ("kv-source", "api\x00key\nx"),           # control characters
    ("kv-source", "a" * 128),                 # over 127 characters
    ("kv-source", "ünïcode"),                 # not 0-9a-zA-Z-
    ("kv-source", ""),                        # empty
    ("kv/source", "api-key"),                 # a vault name with a slash
    ("kv--source", "api-key"),                # consecutive hyphens
    ("k" * 25, "api-key"),                    # a vault name over 24 characters
    ("1kv", "api-key"),                       # not starting with a letter
    ("kv-source\x7f", "api-key"),             # a control character in the vault
]


@pytest.mark.parametrize("event_type", [NEAR_EXPIRY, NEW_VERSION])
def test_names_key_vault_could_never_produce_are_acknowledged_as_malformed_and_write_nothing(
    functions: dict[str, Any], api: LiveRuntime, event_type: str, caplog: pytest.LogCaptureFixture,
) -> None:
    handler = functions["keyvault_events"].get_user_function()
    before = all_rows(api)
    writes = api.current().state.writes
    for vault, name in HOSTILE:
        handler(event(event_type, vault, name))  # acknowledged: the function returns, Event Grid does not retry
        outcome = keyvault_event(api, {"id": str(uuid.uuid4()), "eventType": event_type,
                                      "data": {"VaultName": vault, "ObjectName": name, "Version": "1" * 32}})
        assert outcome["outcome"] == "malformed", (vault, name, outcome)
        assert name not in outcome["detail"] or not name
    for version in ("not-hex", "0" * 31, "0" * 32 + "/x"):
        outcome = keyvault_event(api, {"id": str(uuid.uuid4()), "eventType": event_type,
                                      "data": {"VaultName": "kv-source", "ObjectName": "api-key", "Version": version}})
        assert outcome["outcome"] == "malformed" and "Version" in outcome["detail"]
    long_id = keyvault_event(api, {"id": "x" * 5000, "eventType": event_type, "data": {"VaultName": "kv-source", "ObjectName": "api-key"}})
    assert long_id["outcome"] == "malformed" and len(long_id["event_id"]) <= 200
    assert api.current().state.writes == writes
    assert all_rows(api) == before
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "api\x00key" not in logged and "../../x" not in logged


def test_events_about_vaults_not_in_the_config_write_nothing_to_state(functions: dict[str, Any], api: LiveRuntime) -> None:
    handler = functions["keyvault_events"].get_user_function()
    before = all_rows(api)
    writes = api.current().state.writes
    for event_type in (NEAR_EXPIRY, "Microsoft.KeyVault.SecretExpired", NEW_VERSION):
        for i in range(5):
            handler(event(event_type, "someone-elses-vault", f"secret-{i}"))
            outcome = keyvault_event(api, {"id": str(uuid.uuid4()), "eventType": event_type,
                                          "data": {"VaultName": "Someone-Elses-Vault", "ObjectName": f"secret-{i}"}})
            assert outcome["outcome"] == "ignored" and "not in the config" in outcome["detail"]
    assert api.current().state.writes == writes
    assert all_rows(api) == before  # no status warning, no event row, no audit row
    assert not [r for r in SyncEngine(api.current()).status() if r["last_error"]]


def test_a_vault_the_config_names_still_gets_its_warning(api: LiveRuntime) -> None:
    outcome = keyvault_event(api, {"id": str(uuid.uuid4()), "eventType": NEAR_EXPIRY,
                                  "data": {"VaultName": "kv-source", "ObjectName": "api-key"}})
    assert outcome["outcome"] == "warning"
    assert [r for r in api.current().state.query("rotations", "warning") if r.key == "kv-source:api-key"]
