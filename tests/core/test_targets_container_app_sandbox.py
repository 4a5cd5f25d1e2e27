"""`type: container_app` against the sandbox's Container Apps stand-in (Microsoft.App/containerApps).

An env's variables become the app's secrets: read with listSecrets, written with one PATCH of the
whole secrets array (a JSON merge patch replaces arrays), others' secrets kept, no revision
created, the active revision restarted so it reads the new values; drift and deletion as for the
other targets; Key Vault references pinned to versions, resolved with the app's identity.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.appcontainers import ContainerAppsAPIClient

from core.cli import EXIT_OK, main
from sandbox.client import SandboxClient
from tests.configs import body_yaml, container_app_target, secret_ref
from tests.world import World, write_config


@pytest.fixture()
def world(seeded: SandboxClient, clean_faults: SandboxClient) -> World:
    return World(seeded)


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


class App:
    def __init__(self, world: World, *, theirs: dict[str, str] | None = None) -> None:
        self.sandbox = world.sandbox
        self.name = f"ca-{world.tag}"
        self.group = world.sandbox.resource_group
        world.sandbox.create_resource("containerapp", self.name)
        world.sandbox.grant("system", "Container Apps Contributor", world.sandbox.resource_id("containerapp", self.name))
        self.client = ContainerAppsAPIClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint, polling_interval=0)
        self.set({"theirs": "kept", **(theirs or {})})

    def secrets(self) -> dict[str, Any]:
        return {s.name: (s.value if not s.key_vault_url else s.key_vault_url) for s in self.client.container_apps.list_secrets(self.group, self.name).value}

    def set(self, secrets: dict[str, str]) -> None:
        body = {"properties": {"configuration": {"secrets": [{"name": k, "value": v} for k, v in secrets.items()]}}}
        self.client.container_apps.begin_update(self.group, self.name, body).result()

    def counters(self) -> dict[str, Any]:
        return self.sandbox.container_app_counters(self.name)

    def patches(self) -> int:
        return sum(n for key, n in self.sandbox.counters()["by_endpoint_status"].items()
                   if key.rpartition(":")[0] == "arm:PatchContainerApp" and key.rpartition(":")[2].startswith("2"))


def body(world: World, app: App, variables: tuple[str, ...] = ("DB_PASSWORD", "API_KEY"), **target: Any) -> str:
    env = {v: secret_ref(f"{v.lower().replace('_', '-')}-TAG") for v in variables}
    return body_yaml(envs={"app": env}, targets={"capp": container_app_target("app", app.name, **target)})


def test_variables_become_app_secrets_others_kept_no_revision_and_unchanged_writes_nothing(world: World, tmp_path: Path) -> None:
    app = App(world)
    world.secret("db-password", "db-1")
    world.secret("api-key", "key-1")
    config = write_config(world, body(world, app), tmp_path)
    before = app.counters()
    code, out, err = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    assert app.secrets() == {"theirs": "kept", "db-password": "db-1", "api-key": "key-1"}
    after = app.counters()
    assert after["revisions"] == before["revisions"]  # secrets are application scope: no new revision
    assert after["restarts"][after["active_revision"]] == before["restarts"][before["active_revision"]] + 1
    assert world.sandbox.container_app_environment(app.name)["secrets"]["db-password"]["value"] == "db-1"
    assert "db-1" not in out + err

    world.sandbox.reset_counters()
    code, out, _ = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK and json.loads(out)["targets"][0]["writes"] == 0 and app.patches() == 0
    assert app.counters() == after

    world.source.set_secret(f"db-password-{world.tag}", "db-2")
    code, out, err = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    assert json.loads(out)["targets"][0]["updates"] == ["DB_PASSWORD"]
    assert app.secrets() == {"theirs": "kept", "db-password": "db-2", "api-key": "key-1"}
    assert world.sandbox.container_app_environment(app.name)["secrets"]["db-password"]["value"] == "db-2"


def test_a_secret_changed_by_hand_is_drift_reported_then_repaired(world: World, tmp_path: Path) -> None:
    app = App(world)
    world.secret("db-password", "db-1")
    world.secret("api-key", "key-1")
    config = write_config(world, body(world, app), tmp_path)
    assert cli(config, "sync")[0] == EXIT_OK
    app.set({**app.secrets(), "db-password": "typed-by-hand"})
    code, out, _ = cli(config, "sync", "-o", "json")
    [report] = json.loads(out)["targets"]
    assert report["drift"] == ["DB_PASSWORD"] and report["writes"] == 0 and app.secrets()["db-password"] == "typed-by-hand"
    code, out, _ = cli(config, "status", "-o", "json")
    assert "DB_PASSWORD" in out
    repair = write_config(world, body(world, app, drift_policy="repair"), tmp_path)
    code, out, err = cli(repair, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    assert json.loads(out)["targets"][0]["repaired"] == ["DB_PASSWORD"]
    assert app.secrets() == {"theirs": "kept", "db-password": "db-1", "api-key": "key-1"}


def test_someone_elses_secret_is_refused_and_deletion_policy_removes_only_ours(world: World, tmp_path: Path) -> None:
    app = App(world, theirs={"api-key": "not-ours"})
    world.secret("db-password", "db-1")
    world.secret("api-key", "key-1")
    config = write_config(world, body(world, app), tmp_path)
    code, out, _ = cli(config, "sync", "-o", "json")
    assert code != EXIT_OK
    assert "api-key" in json.loads(out)["targets"][0]["error"] and "not managed by vaultrelay" in json.loads(out)["targets"][0]["error"]
    assert app.secrets() == {"theirs": "kept", "api-key": "not-ours"}

    only_db = write_config(world, body(world, app, ("DB_PASSWORD",), deletion_policy="delete"), tmp_path)
    assert cli(only_db, "sync")[0] == EXIT_OK
    assert app.secrets() == {"theirs": "kept", "api-key": "not-ours", "db-password": "db-1"}
    world.secret("other", "o-1")
    none_left = write_config(world, body(world, app, ("OTHER",), deletion_policy="delete"), tmp_path)
    code, out, err = cli(none_left, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    assert app.secrets() == {"theirs": "kept", "api-key": "not-ours", "other": "o-1"}


def test_key_vault_references_pinned_to_versions_resolve_with_the_app_identity(world: World, tmp_path: Path) -> None:
    app = App(world)
    updated = app.client.container_apps.begin_update(app.group, app.name, {"identity": {"type": "SystemAssigned"}}).result()
    world.sandbox.grant_principal(str(updated.identity.principal_id), "Key Vault Secrets User", world.sandbox.resource_id("vault", "kv-target"))
    world.secret("db-password", "db-1")
    config = write_config(world, body(world, app, ("DB_PASSWORD",), values="keyvault_reference", vault="kv-target", prefix="ca-TAG-"),
                          tmp_path)
    code, out, err = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK, out + err
    first = world.target.get_secret(f"ca-{world.tag}-db-password")
    assert app.secrets()["db-password"] == f"{world.sandbox.vault_url('kv-target')}/secrets/ca-{world.tag}-db-password/{first.properties.version}"
    assert world.sandbox.container_app_environment(app.name)["secrets"]["db-password"]["value"] == "db-1"
    world.sandbox.reset_counters()
    code, out, _ = cli(config, "sync", "-o", "json")
    assert code == EXIT_OK and json.loads(out)["targets"][0]["writes"] == 0 and app.patches() == 0
    world.source.set_secret(f"db-password-{world.tag}", "db-2")
    assert cli(config, "sync")[0] == EXIT_OK
    assert world.sandbox.container_app_environment(app.name)["secrets"]["db-password"]["value"] == "db-2"


def test_plan_permissions_gives_container_apps_contributor_on_the_app(world: World, tmp_path: Path) -> None:
    app = App(world)
    config = write_config(world, body(world, app), tmp_path)
    code, out, err = cli(config, "plan", "--permissions")
    assert code == EXIT_OK, err
    assert any(line.strip().startswith(f"container app {app.name}") and line.endswith("Container Apps Contributor") for line in out.splitlines())
    params = tmp_path / "params.json"
    assert cli(config, "plan", "--permissions", "--bicep-params", str(params))[0] == EXIT_OK
    assert [a["name"] for a in json.loads(params.read_text())["parameters"]["containerApps"]["value"]] == [app.name]
