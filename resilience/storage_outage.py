"""Scenario 6, storage unavailable: Azurite (the state tables and the blob target) is stopped and
restarted, before a sync and in the middle of one.

1. A first sync pushes version 1 of the env's secrets to a Key Vault target and a blob target; the
   state rows are kept for comparison.
2. Version 2 is set and Azurite is stopped.  A sync during the outage (this process, with a retry
   budget of one retry so it gives up quickly; the long form also runs the CLI with its default
   budget) must fail with a clear status: every target reported as an error that names the state
   table, no traceback, no value; and nothing may be written to the Key Vault target, which is up.
3. Azurite is started again.  Nothing lost: the state rows are as before the outage (Azurite keeps
   its data on disk).  The next sync pushes version 2 exactly once per variable and target.
4. Mid-run outages (1 in the short form, 6 in the long one): a new version is set, a CLI sync
   starts, Azurite is stopped after a random number of the child's requests and started again
   after a random pause.  The child either completes or reports a clean error; a clean sync
   then converges, and across the child and the clean sync every variable got exactly one new
   version in the Key Vault target and the blob at most one upload answered 201 (a push whose
   record was lost is recognised by the next run, not redone; an upload whose answer the outage
   cut off is not counted, the converged content shows it landed).

Azurite is always started again in a `finally`, so a failure here does not break later tests.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from resilience.common import ScenarioContext, ScenarioResult
from resilience.worlds import World, app_config

VARIABLES = 3


def _blob_writes(counters: dict[str, Any]) -> int:
    """Blob uploads answered 201 (an upload whose answer the outage cut off is not counted)."""
    return int(counters["by_endpoint_status"].get("storage:blob:PUT:201", 0))


def _kv_versions(world: World, names: list[str]) -> int:
    """Versions of the Key Vault target's secrets: each push of a variable makes one."""
    return sum(sum(1 for _ in world.target.list_properties_of_secret_versions(f"vr-{world.tag}-v{i}")) for i in range(len(names)))


class Azurite:
    """Stop and start the sandbox's Azurite; `start` waits until it serves again."""

    def __init__(self, ctx: ScenarioContext) -> None:
        self.ctx = ctx
        self.restart_seconds: list[float] = []

    def stop(self) -> None:
        self.ctx.sandbox.call("POST", "/azurite/stop", timeout=60)

    def start(self) -> None:
        began = time.monotonic()
        state = self.ctx.sandbox.call("POST", "/azurite/start", timeout=120)
        if not state.get("running"):
            raise RuntimeError("Azurite did not start again")
        self.restart_seconds.append(time.monotonic() - began)


def run(ctx: ScenarioContext) -> ScenarioResult:
    result = ScenarioResult("storage unavailable")
    rng = random.Random(ctx.seed)
    world = World(ctx, "so")
    names = [f"outage-{world.tag}-{i}" for i in range(VARIABLES)]
    version = 1

    def bump() -> dict[str, str]:
        values = {f"V{i}": f"outage-{world.tag}-{i}-v{version}" for i in range(VARIABLES)}
        for i, name in enumerate(names):
            world.set_source(name, values[f"V{i}"])
        return values

    expected = bump()
    world.write_config(app_config(names, blob="outage-TAG.env"))
    first = world.engine().sync()
    result.check(first.ok, f"the first sync failed: {[t.error for t in first.targets if t.error]}")
    rows_before = _state_rows(world)
    azurite = Azurite(ctx)

    # 2. An outage before the sync.
    version = 2
    stale = expected
    expected = bump()
    ctx.sandbox.reset_counters()
    cli_seconds = None
    report_seconds = 0.0
    kv_writes = -1
    azurite.stop()
    try:
        engine = _quick_giving_up_engine(world)
        began = time.monotonic()
        report = engine.sync()
        report_seconds = time.monotonic() - began
        engine.broker.close()
        errors = [t.error or "" for t in report.targets]
        ctx.observe("\n".join(errors))
        result.check(not report.ok and all(t.outcome == "error" for t in report.targets),
                     f"a sync during the outage was not reported as failed: {[(t.target, t.outcome) for t in report.targets]}")
        result.check(all("state table" in e and world.prefix in e for e in errors),
                     f"the outage's errors do not name the state table: {errors}")
        result.check(not any("Traceback" in e for e in errors), "a traceback in the outage's errors")
        kv_writes = int(ctx.sandbox.counters()["by_endpoint_status"].get("keyvault:SetSecret:200", 0))
        result.check(kv_writes == 0, f"{kv_writes} Key Vault target writes during the outage (nothing should be pushed)")
        if ctx.long:
            cli_seconds = _cli_during_outage(world, result)
    finally:
        azurite.start()
    result.check(_targets(world, names) == stale, "the Key Vault target changed during the outage")

    # 3. After the restart: nothing lost, pushed once.
    kept = _state_rows(world) == rows_before
    result.check(kept, "state rows changed across the outage (data lost or rewritten)")
    ctx.sandbox.reset_counters()
    versions = _kv_versions(world, names)
    report = world.engine().sync()
    result.check(report.ok, f"the sync after the restart failed: {[t.error for t in report.targets if t.error]}")
    writes = (_kv_versions(world, names) - versions, _blob_writes(ctx.sandbox.counters()))
    result.check(writes == (VARIABLES, 1), f"after the restart: {writes} (Key Vault, blob) writes, expected ({VARIABLES}, 1)")
    _check_converged(world, result, names, expected, "after the restart")

    # 4. Outages in the middle of a sync.
    rounds = 6 if ctx.long else 1
    outcomes: dict[str, int] = {}
    twice = 0
    full = max(20, int(ctx.sandbox.counters()["total"]))
    for round_ in range(rounds):
        version += 1
        expected = bump()
        ctx.sandbox.reset_counters()
        versions = _kv_versions(world, names)
        child = world.cli(f"midrun-{round_}", "sync")
        stop_after = rng.randint(1, full)
        began = time.monotonic()
        while child.poll() is None and ctx.sandbox.counters()["total"] < stop_after and time.monotonic() - began < 60:
            time.sleep(0.01)
        azurite.stop()
        try:
            time.sleep(rng.uniform(0.5, 6.0) if ctx.long else 1.0)
        finally:
            azurite.start()
        code = child.wait(timeout=300)
        err = (ctx.workdir / f"midrun-{round_}.err.log").read_text()
        outcome = "completed" if code == 0 else "reported an error"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        result.check(code in (0, 1), f"mid-run outage {round_}: the sync exited with {code}")
        result.check("Traceback" not in err, f"mid-run outage {round_}: a traceback on stderr (see midrun-{round_}.err.log)")
        clean = world.engine().sync()
        result.check(clean.ok, f"mid-run outage {round_}: the clean sync failed: {[t.error for t in clean.targets if t.error]}")
        _check_converged(world, result, names, expected, f"mid-run outage {round_}")
        kv, blob = _kv_versions(world, names) - versions, _blob_writes(ctx.sandbox.counters())
        if kv != VARIABLES or blob > 1:
            twice += 1
            result.check(False, f"mid-run outage {round_}: {kv} Key Vault versions and {blob} blob uploads for {VARIABLES} changed "
                                f"variables (expected {VARIABLES} and at most 1)")

    result.figures.update({
        "outage sync reported in": f"{report_seconds:.1f}s (1 retry)",
        "target writes during outage": kv_writes,
        "state rows kept across restart": "yes" if kept else "NO",
        "mid-run outages": rounds, "mid-run syncs": ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items())),
        "pushed twice": twice,
        "Azurite restart": f"{max(azurite.restart_seconds):.1f}s max",
    })
    if cli_seconds is not None:
        result.figures["CLI outage report (default retries)"] = f"{cli_seconds:.1f}s"
    return result


def _quick_giving_up_engine(world: World) -> Any:
    """A SyncEngine whose Azure clients retry once (the default budget rides over outages of a
    minute; this scenario wants the report of one that lasts longer)."""
    from core.azure.clients import AzureClients
    from core.azure.retry import RetrySettings
    from core.config import load_config
    from core.config.cloud import resolve_cloud
    from core.connections import StoreConnections
    from core.push import SyncEngine

    loaded = load_config(str(world.config_path))
    clients = AzureClients(resolve_cloud(loaded.config.cloud, os.environ), retry=RetrySettings(total=1, backoff_factor=0.2))
    return SyncEngine(StoreConnections(loaded, clients=clients))


def _cli_during_outage(world: World, result: ScenarioResult) -> float:
    """`vaultrelay sync` with its default retries while storage is down: a clean error, no traceback."""
    began = time.monotonic()
    child = world.cli("outage-cli", "sync")
    code = child.wait(timeout=600)
    seconds = time.monotonic() - began
    err = (world.ctx.workdir / "outage-cli.err.log").read_text()
    result.check(code == 1, f"the CLI sync during the outage exited with {code}")
    result.check("Traceback" not in err, "a traceback from the CLI sync during the outage (see outage-cli.err.log)")
    result.check("state table" in err, "the CLI's outage error does not name the state table")
    return seconds


def _state_rows(world: World) -> dict[str, Any]:
    return {f"{t}/{r['PartitionKey']}/{r['RowKey']}": {k: v for k, v in r.items()}
            for t in ("pushes", "rotations") for r in world.rows(t)}


def _targets(world: World, names: list[str]) -> dict[str, str | None]:
    return {f"V{i}": world.target_value(f"vr-{world.tag}-v{i}") for i in range(len(names))}


def _check_converged(world: World, result: ScenarioResult, names: list[str], expected: dict[str, str], when: str) -> None:
    result.check(_targets(world, names) == expected, f"{when}: the Key Vault target does not hold the newest values")
    blob = world.blob_env("bundles", f"outage-{world.tag}.env")
    result.check(all(blob.get(k) == v for k, v in expected.items()), f"{when}: the blob target does not hold the newest values")
    status = world.engine().status()
    result.check(all(s["outcome"] == "ok" and not s["last_error"] for s in status),
                 f"{when}: status not clean: {[(s['target'], s['outcome'], s['last_error']) for s in status]}")
