"""Drift against the sandbox: every change made to a pushed target since vaultrelay's write is
noticed from what a sync reads anyway, reported (`drift_policy: report`) or written back
(`repair`), audited, and shown by `status` with when it was found until it is repaired or
accepted.  A name vaultrelay never owned is never touched.  Per target kind: Key Vault per
variable and bundle, blob, app settings."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import StringDictionary
from azure.storage.blob import ContainerClient

from core.cli import main as cli_main
from core.push import SyncEngine
from tests.configs import app_settings_target, blob_target, body_yaml, keyvault_target, secret_ref
from tests.world import World, target_writes

SITE = "sandbox-web"



def after_a_second() -> None:
    """Key Vault's times have one-second resolution: an edit in the very second of vaultrelay's
    write that also copies its tags cannot be told apart (docs/config.md says so)."""
    time.sleep(1.1)


def kv_body(world: World, policy: str, *, mode: str = "per_variable") -> str:
    a = world.secret("alpha", "alpha-value-1")
    b = world.secret("beta", "beta-value-1")
    extra = {"mode": "bundle", "secret_name": "vr-TAG-bundle"} if mode == "bundle" else {}
    return body_yaml(envs={"app": {"ALPHA": secret_ref(a), "BETA": secret_ref(b)}},
                     targets={"vault": keyvault_target("app", prefix="vr-TAG-", drift_policy=policy, **extra)})


def with_policy(body: str, policy: str) -> str:
    other = "repair" if policy == "report" else "report"
    return body.replace(f"drift_policy: {other}", f"drift_policy: {policy}")


def audit(engine: SyncEngine, action: str) -> list[dict[str, Any]]:
    """This test's audit entries of `action` (its tables are its own), newest first."""
    rows = sorted(engine.state.query("audit"), key=lambda r: r.key)
    return [{**r.fields, "detail": json.loads(r.fields["detail"])} for r in rows if r.fields.get("action") == action]


def status_of(engine: SyncEngine, target: str = "vault") -> dict[str, Any]:
    return next(row for row in engine.status() if row["target"] == target)


def assert_settled(world: World, body: str) -> None:
    """An unchanged sync: zero target writes, zero state writes, nothing reported."""
    engine = world.engine(body)
    writes_before = engine.state.writes
    world.sandbox.reset_counters()
    report = engine.sync()
    assert report.ok and all((t.outcome, t.drift, t.writes) == ("unchanged", [], 0) for t in report.targets), report
    assert target_writes(world.sandbox) == {} and engine.state.writes == writes_before


def secret(world: World, name: str) -> Any:
    return world.target.get_secret(f"vr-{world.tag}-{name}")


# ---- Key Vault, one secret per variable -----------------------------------------------------------
@pytest.mark.parametrize("copy_tags", [False, True], ids=["tagless-edit", "edit-copying-the-tags"])
def test_a_hand_edit_of_a_pushed_secret_is_reported_then_repaired(world: World, copy_tags: bool) -> None:
    body = kv_body(world, "report")
    assert world.engine(body).sync().ok
    pushed = secret(world, "alpha")
    after_a_second()
    # `az keyvault secret set`, or the portal's "new version": with no tags, or with vaultrelay's
    # own tags (fingerprint tag included) copied over.
    world.target.set_secret(pushed.name, "changed-by-hand", tags=dict(pushed.properties.tags) if copy_tags else None)

    world.sandbox.reset_counters()
    engine = world.engine(body)
    (reported,) = engine.sync().targets
    assert (reported.outcome, reported.drift, reported.writes, reported.repaired) == ("unchanged", ["ALPHA"], 0, [])
    assert target_writes(world.sandbox) == {} and secret(world, "alpha").value == "changed-by-hand"
    status = status_of(engine)
    assert status["drift"] == "ALPHA" and status["drift_found"]["ALPHA"] and status["drift_since"] == status["drift_found"]["ALPHA"]
    (found,) = audit(engine, "drift")
    assert found["detail"]["found"] == ["ALPHA"] and found["detail"]["drift_policy"] == "report"
    assert "changed-by-hand" not in json.dumps(found)

    # Reported again, not re-audited, and the time it was first found stays.
    (again,) = world.engine(body).sync().targets
    assert again.drift == ["ALPHA"] and status_of(engine)["drift_found"] == status["drift_found"]
    assert len(audit(engine, "drift")) == 1

    repair = with_policy(body, "repair")
    world.sandbox.reset_counters()
    (repaired,) = world.engine(repair).sync().targets
    assert (repaired.outcome, repaired.drift, repaired.repaired, repaired.updates, repaired.writes) == ("pushed", ["ALPHA"], ["ALPHA"], ["ALPHA"], 1)
    assert target_writes(world.sandbox) == {"keyvault:SetSecret": 1}
    back = secret(world, "alpha")
    assert back.value == "alpha-value-1" and back.properties.tags == pushed.properties.tags  # a new, tagged version
    assert len(list(world.target.list_properties_of_secret_versions(pushed.name))) == 3
    status = status_of(engine)
    assert (status["drift"], status["drift_found"], status["outcome"]) == ("", {}, "ok")
    push = audit(engine, "push")[0]
    assert push["detail"]["repaired"] == ["ALPHA"] and push["detail"]["drift_policy"] == "repair"
    assert_settled(world, repair)


def test_property_changes_and_deletion_are_drift_too(world: World) -> None:
    """Anything since vaultrelay's write: disabling the secret (a PATCH: same version, later
    update time), deleting it.  Repair writes it back, recovering vaultrelay's own deleted secret."""
    body = kv_body(world, "report")
    assert world.engine(body).sync().ok
    after_a_second()
    world.target.update_secret_properties(f"vr-{world.tag}-alpha", enabled=False)
    world.target.begin_delete_secret(f"vr-{world.tag}-beta").wait()
    (reported,) = world.engine(body).sync().targets
    assert (reported.drift, reported.writes) == (["ALPHA", "BETA"], 0)

    world.sandbox.reset_counters()
    (repaired,) = world.engine(with_policy(body, "repair")).sync().targets
    assert (repaired.outcome, repaired.repaired, repaired.writes) == ("pushed", ["ALPHA", "BETA"], 2), repaired
    assert secret(world, "alpha").value == "alpha-value-1" and secret(world, "beta").value == "beta-value-1"
    assert world.sandbox.counters()["by_endpoint"].get("keyvault:RecoverDeletedSecret") == 1
    assert_settled(world, with_policy(body, "repair"))


def test_a_name_vaultrelay_never_owned_is_never_touched_in_either_policy(world: World) -> None:
    name = f"vr-{world.tag}-beta"
    world.target.set_secret(name, "someone-elses", tags={"owner": "team-b"})
    body = kv_body(world, "report")
    for policy in ("report", "repair"):
        world.sandbox.reset_counters()
        (target,) = world.engine(with_policy(body, policy)).sync().targets
        assert target.outcome == "error" and name in (target.error or "") and "not managed by vaultrelay" in (target.error or "")
        assert target_writes(world.sandbox) == {}
        assert world.target.get_secret(name).value == "someone-elses"
        assert len(list(world.target.list_properties_of_secret_versions(name))) == 1
    # Tagged as vaultrelay's, but for another target: still not this target's.
    world.target.set_secret(name, "other-target", tags={"managed-by": "vaultrelay", "vaultrelay-target": "elsewhere"})
    (target,) = world.engine(with_policy(body, "repair")).sync().targets
    assert target.outcome == "error" and world.target.get_secret(name).value == "other-target"


def test_ownership_comes_from_the_secrets_history_when_the_record_is_lost(world: World) -> None:
    """The latest version lost vaultrelay's tags (a hand edit) and the push record is gone: an
    earlier version tagged for this target makes the name vaultrelay's, not someone else's."""
    body = kv_body(world, "report")
    engine = world.engine(body)
    assert engine.sync().ok
    world.target.set_secret(f"vr-{world.tag}-alpha", "changed-by-hand")
    engine.state.delete("pushes", engine.state.get("pushes", "app", "vault"))
    engine = world.engine(body)
    assert engine.fingerprinter is not None  # its key (and that secret's versions) read before counting
    world.sandbox.reset_counters()
    (target,) = engine.sync().targets
    assert (target.outcome, target.adds, target.writes) == ("pushed", ["ALPHA"], 1), target
    assert secret(world, "alpha").value == "alpha-value-1"
    assert world.sandbox.counters()["by_endpoint"].get("keyvault:GetSecretVersions") == 1  # only for that name
    assert_settled(world, body)


def test_a_change_back_to_what_vaultrelay_would_push_clears_the_drift(world: World) -> None:
    body = kv_body(world, "report")
    assert world.engine(body).sync().ok
    pushed = secret(world, "alpha")
    after_a_second()
    world.target.set_secret(pushed.name, "changed-by-hand")
    assert world.engine(body).sync().targets[0].drift == ["ALPHA"]
    world.target.set_secret(pushed.name, "alpha-value-1", tags=dict(pushed.properties.tags))  # put back exactly
    engine = world.engine(body)
    world.sandbox.reset_counters()
    (cleared,) = engine.sync().targets
    assert (cleared.outcome, cleared.drift, cleared.writes) == ("recorded", [], 0)
    assert target_writes(world.sandbox) == {}
    assert status_of(engine)["drift"] == "" and audit(engine, "drift")[0]["detail"]["cleared"] == ["ALPHA"]
    assert_settled(world, body)


def test_what_a_run_read_before_another_instances_push_is_read_again_not_taken_for_drift(world: World) -> None:
    # A run reads a target's secrets in its read-only pass, before it takes the env's lease; another
    # instance pushes meanwhile (holding the lease) and records what it wrote.  The pass under the
    # lease reads that newer record: the secret it shows is read again, and it is not drift.
    b = world.secret("beta", "beta-value-1")
    body = body_yaml(envs={"app": {"BETA": secret_ref(b)}}, targets={"vault": keyvault_target("app", prefix="vr-TAG-")})
    assert world.engine(body).sync().ok
    engine = world.engine(body)  # this run: its writers share one run cache
    target = engine.config.targets["vault"]

    def snapshot() -> Any:
        record = engine.state.get("pushes", "app", "vault")
        writer = engine.registry.build(target, engine._context("vault", target, record))
        return writer.snapshot({"BETA"}, record.json("fingerprints", {})), record.json("stamps", {})

    first, recorded_first = snapshot()
    assert first.stamps == recorded_first  # as vaultrelay left it
    after_a_second()
    world.source.set_secret(b, "beta-value-2")
    other = world.engine(body).sync()  # another instance
    assert [(t.outcome, t.updates) for t in other.targets] == [("pushed", ["BETA"])]
    world.sandbox.reset_counters()
    second, recorded_second = snapshot()
    assert recorded_second != recorded_first and second.stamps == recorded_second and second.foreign == set()
    assert world.sandbox.counters()["by_endpoint"].get("keyvault:GetSecret") == 1  # read again, once
    (report,) = engine.sync().targets
    assert (report.outcome, report.drift, report.writes) == ("unchanged", [], 0)


def test_accepted_drift_is_no_longer_reported_and_a_later_change_is_pushed(world: World, tmp_path: Path, capsys: Any) -> None:
    body = kv_body(world, "report")
    assert world.engine(body).sync().ok
    after_a_second()
    world.target.set_secret(f"vr-{world.tag}-alpha", "kept-by-hand")
    world.target.set_secret(f"vr-{world.tag}-beta", "also-by-hand")
    assert world.engine(body).sync().targets[0].drift == ["ALPHA", "BETA"]
    config = tmp_path / "vaultrelay.yaml"
    config.write_text(json.dumps(world.config(body).config.model_dump(by_alias=True, exclude_none=True, mode="json")))

    assert cli_main(["--config", str(config), "accept-drift", "--env", "app", "--target", "vault", "ALPHA"]) == 0
    assert "accepted drift of ALPHA" in capsys.readouterr().out
    engine = world.engine(body)
    assert status_of(engine)["drift"] == "BETA"
    assert audit(engine, "drift.accepted")[0]["detail"]["accepted"] == ["ALPHA"]
    assert cli_main(["--config", str(config), "accept-drift", "--env", "app"]) == 0
    assert status_of(engine)["drift"] == ""
    assert_settled(world, body)
    assert secret(world, "alpha").value == "kept-by-hand"

    world.source.set_secret(f"alpha-{world.tag}", "alpha-value-2")  # vaultrelay still owns the name
    (pushed,) = world.engine(body).sync().targets
    assert (pushed.updates, pushed.drift, pushed.writes) == (["ALPHA"], [], 1)
    assert secret(world, "alpha").value == "alpha-value-2" and secret(world, "beta").value == "also-by-hand"
    assert cli_main(["--config", str(config), "accept-drift", "--env", "nope"]) == 2


def test_records_without_stamps_are_completed_without_rewriting(world: World) -> None:
    """A push record written before stamps were recorded: the next sync reads each secret once,
    finds it in place and records its stamp; nothing is rewritten and nothing is called drift."""
    body = kv_body(world, "repair")
    engine = world.engine(body)
    assert engine.sync().ok
    row = engine.state.get("pushes", "app", "vault")
    del row.fields["stamps"]
    engine.state.put("pushes", row)
    world.sandbox.reset_counters()
    (target,) = world.engine(body).sync().targets
    assert (target.outcome, target.writes, target.drift) == ("recorded", 0, [])
    reads = world.sandbox.counters()["by_endpoint"]["keyvault:GetSecret"]
    engine = world.engine(body)
    world.sandbox.reset_counters()
    assert engine.sync().targets[0].outcome == "unchanged"
    # The pass that records resolves the env again (2 source reads); the pushed secrets' values
    # came with the snapshot's reads of them (one GET each, which the unchanged sync makes too).
    assert reads - world.sandbox.counters()["by_endpoint"]["keyvault:GetSecret"] == 2
    assert_settled(world, body)


# ---- Key Vault, one secret for the bundle -----------------------------------------------------------
@pytest.mark.parametrize("copy_tags", [False, True], ids=["tagless-edit", "edit-copying-the-tags"])
def test_a_bundle_secret_edited_by_hand_is_reported_then_repaired(world: World, copy_tags: bool) -> None:
    body = kv_body(world, "report", mode="bundle")
    assert world.engine(body).sync().ok
    pushed = secret(world, "bundle")
    assert json.loads(pushed.value) == {"ALPHA": "alpha-value-1", "BETA": "beta-value-1"}
    after_a_second()
    world.target.set_secret(pushed.name, json.dumps({"ALPHA": "mine"}), tags=dict(pushed.properties.tags) if copy_tags else None,
                            content_type="application/json")
    world.sandbox.reset_counters()
    (reported,) = world.engine(body).sync().targets
    assert (reported.drift, reported.writes) == (["(content)"], 0) and target_writes(world.sandbox) == {}
    assert status_of(world.engine(body))["drift"] == "(content)"
    (repaired,) = world.engine(with_policy(body, "repair")).sync().targets
    assert (repaired.outcome, repaired.repaired, repaired.writes) == ("pushed", ["(content)"], 1)
    assert json.loads(secret(world, "bundle").value) == {"ALPHA": "alpha-value-1", "BETA": "beta-value-1"}
    assert secret(world, "bundle").properties.tags == pushed.properties.tags
    assert_settled(world, with_policy(body, "repair"))


def test_a_foreign_bundle_secret_is_never_touched(world: World) -> None:
    name = f"vr-{world.tag}-bundle"
    world.target.set_secret(name, "theirs")
    body = kv_body(world, "repair", mode="bundle")
    (target,) = world.engine(body).sync().targets
    assert target.outcome == "error" and name in (target.error or "")
    assert world.target.get_secret(name).value == "theirs"


# ---- blob -------------------------------------------------------------------------------------------
def blob_body(world: World, policy: str) -> str:
    a = world.secret("gamma", "gamma-value-1")
    return body_yaml(envs={"app": {"GAMMA": secret_ref(a)}}, targets={"blob": blob_target("app", "drift-TAG.env", drift_policy=policy)})


def blob_of(world: World, name: str | None = None) -> Any:
    return ContainerClient(world.sandbox.storage_endpoint("sandboxdata"), "bundles", credential=world.admin).get_blob_client(name or f"drift-{world.tag}.env")


@pytest.mark.parametrize("keep_metadata", [False, True], ids=["no-metadata", "metadata-copied"])
def test_a_blob_edited_by_hand_is_reported_then_repaired(world: World, keep_metadata: bool) -> None:
    body = blob_body(world, "report")
    assert world.engine(body).sync().ok
    blob = blob_of(world)
    props = blob.get_blob_properties()
    assert props.metadata == {"managed_by": "vaultrelay", "vaultrelay_env": "app", "vaultrelay_target": "blob"}
    blob.upload_blob(b'GAMMA="mine"\n', overwrite=True, metadata=dict(props.metadata) if keep_metadata else None)
    world.sandbox.reset_counters()
    engine = world.engine(body)
    (reported,) = engine.sync().targets
    assert (reported.drift, reported.writes) == (["(content)"], 0) and target_writes(world.sandbox) == {}
    assert status_of(engine, "blob")["drift_found"]["(content)"]
    (repaired,) = world.engine(with_policy(body, "repair")).sync().targets
    assert (repaired.outcome, repaired.repaired, repaired.writes) == ("pushed", ["(content)"], 1)
    assert blob.download_blob().readall() == b'GAMMA=gamma-value-1\n'
    assert status_of(engine, "blob")["drift"] == "" and audit(engine, "push")[0]["detail"]["repaired"] == ["(content)"]
    assert_settled(world, with_policy(body, "repair"))


def test_a_blob_vaultrelay_never_owned_is_never_touched(world: World) -> None:
    blob = blob_of(world)
    blob.upload_blob(b"theirs", overwrite=True)
    for policy in ("report", "repair"):
        (target,) = world.engine(blob_body(world, policy)).sync().targets
        assert target.outcome == "error" and "not managed by vaultrelay" in (target.error or "")
        assert blob.download_blob().readall() == b"theirs"


# ---- app settings ---------------------------------------------------------------------------------
def web(world: World) -> Any:
    return WebSiteManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint)


def app_settings(world: World) -> dict[str, str]:
    return dict(web(world).web_apps.list_application_settings(world.sandbox.resource_group, SITE).properties or {})


def set_app_setting(world: World, name: str, value: str) -> None:
    web(world).web_apps.update_application_settings(world.sandbox.resource_group, SITE, StringDictionary(properties={**app_settings(world), name: value}))


def settings_body(world: World, policy: str) -> str:
    a = world.secret("delta", "delta-value-1")
    return body_yaml(envs={"app": {f"DELTA_{world.tag}": secret_ref(a)}},
                     targets={"settings": app_settings_target("app", site=SITE, drift_policy=policy)})


def test_an_app_setting_edited_by_hand_is_reported_accepted_or_repaired(world: World) -> None:
    body = settings_body(world, "report")
    name = f"DELTA_{world.tag}"
    assert world.engine(body).sync().ok
    set_app_setting(world, name, "mine")
    world.sandbox.reset_counters()
    engine = world.engine(body)
    (reported,) = engine.sync().targets
    assert (reported.drift, reported.writes) == ([name], 0) and target_writes(world.sandbox) == {}
    assert status_of(engine, "settings")["drift_found"][name]
    (repaired,) = world.engine(with_policy(body, "repair")).sync().targets
    assert (repaired.outcome, repaired.repaired, repaired.writes) == ("pushed", [name], 1)
    assert app_settings(world)[name] == "delta-value-1"
    assert_settled(world, with_policy(body, "repair"))

    set_app_setting(world, name, "mine-again")
    assert world.engine(body).sync().targets[0].drift == [name]
    (accepted,) = world.engine(body).accept_drift("app", "settings")
    assert (accepted.outcome, accepted.drift) == ("accepted", [name])
    assert_settled(world, body)
    assert app_settings(world)[name] == "mine-again"


def test_an_app_setting_vaultrelay_never_owned_is_never_touched(world: World) -> None:
    name = f"DELTA_{world.tag}"
    set_app_setting(world, name, "theirs")
    for policy in ("report", "repair"):
        (target,) = world.engine(settings_body(world, policy)).sync().targets
        assert target.outcome == "error" and name in (target.error or "") and "not managed by vaultrelay" in (target.error or "")
        assert app_settings(world)[name] == "theirs"


def test_unknown_names_are_refused_by_accept(world: World) -> None:
    from core.errors import NotFoundError

    with pytest.raises(NotFoundError):
        world.engine(kv_body(world, "report")).accept_drift("app", "nope")
    with pytest.raises((HttpResponseError, ResourceNotFoundError)):
        world.target.get_secret(f"vr-{world.tag}-alpha")  # nothing pushed by a refused accept
