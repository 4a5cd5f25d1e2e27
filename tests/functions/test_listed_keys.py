"""Storage key listings kept between fetches in one process, through the registered
`GET /api/envs/{env}` function, against the sandbox with the storage resource provider's ARM limits
made small: a burst of 200 fetches of an env with a storage key and a key-signed SAS makes a handful
of ARM calls and no 429 reaches a caller; a key this process regenerates is never served stale."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.storage import StorageManagementClient
from azure.storage.blob import ContainerClient

from core.app.rotate import rotate
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.configs import body_yaml, ref
from tests.functions.apihelpers import AUDIENCE, body_json, get_env, serving
from tests.world import World, fresh_account


def keys_of(sandbox: SandboxClient, account: str) -> dict[str, str]:
    client = StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    return {k.key_name: k.value for k in client.storage_accounts.list_keys(sandbox.resource_group, account).keys_property or []}


def env_config(path: Path, sandbox: SandboxClient, env: dict[str, Any]) -> Path:
    path.write_text(json.dumps({
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity"}},
        "envs": {"stor": env},
        "api": {"auth_mode": "bearer", "audience": AUDIENCE},
        "access": {"stor": [sandbox.identities["caller"].object_id]},
    }))
    return path


@pytest.fixture()
def small_limits(seeded: SandboxClient, arm_limits: SandboxClient) -> SandboxClient:
    """ARM's storage provider limits at 10 per 5 minutes for lists (listKeys) and reads."""
    arm_limits.set_arm_limits(list={"limit": 10, "window_s": 300}, read={"limit": 10, "window_s": 300})
    return arm_limits


@pytest.fixture()
def api_for(tmp_path: Path) -> Iterator[Any]:
    opened: list[LiveRuntime] = []

    def make(config: Path) -> LiveRuntime:
        api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())
        opened.append(api)
        return api

    yield make
    for api in opened:
        api.close()


def test_a_burst_of_200_fetches_lists_keys_a_handful_of_times_and_is_never_throttled(
    functions: dict[str, Any], small_limits: SandboxClient, tmp_path: Path, api_for: Any,
) -> None:
    sandbox = small_limits
    container = f"burst{uuid.uuid4().hex[:8]}"
    ContainerClient(sandbox.storage_endpoint("sandboxstore"), container, credential=sandbox.admin_credential()).create_container()
    config = env_config(tmp_path / "vaultrelay.yaml", sandbox, {
        "KEY": {"from": {"store": "azure", "resource_type": "storage", "account": "sandboxstore", "key": "key1"}},
        "SAS": {"from": {"store": "azure", "resource_type": "storage", "account": "sandboxstore", "operation": "generate_sas",
                         "sas_type": "service", "container": container, "permissions": "rl", "expiry": "1h"}},
    })
    token = sandbox.issue_token("caller", AUDIENCE)
    expected_key = keys_of(sandbox, "sandboxstore")["key1"]
    sandbox.reset_counters()

    def fetch(_: int) -> tuple[int, dict[str, Any]]:
        response = get_env(functions, "stor", token)
        return response.status_code, body_json(response)

    with serving(api_for(config)), ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(fetch, range(200)))
    assert [status for status, _ in answers] == [200] * 200, [a for a in answers if a[0] != 200][:3]
    assert {body["KEY"] for _, body in answers} == {expected_key}
    last_sas = answers[-1][1]["SAS"]
    assert [b.name for b in ContainerClient(sandbox.storage_endpoint("sandboxstore"), container, credential=last_sas,
                                            retry_total=0).list_blobs()] == []  # a working SAS (the container is empty)

    counters = sandbox.counters()
    arm = {k: v for k, v in counters["by_endpoint_status"].items() if k.startswith("arm:")}
    assert arm.get("arm:StorageListKeys:200", 0) <= 2, arm  # one listing serves the burst
    assert sum(v for k, v in arm.items() if k.startswith(("arm:ListStorage", "arm:GetStorage"))) <= 2, arm
    assert not any(k.endswith(":429") for k in counters["by_endpoint_status"]), counters["by_endpoint_status"]
    assert counters["throttled"] == 0


def test_a_key_this_process_regenerates_is_not_served_from_the_kept_listing(
    functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path, api_for: Any,
) -> None:
    world = World(seeded)
    account = fresh_account(seeded, world.tag)
    config = env_config(tmp_path / "vaultrelay.yaml", seeded, {
        "KEY2": {"from": {"store": "azure", "resource_type": "storage", "account": account, "key": "key2"}},
    })
    token = seeded.issue_token("caller", AUDIENCE)
    with serving(api_for(config)):
        before = body_json(get_env(functions, "stor", token))["KEY2"]
        assert before == keys_of(seeded, account)["key2"]
        body = body_yaml(envs={
            "app": {
                "ACTIVE": ref(resource_type="storage", account=account, key="active", rotate={"every": "30d"}),
            },
        })
        (report,) = rotate(world.runtime(body), f"storage:{account}", force=True)  # key1 active: key2 is regenerated
        assert (report.outcome, report.new_active) == ("rotated", "key2"), report
        seeded.reset_counters()
        after = body_json(get_env(functions, "stor", token))["KEY2"]
    assert after != before and after == keys_of(seeded, account)["key2"]
    assert seeded.counters()["by_endpoint_status"].get("arm:StorageListKeys:200", 0) >= 1  # listed again
