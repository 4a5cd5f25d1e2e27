"""Contract: ARM behaviours vaultrelay depends on that the sandbox models as Azure does.

* Cosmos DB `disableLocalAuth`: set by PUT, returned by GET and list; keys are still listed but
  authorize nothing (the control API stands in for the data plane with Azure's 401).
* The storage resource provider's limits per subscription and region (Learn: "Scalability and
  performance targets for the Azure Storage resource provider"): 429 `TooManyRequests` with
  `Retry-After` and Azure's message, configurable through the control API.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.cosmosdb.models import DatabaseAccountCreateUpdateParameters, Location
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters

from sandbox.client import SandboxClient


def storage(sandbox: SandboxClient, **options: Any) -> StorageManagementClient:
    return StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint, **options)


def cosmos(sandbox: SandboxClient) -> CosmosDBManagementClient:
    return CosmosDBManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


@pytest.fixture()
def limits(arm_limits: SandboxClient) -> SandboxClient:
    return arm_limits


# ---- Cosmos DB disableLocalAuth -------------------------------------------------------------------
def test_cosmos_disable_local_auth_is_set_and_read_through_arm_and_keys_then_authorize_nothing(sandbox: SandboxClient) -> None:
    client = cosmos(sandbox)
    name = f"cosmos-nolocal-{uuid.uuid4().hex[:8]}"
    created = client.database_accounts.begin_create_or_update(sandbox.resource_group, name, DatabaseAccountCreateUpdateParameters(
        location="eastus", locations=[Location(location_name="eastus")], disable_local_auth=True), polling_interval=0).result()
    assert created.disable_local_auth is True
    assert client.database_accounts.get(sandbox.resource_group, name).disable_local_auth is True
    listed = {a.name: a.disable_local_auth for a in client.database_accounts.list()}
    assert listed[name] is True and listed["sandbox-cosmos"] is False
    keys = client.database_accounts.list_keys(sandbox.resource_group, name)
    assert keys.primary_master_key  # listed all the same ...
    answer = sandbox.cosmos_key_valid(name, keys.primary_master_key)
    assert answer == {"valid": False, "status": 401, "substatus": 5202,  # ... but refused by the data plane
                      "message": "Local Authorization is disabled. Use an AAD token to authorize all requests."}
    # Turned off again by a PUT: the same key works.
    client.database_accounts.begin_create_or_update(sandbox.resource_group, name, DatabaseAccountCreateUpdateParameters(
        location="eastus", locations=[Location(location_name="eastus")], disable_local_auth=False), polling_interval=0).result()
    assert client.database_accounts.get(sandbox.resource_group, name).disable_local_auth is False
    assert sandbox.cosmos_key_valid(name, keys.primary_master_key)["valid"] is True
    assert sandbox.cosmos_key_valid(name, "bm90LWEta2V5")["valid"] is False


# ---- the storage resource provider's limits -------------------------------------------------------
def test_storage_provider_limits_are_azures_by_default(limits: SandboxClient) -> None:
    limits.reset_arm_limits()  # what a fresh sandbox has (the test session raises them)
    described = limits.call("GET", "/arm/limits")
    assert described["enabled"] is True
    assert described["read"] == [{"limit": 800, "window_s": 300.0}]
    assert described["list"] == [{"limit": 100, "window_s": 300.0}]
    assert described["write"] == [{"limit": 10, "window_s": 1.0}, {"limit": 1200, "window_s": 3600.0}]


def test_list_keys_is_throttled_per_subscription_and_region_with_retry_after(limits: SandboxClient) -> None:
    sandbox = limits
    west = "stw" + uuid.uuid4().hex[:12]
    storage(sandbox).storage_accounts.begin_create(sandbox.resource_group, west, StorageAccountCreateParameters(
        sku=Sku(name="Standard_LRS"), kind="StorageV2", location="westus"), polling_interval=0).result()
    sandbox.set_arm_limits(list={"limit": 3, "window_s": 6}, read={"limit": 2, "window_s": 60})
    client = storage(sandbox, retry_total=0)
    sandbox.reset_counters()
    # eastus: sandboxstore and sandboxdata share the subscription's and region's budget of 3.
    for account in ("sandboxstore", "sandboxdata", "sandboxstore"):
        assert client.storage_accounts.list_keys(sandbox.resource_group, account).keys_property
    with pytest.raises(HttpResponseError) as info:
        client.storage_accounts.list_keys(sandbox.resource_group, "sandboxdata")
    error = info.value
    assert (error.status_code, error.error.code if error.error else None) == (429, "TooManyRequests")
    assert error.error is not None and error.error.message == ("The request is being throttled as the limit has been reached for operation type - "
                                    "List_ObservationWindow_00:00:06. For more information, see - https://aka.ms/srpthrottlinglimits")
    assert error.response is not None and error.response.headers["Retry-After"] == "2"  # one of 3 tokens per 6 s
    # westus has its own budget.
    assert client.storage_accounts.list_keys(sandbox.resource_group, west).keys_property
    # Reads have theirs: 2 GETs, then 429 naming the read window.
    for _ in range(2):
        client.storage_accounts.get_properties(sandbox.resource_group, "sandboxstore")
    with pytest.raises(HttpResponseError) as info:
        client.storage_accounts.get_properties(sandbox.resource_group, "sandboxstore")
    assert info.value.status_code == 429 and "Read_ObservationWindow_00:01:00" in info.value.message
    counters = sandbox.counters()
    assert counters["by_endpoint_status"].get("arm:StorageListKeys:429") == 1
    assert counters["throttled"] >= 2
    # The bucket refills: after Retry-After, listKeys works again.
    time.sleep(2.1)
    assert client.storage_accounts.list_keys(sandbox.resource_group, "sandboxdata").keys_property


def test_the_sdk_waits_out_retry_after_and_limits_can_be_turned_off(limits: SandboxClient) -> None:
    sandbox = limits
    sandbox.set_arm_limits(list={"limit": 1, "window_s": 2})
    client = storage(sandbox)  # azure-core's default retry honours Retry-After
    client.storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")
    sandbox.reset_counters()
    began = time.monotonic()
    assert client.storage_accounts.list_keys(sandbox.resource_group, "sandboxstore").keys_property
    assert time.monotonic() - began >= 1.5
    assert sandbox.counters()["by_endpoint_status"] == {"arm:StorageListKeys:429": 1, "arm:StorageListKeys:200": 1}

    sandbox.set_arm_limits(enabled=False)
    sandbox.reset_counters()
    for _ in range(5):
        client.storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")
    assert sandbox.counters()["by_endpoint_status"] == {"arm:StorageListKeys:200": 5}
    with pytest.raises(RuntimeError, match="400"):
        sandbox.set_arm_limits(listkeys={"limit": 1, "window_s": 1})
    with pytest.raises(RuntimeError, match="400"):
        sandbox.set_arm_limits(list={"limit": 0, "window_s": 1})
