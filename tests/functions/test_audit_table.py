"""The fetch audit in Table Storage: `GET /api/envs/{env}` through what function_app.py registers,
with the default audit (the log plus the state store's audit table in Azurite), read back with
azure-data-tables; with the Table service faulted the fetch answers 503 and returns nothing."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from azure.data.tables import TableServiceClient

from core.runtime import LiveRuntime
from demo.seed import EXAMPLE_SECRETS
from functions.http_api import AUDIT_UNAVAILABLE_BODY
from sandbox.client import SandboxClient
from tests.functions.apihelpers import AUDIENCE, body_json, get_env, serving, write_config

SECRET_VALUES = list(EXAMPLE_SECRETS.values())


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"a{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(seeded: SandboxClient, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    """The example config with this module's own state tables, and the default audit sinks."""
    path = write_config(tmp_path_factory.mktemp("audit") / "vaultrelay.yaml", seeded)
    config = yaml.safe_load(path.read_text())
    config["state"]["table_prefix"] = prefix
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)})
    with serving(api):
        yield api
    api.close()


@pytest.fixture(scope="module")
def audit_table(seeded: SandboxClient, prefix: str) -> Iterator[Any]:
    service = TableServiceClient(endpoint=seeded.storage_endpoint("sandboxstore", "table"), credential=seeded.admin_credential())
    yield service.get_table_client(f"{prefix}audit")
    service.close()


def fetch_rows(table: Any) -> list[dict[str, Any]]:
    return [dict(e) for e in table.query_entities("action eq @a", parameters={"a": "env.fetch"})]


def assert_no_values(text: str) -> None:
    for value in SECRET_VALUES:
        assert value not in text


def test_a_fetch_writes_an_audit_row_with_caller_env_and_fingerprints_but_no_value(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, audit_table: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    caller = seeded.identities["caller"].object_id
    with caplog.at_level(logging.DEBUG):
        response = get_env(functions, "production", seeded.issue_token("caller", AUDIENCE))
    assert response.status_code == 200, response.get_body()
    values = body_json(response)
    rows = [r for r in fetch_rows(audit_table) if r["actor"] == f"oid:{caller}"]
    assert len(rows) == 1
    [row] = rows
    assert row["subject"] == "production" and row["at"]
    detail = json.loads(row["detail"])
    assert detail["outcome"] == "ok" and detail["variables"] == str(len(values)) and detail["fingerprint_key"] == "state"
    assert {k[3:] for k in detail if k.startswith("fp.")} == set(values)
    assert all(len(detail[f"fp.{name}"]) == 32 for name in values)
    assert "version.DATABASE_PASSWORD" in detail
    stored = json.dumps(row, default=str)
    for value in values.values():
        if len(value) >= 8:  # literals such as LOG_LEVEL=info are config, not secrets
            assert value not in stored
    assert_no_values(stored)
    assert_no_values("\n".join(r.getMessage() for r in caplog.records))


def test_a_refused_caller_is_audited_too(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, audit_table: Any) -> None:
    other = seeded.identities["other"].object_id
    response = get_env(functions, "production", seeded.issue_token("other", AUDIENCE))
    assert response.status_code == 403
    [row] = [r for r in fetch_rows(audit_table) if r["actor"] == f"oid:{other}"]
    assert json.loads(row["detail"])["outcome"] == "denied"


def test_a_fetch_that_cannot_be_audited_is_503_and_returns_nothing(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, clean_faults: SandboxClient, audit_table: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = seeded.issue_token("caller", AUDIENCE)
    assert get_env(functions, "production", token).status_code == 200  # tables exist, key read
    before = len(fetch_rows(audit_table))
    # Every entity insert on the state account fails (the audit row is the only write of a fetch).
    seeded.set_faults([{"service": "storage", "target": "sandboxstore", "operation": "table:POST", "error_rate": 1.0, "error_status": 503}])
    with caplog.at_level(logging.DEBUG):
        refused = get_env(functions, "production", token)
    assert refused.status_code == 503, refused.get_body()
    assert body_json(refused) == AUDIT_UNAVAILABLE_BODY and refused.headers["Retry-After"] == "30"
    assert refused.headers["Cache-Control"] == "no-store"
    text = refused.get_body().decode() + json.dumps(dict(refused.headers))
    assert_no_values(text)
    assert "DATABASE_PASSWORD" not in text
    logs = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "could not be written" in logs
    assert_no_values(logs)
    inserts = seeded.counters()["by_endpoint_status"]
    assert sum(v for k, v in inserts.items() if k.startswith("storage:table:POST:503")) >= 1

    seeded.clear_faults()
    assert len(fetch_rows(audit_table)) == before  # nothing was recorded, and nothing was handed out
    assert get_env(functions, "production", token).status_code == 200
    assert len(fetch_rows(audit_table)) == before + 1


def test_an_explicit_sink_replaces_the_table(functions: dict[str, Any], seeded: SandboxClient, api: LiveRuntime) -> None:
    from core.state.audit import FanOutAuditSink, LoggingAuditSink, MemoryAuditSink, TableAuditSink

    default = api.current().audit_sink()
    assert isinstance(default, FanOutAuditSink)
    assert [type(s) for s in default.sinks] == [LoggingAuditSink, TableAuditSink]
    memory = MemoryAuditSink()
    assert LiveRuntime(environ=api.environ, audit=memory).current().audit_sink() is memory
