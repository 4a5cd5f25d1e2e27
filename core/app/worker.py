"""Use case: a work item.  `work_item` is one delivery as the queue trigger hands it over;
`consume` is `vaultrelay worker`: the work queue consumed outside the Functions host.

Each process receives messages, hands each to `work_item` (the code path of the queue trigger)
and does what the host does with the outcome: delete it when done; on a
failure make it visible again after the host's `visibilityTimeout`, and on the last allowed
delivery (`maxDequeueCount`) move it to `<queue>-poison`.  Several processes (`--processes N`)
coordinate only through the queue (visibility) and the state tables (leases, ETags); a process
killed mid-item leaves its message to reappear when its visibility ends, and its env lease to be
taken over (its holder is gone).

On Linux the other processes are forked from the first once its config is loaded and its modules
imported (each builds its own clients, credentials and connections after the fork): a process
started from scratch pays the imports and the config load again, seconds of CPU for a large config
that N processes would spend before syncing anything.  Elsewhere they are started as
`vaultrelay worker` processes.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.app.sync import work_queue
from core.app.work import WorkFailed, WorkResult, handle_message, max_dequeue
from core.azure.queue import WorkQueue
from core.push import SyncEngine
from core.runtime import Runtime

log = logging.getLogger("vaultrelay.worker")

# host.json's extensions.queues.visibilityTimeout: the wait before a failed message is retried.
FAILED_RETRY_S = 30.0
IDLE_POLLS = (0.1, 0.2, 0.5, 1.0, 2.0)
# With --drain, the wait between polls while other consumers finish the last items: short, so a
# drained queue is noticed at once (the host's maxPollingInterval is for a queue that stays).
DRAIN_POLL_S = 0.2
# What a sync imports on first use (clients, targets, minting, notify, telemetry).
WARM_MODULES = ("azure.data.tables", "azure.keyvault.secrets", "azure.storage.blob", "azure.mgmt.storage", "core.expiry",
                "core.notify", "core.azure.transport", "core.mint.minted", "core.sources.transforms", "core.values", "azure.core.polling",
                "opentelemetry.metrics")


class WorkerStats(BaseModel):
    """What a worker process did; also the counts of `vaultrelay worker --output json`
    (`core.cli_json.WorkerDocument`), which a parent of `--processes N` sums."""

    model_config = ConfigDict(extra="forbid")

    items: int = 0
    envs: int = 0
    target_writes: int = 0
    state_writes: int = 0
    pushed: list[str] = Field([], description="env->target pushed, one entry per push")
    requeued: int = 0
    throttled: int = 0
    failed: int = 0
    poisoned: int = 0
    malformed: int = 0
    cpu_seconds: float = 0.0
    seconds: float = 0.0
    # The timeline (Unix times; summed over processes: the earliest start and first item, the
    # latest last item): what a process spent before its first item and after its last.
    started_at: float | None = Field(None, description="when the (first) process began consuming, Unix time")
    first_item_at: float | None = Field(None, description="when the first work item was received, Unix time")
    last_done_at: float | None = Field(None, description="when the last work item was done, Unix time")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def add(self, other: dict[str, Any]) -> None:
        for key, value in other.items():
            if key in ("seconds",):
                self.seconds = max(self.seconds, float(value))
            elif key in ("started_at", "first_item_at", "last_done_at"):
                if value is not None:
                    mine = getattr(self, key)
                    setattr(self, key, value if mine is None else (max if key == "last_done_at" else min)(mine, value))
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
    """Consume `queue` until interrupted (`stop.is_set()`), or with `drain` until it is empty:
    no message visible, and none in it at all (Azure's approximate count includes invisible
    messages, being processed elsewhere or re-enqueued with a delay, and is never lower than the
    real count).  One message at a time by default: parallelism is the number of processes, and
    a process never sits on messages others could take."""
    limit = limit or max_dequeue()
    stats = WorkerStats()
    began, cpu_began = time.monotonic(), _cpu()
    stats.started_at = time.time()
    idle = 0
    while stop is None or not stop.is_set():
        deliveries = queue.receive(batch, visibility_timeout_s)
        if not deliveries:
            if drain:
                if queue.approximate_length() == 0:
                    break
                time.sleep(DRAIN_POLL_S)
            else:
                time.sleep(IDLE_POLLS[min(idle, len(IDLE_POLLS) - 1)])
                idle += 1
            continue
        idle = 0
        if stats.first_item_at is None:
            stats.first_item_at = time.time()
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
                stats.last_done_at = time.time()
                continue
            queue.delete(delivery)
            stats.last_done_at = time.time()
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
            total.add({k: v for k, v in document.items() if k in WorkerStats.model_fields})
            if child.returncode not in (0, 1):
                total.failed += 1
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
    return total


def can_fork() -> bool:
    """Whether worker processes can be forked from this one: Linux (where fork is the default
    way to start processes) and no other thread running (a fork copies only the calling thread,
    and a lock another thread holds would stay held in the child)."""
    return sys.platform == "linux" and hasattr(os, "fork") and threading.active_count() == 1


def run_forked(count: int, work: Callable[[], WorkerStats]) -> WorkerStats:
    """`work` (build the clients, consume) in this process and in `count - 1` processes forked
    from it; their stats summed.  A child that fails counts as a failed item (its own log says
    why); whatever it was doing is delivered again after its visibility timeout."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or a child would write out what the parent had buffered
    children: list[tuple[int, int]] = []
    for _ in range(count - 1):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: consume, report, and leave without running the parent's cleanup
            os.close(read_end)
            code = 1
            try:
                encoded = json.dumps(work().as_dict()).encode()
                with os.fdopen(write_end, "wb") as report:
                    report.write(encoded)
                code = 0
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                log.exception("worker process failed")
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(write_end)
        children.append((pid, read_end))
    total = WorkerStats()
    try:
        total.add(work().as_dict())
    finally:
        for pid, read_end in children:
            with os.fdopen(read_end, "rb") as report:
                output = report.read()
            _, status = os.waitpid(pid, 0)
            try:
                document = json.loads(output or b"{}")
            except ValueError:
                document = {}
            total.add({k: v for k, v in document.items() if k in WorkerStats.model_fields})
            if os.waitstatus_to_exitcode(status) != 0:
                total.failed += 1
    return total


def warm_imports() -> None:
    """Import what syncing a work item imports, so processes forked afterwards share it."""
    import importlib

    for module in WARM_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional extra: the process that needs it imports it (and fails) itself
            log.debug("module %s not imported before the fork", module)
