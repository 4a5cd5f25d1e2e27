"""A private slice of the sandbox for the instances, crash and storage-outage scenarios.

`World` gives a scenario its own secret names, state tables (a table prefix), storage accounts
to rotate, a config file in the scenario's work directory and CLI child processes whose output
goes to `.log` files there (so the leak scanner reads it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from resilience.common import ScenarioContext

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_ACCOUNT = "sandboxstore"
STATE_VAULT = "kv-state"
TARGET_VAULT = "kv-target"

# What the system identity (vaultrelay's) needs for these scenarios: read the source vault,
# write the target vault, the state vault (its own: never a target's), bundle blobs and the state tables.
_ROLES: list[tuple[str, str | None, str | None]] = [
    ("Key Vault Secrets User", "vault", "kv-source"),
    ("Key Vault Secrets Officer", "vault", TARGET_VAULT),
    ("Key Vault Secrets Officer", "vault", STATE_VAULT),
    ("Storage Blob Data Contributor", "storage", "sandboxdata"),
    ("Storage Table Data Contributor", "storage", "sandboxstore"),
    ("Reader", None, None),
]


class World:
    """One scenario run's names, config and helpers (values registered with the context)."""

    def __init__(self, ctx: ScenarioContext, label: str) -> None:
        from azure.keyvault.secrets import SecretClient

        self.ctx = ctx
        self.sandbox = ctx.sandbox
        self.tag = f"{label}{uuid.uuid4().hex[:6]}"
        self.prefix = f"t{self.tag}"
        self.admin = ctx.sandbox.admin_credential()
        self.source = SecretClient(ctx.sandbox.vault_url("kv-source"), self.admin)
        self.target = SecretClient(ctx.sandbox.vault_url(TARGET_VAULT), self.admin)
        ctx.state_account = STATE_ACCOUNT
        ctx.state_tables |= {self.prefix + t for t in ("pushes", "rotations", "events", "leases", "audit")}
        for role, kind, name in _ROLES:
            ctx.sandbox.assign_role("system", role, ctx.sandbox.resource_id(kind, name) if kind and name else None)
        self.config_path = ctx.workdir / "vaultrelay.yaml"

    # ---- sources ------------------------------------------------------------------------
    def set_source(self, name: str, value: str) -> None:
        self.source.set_secret(name, self.ctx.secret(value))

    def source_value(self, name: str) -> str:
        return str(self.source.get_secret(name).value)

    def target_value(self, name: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return str(self.target.get_secret(name).value)
        except ResourceNotFoundError:
            return None

    def blob_text(self, container: str, blob: str, account: str = "sandboxdata") -> str | None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import ContainerClient

        client = ContainerClient(self.sandbox.storage_endpoint(account), container, credential=self.admin)
        try:
            return client.get_blob_client(blob).download_blob().readall().decode()
        except ResourceNotFoundError:
            return None

    def blob_env(self, container: str, blob: str, account: str = "sandboxdata") -> dict[str, str]:
        """A dotenv blob's variables as python-dotenv reads them (empty when there is no blob)."""
        import io

        from dotenv import dotenv_values

        text = self.blob_text(container, blob, account) or ""
        return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}

    # ---- config -------------------------------------------------------------------------
    def write_config(self, body: str) -> Path:
        """The scenario's config (`body` holds envs and targets; TAG is replaced by the tag)."""
        text = textwrap.dedent(f"""\
            version: 1
            secretStores:
              azure: {{type: azure.managed_identity}}
            state:
              store: azure
              account: {STATE_ACCOUNT}
              vault: {STATE_VAULT}
              table_prefix: {self.prefix}
            """) + textwrap.dedent(body).replace("TAG", self.tag)
        self.config_path.write_text(text)
        return self.config_path

    def engine(self, **broker_kwargs: Any) -> Any:
        """A SyncEngine over the config in this process (a fresh broker each time)."""
        from core.config import load_config
        from core.connections import StoreConnections
        from core.push import SyncEngine

        return SyncEngine(StoreConnections(load_config(str(self.config_path)), **broker_kwargs))

    def runtime(self, **broker_kwargs: Any) -> Any:
        """A Runtime over the config in this process (fresh connections each time)."""
        from core.config import load_config
        from core.connections import StoreConnections
        from core.runtime import Runtime

        return Runtime(connections=StoreConnections(load_config(str(self.config_path)), **broker_kwargs))

    # ---- processes ----------------------------------------------------------------------
    def cli(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        """`python -m core.cli --config <config> <args>` with output in `<log_name>.out.log` / `.err.log`."""
        out = (self.ctx.workdir / f"{log_name}.out.log").open("ab")
        err = (self.ctx.workdir / f"{log_name}.err.log").open("ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "core.cli", "--config", str(self.config_path), *args], cwd=PROJECT_ROOT,
                                    env=self.ctx.process.subprocess_env(), stdout=out, stderr=err)
        finally:
            out.close()
            err.close()

    def python(self, log_name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        """`python -m <module> <args>` with the sandbox's environment; output to `.log` files."""
        out = (self.ctx.workdir / f"{log_name}.out.log").open("ab")
        err = (self.ctx.workdir / f"{log_name}.err.log").open("ab")
        env = self.ctx.process.subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH", "")]))
        try:
            return subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=err)
        finally:
            out.close()
            err.close()

    # ---- storage accounts and rotations -------------------------------------------------
    def fresh_account(self, suffix: str) -> str:
        """A new storage account vaultrelay may rotate (the sandbox restarts Azurite to add it)."""
        from azure.mgmt.storage import StorageManagementClient
        from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters

        name = f"r{self.tag}{suffix}".lower()[:24]
        client = StorageManagementClient(self.admin, self.sandbox.subscription_id, base_url=self.sandbox.arm_endpoint)
        client.storage_accounts.begin_create(self.sandbox.resource_group, name, StorageAccountCreateParameters(
            sku=Sku(name="Standard_LRS"), kind="StorageV2", location="eastus"), polling_interval=0.2).result()
        for role in ("Storage Account Key Operator Service Role", "Reader"):
            self.sandbox.assign_role("system", role, self.sandbox.resource_id("storage", name))
        return name

    def fresh_accounts(self, count: int) -> list[str]:
        """`count` new accounts created at once (the sandbox restarts Azurite once or twice, not
        once per account)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(self.fresh_account, [f"a{j}" for j in range(count)]))

    def account_keys(self, account: str) -> dict[str, str]:
        from azure.mgmt.storage import StorageManagementClient

        client = StorageManagementClient(self.admin, self.sandbox.subscription_id, base_url=self.sandbox.arm_endpoint)
        listed = client.storage_accounts.list_keys(self.sandbox.resource_group, account).keys_property or []
        keys = {str(k.key_name).lower(): str(k.value) for k in listed}
        for value in keys.values():
            self.ctx.secret(value)
        return keys

    def tables(self) -> Any:
        from azure.data.tables import TableServiceClient

        return TableServiceClient(self.sandbox.storage_endpoint(STATE_ACCOUNT, "table"), credential=self.admin)

    def rows(self, table: str, partition: str | None = None) -> list[dict[str, Any]]:
        client = self.tables().get_table_client(self.prefix + table)
        entities = client.list_entities() if partition is None else client.query_entities("PartitionKey eq @pk", parameters={"pk": partition})
        return [dict(e) for e in entities]

    def rotation_row(self, account: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return dict(self.tables().get_table_client(self.prefix + "rotations").get_entity("storage", account.lower()))
        except ResourceNotFoundError:
            return None

    def make_due(self, account: str, *, every: timedelta = timedelta(hours=1)) -> None:
        """Move the account's last rotation back past its interval, as if time had passed."""
        from azure.data.tables import UpdateMode

        row = self.rotation_row(account)
        assert row is not None and not row.get("phase"), f"rotation of {account} is not adopted or still running"
        past = datetime.now(UTC) - 2 * every
        row.update({"rotated_at": past.isoformat(), "next_due": (past + every).isoformat()})
        self.tables().get_table_client(self.prefix + "rotations").update_entity(row, mode=UpdateMode.REPLACE)


def app_config(secrets: list[str], *, blob: str, rotated_accounts: Sequence[str] = ()) -> str:
    """The scenarios' config body: env `app` of Key Vault secrets `V<i>` (and `K<j>`, the active key
    of each rotated account, rotated hourly), pushed to a Key Vault target and to blob `blob`."""
    lines = [f"    V{i}: {{from: {{store: azure, vault: kv-source, secret: {name}}}}}" for i, name in enumerate(secrets)]
    lines += [f"    K{j}: {{from: {{store: azure, resource_type: storage, account: {a}, key: active, rotate: {{every: 1h}}}}}}"
              for j, a in enumerate(rotated_accounts)]
    env = "\n".join(lines)
    return f"""\
envs:
  app:
{env}
targets:
  vault: {{type: keyvault, env: app, store: azure, vault: kv-target, prefix: vr-TAG-}}
  blob: {{type: blob, env: app, store: azure, account: sandboxdata, container: bundles, blob: "{blob}"}}
"""


def regenerations(counters: dict[str, Any]) -> int:
    """regenerateKey calls ARM carried out: answered 2xx (from the sandbox's counters).

    A call whose client was killed before its body arrived reaches the sandbox's counters too (as
    an error), but no key was regenerated, as in Azure: it is not counted.
    """
    return sum(v for k, v in counters["by_endpoint_status"].items()
               if k.startswith("arm:") and "regenerate" in k.lower() and k.rpartition(":")[2].startswith("2"))


def table_statuses(counters: dict[str, Any], status: int) -> int:
    """Table Storage answers with `status` (412: an ETag condition lost; 409: a create lost)."""
    return sum(v for k, v in counters["by_endpoint_status"].items() if k.startswith("storage:table") and k.endswith(f":{status}"))
