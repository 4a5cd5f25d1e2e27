"""Use case: sync.  Push envs now (inline), or, when the runtime fans out (queue mode), enqueue
them as work items for the queue consumers (core.app.work).

`engine(runtime)` is the sync engine a planner uses (it enqueues in queue mode);
`push(runtime, envs, ...)` is how the other use cases (rotate, Key Vault events) hand envs to a
sync; `sync(runtime, env, ...)` is `POST /api/sync[/{env}]`, `vaultrelay sync` and the timer's sync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.app.work import Fanout, WorkItem, fanout_for, open_queue
from core.azure.queue import WorkQueue
from core.errors import NotFoundError
from core.push import SyncEngine, SyncReport
from core.runtime import Runtime

log = logging.getLogger("vaultrelay.sync")

# Waits between re-push attempts of an env another instance is syncing (its lease lasts a sync).
BUSY_WAITS = (1.0, 2.0, 4.0, 8.0)


def fanout(runtime: Runtime) -> Fanout | None:
    """The runtime's fan-out over the work queue (queue mode), else None."""
    if not runtime.queue:
        return None
    return runtime.shared("fanout", lambda: fanout_for(runtime.connections, runtime.environ))


def work_queue(runtime: Runtime) -> WorkQueue:
    """The work queue (the fan-out's, else opened for consuming).

    Raises:
        QueueNotConfigured: no queue endpoint is set.
    """
    planned = fanout(runtime)
    if planned is not None:
        return planned.queue
    return runtime.shared("work_queue", lambda: open_queue(runtime.connections, runtime.environ))


def engine(runtime: Runtime) -> SyncEngine:
    """A sync engine over `runtime` (one per sync: it holds that sync's working set); it enqueues
    instead of syncing when the runtime fans out."""
    return SyncEngine(runtime, fanout=fanout(runtime))


@dataclass
class Pushed:
    """What `push` did: the work items enqueued (queue mode), or the envs synced inline."""

    envs: list[str]
    items: list[WorkItem] | None = None
    reports: list[SyncReport] = field(default_factory=list)

    @property
    def enqueued(self) -> bool:
        return self.items is not None


class PushIncomplete(RuntimeError):
    """An env handed to `push` was not pushed (a failure, or another instance kept its lease)."""


def push(runtime: Runtime, envs: Sequence[str], *, reason: Any, trigger: str, forget: Sequence[Mapping[str, str]] = (),
         force_mint: bool = False, wait_busy: bool = False, sleep: Callable[[float], None] = time.sleep) -> Pushed:
    """Push `envs` after something they use changed: enqueued in queue mode, else synced inline one
    by one.  With `wait_busy`, an env whose lease another instance holds (it may have read the old
    value) is synced again after a wait, up to `BUSY_WAITS`.

    Raises:
        PushIncomplete: an env did not sync completely (inline), or stayed busy.
        azure.core.exceptions.AzureError: the queue could not be written (queue mode).
    """
    envs = list(envs)
    planner = engine(runtime)
    items = planner.request_sync(envs, reason=reason, trigger=trigger, forget=forget, force_mint=force_mint)
    if items is not None:
        return Pushed(envs, items)
    done = Pushed(envs)
    for env in envs:
        for wait in (0.0, *(BUSY_WAITS if wait_busy else ())):
            if wait:
                log.info("env %s is being synced by another instance; pushing again in %.0f s", env, wait)
                sleep(wait)
            report = SyncEngine(runtime).sync(env, force_mint=force_mint)
            done.reports.append(report)
            if not report.ok:
                raise PushIncomplete(f"env {env} did not sync completely")
            if not wait_busy or not any(t.outcome == "busy" for t in report.targets):
                break
        else:
            raise PushIncomplete(f"env {env}: another instance kept its lease")
    return done


@dataclass
class SyncOutcome:
    """`sync`'s answer: the items enqueued (queue mode, not a dry run), or the sync's report."""

    dry_run: bool
    items: list[WorkItem] | None = None
    report: SyncReport | None = None


def sync(runtime: Runtime, env: str | None = None, *, dry_run: bool = False, force_mint: bool = False,
         trigger: str = "requested", progress: Callable[[str], None] | None = None) -> SyncOutcome:
    """Sync `env` (or every env with targets); in queue mode (not a dry run) enqueue them instead.

    Raises:
        NotFoundError: `env` has no targets.
        ConfigError: the config has no usable `state:` section.
    """
    planner = engine(runtime)
    if planner.fanout is not None and not dry_run:
        envs = runtime.envs_with_targets()
        if env is not None and env not in envs:
            raise NotFoundError(f"env '{env}' has no targets")
        items = planner.request_sync([env] if env is not None else envs, reason="requested", trigger=trigger, force_mint=force_mint)
        return SyncOutcome(dry_run, items=items)
    return SyncOutcome(dry_run, report=planner.sync(env, dry_run=dry_run, force_mint=force_mint, progress=progress))
