"""App settings against the sandbox: last-writer-wins PUTs and restarts (issue 13, item 3).

ARM's `PUT .../config/appsettings` replaces a slot's whole set and takes no ETag, and every change
restarts the app.  vaultrelay pushes a site's slot once per sync (one PUT, one restart) whatever
the number of envs and targets pointing at it, under a lease per site and slot with the settings
re-read right before the PUT, so concurrent syncs of several envs (or instances) keep each other's
settings and those vaultrelay does not own; `slot_setting: true` makes the names slot-sticky.
Each test uses a site of its own, so the sandbox's restart counts are exact.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import SlotConfigNames, SlotConfigNamesResource, StringDictionary

from core.cli import EXIT_OK, main
from core.connections import StoreConnections
from core.push import SyncEngine
from core.targets.app_settings import AppSettingsTargetWriter
from core.targets.registry import TargetRegistry
from sandbox.client import SandboxClient
from tests.configs import app_settings_target, body_yaml, secret_ref
from tests.world import World, run_cli, write_config


@pytest.fixture()
def world(seeded: SandboxClient, clean_faults: SandboxClient) -> World:
    return World(seeded)


class Site:
    """A site of the test's own, with a setting someone else set and a sticky name someone else made."""

    def __init__(self, world: World) -> None:
        self.sandbox = world.sandbox
        self.name = f"site-{world.tag}"
        self.group = world.sandbox.resource_group
        world.sandbox.create_resource("site", self.name)
        world.sandbox.grant("system", "Website Contributor", world.sandbox.resource_id("site", self.name))
        self.web = WebSiteManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint).web_apps
        self.web.update_application_settings(self.group, self.name, StringDictionary(properties={"THEIRS": "kept"}))

    def settings(self, slot: str | None = None) -> dict[str, str]:
        got = (self.web.list_application_settings_slot(self.group, self.name, slot) if slot
               else self.web.list_application_settings(self.group, self.name))
        return dict(got.properties or {})

    def sticky(self) -> list[str]:
        return sorted(self.web.list_slot_configuration_names(self.group, self.name).app_setting_names or [])

    def restarts(self) -> dict[str, int]:
        return self.sandbox.site_restarts(self.name)

    def puts(self) -> dict[str, int]:
        """Successful config PUTs on this site since the counters were reset."""
        found: dict[str, int] = {}
        for key, n in self.sandbox.counters()["by_endpoint_status"].items():
            endpoint, _, status = key.rpartition(":")
            if endpoint in ("arm:UpdateAppSettings", "arm:UpdateSlotConfigNames") and status.startswith("2"):
                found[endpoint.partition(":")[2]] = found.get(endpoint.partition(":")[2], 0) + n
        return found


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def envs_body(world: World, site: Site, envs: dict[str, str | None], *, slot_setting: bool = False) -> str:
    """One env per entry (`name -> slot`), each with one Key Vault secret pushed to `site` (slot)."""
    targets = {}
    for env, slot in envs.items():
        extra = {**({"slot": slot} if slot else {}), **({"slot_setting": True} if slot_setting else {})}
        targets[f"to-{env}"] = app_settings_target(env, site=site.name, **extra)
    return body_yaml(envs={env: {f"{env.upper()}_{world.tag}": secret_ref(f"{env}-{world.tag}")} for env in envs}, targets=targets)


def test_two_concurrent_syncs_of_two_envs_on_one_site_keep_each_others_settings(world: World, tmp_path: Path, sandbox_process: Any) -> None:
    """Two instances sync two envs that push to one site at the same time.  Between reading the
    site and writing it, each records the names it is about to write (a state table write, slowed
    down here), so both read before either writes: a read-merge-PUT under a lease per env lost one
    env's setting; now both, and the foreign one, survive."""
    site = Site(world)
    world.secret("a", "value-a")
    world.secret("b", "value-b")
    config = write_config(world, envs_body(world, site, {"a": None, "b": None}), tmp_path)
    world.sandbox.set_faults([{"service": "storage", "target": "sandboxstore", "path_prefix": f"/t{world.tag}pushes", "latency_ms": 2000}])
    procs = [run_cli(sandbox_process, config, "sync", "--env", env) for env in ("a", "b")]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outputs]
    world.sandbox.clear_faults()
    assert site.settings() == {"THEIRS": "kept", f"A_{world.tag}": "value-a", f"B_{world.tag}": "value-b"}
    assert site.restarts() == {"production": 3}  # the test's own setup, then one per env's push

    # Both records are right: an unchanged sync writes nothing and restarts nothing.
    world.sandbox.reset_counters()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK, err
    assert site.puts() == {} and site.restarts() == {"production": 3}


def test_one_sync_pushes_a_site_once_whatever_the_number_of_envs(world: World, tmp_path: Path) -> None:
    site = Site(world)
    for env in ("e1", "e2", "e3", "e4"):
        world.secret(env, f"{env}-v1")
    config = write_config(world, envs_body(world, site, {"e1": None, "e2": None, "e3": None, "e4": "staging"}), tmp_path)
    world.sandbox.reset_counters()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK, err
    assert site.settings() == {"THEIRS": "kept", **{f"{e.upper()}_{world.tag}": f"{e}-v1" for e in ("e1", "e2", "e3")}}
    assert site.settings("staging") == {f"E4_{world.tag}": "e4-v1"}
    assert site.puts() == {"UpdateAppSettings": 2}  # one per slot
    assert site.restarts() == {"production": 2, "staging": 1}  # the setup's PUT, then one per slot

    world.sandbox.reset_counters()  # unchanged: no PUT, no restart
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK and site.puts() == {} and site.restarts() == {"production": 2, "staging": 1}

    world.source.set_secret(f"e1-{world.tag}", "e1-v2")
    world.source.set_secret(f"e3-{world.tag}", "e3-v2")
    world.sandbox.reset_counters()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK, err
    assert site.puts() == {"UpdateAppSettings": 1} and site.restarts() == {"production": 3, "staging": 1}
    now = site.settings()
    assert (now[f"E1_{world.tag}"], now[f"E2_{world.tag}"], now[f"E3_{world.tag}"], now["THEIRS"]) == ("e1-v2", "e2-v1", "e3-v2", "kept")


class WrittenBetween:
    """An app-settings writer after whose every snapshot someone else adds a setting to the site
    (the window between vaultrelay's read and its PUT): ADDED_1 after the read-only first pass,
    ADDED_2 after the read of the pass that pushes."""

    added = 0

    def __init__(self, config: Any, ctx: Any) -> None:
        self.inner = AppSettingsTargetWriter(config, ctx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Any:
        snapshot = self.inner.snapshot(names, recorded)
        web = self.inner.web.web_apps
        group, site = self.inner.config.resource_group or os.environ["SANDBOX_RESOURCE_GROUP"], self.inner.config.site
        current = dict(web.list_application_settings(group, site).properties or {})
        WrittenBetween.added += 1
        web.update_application_settings(group, site, StringDictionary(properties={**current, f"ADDED_{WrittenBetween.added}": "theirs"}))
        return snapshot


def test_settings_added_after_vaultrelay_read_the_site_survive_its_push(world: World) -> None:
    site = Site(world)
    world.secret("solo", "solo-value")
    registry = TargetRegistry()
    registry.register("app_settings", WrittenBetween)
    engine = SyncEngine(StoreConnections(world.config(envs_body(world, site, {"solo": None}))), registry=registry)
    WrittenBetween.added = 0
    report = engine.sync()
    assert report.ok, report
    assert WrittenBetween.added == 2
    assert site.settings() == {"THEIRS": "kept", "ADDED_1": "theirs", "ADDED_2": "theirs", f"SOLO_{world.tag}": "solo-value"}


def test_slot_setting_makes_the_names_sticky_before_writing_them_and_keeps_others(world: World, tmp_path: Path) -> None:
    site = Site(world)
    site.web.update_slot_configuration_names(site.group, site.name, SlotConfigNamesResource(
        properties=SlotConfigNames(app_setting_names=["THEIRS_STICKY"], connection_string_names=["Db"])))
    world.secret("prod", "prod-secret")
    world.secret("stg", "stg-secret")
    config = write_config(world, envs_body(world, site, {"prod": None, "stg": "staging"}, slot_setting=True), tmp_path)
    ours = [f"PROD_{world.tag}", f"STG_{world.tag}"]

    # The settings PUT fails: the names are sticky already, no value was written anywhere.
    world.sandbox.set_faults([{"service": "arm", "target": site.name, "operation": "UpdateAppSettings", "error_rate": 1.0, "error_status": 503}])
    code, out, err = cli(config, "sync")
    assert code != EXIT_OK and "HTTP 503" in out + err
    assert site.sticky() == sorted(["THEIRS_STICKY", *ours])
    assert site.web.list_slot_configuration_names(site.group, site.name).connection_string_names == ["Db"]
    assert site.settings() == {"THEIRS": "kept"} and site.settings("staging") == {}

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    restarts = site.restarts()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK, err
    assert site.settings() == {"THEIRS": "kept", f"PROD_{world.tag}": "prod-secret"}
    assert site.settings("staging") == {f"STG_{world.tag}": "stg-secret"}
    assert site.puts() == {"UpdateAppSettings": 2}  # the sticky names needed no second write
    assert site.restarts() == {"production": restarts["production"] + 1, "staging": restarts.get("staging", 0) + 1}

    world.sandbox.reset_counters()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK and site.puts() == {}

    # Someone drops one of our names from the sticky list: the next sync puts it back, and only it.
    site.web.update_slot_configuration_names(site.group, site.name, SlotConfigNamesResource(
        properties=SlotConfigNames(app_setting_names=["THEIRS_STICKY", f"STG_{world.tag}"], connection_string_names=["Db"])))
    world.sandbox.reset_counters()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK, err
    assert site.sticky() == sorted(["THEIRS_STICKY", *ours]) and site.puts() == {"UpdateSlotConfigNames": 1}


def test_without_slot_setting_nothing_is_made_sticky(world: World, tmp_path: Path) -> None:
    site = Site(world)
    world.secret("plain", "plain-value")
    config = write_config(world, envs_body(world, site, {"plain": None}), tmp_path)
    world.sandbox.reset_counters()
    code, _, err = cli(config, "sync")
    assert code == EXIT_OK, err
    counters = world.sandbox.counters()["by_endpoint"]
    assert not any("SlotConfigNames" in k for k in counters)  # not even read
    assert site.sticky() == [] and site.puts() == {"UpdateAppSettings": 1}


def test_slot_setting_must_be_a_boolean(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsecretStores:\n  azure: {type: azure.managed_identity}\nenvs:\n  app: {A: x}\n"
                   "targets:\n  s: {type: app_settings, env: app, store: azure, site: web, slot_setting: sometimes}\n")
    code, _, err = cli(bad, "validate")
    assert code == 2 and "targets.s.slot_setting" in err and f"{bad}:7" in err
