"""Scenario 5, crash anywhere: a sync or rotation process is SIGKILLed at a random point, then a
clean run must converge.

Each round changes some source secrets (a sync round) or makes the account's key rotation due
(a rotation round), lets `vaultrelay sync` / `rotate` (`core.cli.main`) run in a child process
(started ahead, it imports during the previous round; a go file starts its work) and SIGKILLs it
once the sandbox has counted a random number of its requests (drawn from `ctx.seed`, up to 1.1
times what a whole run makes), so kills spread over the work whatever the host's load.  Where
the kill landed is read from the sandbox's counters and the state tables: before the push (no target written), during the push
(some targets written, records not all updated), after the push (records written) or after the
process had already exited; for rotations, the phase the rotation record was left in.

Then a clean run in this process (a fresh engine: `rotate` then `sync` for rotation rounds,
`sync` otherwise), repeated until it reports success, at most 3 times.  Invariants per round:
* convergence: every target holds the newest source values and the account's active key, status
  shows no error, and no clean run was refused as `busy` by the dead run's lease;
* a due rotation is done exactly once (ARM regenerateKey calls carried out in the round, killed
  run and clean run together, = 1; the active key switched once), a sync round regenerates
  nothing;
* no lease row is left past its expiry; leases of dead holders still within their expiry are
  counted (they block nothing: a live holder is required to refuse a lease).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from resilience.common import ScenarioContext, ScenarioResult
from resilience.worlds import World, app_config, regenerations

VARIABLES = 6
MAX_CLEAN_RUNS = 3


def _target_writes(counters: dict[str, Any]) -> int:
    """Writes the targets received: Key Vault SetSecret on kv-target, blob uploads on sandboxdata."""
    kv = sum(v for k, v in counters["by_endpoint_status"].items() if k.startswith("keyvault:") and "set" in k.lower() and k.endswith(":200"))
    blob = sum(v for k, v in counters["by_endpoint_status"].items() if k.startswith("storage:blob:PUT") and k.endswith(":201"))
    return int(kv + blob)


def run(ctx: ScenarioContext) -> ScenarioResult:
    from core.app.rotate import rotate
    from core.state.leases import holder_is_dead

    result = ScenarioResult("crash anywhere")
    rng = random.Random(ctx.seed)
    kills = 100 if ctx.long else 8
    rotation_at = set(rng.sample(range(kills), 30 if ctx.long else 2))  # a rotation round restarts Azurite (~3 s)
    world = World(ctx, "cr")
    names = [f"crash-{world.tag}-{i}" for i in range(VARIABLES)]
    for i, name in enumerate(names):
        world.set_source(name, f"crash-{world.tag}-{i}-v0")
    account = world.fresh_account("a")
    world.write_config(app_config(names, blob="crash-TAG.env", rotated_accounts=[account]))
    # The first push by a child, uninterrupted: how many requests a whole sync makes.
    ctx.sandbox.reset_counters()
    first = world.cli("first-sync", "sync")
    result.check(first.wait(timeout=120) == 0, "the first sync failed (see first-sync.err.log)")
    full_run = {"sync": int(ctx.sandbox.counters()["total"])}
    full_run["rotate"] = full_run["sync"] + 20  # raised by every rotation child that finishes before its kill
    rotate(world.runtime())  # adopt: key1 active, next due in an hour
    world.account_keys(account)

    spread: dict[str, int] = {}
    runs_needed: dict[int, int] = {}
    orphaned_max = 0
    busy_refusals = 0
    rotation_rounds = 0
    kinds = ["rotate" if r in rotation_at else "sync" for r in range(kills)]
    child = _spawn(world, 0, kinds[0])
    try:
        for round_ in range(kills):
            rotation = round_ in rotation_at
            if rotation:
                rotation_rounds += 1
                before = (world.rotation_row(account) or {}).get("active", "key1")
                world.make_due(account)
            else:
                for i, name in enumerate(names):
                    if rng.random() < 0.5:
                        world.set_source(name, f"crash-{world.tag}-{i}-r{round_}")
            records_before = {r["RowKey"]: r.get("pushed_at") for r in world.rows("pushes")}
            rotation_before = world.rotation_row(account) or {}
            kind = kinds[round_]
            # Kill after a random number of requests (robust to the host's load, unlike a delay).
            kill_after = rng.randint(1, int(full_run[kind] * 1.1) + 1)
            _wait_ready(world, round_, child)
            ctx.sandbox.reset_counters()
            (ctx.workdir / f"go-{round_}").touch()
            started = time.monotonic()
            while child.poll() is None and time.monotonic() - started < 60:
                if ctx.sandbox.counters()["total"] >= kill_after:
                    break
                time.sleep(0.01)
            exited = child.poll() is not None
            if not exited:
                child.send_signal(signal.SIGKILL)
            child.wait()
            counters = ctx.sandbox.counters()
            if round_ + 1 < kills:  # the next child imports while this round's clean run and checks go on
                child = _spawn(world, round_ + 1, kinds[round_ + 1])
            point = _kill_point(world, account, exited, rotation, counters, records_before, rotation_before)
            if exited:
                full_run[kind] = max(full_run[kind], counters["total"])
            spread[point] = spread.get(point, 0) + 1

            # The clean run(s).
            needed = 0
            converged = False
            while needed < MAX_CLEAN_RUNS and not converged:
                needed += 1
                clean = world.engine()
                outcomes = [r.outcome for r in rotate(clean.runtime)] if rotation else []
                report = clean.sync()
                busy = any(t.outcome == "busy" for t in report.targets) or "busy" in outcomes
                busy_refusals += busy
                converged = report.ok and not busy and "error" not in outcomes and _targets_match(world, names, account)
                clean.broker.close()
            runs_needed[needed] = runs_needed.get(needed, 0) + 1
            result.check(converged, f"round {round_} ({point}): no convergence after {MAX_CLEAN_RUNS} clean runs")
            status = world.engine().status()
            result.check(all(s["outcome"] == "ok" and not s["last_error"] for s in status),
                         f"round {round_} ({point}): status not clean: {[(s['target'], s['outcome'], s['last_error']) for s in status]}")
            regenerated = regenerations(ctx.sandbox.counters())
            after = world.rotation_row(account) or {}
            if rotation:
                flipped = {"key1": "key2", "key2": "key1"}[str(before)]
                result.check(regenerated == 1, f"round {round_} ({point}): {regenerated} regenerateKey calls for one due rotation")
                result.check(after.get("active") == flipped and not after.get("phase"),
                             f"round {round_} ({point}): rotation left active {after.get('active')!r} phase {after.get('phase')!r}")
            else:
                result.check(regenerated == 0, f"round {round_} ({point}): a sync round regenerated a key")
            now = time.time()
            leases = world.rows("leases")
            expired = [r["RowKey"] for r in leases if float(r.get("expires_at", 0)) < now]
            result.check(not expired, f"round {round_} ({point}): lease(s) left past their expiry: {expired}")
            orphaned_max = max(orphaned_max, sum(holder_is_dead(str(r.get("owner", ""))) for r in leases))
    finally:
        if child.poll() is None:  # a child started ahead for a round that never came
            child.kill()
        child.wait()
    leases = world.rows("leases")
    result.figures.update({
        "kills": kills, "rotation rounds": rotation_rounds,
        "kill points": json.dumps(dict(sorted(spread.items()))),
        "clean runs needed": json.dumps({f"{k} run{'s' if k > 1 else ''}": v for k, v in sorted(runs_needed.items())}),
        "busy refusals": busy_refusals,
        "dead holders' leases (max, unexpired)": orphaned_max,
        "leases past expiry": sum(float(r.get("expires_at", 0)) < time.time() for r in leases),
    })
    result.check(busy_refusals == 0, f"{busy_refusals} clean runs were refused as busy (a dead run's lease)")
    return result


def _spawn(world: World, round_: int, kind: str) -> subprocess.Popen[bytes]:
    """A CLI child for round `round_` that imports everything, then waits for its go file."""
    return world.python(f"round-{round_:03d}", "resilience.crash", "--config", str(world.config_path),
                        "--ready", str(world.ctx.workdir / f"ready-{round_}"), "--go", str(world.ctx.workdir / f"go-{round_}"), kind)


def _wait_ready(world: World, round_: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not (world.ctx.workdir / f"ready-{round_}").exists():
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the child of round {round_} did not get ready (see round-{round_:03d}.err.log)")
        time.sleep(0.01)


def _kill_point(world: World, account: str, exited: bool, rotation: bool, counters: dict[str, Any],
                records_before: dict[str, Any], rotation_before: dict[str, Any]) -> str:
    if exited:
        return "after exit"
    if rotation:
        row = world.rotation_row(account) or {}
        if row.get("phase"):
            return f"rotation: {row['phase']}"
        if row.get("rotated_at") != rotation_before.get("rotated_at"):
            return "rotation: finished"
        return "rotation: before start"
    records_after = {r["RowKey"]: r.get("pushed_at") for r in world.rows("pushes")}
    recorded = sum(records_after.get(k) != v for k, v in records_before.items())
    if _target_writes(counters) == 0 and recorded == 0:
        return "sync: before push"
    if recorded < len(records_before):
        return "sync: during push"
    return "sync: after push"


def _targets_match(world: World, names: list[str], account: str) -> bool:
    expected = {f"V{i}": world.source_value(n) for i, n in enumerate(names)}
    row = world.rotation_row(account) or {}
    expected["K0"] = world.account_keys(account)[str(row.get("active", "key1"))]
    blob = world.blob_env("bundles", f"crash-{world.tag}.env")
    return all(world.target_value(f"vr-{world.tag}-{v.lower()}") == value and blob.get(v) == value for v, value in expected.items())


# ---- the child: `vaultrelay sync|rotate`, started ahead of its round ------------------------
def _child(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("--config", "--ready", "--go"):
        parser.add_argument(name, required=True)
    parser.add_argument("command", choices=["sync", "rotate"])
    args = parser.parse_args(argv)
    # What a run imports, so that the work (and the kill) starts at the go file, not at imports.
    import azure.data.tables
    import azure.keyvault.secrets
    import azure.mgmt.storage
    import azure.storage.blob  # noqa: F401
    import rich.table  # noqa: F401

    from core.cli import main
    from sandbox.resolver import install

    install(os.environ["SANDBOX_DOMAIN"])
    Path(args.ready).touch()
    go = Path(args.go)
    while not go.exists():
        time.sleep(0.005)
    return main(["--config", args.config, args.command])


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
