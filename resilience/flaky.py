"""Scenario 2, "flaky Azure": 5xx, dropped connections and slow answers on every stand-in.

Every sandbox service (Key Vault, ARM, storage, the token endpoints) answers 10% of requests with
a 5xx, drops 2% of connections and answers 1% slowly (5 s in the long form, scaled down in the
short form).  Each round changes some source secrets (without faults), then runs one sync under
faults with a fresh engine (a new process would), then reads every target back with the admin
identity (without faults).

Invariant, per sync and target: a whole-bundle target (blob, app settings, a bundle secret) is
either exactly at the new bundle or exactly as it was; a per-variable Key Vault target holds, for
each variable, either its new or its old value (never anything else): docs/config.md documents
that a per-variable push that dies half-way is completed by the next run, so such a target may be
"partly written" and is counted apart.  After the last round the faults are cleared and syncs run
until one completes: everything must then be at the newest bundle.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

from resilience.common import ScenarioContext, ScenarioResult

NAME = "flaky azure"
SERVICES = ("keyvault", "arm", "storage", "login", "identity")


def _faults(slow_ms: float) -> list[dict[str, Any]]:
    return [{"service": s, "error_rate": 0.10, "error_status": 503, "drop_rate": 0.02, "slow_rate": 0.01, "slow_ms": slow_ms}
            for s in SERVICES]


def run(ctx: ScenarioContext) -> ScenarioResult:
    from azure.keyvault.secrets import SecretClient
    from azure.mgmt.web import WebSiteManagementClient
    from azure.storage.blob import BlobServiceClient

    from core.config import parse_config
    from core.connections import StoreConnections
    from core.push import SyncEngine

    result = ScenarioResult(NAME)
    sandbox = ctx.sandbox
    rng = random.Random(ctx.seed)
    rounds = 12 if ctx.long else 4
    slow_ms = 5000.0 if ctx.long else 400.0
    tag = uuid.uuid4().hex[:8]
    vault = f"flk{tag}"
    state_vault = f"flk{tag}-st"  # state is never kept in a target's vault
    prefix = f"f{tag}"
    site = sandbox.env.get("SANDBOX_WEB_APP", "sandbox-web")
    container = f"flaky-{tag}"

    sandbox.create_resource("vault", vault)
    sandbox.create_resource("vault", state_vault)
    grants = [("Key Vault Secrets Officer", "vault", vault), ("Key Vault Secrets Officer", "vault", state_vault),
              ("Key Vault Secrets User", "vault", "kv-source"),
              ("Storage Table Data Contributor", "storage", ctx.state_account), ("Storage Blob Data Contributor", "storage", "sandboxdata"),
              ("vaultrelay App Settings Writer", "site", site), ("Reader", None, None)]
    for role, kind, name in grants:
        sandbox.assign_role("system", role, sandbox.resource_id(kind, name) if kind and name else None)
    for table in ("pushes", "rotations", "events", "leases", "audit"):
        ctx.state_tables.add(prefix + table)

    admin = sandbox.admin_credential()
    source = SecretClient(sandbox.vault_url("kv-source"), admin)
    target_vault = SecretClient(sandbox.vault_url(vault), admin)
    blobs = BlobServiceClient(sandbox.storage_endpoint("sandboxdata", "blob"), credential=admin)
    blobs.create_container(container)
    web = WebSiteManagementClient(admin, sandbox.subscription_id, base_url=sandbox.arm_endpoint)

    variables = {f"FLK{tag.upper()}_{i}": f"flaky-{tag}-{i}" for i in range(4)}  # variable -> source secret
    latest: dict[str, str] = {}

    def change(count: int) -> None:
        for variable in rng.sample(sorted(variables), count):
            latest[variable] = ctx.secret(f"flaky-value-{uuid.uuid4().hex}")
            source.set_secret(variables[variable], latest[variable])

    change(len(variables))
    env_lines = "\n".join(f"    {v}: {{from: {{store: azure, vault: kv-source, secret: {s}}}}}" for v, s in variables.items())
    text = f"""version: 1
secretStores:
  azure: {{type: azure.managed_identity}}
envs:
  app:
{env_lines}
targets:
  vars: {{type: keyvault, env: app, store: azure, vault: {vault}, prefix: v-}}
  bundle: {{type: keyvault, env: app, store: azure, vault: {vault}, mode: bundle, secret_name: app-bundle}}
  blob: {{type: blob, env: app, store: azure, account: sandboxdata, container: {container}, blob: app.json, format: json}}
  settings: {{type: app_settings, env: app, store: azure, site: {site}, resource_group: {sandbox.resource_group}}}
state:
  store: azure
  account: {ctx.state_account}
  vault: {state_vault}
  table_prefix: {prefix}
  fingerprint_key: {ctx.secret(f"flaky-fingerprint-key-{uuid.uuid4().hex}")}
"""
    loaded = parse_config(text, "flaky.yaml", environ=os.environ)

    def read() -> dict[str, Any]:
        """What each target holds now: variable -> value (None: absent)."""
        state: dict[str, Any] = {}
        state["vars"] = {v: _secret(target_vault, "v-" + v.lower().replace("_", "-")) for v in variables}
        bundle = _secret(target_vault, "app-bundle")
        state["bundle"] = json.loads(bundle) if bundle else None
        try:
            state["blob"] = json.loads(blobs.get_blob_client(container, "app.json").download_blob().readall())
        except Exception as exc:
            if "BlobNotFound" not in str(exc):
                raise
            state["blob"] = None
        settings = web.web_apps.list_application_settings(sandbox.resource_group, site).properties or {}
        state["settings"] = {v: settings.get(v) for v in variables}
        return state

    def sync_once() -> Any:
        engine = SyncEngine(StoreConnections(loaded))
        try:
            return engine.sync()
        finally:
            engine.broker.close()

    syncs = failed_syncs = partial = violations_before = 0
    documented_partial = 0
    try:
        first = sync_once()
        result.check(first.ok, f"the first sync (no faults) did not complete: {[(t.target, t.outcome) for t in first.targets]}")
        for _ in range(rounds):
            before = read()
            previous = dict(latest)
            change(rng.randint(1, len(variables)))
            sandbox.set_faults(_faults(slow_ms), seed=rng.randrange(1 << 30))
            try:
                report = sync_once()
            except Exception as exc:  # a sync that raises is a failed sync; the invariant is checked all the same
                ctx.observe(str(exc))
                report = None
            finally:
                sandbox.clear_faults()
            syncs += 1
            if report is None or not report.ok:
                failed_syncs += 1
            if report is not None:
                ctx.observe(json.dumps([t.as_dict() for t in report.targets], default=str))
            after = read()
            violations_before = len(result.violations)
            for name in ("bundle", "blob"):
                ok = after[name] in (latest, before[name])
                result.check(ok, f"target {name} is neither the new bundle nor what it held before")
            settings_new = after["settings"] == latest
            settings_old = after["settings"] == before["settings"]
            result.check(settings_new or settings_old, "target settings is neither the new bundle nor what it held before")
            mixed = False
            for v in variables:
                value = after["vars"][v]
                result.check(value in (latest[v], previous[v], before["vars"][v]), f"target vars holds a value for {v} that was never pushed")
            if after["vars"] != latest and after["vars"] != before["vars"]:
                mixed = True
            documented_partial += int(mixed)
            partial += len(result.violations) - violations_before
        # Converge: no faults, sync until one completes.
        runs_to_converge = 0
        for _ in range(3):
            runs_to_converge += 1
            if sync_once().ok:
                break
        final = read()
        converged = all(final[name] == latest for name in ("vars", "bundle", "blob", "settings"))
        status = SyncEngine(StoreConnections(loaded)).status()
    finally:
        sandbox.clear_faults()

    result.figures.update({
        "syncs under faults": syncs,
        "syncs failed": failed_syncs,
        "targets left partly written (whole-bundle targets)": partial,
        "per-variable target partly written (documented, completed next run)": documented_partial,
        "runs to converge": runs_to_converge,
        "slow answer ms": slow_ms,
    })
    result.check(converged, "after the faults were cleared the targets did not converge to the newest bundle")
    unclean = [row["target"] for row in status if row.get("outcome") != "ok" or row.get("last_error")]
    result.check(not unclean, f"status is not clean after converging: {unclean}")
    result.check(runs_to_converge == 1, f"{runs_to_converge} runs needed to converge without faults")
    return result


def _secret(client: Any, name: str) -> str | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return client.get_secret(name).value  # type: ignore[no-any-return]
    except ResourceNotFoundError:
        return None
