"""`vaultrelay sync --queue` and `vaultrelay worker [--processes N]` through the console script,
against the sandbox's queue service (Azurite)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import yaml
from azure.keyvault.secrets import SecretClient

from core.app.worker import WARM_MODULES
from sandbox.client import SandboxClient
from tests.cli.conftest import EXAMPLE, offline_env, unique, vaultrelay


def small_config(path: Path, sandbox: SandboxClient, tag: str, envs: int) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    source = SecretClient(sandbox.vault_url("kv-source"), sandbox.admin_credential())
    config["envs"], config["targets"] = {}, {}
    for i in range(envs):
        env = f"w{i}"
        source.set_secret(f"{tag}-{env}", f"worker-value-{tag}-{i}")
        config["envs"][env] = {"SECRET": {"from": {"store": "azure", "vault": "kv-source", "secret": f"{tag}-{env}"}}}
        config["targets"][f"t{i}"] = {"type": "keyvault", "env": env, "store": "azure", "vault": "kv-target", "prefix": f"{tag}-{env}-"}
    config["state"]["table_prefix"] = tag
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_sync_queue_then_two_worker_processes_push_every_env_once(tmp_path: Path, seeded: SandboxClient,
                                                                   sandbox_env: dict[str, str]) -> None:
    tag = unique("wk")
    config = small_config(tmp_path / "vaultrelay.yaml", seeded, tag, 6)
    env = {**sandbox_env, "VAULTRELAY_CONFIG": str(config), "VAULTRELAY_WORK_QUEUE": tag, "VAULTRELAY_WORK_BATCH": "2"}
    enqueued = vaultrelay("sync", "--queue", "-o", "json", env=env)
    assert enqueued.code == 0, enqueued.err
    document = json.loads(enqueued.out)
    assert document["targets"] == [] and sorted(e for i in document["enqueued"] for e in i["envs"]) == [f"w{i}" for i in range(6)]
    worked = vaultrelay("worker", "--processes", "2", "--drain", "-o", "json", env=env)
    assert worked.code == 0, worked.err
    stats = json.loads(worked.out)
    assert stats["processes"] == 2 and stats["envs"] == 6 and stats["target_writes"] == 6
    assert sorted(stats["pushed"]) == sorted(f"w{i}->t{i}" for i in range(6))  # each env pushed once
    target = SecretClient(seeded.vault_url("kv-target"), seeded.admin_credential())
    assert target.get_secret(f"{tag}-w3-SECRET").value == f"worker-value-{tag}-3"
    # The same items again (a duplicate delivery of everything): no write at all.
    assert vaultrelay("sync", "--queue", env=env).code == 0
    again = json.loads(vaultrelay("worker", "--drain", "-o", "json", env=env).out)
    assert again["envs"] == 6 and again["target_writes"] == 0 and again["state_writes"] == 0


def test_plain_sync_still_runs_in_one_process(tmp_path: Path, seeded: SandboxClient, sandbox_env: dict[str, str]) -> None:
    tag = unique("wk")
    config = small_config(tmp_path / "vaultrelay.yaml", seeded, tag, 2)
    result = vaultrelay("sync", "-o", "json", env={**sandbox_env, "VAULTRELAY_CONFIG": str(config)})
    assert result.code == 0 and json.loads(result.out)["target_writes"] == 2


def test_worker_without_a_queue_setting_is_a_usage_error(tmp_path: Path, seeded: SandboxClient, sandbox_env: dict[str, str]) -> None:
    env = {k: v for k, v in sandbox_env.items() if not k.startswith("AzureWebJobsStorage")}
    result = vaultrelay("worker", "--drain", env=env)
    assert result.code == 2 and "AzureWebJobsStorage__queueServiceUri" in result.err and "Traceback" not in result.err
    assert vaultrelay("worker", "--processes", "0", env=offline_env()).code == 2


def test_every_module_warmed_before_the_fork_exists() -> None:
    """A renamed module left in WARM_MODULES would only be logged at DEBUG and not preloaded."""
    for module in WARM_MODULES:
        importlib.import_module(module)
