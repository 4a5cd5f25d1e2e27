"""User delegation keys kept in the state vault serve every path that signs a user delegation
SAS, not only the sync engine: here `GET /api/envs/{env}` (the registered function, one LiveRuntime per instance),
against the sandbox, counting `Get User Delegation Key` requests and using each SAS on Azurite."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from azure.keyvault.secrets import SecretClient
from azure.storage.blob import ContainerClient

from core.mint.sas import StoredDelegationKeys
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.core.test_rotation_account_keys_sandbox import delegation_key_requests, sas_lists
from tests.functions.apihelpers import AUDIENCE, body_json, fetch, get_env, serving

ACCOUNT = "sandboxstore"


@pytest.fixture()
def container(seeded: SandboxClient) -> str:
    """A fresh container in the sandbox's storage account with one blob."""
    name = f"udk{uuid.uuid4().hex[:8]}"
    client = ContainerClient(seeded.storage_endpoint(ACCOUNT), name, credential=seeded.admin_credential())
    client.create_container()
    client.upload_blob("hello.txt", b"hello")
    return name


def ud_config(path: Path, sandbox: SandboxClient, container: str, *, state: dict[str, Any] | None) -> Path:
    """An env with one user delegation SAS that `caller` may fetch; no secret cache, so every
    fetch signs a new SAS."""
    config: dict[str, Any] = {
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity", "cache": {"secret_cache": {"enabled": False}}}},
        "envs": {"ud": {"UD_SAS": {"from": {"store": "azure", "resource_type": "storage", "account": ACCOUNT,
                                            "operation": "generate_sas", "sas_type": "user_delegation",
                                            "container": container, "permissions": "rl", "expiry": "1h"}}}},
        "api": {"auth_mode": "bearer", "audience": AUDIENCE},
        "access": {"ud": [sandbox.identities["caller"].object_id]},
    }
    if state is not None:
        config["state"] = state
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def new_api(config: Path) -> LiveRuntime:
    """A LiveRuntime as a fresh Functions instance has it: its own config, runtime and clients."""
    return LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())


@pytest.fixture()
def apis() -> Iterator[list[LiveRuntime]]:
    opened: list[LiveRuntime] = []
    yield opened
    for api in opened:
        api.close()


def fetched_sas(response: Any) -> str:
    """UD_SAS from a 200 answer of the registered function."""
    assert response.status_code == 200, response.get_body()
    return str(body_json(response)["UD_SAS"])


def signed_key_fields(token: str) -> tuple[str, ...]:
    """The delegation key a SAS names (object id, start, expiry): equal for SAS signed with one key."""
    query = parse_qs(token)
    return tuple(query[field][0] for field in ("skoid", "skt", "ske"))


def kept_key_name(api: LiveRuntime) -> str:
    store = api.current().connections.store("azure")
    return StoredDelegationKeys.secret_name(ACCOUNT, f"azure:{store.identity_description}", timedelta(hours=1))


def test_http_fetches_sign_with_the_delegation_key_kept_in_the_state_vault(
    functions: dict[str, Any], seeded: SandboxClient, container: str, tmp_path: Path, apis: list[LiveRuntime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = {"store": "azure", "account": ACCOUNT, "vault": "kv-state", "table_prefix": f"t{uuid.uuid4().hex[:8]}"}
    config = ud_config(tmp_path / "vaultrelay.yaml", seeded, container, state=state)
    token = seeded.issue_token("caller", AUDIENCE)
    first, second = new_api(config), new_api(config)
    apis.extend([first, second])
    vault = SecretClient(seeded.vault_url("kv-state"), seeded.admin_credential())
    kept = kept_key_name(first)
    # Whatever earlier tests kept for this identity and account: one that runs out in 5 minutes,
    # too soon for a 1-hour SAS, so the first fetch must renew it.
    near = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    vault.set_secret(kept, json.dumps({"signed_expiry": near, "value": "bm90LWEta2V5"}), tags={"managed-by": "vaultrelay"})

    seeded.reset_counters()
    with caplog.at_level(logging.DEBUG, logger="vaultrelay"), serving(first):
        one = fetched_sas(get_env(functions, "ud", token))  # through the registered function
    assert delegation_key_requests(seeded) == 1, seeded.counters()["by_endpoint"]
    renewed = vault.get_secret(kept)
    assert renewed.properties.content_type == "application/x-user-delegation-key"

    time.sleep(1.1)  # SAS times have one-second resolution: the second SAS is a new one
    with caplog.at_level(logging.DEBUG, logger="vaultrelay"):
        two = fetched_sas(fetch(second, "ud", headers={"Authorization": f"Bearer {token}"}))  # another instance
    assert delegation_key_requests(seeded) == 1, seeded.counters()["by_endpoint"]  # the kept key signed it
    assert vault.get_secret(kept).properties.version == renewed.properties.version

    assert one != two and signed_key_fields(one) == signed_key_fields(two)
    assert sas_lists(seeded, ACCOUNT, container, one) == ["hello.txt"]
    assert sas_lists(seeded, ACCOUNT, container, two) == ["hello.txt"]
    key_value = json.loads(renewed.value or "{}")["value"]
    assert key_value and not any(key_value in record.getMessage() for record in caplog.records)


def test_without_a_state_vault_each_run_requests_its_own_delegation_key_and_says_why(
    seeded: SandboxClient, container: str, tmp_path: Path, apis: list[LiveRuntime], caplog: pytest.LogCaptureFixture,
) -> None:
    config = ud_config(tmp_path / "vaultrelay.yaml", seeded, container, state=None)
    token = seeded.issue_token("caller", AUDIENCE)
    api = new_api(config)
    apis.append(api)

    seeded.reset_counters()
    with caplog.at_level(logging.INFO, logger="vaultrelay"):
        tokens = [fetched_sas(fetch(api, "ud", headers={"Authorization": f"Bearer {token}"})) for _ in range(2)]
    assert delegation_key_requests(seeded) == 2, seeded.counters()["by_endpoint"]
    assert any("no state.vault" in record.getMessage() for record in caplog.records)
    for sas in tokens:
        assert sas_lists(seeded, ACCOUNT, container, sas) == ["hello.txt"]


def test_an_unreadable_state_vault_falls_back_to_a_new_key_and_logs_why(
    clean_faults: SandboxClient, seeded: SandboxClient, container: str, tmp_path: Path, apis: list[LiveRuntime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = {"store": "azure", "account": ACCOUNT, "vault": "kv-shared", "table_prefix": f"t{uuid.uuid4().hex[:8]}"}
    config = ud_config(tmp_path / "vaultrelay.yaml", seeded, container, state=state)
    token = seeded.issue_token("caller", AUDIENCE)
    api = new_api(config)
    apis.append(api)
    clean_faults.set_faults([{"service": "keyvault", "target": "kv-shared", "error_rate": 1.0, "error_status": 403}])

    with caplog.at_level(logging.INFO, logger="vaultrelay"):
        tokens = [fetched_sas(fetch(api, "ud", headers={"Authorization": f"Bearer {token}"})) for _ in range(2)]
    messages = [record.getMessage() for record in caplog.records]
    assert any("cannot read the kept delegation key" in m and "HTTP 403" in m for m in messages), messages
    assert any("cannot keep the new delegation key" in m and "HTTP 403" in m for m in messages), messages
    # The key this process requested serves its later fetches (it ends 6 minutes after the first SAS).
    assert delegation_key_requests(seeded) == 1, seeded.counters()["by_endpoint"]
    clean_faults.clear_faults()
    for sas in tokens:
        assert sas_lists(seeded, ACCOUNT, container, sas) == ["hello.txt"]
