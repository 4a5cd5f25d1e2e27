"""ARM throttling through the CLI: the sandbox's storage resource provider answers 429 with
`Retry-After` once its (here lowered) per-subscription budget is spent; vaultrelay waits a short
`Retry-After` out and succeeds, and gives up at once, with reason `throttled`, on one longer than
it ever waits (30 s) instead of holding the run for minutes."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from azure.mgmt.storage import StorageManagementClient

from core.cli import EXIT_OK, EXIT_RESOLUTION, main
from sandbox.client import SandboxClient


@pytest.fixture()
def limits(seeded: SandboxClient, clean_faults: SandboxClient, arm_limits: SandboxClient) -> SandboxClient:
    return arm_limits


def config(tmp_path: Path, sandbox: SandboxClient) -> Path:
    path = tmp_path / "vaultrelay.yaml"
    path.write_text(json.dumps({
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity"}},
        "envs": {"e": {"KEY": {"from": {"store": "azure", "resource_type": "storage", "account": "sandboxstore", "key": "key2",
                                        "resource_group": sandbox.resource_group}}}},
    }))
    return path


def spend_list_budget(sandbox: SandboxClient, window_s: float) -> None:
    """Allow one listKeys per `window_s` in the subscription and region, and use it up."""
    sandbox.set_arm_limits(list={"limit": 1, "window_s": window_s})
    client = StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint, retry_total=0)
    client.storage_accounts.list_keys(sandbox.resource_group, "sandboxstore")
    sandbox.reset_counters()


def resolve(path: Path) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()
    code = main(["--config", str(path), "resolve", "--env", "e", "--format", "json", "--reveal"], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - began


def test_a_short_retry_after_is_waited_out(limits: SandboxClient, tmp_path: Path) -> None:
    path = config(tmp_path, limits)
    spend_list_budget(limits, 3)
    code, out, err, seconds = resolve(path)
    assert code == EXIT_OK, err
    assert json.loads(out)["KEY"]
    statuses = limits.counters()["by_endpoint_status"]
    assert (statuses.get("arm:StorageListKeys:429"), statuses.get("arm:StorageListKeys:200")) == (1, 1), statuses
    assert seconds >= 2.5  # Retry-After: 3


def test_a_retry_after_longer_than_vaultrelay_waits_fails_at_once_as_throttled(
    limits: SandboxClient, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = config(tmp_path, limits)
    spend_list_budget(limits, 600)  # Retry-After: 600
    code, out, err, seconds = resolve(path)
    assert (code, out) == (EXIT_RESOLUTION, "")
    assert "error: KEY: envs.e.KEY.from: throttled: (TooManyRequests)" in err
    assert seconds < 20
    assert limits.counters()["by_endpoint_status"].get("arm:StorageListKeys:429") == 1  # not retried
    assert any("asking to retry after 600 s" in r.getMessage() for r in caplog.records)
