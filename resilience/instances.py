"""Scenario 4, many instances: 8 processes run the timer's work on one config and one state store.

Each process owns one source secret.  It starts with the others (a go file releases them
together), then per iteration sets a new version of its secret and does what the timer function
does: due rotations, then a sync of every env; a sync that finds a target `busy` (another
instance holds the env's lease) is repeated until this process's own sync ran, as the next
timer tick would.  Two storage accounts (three in the long form) are due for rotation when the
processes start.

Invariants, checked after every process exited and without any tidy-up run:
* zero lost updates: every target (a Key Vault target per variable and a blob bundle) holds the
  last version of every source secret and the active key of every rotated account, and every
  push record's fingerprints match what the target holds;
* exactly one rotation per due item: rotation reports, `rotation.done` audit rows and the
  regenerateKey calls ARM received all equal the number of due accounts, each switched once;
* no 412 storm: the ETag (412) and row-create (409) conflicts Table Storage answered are reported
  per sync (409s of the processes' table creations, which exist already, are not counted); together they may not exceed one per sync or rotation attempt (a lost race costs one
  request, never a retry loop).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from core.state.tables import TABLES
from resilience.common import ScenarioContext, ScenarioResult
from resilience.worlds import World, app_config, regenerations, table_statuses

PROCESSES = 8
MAX_BUSY_RETRIES = 200


def run(ctx: ScenarioContext) -> ScenarioResult:
    result = ScenarioResult("many instances")
    rng = random.Random(ctx.seed)
    iterations = 12 if ctx.long else 2
    due = 3 if ctx.long else 2
    setup_began = time.monotonic()
    world = World(ctx, "in")
    salt = secrets.token_hex(6)
    names = [f"inst-{world.tag}-{i}" for i in range(PROCESSES)]
    for i, name in enumerate(names):
        world.set_source(name, f"{salt}-p{i}-start")
        for k in range(iterations):
            ctx.secret(f"{salt}-p{i}-v{k}")
    accounts = world.fresh_accounts(due)
    world.write_config(app_config(names, blob="inst-TAG.env", rotated_accounts=accounts))

    # Adopt the accounts (the schedule starts), push once, then move the rotations past due.
    engine = world.engine()
    engine.sync()
    from core.app.rotate import rotate

    assert [r.outcome for r in rotate(engine.runtime)] == ["adopted"] * due
    for account in accounts:
        world.make_due(account)
        world.account_keys(account)
    ctx.sandbox.reset_counters()
    setup_seconds = time.monotonic() - setup_began

    go = ctx.workdir / "go"
    procs = [world.python(f"instance-{i}", "resilience.instances", "--child", "--config", str(world.config_path), "--index", str(i),
                          "--secret", names[i], "--salt", salt, "--iterations", str(iterations), "--go", str(go),
                          "--seed", str(rng.randrange(1 << 30)))
             for i in range(PROCESSES)]
    deadline = time.monotonic() + 90
    while not all((ctx.workdir / f"ready-{i}").exists() for i in range(PROCESSES)) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    began = time.monotonic()
    go.touch()
    for p in procs:
        try:
            p.wait(timeout=max(5.0, 240 - (time.monotonic() - began)))
        except Exception:
            p.kill()
            p.wait()
    elapsed = time.monotonic() - began
    counters = ctx.sandbox.counters()

    reports: list[dict[str, Any]] = []
    for i, p in enumerate(procs):
        result.check(p.returncode == 0, f"instance {i} exited with {p.returncode} (see instance-{i}.err.log)")
        out = (ctx.workdir / f"instance-{i}.out.log").read_text()
        reports += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    syncs = sum(r["syncs"] for r in reports)
    busy = sum(r["busy_retries"] for r in reports)
    rotated = [o for r in reports for o in r["rotations"] if o in ("rotated", "resumed")]
    errors = [e for r in reports for e in r["errors"]]
    result.check(not errors, f"instances reported errors: {errors[:5]}")
    result.check(not any(r.get("starved") for r in reports), "a sync stayed busy for every retry (lease never free)")

    lost = _lost_updates(world, result, names, accounts, [f"{salt}-p{i}-v{iterations - 1}" for i in range(PROCESSES)])

    regenerated = regenerations(counters)
    done_rows = [r for r in world.rows("audit") if r.get("action") == "rotation.done"]
    result.check(len(rotated) == due, f"{len(rotated)} rotations reported for {due} due")
    result.check(regenerated == due, f"ARM received {regenerated} regenerateKey calls for {due} due rotations")
    result.check(len(done_rows) == due, f"{len(done_rows)} rotation.done audit rows for {due} due rotations")
    for account in accounts:
        row = world.rotation_row(account) or {}
        result.check(row.get("active") == "key2" and not row.get("phase"),
                     f"rotation of {account}: active {row.get('active')!r}, phase {row.get('phase')!r} (expected key2, finished)")
    status_412 = table_statuses(counters, 412)
    # Each process ensures the state tables once (they exist: TableAlreadyExists, 409 each); the
    # other 409s are rows (leases, adoptions) another instance created first.
    table_creations = PROCESSES * len(TABLES)
    status_409 = table_statuses(counters, 409) - table_creations
    per_sync = status_412 / syncs if syncs else 0.0
    # Each sync takes its env's lease at most once and each rotation attempt its own: a loser costs
    # one 409 (the lease row was created first) or 412 (its ETag changed), never a retry loop.
    attempts = syncs + sum(len(r["rotations"]) for r in reports) + len(rotated)  # a rotation re-pushes with a sync of its own
    result.check(status_412 + status_409 <= attempts,
                 f"conflict storm: {status_412} 412s + {status_409} 409s for {attempts} sync and rotation attempts")
    expected_runs = PROCESSES * iterations
    result.check(sum(r["iterations"] for r in reports) == expected_runs, "not every instance ran every iteration")
    result.figures.update({
        "processes": PROCESSES, "iterations per process": iterations, "syncs run": syncs, "busy retries": busy,
        "rotations due": due, "rotations done": len(rotated), "regenerateKey calls": regenerated,
        "table 412s": status_412, "412 per sync": round(per_sync, 3), "row 409s": status_409,
        "409 per sync": round(status_409 / syncs if syncs else 0.0, 3), "409s ensuring the tables (not counted above)": table_creations,
        "lost updates": lost, "setup seconds": round(setup_seconds, 1), "seconds under load": round(elapsed, 1),
    })
    return result


def _lost_updates(world: World, result: ScenarioResult, names: list[str], accounts: list[str], last: list[str]) -> int:
    """Variables whose newest value is missing from a target, plus push records that disagree with it."""
    expected: dict[str, str] = {}
    for i, name in enumerate(names):
        current = world.source_value(name)
        result.check(current == last[i], f"V{i}: the source does not hold the instance's last version")
        expected[f"V{i}"] = current
    for j, account in enumerate(accounts):
        row = world.rotation_row(account) or {}
        expected[f"K{j}"] = world.account_keys(account)[str(row.get("active", "key1"))]
    lost = 0
    blob = world.blob_env("bundles", f"inst-{world.tag}.env")
    for variable, value in expected.items():
        if world.target_value(f"vr-{world.tag}-{variable.lower()}") != value:
            lost += 1
            result.check(False, f"lost update: Key Vault target {variable} does not hold the newest value")
        if blob.get(variable) != value:
            lost += 1
            result.check(False, f"lost update: blob target {variable} does not hold the newest value")
    engine = world.engine()
    fingerprints = {v: engine.fingerprinter.of(value) for v, value in expected.items()}
    for row in world.rows("pushes"):
        recorded = json.loads(row.get("fingerprints") or "{}")
        wrong = sorted(v for v in expected if recorded.get(v) != fingerprints[v])
        if wrong or row.get("outcome") != "ok":
            lost += 1
            result.check(False, f"push record {row['PartitionKey']}/{row['RowKey']}: outcome {row.get('outcome')!r}, "
                                f"fingerprints differ from the target for {wrong}")
    result.check(len(world.rows("pushes")) == 2, "expected one push record per target")
    return lost


# ---- the child: one instance ------------------------------------------------------------------
def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    for name in ("--config", "--secret", "--salt", "--go"):
        parser.add_argument(name, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from azure.keyvault.secrets import SecretClient

    from core.app.rotate import rotate
    from core.config import load_config
    from core.connections import StoreConnections
    from core.push import SyncEngine
    from sandbox.client import SandboxClient
    from sandbox.resolver import install

    install(os.environ["SANDBOX_DOMAIN"])
    sandbox = SandboxClient(dict(os.environ))
    source = SecretClient(sandbox.vault_url("kv-source"), sandbox.admin_credential())
    engine = SyncEngine(StoreConnections(load_config(args.config)))
    rng = random.Random(args.seed)
    go = Path(args.go)
    (go.parent / f"ready-{args.index}").touch()
    while not go.exists():
        time.sleep(0.02)
    report: dict[str, Any] = {"index": args.index, "iterations": 0, "syncs": 0, "busy_retries": 0, "rotations": [], "errors": []}
    for k in range(args.iterations):
        source.set_secret(args.secret, f"{args.salt}-p{args.index}-v{k}")
        # The timer's work (core.app.scheduled): rotations that are due, then a sync of every env.
        for rotation in rotate(engine.runtime):
            report["rotations"].append(rotation.outcome)
            if rotation.outcome == "error":
                report["errors"].append(f"rotation {rotation.name}: {rotation.error}")
        for _attempt in range(MAX_BUSY_RETRIES):
            sync = engine.sync()
            report["syncs"] += 1
            report["errors"] += [f"{t.env}->{t.target}: {t.error}" for t in sync.targets if t.outcome == "error"]
            if not any(t.outcome == "busy" for t in sync.targets):
                break
            report["busy_retries"] += 1
            time.sleep(rng.uniform(0.05, 0.25))
        else:
            report["starved"] = True
        report["iterations"] += 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
