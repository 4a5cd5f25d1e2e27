"""Scenario: fan-out through the work queue with 4 `vaultrelay worker` processes.

Every env's work item is enqueued twice and the messages are shuffled (duplicated and reordered
deliveries); halfway, one source secret gets a new version and its envs get a newer item, while
older duplicates for the same envs are still queued.  Key Vault answers slowly (added latency), so
items take a while, and one worker is killed (SIGKILL) while it holds items: its messages reappear
when their visibility ends and its env leases are taken over (their holder is gone).

Invariants, checked after the surviving workers drained the queue and without any tidy-up run:
* nothing lost: every target secret holds its source's newest value, and every push record's
  fingerprints match it;
* nothing pushed twice: each target secret has exactly one version per distinct value it was
  meant to hold (1, or 2 for the secret that changed), whatever the duplicates, the order and the
  kill;
* nothing poisoned, the queue empty.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

from resilience.common import ScenarioContext, ScenarioResult
from resilience.worlds import PROJECT_ROOT, World

WORKERS = 4


def run(ctx: ScenarioContext) -> ScenarioResult:
    from azure.storage.queue import QueueClient

    from core.app.work import plan_items

    result = ScenarioResult("queue workers")
    rng = random.Random(ctx.seed)
    envs = [f"e{i:02d}" for i in range(40 if ctx.long else 12)]
    world = World(ctx, "qw")
    salt = secrets.token_hex(6)
    shared = f"qw-{world.tag}-shared"
    world.set_source(shared, f"{salt}-shared-v1")
    for env in envs:
        world.set_source(f"qw-{world.tag}-{env}", f"{salt}-{env}")
    body = "envs:\n" + "".join(
        f"  {env}:\n    OWN: {{from: {{store: azure, vault: kv-source, secret: qw-TAG-{env}}}}}\n"
        + (f"    SHARED: {{from: {{store: azure, vault: kv-source, secret: {shared}}}}}\n" if i % 2 == 0 else "")
        for i, env in enumerate(envs))
    body += "targets:\n" + "".join(
        f"  t-{env}: {{type: keyvault, env: {env}, store: azure, vault: kv-target, prefix: qw-TAG-{env}-}}\n" for env in envs)
    world.write_config(body)
    sharing = [env for i, env in enumerate(envs) if i % 2 == 0]

    queue_name = f"qw-{world.tag}"
    child_env = ctx.process.subprocess_env()
    child_env["VAULTRELAY_WORK_QUEUE"] = queue_name
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), child_env.get("PYTHONPATH", "")]))
    queue = QueueClient(child_env["AzureWebJobsStorage__queueServiceUri"], queue_name, credential=ctx.sandbox.admin_credential())
    queue.create_queue()

    def send(items: list[Any]) -> None:
        for item in items:
            queue.send_message(base64.b64encode(item.to_text().encode()).decode())

    first = plan_items([[e] for e in envs], "requested", "resilience", batch=2)
    messages = first + first  # every item twice
    rng.shuffle(messages)
    send(messages)

    ctx.sandbox.set_faults([{"service": "keyvault", "target": "kv-target", "latency_ms": 120 if ctx.long else 60}])
    began = time.monotonic()
    workers = [_worker(world, child_env, i) for i in range(WORKERS)]
    # Kill the first worker that is working (its log says it received an item), mid-item.
    deadline = time.monotonic() + 60
    busy: list[int] = []
    while time.monotonic() < deadline and not busy:
        busy = [i for i in range(WORKERS) if _busy(world, i)]
        time.sleep(0.02)
    killed = busy[0] if busy else 0
    time.sleep(0.15)
    workers[killed].send_signal(signal.SIGKILL)
    workers[killed].wait()

    # A newer version of the shared secret: newer items for its envs, older duplicates still queued.
    world.set_source(shared, f"{salt}-shared-v2")
    newer = plan_items([[e] for e in sharing], "secret_changed", "resilience:event", batch=3,
                       forget=[{"vault": "kv-source", "secret": shared}])
    older = first[: len(first) // 2]  # older duplicates after the newer items
    mixed = newer + older
    rng.shuffle(mixed)
    send(mixed)
    messages += older

    outputs: list[dict[str, Any]] = []
    for i, worker in enumerate(workers):
        if i == killed:
            continue
        try:
            worker.wait(timeout=240)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            result.check(False, f"worker {i} did not drain the queue in time")
        text = (ctx.workdir / f"worker-{i}.out.log").read_text()
        result.check(worker.returncode == 0, f"worker {i} exited with {worker.returncode} (see worker-{i}.err.log)")
        try:
            outputs.append(json.loads(text))
        except ValueError:
            result.check(False, f"worker {i} printed no JSON document (see worker-{i}.out.log)")
    elapsed = time.monotonic() - began
    ctx.sandbox.clear_faults()

    # ---- invariants -----------------------------------------------------------------------
    lost = twice = 0
    engine = world.engine()
    for name in envs:
        expected = {"OWN": world.source_value(f"qw-{world.tag}-{name}")}
        if name in sharing:
            expected["SHARED"] = world.source_value(shared)
        for variable, value in expected.items():
            secret = f"qw-{world.tag}-{name}-{variable}"
            if world.target_value(secret) != value:
                lost += 1
                result.check(False, f"lost: {name} -> {variable} does not hold the newest value")
            versions = len(list(world.target.list_properties_of_secret_versions(secret)))
            meant = 2 if variable == "SHARED" else 1
            if versions > meant:
                twice += 1
                result.check(False, f"pushed twice: {name} -> {variable} has {versions} versions for {meant} values")
        record = next((r for r in world.rows("pushes", name)), {})
        recorded = json.loads(record.get("fingerprints") or "{}")
        wrong = sorted(v for v, value in expected.items() if recorded.get(v) != engine.fingerprinter.of(value))
        result.check(not wrong and record.get("outcome") == "ok", f"push record of {name}: {record.get('outcome')!r}, wrong {wrong}")
    poisoned = world.rows("events", "poison")
    result.check(not poisoned, f"poisoned: {[r['RowKey'] for r in poisoned]}")
    left = queue.get_queue_properties().approximate_message_count
    result.check(left == 0, f"{left} messages left in the queue")
    pushed = [p for o in outputs for p in o.get("pushed", [])]
    result.figures.update({
        "envs": len(envs), "workers": WORKERS, "messages": len(messages) + len(newer), "worker killed": 1,
        "items handled by survivors": sum(o.get("items", 0) for o in outputs),
        "target writes by survivors": sum(o.get("target_writes", 0) for o in outputs),
        "pushes by survivors": len(pushed), "re-enqueued (busy)": sum(o.get("requeued", 0) for o in outputs),
        "lost": lost, "pushed twice": twice, "seconds": round(elapsed, 1),
    })
    queue.delete_queue()
    return result


def _worker(world: World, env: dict[str, str], index: int) -> subprocess.Popen[bytes]:
    out = (world.ctx.workdir / f"worker-{index}.out.log").open("ab")
    err = (world.ctx.workdir / f"worker-{index}.err.log").open("ab")
    try:
        # -v: each received item is logged, so the scenario knows when worker 0 is busy.
        return subprocess.Popen([sys.executable, "-m", "core.cli", "--config", str(world.config_path), "worker", "--drain",
                                 "--visibility-timeout", "4", "-o", "json", "-v"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


def _busy(world: World, index: int) -> bool:
    path = world.ctx.workdir / f"worker-{index}.err.log"
    return path.exists() and "work item received" in path.read_text()
