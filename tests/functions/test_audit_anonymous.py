"""Unauthenticated requests are counted and logged, and stored as one audit row per cause and
window that every instance adds its counts to (ETag-conditional), not a row each: through what
function_app.py registers, with the default audit (the log plus the audit table in Azurite)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from azure.data.tables import TableServiceClient

from core.runtime import LiveRuntime
from core.state.audit import ANONYMOUS_ACTION, AnonymousAudit
from core.state.tables import Row, StateStore
from sandbox.client import SandboxClient
from tests.functions.apihelpers import foreign_token, get_env, serving, write_config

WINDOW_S = 3600


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"an{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def config(seeded: SandboxClient, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_config(tmp_path_factory.mktemp("anonymous") / "vaultrelay.yaml", seeded)
    data = yaml.safe_load(path.read_text())
    data["state"]["table_prefix"] = prefix
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def instance(config: str) -> LiveRuntime:
    """One Function instance: its own LiveRuntime (and so its own counts), the default audit sinks."""
    return LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": config, "VAULTRELAY_ANONYMOUS_AUDIT_SECONDS": str(WINDOW_S)})


@pytest.fixture(scope="module")
def audit_table(seeded: SandboxClient, prefix: str) -> Iterator[Any]:
    service = TableServiceClient(endpoint=seeded.storage_endpoint("sandboxstore", "table"), credential=seeded.admin_credential())
    yield service.get_table_client(f"{prefix}audit")
    service.close()


def anonymous_rows(table: Any) -> list[dict[str, Any]]:
    return [dict(e) for e in table.query_entities("actor eq @a", parameters={"a": "anonymous"})]


def test_200_anonymous_requests_from_two_instances_are_a_few_rows_with_their_count(
    functions: dict[str, Any], config: str, seeded: SandboxClient, audit_table: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = instance(config), instance(config)
    bad_token = foreign_token(seeded, kid="anonymous-test-kid")
    kinds = [({}, "401-no_token"), ({"Authorization": f"Bearer {bad_token}"}, "401-invalid_token"),
             ({"Authorization": "Bearer two words"}, "400-invalid_request"), ({"Authorization": "Bearer not.a.jwt"}, "401-invalid_token")]
    began = time.time()
    statuses: dict[int, int] = {}
    with caplog.at_level(logging.INFO, logger="vaultrelay.audit"):
        for i in range(200):
            api = (first, second)[i % 2]
            headers, _ = kinds[i % len(kinds)]
            with serving(api):
                response = get_env(functions, "production" if i % 3 else f"probe-{i}", headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    ended = time.time()
    assert statuses == {401: 150, 400: 50}
    # counted and logged: one line each
    logged = [json.loads(r.getMessage()[len("audit "):]) for r in caplog.records if r.name == "vaultrelay.audit"]
    assert len([e for e in logged if e["detail"]["outcome"] == "unauthenticated"]) == 200
    assert first.current().anonymous_audit().counted == second.current().anonymous_audit().counted == 100

    # stored: a few writes, not 200 (each instance writes each cause's row once per window) ...
    writes = first.current().anonymous_audit().writes + second.current().anonymous_audit().writes
    assert writes <= 2 * 3 * 2
    for api in (first, second):
        api.flush_audit()  # what the timer does: the rest of the counts go to the same rows
    rows = anonymous_rows(audit_table)
    windows = {int(began // WINDOW_S), int(ended // WINDOW_S)}
    by_cause: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        assert row["action"] == ANONYMOUS_ACTION and row["window_s"] == WINDOW_S
        by_cause.setdefault(row["subject"], []).append(row)
    assert set(by_cause) == {"401-no_token", "401-invalid_token", "400-invalid_request"}
    assert all(len(found) <= len(windows) for found in by_cause.values())  # one row per cause and window
    assert {cause: sum(r["count"] for r in found) for cause, found in by_cause.items()} == {
        "401-no_token": 50, "401-invalid_token": 100, "400-invalid_request": 50}
    assert len(rows) <= 3 * len(windows)
    assert all(len(json.loads(r["envs"])) <= 5 for r in rows)
    for api in (first, second):
        api.close()


def test_concurrent_instances_add_to_one_row_through_its_etag(seeded: SandboxClient, prefix: str) -> None:
    """Eight instances flush their counts of one cause into one window's row at the same moment:
    the ETag conflicts are re-read and retried, so no instance's count is lost."""
    service = TableServiceClient(endpoint=seeded.storage_endpoint("sandboxstore", "table"), credential=seeded.admin_credential())
    store = StateStore(service, f"{prefix}c")
    store.ensure_tables()
    clock = [1_800_000_000.0]
    audits = [AnonymousAudit(lambda: store, window_s=60, clock=lambda: clock[0]) for _ in range(8)]
    for audit in audits:  # the first request of each writes at once, the other 24 wait for the flush
        for _ in range(25):
            audit.record("401-no_token", "production")
    barrier = threading.Barrier(len(audits))

    def flush(audit: AnonymousAudit) -> None:
        barrier.wait()
        audit.flush()

    threads = [threading.Thread(target=flush, args=(a,)) for a in audits]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = [r for r in store.query("audit") if isinstance(r, Row) and r.fields.get("action") == ANONYMOUS_ACTION]
    assert len(rows) == 1 and rows[0].fields["count"] == 200
    assert sum(a.writes for a in audits) == 16  # one write each at its first request, one at the flush
    service.close()
