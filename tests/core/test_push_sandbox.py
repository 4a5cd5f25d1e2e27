"""Sync and rotation against the sandbox: targets, ownership, no-op re-syncs, drift, SAS and key
rotation proven with Azurite, concurrency and crash convergence."""

from __future__ import annotations

import io
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import StringDictionary
from azure.storage.blob import BlobServiceClient, ContainerClient
from dotenv import dotenv_values

from core.app.rotate import rotate
from sandbox.client import SandboxClient
from tests.configs import app_settings_target, blob_target, body_yaml, keyvault_target, ref, secret_ref
from tests.world import World, fresh_account, is_write, regenerations, run_cli, write_config

ROOT = Path(__file__).resolve().parents[2]


def per_variable_body(world: World, *, target: dict[str, Any] | None = None, env: dict[str, Any] | None = None,
                      without: tuple[str, ...] = ()) -> str:
    """Env `app` (ALPHA and BETA from the source vault, a literal MODE, then `env`, less `without`)
    pushed per variable to target `vault` (with `target`'s extra keys); seeds nothing."""
    variables = {"ALPHA": secret_ref(f"alpha-{world.tag}"), "BETA": secret_ref(f"beta-{world.tag}"), "MODE": "literal-mode",
                 **(env or {})}
    return body_yaml(envs={"app": {k: v for k, v in variables.items() if k not in without}},
                     targets={"vault": keyvault_target("app", prefix="vr-TAG-", **(target or {}))})


def per_variable(world: World, **body: Any) -> str:
    """Seeds ALPHA's and BETA's source secrets (a new version each time), then `per_variable_body`."""
    world.secret("alpha", "alpha-value-1")
    world.secret("beta", "beta-value-1")
    return per_variable_body(world, **body)


def test_first_push_then_unchanged_resync_writes_nothing(world: World) -> None:
    engine = world.engine(per_variable(world))
    first = engine.sync()
    assert first.ok and first.target_writes == 3
    pushed = world.target.get_secret(f"vr-{world.tag}-alpha")
    assert pushed.value == "alpha-value-1"
    tags = pushed.properties.tags
    assert {k: v for k, v in tags.items() if k != "vaultrelay-fingerprint"} == {
        "managed-by": "vaultrelay", "vaultrelay-env": "app", "vaultrelay-target": "vault"}
    # keyed for this target and secret: not the state's fingerprint of the value (docs/config.md)
    assert len(tags["vaultrelay-fingerprint"]) == 32 and tags["vaultrelay-fingerprint"] != engine.fingerprinter.of("alpha-value-1")
    assert world.target.get_secret(f"vr-{world.tag}-mode").value == "literal-mode"

    engine = world.engine(per_variable_body(world))  # a fresh process: no caches
    writes_before = engine.state.writes
    world.sandbox.reset_counters()
    again = engine.sync()
    assert again.ok and again.target_writes == 0 and all(t.outcome == "unchanged" for t in again.targets)
    assert engine.state.writes == writes_before
    endpoints = world.sandbox.counters()["by_endpoint"]
    assert any(k.startswith("keyvault:") for k in endpoints)  # the re-sync did read the sources
    assert {k: v for k, v in endpoints.items() if is_write(k)} == {}


def test_is_write_tells_writes_from_reads() -> None:
    assert is_write("keyvault:SetSecret") and is_write("storage:PUT") and is_write("arm:StorageAccounts_RegenerateKey")
    assert not is_write("keyvault:GetSecret") and not is_write("storage:GET:list") and not is_write("identity:token")
    assert is_write("arm:UpdateAppSettings") and not is_write("arm:ListAppSettings")  # "set" in "Settings"


def test_a_source_change_pushes_only_that_variable(world: World) -> None:
    body = per_variable(world)
    world.engine(body).sync()
    world.source.set_secret(f"beta-{world.tag}", "beta-value-2")
    report = world.engine(body).sync()
    (target,) = report.targets
    assert (target.outcome, target.updates, target.adds, target.writes) == ("pushed", ["BETA"], [], 1)
    assert world.target.get_secret(f"vr-{world.tag}-beta").value == "beta-value-2"


def test_a_secret_not_owned_by_vaultrelay_is_never_overwritten(world: World) -> None:
    world.target.set_secret(f"vr-{world.tag}-beta", "someone-elses")
    report = world.engine(per_variable(world)).sync()
    (target,) = report.targets
    assert target.outcome == "error" and "not managed by vaultrelay" in (target.error or "")
    assert world.target.get_secret(f"vr-{world.tag}-beta").value == "someone-elses"
    with pytest.raises(HttpResponseError):
        world.target.get_secret(f"vr-{world.tag}-alpha")  # nothing else of the target was written
    status = {s["target"]: s for s in world.engine(per_variable_body(world)).status()}
    assert "not managed by vaultrelay" in status["vault"]["last_error"]


def test_drift_is_reported_then_repaired_by_policy(world: World) -> None:
    body = per_variable(world)
    world.engine(body).sync()
    world.target.set_secret(f"vr-{world.tag}-alpha", "changed-by-hand", tags={"managed-by": "vaultrelay"})
    reported = world.engine(body).sync()
    assert reported.targets[0].drift == ["ALPHA"] and reported.targets[0].writes == 0
    assert world.engine(body).status()[0]["drift"] == "ALPHA"
    repaired = world.engine(per_variable_body(world, target={"drift_policy": "repair"})).sync()
    assert repaired.targets[0].updates == ["ALPHA"] and repaired.targets[0].writes == 1
    assert world.target.get_secret(f"vr-{world.tag}-alpha").value == "alpha-value-1"


def test_removed_variables_are_deleted_or_kept_per_policy(world: World) -> None:
    body = per_variable(world, target={"deletion_policy": "delete"})
    world.engine(body).sync()
    without_beta = per_variable_body(world, target={"deletion_policy": "delete"}, without=("BETA",))
    report = world.engine(without_beta).sync()
    assert report.targets[0].removals == ["BETA"]
    with pytest.raises(HttpResponseError):
        world.target.get_secret(f"vr-{world.tag}-beta")
    assert world.target.get_secret(f"vr-{world.tag}-alpha").value == "alpha-value-1"


def test_a_failing_reference_means_no_target_is_touched(world: World) -> None:
    body = per_variable(world, env={"BROKEN": secret_ref(f"missing-{world.tag}")})
    report = world.engine(body).sync()
    assert report.failures == {"app": ["BROKEN: not_found"]}
    assert report.targets[0].outcome == "skipped" and report.target_writes == 0
    with pytest.raises(HttpResponseError):
        world.target.get_secret(f"vr-{world.tag}-alpha")


def test_blob_and_app_settings_targets(world: World) -> None:
    site = "sandbox-web"
    web = WebSiteManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint)
    current = web.web_apps.list_application_settings(world.sandbox.resource_group, site).properties or {}
    web.web_apps.update_application_settings(world.sandbox.resource_group, site, StringDictionary(properties={**current, f"KEEP_{world.tag}": "theirs"}))
    a = world.secret("gamma", "gamma-value")
    body = body_yaml(envs={f"app{world.tag}": {f"GAMMA_{world.tag}": secret_ref(a)}}, targets={
        "blob": blob_target(f"app{world.tag}", f"{world.tag}.json", format="json"),
        "settings": app_settings_target(f"app{world.tag}", site=site),
    })
    report = world.engine(body).sync()
    assert report.ok, report
    blob = ContainerClient(world.sandbox.storage_endpoint("sandboxdata"), "bundles", credential=world.admin).get_blob_client(f"{world.tag}.json")
    assert json.loads(blob.download_blob().readall()) == {f"GAMMA_{world.tag}": "gamma-value"}
    assert blob.get_blob_properties().metadata["managed_by"] == "vaultrelay"
    settings = web.web_apps.list_application_settings(world.sandbox.resource_group, site).properties
    assert settings[f"GAMMA_{world.tag}"] == "gamma-value" and settings[f"KEEP_{world.tag}"] == "theirs"
    # someone rewrites the blob: drift on the whole bundle, reported, not overwritten
    blob.upload_blob(b"{}", overwrite=True, metadata={"managed_by": "vaultrelay"})
    again = {t.target: t for t in world.engine(body).sync().targets}
    assert again["blob"].drift == ["(content)"] and again["blob"].writes == 0
    assert again["settings"].outcome == "unchanged"


def test_blob_targets_create_their_container_once(world: World) -> None:
    """The first push into a container that does not exist creates it; pushes of other envs into
    the (now existing) container are one blob write each, with no container request."""
    container = f"b{world.tag}".lower()
    secret = world.secret("delta", "delta-value")
    body = body_yaml(envs={f"e{i}{world.tag}": {"DELTA": secret_ref(secret)} for i in range(3)},
                     targets={f"blob{i}": blob_target(f"e{i}{world.tag}", f"e{i}.env", container=container) for i in range(3)})
    world.sandbox.reset_counters()
    report = world.engine(body).sync()
    assert report.ok and [t.outcome for t in report.targets] == ["pushed"] * 3, report
    writes = {k: n for k, n in world.sandbox.counters()["by_endpoint_status"].items() if k.startswith("storage:blob:PUT")}
    assert writes == {"storage:blob:PUT:404": 1, "storage:blob:PUT:container:201": 1, "storage:blob:PUT:201": 3}
    bundles = ContainerClient(world.sandbox.storage_endpoint("sandboxdata"), container, credential=world.admin)
    assert sorted(b.name for b in bundles.list_blobs()) == ["e0.env", "e1.env", "e2.env"]
    assert bundles.download_blob("e2.env").readall().decode() == "DELTA=delta-value\n"


def sas_works(sandbox: SandboxClient, account: str, token: str) -> bool:
    client = BlobServiceClient(sandbox.storage_endpoint(account), credential=token, retry_total=0)
    try:
        next(iter(client.list_containers(results_per_page=1)), None)
    except HttpResponseError:
        return False
    return True


def test_sas_is_reused_until_due_then_rotated_with_an_overlap_window(world: World) -> None:
    # An account of its own: a minted token is kept in the state vault under a name made of its
    # parameters, so the same SAS of a shared account may already be there from another test.
    account = fresh_account(world.sandbox, world.tag)

    def body_with(**sas: Any) -> str:
        return body_yaml(envs={"app": {"SAS": ref(resource_type="storage", account=account, operation="generate_sas",
                                                  permissions="rl", expiry="2h", **sas)}},
                         targets={"vault": keyvault_target("app", prefix="vr-TAG-")})

    body = body_with()
    first = world.engine(body).sync()
    assert first.minted == ["app/SAS"]
    old = world.target.get_secret(f"vr-{world.tag}-sas").value
    assert sas_works(world.sandbox, account, old)
    assert world.engine(body).sync().minted == []  # reused: 2h lifetime, rotate at 40 min left
    due = body_with(rotate_before="119m")  # now due at once
    time.sleep(1.1)  # SAS times have one-second resolution: a token minted in the same second is identical
    rotated = world.engine(due).sync()
    assert rotated.minted == ["app/SAS"] and rotated.targets[0].updates == ["SAS"], rotated
    new = world.target.get_secret(f"vr-{world.tag}-sas").value
    assert new != old
    assert sas_works(world.sandbox, account, new) and sas_works(world.sandbox, account, old)  # overlap


def rotation_body(account: str) -> str:
    return body_yaml(envs={
        "app": {
            "KEY": ref(resource_type="storage", account=account, key="active", rotate={"every": "30d"}),
            "SAS": ref(resource_type="storage", account=account, operation="generate_sas", sas_type="account",
                       permissions="rl", expiry="1d"),
        },
    }, targets={"vault": keyvault_target("app", prefix="vr-TAG-")})


def test_storage_key_rotation_switches_keys_and_keeps_sas_consumers_working(world: World) -> None:
    account = fresh_account(world.sandbox, world.tag)
    body = rotation_body(account)
    engine = world.engine(body)
    assert engine.sync().ok
    key1 = world.target.get_secret(f"vr-{world.tag}-key").value
    sas_key1 = world.target.get_secret(f"vr-{world.tag}-sas").value
    assert sas_works(world.sandbox, account, sas_key1)
    assert [r.outcome for r in rotate(world.runtime(body))] == ["adopted"]
    assert [r.outcome for r in rotate(world.runtime(body))] == ["not_due"]

    (report,) = rotate(world.runtime(body), force=True)
    assert (report.outcome, report.old_active, report.new_active, report.repushed) == ("rotated", "key1", "key2", ["app"])
    key2 = world.target.get_secret(f"vr-{world.tag}-key").value
    sas_key2 = world.target.get_secret(f"vr-{world.tag}-sas").value
    assert key2 != key1 and sas_key2 != sas_key1
    assert sas_works(world.sandbox, account, sas_key2)
    assert sas_works(world.sandbox, account, sas_key1)  # key1 not regenerated: old consumers still work

    (second,) = rotate(world.runtime(body), force=True)
    assert (second.old_active, second.new_active) == ("key2", "key1")
    assert not sas_works(world.sandbox, account, sas_key1)  # key1 regenerated only now
    assert sas_works(world.sandbox, account, sas_key2)
    assert sas_works(world.sandbox, account, world.target.get_secret(f"vr-{world.tag}-sas").value)


def test_four_concurrent_rotations_rotate_exactly_once(world: World, tmp_path: Path, sandbox_process: Any) -> None:
    account = fresh_account(world.sandbox, world.tag)
    config = write_config(world, rotation_body(account), tmp_path)
    rotate(world.runtime(rotation_body(account)))  # adopt
    world.sandbox.reset_counters()
    procs = [run_cli(sandbox_process, config, "rotate", "--force") for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    texts = [o[0].decode() for o in outputs]
    assert sum("rotated" in t for t in texts) == 1, texts
    assert regenerations(world.sandbox, account) == 1


def test_sync_killed_at_random_points_converges(world: World, tmp_path: Path, sandbox_process: Any) -> None:
    names = [world.secret(f"k{i}", f"value-{i}-a") for i in range(6)]
    body = body_yaml(envs={"app": {f"V{i}": secret_ref(n) for i, n in enumerate(names)}}, targets={
        "vault": keyvault_target("app", prefix="vr-TAG-"),
        "blob": blob_target("app", f"kill-{world.tag}.env"),
    })
    config = write_config(world, body, tmp_path)
    rng = random.Random(7)
    for round_ in range(20):
        for i, name in enumerate(names):
            if rng.random() < 0.5:
                world.source.set_secret(name, f"value-{i}-{round_}")
        proc = run_cli(sandbox_process, config, "sync")
        time.sleep(rng.uniform(0.0, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        final = run_cli(sandbox_process, config, "sync")
        out, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()
        assert "busy" not in out.decode(), f"round {round_}: a dead run's lease blocked the next one"
        expected = {f"V{i}": world.source.get_secret(n).value for i, n in enumerate(names)}
        got = {f"V{i}": world.target.get_secret(f"vr-{world.tag}-v{i}").value for i in range(6)}
        assert got == expected, f"round {round_}"
        blob = ContainerClient(world.sandbox.storage_endpoint("sandboxdata"), "bundles", credential=world.admin).get_blob_client(f"kill-{world.tag}.env")
        text = blob.download_blob().readall().decode()
        assert dotenv_values(stream=io.StringIO(text)) == expected, f"round {round_}"

