"""Use case: a work item.  `work_item` is one delivery as the queue trigger hands it over;
`consume` is `vaultrelay worker`: the work queue consumed outside the Functions host.

Each process receives messages, hands each to `work_item` (the code path of the queue trigger)
and does what the host does with the outcome: delete it when done; on a
failure make it visible again after the host's `visibilityTimeout`, and on the last allowed
delivery (`maxDequeueCount`) move it to `<queue>-poison`.  Several processes (`--processes N`)
coordinate only through the queue (visibility) and the state tables (leases, ETags); a process
killed mid-item leaves its message to reappear when its visibility ends, and its env lease to be
taken over (its holder is gone).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from core.app.sync import work_queue
from core.app.work import WorkFailed, WorkResult, handle_message, max_dequeue
from core.azure.queue import WorkQueue
from core.push import SyncEngine
from core.runtime import Runtime

log = logging.getLogger("vaultrelay.worker")

# host.json's extensions.queues.visibilityTimeout: the wait before a failed message is retried.
FAILED_RETRY_S = 30.0
IDLE_POLLS = (0.1, 0.2, 0.5, 1.0, 2.0)
DRAIN_IDLE_S = 1.0


@dataclass
class WorkerStats:
    items: int = 0
    envs: int = 0
    target_writes: int = 0
    state_writes: int = 0
    pushed: list[str] = field(default_factory=list)
    requeued: int = 0
    throttled: int = 0
    failed: int = 0
    poisoned: int = 0
    malformed: int = 0
    cpu_seconds: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def add(self, other: dict[str, Any]) -> None:
        for key, value in other.items():
            if key in ("seconds",):
                self.seconds = max(self.seconds, float(value))
            elif key == "pushed":
                self.pushed.extend(value)
            elif hasattr(self, key):
                setattr(self, key, getattr(self, key) + value)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def work_item(runtime: Runtime, text: str, dequeue_count: int, *, queue: WorkQueue | None = None,
              limit: int | None = None) -> WorkResult:
    """One delivery of a work queue message (core.app.work.handle_message), synced by an engine of
    its own (the queue trigger may run several at once on one instance: an engine holds one
    sync's working set) over the runtime's state store and fingerprint key; it syncs inline,
    never enqueues.  Requeued items go back to `queue` (default: the runtime's work queue).

    Raises:
        WorkFailed: the item failed (delivered again, then poisoned).
        QueueNotConfigured: no queue to send a requeued item to.
    """
    return handle_message(SyncEngine(runtime), text, dequeue_count=dequeue_count,
                          queue=queue if queue is not None else work_queue(runtime), limit=limit)


def consume(runtime: Runtime, queue: WorkQueue, *, drain: bool = False, visibility_timeout_s: int = 120, batch: int = 1,
            failed_retry_s: float = FAILED_RETRY_S, limit: int | None = None, stop: Any = None) -> WorkerStats:
    """Consume `queue` until interrupted (`stop.is_set()`), or with `drain` until it is empty
    (no message, visible or not, for a moment).  One message at a time by default: parallelism
    is the number of processes, and a process never sits on messages others could take."""
    limit = limit or max_dequeue()
    stats = WorkerStats()
    began, cpu_began = time.monotonic(), _cpu()
    idle = 0
    idle_since: float | None = None
    while stop is None or not stop.is_set():
        deliveries = queue.receive(batch, visibility_timeout_s)
        if not deliveries:
            if drain:
                now = time.monotonic()
                if queue.approximate_length() > 0:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= DRAIN_IDLE_S:
                    break
            time.sleep(IDLE_POLLS[min(idle, len(IDLE_POLLS) - 1)])
            idle += 1
            continue
        idle, idle_since = 0, None
        for delivery in deliveries:
            stats.items += 1
            log.info("work item received (message %s, delivery %d)", delivery.id, delivery.dequeue_count)
            try:
                result = work_item(runtime, delivery.text, delivery.dequeue_count, queue=queue, limit=limit)
            except Exception as exc:  # WorkFailed, state or queue failures, bugs: as the host treats a failed function
                if isinstance(exc, WorkFailed):
                    log.warning("%s", exc)
                else:
                    log.exception("work item failed")
                if delivery.dequeue_count >= limit:
                    queue.send_poison(delivery.text)
                    queue.delete(delivery)
                    stats.poisoned += 1
                else:
                    queue.release(delivery, failed_retry_s)
                    stats.failed += 1
                continue
            queue.delete(delivery)
            stats.envs += len(result.envs)
            stats.target_writes += result.target_writes
            stats.state_writes += result.state_writes
            stats.pushed.extend(result.pushed)
            stats.requeued += 1 if result.outcome == "requeued" else 0
            stats.throttled += result.throttled
            stats.malformed += 1 if result.outcome == "malformed" else 0
    stats.seconds = time.monotonic() - began
    stats.cpu_seconds = _cpu() - cpu_began
    return stats


def run_processes(count: int, *, config: str | None, drain: bool, visibility_timeout: int, verbose: int = 0) -> WorkerStats:
    """`count` worker processes (`vaultrelay worker` each, with --output json); their documents summed."""
    argv = [sys.executable, "-m", "core.cli", "worker", "--output", "json", "--visibility-timeout", str(visibility_timeout)]
    if config:
        argv += ["--config", config]
    if drain:
        argv.append("--drain")
    argv += ["-v"] * verbose
    children = [subprocess.Popen(argv, stdout=subprocess.PIPE, env=dict(os.environ)) for _ in range(count)]
    total = WorkerStats()
    try:
        for child in children:
            output, _ = child.communicate()
            try:
                document = json.loads(output or b"{}")
            except ValueError:
                document = {}
            total.add({k: v for k, v in document.items() if k in WorkerStats.__dataclass_fields__})
            if child.returncode not in (0, 1):
                total.failed += 1
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
    return total
