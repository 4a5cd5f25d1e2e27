"""Contract: where the storage proxy is as strict as Azure and Azurite is not.

* Get User Delegation Key: start and expiry within 7 days of the *service's* clock, else 400
  `InvalidXmlNodeValue` naming the value (REST "Get User Delegation Key"; azure-sdk-for-net#17690,
  azure-powershell#17183); the proxy's clock can be skewed through the control API.
* `allowSharedKeyAccess: false` (set and read through ARM): Shared Key requests and key-signed SAS
  (account and service SAS, Blob, Queue and Table) get 403 `KeyBasedAuthenticationNotPermitted`
  with Azure's body; bearer tokens and user delegation SAS still work, and listKeys still lists
  (Learn: "Prevent Shared Key authorization for an Azure Storage account").
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableSasPermissions, TableServiceClient, generate_table_sas
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import StorageAccountUpdateParameters
from azure.storage.blob import (
    AccountSasPermissions,
    BlobClient,
    BlobSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    Services,
    generate_account_sas,
    generate_blob_sas,
)

from sandbox.client import SandboxClient
from tests.sandbox.test_storage import keys_of, new_account

NO_RETRY: dict[str, Any] = {"retry_total": 0}


def now() -> datetime:
    return datetime.now(UTC)


def mgmt(sandbox: SandboxClient) -> StorageManagementClient:
    return StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def refused(call: Any) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as info:
        call()
    return info.value


@pytest.fixture()
def skewed(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    yield sandbox
    sandbox.set_storage_clock_skew(0)


# ---- Get User Delegation Key ----------------------------------------------------------------------
def test_delegation_key_bound_is_seven_days_of_the_service_clock(skewed: SandboxClient) -> None:
    sandbox = skewed
    service = BlobServiceClient(sandbox.storage_endpoint("sandboxstore"), credential=sandbox.admin_credential(), **NO_RETRY)
    # Inside the bound (the SDK sends whole seconds): accepted, and the key says what was asked.
    expiry = now() + timedelta(days=7) - timedelta(minutes=1)
    key = service.get_user_delegation_key(now() - timedelta(minutes=15), expiry)
    assert key.value and key.signed_expiry == expiry.strftime("%Y-%m-%dT%H:%M:%SZ")

    too_late = now() + timedelta(days=7, minutes=1)
    error = refused(lambda: service.get_user_delegation_key(now(), too_late))
    assert (error.status_code, error.error_code) == (400, "InvalidXmlNodeValue")
    value = too_late.strftime("%Y-%m-%dT%H:%M:%SZ")
    body = error.response.text() if error.response is not None else ""
    assert f"<XmlNodeName>{value}</XmlNodeName><XmlNodeValue>{value}</XmlNodeValue>" in body
    assert "The value for one of the XML nodes is not in the correct format." in body
    # A start more than 7 days away is refused too.
    error = refused(lambda: service.get_user_delegation_key(now() - timedelta(days=7, minutes=5), now() + timedelta(hours=1)))
    assert (error.status_code, error.error_code) == (400, "InvalidXmlNodeValue")

    # The service's clock decides: 10 minutes behind the client, "now + 7 days - 1 minute" by the
    # client's clock is 7 days and 9 minutes by the service's: refused.
    sandbox.set_storage_clock_skew(-600)
    assert sandbox.call("GET", "/storage/clock")["skew_s"] == -600
    error = refused(lambda: service.get_user_delegation_key(now(), now() + timedelta(days=7) - timedelta(minutes=1)))
    assert (error.status_code, error.error_code) == (400, "InvalidXmlNodeValue")
    assert service.get_user_delegation_key(now(), now() + timedelta(days=7) - timedelta(minutes=11)).value
    # The start is measured by the service's clock too: 7 days and 5 minutes back by the client's
    # clock is 6 days 23 hours 55 minutes back by the service's (accepted), 7 days 15 minutes not.
    assert service.get_user_delegation_key(now() - timedelta(days=7, minutes=5), now() + timedelta(hours=1)).value
    error = refused(lambda: service.get_user_delegation_key(now() - timedelta(days=7, minutes=15), now() + timedelta(hours=1)))
    assert (error.status_code, error.error_code) == (400, "InvalidXmlNodeValue")
    with pytest.raises(RuntimeError, match="400"):
        sandbox.call("PUT", "/storage/clock", {"skew_s": "soon"})


# ---- allowSharedKeyAccess: false ------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyless(sandbox: SandboxClient) -> Iterator[dict[str, Any]]:
    """A new account with a container (blob `b`) and a table made with its key, then
    switched to allowSharedKeyAccess: false through ARM; the `data` identity may use its data."""
    account = new_account(sandbox)
    keys = keys_of(sandbox, account)
    shared = AzureNamedKeyCredential(account, keys["key1"])
    container, table = "c" + uuid.uuid4().hex[:10], "t" + uuid.uuid4().hex[:10]
    BlobServiceClient(sandbox.storage_endpoint(account), credential=shared).create_container(container).upload_blob("b", b"hello")
    TableServiceClient(sandbox.storage_endpoint(account, "table"), credential=shared).create_table(table).create_entity(
        {"PartitionKey": "p", "RowKey": "r", "v": 1})
    scope = sandbox.resource_id("storage", account)
    for role in ("Storage Blob Data Contributor", "Storage Blob Delegator", "Storage Table Data Contributor"):
        sandbox.grant("data", role, scope)
    updated = mgmt(sandbox).storage_accounts.update(sandbox.resource_group, account,
                                                    StorageAccountUpdateParameters(allow_shared_key_access=False))
    assert updated.allow_shared_key_access is False
    yield {"account": account, "keys": keys, "container": container, "table": table}


def test_arm_sets_and_reads_allow_shared_key_access(sandbox: SandboxClient, keyless: dict[str, Any]) -> None:
    client = mgmt(sandbox)
    account = keyless["account"]
    assert client.storage_accounts.get_properties(sandbox.resource_group, account).allow_shared_key_access is False
    listed = {a.name: a.allow_shared_key_access for a in client.storage_accounts.list_by_resource_group(sandbox.resource_group)}
    assert listed[account] is False and listed["sandboxstore"] is True
    # listKeys still lists (the keys just authorize nothing).
    assert keys_of(sandbox, account) == keyless["keys"]
    # A PUT (create or update) sets it too; a non-boolean is refused.
    other = new_account(sandbox)
    url = f"{sandbox.arm_endpoint}{sandbox.resource_id('storage', other)}?api-version=2023-05-01"
    token = sandbox.issue_token("admin", "https://management.azure.com")

    def put(body: dict[str, Any]) -> tuple[int, Any]:
        answer = requests.put(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                              verify=os.environ["REQUESTS_CA_BUNDLE"])
        return answer.status_code, answer.json()

    status, view = put({"location": "eastus", "properties": {"allowSharedKeyAccess": False}})
    assert status == 200 and view["properties"]["allowSharedKeyAccess"] is False
    status, error = put({"location": "eastus", "properties": {"allowSharedKeyAccess": "no"}})
    assert status == 400 and error["error"]["code"] == "InvalidRequestContent"


def test_shared_key_and_key_signed_sas_are_refused_as_in_azure(sandbox: SandboxClient, keyless: dict[str, Any]) -> None:
    account, container, table = keyless["account"], keyless["container"], keyless["table"]
    key = keyless["keys"]["key1"]
    shared = AzureNamedKeyCredential(account, key)
    expected = (403, "KeyBasedAuthenticationNotPermitted")

    def code(call: Any) -> tuple[int | None, str | None]:
        error = refused(call)
        assert error.response is not None
        return error.status_code, error.response.headers.get("x-ms-error-code")

    blob_with_key = BlobClient(sandbox.storage_endpoint(account), container, "b", credential=shared, **NO_RETRY)
    assert code(lambda: blob_with_key.download_blob().readall()) == expected
    error = refused(lambda: blob_with_key.download_blob().readall())
    body = error.response.text() if error.response is not None else ""
    assert "<Code>KeyBasedAuthenticationNotPermitted</Code>" in body
    assert "Key based authentication is not permitted on this storage account." in body and "RequestId:" in body
    # Queue (no queue SDK here: a raw List Queues with an account SAS for the queue service).
    queue_sas = generate_account_sas(account, key, ResourceTypes(service=True), AccountSasPermissions(list=True),
                                     expiry=now() + timedelta(minutes=10), services=Services(queue=True))
    answer = requests.get(f"{sandbox.storage_endpoint(account, 'queue')}/?comp=list&{queue_sas}", timeout=30,
                          verify=os.environ["REQUESTS_CA_BUNDLE"])
    assert (answer.status_code, answer.headers.get("x-ms-error-code")) == expected
    assert "<Code>KeyBasedAuthenticationNotPermitted</Code>" in answer.text
    tables = TableClient(sandbox.storage_endpoint(account, "table"), table, credential=shared, **NO_RETRY)
    error = refused(lambda: tables.get_entity("p", "r"))
    assert error.status_code == 403 and error.error_code == "KeyBasedAuthenticationNotPermitted"  # OData JSON body

    account_sas = generate_account_sas(account, key, ResourceTypes(object=True), AccountSasPermissions(read=True),
                                       expiry=now() + timedelta(minutes=10))
    service_sas = generate_blob_sas(account, container, "b", account_key=key, permission=BlobSasPermissions(read=True),
                                    expiry=now() + timedelta(minutes=10))
    table_sas = generate_table_sas(shared, table, permission=TableSasPermissions(read=True), expiry=now() + timedelta(minutes=10))
    for sas in (account_sas, service_sas):
        assert code(lambda sas=sas: BlobClient(sandbox.storage_endpoint(account), container, "b", credential=sas,
                                               **NO_RETRY).download_blob().readall()) == expected
    error = refused(lambda: TableClient(sandbox.storage_endpoint(account, "table"), table, credential=AzureSasCredential(table_sas),
                                        **NO_RETRY).get_entity("p", "r"))
    assert error.status_code == 403 and error.error_code == "KeyBasedAuthenticationNotPermitted"

    # Entra ID still works: bearer tokens and a user delegation SAS.
    service = BlobServiceClient(sandbox.storage_endpoint(account), credential=sandbox.credential("data"), **NO_RETRY)
    assert service.get_blob_client(container, "b").download_blob().readall() == b"hello"
    assert TableClient(sandbox.storage_endpoint(account, "table"), table, credential=sandbox.credential("data"),
                       **NO_RETRY).get_entity("p", "r")["v"] == 1
    delegation_key = service.get_user_delegation_key(now() - timedelta(minutes=5), now() + timedelta(hours=1))
    delegated = generate_blob_sas(account, container, "b", user_delegation_key=delegation_key, permission=BlobSasPermissions(read=True),
                                  expiry=now() + timedelta(minutes=10))
    assert BlobClient(sandbox.storage_endpoint(account), container, "b", credential=delegated, **NO_RETRY).download_blob().readall() == b"hello"

    # Allowed again: the same key works at once.
    mgmt(sandbox).storage_accounts.update(sandbox.resource_group, account, StorageAccountUpdateParameters(allow_shared_key_access=True))
    try:
        assert blob_with_key.download_blob().readall() == b"hello"
    finally:
        mgmt(sandbox).storage_accounts.update(sandbox.resource_group, account, StorageAccountUpdateParameters(allow_shared_key_access=False))
