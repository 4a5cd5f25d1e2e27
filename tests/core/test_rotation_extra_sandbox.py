"""Rotation against the sandbox beyond storage keys: Cosmos DB dual-key rotation and user
delegation keys kept between runs in the state vault."""

from __future__ import annotations

from typing import Any

from azure.mgmt.cosmosdb import CosmosDBManagementClient

from core.engine.rotate import KeyRotation
from sandbox.client import SandboxClient
from tests.core.test_sync_sandbox import World, regenerations, seeded, world

__all__ = ["seeded", "world"]  # fixtures used by this module's tests


def fresh_cosmos_account(sandbox: SandboxClient, tag: str) -> str:
    name = f"cosmos-{tag}"
    sandbox.create_resource("cosmos", name)
    for role in ("DocumentDB Account Contributor", "Reader"):
        sandbox.grant("system", role, sandbox.resource_id("cosmos", name))
    return name


def cosmos_keys(sandbox: SandboxClient, account: str) -> Any:
    client = CosmosDBManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    return client.database_accounts.list_keys(sandbox.resource_group, account)


def cosmos_body(account: str) -> str:
    return f"""
        envs:
          app:
            COSMOS_KEY: {{from: {{store: azure, resource_type: cosmosdb, account: {account}, key: active, rotate: {{every: 30d}}}}}}
            COSMOS_CS: {{from: {{store: azure, resource_type: cosmosdb, account: {account}, key: active, format: connection_string}}}}
        targets:
          vault: {{type: keyvault, env: app, store: azure, vault: kv-target, prefix: vr-TAG-}}
    """


def test_cosmos_key_rotation_regenerates_the_inactive_key_switches_and_repushes(world: World) -> None:
    account = fresh_cosmos_account(world.sandbox, world.tag)
    body = cosmos_body(account)
    assert world.engine(body).sync().ok
    before = cosmos_keys(world.sandbox, account)
    pushed = world.target.get_secret(f"vr-{world.tag}-cosmos-key").value
    assert pushed == before.primary_master_key
    assert [r.outcome for r in KeyRotation(world.engine(body)).rotate()] == ["adopted"]

    world.sandbox.reset_counters()
    (report,) = KeyRotation(world.engine(body)).rotate(force=True)
    assert (report.outcome, report.old_active, report.new_active, report.repushed) == ("rotated", "primary", "secondary", ["app"]), report
    assert regenerations(world.sandbox, account) == 1
    after = cosmos_keys(world.sandbox, account)
    assert after.secondary_master_key != before.secondary_master_key  # the inactive key was regenerated
    assert after.primary_master_key == before.primary_master_key  # the old active key still works for old consumers
    assert world.target.get_secret(f"vr-{world.tag}-cosmos-key").value == after.secondary_master_key
    connection_string = world.target.get_secret(f"vr-{world.tag}-cosmos-cs").value or ""
    assert after.secondary_master_key in connection_string
    rows = {r["name"]: r for r in world.engine(body).rotation_status() if r["kind"] == "cosmos"}
    assert rows[account]["active"] == "secondary" and rows[account]["phase"] == ""

    world.sandbox.reset_counters()
    (again,) = KeyRotation(world.engine(body)).rotate()
    assert again.outcome == "not_due" and again.old_active == "secondary"
    assert not any("regenerate" in k.lower() for k in world.sandbox.counters()["by_endpoint"])
    assert cosmos_keys(world.sandbox, account).secondary_master_key == after.secondary_master_key
    assert world.engine(body).sync().target_writes == 0
