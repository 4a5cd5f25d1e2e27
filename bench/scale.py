"""Benchmark: fan-out through the work queue with 1, 2, 4 and 8 `vaultrelay worker` processes.

Run with `.venv/bin/python bench/scale.py` (5,000 envs x 20 references; `--envs 200
--event-envs 200` for a quick run).  This is a benchmark, not a test: it starts its own sandbox,
adds 20 ms to every Azure request (so the work is latency-bound, as against Azure), seeds the
estate of bench/sync.py (16 Key Vault secrets from a shared pool, 3 literals and a storage key per
env; Key Vault and blob targets alternating) and, for each worker count, in its own namespace
(state tables, target names):

1. `vaultrelay sync --queue` enqueues every env (work items of up to `VAULTRELAY_WORK_BATCH` envs,
   fewer for a small fleet: about 16 items), `vaultrelay worker --processes N --drain` syncs them
   (first sync);
2. the same again with nothing changed (unchanged re-sync).

Printed per run: items, wall time (launching the workers to their exit), its timeline (start-up:
launch to the first item received, i.e. imports, config, credentials, forks; work: first item to
the last item done; tail: last item done to exit, i.e. drain detection and process exit), target
writes, 429s, requests per env, CPU seconds per env (the worker processes, the sandbox and
Azurite, all measured in this run), and speedup over one process; then how much CPU each part
used (the sandbox's stand-ins are one Python process: at 1.0 of a CPU they would be the limit).  Two ceilings bound any speedup on this machine: the CPU
ceiling (the CPUs divided by the CPU per env, against one worker's wall time per env) and Key
Vault's budget (4,000 requests per 10 s per vault, against the target vault's requests per
second with one worker).  Then a Key Vault event about a secret every env of a second estate uses
(`--event-envs`, default 2,000): the time from the event to every target holding the new value,
with 1 and 4 workers, until the last item is done (every target then holds it), planning included.

Targets (PASS/FAIL): speedup >= 0.8 x min(workers, CPU ceiling) up to 4 workers; zero target and
state writes on every unchanged re-sync; no env pushed twice; every env pushed by the first sync.

Measured (`--envs 200 --workers 1,2,4,8 --event-envs 2000`, 2 CPUs, load average 0.2 at start,
other jobs stopped; 20 items of up to 10 envs):
  first sync    1 worker 28.3 s, 2: 16.7 s (1.70x), 4: 12.1 s (2.35x), 8: 15.1 s (1.88x); 2,100
                target writes and 800 state writes at every count, every env pushed once, no 429;
                CPU per env 0.095-0.119 s (1 worker: 0.065 client + 0.041 sandbox and Azurite);
                start-up 1.0-1.6 s, drain tail 0.2-0.5 s
  re-sync       14.7 / 8.8 / 7.1 / 7.5 s; zero target, state and Table writes at every count
  ceilings      CPU 2.68x (2 / 0.106 CPU s per env x 0.142 s per env), Key Vault budget 2.8x;
                with 4 workers the machine is at 1.64 of its 2 CPUs (workers 1.11, the sandbox's
                stand-ins 0.35 of one CPU: not the limit, Azurite 0.17)
  targets       2 workers 1.70 >= 1.60, 4 workers 2.35 >= 2.14: PASS; write targets PASS
  event         2,000 envs: 172.5 s with 1 worker, 51.0 s with 4 (3.38x), planning and enqueueing
                200 items 6.3-6.5 s of it; every env re-pushed once
Larger first syncs (4 workers, shared machine, load average 2-10): 1,000 envs 72.1 s (re-sync
38.0 s), 2,500 envs 238.0 s (0.095 s per env; start-up 11 s loading a 4 MB config; re-sync
118.1 s), zero writes on each re-sync, no 429.  5,000 envs x 20 references is an 8.1 MB config,
over vaultrelay's 4 MiB config limit: 2,500 is the largest that loads; at the rate measured,
5,000 envs would take about 8 minutes on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.sync import build_spec, kinds, seed  # noqa: E402

WORKER_COUNTS = (1, 2, 4, 8)
LATENCY_MS = 20
KEYVAULT_BUDGET_PER_S = 4000 / 10
BATCH = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process `root` and its live descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def own_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` alone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli(sbx: Any, env: dict[str, str], *args: str, timeout: float = 7200) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "core.cli", *args, "-o", "json"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    try:
        document: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"vaultrelay {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}") from None
    if document.get("problems") or document.get("error"):
        raise RuntimeError(f"vaultrelay {' '.join(args)}: {document.get('problems') or document.get('error')}")
    return document


def namespaced(config_text: str, label: str) -> str:
    """The estate's config with its own state tables and target names."""
    return (config_text.replace("table_prefix: bench", f"table_prefix: {label}").replace("prefix: e", f"prefix: {label}e")
            .replace("blob: env", f"blob: {label}env"))


def run_phase(sbx: Any, config: Path, label: str, workers: int, sandbox_pid: int) -> dict[str, Any]:
    """Enqueue every env, then drain the queue with `workers` processes; measured."""
    env = {**sbx.subprocess_env(), "VAULTRELAY_CONFIG": str(config), "VAULTRELAY_WORK_QUEUE": f"{label}-{uuid.uuid4().hex[:6]}",
           "VAULTRELAY_WORK_BATCH": str(BATCH)}
    enqueued = cli(sbx, env, "sync", "--queue")
    sbx.client.reset_counters()
    cpu_clients, cpu_sandbox, cpu_stand_ins = children_cpu(), tree_cpu(sandbox_pid), own_cpu(sandbox_pid)
    began, launched = time.monotonic(), time.time()
    stats = cli(sbx, env, "worker", "--processes", str(workers), "--drain", "--visibility-timeout", "300")
    seconds = time.monotonic() - began
    cpu_clients, cpu_sandbox = children_cpu() - cpu_clients, tree_cpu(sandbox_pid) - cpu_sandbox
    cpu_stand_ins = own_cpu(sandbox_pid) - cpu_stand_ins
    return {"seconds": seconds, "stats": stats, "counters": sbx.client.counters(), "cpu_clients": cpu_clients, "cpu_sandbox": cpu_sandbox,
            "cpu_stand_ins": cpu_stand_ins,
            "items": len(enqueued.get("enqueued", [])), "timeline": timeline(stats, launched, seconds)}


def timeline(stats: dict[str, Any], launched: float, seconds: float) -> tuple[float, float, float]:
    """(start-up, work, tail) seconds of a `worker --drain` run: from launch to the first item
    received (imports, config, credentials, forks), first item to last item done, last item done
    to exit (drain detection, process exit)."""
    first, last = stats.get("first_item_at"), stats.get("last_done_at")
    if first is None or last is None:
        return (seconds, 0.0, 0.0)
    return (first - launched, last - first, launched + seconds - last)


def event_run(sbx: Any, config: Path, label: str, workers: int, secret: str, value: str) -> dict[str, Any]:
    """A Key Vault event about `secret` (new version `value`) in queue mode, drained by `workers`."""
    from azure.keyvault.secrets import SecretClient

    from core.app.events import handle_event
    from core.runtime import LiveRuntime

    queue = f"{label}-{uuid.uuid4().hex[:6]}"
    environ = {**sbx.subprocess_env(), "VAULTRELAY_CONFIG": str(config), "VAULTRELAY_SYNC_MODE": "queue", "VAULTRELAY_WORK_QUEUE": queue,
               "VAULTRELAY_WORK_BATCH": str(BATCH)}
    SecretClient(sbx.client.vault_url("kv-source"), sbx.client.admin_credential()).set_secret(secret, value)
    api = LiveRuntime(environ=environ)
    began, at = time.monotonic(), time.time()
    outcome = dict(handle_event(api.current(), {"id": str(uuid.uuid4()), "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
                                                "data": {"VaultName": "kv-source", "ObjectName": secret, "Version": uuid.uuid4().hex}}).__dict__)
    planned = time.monotonic() - began
    stats = cli(sbx, environ, "worker", "--processes", str(workers), "--drain", "--visibility-timeout", "300")
    seconds = time.monotonic() - began
    api.close()
    # Every target holds the new value once the last item is done (the workers' exit comes after).
    held_after = (stats["last_done_at"] - at) if stats.get("last_done_at") else seconds
    return {"seconds": seconds, "held_after": held_after, "planned": planned, "outcome": outcome, "stats": stats}


def event_estate(envs: int) -> str:
    lines = ["version: 1", "secretStores:", "  azure: {type: azure.managed_identity}", "state:", "  store: azure",
             "  account: sandboxstore", "  vault: kv-state", "  table_prefix: evt", "envs:"]
    for e in range(envs):
        lines += [f"  ev{e:04d}:", f"    APP: app-{e}", "    SHARED: {from: {store: azure, vault: kv-source, secret: bench-event-shared}}"]
    lines.append("targets:")
    lines += [f"  tev{e:04d}: {{type: keyvault, env: ev{e:04d}, store: azure, vault: kv-target, prefix: ev{e:04d}-}}" for e in range(envs)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=5000, help="envs, each with one target")
    parser.add_argument("--refs", type=int, default=20, help="references per env")
    parser.add_argument("--unique", type=int, default=300, help="unique Key Vault secrets in the pool")
    parser.add_argument("--event-envs", type=int, default=2000, help="envs using the secret of the Key Vault event")
    parser.add_argument("--workers", default=",".join(map(str, WORKER_COUNTS)), help="worker counts, comma-separated")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    from rich.console import Console
    from rich.table import Table

    from sandbox.client import SandboxProcess

    console = Console(width=max(160, Console().width))
    cores = os.cpu_count() or 1
    spec = build_spec(args.envs, args.refs, args.unique)
    console.print(f"[bold]vaultrelay scale-out benchmark[/]: {args.envs} envs x {args.refs} references, {LATENCY_MS} ms added to every "
                  f"Azure request, work items of up to {BATCH} envs, workers {counts}; {cores} CPUs, load average "
                  f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at start")
    started = time.monotonic()
    runs: dict[int, dict[str, Any]] = {}
    events: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vaultrelay-scale-") as tmp, SandboxProcess() as sbx:
        sbx.apply_to_current_process()
        seed(sbx.client, spec)
        sbx.client.set_faults([{"latency_ms": LATENCY_MS}])
        console.print(f"sandbox ready and seeded in {time.monotonic() - started:.1f}s")
        for workers in counts:
            config = Path(tmp) / f"w{workers}.yaml"
            config.write_text(namespaced(spec["config_text"], "sw" + "abcdefghijklmnop"[workers % 16]))  # table prefixes are letters
            first = run_phase(sbx, config, f"w{workers}a", workers, sbx.process.pid)
            again = run_phase(sbx, config, f"w{workers}b", workers, sbx.process.pid)
            runs[workers] = {"first": first, "again": again}
            console.print(f"{workers} worker(s): first sync {first['seconds']:.1f}s, re-sync {again['seconds']:.1f}s")
        # The event: a secret every env of a second estate uses.
        if not args.event_envs:
            counts_for_event: tuple[int, ...] = ()
        else:
            counts_for_event = (1, 4)
        config = Path(tmp) / "event.yaml"
        config.write_text(event_estate(args.event_envs))
        from azure.keyvault.secrets import SecretClient

        SecretClient(sbx.client.vault_url("kv-source"), sbx.client.admin_credential()).set_secret("bench-event-shared", "v0")
        env = {**sbx.subprocess_env(), "VAULTRELAY_CONFIG": str(config), "VAULTRELAY_WORK_QUEUE": f"evt-{uuid.uuid4().hex[:6]}"}
        if counts_for_event:
            cli(sbx, env, "sync", "--queue")
            cli(sbx, env, "worker", "--processes", "4", "--drain")
        for n, workers in enumerate(counts_for_event, start=1):
            events[workers] = event_run(sbx, config, f"evt{workers}", workers, "bench-event-shared", f"v{n}-{uuid.uuid4().hex[:8]}")
            held = 0
            target = SecretClient(sbx.client.vault_url("kv-target"), sbx.client.admin_credential())
            step = max(1, args.event_envs // 20)
            sample = range(0, args.event_envs, step)
            expected = str(SecretClient(sbx.client.vault_url("kv-source"), sbx.client.admin_credential()).get_secret("bench-event-shared").value)
            held = sum(1 for e in sample if target.get_secret(f"ev{e:04d}-SHARED").value == expected)
            events[workers]["sampled"], events[workers]["held"] = len(sample), held
            console.print(f"event with {workers} worker(s): {events[workers]['held_after']:.1f}s")

    # ---- the table ----------------------------------------------------------------------------
    envs = args.envs
    base = runs[counts[0]]["first"]
    wall1 = base["seconds"]
    cpu_env1 = (base["cpu_clients"] + base["cpu_sandbox"]) / envs
    cpu_ceiling = cores * (wall1 / envs) / cpu_env1 if cpu_env1 else float("inf")
    kv_target = base["counters"].get("by_target", {}).get("keyvault:kv-target", 0)
    kv_ceiling = KEYVAULT_BUDGET_PER_S * wall1 / kv_target if kv_target else float("inf")
    table = Table(title=f"{envs} envs x {args.refs} references through the work queue ({LATENCY_MS} ms per Azure request)")
    for column in ("workers", "run", "items", "wall s", "start + work + tail s", "target writes", "state writes", "429s", "requests / env",
                   "CPU s / env (clients + sandbox)", "speedup"):
        table.add_column(column, justify="right")
    checks: list[tuple[str, bool]] = []
    for workers, pair in runs.items():
        for label, run in (("first sync", pair["first"]), ("unchanged re-sync", pair["again"])):
            c = kinds(run["counters"])
            cpu = (run["cpu_clients"] + run["cpu_sandbox"]) / envs
            speedup = (runs[counts[0]]["first" if label == "first sync" else "again"]["seconds"] / run["seconds"]) if run["seconds"] else 0
            start, work, tail = run["timeline"]
            table.add_row(str(workers), label, str(run["items"]), f"{run['seconds']:.1f}", f"{start:.1f} + {work:.1f} + {tail:.1f}",
                          str(run["stats"].get("target_writes")),
                          f"{run['stats'].get('state_writes')} ({c['table_write']} in Tables)", str(c["throttled"]),
                          f"{c['total'] / envs:.1f}", f"{cpu:.3f} ({run['cpu_clients'] / envs:.3f} + {run['cpu_sandbox'] / envs:.3f})",
                          f"{speedup:.2f}")
        first, again = pair["first"], pair["again"]
        pushed = first["stats"].get("pushed", [])
        checks.append((f"{workers} workers: every env pushed once by the first sync ({len(set(pushed))} envs, {len(pushed)} pushes)",
                       len(pushed) == len(set(pushed)) == envs))
        ca = kinds(again["counters"])
        checks.append((f"{workers} workers: unchanged re-sync wrote nothing (target writes {again['stats'].get('target_writes')}, "
                       f"KV SET {ca['kv_set']}, blob writes {ca['blob_write']}, state writes {again['stats'].get('state_writes')}, "
                       f"Table writes {ca['table_write']})",
                       again["stats"].get("target_writes") == 0 and ca["kv_set"] == 0 and ca["blob_write"] == 0
                       and again["stats"].get("state_writes") == 0 and ca["table_write"] == 0))
        if 1 < workers <= 4 and counts[0] == 1:
            speedup = wall1 / first["seconds"]
            want = 0.8 * min(workers, cpu_ceiling)
            checks.append((f"{workers} workers: first-sync speedup {speedup:.2f} >= 0.8 x min({workers}, CPU ceiling {cpu_ceiling:.2f}) "
                           f"= {want:.2f}", speedup >= want))
    console.print(table)
    console.print(f"CPU ceiling: {cores} CPUs / {cpu_env1:.3f} CPU s per env x {wall1 / envs:.3f} s per env ({counts[0]} worker(s)) = "
                  f"{cpu_ceiling:.2f}x")
    for workers, pair in runs.items():
        run = pair["first"]
        console.print(f"  first sync, {workers} worker(s): CPU used {(run['cpu_clients'] + run['cpu_sandbox']) / run['seconds']:.2f} of "
                      f"{cores} CPUs; the sandbox's stand-ins (one Python process) {run['cpu_stand_ins'] / run['seconds']:.2f} of one CPU, "
                      f"Azurite {(run['cpu_sandbox'] - run['cpu_stand_ins']) / run['seconds']:.2f}, the workers "
                      f"{run['cpu_clients'] / run['seconds']:.2f}")
    console.print(f"Key Vault budget ceiling: {KEYVAULT_BUDGET_PER_S:.0f} requests/s per vault / "
                  f"{kv_target / wall1:.1f} kv-target requests/s with {counts[0]} worker(s) ({kv_target} requests, "
                  f"{runs[counts[0]]['first']['stats'].get('target_writes')} writes) = {kv_ceiling:.1f}x")
    for workers, run in events.items():
        stats = run["stats"]
        console.print(f"Key Vault event, secret used by {args.event_envs} envs, {workers} worker(s): {run['held_after']:.1f}s until every "
                      f"target holds the new value (the last item done; planning and enqueueing {run['planned']:.1f}s of it; workers "
                      f"exited at {run['seconds']:.1f}s; {run['outcome'].get('outcome')}, {stats.get('items')} items, {stats.get('envs')} "
                      f"envs synced, {stats.get('target_writes')} target writes; {run['held']}/{run['sampled']} sampled targets checked)")
        checks.append((f"event with {workers} worker(s): every env re-pushed once ({stats.get('target_writes')} writes for "
                       f"{args.event_envs} envs), sampled targets hold the new value",
                       stats.get("target_writes") == args.event_envs and run["held"] == run["sampled"]))
    if 1 in events and 4 in events and events[4]["held_after"]:
        console.print(f"event speedup 4 workers / 1: {events[1]['held_after'] / events[4]['held_after']:.2f}")
    console.print("[bold]Targets[/]:")
    for text, ok in checks:
        console.print(f"  {'[green]PASS[/]' if ok else '[red]FAIL[/]'}  {text}")
    console.print(f"total benchmark time {time.monotonic() - started:.1f}s")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
