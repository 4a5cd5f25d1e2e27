"""Contract: App Service Key Vault references, resolved by the site's identity as App Service does.

* a site gets managed identities (system and/or user-assigned) and `keyVaultReferenceIdentity`;
* `config/configreferences/appsettings` (list and one, site and slot) report each reference with
  App Service's statuses (Resolved, AccessToKeyVaultDenied, SecretNotFound, SecretVersionNotFound,
  VaultNotFound, MSINotEnabled, InvalidSyntax), never the value;
* resolution needs `secrets/getSecret/action` for the identity (Key Vault Secrets User) on the secret;
* the app sees the resolved value (control API), the reference text when it does not resolve; a
  resolved value is kept until the app restarts (a settings change) or the daily refetch.
"""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import ManagedServiceIdentity, SitePatchResource, StringDictionary

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

VALUE = "s3cret-from-the-vault"


def web(sandbox: SandboxClient, identity: str = "admin") -> WebSiteManagementClient:
    return WebSiteManagementClient(sandbox.credential(identity), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


@pytest.fixture()
def world(sandbox: SandboxClient) -> tuple[str, str, SecretClient]:
    """(site, vault, admin SecretClient of the vault): a site and a vault of their own."""
    site, vault = unique("site"), unique("kvr")
    sandbox.create_resource("site", site)
    sandbox.create_resource("vault", vault)
    return site, vault, SecretClient(sandbox.vault_url(vault), sandbox.admin_credential())


def enable_system_identity(sandbox: SandboxClient, site: str) -> str:
    updated = web(sandbox).web_apps.update(sandbox.resource_group, site, SitePatchResource(identity=ManagedServiceIdentity(type="SystemAssigned")))
    assert updated.identity is not None and updated.identity.principal_id
    return str(updated.identity.principal_id)


def references(sandbox: SandboxClient, site: str, slot: str | None = None) -> dict[str, object]:
    apps = web(sandbox).web_apps
    listed = (apps.get_app_settings_key_vault_references_slot(sandbox.resource_group, site, slot) if slot
              else apps.get_app_settings_key_vault_references(sandbox.resource_group, site))
    return {str(r.id).rsplit("/", 1)[1]: r for r in listed}


def test_site_identity_is_set_by_patch_and_read_back(sandbox: SandboxClient, world: tuple[str, str, SecretClient]) -> None:
    site, _, _ = world
    apps = web(sandbox).web_apps
    assert apps.get(sandbox.resource_group, site).identity.type == "None"
    principal = enable_system_identity(sandbox, site)
    got = apps.get(sandbox.resource_group, site)
    assert got.identity.type == "SystemAssigned" and got.identity.principal_id == principal
    assert got.identity.tenant_id == sandbox.tenant_id and got.key_vault_reference_identity == "SystemAssigned"
    app_id = sandbox.identities["app"].resource_id
    both = apps.update(sandbox.resource_group, site, SitePatchResource(
        identity=ManagedServiceIdentity(type="SystemAssigned, UserAssigned", user_assigned_identities={app_id: {}}),  # type: ignore[dict-item]
        key_vault_reference_identity=app_id))
    assert both.identity.type == "SystemAssigned, UserAssigned" and both.identity.principal_id == principal
    assert both.identity.user_assigned_identities[app_id].client_id == sandbox.identities["app"].client_id
    assert both.key_vault_reference_identity == app_id
    with pytest.raises(HttpResponseError) as unknown:
        apps.update(sandbox.resource_group, site, SitePatchResource(identity=ManagedServiceIdentity(
            type="UserAssigned", user_assigned_identities={app_id + "-missing": {}})))  # type: ignore[dict-item]
    assert unknown.value.status_code == 400


def test_references_report_each_status_and_never_the_value(sandbox: SandboxClient, world: tuple[str, str, SecretClient]) -> None:
    site, vault, secrets = world
    version = secrets.set_secret("db-password", VALUE).properties.version
    url = sandbox.vault_url(vault)
    settings = {
        "VERSIONED": f"@Microsoft.KeyVault(SecretUri={url}/secrets/db-password/{version})",
        "LATEST": f"@Microsoft.KeyVault(SecretUri={url}/secrets/db-password/)",
        "BY_NAME": f"@Microsoft.KeyVault(VaultName={vault};SecretName=db-password)",
        "MISSING": f"@Microsoft.KeyVault(VaultName={vault};SecretName=nope)",
        "OLD_VERSION": f"@Microsoft.KeyVault(SecretUri={url}/secrets/db-password/{'0' * 32})",
        "NO_VAULT": f"@Microsoft.KeyVault(VaultName={unique('gone')};SecretName=db-password)",
        "BROKEN": "@Microsoft.KeyVault(SecretName=db-password)",
        "PLAIN": "not a reference",
    }
    apps = web(sandbox).web_apps
    apps.update_application_settings(sandbox.resource_group, site, StringDictionary(properties=settings))
    assert {k: r.status for k, r in references(sandbox, site).items()} == {  # type: ignore[attr-defined]
        k: "MSINotEnabled" for k in settings if k != "PLAIN"} | {"BROKEN": "InvalidSyntax"}
    principal = enable_system_identity(sandbox, site)
    denied = references(sandbox, site)
    assert denied["VERSIONED"].status == "AccessToKeyVaultDenied" and denied["MISSING"].status == "AccessToKeyVaultDenied"  # type: ignore[attr-defined]
    assert denied["NO_VAULT"].status == "VaultNotFound"  # type: ignore[attr-defined]
    sandbox.grant_principal(principal, "Key Vault Secrets User", sandbox.resource_id("vault", vault))
    found = references(sandbox, site)
    assert {k: r.status for k, r in found.items()} == {  # type: ignore[attr-defined]
        "VERSIONED": "Resolved", "LATEST": "Resolved", "BY_NAME": "Resolved", "MISSING": "SecretNotFound",
        "OLD_VERSION": "SecretVersionNotFound", "NO_VAULT": "VaultNotFound", "BROKEN": "InvalidSyntax"}
    one = apps.get_app_setting_key_vault_reference(sandbox.resource_group, site, "VERSIONED")
    assert (one.vault_name, one.secret_name, one.secret_version, one.active_version) == (vault, "db-password", version, version)
    assert one.source == "KeyVault" and one.reference == settings["VERSIONED"] and one.identity_type.type == "SystemAssigned"
    with pytest.raises(HttpResponseError) as plain:
        apps.get_app_setting_key_vault_reference(sandbox.resource_group, site, "PLAIN")
    assert plain.value.status_code == 404
    # No ARM answer carries the value; the app (control API) sees it, and the text of what does not resolve.
    token = sandbox.admin_credential().get_token("https://management.azure.com/.default").token
    raw = requests.get(f"{sandbox.arm_endpoint}{sandbox.resource_id('site', site)}/config/configreferences/appsettings?api-version=2025-05-01",
                       headers={"Authorization": f"Bearer {token}"}, timeout=15)
    assert raw.status_code == 200 and VALUE not in raw.text
    seen = sandbox.site_environment(site)["settings"]
    assert seen["VERSIONED"] == seen["LATEST"] == seen["BY_NAME"] == VALUE
    assert seen["MISSING"] == settings["MISSING"] and seen["PLAIN"] == "not a reference"


def test_user_assigned_reference_identity_and_slots(sandbox: SandboxClient, world: tuple[str, str, SecretClient]) -> None:
    site, vault, secrets = world
    secrets.set_secret("api-key", VALUE)
    caller = sandbox.create_identity(unique("kvref"))
    apps = web(sandbox).web_apps
    apps.update(sandbox.resource_group, site, SitePatchResource(
        identity=ManagedServiceIdentity(type="UserAssigned", user_assigned_identities={caller.resource_id: {}}),  # type: ignore[dict-item]
        key_vault_reference_identity=caller.resource_id))
    reference = f"@Microsoft.KeyVault(VaultName={vault};SecretName=api-key)"
    apps.update_application_settings_slot(sandbox.resource_group, site, "staging", StringDictionary(properties={"KEY": reference}))
    assert references(sandbox, site) == {}  # the production slot has no reference
    assert references(sandbox, site, "staging")["KEY"].status == "AccessToKeyVaultDenied"  # type: ignore[attr-defined]
    sandbox.grant(caller.name, "Key Vault Secrets User", sandbox.resource_id("vault", vault) + "/secrets/api-key")
    staged = apps.get_app_setting_key_vault_reference_slot(sandbox.resource_group, site, "KEY", "staging")
    assert staged.status == "Resolved" and staged.identity_type.type == "UserAssigned"
    assert list(staged.identity_type.user_assigned_identities) == [caller.resource_id]
    assert sandbox.site_environment(site, "staging")["settings"]["KEY"] == VALUE
    with pytest.raises(HttpResponseError) as denied:
        web(sandbox, "other").web_apps.get_app_settings_key_vault_references(sandbox.resource_group, site).next()
    assert denied.value.status_code == 403 and "Microsoft.Web/sites/config/read" in str(denied.value.message)


def test_resolved_values_are_kept_until_restart_or_refresh(sandbox: SandboxClient, world: tuple[str, str, SecretClient]) -> None:
    site, vault, secrets = world
    first = secrets.set_secret("rotating", "one").properties.version
    principal = enable_system_identity(sandbox, site)
    sandbox.grant_principal(principal, "Key Vault Secrets User", sandbox.resource_id("vault", vault))
    apps = web(sandbox).web_apps
    latest = f"@Microsoft.KeyVault(VaultName={vault};SecretName=rotating)"
    apps.update_application_settings(sandbox.resource_group, site, StringDictionary(properties={"LATEST": latest}))
    assert sandbox.site_environment(site)["settings"]["LATEST"] == "one"
    second = secrets.set_secret("rotating", "two").properties.version
    # A versionless reference lags: App Service keeps the value it resolved ...
    assert sandbox.site_environment(site)["settings"]["LATEST"] == "one"
    assert references(sandbox, site)["LATEST"].active_version == first  # type: ignore[attr-defined]
    sandbox.refresh_site_references(site)  # ... until its daily refetch
    assert sandbox.site_environment(site)["settings"]["LATEST"] == "two"
    # A reference pinned to the new version is a settings change: the app restarts and reads it at once.
    third = secrets.set_secret("rotating", "three").properties.version
    restarts = sandbox.site_restarts(site)["production"]
    pinned = f"@Microsoft.KeyVault(SecretUri={sandbox.vault_url(vault)}/secrets/rotating/{third})"
    apps.update_application_settings(sandbox.resource_group, site, StringDictionary(properties={"LATEST": latest, "PINNED": pinned}))
    assert sandbox.site_restarts(site)["production"] == restarts + 1
    seen = sandbox.site_environment(site)
    assert seen["settings"] == {"LATEST": "three", "PINNED": "three"}
    assert seen["references"]["PINNED"] == {"status": "Resolved", "active_version": third}
    assert second != third
