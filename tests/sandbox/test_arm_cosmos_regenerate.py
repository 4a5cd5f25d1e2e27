"""Contract: Cosmos DB key regeneration is a long-running operation that can take hours.

Learn ("Rotate keys for Azure Cosmos DB for NoSQL"): key regeneration "can take anywhere from one
minute to multiple hours".  The sandbox keeps an operation in progress for as long as a test says
(control API), answers a second regenerateKey meanwhile with 412 `PreconditionFailed` and the
Cosmos DB resource provider's error body, and changes the listed key only when the operation ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.cosmosdb.models import DatabaseAccountRegenerateKeyParameters

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

ARM_SCOPE = "https://management.azure.com/.default"


def cosmos(sandbox: SandboxClient) -> CosmosDBManagementClient:
    return CosmosDBManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


@pytest.fixture()
def account(sandbox: SandboxClient) -> Iterator[str]:
    name = unique("cosmos")
    sandbox.create_resource("cosmos", name)
    yield name
    sandbox.hold_cosmos_regenerations(None)
    sandbox.finish_arm_operations(name)


def headers(sandbox: SandboxClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {sandbox.admin_credential().get_token(ARM_SCOPE).token}"}


def test_a_held_regeneration_stays_in_progress_and_a_second_one_is_refused_412(sandbox: SandboxClient, account: str) -> None:
    client = cosmos(sandbox)
    before = client.database_accounts.list_keys(sandbox.resource_group, account)
    sandbox.hold_cosmos_regenerations(3 * 3600)
    path = sandbox.resource_id("cosmos", account) + "/regenerateKey?api-version=2026-03-15"
    started = requests.post(sandbox.arm_endpoint + path, json={"keyKind": "secondary"}, headers=headers(sandbox), timeout=15)
    assert started.status_code == 202 and started.json() == {"status": "Dequeued"}
    status_url = started.headers["Azure-AsyncOperation"]
    for _ in range(4):  # polled again and again: still running, the listed key unchanged
        polled = requests.get(status_url, headers=headers(sandbox), timeout=15)
        assert polled.status_code == 200 and polled.json()["status"] == "InProgress" and "endTime" not in polled.json()
    assert client.database_accounts.list_keys(sandbox.resource_group, account).secondary_master_key == before.secondary_master_key
    (running,) = [op for op in sandbox.arm_operations() if op["resource"].endswith("/" + account)]
    assert (running["status"], running["kind"], running["status_url"]) == ("InProgress", "regenerateKey:secondary", status_url)

    # Another regeneration while it runs (any key kind): 412, the resource provider's own body.
    second = requests.post(sandbox.arm_endpoint + path, json={"keyKind": "primary"}, headers=headers(sandbox), timeout=15)
    assert second.status_code == 412
    body = second.json()
    assert body["code"] == "PreconditionFailed" and "error" not in body
    assert body["message"].startswith("There is already an operation in progress which requires exclusive lock on this service.")
    with pytest.raises(HttpResponseError) as refused:  # as the SDK sees it
        client.database_accounts.begin_regenerate_key(sandbox.resource_group, account,
                                                      DatabaseAccountRegenerateKeyParameters(key_kind="primary"), polling=False)
    assert refused.value.status_code == 412 and refused.value.error is not None and refused.value.error.code == "PreconditionFailed"
    assert client.database_accounts.list_keys(sandbox.resource_group, account).primary_master_key == before.primary_master_key

    (finished,) = sandbox.finish_arm_operations(account)
    assert finished["status"] == "Succeeded"
    done = requests.get(status_url, headers=headers(sandbox), timeout=15).json()
    assert done["status"] == "Succeeded" and done["endTime"]
    after = client.database_accounts.list_keys(sandbox.resource_group, account)
    assert after.secondary_master_key != before.secondary_master_key and after.primary_master_key == before.primary_master_key
    # The account's lock is free again.
    sandbox.hold_cosmos_regenerations(None)
    client.database_accounts.begin_regenerate_key(sandbox.resource_group, account, DatabaseAccountRegenerateKeyParameters(key_kind="primary"),
                                                  polling_interval=0).result()
    assert client.database_accounts.list_keys(sandbox.resource_group, account).primary_master_key != before.primary_master_key


def test_the_sdk_poller_waits_out_a_held_regeneration(sandbox: SandboxClient, account: str) -> None:
    client = cosmos(sandbox)
    before = client.database_accounts.list_keys(sandbox.resource_group, account).primary_master_key
    sandbox.hold_cosmos_regenerations(1.5)
    began = time.monotonic()
    poller = client.database_accounts.begin_regenerate_key(sandbox.resource_group, account,
                                                           DatabaseAccountRegenerateKeyParameters(key_kind="primary"), polling_interval=0.2)
    assert not poller.done()
    poller.result()
    assert time.monotonic() - began >= 1.4 and poller.status().lower() == "succeeded"
    assert client.database_accounts.list_keys(sandbox.resource_group, account).primary_master_key != before


def test_the_hold_control_refuses_nonsense(sandbox: SandboxClient) -> None:
    with pytest.raises(RuntimeError, match="400"):
        sandbox.call("PUT", "/arm/cosmos/regenerate", {"in_progress_s": -1})
    with pytest.raises(RuntimeError, match="400"):
        sandbox.call("PUT", "/arm/cosmos/regenerate", {"in_progress_s": "long"})


def test_a_failed_regeneration_changes_no_key(sandbox: SandboxClient, account: str) -> None:
    client = cosmos(sandbox)
    before = client.database_accounts.list_keys(sandbox.resource_group, account)
    sandbox.hold_cosmos_regenerations(3600)
    poller = client.database_accounts.begin_regenerate_key(sandbox.resource_group, account,
                                                           DatabaseAccountRegenerateKeyParameters(key_kind="secondary"), polling_interval=0.2)
    (failed,) = sandbox.finish_arm_operations(account, failed=True)
    assert failed["status"] == "Failed"
    status = requests.get(failed["status_url"], headers=headers(sandbox), timeout=15).json()
    assert status["status"] == "Failed" and status["error"]["code"]
    with pytest.raises(HttpResponseError):
        poller.result()
    assert client.database_accounts.list_keys(sandbox.resource_group, account).secondary_master_key == before.secondary_master_key
