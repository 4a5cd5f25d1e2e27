"""Contract: storage in the sandbox (Azurite behind sandbox/azurite.py) with the unmodified SDKs.

azure-storage-blob, azure-data-tables and azure-mgmt-storage talk to production-style URLs:
managed-identity bearer tokens, account SAS, service SAS, user delegation SAS and table SAS, each
accepted within its permissions and lifetime and rejected outside them, and account keys rotated
through ARM (Azurite restarts with the new key, so everything signed with the old one fails).

The tests use storage accounts created through ARM for this module, so `sandboxstore` and
`sandboxdata` (which other tests use) keep their keys and contents.

Azurite (`--oauth basic`) checks a bearer token's issuer, audience and lifetime only; the
sandbox's proxy adds Azure RBAC for Blob and Table requests made with a token (403
`AuthorizationPermissionMismatch` without a data role at the account, container or table).

Known gaps (Azurite 3.37.0), asserted below so they are noticed if they change:
* queue requests with a token are not checked against RBAC, and no token signature is checked;
* SAS signatures that fail (wrong key, expired, not yet valid) answer 403 `AuthorizationFailure`
  where Azure answers 403 `AuthenticationFailed`;
* a shared key signed with a retired key answers 400 `InvalidAuthenticationInfo` (Azure: 403
  `AuthenticationFailed`);
* table errors come as XML, so azure-data-tables leaves `error_code` unset for some operations;
  the code is in the `x-ms-error-code` header, which is what these tests read.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.data.tables import AccountSasPermissions as TableAccountSasPermissions
from azure.data.tables import ResourceTypes as TableResourceTypes
from azure.data.tables import TableClient, TableSasPermissions, TableServiceClient, generate_table_sas
from azure.data.tables import generate_account_sas as generate_table_account_sas
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters, StorageAccountRegenerateKeyParameters
from azure.storage.blob import (
    AccountSasPermissions,
    BlobClient,
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    ResourceTypes,
    generate_account_sas,
    generate_blob_sas,
    generate_container_sas,
)

from sandbox.client import SandboxClient

BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_SCOPE = "https://storage.azure.com"
# A SAS whose signature or time window is wrong: Azure says AuthenticationFailed, Azurite AuthorizationFailure.
BAD_SIGNATURE = {"AuthenticationFailed", "AuthorizationFailure"}
NO_RETRY: dict[str, Any] = {"retry_total": 0}


# ---- helpers --------------------------------------------------------------------------------
def name(prefix: str) -> str:
    """A container/table-safe unique name (letters and digits, starts with a letter)."""
    return prefix + uuid.uuid4().hex[:12]


def now() -> datetime:
    return datetime.now(UTC)


def mgmt(sandbox: SandboxClient) -> StorageManagementClient:
    return StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def keys_of(sandbox: SandboxClient, account: str) -> dict[str, str]:
    result = mgmt(sandbox).storage_accounts.list_keys(sandbox.resource_group, account)
    return {k.key_name: k.value for k in result.keys_property or []}


def new_account(sandbox: SandboxClient) -> str:
    account = "st" + uuid.uuid4().hex[:16]
    created = mgmt(sandbox).storage_accounts.begin_create(
        sandbox.resource_group, account,
        StorageAccountCreateParameters(sku=Sku(name="Standard_LRS"), kind="StorageV2", location="eastus"),
        polling_interval=0,
    ).result()
    assert created.provisioning_state == "Succeeded"
    return account


def rejected(call: Callable[[], Any]) -> tuple[int | None, str | None]:
    """Run `call`, which must fail; returns (status, x-ms-error-code)."""
    with pytest.raises(HttpResponseError) as info:
        call()
    response = info.value.response
    assert response is not None
    return info.value.status_code, response.headers.get("x-ms-error-code")


def blob(sandbox: SandboxClient, account: str, container: str, blob_name: str, credential: Any) -> BlobClient:
    return BlobClient(sandbox.storage_endpoint(account), container, blob_name, credential=credential, **NO_RETRY)


def table(sandbox: SandboxClient, account: str, table_name: str, sas: str) -> TableClient:
    return TableClient(sandbox.storage_endpoint(account, "table"), table_name, credential=AzureSasCredential(sas), **NO_RETRY)


class FixedToken:
    """A credential that always presents one given token (to test what Azurite does with it)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def account(sandbox: SandboxClient) -> Iterator[str]:
    """A storage account of this module, with the `data` identity as Blob and Table Data Contributor."""
    account = new_account(sandbox)
    scope = sandbox.resource_id("storage", account)
    authz = AuthorizationManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    made = []
    for guid in (BLOB_DATA_CONTRIBUTOR, TABLE_DATA_CONTRIBUTOR):
        made.append(authz.role_assignments.create(scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=f"/subscriptions/{sandbox.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
            principal_id=sandbox.identities["data"].object_id, principal_type="ServicePrincipal",
        )))
    yield account
    for assignment in made:
        authz.role_assignments.delete(scope, assignment.name)


@pytest.fixture(scope="module")
def keys(sandbox: SandboxClient, account: str) -> dict[str, str]:
    return keys_of(sandbox, account)


@pytest.fixture(scope="module")
def container(sandbox: SandboxClient, account: str, keys: dict[str, str]) -> str:
    """A container holding blob `b` = b"hello", written with the account key."""
    container = name("c")
    client = BlobServiceClient(sandbox.storage_endpoint(account), credential=AzureNamedKeyCredential(account, keys["key1"]))
    client.create_container(container).upload_blob("b", b"hello")
    return container


@pytest.fixture(scope="module")
def table_name(sandbox: SandboxClient, account: str, keys: dict[str, str]) -> str:
    """A table holding entity (p, r) with v=1, written with the account key."""
    table_name = name("t")
    service = TableServiceClient(sandbox.storage_endpoint(account, "table"), credential=AzureNamedKeyCredential(account, keys["key1"]))
    service.create_table(table_name).create_entity({"PartitionKey": "p", "RowKey": "r", "v": 1})
    return table_name


# ---- managed identity (bearer tokens) --------------------------------------------------------
def test_managed_identity_creates_writes_and_reads_a_blob(sandbox: SandboxClient, account: str) -> None:
    service = BlobServiceClient(sandbox.storage_endpoint(account), credential=sandbox.credential("data"))
    container = name("mi")
    service.create_container(container)
    client = service.get_blob_client(container, "greeting.txt")
    client.upload_blob(b"hello from a managed identity")
    assert client.download_blob().readall() == b"hello from a managed identity"
    assert [b.name for b in service.get_container_client(container).list_blobs()] == ["greeting.txt"]
    assert container in {c.name for c in service.list_containers()}


def test_managed_identity_creates_writes_and_reads_a_table_entity(sandbox: SandboxClient, account: str) -> None:
    service = TableServiceClient(sandbox.storage_endpoint(account, "table"), credential=sandbox.credential("data"))
    table_name = name("mi")
    client = service.create_table(table_name)
    client.create_entity({"PartitionKey": "tenant", "RowKey": "1", "secret": "name-1", "version": 3})
    entity = client.get_entity("tenant", "1")
    assert (entity["secret"], entity["version"]) == ("name-1", 3)
    client.upsert_entity({"PartitionKey": "tenant", "RowKey": "1", "secret": "name-1", "version": 4})
    assert [e["version"] for e in client.query_entities("PartitionKey eq 'tenant'")] == [4]
    assert table_name in {t.name for t in service.list_tables()}


def test_bearer_tokens_must_be_current_and_for_storage(sandbox: SandboxClient, account: str, container: str) -> None:
    expired = sandbox.issue_token("data", STORAGE_SCOPE, lifetime_s=-600)
    assert rejected(lambda: blob(sandbox, account, container, "b", FixedToken(expired)).download_blob().readall()) == (
        403, "AuthenticationFailed")
    for_vault = sandbox.issue_token("data", "https://vault.azure.net")
    assert rejected(lambda: blob(sandbox, account, container, "b", FixedToken(for_vault)).download_blob().readall()) == (
        403, "AuthenticationFailed")
    # The account-specific audience is accepted, as in Azure.
    endpoint = f"https://{account}.blob.core.windows.net"
    specific = sandbox.issue_token("data", endpoint)
    assert blob(sandbox, account, container, "b", FixedToken(specific)).download_blob().readall() == b"hello"


def test_bearer_tokens_need_a_data_role_as_in_azure(sandbox: SandboxClient, account: str, container: str, table_name: str) -> None:
    """Blob and Table requests with a token are authorized with Azure RBAC, down to container and
    table scope; the denial is Azure's 403 AuthorizationPermissionMismatch."""
    identity = sandbox.create_identity(name("rbac"))
    credential = sandbox.credential(identity.name)
    service = BlobServiceClient(sandbox.storage_endpoint(account), credential=credential, **NO_RETRY)
    tables = TableClient(sandbox.storage_endpoint(account, "table"), table_name, credential=credential, **NO_RETRY)
    denied = (403, "AuthorizationPermissionMismatch")
    assert rejected(lambda: blob(sandbox, account, container, "b", credential).download_blob().readall()) == denied
    assert rejected(lambda: service.get_user_delegation_key(now(), now() + timedelta(hours=1))) == denied
    assert rejected(lambda: tables.get_entity("p", "r")) == denied

    container_scope = f"{sandbox.resource_id('storage', account)}/blobServices/default/containers/{container}"
    sandbox.grant(identity.name, "Storage Blob Data Reader", container_scope)
    assert blob(sandbox, account, container, "b", credential).download_blob().readall() == b"hello"
    assert rejected(lambda: blob(sandbox, account, container, "new", credential).upload_blob(b"x")) == denied
    assert rejected(lambda: service.create_container(name("c"))) == denied  # the role is on one container only

    sandbox.grant(identity.name, "Storage Blob Delegator", sandbox.resource_id("storage", account))
    assert service.get_user_delegation_key(now(), now() + timedelta(hours=1)).signed_oid == identity.object_id

    table_scope = f"{sandbox.resource_id('storage', account)}/tableServices/default/tables/{table_name}"
    sandbox.grant(identity.name, "Storage Table Data Reader", table_scope)
    assert tables.get_entity("p", "r")["v"] == 1
    assert rejected(lambda: tables.create_entity({"PartitionKey": "p", "RowKey": name("r")})) == denied


# ---- account SAS ----------------------------------------------------------------------------
def test_account_sas_allows_only_its_permissions_resource_types_and_window(
    sandbox: SandboxClient, account: str, keys: dict[str, str], container: str,
) -> None:
    everything = ResourceTypes(service=True, container=True, object=True)
    read_only = generate_account_sas(account, keys["key1"], everything, AccountSasPermissions(read=True, list=True),
                                     expiry=now() + timedelta(minutes=10))
    assert blob(sandbox, account, container, "b", read_only).download_blob().readall() == b"hello"
    listed = ContainerClient(sandbox.storage_endpoint(account), container, credential=read_only, **NO_RETRY).list_blobs()
    assert [b.name for b in listed] == ["b"]
    # Beyond its permissions.
    assert rejected(lambda: blob(sandbox, account, container, name("new"), read_only).upload_blob(b"x")) == (
        403, "AuthorizationPermissionMismatch")
    service = BlobServiceClient(sandbox.storage_endpoint(account), credential=read_only, **NO_RETRY)
    assert rejected(lambda: service.create_container(name("c"))) == (403, "AuthorizationPermissionMismatch")
    # A write SAS does write.
    write = generate_account_sas(account, keys["key2"], ResourceTypes(object=True), AccountSasPermissions(write=True, create=True),
                                 expiry=now() + timedelta(minutes=10))
    written = name("w")
    blob(sandbox, account, container, written, write).upload_blob(b"via sas")
    assert blob(sandbox, account, container, written, read_only).download_blob().readall() == b"via sas"
    # Beyond its resource types.
    service_only = generate_account_sas(account, keys["key1"], ResourceTypes(service=True), AccountSasPermissions(read=True),
                                        expiry=now() + timedelta(minutes=10))
    assert rejected(lambda: blob(sandbox, account, container, "b", service_only).download_blob().readall()) == (
        403, "AuthorizationResourceTypeMismatch")
    # Outside its time window, or signed with a key that is not the account's.
    expired = generate_account_sas(account, keys["key1"], everything, AccountSasPermissions(read=True),
                                   start=now() - timedelta(hours=1), expiry=now() - timedelta(minutes=1))
    not_yet = generate_account_sas(account, keys["key1"], everything, AccountSasPermissions(read=True),
                                   start=now() + timedelta(minutes=10), expiry=now() + timedelta(minutes=20))
    wrong_key = generate_account_sas(account, keys_of(sandbox, "sandboxdata")["key1"], everything, AccountSasPermissions(read=True),
                                     expiry=now() + timedelta(minutes=10))
    for sas in (expired, not_yet, wrong_key):
        status, code = rejected(lambda sas=sas: blob(sandbox, account, container, "b", sas).download_blob().readall())
        assert status == 403 and code in BAD_SIGNATURE


def test_account_sas_stops_working_when_it_expires(sandbox: SandboxClient, account: str, keys: dict[str, str], container: str) -> None:
    expiry = now().replace(microsecond=0) + timedelta(seconds=2)
    sas = generate_account_sas(account, keys["key1"], ResourceTypes(object=True), AccountSasPermissions(read=True), expiry=expiry)
    client = blob(sandbox, account, container, "b", sas)
    assert client.download_blob().readall() == b"hello"
    time.sleep(max(0.0, (expiry - now()).total_seconds()) + 1.0)
    status, code = rejected(lambda: client.download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE


# ---- service SAS ----------------------------------------------------------------------------
def test_container_sas_allows_only_its_permissions_and_container(
    sandbox: SandboxClient, account: str, keys: dict[str, str], container: str,
) -> None:
    read = generate_container_sas(account, container, account_key=keys["key2"], permission=ContainerSasPermissions(read=True),
                                  expiry=now() + timedelta(minutes=10))
    assert blob(sandbox, account, container, "b", read).download_blob().readall() == b"hello"
    assert rejected(lambda: blob(sandbox, account, container, name("new"), read).upload_blob(b"x")) == (
        403, "AuthorizationPermissionMismatch")
    lister = ContainerClient(sandbox.storage_endpoint(account), container, credential=read, **NO_RETRY)
    assert rejected(lambda: list(lister.list_blobs())) == (403, "AuthorizationPermissionMismatch")
    write = generate_container_sas(account, container, account_key=keys["key1"],
                                   permission=ContainerSasPermissions(write=True, create=True, list=True),
                                   expiry=now() + timedelta(minutes=10))
    written = name("w")
    blob(sandbox, account, container, written, write).upload_blob(b"container sas")
    assert written in {b.name for b in ContainerClient(sandbox.storage_endpoint(account), container, credential=write).list_blobs()}
    # The signature covers the container: another container (even an existing one) is refused.
    other = name("c")
    BlobServiceClient(sandbox.storage_endpoint(account), credential=AzureNamedKeyCredential(account, keys["key1"])).create_container(other)
    status, code = rejected(lambda: blob(sandbox, account, other, "b", read).download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE
    expired = generate_container_sas(account, container, account_key=keys["key2"], permission=ContainerSasPermissions(read=True),
                                     start=now() - timedelta(hours=1), expiry=now() - timedelta(minutes=1))
    status, code = rejected(lambda: blob(sandbox, account, container, "b", expired).download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE


def test_blob_sas_allows_only_its_permissions_and_blob(sandbox: SandboxClient, account: str, keys: dict[str, str], container: str) -> None:
    read = generate_blob_sas(account, container, "b", account_key=keys["key1"], permission=BlobSasPermissions(read=True),
                             expiry=now() + timedelta(minutes=10))
    assert blob(sandbox, account, container, "b", read).download_blob().readall() == b"hello"
    assert rejected(lambda: blob(sandbox, account, container, "b", read).upload_blob(b"x", overwrite=True)) == (
        403, "AuthorizationPermissionMismatch")
    assert rejected(lambda: blob(sandbox, account, container, "b", read).delete_blob()) == (403, "AuthorizationPermissionMismatch")
    status, code = rejected(lambda: blob(sandbox, account, container, "other", read).download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE
    target = name("w")
    write = generate_blob_sas(account, container, target, account_key=keys["key2"], permission=BlobSasPermissions(create=True, write=True),
                              expiry=now() + timedelta(minutes=10))
    blob(sandbox, account, container, target, write).upload_blob(b"blob sas")
    assert rejected(lambda: blob(sandbox, account, container, target, write).download_blob().readall()) == (
        403, "AuthorizationPermissionMismatch")
    expired = generate_blob_sas(account, container, "b", account_key=keys["key1"], permission=BlobSasPermissions(read=True),
                                start=now() - timedelta(hours=1), expiry=now() - timedelta(minutes=1))
    status, code = rejected(lambda: blob(sandbox, account, container, "b", expired).download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE


# ---- user delegation SAS --------------------------------------------------------------------
def test_user_delegation_sas(sandbox: SandboxClient, account: str, container: str) -> None:
    service = BlobServiceClient(sandbox.storage_endpoint(account), credential=sandbox.credential("data"))
    delegation_key = service.get_user_delegation_key(now() - timedelta(minutes=5), now() + timedelta(hours=1))
    assert delegation_key.signed_oid == sandbox.identities["data"].object_id
    assert delegation_key.signed_tid == sandbox.tenant_id
    assert delegation_key.signed_service == "b" and delegation_key.value
    read = generate_blob_sas(account, container, "b", user_delegation_key=delegation_key, permission=BlobSasPermissions(read=True),
                             expiry=now() + timedelta(minutes=10))
    assert "skoid=" in read and "sig=" in read
    assert blob(sandbox, account, container, "b", read).download_blob().readall() == b"hello"
    assert rejected(lambda: blob(sandbox, account, container, "b", read).upload_blob(b"x", overwrite=True)) == (
        403, "AuthorizationPermissionMismatch")
    status, code = rejected(lambda: blob(sandbox, account, container, "other", read).download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE
    expired = generate_blob_sas(account, container, "b", user_delegation_key=delegation_key, permission=BlobSasPermissions(read=True),
                                start=now() - timedelta(minutes=4), expiry=now() - timedelta(minutes=1))
    status, code = rejected(lambda: blob(sandbox, account, container, "b", expired).download_blob().readall())
    assert status == 403 and code in BAD_SIGNATURE
    # A delegation key is only handed out to bearer tokens, not to a SAS.
    sas_service = BlobServiceClient(sandbox.storage_endpoint(account), credential=read, **NO_RETRY)
    status, _ = rejected(lambda: sas_service.get_user_delegation_key(now(), now() + timedelta(hours=1)))
    assert status == 403


# ---- table SAS ------------------------------------------------------------------------------
def test_table_sas(sandbox: SandboxClient, account: str, keys: dict[str, str], table_name: str) -> None:
    credential = AzureNamedKeyCredential(account, keys["key1"])
    read = generate_table_sas(credential, table_name, permission=TableSasPermissions(read=True), expiry=now() + timedelta(minutes=10))
    assert table(sandbox, account, table_name, read).get_entity("p", "r")["v"] == 1
    assert rejected(lambda: table(sandbox, account, table_name, read).create_entity({"PartitionKey": "p", "RowKey": name("r")})) == (
        403, "AuthorizationPermissionMismatch")
    status, code = rejected(lambda: table(sandbox, account, name("t"), read).get_entity("p", "r"))
    assert status == 403 and code in BAD_SIGNATURE
    add = generate_table_sas(credential, table_name, permission=TableSasPermissions(add=True, read=True),
                             expiry=now() + timedelta(minutes=10))
    row = name("r")
    table(sandbox, account, table_name, add).create_entity({"PartitionKey": "p", "RowKey": row, "v": 2})
    assert table(sandbox, account, table_name, read).get_entity("p", row)["v"] == 2
    expired = generate_table_sas(credential, table_name, permission=TableSasPermissions(read=True),
                                 start=now() - timedelta(hours=1), expiry=now() - timedelta(minutes=1))
    status, code = rejected(lambda: table(sandbox, account, table_name, expired).get_entity("p", "r"))
    assert status == 403 and code in BAD_SIGNATURE


def test_table_account_sas(sandbox: SandboxClient, account: str, keys: dict[str, str], table_name: str) -> None:
    credential = AzureNamedKeyCredential(account, keys["key2"])
    everything = TableResourceTypes(service=True, container=True, object=True)
    read = generate_table_account_sas(credential, everything, TableAccountSasPermissions(read=True, list=True),
                                      expiry=now() + timedelta(minutes=10))
    assert table(sandbox, account, table_name, read).get_entity("p", "r")["v"] == 1
    service = TableServiceClient(sandbox.storage_endpoint(account, "table"), credential=AzureSasCredential(read), **NO_RETRY)
    assert table_name in {t.name for t in service.list_tables()}
    assert rejected(lambda: table(sandbox, account, table_name, read).create_entity({"PartitionKey": "p", "RowKey": name("r")})) == (
        403, "AuthorizationPermissionMismatch")
    expired = generate_table_account_sas(credential, everything, TableAccountSasPermissions(read=True),
                                         start=now() - timedelta(hours=1), expiry=now() - timedelta(minutes=1))
    status, code = rejected(lambda: table(sandbox, account, table_name, expired).get_entity("p", "r"))
    assert status == 403 and code in BAD_SIGNATURE


# ---- key rotation ---------------------------------------------------------------------------
def test_regenerating_key1_revokes_what_it_signed_only(sandbox: SandboxClient) -> None:
    account = new_account(sandbox)
    before = keys_of(sandbox, account)
    container = name("rot")
    BlobServiceClient(sandbox.storage_endpoint(account), credential=AzureNamedKeyCredential(account, before["key1"])).create_container(
        container).upload_blob("b", b"rotate me")
    expiry = now() + timedelta(minutes=10)

    def sas(key: str) -> str:
        return generate_blob_sas(account, container, "b", account_key=key, permission=BlobSasPermissions(read=True), expiry=expiry)

    def read(credential: Any) -> bytes:
        return blob(sandbox, account, container, "b", credential).download_blob().readall()

    old_key1, with_key2 = sas(before["key1"]), sas(before["key2"])
    # A user delegation SAS needs its signer to hold the key and the data role the SAS uses.
    sandbox.grant("data", "Storage Blob Delegator", sandbox.resource_id("storage", account))
    sandbox.grant("data", "Storage Blob Data Reader", sandbox.resource_id("storage", account))
    mi_service = BlobServiceClient(sandbox.storage_endpoint(account), credential=sandbox.credential("data"))
    delegated = generate_blob_sas(
        account, container, "b", permission=BlobSasPermissions(read=True), expiry=expiry,
        user_delegation_key=mi_service.get_user_delegation_key(now() - timedelta(minutes=5), now() + timedelta(hours=1)),
    )
    assert read(old_key1) == read(with_key2) == read(delegated) == b"rotate me"

    result = mgmt(sandbox).storage_accounts.regenerate_key(
        sandbox.resource_group, account, StorageAccountRegenerateKeyParameters(key_name="key1"))
    after = {k.key_name: k.value for k in result.keys_property or []}
    assert after["key1"] != before["key1"] and after["key2"] == before["key2"]

    # regenerate_key answers once Azurite runs with the new keys: no waiting needed.
    status, code = rejected(lambda: read(old_key1))
    assert status == 403 and code in BAD_SIGNATURE
    assert read(sas(after["key1"])) == b"rotate me"
    assert read(with_key2) == b"rotate me"
    # User delegation SAS do not depend on account keys (as in Azure).
    assert read(delegated) == b"rotate me"
    # Shared key with the retired key is refused too (Azurite: 400 InvalidAuthenticationInfo; Azure: 403).
    retired = BlobServiceClient(sandbox.storage_endpoint(account), credential=AzureNamedKeyCredential(account, before["key1"]), **NO_RETRY)
    status, code = rejected(lambda: retired.get_container_client(container).get_container_properties())
    assert (status, code) in {(400, "InvalidAuthenticationInfo"), (403, "AuthenticationFailed")}
    current = BlobServiceClient(sandbox.storage_endpoint(account), credential=AzureNamedKeyCredential(account, after["key1"]))
    assert current.get_container_client(container).get_container_properties().name == container
