"""Cosmos DB key rotation when regenerateKey takes hours (issue 13, item 5), against the sandbox.

Learn: Cosmos DB key regeneration "can take anywhere from one minute to multiple hours"; the
account refuses another regeneration meanwhile (412).  The sandbox keeps the operation in progress
for as long as a test says.  vaultrelay waits at most `rotation.regenerate_wait` per run, records
the operation's polling URL in the rotation record, follows it up on later runs without a second
regenerateKey (also after a run was killed), and switches `active` (or writes the tagged secret's
new version) only once the operation succeeded and the listed key changed.
"""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.app.events import KeyVaultEvents
from core.cli import EXIT_OK, main
from sandbox.client import SandboxClient
from tests.core.test_rotation_account_keys_sandbox import cosmos_body, cosmos_keys, fresh_cosmos_account
from tests.core.test_rotation_tagged_secrets_sandbox import Tagged, digest, near_expiry
from tests.world import World, run_cli, write_config


@pytest.fixture()
def world(seeded: SandboxClient) -> Iterator[World]:
    yield World(seeded)
    seeded.hold_cosmos_regenerations(None)


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def started_regenerations(sandbox: SandboxClient) -> int:
    """regenerateKey calls ARM accepted (2xx): each one regenerates a key."""
    return sum(n for k, n in sandbox.counters()["by_endpoint_status"].items()
               if k.startswith("arm:CosmosRegenerateKey:") and k.rsplit(":", 1)[1].startswith("2"))


def refused_regenerations(sandbox: SandboxClient) -> int:
    return sum(n for k, n in sandbox.counters()["by_endpoint_status"].items() if k == "arm:CosmosRegenerateKey:412")


def rotation_row(world: World, body: str, account: str) -> dict[str, Any]:
    row = world.engine(body).state.get("rotations", "cosmos", account)
    assert row is not None
    return dict(row.fields)


def long_body(account: str, wait: str = "1s") -> str:
    return cosmos_body(account, rotation={"regenerate_wait": wait})


def test_a_regeneration_that_takes_hours_is_followed_up_by_later_runs_and_switched_once_done(
        world: World, tmp_path: Path, sandbox_process: Any) -> None:
    sandbox = world.sandbox
    account = fresh_cosmos_account(sandbox, world.tag)
    body = long_body(account)
    config = write_config(world, body, tmp_path)
    assert world.engine(body).sync().ok
    before = cosmos_keys(sandbox, account)
    assert cli(config, "rotate")[0] == EXIT_OK  # adopted: primary active
    sandbox.hold_cosmos_regenerations(3 * 3600)
    sandbox.reset_counters()

    # A run starts the regeneration and returns after its bounded wait (not hours later).
    began = time.monotonic()
    proc = run_cli(sandbox_process, config, "rotate", "--force")
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("rotate waited for the whole regeneration") from None
    assert proc.returncode == EXIT_OK, err.decode()[-2000:]
    assert time.monotonic() - began < 60
    assert "in_progress" in out.decode()
    row = rotation_row(world, body, account)
    assert (row["phase"], row["active"], row["target_key"]) == ("regenerating", "primary", "secondary")
    (running,) = [op for op in sandbox.arm_operations() if op["resource"].endswith("/" + account) and op["status"] == "InProgress"]
    assert row["operation"] == running["status_url"] and row["operation"].startswith(sandbox.arm_endpoint)
    assert started_regenerations(sandbox) == 1

    # Later runs (the timer's, a forced one) poll the same operation: no second regenerateKey.
    for args in (("rotate",), ("rotate", "--force")):
        code, out_text, err_text = cli(config, *args)
        assert code == EXIT_OK and "in_progress" in out_text, err_text
    assert started_regenerations(sandbox) == 1 and refused_regenerations(sandbox) == 0
    assert rotation_row(world, body, account)["active"] == "primary"
    assert world.target.get_secret(f"vr-{world.tag}-cosmos-key").value == before.primary_master_key
    assert cosmos_keys(sandbox, account).secondary_master_key == before.secondary_master_key  # still running
    status = {r["name"]: r for r in world.engine(body).rotation_status() if r["kind"] == "cosmos"}[account]
    assert (status["phase"], status["operation_status"]) == ("regenerating", "InProgress")
    code, out_text, _ = cli(config, "status")
    assert code == EXIT_OK and "regenerating (InProgress)" in out_text

    # Hours later the operation is done: the next run switches and re-pushes, still one regeneration.
    sandbox.finish_arm_operations(account)
    code, out_text, err_text = cli(config, "rotate")
    assert code == EXIT_OK and "resumed" in out_text, out_text + err_text
    after = cosmos_keys(sandbox, account)
    assert after.secondary_master_key != before.secondary_master_key and after.primary_master_key == before.primary_master_key
    row = rotation_row(world, body, account)
    assert (row["phase"], row["active"], row["operation"]) == ("", "secondary", "")
    assert world.target.get_secret(f"vr-{world.tag}-cosmos-key").value == after.secondary_master_key
    assert started_regenerations(sandbox) == 1


def test_a_run_killed_while_the_operation_runs_is_resumed_without_a_second_regeneration(
        world: World, tmp_path: Path, sandbox_process: Any) -> None:
    sandbox = world.sandbox
    account = fresh_cosmos_account(sandbox, world.tag)
    body = long_body(account, "10m")  # the killed run would wait long
    config = write_config(world, body, tmp_path)
    assert world.engine(body).sync().ok
    before = cosmos_keys(sandbox, account)
    assert cli(config, "rotate")[0] == EXIT_OK
    sandbox.hold_cosmos_regenerations(3 * 3600)
    sandbox.reset_counters()

    proc = run_cli(sandbox_process, config, "rotate", "--force")
    deadline = time.monotonic() + 60
    while not any(op["resource"].endswith("/" + account) for op in sandbox.arm_operations()):
        assert time.monotonic() < deadline and proc.poll() is None, "the regeneration never started"
        time.sleep(0.1)
    time.sleep(1.0)  # it records the operation and polls it
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert started_regenerations(sandbox) == 1
    assert rotation_row(world, body, account)["operation"]

    # The next run follows the recorded operation (short waits from here on).
    quick = long_body(account)
    quick_config = write_config(world, quick, tmp_path)
    code, out_text, err_text = cli(quick_config, "rotate")
    assert code == EXIT_OK and "in_progress" in out_text, out_text + err_text
    assert started_regenerations(sandbox) == 1 and refused_regenerations(sandbox) == 0

    # A run killed before it could record the operation: the record has no URL.  The next run's
    # start is refused (412: the account's operation runs), so nothing is regenerated twice.
    engine = world.engine(quick)
    row = engine.state.get("rotations", "cosmos", account)
    assert row is not None
    row.fields.update({"operation": "", "operation_status": ""})
    engine.state.put("rotations", row)
    code, out_text, err_text = cli(quick_config, "rotate")
    assert code == EXIT_OK and "in_progress" in out_text, out_text + err_text
    assert started_regenerations(sandbox) == 1 and refused_regenerations(sandbox) == 1
    assert rotation_row(world, quick, account)["active"] == "primary"

    sandbox.finish_arm_operations(account)
    code, out_text, err_text = cli(quick_config, "rotate")
    assert code == EXIT_OK and "resumed" in out_text, out_text + err_text
    after = cosmos_keys(sandbox, account)
    assert after.secondary_master_key != before.secondary_master_key
    assert rotation_row(world, quick, account)["active"] == "secondary"
    assert world.target.get_secret(f"vr-{world.tag}-cosmos-key").value == after.secondary_master_key
    assert started_regenerations(sandbox) == 1


def test_a_failed_regeneration_is_an_error_and_the_next_run_starts_over(world: World, tmp_path: Path) -> None:
    sandbox = world.sandbox
    account = fresh_cosmos_account(sandbox, world.tag)
    body = long_body(account)
    config = write_config(world, body, tmp_path)
    assert world.engine(body).sync().ok
    before = cosmos_keys(sandbox, account)
    assert cli(config, "rotate")[0] == EXIT_OK
    sandbox.hold_cosmos_regenerations(3600)
    assert "in_progress" in cli(config, "rotate", "--force")[1]
    sandbox.finish_arm_operations(account, failed=True)
    code, _, err_text = cli(config, "rotate")
    assert code != EXIT_OK and f"error: cosmos:{account}: RegenerationFailed: the key regeneration ended Failed" in err_text
    row = rotation_row(world, body, account)
    assert (row["phase"], row["active"], row["operation"]) == ("regenerating", "primary", "")
    assert cosmos_keys(sandbox, account).secondary_master_key == before.secondary_master_key

    sandbox.hold_cosmos_regenerations(None)  # a new operation ends on its second poll ...
    sandbox.reset_counters()
    sandbox.set_arm_retry_after(None)  # ... which ARM asks to make in 10 s (Azure's): past the 1 s wait
    try:
        code, out_text, _ = cli(config, "rotate")
    finally:
        sandbox.set_arm_retry_after(0)
    assert code == EXIT_OK and "in_progress" in out_text
    code, out_text, _ = cli(config, "rotate")
    assert code == EXIT_OK and "resumed" in out_text
    assert started_regenerations(sandbox) == 1
    assert rotation_row(world, body, account)["active"] == "secondary"


def test_a_tagged_cosmos_secret_waits_for_its_regeneration_and_is_written_once_it_is_done(world: World, tmp_path: Path) -> None:
    sandbox = world.sandbox
    tagged = Tagged(world)
    account = fresh_cosmos_account(sandbox, world.tag)
    provider = sandbox.resource_id("cosmos", account)
    before = cosmos_keys(sandbox, account)
    seeded_secret = tagged.seed("cosmos-key", before.primary_master_key, "Primary", provider, expires_in=timedelta(days=2), validity_days="30")
    body = tagged.body() + """
          regenerate_wait: 1s
    """
    config = write_config(world, body, tmp_path)
    sandbox.hold_cosmos_regenerations(3 * 3600)
    sandbox.reset_counters()
    label = f"tagged:{tagged.vault}/cosmos-key"

    code, out_text, err_text = cli(config, "rotate")
    assert code == EXIT_OK and "in_progress" in out_text, out_text + err_text
    assert tagged.client.get_secret("cosmos-key").properties.version == seeded_secret.properties.version  # nothing written yet
    record = world.engine(body).state.get("rotations", "tagged", f"{tagged.vault}:cosmos-key")
    assert record is not None and record.fields["phase"] == "regenerating" and record.fields["operation"].startswith(sandbox.arm_endpoint)

    # Again (timer), and Key Vault's next near-expiry event: the same operation, followed up.
    assert "in_progress" in cli(config, "rotate")[1]
    outcome = KeyVaultEvents(world.runtime(body)).handle(near_expiry(tagged.vault, "cosmos-key", seeded_secret.properties.version))
    assert outcome.outcome == "ignored" and "in progress" in outcome.detail
    assert started_regenerations(sandbox) == 1 and refused_regenerations(sandbox) == 0
    assert tagged.client.get_secret("cosmos-key").properties.version == seeded_secret.properties.version

    sandbox.finish_arm_operations(account)
    code, out_text, err_text = cli(config, "rotate", "--name", label)
    assert code == EXIT_OK and "resumed" in out_text, out_text + err_text
    after = cosmos_keys(sandbox, account)
    current = tagged.client.get_secret("cosmos-key")
    assert current.properties.version != seeded_secret.properties.version
    assert digest(current.value) == digest(after.secondary_master_key) != digest(before.secondary_master_key)
    assert current.properties.tags["CredentialId"] == "Secondary"
    assert started_regenerations(sandbox) == 1
