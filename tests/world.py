"""One test's private slice of the sandbox (`World`) and the helpers sandbox tests share.

Tests share one sandbox: a world has its own tag, so its secret names, state tables, blobs and
storage accounts are its own.  The `seeded` and `world` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from azure.keyvault.secrets import SecretClient

from core.config import parse_config
from core.push import SyncEngine
from core.runtime import Runtime
from sandbox.client import SandboxClient

ROOT = Path(__file__).resolve().parents[1]


def unique(prefix: str = "t") -> str:
    """A name no other test uses (tests share one sandbox)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class World:
    """One test's private slice of the sandbox: its own secret names, state tables, blob, storage account."""

    def __init__(self, sandbox: SandboxClient) -> None:
        self.sandbox = sandbox
        self.tag = uuid.uuid4().hex[:8]
        self.admin = sandbox.admin_credential()
        self.source = SecretClient(sandbox.vault_url("kv-source"), self.admin)
        self.target = SecretClient(sandbox.vault_url("kv-target"), self.admin)
        self.state_vault = SecretClient(sandbox.vault_url("kv-state"), self.admin)  # the config's state.vault: never a target's

    def secret(self, name: str, value: str) -> str:
        full = f"{name}-{self.tag}"
        self.source.set_secret(full, value)
        return full

    def config(self, body: str, *, state_extra: str = "") -> Any:
        """`body` (YAML below `state:`, e.g. from tests.configs.body_yaml; `TAG` is replaced by the
        world's tag) under the world's own state block (tables prefixed with its tag)."""
        text = textwrap.dedent(f"""
            version: 1
            secretStores:
              azure: {{type: azure.managed_identity}}
            state:
              store: azure
              account: sandboxstore
              vault: kv-state
              table_prefix: t{self.tag}
            {state_extra}
        """) + textwrap.dedent(body).replace("TAG", self.tag)
        return parse_config(text, "test.yaml", environ=os.environ)

    def engine(self, body: str, **kwargs: Any) -> SyncEngine:
        return SyncEngine(self.runtime(body, **kwargs))

    def runtime(self, body: str, **kwargs: Any) -> Runtime:
        """A fresh runtime over `body` (its own connections and state store), as a new process has."""
        return Runtime(self.config(body, **kwargs))


WRITE_WORDS = ("set", "update", "delete", "create", "regenerate", "put", "post", "merge", "patch", "recover")


def is_write(endpoint: str) -> bool:
    """Sandbox counter keys are `service:Operation` (Key Vault, ARM) or `service:METHOD[:comp]` (storage)."""
    service, _, operation = endpoint.partition(":")
    if service == "identity" or operation.lower().startswith(("get", "list")):
        return False
    return any(word in operation.lower() for word in WRITE_WORDS)


def target_writes(sandbox: SandboxClient) -> dict[str, int]:
    """Successful write requests per endpoint, state tables left out."""
    out: dict[str, int] = {}
    for key, n in sandbox.counters()["by_endpoint_status"].items():
        endpoint, _, status = key.rpartition(":")
        operation = endpoint.partition(":")[2].lower()
        reads = operation.startswith(("list", "get"))  # ListAppSettings is a POST, and contains "set"
        if status.startswith("2") and is_write(endpoint) and not reads and not endpoint.startswith("storage:table:"):
            out[endpoint] = out.get(endpoint, 0) + n
    return out


def fresh_account(sandbox: SandboxClient, tag: str) -> str:
    from azure.mgmt.storage import StorageManagementClient
    from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters

    name = f"rot{tag}"
    client = StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    client.storage_accounts.begin_create(sandbox.resource_group, name, StorageAccountCreateParameters(
        sku=Sku(name="Standard_LRS"), kind="StorageV2", location="eastus"), polling_interval=0.2).result()
    for role in ("Storage Account Key Operator Service Role", "Reader"):
        sandbox.grant("system", role, sandbox.resource_id("storage", name))
    return name


def run_cli(process: Any, config: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "core.cli", "--config", str(config), *args], cwd=ROOT,
                            env=process.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def write_config(world: World, body: str, tmp_path: Path) -> Path:
    path = tmp_path / "vaultrelay.yaml"
    loaded = world.config(body)
    path.write_text(json.dumps(loaded.config.model_dump(by_alias=True, exclude_none=True, mode="json")))
    return path


def regenerations(sandbox: SandboxClient, account: str) -> int:
    counters = sandbox.counters()
    assert counters["by_target"].get(f"arm:{account}"), "the account was not touched at all"
    return sum(v for k, v in counters["by_endpoint"].items() if k.startswith("arm:") and "regenerate" in k.lower())
