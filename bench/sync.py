"""Benchmark: `vaultrelay sync` of 1,000 envs x 20 references, first sync and unchanged re-sync.

Run with `.venv/bin/python bench/sync.py` (or `make bench-sync`; `--envs 50 --refs 20` for a
quick run).  This is a benchmark, not a test: it starts its own sandbox (Azurite for Tables and
Blob), seeds it, measures, prints a table and exits 1 if a target is missed.

The mix (per env, for the default 20 references; other sizes keep the proportions):
  16 Key Vault secrets drawn at random (seeded) from a pool of 300 unique secrets over 2 source
     vaults (200 in kv-source, 100 in kv-shared): envs share secrets, as services of one estate do.
   3 literals (APP_ENV, REGION, LOG_LEVEL), different per env.
   1 storage account key (key1 of sandboxstore or key2 of sandboxdata, alternating).
Targets: one per env, alternating kinds: even envs -> a Key Vault target (`per_variable`, one
secret per variable, prefix per env, all in kv-target), odd envs -> a blob target (dotenv, one
blob per env in sandboxdata/bench-bundles).  Both kinds, because they are the two shapes of push:
per-variable (20 writes per env, ownership and drift per secret, a vault listing to snapshot)
and whole-bundle (1 conditional write per env, drift by ETag); one target per env keeps "writes
per env" readable.  State: the tables in sandboxstore, minted values and the fingerprint key in
kv-target.  Key Vault's service limit (4,000 requests per 10 s per vault) is left on, as in Azure.

Each sync runs in a fresh process (what a timer tick of the Functions app is): the first sync
against an empty target, then an unchanged re-sync.  Requests are the sandbox's own counters,
reset before each run; peak RSS is the syncing process's (getrusage), with its RSS after imports
and config load for reference.

Targets (printed PASS/FAIL): the first sync pushes every env; the re-sync makes zero target
writes and at most one state write per env (vaultrelay's design: zero), and reads no target
values; the re-sync's wall time is reported as a ratio of the first sync's.

Measured (1,000 x 20, 2 CPUs, load average ~1; two runs):
  first sync        70.8-82.5 s, 10,001 KV SET (10,000 pushed + the fingerprint key; a target writes
                    8 secrets at once), 305 KV GET (300 unique secrets + state), 311-378 KV list
                    pages, 501 blob writes (500 bundles + the container), 2,001 Table reads, 4,005
                    Table writes (lease, record, audit, lease release per env), 4 ARM, 3 token
                    requests, no error answers, peak RSS 217-220 MiB (178 MiB after loading the
                    config).  The client is CPU-bound in the SDK pipelines (about 45 ms of CPU per
                    env of 20 writes); the sandbox and Azurite use the other CPU.
  unchanged re-sync  12.6-14.5 s, 0 target writes, 0 state writes (engine count; the sandbox saw the
                    5 create-table calls answered 409), 305 KV GET, 402 KV list pages, 1 Table read
                    (one scan), 500 blob HEADs, 4 ARM, 3 tokens, peak RSS 212 MiB
  re-sync / first = 0.18.  Config load (not in the wall times) 3.2-3.8 s.
  Before the sandbox's vault listing built only its page (it built all 10,000 items per page):
  first sync 101-105 s, re-sync 45-46 s; before the concurrent Key Vault writes: 266.7 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

STORE = "azure"
SOURCE_VAULTS = {"kv-source": 2, "kv-shared": 1}  # share of the secret pool
TARGET_VAULT = "kv-target"
STATE_VAULT = "kv-state"  # never a target's vault (validate refuses that)
BLOB_ACCOUNT = "sandboxdata"
CONTAINER = "bench-bundles"
STATE_ACCOUNT = "sandboxstore"
KEY_REFS = [("sandboxstore", "key1"), ("sandboxdata", "key2")]
LITERALS = ("APP_ENV", "REGION", "LOG_LEVEL")


# ================================================================================================
# The estate: secrets, envs, targets
# ================================================================================================
def build_spec(envs: int, refs: int, unique: int, seed: int = 11) -> dict[str, Any]:
    """The secret pool (names and values) and the config text."""
    rng = random.Random(seed)
    total_share = sum(SOURCE_VAULTS.values())
    pool: list[dict[str, str]] = []
    for vault, share in SOURCE_VAULTS.items():
        for i in range(unique * share // total_share):
            pool.append({"vault": vault, "secret": f"bench-{vault.split('-')[1]}-{i:04d}",
                         "value": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(32))})
    n_literals = max(1, refs * 3 // 20)
    n_keys = 1 if refs >= 5 else 0
    n_secrets = refs - n_literals - n_keys
    if n_secrets > len(pool):
        raise SystemExit(f"--refs {refs} needs at least {n_secrets} unique secrets (--unique)")
    lines = [
        "# Generated by bench/sync.py.",
        "version: 1",
        "secretStores:",
        f"  {STORE}: {{type: azure.managed_identity}}",
        "state:",
        f"  store: {STORE}",
        f"  account: {STATE_ACCOUNT}",
        f"  vault: {STATE_VAULT}",
        "  table_prefix: bench",
        "envs:",
    ]
    kinds: Counter[str] = Counter()
    for e in range(envs):
        lines.append(f"  env{e:04d}:")
        for i, name in enumerate(LITERALS[:n_literals]):
            lines.append(f"    {name}: literal-{e}-{i}")
        for j in range(n_literals - len(LITERALS)):
            lines.append(f"    EXTRA_{j}: extra-{e}-{j}")
        for account, key in KEY_REFS[e % len(KEY_REFS):][:n_keys]:
            lines.append(f"    STORAGE_KEY: {{from: {{store: {STORE}, resource_type: storage, account: {account}, key: {key}}}}}")
        for k, ref in enumerate(rng.sample(pool, n_secrets)):
            lines.append(f"    SECRET_{k:02d}: {{from: {{store: {STORE}, vault: {ref['vault']}, secret: {ref['secret']}}}}}")
    lines.append("targets:")
    for e in range(envs):
        if e % 2 == 0:
            kinds["keyvault"] += 1
            lines.append(f"  t{e:04d}: {{type: keyvault, env: env{e:04d}, store: {STORE}, vault: {TARGET_VAULT}, prefix: e{e:04d}-}}")
        else:
            kinds["blob"] += 1
            lines.append(f"  t{e:04d}: {{type: blob, env: env{e:04d}, store: {STORE}, account: {BLOB_ACCOUNT}, "
                         f"container: {CONTAINER}, blob: env{e:04d}.env}}")
    return {"pool": pool, "config_text": "\n".join(lines) + "\n", "envs": envs, "refs": refs, "kinds": dict(kinds),
            "mix": {"secrets": n_secrets, "literals": n_literals, "storage_keys": n_keys}, "unique": len(pool)}


def seed(sandbox: Any, spec: dict[str, Any]) -> None:
    """Source secrets (admin identity) and the system identity's roles."""
    from azure.keyvault.secrets import SecretClient

    from demo.seed import EXAMPLE_ROLES

    admin = sandbox.admin_credential()
    clients = {vault: SecretClient(sandbox.vault_url(vault), admin) for vault in SOURCE_VAULTS}
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda r: clients[r["vault"]].set_secret(r["secret"], r["value"]), spec["pool"]))
    for identity, role, kind, name in EXAMPLE_ROLES:
        if identity == "system":
            sandbox.grant(identity, role, sandbox.resource_id(kind, name) if kind else None)
    sandbox.grant("system", "Key Vault Secrets User", sandbox.resource_id("vault", "kv-shared"))
    sandbox.grant("system", "Storage Account Key Operator Service Role", sandbox.resource_id("storage", "sandboxdata"))


# ================================================================================================
# The child: one sync in a fresh process
# ================================================================================================
def child_main(config_path: Path) -> None:
    import logging

    logging.getLogger("azure").setLevel(logging.ERROR)
    from core.config import load_config
    from core.connections import StoreConnections
    from core.push import SyncEngine
    from sandbox.client import SandboxClient

    sandbox = SandboxClient(dict(os.environ))
    began = time.perf_counter()
    loaded = load_config(config_path)
    load_s = time.perf_counter() - began
    rss_loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sandbox.reset_counters()
    began = time.perf_counter()
    engine = SyncEngine(StoreConnections(loaded))
    report = engine.sync()
    seconds = time.perf_counter() - began
    counters = sandbox.counters()
    outcomes = Counter(t.outcome for t in report.targets)
    errors = [f"{t.env} -> {t.target}: {t.error}" for t in report.targets if t.error][:5]
    errors += [f"{env}: {'; '.join(f)}" for env, f in list(report.failures.items())[:5]]
    print(json.dumps({
        "seconds": seconds, "config_load_s": load_s, "counters": counters, "ok": report.ok,
        "target_writes": report.target_writes, "state_writes": engine.state.writes, "outcomes": dict(outcomes),
        "errors": errors, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_loaded_kb": rss_loaded_kb,
    }))


def run_child(sbx: Any, config_path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(config_path)],
                          cwd=PROJECT_ROOT, env=sbx.subprocess_env(), capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"sync child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ================================================================================================
# Counting
# ================================================================================================
def kinds(counters: dict[str, Any]) -> dict[str, int]:
    """Requests by kind, from the sandbox's `service:operation` counters."""
    by = counters.get("by_endpoint", {})

    def total(match: Any) -> int:
        return sum(n for k, n in by.items() if match(k))

    table_writes = ("storage:table:POST", "storage:table:PUT", "storage:table:DELETE", "storage:table:MERGE", "storage:table:PATCH")
    return {
        "kv_get": total(lambda k: k == "keyvault:GetSecret"),
        "kv_set": total(lambda k: k == "keyvault:SetSecret"),
        "kv_list": total(lambda k: k in ("keyvault:GetSecrets", "keyvault:GetSecretVersions")),
        "kv_other": total(lambda k: k.startswith("keyvault:") and k not in ("keyvault:GetSecret", "keyvault:SetSecret",
                                                                             "keyvault:GetSecrets", "keyvault:GetSecretVersions")),
        "table_read": total(lambda k: k.startswith("storage:table:GET")),
        # Successful writes only: the 5 create-table calls a fresh process makes are answered 409.
        "table_write": sum(n for k, n in counters.get("by_endpoint_status", {}).items()
                           if k.startswith(table_writes) and k.rsplit(":", 1)[1].startswith("2")),
        "blob_write": total(lambda k: k == "storage:blob:PUT"),
        "blob_read": total(lambda k: k.startswith(("storage:blob:GET", "storage:blob:HEAD"))),
        "arm": total(lambda k: k.startswith("arm:")),
        "tokens": total(lambda k: k.startswith("identity:")),
        "total": counters.get("total", 0),
        "throttled": counters.get("throttled", 0),
        "errors": sum(n for s, n in counters.get("by_status", {}).items() if not s.startswith(("2", "3", "401", "404"))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=1000, help="envs, each with one target")
    parser.add_argument("--refs", type=int, default=20, help="references (variables) per env")
    parser.add_argument("--unique", type=int, default=300, help="unique Key Vault secrets in the pool (2 vaults)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return 0

    from rich.console import Console
    from rich.table import Table

    from sandbox.client import SandboxProcess

    console = Console(width=max(150, Console().width))
    spec = build_spec(args.envs, args.refs, args.unique)
    console.print(f"[bold]vaultrelay sync benchmark[/]: {args.envs} envs x {args.refs} references "
                  f"({spec['mix']['secrets']} Key Vault secrets from a pool of {spec['unique']} over 2 vaults, "
                  f"{spec['mix']['literals']} literals, {spec['mix']['storage_keys']} storage key), "
                  f"targets: {spec['kinds'].get('keyvault', 0)} keyvault (per variable), {spec['kinds'].get('blob', 0)} blob")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    console.print(f"host: {os.cpu_count()} CPUs, load average {' '.join(load)} at start (the sync and the sandbox share them)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vaultrelay-bench-") as tmp, SandboxProcess() as sbx:
        sbx.apply_to_current_process()
        seed(sbx.client, spec)
        config_path = Path(tmp) / "vaultrelay.yaml"
        config_path.write_text(spec["config_text"])
        console.print(f"sandbox ready and seeded in {time.monotonic() - started:.1f}s; first sync...")
        first = run_child(sbx, config_path)
        console.print(f"first sync {first['seconds']:.1f}s; unchanged re-sync...")
        resync = run_child(sbx, config_path)

    runs = {"first sync": first, "unchanged re-sync": resync}
    table = Table(title=f"sync of {args.envs} envs x {args.refs} references (fresh process each; counts from the sandbox)")
    columns = [("wall s", None), ("KV GET", "kv_get"), ("KV SET", "kv_set"), ("KV list", "kv_list"), ("Table reads", "table_read"),
               ("Table writes", "table_write"), ("blob writes", "blob_write"), ("blob reads", "blob_read"), ("ARM", "arm"),
               ("tokens", "tokens"), ("total", "total"), ("429", "throttled"), ("peak RSS", None), ("outcomes", None)]
    table.add_column("run")
    for name, _ in columns:
        table.add_column(name, justify="right")
    for label, run in runs.items():
        c = kinds(run["counters"])
        table.add_row(label, f"{run['seconds']:.1f}", *[str(c[key]) for _, key in columns[1:-2] if key],
                      f"{run['peak_rss_kb'] / 1024:.0f} MiB",
                      ", ".join(f"{k} {v}" for k, v in sorted(run["outcomes"].items())))
    console.print(table)
    for label, run in runs.items():
        console.print(f"{label}: config load {run['config_load_s']:.1f}s (not in wall time), RSS after load "
                      f"{run['rss_loaded_kb'] / 1024:.0f} MiB, target writes {run['target_writes']}, state writes {run['state_writes']}"
                      + (f", {kinds(run['counters'])['errors']} error answers" if kinds(run["counters"])["errors"] else ""))
        for error in run["errors"]:
            console.print(f"  [red]error[/]: {error}")

    c = kinds(resync["counters"])
    expected_first = spec["kinds"].get("keyvault", 0) * args.refs + spec["kinds"].get("blob", 0)
    ratio = resync["seconds"] / first["seconds"] if first["seconds"] else float("nan")
    targets = [
        (f"first sync pushed every env ({first['outcomes'].get('pushed', 0)} of {args.envs}; {first['target_writes']} target "
         f"writes, expected {expected_first})", first["ok"] and first["outcomes"].get("pushed", 0) == args.envs
         and first["target_writes"] == expected_first),
        (f"re-sync: zero target writes (report {resync['target_writes']}; sandbox: {c['kv_set']} KV SET, {c['blob_write']} blob writes, "
         f"{c['arm']} ARM)", resync["target_writes"] == 0 and c["kv_set"] == 0 and c["blob_write"] == 0),
        (f"re-sync: at most one state write per env ({c['table_write']} Table writes for {args.envs} envs, "
         f"{c['table_write'] / args.envs:.3f} per env)", c["table_write"] <= args.envs),
        (f"re-sync: every env unchanged ({resync['outcomes'].get('unchanged', 0)} of {args.envs})",
         resync["ok"] and resync["outcomes"].get("unchanged", 0) == args.envs),
    ]
    console.print(f"\nre-sync / first sync wall time: {ratio:.2f}  ({resync['seconds']:.1f}s / {first['seconds']:.1f}s)")
    console.print("[bold]Targets[/]:")
    for text, ok in targets:
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'}  {text}")
    console.print(f"total benchmark time {time.monotonic() - started:.1f}s")
    return 0 if all(ok for _, ok in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
