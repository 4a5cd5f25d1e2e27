"""Key Vault soft delete against the sandbox: a deleted name stays taken, deletion and recovery take
time (409 ObjectIsBeingDeleted / ObjectIsBeingRecovered meanwhile), and vaultrelay recovers a
deleted secret only when it is its own for that target; someone else's is never recovered or
overwritten."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError

from core.targets import keyvault as keyvault_target
from sandbox.client import SandboxClient
from tests.core.test_push_sandbox import per_variable, per_variable_body
from tests.world import World


@pytest.fixture()
def world(seeded: SandboxClient) -> Iterator[World]:
    yield World(seeded)
    seeded.set_keyvault_transitions()  # back to the defaults


def recovers(world: World) -> int:
    return sum(n for k, n in world.sandbox.counters()["by_endpoint"].items() if k == "keyvault:RecoverDeletedSecret")


def test_a_foreign_soft_deleted_secret_is_never_recovered_or_overwritten(world: World) -> None:
    name = f"vr-{world.tag}-beta"
    world.target.set_secret(name, "someone-elses", tags={"owner": "team-b"})
    world.target.begin_delete_secret(name).wait()
    world.sandbox.reset_counters()
    report = world.engine(per_variable(world)).sync()
    (target,) = report.targets
    assert target.outcome == "error", target
    assert name in (target.error or "") and "deleted" in (target.error or "") and "not vaultrelay's" in (target.error or "")
    assert "someone-elses" not in (target.error or "")
    assert recovers(world) == 0
    deleted = world.target.get_deleted_secret(name)  # still deleted, untouched
    assert deleted.properties.tags == {"owner": "team-b"}
    with pytest.raises(ResourceNotFoundError):
        world.target.get_secret(name)
    # the rest of the target was written; the status names the secret
    assert world.target.get_secret(f"vr-{world.tag}-alpha").value == "alpha-value-1"
    status = {s["target"]: s for s in world.engine(per_variable(world)).status()}
    assert name in status["vault"]["last_error"]


def test_a_foreign_deleted_secret_tagged_for_another_target_is_not_taken_over(world: World) -> None:
    """managed-by: vaultrelay is not enough: the ownership tags must name this target."""
    name = f"vr-{world.tag}-beta"
    world.target.set_secret(name, "other-deployment", tags={"managed-by": "vaultrelay", "vaultrelay-target": "elsewhere"})
    world.target.begin_delete_secret(name).wait()
    world.sandbox.reset_counters()
    (target,) = world.engine(per_variable(world)).sync().targets
    assert target.outcome == "error" and name in (target.error or "")
    assert recovers(world) == 0
    assert world.target.get_deleted_secret(name).properties.tags["vaultrelay-target"] == "elsewhere"


def test_vaultrelays_own_deleted_secret_is_recovered_after_the_transitional_states(world: World) -> None:
    """deletion_policy: delete removes a variable; it comes back while Key Vault still deletes it
    (409 ObjectIsBeingDeleted), then is recovered (409 ObjectIsBeingRecovered while that runs) and
    written as a new version: waited out, not failed."""
    body = per_variable(world, target={"deletion_policy": "delete"})
    assert world.engine(body).sync().ok
    without_beta = per_variable_body(world, target={"deletion_policy": "delete"}, without=("BETA",))
    world.sandbox.set_keyvault_transitions(delete_seconds=1.5, recover_seconds=1.5)
    assert world.engine(without_beta).sync().targets[0].removals == ["BETA"]
    world.sandbox.reset_counters()
    report = world.engine(body).sync()  # at once: the secret is still being deleted
    (target,) = report.targets
    assert (target.outcome, target.adds, target.writes) == ("pushed", ["BETA"], 1), target
    assert world.target.get_secret(f"vr-{world.tag}-beta").value == "beta-value-1"
    statuses = world.sandbox.counters()["by_endpoint_status"]
    assert statuses.get("keyvault:SetSecret:409", 0) >= 2  # being deleted, then deleted-but-recoverable / being recovered
    assert recovers(world) == 1
    versions = list(world.target.list_properties_of_secret_versions(f"vr-{world.tag}-beta"))
    assert len(versions) == 2  # the recovered version and the new one


def test_waiting_for_a_transitional_state_is_bounded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    body = per_variable(world, target={"deletion_policy": "delete"})
    assert world.engine(body).sync().ok
    without_beta = per_variable_body(world, target={"deletion_policy": "delete"}, without=("BETA",))
    world.sandbox.set_keyvault_transitions(delete_seconds=60)
    world.engine(without_beta).sync()
    monkeypatch.setattr(keyvault_target, "TRANSITION_WAIT_S", 1.0)
    (target,) = world.engine(body).sync().targets
    assert target.outcome == "error"
    assert f"vr-{world.tag}-beta" in (target.error or "") and "still being deleted" in (target.error or "")
