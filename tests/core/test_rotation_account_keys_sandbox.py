"""Rotation against the sandbox beyond storage keys: Cosmos DB dual-key rotation and user
delegation keys kept between runs in the state vault."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.storage.blob import ContainerClient

from core.app.rotate import rotate
from core.mint.sas import StoredDelegationKeys
from sandbox.client import SandboxClient
from tests.configs import body_yaml, keyvault_target, ref
from tests.world import World, regenerations, run_cli, write_config


def fresh_cosmos_account(sandbox: SandboxClient, tag: str) -> str:
    name = f"cosmos-{tag}"
    sandbox.create_resource("cosmos", name)
    for role in ("DocumentDB Account Contributor", "Reader"):
        sandbox.grant("system", role, sandbox.resource_id("cosmos", name))
    return name


def cosmos_keys(sandbox: SandboxClient, account: str) -> Any:
    client = CosmosDBManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    return client.database_accounts.list_keys(sandbox.resource_group, account)


def cosmos_body(account: str, **extra: Any) -> str:
    return body_yaml(envs={
        "app": {
            "COSMOS_KEY": ref(resource_type="cosmosdb", account=account, key="active", rotate={"every": "30d"}),
            "COSMOS_CS": ref(resource_type="cosmosdb", account=account, key="active", format="connection_string"),
        },
    }, targets={"vault": keyvault_target("app", prefix="vr-TAG-")}, **extra)


def test_cosmos_key_rotation_regenerates_the_inactive_key_switches_and_repushes(world: World) -> None:
    account = fresh_cosmos_account(world.sandbox, world.tag)
    body = cosmos_body(account)
    assert world.engine(body).sync().ok
    before = cosmos_keys(world.sandbox, account)
    pushed = world.target.get_secret(f"vr-{world.tag}-cosmos-key").value
    assert pushed == before.primary_master_key
    assert [r.outcome for r in rotate(world.runtime(body))] == ["adopted"]

    world.sandbox.reset_counters()
    (report,) = rotate(world.runtime(body), force=True)
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
    (again,) = rotate(world.runtime(body))
    assert again.outcome == "not_due" and again.old_active == "secondary"
    assert not any("regenerate" in k.lower() for k in world.sandbox.counters()["by_endpoint"])
    assert cosmos_keys(world.sandbox, account).secondary_master_key == after.secondary_master_key
    assert world.engine(body).sync().target_writes == 0


def delegation_key_requests(sandbox: SandboxClient) -> int:
    return sum(v for k, v in sandbox.counters()["by_endpoint"].items() if "userdelegationkey" in k.lower())


def sas_lists(sandbox: SandboxClient, account: str, container: str, token: str) -> list[str]:
    client = ContainerClient(sandbox.storage_endpoint(account), container, credential=token, retry_total=0)
    return [b.name for b in client.list_blobs()]


def container_with_hello(world: World, container: str) -> str:
    """A new container of sandboxstore holding hello.txt, for SAS to list."""
    admin_container = ContainerClient(world.sandbox.storage_endpoint("sandboxstore"), container, credential=world.admin)
    admin_container.create_container()
    admin_container.upload_blob("hello.txt", b"hello")
    return container


def test_user_delegation_keys_are_kept_between_runs_and_renewed_before_they_run_out(world: World) -> None:
    sandbox = world.sandbox
    container = container_with_hello(world, f"ud{world.tag}")
    body = body_yaml(envs={
        "app": {
            "UD_SAS": ref(resource_type="storage", account="sandboxstore", operation="generate_sas",
                          container=container, permissions="rl", expiry="1h"),
        },
    }, targets={"vault": keyvault_target("app", prefix="vr-TAG-")})
    first = world.engine(body)
    identity = f"azure:{first.broker.store('azure').identity_description}"
    kept = StoredDelegationKeys.secret_name("sandboxstore", identity, timedelta(hours=1))
    vault = world.state_vault  # the config's state.vault
    # Whatever earlier tests kept for this identity: make it one that runs out in 5 minutes.
    near = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    vault.set_secret(kept, json.dumps({"signed_expiry": near, "value": "bm90LWEta2V5"}), tags={"managed-by": "vaultrelay"})

    sandbox.reset_counters()
    assert first.sync().minted == ["app/UD_SAS"]
    assert delegation_key_requests(sandbox) == 1, sandbox.counters()["by_endpoint"]  # the near-expiry key was renewed
    stored = vault.get_secret(kept)
    expiry = datetime.fromisoformat(stored.properties.tags["signed-expiry"].replace("Z", "+00:00"))
    # The key ends shortly after the 1-hour SAS it signs (10 % of its lifetime), not days later.
    assert timedelta(hours=1) <= expiry - datetime.now(UTC) <= timedelta(hours=1, minutes=6)
    assert stored.properties.expires_on is not None and abs(stored.properties.expires_on - expiry) < timedelta(seconds=2)
    assert stored.properties.content_type == "application/x-user-delegation-key"
    assert sas_lists(sandbox, "sandboxstore", container, world.target.get_secret(f"vr-{world.tag}-ud-sas").value or "") == ["hello.txt"]

    time.sleep(1.1)  # SAS times have one-second resolution
    second = world.engine(body)  # another run, another instance: nothing shared in memory
    report = second.sync(force_mint=True)
    assert report.minted == ["app/UD_SAS"] and report.targets[0].updates == ["UD_SAS"], report
    assert delegation_key_requests(sandbox) == 1  # the kept key signed it
    assert vault.get_secret(kept).properties.version == stored.properties.version
    token = world.target.get_secret(f"vr-{world.tag}-ud-sas").value or ""
    assert "skoid=" in token and sas_lists(sandbox, "sandboxstore", container, token) == ["hello.txt"]
    assert not any(stored.value and stored.value in json.dumps(r.fields, default=str) for t in ("rotations", "audit") for r in second.state.query(t))


def test_cli_resolve_and_exec_sign_with_the_kept_delegation_key(world: World, tmp_path: Path, sandbox_process: Any) -> None:
    """`vaultrelay resolve` and `vaultrelay exec` (separate processes) use the key kept in state.vault."""
    sandbox = world.sandbox
    container = container_with_hello(world, f"cli{world.tag}")
    body = body_yaml(envs={
        "app": {
            "UD_SAS": ref(resource_type="storage", account="sandboxstore", operation="generate_sas",
                          container=container, permissions="rl", expiry="1h"),
        },
    })
    config = write_config(world, body, tmp_path)
    engine = world.engine(body)
    kept = StoredDelegationKeys.secret_name("sandboxstore", f"azure:{engine.broker.store('azure').identity_description}",
                                            timedelta(hours=1))
    near = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.state_vault.set_secret(kept, json.dumps({"signed_expiry": near, "value": "bm90LWEta2V5"}), tags={"managed-by": "vaultrelay"})

    sandbox.reset_counters()
    resolve = run_cli(sandbox_process, config, "resolve", "--env", "app", "--format", "json", "--reveal")
    out, err = resolve.communicate(timeout=120)
    assert resolve.returncode == 0, err.decode()
    first = json.loads(out)["UD_SAS"]
    assert delegation_key_requests(sandbox) == 1, sandbox.counters()["by_endpoint"]  # the near-expiry kept key was renewed
    renewed = world.state_vault.get_secret(kept)

    time.sleep(1.1)  # SAS times have one-second resolution
    run = run_cli(sandbox_process, config, "exec", "--env", "app", "--", sys.executable, "-c", "import os; print(os.environ['UD_SAS'])")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err.decode()
    second = out.decode().strip()
    assert delegation_key_requests(sandbox) == 1, sandbox.counters()["by_endpoint"]  # the kept key signed it
    assert world.state_vault.get_secret(kept).properties.version == renewed.properties.version
    assert first != second
    for token in (first, second):
        assert sas_lists(sandbox, "sandboxstore", container, token) == ["hello.txt"]
    assert json.loads(renewed.value or "{}")["value"] not in (err.decode() + out.decode())


def test_a_rotation_whose_repush_finds_the_env_busy_waits_for_the_lease_or_resumes_later(world: World, monkeypatch: Any) -> None:
    import core.app.sync as sync_module

    monkeypatch.setattr(sync_module, "BUSY_WAITS", (0.2, 0.2))  # our own module's pacing, not Azure's
    account = fresh_cosmos_account(world.sandbox, world.tag)
    body = cosmos_body(account)
    engine = world.engine(body)
    assert engine.sync().ok
    assert [r.outcome for r in rotate(world.runtime(body))] == ["adopted"]

    # Another instance is syncing env app (it may have read the old key) for the whole rotation.
    other = world.engine(body)
    lease = other.state.acquire_lease("sync:app", "other-host:1:abc", 600)
    assert lease is not None
    (report,) = rotate(world.runtime(body), force=True)
    assert report.outcome == "error" and "kept its lease" in (report.error or ""), report
    assert regenerations(world.sandbox, account) == 1
    rows = {r["name"]: r for r in world.engine(body).rotation_status() if r["kind"] == "cosmos"}
    assert rows[account]["phase"] == "repushing"  # switched, not yet re-pushed: the next run resumes
    new_key = cosmos_keys(world.sandbox, account).secondary_master_key
    assert world.target.get_secret(f"vr-{world.tag}-cosmos-key").value != new_key

    other.state.release_lease(lease)
    world.sandbox.reset_counters()
    (resumed,) = rotate(world.runtime(body))
    assert resumed.outcome == "resumed" and resumed.repushed == ["app"], resumed
    assert not any("regenerate" in k.lower() for k in world.sandbox.counters()["by_endpoint"])  # not regenerated twice
    assert world.target.get_secret(f"vr-{world.tag}-cosmos-key").value == new_key
