"""App settings as Key Vault references pinned to versions (`values: keyvault_reference`).

The values go to the target's vault (ownership tags, as a Key Vault target writes them) and each
setting is `@Microsoft.KeyVault(SecretUri=.../secrets/<name>/<version>)`.  What the app sees is
checked through the sandbox's App Service stand-in, which resolves references with the site's
identity and reports them (`config/configreferences/appsettings`) as App Service does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import ManagedServiceIdentity, SitePatchResource, StringDictionary

from core.cli import EXIT_OK, main
from sandbox.client import SandboxClient
from tests.configs import app_settings_target, body_yaml, secret_ref
from tests.world import World, write_config


@pytest.fixture()
def world(seeded: SandboxClient, clean_faults: SandboxClient) -> World:
    return World(seeded)


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class Site:
    def __init__(self, world: World) -> None:
        self.sandbox = world.sandbox
        self.name = f"site-{world.tag}"
        self.group = world.sandbox.resource_group
        world.sandbox.create_resource("site", self.name)
        world.sandbox.grant("system", "Website Contributor", world.sandbox.resource_id("site", self.name))
        self.web = WebSiteManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint).web_apps
        updated = self.web.update(self.group, self.name, SitePatchResource(identity=ManagedServiceIdentity(type="SystemAssigned")))
        self.principal = str(updated.identity.principal_id)

    def settings(self) -> dict[str, str]:
        return dict(self.web.list_application_settings(self.group, self.name).properties or {})

    def statuses(self) -> dict[str, str]:
        return {str(r.id).rsplit("/", 1)[1]: str(getattr(r.status, "value", r.status)) for r in self.web.get_app_settings_key_vault_references(self.group, self.name)}

    def seen(self) -> dict[str, str]:
        return dict(self.sandbox.site_environment(self.name)["settings"])

    def puts(self) -> int:
        return sum(n for key, n in self.sandbox.counters()["by_endpoint_status"].items()
                   if key.rpartition(":")[0] == "arm:UpdateAppSettings" and key.rpartition(":")[2].startswith("2"))


def body(world: World, site: Site, secret: str, **target: Any) -> str:
    return body_yaml(envs={"app": {"DB_PASSWORD": secret_ref(secret)}}, targets={
        "web": app_settings_target("app", site=site.name, values="keyvault_reference", vault="kv-target", prefix="vr-TAG-",
                                   **target),
    })


def test_pinned_references_resolve_for_the_site_identity_and_follow_each_new_value(world: World, tmp_path: Path) -> None:
    site = Site(world)
    secret = world.secret("db", "first-value")
    config = write_config(world, body(world, site, secret), tmp_path)
    vault_url = world.sandbox.vault_url("kv-target")
    name = f"vr-{world.tag}-db-password"

    # The site's identity cannot read the vault yet: pushed, but reported as not resolving.
    code, out, err = cli(config, "sync", "-o", "json")
    assert code != EXIT_OK
    [report] = json.loads(out)["targets"]
    assert report["outcome"] == "error" and "AccessToKeyVaultDenied" in report["error"] and "DB_PASSWORD" in report["error"]
    assert "first-value" not in out + err
    first = world.target.get_secret(name)
    assert first.value == "first-value" and first.properties.tags["managed-by"] == "vaultrelay"
    assert site.settings()["DB_PASSWORD"] == f"@Microsoft.KeyVault(SecretUri={vault_url}/secrets/{name}/{first.properties.version})"
    assert site.statuses() == {"DB_PASSWORD": "AccessToKeyVaultDenied"}
    code, out, _ = cli(config, "status", "-o", "json")
    assert "AccessToKeyVaultDenied" in out

    # Granted: the next sync writes nothing and clears the error; the app sees the value.
    world.sandbox.grant_principal(site.principal, "Key Vault Secrets User", world.sandbox.resource_id("vault", "kv-target"))
    world.sandbox.reset_counters()
    code, out, err = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    assert json.loads(out)["targets"][0]["writes"] == 0 and site.puts() == 0
    assert site.statuses() == {"DB_PASSWORD": "Resolved"} and site.seen()["DB_PASSWORD"] == "first-value"

    # A new value: a new version, a new pinned setting, and the app reads it at once (no 24 h cache).
    world.source.set_secret(secret, "second-value")
    code, out, err = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    second = world.target.get_secret(name)
    assert second.properties.version != first.properties.version and second.value == "second-value"
    assert site.settings()["DB_PASSWORD"].endswith(f"/secrets/{name}/{second.properties.version})")
    assert site.seen()["DB_PASSWORD"] == "second-value"
    assert "second-value" not in json.dumps(site.settings())

    # Unchanged: no write to the vault or the site.
    world.sandbox.reset_counters()
    code, out, _ = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK and json.loads(out)["targets"][0]["outcome"] == "unchanged" and site.puts() == 0
    assert len(list(world.target.list_properties_of_secret_versions(name))) == 2


def test_a_reference_changed_by_hand_is_drift_and_repair_puts_the_pinned_one_back(world: World, tmp_path: Path) -> None:
    site = Site(world)
    world.sandbox.grant_principal(site.principal, "Key Vault Secrets User", world.sandbox.resource_id("vault", "kv-target"))
    secret = world.secret("db", "the-value")
    config = write_config(world, body(world, site, secret), tmp_path)
    code, out, err = cli(config, "sync")
    assert code == EXIT_OK, out + err
    pinned = site.settings()["DB_PASSWORD"]
    site.web.update_application_settings(site.group, site.name, StringDictionary(properties={"DB_PASSWORD": "typed-by-hand"}))
    code, out, _ = cli(config, "sync", "-o", "json")
    [report] = json.loads(out)["targets"]
    assert report["drift"] == ["DB_PASSWORD"] and report["writes"] == 0
    assert site.settings()["DB_PASSWORD"] == "typed-by-hand"
    repair = write_config(world, body(world, site, secret, drift_policy="repair"), tmp_path)
    code, out, err = cli(repair, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    assert site.settings()["DB_PASSWORD"] == pinned  # the version already holds the value: no new version
    assert site.seen()["DB_PASSWORD"] == "the-value"


def test_plan_permissions_names_the_site_identity_on_the_reference_vault(world: World, tmp_path: Path) -> None:
    site = Site(world)
    config = write_config(world, body(world, site, world.secret("db", "x")), tmp_path)
    code, out, err = cli(config, "plan", "--permissions")
    assert code == EXIT_OK, err
    section = out.split(f"managed identity of site {site.name}")[1]
    assert section.splitlines()[1].startswith("  key vault kv-target") and section.splitlines()[1].endswith(": Key Vault Secrets User")
    params = tmp_path / "params.json"
    code, _, err = cli(config, "plan", "--permissions", "--bicep-params", str(params))
    assert code == EXIT_OK, err
    sources = json.loads(params.read_text())["parameters"]["sourceVaults"]["value"]
    assert any(v["name"] == "kv-target" and v["principalId"].startswith("<object id of managed identity of site") for v in sources)
