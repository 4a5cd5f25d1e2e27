"""Contract: the sandbox's Microsoft.App/containerApps through the unmodified azure-mgmt-appcontainers.

* create (PUT, long-running: 201 + Azure-AsyncOperation), update (PATCH: 202 + Location, applied
  when the operation completes), GET without secret values, `listSecrets` with them;
* a template change (revision scope) creates a revision, a secrets change (application scope) does
  not: the running revision keeps its secrets until it restarts or a new revision replaces it;
* Key Vault reference secrets (`keyVaultUrl` + `identity`) resolved with the app's identity;
* RBAC: ContainerApp Reader reads but cannot list secrets or write; Container Apps Contributor can.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient
from azure.mgmt.appcontainers import ContainerAppsAPIClient

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

VALUE = "container-secret-value"


def apps_client(sandbox: SandboxClient, identity: str = "admin") -> ContainerAppsAPIClient:
    return ContainerAppsAPIClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint, polling_interval=0)


def app_body(secrets: list[dict[str, Any]], env: list[dict[str, str]], *, identity: dict[str, Any] | None = None, image: str = "app:1") -> dict[str, Any]:
    body: dict[str, Any] = {
        "location": "eastus",
        "properties": {
            "managedEnvironmentId": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.App/managedEnvironments/env",
            "configuration": {"activeRevisionsMode": "Single", "secrets": secrets},
            "template": {"containers": [{"name": "app", "image": image, "env": env}]},
        },
    }
    if identity is not None:
        body["identity"] = identity
    return body


@pytest.fixture()
def app_name() -> str:
    return unique("ca")


def test_create_read_list_secrets_and_revisions(sandbox: SandboxClient, app_name: str) -> None:
    client = apps_client(sandbox)
    created = client.container_apps.begin_create_or_update(
        sandbox.resource_group, app_name,
        app_body([{"name": "db-password", "value": VALUE}], [{"name": "DB_PASSWORD", "secretRef": "db-password"}, {"name": "MODE", "value": "x"}]),
    ).result()
    assert created.provisioning_state == "Succeeded" and created.latest_revision_name and created.latest_revision_name.startswith(app_name + "--")
    got = client.container_apps.get(sandbox.resource_group, app_name)
    assert [s.name for s in got.configuration.secrets] == ["db-password"]
    assert got.configuration.secrets[0].value is None and VALUE not in str(got.as_dict())
    listed = client.container_apps.list_secrets(sandbox.resource_group, app_name)
    assert [(s.name, s.value) for s in listed.value] == [("db-password", VALUE)]
    revisions = list(client.container_apps_revisions.list_revisions(sandbox.resource_group, app_name))
    assert [r.name for r in revisions] == [created.latest_revision_name] and revisions[0].active
    assert sandbox.container_app_environment(app_name)["env"] == {"DB_PASSWORD": VALUE, "MODE": "x"}
    assert sandbox.container_app_counters(app_name)["revisions"] == 1
    assert app_name in {a.name for a in client.container_apps.list_by_resource_group(sandbox.resource_group)}


def test_secrets_change_makes_no_revision_and_reaches_the_app_on_restart(sandbox: SandboxClient, app_name: str) -> None:
    client = apps_client(sandbox)
    group = sandbox.resource_group
    first = client.container_apps.begin_create_or_update(group, app_name, app_body(
        [{"name": "api-key", "value": "v1"}], [{"name": "API_KEY", "secretRef": "api-key"}])).result()
    revision = first.latest_revision_name
    updated = client.container_apps.begin_update(group, app_name, {"properties": {"configuration": {"secrets": [{"name": "api-key", "value": "v2"}]}}}).result()
    assert updated.latest_revision_name == revision  # application scope: no new revision
    assert [s.value for s in client.container_apps.list_secrets(group, app_name).value] == ["v2"]
    assert sandbox.container_app_environment(app_name)["env"]["API_KEY"] == "v1"  # the running revision kept its secret
    client.container_apps_revisions.restart_revision(group, app_name, revision)
    assert sandbox.container_app_environment(app_name)["env"]["API_KEY"] == "v2"
    counters = sandbox.container_app_counters(app_name)
    assert counters["revisions"] == 1 and counters["restarts"] == {revision: 1}
    # A template change (revision scope) creates a revision that takes over.
    changed = client.container_apps.begin_update(group, app_name, {"properties": {"template": {"containers": [
        {"name": "app", "image": "app:2", "env": [{"name": "API_KEY", "secretRef": "api-key"}]}]}}}).result()
    assert changed.latest_revision_name != revision and changed.template.containers[0].image == "app:2"
    assert changed.configuration.secrets[0].name == "api-key"  # the PATCH kept the configuration it did not name
    revisions = {r.name: r.active for r in client.container_apps_revisions.list_revisions(group, app_name)}
    assert revisions == {revision: False, changed.latest_revision_name: True}
    assert sandbox.container_app_counters(app_name)["active_revision"] == changed.latest_revision_name


def test_patch_is_a_long_running_operation_applied_when_it_completes(sandbox: SandboxClient, app_name: str) -> None:
    client = apps_client(sandbox)
    group = sandbox.resource_group
    client.container_apps.begin_create_or_update(group, app_name, app_body([{"name": "a", "value": "1"}], [])).result()
    poller = client.container_apps.begin_update(group, app_name, {"properties": {"configuration": {"secrets": [{"name": "a", "value": "2"}]}}}, polling=False)
    assert poller.status() != "Failed"
    assert [s.value for s in client.container_apps.list_secrets(group, app_name).value] == ["1"]  # not applied yet
    operations = [op for op in sandbox.arm_operations() if op["resource"].endswith(app_name) and op["kind"] == "updateContainerApp"]
    assert [op["status"] for op in operations] == ["InProgress"]
    sandbox.finish_arm_operations(app_name)
    assert [s.value for s in client.container_apps.list_secrets(group, app_name).value] == ["2"]


def test_key_vault_reference_secrets_resolve_with_the_app_identity(sandbox: SandboxClient, app_name: str) -> None:
    vault = unique("kva")
    sandbox.create_resource("vault", vault)
    SecretClient(sandbox.vault_url(vault), sandbox.admin_credential()).set_secret("db-password", VALUE)
    client = apps_client(sandbox)
    group = sandbox.resource_group
    url = f"{sandbox.vault_url(vault)}/secrets/db-password"
    created = client.container_apps.begin_create_or_update(group, app_name, app_body(
        [{"name": "db-password", "keyVaultUrl": url, "identity": "system"}], [{"name": "DB_PASSWORD", "secretRef": "db-password"}],
        identity={"type": "SystemAssigned"})).result()
    assert created.identity.type == "SystemAssigned" and created.identity.principal_id
    [listed] = client.container_apps.list_secrets(group, app_name).value
    assert (listed.key_vault_url, listed.identity, listed.value) == (url, "system", None)
    seen = sandbox.container_app_environment(app_name)
    assert seen["secrets"]["db-password"]["status"] == "AccessToKeyVaultDenied" and seen["env"]["DB_PASSWORD"] is None
    sandbox.grant_principal(str(created.identity.principal_id), "Key Vault Secrets User", sandbox.resource_id("vault", vault))
    client.container_apps_revisions.restart_revision(group, app_name, created.latest_revision_name)
    seen = sandbox.container_app_environment(app_name)
    assert seen["secrets"]["db-password"]["status"] == "Resolved" and seen["env"]["DB_PASSWORD"] == VALUE
    # A user-assigned identity: it must be assigned to the app.
    caller = sandbox.identities["app"].resource_id
    with pytest.raises(HttpResponseError) as unassigned:
        client.container_apps.begin_update(group, app_name, {"properties": {"configuration": {"secrets": [
            {"name": "db-password", "keyVaultUrl": url, "identity": caller}]}}})
    assert unassigned.value.status_code == 400 and unassigned.value.error is not None and unassigned.value.error.code == "ContainerAppSecretInvalid"
    both = client.container_apps.begin_update(group, app_name, {
        "identity": {"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {caller: {}}},
        "properties": {"configuration": {"secrets": [{"name": "db-password", "keyVaultUrl": url, "identity": caller}]}}}).result()
    assert both.identity.type == "SystemAssigned,UserAssigned"
    assert both.identity.user_assigned_identities[caller].client_id == sandbox.identities["app"].client_id


def test_invalid_secrets_are_refused(sandbox: SandboxClient, app_name: str) -> None:
    client = apps_client(sandbox)
    for secrets in ([{"name": "no-value"}], [{"name": "Upper", "value": "x"}], [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}],
                    [{"name": "kv", "keyVaultUrl": "https://elsewhere.example/secrets/x", "identity": "system"}]):
        with pytest.raises(HttpResponseError) as refused:
            client.container_apps.begin_create_or_update(sandbox.resource_group, app_name, app_body(secrets, []))
        assert refused.value.status_code == 400 and refused.value.error is not None and refused.value.error.code == "ContainerAppSecretInvalid"
    with pytest.raises(HttpResponseError):
        client.container_apps.get(sandbox.resource_group, app_name)  # nothing was created


def test_reader_cannot_list_secrets_or_write_contributor_can(sandbox: SandboxClient, app_name: str) -> None:
    apps_client(sandbox).container_apps.begin_create_or_update(sandbox.resource_group, app_name, app_body([{"name": "a", "value": VALUE}], [])).result()
    scope = sandbox.resource_id("containerapp", app_name)
    reader = sandbox.create_identity(unique("careader"))
    sandbox.grant(reader.name, "ContainerApp Reader", scope)
    client = apps_client(sandbox, reader.name)
    assert client.container_apps.get(sandbox.resource_group, app_name).name == app_name
    assert len(list(client.container_apps_revisions.list_revisions(sandbox.resource_group, app_name))) == 1
    with pytest.raises(HttpResponseError) as denied:
        client.container_apps.list_secrets(sandbox.resource_group, app_name)
    assert denied.value.status_code == 403 and "Microsoft.App/containerApps/listSecrets/action" in str(denied.value.message)
    with pytest.raises(HttpResponseError) as write:
        client.container_apps.begin_update(sandbox.resource_group, app_name, {"properties": {"configuration": {"secrets": []}}})
    assert write.value.status_code == 403 and "Microsoft.App/containerApps/write" in str(write.value.message)
    sandbox.grant(reader.name, "Container Apps Contributor", scope)
    assert [s.value for s in client.container_apps.list_secrets(sandbox.resource_group, app_name).value] == [VALUE]
