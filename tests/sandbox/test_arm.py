"""Contract: the sandbox's ARM (sandbox/arm.py) with the unmodified management SDKs.

Keys of `sandboxstore` are never regenerated here (other tests use that account); regenerate
tests work on accounts created through ARM.  Azurite's reaction to new keys is tested elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.cosmosdb.models import DatabaseAccountRegenerateKeyParameters
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters, StorageAccountRegenerateKeyParameters
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import StringDictionary

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

COSMOS = "sandbox-cosmos"
SITE = "sandbox-web"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
KEY_OPERATOR = "81a9662b-bebf-436f-a333-f67b29880f12"
COSMOS_READER = "fbdf93bf-df7d-467e-a4d2-9458aa1360c8"
WEBSITE_CONTRIBUTOR = "de139f84-1756-47ae-9be6-808fbbe84772"
KV_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ARM_SCOPE = "https://management.azure.com/.default"


# ---- clients and helpers --------------------------------------------------------------------
def storage(sandbox: SandboxClient, identity: str = "admin") -> StorageManagementClient:
    return StorageManagementClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def cosmos(sandbox: SandboxClient, identity: str = "admin") -> CosmosDBManagementClient:
    return CosmosDBManagementClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def web(sandbox: SandboxClient, identity: str = "admin") -> WebSiteManagementClient:
    return WebSiteManagementClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def authz(sandbox: SandboxClient, identity: str = "admin") -> AuthorizationManagementClient:
    return AuthorizationManagementClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def role_id(sandbox: SandboxClient, guid: str) -> str:
    return f"/subscriptions/{sandbox.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def grant(sandbox: SandboxClient, scope: str, guid: str, identity: str, *, as_identity: str = "admin") -> Any:
    """Create a role assignment through ARM; returns the SDK's RoleAssignment."""
    return authz(sandbox, as_identity).role_assignments.create(scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(
        role_definition_id=role_id(sandbox, guid), principal_id=sandbox.identities[identity].object_id,
        principal_type="ServicePrincipal",
    ))


@pytest.fixture()
def granted(sandbox: SandboxClient) -> Iterator[Any]:
    """`granted(scope, role_guid, identity)`: a role assignment deleted again after the test."""
    made: list[tuple[str, str]] = []

    def make(scope: str, guid: str, identity: str) -> Any:
        assignment = grant(sandbox, scope, guid, identity)
        made.append((scope, assignment.name))
        return assignment

    yield make
    for scope, name in made:
        authz(sandbox).role_assignments.delete(scope, name)


def token(sandbox: SandboxClient, identity: str = "admin") -> str:
    return str(sandbox.credential(identity).get_token(ARM_SCOPE).token)


def arm(sandbox: SandboxClient, method: str, path: str, *, identity: str | None = "admin", **kwargs: Any) -> requests.Response:
    """A raw ARM call (for status codes and headers the SDKs hide)."""
    headers = {"Authorization": f"Bearer {token(sandbox, identity)}"} if identity else {}
    return requests.request(method, sandbox.arm_endpoint + path, headers=headers, timeout=15, **kwargs)


def error_of(info: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str, str]:
    error = info.value.error
    assert error is not None
    return info.value.status_code, str(error.code), str(error.message)


def new_group(sandbox: SandboxClient) -> str:
    group = unique("rg")
    response = arm(sandbox, "PUT", f"/subscriptions/{sandbox.subscription_id}/resourcegroups/{group}?api-version=2022-09-01", json={"location": "westeurope"})
    assert response.status_code == 201, response.text
    assert response.json()["location"] == "westeurope"
    return group


def new_storage_account(sandbox: SandboxClient, group: str | None = None) -> str:
    account = "arm" + uuid.uuid4().hex[:16]
    poller = storage(sandbox).storage_accounts.begin_create(
        group or sandbox.resource_group, account,
        StorageAccountCreateParameters(sku=Sku(name="Standard_GRS"), kind="StorageV2", location="eastus"),
        polling_interval=0,
    )
    created = poller.result()
    assert poller.done() and poller.status().lower() == "succeeded"
    assert created.name == account and created.provisioning_state == "Succeeded"
    return account


def new_cosmos_account(sandbox: SandboxClient) -> str:
    account = unique("cosmos")
    body = {
        "location": "eastus", "kind": "GlobalDocumentDB",
        "properties": {"databaseAccountOfferType": "Standard", "locations": [{"locationName": "eastus", "failoverPriority": 0}]},
    }
    created = cosmos(sandbox).database_accounts.begin_create_or_update(sandbox.resource_group, account, body, polling_interval=0).result()
    assert created.name == account and created.properties.provisioning_state == "Succeeded"
    return account


def keys_of(result: Any) -> dict[str, str]:
    return {k.key_name: k.value for k in result.keys_property or []}


# ---- storage --------------------------------------------------------------------------------
def test_storage_list_keys_shape(sandbox: SandboxClient) -> None:
    result = storage(sandbox).storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")
    keys = result.keys_property or []
    assert [k.key_name for k in keys] == ["key1", "key2"]
    assert all(k.permissions == "FULL" and k.creation_time is not None for k in keys)
    assert keys[0].value != keys[1].value
    # The same keys again: listing does not change them.
    assert keys_of(storage(sandbox).storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")) == keys_of(result)


def test_create_storage_account_in_a_new_group_is_a_completed_lro(sandbox: SandboxClient) -> None:
    group = new_group(sandbox)
    account = new_storage_account(sandbox, group)
    client = storage(sandbox)
    got = client.storage_accounts.get_properties(group, account)
    assert got.id.lower() == sandbox.resource_id("storage", account, group).lower()
    assert got.sku.name == "Standard_GRS" and got.kind == "StorageV2"
    assert got.primary_endpoints.blob == f"{sandbox.storage_endpoint(account, 'blob')}/"
    assert [a.name for a in client.storage_accounts.list_by_resource_group(group)] == [account]
    assert {"sandboxstore", "sandboxdata", account} <= {a.name for a in client.storage_accounts.list()}
    assert len(keys_of(client.storage_accounts.list_keys(group, account))) == 2
    # The default group does not list it.
    assert account not in {a.name for a in client.storage_accounts.list_by_resource_group(sandbox.resource_group)}


def test_storage_create_answers_202_with_location_then_the_account(sandbox: SandboxClient) -> None:
    account = "raw" + uuid.uuid4().hex[:16]
    path = sandbox.resource_id("storage", account) + "?api-version=2026-09-01"
    created = arm(sandbox, "PUT", path, json={"location": "eastus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}})
    assert created.status_code == 202
    location = created.headers["Location"]
    assert location.startswith(f"{sandbox.arm_endpoint}/subscriptions/{sandbox.subscription_id}/providers/Microsoft.Storage/locations/eastus/asyncoperations/")
    assert arm(sandbox, "GET", path).json()["properties"]["provisioningState"] == "Creating"
    headers = {"Authorization": f"Bearer {token(sandbox)}"}
    assert requests.get(location, headers=headers, timeout=15).status_code == 202
    done = requests.get(location, headers=headers, timeout=15)
    assert done.status_code == 200 and done.json()["name"] == account
    assert arm(sandbox, "GET", path).json()["properties"]["provisioningState"] == "Succeeded"
    # Another principal cannot read the operation.
    assert requests.get(location, headers={"Authorization": f"Bearer {token(sandbox, 'other')}"}, timeout=15).status_code == 404
    # PUT again: the account exists, 200 without an operation.
    again = arm(sandbox, "PUT", path, json={"location": "eastus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}})
    assert again.status_code == 200 and "Location" not in again.headers


@pytest.fixture()
def azures_retry_after(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    """The sandbox with its default Retry-After on running operations; the session's 0 afterwards."""
    assert sandbox.set_arm_retry_after(None) == 10
    yield sandbox
    sandbox.set_arm_retry_after(0)


def test_running_operations_ask_for_azures_retry_after_until_they_end(azures_retry_after: SandboxClient) -> None:
    # ARM RPC (azure-resource-manager-rpc, v1.0/Addendum.md "202 Accepted and Location Headers"):
    # Retry-After in seconds, at least 10, on the 202 and on every poll while it still runs;
    # Learn "Track asynchronous Azure operations": clients wait that long before polling again.
    sandbox = azures_retry_after
    headers = {"Authorization": f"Bearer {token(sandbox)}"}
    account = "ra" + uuid.uuid4().hex[:16]
    path = sandbox.resource_id("storage", account) + "?api-version=2026-09-01"
    created = arm(sandbox, "PUT", path, json={"location": "eastus", "kind": "StorageV2", "sku": {"name": "Standard_LRS"}})
    assert (created.status_code, created.headers["Retry-After"]) == (202, "10")
    running = requests.get(created.headers["Location"], headers=headers, timeout=15)
    assert (running.status_code, running.headers["Retry-After"]) == (202, "10")
    done = requests.get(created.headers["Location"], headers=headers, timeout=15)
    assert done.status_code == 200 and "Retry-After" not in done.headers

    # Azure-AsyncOperation (Cosmos DB regenerateKey): the status resource says InProgress with
    # Retry-After, then Succeeded without it.
    cosmos_account = unique("cosmos")
    sandbox.create_resource("cosmos", cosmos_account)
    regenerate = sandbox.resource_id("cosmos", cosmos_account) + "/regenerateKey?api-version=2026-03-15"
    started = arm(sandbox, "POST", regenerate, json={"keyKind": "secondaryReadonly"})
    assert (started.status_code, started.headers["Retry-After"]) == (202, "10")
    status = requests.get(started.headers["Azure-AsyncOperation"], headers=headers, timeout=15)
    assert (status.json()["status"], status.headers["Retry-After"]) == ("InProgress", "10")
    status = requests.get(started.headers["Azure-AsyncOperation"], headers=headers, timeout=15)
    assert status.json()["status"] == "Succeeded" and "Retry-After" not in status.headers

    # Another value through the control API (or `--arm-retry-after`): sent from then on.
    assert sandbox.set_arm_retry_after(0) == 0
    started = arm(sandbox, "POST", regenerate, json={"keyKind": "secondaryReadonly"})
    status = requests.get(started.headers["Azure-AsyncOperation"], headers=headers, timeout=15)
    assert (started.headers["Retry-After"], status.json()["status"], status.headers["Retry-After"]) == ("0", "InProgress", "0")
    assert requests.get(started.headers["Azure-AsyncOperation"], headers=headers, timeout=15).json()["status"] == "Succeeded"
    for bad in (-1, 601, 1.5, "10", True):
        with pytest.raises(RuntimeError, match="seconds must be"):
            sandbox.call("PUT", "/arm/operations/retry-after", {"seconds": bad})


def test_regenerate_storage_key_changes_only_that_key(sandbox: SandboxClient) -> None:
    account = new_storage_account(sandbox)
    client = storage(sandbox)
    before = keys_of(client.storage_accounts.list_keys(sandbox.resource_group, account))
    after = keys_of(client.storage_accounts.regenerate_key(sandbox.resource_group, account, StorageAccountRegenerateKeyParameters(key_name="key1")))
    assert after["key1"] != before["key1"]
    assert after["key2"] == before["key2"]
    assert keys_of(client.storage_accounts.list_keys(sandbox.resource_group, account)) == after
    with pytest.raises(HttpResponseError) as info:
        client.storage_accounts.regenerate_key(sandbox.resource_group, account, StorageAccountRegenerateKeyParameters(key_name="key3"))
    assert error_of(info)[:2] == (400, "InvalidValuesForRequestParameters")


def test_storage_account_name_rules_and_conflicts(sandbox: SandboxClient) -> None:
    client = storage(sandbox)
    params = StorageAccountCreateParameters(sku=Sku(name="Standard_LRS"), kind="StorageV2", location="eastus")
    with pytest.raises(HttpResponseError) as invalid:
        client.storage_accounts.begin_create(sandbox.resource_group, "Not_Valid", params).result()
    assert error_of(invalid)[:2] == (400, "AccountNameInvalid")
    group = new_group(sandbox)
    with pytest.raises(HttpResponseError) as taken:
        client.storage_accounts.begin_create(group, "sandboxdata", params).result()
    assert error_of(taken)[:2] == (409, "StorageAccountAlreadyTaken")


# ---- cosmos ---------------------------------------------------------------------------------
def test_cosmos_keys_read_only_keys_and_connection_strings(sandbox: SandboxClient) -> None:
    client = cosmos(sandbox)
    keys = client.database_accounts.list_keys(sandbox.resource_group, COSMOS)
    four = [keys.primary_master_key, keys.secondary_master_key, keys.primary_readonly_master_key, keys.secondary_readonly_master_key]
    assert all(four) and len(set(four)) == 4
    readonly = client.database_accounts.list_read_only_keys(sandbox.resource_group, COSMOS)
    assert (readonly.primary_readonly_master_key, readonly.secondary_readonly_master_key) == (four[2], four[3])
    # readonlykeys answers GET too (older api-versions used it).
    got = arm(sandbox, "GET", sandbox.resource_id("cosmos", COSMOS) + "/readonlykeys?api-version=2015-04-08").json()
    assert got == {"primaryReadonlyMasterKey": four[2], "secondaryReadonlyMasterKey": four[3]}
    strings = client.database_accounts.list_connection_strings(sandbox.resource_group, COSMOS).connection_strings or []
    endpoint = f"https://{COSMOS}.documents.{sandbox.env['SANDBOX_STORAGE_SUFFIX']}/"
    assert [(s.description, s.key_kind, s.type) for s in strings] == [
        ("Primary SQL Connection String", "Primary", "Sql"),
        ("Secondary SQL Connection String", "Secondary", "Sql"),
        ("Primary Read-Only SQL Connection String", "PrimaryReadonly", "Sql"),
        ("Secondary Read-Only SQL Connection String", "SecondaryReadonly", "Sql"),
    ]
    assert [s.connection_string for s in strings] == [f"AccountEndpoint={endpoint};AccountKey={key};" for key in four]
    account = client.database_accounts.get(sandbox.resource_group, COSMOS)
    assert account.properties.document_endpoint == endpoint


def test_cosmos_regenerate_key_is_a_long_running_operation(sandbox: SandboxClient) -> None:
    account = new_cosmos_account(sandbox)
    client = cosmos(sandbox)
    before = client.database_accounts.list_keys(sandbox.resource_group, account)
    poller = client.database_accounts.begin_regenerate_key(
        sandbox.resource_group, account, DatabaseAccountRegenerateKeyParameters(key_kind="primaryReadonly"), polling_interval=0,
    )
    poller.result()
    assert poller.status().lower() == "succeeded"
    after = client.database_accounts.list_keys(sandbox.resource_group, account)
    assert after.primary_readonly_master_key != before.primary_readonly_master_key
    assert (after.primary_master_key, after.secondary_master_key, after.secondary_readonly_master_key) == (
        before.primary_master_key, before.secondary_master_key, before.secondary_readonly_master_key,
    )


def test_cosmos_regenerate_key_on_the_wire(sandbox: SandboxClient) -> None:
    account = new_cosmos_account(sandbox)
    client = cosmos(sandbox)
    before = client.database_accounts.list_keys(sandbox.resource_group, account).secondary_master_key
    path = sandbox.resource_id("cosmos", account) + "/regenerateKey?api-version=2026-03-15"
    started = arm(sandbox, "POST", path, json={"keyKind": "secondary"})
    assert started.status_code == 202
    status_url, result_url = started.headers["Azure-AsyncOperation"], started.headers["Location"]
    prefix = f"{sandbox.arm_endpoint}/subscriptions/{sandbox.subscription_id}/providers/Microsoft.DocumentDB/locations/eastus/"
    assert status_url.startswith(prefix + "operationsStatus/") and result_url.startswith(prefix + "operationResults/")
    # A second regeneration while the first runs is refused.
    assert arm(sandbox, "POST", path, json={"keyKind": "primary"}).status_code == 412
    headers = {"Authorization": f"Bearer {token(sandbox)}"}
    first = requests.get(status_url, headers=headers, timeout=15).json()
    assert first["status"] == "InProgress"
    assert client.database_accounts.list_keys(sandbox.resource_group, account).secondary_master_key == before
    second = requests.get(status_url, headers=headers, timeout=15).json()
    assert second["status"] == "Succeeded" and second["endTime"]
    assert requests.get(result_url, headers=headers, timeout=15).status_code == 204
    assert client.database_accounts.list_keys(sandbox.resource_group, account).secondary_master_key != before
    bad = arm(sandbox, "POST", path, json={"keyKind": "tertiary"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "BadRequest"


# ---- app service ----------------------------------------------------------------------------
def test_app_settings_list_and_replace_including_slots(sandbox: SandboxClient) -> None:
    client = web(sandbox)
    updated = client.web_apps.update_application_settings(sandbox.resource_group, SITE, StringDictionary(properties={"A": "1", "B": "2"}))
    assert updated.properties == {"A": "1", "B": "2"} and updated.name == "appsettings"
    listed = client.web_apps.list_application_settings(sandbox.resource_group, SITE)
    assert listed.properties == {"A": "1", "B": "2"}
    assert listed.id == sandbox.resource_id("site", SITE) + "/config/appsettings"
    assert listed.type == "Microsoft.Web/sites/config"
    # PUT replaces the whole set.
    client.web_apps.update_application_settings(sandbox.resource_group, SITE, StringDictionary(properties={"B": "3"}))
    assert client.web_apps.list_application_settings(sandbox.resource_group, SITE).properties == {"B": "3"}
    client.web_apps.update_application_settings_slot(sandbox.resource_group, SITE, "staging", StringDictionary(properties={"S": "slot"}))
    slot = client.web_apps.list_application_settings_slot(sandbox.resource_group, SITE, "staging")
    assert slot.properties == {"S": "slot"}
    assert slot.id == sandbox.resource_id("site", SITE) + "/slots/staging/config/appsettings"
    assert client.web_apps.list_application_settings(sandbox.resource_group, SITE).properties == {"B": "3"}
    assert client.web_apps.get(sandbox.resource_group, SITE).name == SITE


def test_app_settings_need_config_actions(sandbox: SandboxClient, granted: Any) -> None:
    site_scope = sandbox.resource_id("site", SITE)
    with pytest.raises(HttpResponseError) as info:
        web(sandbox, "other").web_apps.list_application_settings(sandbox.resource_group, SITE)
    status, code, message = error_of(info)
    assert (status, code) == (403, "AuthorizationFailed")
    assert "'Microsoft.Web/sites/config/list/action'" in message and f"over scope '{site_scope}'" in message
    granted(site_scope, READER, "other")
    client = web(sandbox, "other")
    assert client.web_apps.get(sandbox.resource_group, SITE).name == SITE  # Reader reads the site ...
    with pytest.raises(HttpResponseError) as still:
        client.web_apps.list_application_settings(sandbox.resource_group, SITE)  # ... but not its settings
    assert error_of(still)[0] == 403
    with pytest.raises(HttpResponseError) as slot:
        client.web_apps.update_application_settings_slot(sandbox.resource_group, SITE, "staging", StringDictionary(properties={}))
    assert "'Microsoft.Web/sites/slots/config/write'" in error_of(slot)[2]
    granted(site_scope, WEBSITE_CONTRIBUTOR, "other")
    assert client.web_apps.list_application_settings_slot(sandbox.resource_group, SITE, "staging").name == "appsettings"


# ---- role assignments: access follows them ---------------------------------------------------
def test_key_operator_at_resource_scope_lets_app_list_keys_until_deleted(sandbox: SandboxClient) -> None:
    scope = sandbox.resource_id("storage", "sandboxdata")
    app = storage(sandbox, "app")
    with pytest.raises(HttpResponseError) as denied:
        app.storage_accounts.list_keys(sandbox.resource_group, "sandboxdata")
    status, code, message = error_of(denied)
    app_identity = sandbox.identities["app"]
    assert (status, code) == (403, "AuthorizationFailed")
    assert message == (
        f"The client '{app_identity.client_id}' with object id '{app_identity.object_id}' does not have authorization "
        f"to perform action 'Microsoft.Storage/storageAccounts/listkeys/action' over scope '{scope}' or the scope is "
        "invalid. If access was recently granted, please refresh your credentials."
    )
    assignment = grant(sandbox, scope, KEY_OPERATOR, "app")
    assert assignment.scope == scope and assignment.principal_id == app_identity.object_id
    assert assignment.role_definition_id == role_id(sandbox, KEY_OPERATOR)
    assert assignment.id == f"{scope}/providers/Microsoft.Authorization/roleAssignments/{assignment.name}"
    assert keys_of(app.storage_accounts.list_keys(sandbox.resource_group, "sandboxdata")) == keys_of(
        storage(sandbox).storage_accounts.list_keys(sandbox.resource_group, "sandboxdata"))
    # The assignment is for that account only.
    with pytest.raises(HttpResponseError):
        app.storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")
    # Key operators cannot read the account.
    with pytest.raises(HttpResponseError) as read:
        app.storage_accounts.get_properties(sandbox.resource_group, "sandboxdata")
    assert "'Microsoft.Storage/storageAccounts/read'" in error_of(read)[2]
    authz(sandbox).role_assignments.delete(scope, assignment.name)
    with pytest.raises(HttpResponseError) as again:
        app.storage_accounts.list_keys(sandbox.resource_group, "sandboxdata")
    assert error_of(again)[:2] == (403, "AuthorizationFailed")


def test_cosmos_reader_at_group_scope_gets_read_only_keys_only(sandbox: SandboxClient, granted: Any) -> None:
    group_scope = f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{sandbox.resource_group}"
    client = cosmos(sandbox, "caller")
    with pytest.raises(HttpResponseError) as before:
        client.database_accounts.list_read_only_keys(sandbox.resource_group, COSMOS)
    assert "'Microsoft.DocumentDB/databaseAccounts/readonlykeys/action'" in error_of(before)[2]
    granted(group_scope, COSMOS_READER, "caller")
    readonly = client.database_accounts.list_read_only_keys(sandbox.resource_group, COSMOS)
    assert readonly.primary_readonly_master_key == cosmos(sandbox).database_accounts.list_keys(sandbox.resource_group, COSMOS).primary_readonly_master_key
    for call in (client.database_accounts.list_keys, client.database_accounts.list_connection_strings):
        with pytest.raises(HttpResponseError) as info:
            call(sandbox.resource_group, COSMOS)
        status, code, message = error_of(info)
        assert (status, code) == (403, "AuthorizationFailed")
        assert f"over scope '{sandbox.resource_id('cosmos', COSMOS)}'" in message
    with pytest.raises(HttpResponseError) as keys:
        client.database_accounts.list_keys(sandbox.resource_group, COSMOS)
    assert "'Microsoft.DocumentDB/databaseAccounts/listKeys/action'" in error_of(keys)[2]


def test_reader_at_subscription_scope_reads_but_gets_no_keys(sandbox: SandboxClient, granted: Any) -> None:
    granted(f"/subscriptions/{sandbox.subscription_id}", READER, "data")
    client = storage(sandbox, "data")
    assert {"sandboxstore", "sandboxdata"} <= {a.name for a in client.storage_accounts.list()}
    for call in (
        lambda: client.storage_accounts.list_keys(sandbox.resource_group, "sandboxstore"),
        lambda: cosmos(sandbox, "data").database_accounts.list_keys(sandbox.resource_group, COSMOS),
        lambda: cosmos(sandbox, "data").database_accounts.list_read_only_keys(sandbox.resource_group, COSMOS),
    ):
        with pytest.raises(HttpResponseError) as info:
            call()
        assert error_of(info)[:2] == (403, "AuthorizationFailed")
    # Readers may not grant roles either.
    with pytest.raises(HttpResponseError) as write:
        grant(sandbox, sandbox.resource_id("storage", "sandboxstore"), KEY_OPERATOR, "data", as_identity="data")
    assert "'Microsoft.Authorization/roleAssignments/write'" in error_of(write)[2]


def test_assignment_at_a_vault_secret_scope(sandbox: SandboxClient, granted: Any) -> None:
    scope = sandbox.resource_id("vault", "kv-shared") + "/secrets/" + unique("s")
    assignment = granted(scope, KV_SECRETS_USER, "caller")
    got = authz(sandbox).role_assignments.get(scope, assignment.name)
    assert got.scope == scope and got.role_definition_id == role_id(sandbox, KV_SECRETS_USER)
    assert [a.name for a in authz(sandbox).role_assignments.list_for_scope(scope, filter="atScope()")
            if a.principal_id == sandbox.identities["caller"].object_id] == [assignment.name]
    assert authz(sandbox).role_assignments.get_by_id(got.id).name == assignment.name


# ---- role assignments: the API itself --------------------------------------------------------
def test_list_and_filter_role_assignments(sandbox: SandboxClient, granted: Any) -> None:
    sub_scope = f"/subscriptions/{sandbox.subscription_id}"
    store_scope = sandbox.resource_id("storage", "sandboxstore")
    other = sandbox.identities["other"].object_id
    at_store = granted(store_scope, KEY_OPERATOR, "other")
    client = authz(sandbox)
    admin_owner = [a for a in client.role_assignments.list_for_subscription() if a.principal_id == sandbox.identities["admin"].object_id
                   and a.role_definition_id.endswith(OWNER)]
    assert [a.scope for a in admin_owner] == [sub_scope]
    mine = list(client.role_assignments.list_for_scope(store_scope, filter=f"principalId eq '{other}'"))
    assert [a.name for a in mine] == [at_store.name]
    assert [a.name for a in client.role_assignments.list_for_subscription(filter=f"assignedTo('{other}')")] == [at_store.name]
    # atScope(): at the scope and above, not below.
    at_sub = {a.name for a in client.role_assignments.list_for_scope(sub_scope, filter="atScope()")}
    assert at_store.name not in at_sub and admin_owner[0].name in at_sub
    at_account = {a.name for a in client.role_assignments.list_for_scope(store_scope, filter="atScope()")}
    assert {at_store.name, admin_owner[0].name} <= at_account
    # Without a filter a scope lists what is below it too.
    assert at_store.name in {a.name for a in client.role_assignments.list_for_resource_group(sandbox.resource_group)}
    with pytest.raises(HttpResponseError) as unsupported:
        list(client.role_assignments.list_for_scope(sub_scope, filter="roleName eq 'x'"))
    assert error_of(unsupported)[0] == 400


def test_role_assignment_errors(sandbox: SandboxClient, granted: Any) -> None:
    scope = sandbox.resource_id("cosmos", COSMOS)
    first = granted(scope, COSMOS_READER, "data")
    with pytest.raises(ResourceExistsError) as duplicate:
        grant(sandbox, scope, COSMOS_READER, "data")
    assert error_of(duplicate)[:2] == (409, "RoleAssignmentExists")
    with pytest.raises(HttpResponseError) as unknown_role:
        grant(sandbox, scope, str(uuid.uuid4()), "data")
    assert error_of(unknown_role)[:2] == (400, "RoleDefinitionDoesNotExist")
    with pytest.raises(HttpResponseError) as unknown_principal:
        authz(sandbox).role_assignments.create(scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=role_id(sandbox, READER), principal_id=str(uuid.uuid4())))
    assert error_of(unknown_principal)[:2] == (400, "PrincipalNotFound")
    with pytest.raises(ResourceNotFoundError) as missing_resource:
        grant(sandbox, sandbox.resource_id("cosmos", "no-such-cosmos"), READER, "data")
    assert error_of(missing_resource)[1] == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as missing:
        authz(sandbox).role_assignments.get(scope, str(uuid.uuid4()))
    assert error_of(missing)[:2] == (404, "RoleAssignmentNotFound")
    # Deleting returns the assignment; deleting it again is a no-op.
    deleted = authz(sandbox).role_assignments.delete(scope, first.name)
    assert deleted is not None and deleted.name == first.name
    assert authz(sandbox).role_assignments.delete(scope, first.name) is None


def test_role_definitions_are_the_builtins(sandbox: SandboxClient) -> None:
    client = authz(sandbox)
    operator = client.role_definitions.get("/", KEY_OPERATOR)
    assert operator.role_name == "Storage Account Key Operator Service Role" and operator.role_type == "BuiltInRole"
    assert "Microsoft.Storage/storageAccounts/listkeys/action" in operator.permissions[0].actions
    at_sub = client.role_definitions.get(f"/subscriptions/{sandbox.subscription_id}", COSMOS_READER)
    assert at_sub.id == role_id(sandbox, COSMOS_READER)
    assert client.role_definitions.get_by_id(role_id(sandbox, READER)).role_name == "Reader"
    named = list(client.role_definitions.list(f"/subscriptions/{sandbox.subscription_id}", filter="roleName eq 'Cosmos DB Account Reader Role'"))
    assert [r.name for r in named] == [COSMOS_READER]
    assert {"Owner", "Reader", "Contributor"} <= {r.role_name for r in client.role_definitions.list("/")}
    with pytest.raises(ResourceNotFoundError):
        client.role_definitions.get("/", str(uuid.uuid4()))


# ---- protocol: auth, api-versions, not found, paths -------------------------------------------
def test_missing_and_wrong_tokens_are_401(sandbox: SandboxClient) -> None:
    path = sandbox.resource_id("storage", "sandboxstore") + "/listKeys?api-version=2026-09-01"
    response = arm(sandbox, "POST", path, identity=None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization_uri="{sandbox.authority}/{sandbox.tenant_id}", error="invalid_token", '
        "error_description=\"The authentication failed because of missing 'Authorization' header.\""
    )
    assert response.json()["error"] == {"code": "AuthenticationFailed", "message": "Authentication failed. The 'Authorization' header is missing."}
    vault_token = sandbox.issue_token("admin", "https://vault.azure.net")
    wrong = requests.post(sandbox.arm_endpoint + path, headers={"Authorization": f"Bearer {vault_token}"}, timeout=15)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    expired = sandbox.issue_token("admin", "https://management.azure.com", lifetime_s=-600)
    old = requests.post(sandbox.arm_endpoint + path, headers={"Authorization": f"Bearer {expired}"}, timeout=15)
    assert old.status_code == 401 and old.json()["error"]["code"] == "ExpiredAuthenticationToken"
    legacy = sandbox.issue_token("admin", "https://management.core.windows.net/")
    assert requests.post(sandbox.arm_endpoint + path, headers={"Authorization": f"Bearer {legacy}"}, timeout=15).status_code == 200

    class NoToken:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            from azure.core.credentials import AccessToken

            return AccessToken(vault_token, 2**31)

    with pytest.raises(ClientAuthenticationError):
        StorageManagementClient(NoToken(), sandbox.subscription_id, base_url=sandbox.arm_endpoint).storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")


def test_unknown_account_group_and_subscription(sandbox: SandboxClient) -> None:
    client = storage(sandbox)
    with pytest.raises(ResourceNotFoundError) as account:
        client.storage_accounts.list_keys(sandbox.resource_group, "nosuchaccount")
    assert error_of(account) == (
        404, "ResourceNotFound",
        f"The Resource 'Microsoft.Storage/storageAccounts/nosuchaccount' under resource group '{sandbox.resource_group}' "
        "was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )
    with pytest.raises(ResourceNotFoundError) as group:
        client.storage_accounts.list_keys("no-such-group", "sandboxstore")
    assert error_of(group)[:2] == (404, "ResourceGroupNotFound")
    with pytest.raises(ResourceNotFoundError) as cosmos_missing:
        cosmos(sandbox).database_accounts.list_keys(sandbox.resource_group, "no-such-cosmos")
    assert error_of(cosmos_missing)[1] == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as sub:
        StorageManagementClient(sandbox.admin_credential(), str(uuid.uuid4()), base_url=sandbox.arm_endpoint).storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")
    assert error_of(sub)[1] == "SubscriptionNotFound"


def test_api_versions(sandbox: SandboxClient) -> None:
    keys = sandbox.resource_id("storage", "sandboxstore") + "/listKeys"
    missing = arm(sandbox, "POST", keys)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MissingApiVersionParameter"
    assert arm(sandbox, "POST", keys + "?api-version=2019-06-01").status_code == 200
    assert arm(sandbox, "POST", keys + "?api-version=2026-09-01").status_code == 200
    future = arm(sandbox, "POST", keys + "?api-version=2099-01-01")
    assert future.status_code == 400 and future.json()["error"]["code"] == "NoRegisteredProviderFound"
    garbage = arm(sandbox, "POST", keys + "?api-version=latest")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert arm(sandbox, "GET", sandbox.resource_id("cosmos", COSMOS) + "?api-version=2026-03-15").status_code == 200
    assert arm(sandbox, "GET", sandbox.resource_id("site", SITE) + "?api-version=2025-05-01").status_code == 200
    assert arm(sandbox, "GET", f"/subscriptions/{sandbox.subscription_id}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01").status_code == 200


def test_paths_are_case_insensitive(sandbox: SandboxClient) -> None:
    path = sandbox.resource_id("storage", "sandboxstore").upper().replace("SUBSCRIPTIONS/" + sandbox.subscription_id.upper(), "subscriptions/" + sandbox.subscription_id)
    response = arm(sandbox, "POST", path + "/LISTKEYS?api-version=2026-09-01")
    assert response.status_code == 200
    assert [k["keyName"] for k in response.json()["keys"]] == ["key1", "key2"]


def test_resource_groups_and_vaults_through_arm(sandbox: SandboxClient) -> None:
    group = new_group(sandbox)
    base = f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{group}"
    assert arm(sandbox, "GET", base + "?api-version=2022-09-01").json()["name"] == group
    again = arm(sandbox, "PUT", base + "?api-version=2022-09-01", json={"location": "westeurope"})
    assert again.status_code == 200
    groups = arm(sandbox, "GET", f"/subscriptions/{sandbox.subscription_id}/resourcegroups?api-version=2022-09-01").json()["value"]
    assert {sandbox.resource_group, group} <= {g["name"] for g in groups}
    vault = unique("kv")[:24]
    created = arm(sandbox, "PUT", f"{base}/providers/Microsoft.KeyVault/vaults/{vault}?api-version=2023-07-01",
                  json={"location": "eastus", "properties": {"tenantId": sandbox.tenant_id, "sku": {"family": "A", "name": "standard"}}})
    assert created.status_code == 201
    assert created.json()["properties"]["vaultUri"] == f"{sandbox.vault_url(vault)}/"
    listed = arm(sandbox, "GET", f"{base}/providers/Microsoft.KeyVault/vaults?api-version=2023-07-01").json()["value"]
    assert [v["name"] for v in listed] == [vault]
    assert vault in {r["name"] for r in sandbox.world()["resources"]}
    denied = arm(sandbox, "PUT", f"{base}/providers/Microsoft.KeyVault/vaults/{unique('kv')[:24]}?api-version=2023-07-01",
                 identity="other", json={"location": "eastus"})
    assert denied.status_code == 403 and "'Microsoft.KeyVault/vaults/write'" in denied.json()["error"]["message"]
    missing = arm(sandbox, "GET", f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{unique('rg')}?api-version=2022-09-01")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ResourceGroupNotFound"


# ---- SQL servers ----------------------------------------------------------------------------
SQL_SERVER_CONTRIBUTOR = "6d8ee4ec-f05a-4a1d-8b00-a9b17e38b437"


def test_sql_server_password_is_write_only_and_changes_when_the_patch_completes(sandbox: SandboxClient, granted: Any) -> None:
    server = unique("sql")
    path = sandbox.resource_id("sql", server) + "?api-version=2021-11-01"
    first, second = "Aa1!" + uuid.uuid4().hex, "Bb2*" + uuid.uuid4().hex
    created = arm(sandbox, "PUT", path, json={"location": "eastus", "properties": {
        "administratorLogin": "vradmin", "administratorLoginPassword": first}})
    assert created.status_code == 201, created.text
    assert created.json()["properties"]["administratorLogin"] == "vradmin"
    assert first not in created.text and "administratorLoginPassword" not in created.text
    got = arm(sandbox, "GET", path)
    assert got.status_code == 200 and got.json()["type"] == "Microsoft.Sql/servers" and first not in got.text
    assert sandbox.sql_login_valid(server, "vradmin", first) and not sandbox.sql_login_valid(server, "vradmin", second)

    # Weak passwords and a changed login are refused; the error never repeats the password.
    weak = arm(sandbox, "PATCH", path, json={"properties": {"administratorLoginPassword": "short"}})
    assert weak.status_code == 400 and weak.json()["error"]["code"] == "PasswordNotComplex" and "short" not in weak.text
    with_login = arm(sandbox, "PATCH", path, json={"properties": {"administratorLoginPassword": "Vradmin-1-" + uuid.uuid4().hex}})
    assert with_login.status_code == 400
    assert arm(sandbox, "PATCH", path, json={"properties": {"administratorLogin": "other"}}).status_code == 400

    # An identity without Microsoft.Sql/servers/write cannot change it; SQL Server Contributor can.
    denied = arm(sandbox, "PATCH", path, identity="app", json={"properties": {"administratorLoginPassword": second}})
    assert denied.status_code == 403 and "Microsoft.Sql/servers/write" in denied.text
    granted(sandbox.resource_id("sql", server), SQL_SERVER_CONTRIBUTOR, "app")
    started = arm(sandbox, "PATCH", path, identity="app", json={"properties": {"administratorLoginPassword": second}})
    assert started.status_code == 202 and second not in started.text
    status_url = started.headers["Azure-AsyncOperation"]
    assert "/providers/Microsoft.Sql/locations/eastus/operationsStatus/" in status_url
    assert arm(sandbox, "PATCH", path, json={"properties": {"administratorLoginPassword": second}}).status_code == 409
    headers = {"Authorization": f"Bearer {token(sandbox, 'app')}"}
    assert requests.get(status_url, headers=headers, timeout=15).json()["status"] == "InProgress"
    assert sandbox.sql_login_valid(server, "vradmin", first)  # not yet
    assert requests.get(status_url, headers=headers, timeout=15).json()["status"] == "Succeeded"
    assert sandbox.sql_login_valid(server, "vradmin", second) and not sandbox.sql_login_valid(server, "vradmin", first)
    assert not sandbox.sql_login_valid(server, "someone", second)
    assert second not in arm(sandbox, "GET", path).text
