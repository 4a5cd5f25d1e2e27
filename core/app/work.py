"""Fan-out: planners enqueue work items, queue consumers sync them.

The timer, `POST /api/sync`, Key Vault events and rotations' re-pushes decide *which* envs need a
sync and why, and (in queue mode, `VAULTRELAY_SYNC_MODE=queue`) enqueue `WorkItem`s to the work
queue (core.azure.queue) instead of syncing inline.  The queue-triggered function
(functions/work_queue.py) and `vaultrelay worker` both hand each message to `handle_message`,
which syncs the item's envs with the ordinary sync (leases, fingerprints, push records).

An item is idempotent: delivered twice, or after a newer item for the same env, it finds the
targets in place (the read-only first pass of a sync: no lease, no target or state write).  An env
being synced by another consumer (its lease is held) or throttled past the retry budget is
re-enqueued with a visibility delay rather than failed; anything else raises, so the host
delivers the message again after `visibilityTimeout`, and after `maxDequeueCount` deliveries
moves it to `<queue>-poison`.  The last delivery records the env as poisoned (state table
`events`, partition `poison`: env, cause, item id, trigger; never a value) for `status`; a later
successful sync of the env clears the record.

A message carries env names, a reason, what triggered it, and which cached values to drop first
(vault and secret names, account names); never a value.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.azure.queue import MAX_MESSAGE_BYTES, WorkQueue, queue_name, queue_service_url
from core.azure.retry import WaitLimit, wait_limit, waits_at_most

log = logging.getLogger("vaultrelay.work")

BATCH_SETTING = "VAULTRELAY_WORK_BATCH"
MAX_DEQUEUE_SETTING = "VAULTRELAY_WORK_MAX_DEQUEUE"
MAX_ENVS_PER_ITEM = 50
DEFAULT_BATCH = 10
# A fan-out of few envs is cut into about this many items (fewer envs each, down to one): the
# host scales the consumer out by queue length, and 100 envs in 10 items would keep 4 instances
# busy for 3 rounds, 2 of them idle in the last.
MIN_ITEMS = 16
# Kept equal to host.json's extensions.queues.maxDequeueCount (a test checks they agree).
DEFAULT_MAX_DEQUEUE = 5
# Re-enqueues of one item for throttling or a busy env before it counts as a failure.
MAX_REQUEUES = 8
REQUEUE_BASE_S = 5.0
REQUEUE_MAX_S = 300.0
# Envs of one item synced at once (each under its own lease): an item's envs then cost about one
# env's round trips, not the sum of them (envs sharing an app-settings site stay one at a time).
ENV_CONCURRENCY = 4
# The longest Retry-After a work item waits for (Key Vault's shared backoff, the retry policy): a
# longer one fails the call as throttled and the item is re-enqueued with at least that delay,
# rather than hold its worker (a host invocation) asleep.
WAIT_MAX_S = 5.0

Reason = Literal["scheduled", "requested", "secret_changed", "secret_expiring", "rotation", "retry"]


class Forget(BaseModel):
    """Cached values to drop before syncing (names only): `vault` + `secret`, or `account`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vault: str | None = Field(default=None, max_length=128)
    secret: str | None = Field(default=None, max_length=128)
    account: str | None = Field(default=None, max_length=128)

    def params(self) -> dict[str, str]:
        return {k: v for k, v in (("vault", self.vault), ("secret", self.secret), ("account", self.account)) if v}


class WorkItem(BaseModel):
    """One queue message: a small batch of envs to sync, why, and what triggered it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: Literal[1] = 1
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    envs: list[str] = Field(min_length=1, max_length=MAX_ENVS_PER_ITEM)
    reason: Reason
    trigger: str = Field(max_length=200)
    forget: list[Forget] = Field(default_factory=list, max_length=20)
    force_mint: bool = False
    attempt: int = Field(default=0, ge=0, le=100)
    enqueued_at: datetime

    @field_validator("envs")
    @classmethod
    def _env_names(cls, envs: list[str]) -> list[str]:
        for env in envs:
            if not env or len(env) > 128 or not env.isprintable():
                raise ValueError("an env name is 1-128 printable characters")
        return envs

    @field_validator("trigger")
    @classmethod
    def _printable(cls, trigger: str) -> str:
        if not trigger.isprintable():
            raise ValueError("the trigger is printable text")
        return trigger

    def to_text(self) -> str:
        """The message text (JSON).

        Raises:
            ValueError: the message would exceed the queue's 64 KiB once base64-encoded.
        """
        text = self.model_dump_json()
        if (len(text.encode()) + 2) // 3 * 4 > MAX_MESSAGE_BYTES:
            raise ValueError(f"work item of {len(self.envs)} envs exceeds the queue's {MAX_MESSAGE_BYTES} byte message limit")
        return text


class BadWorkItem(ValueError):
    """A message that is not a work item; the message says which field (never the content)."""


def parse_item(text: str) -> WorkItem:
    """The work item in a message's (decoded) text.

    Raises:
        BadWorkItem: not JSON, or not a work item.
    """
    try:
        return WorkItem.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(item)'}: {e['msg']}" for e in exc.errors()[:3])
            raise BadWorkItem(f"not a work item: {where}") from None
        raise BadWorkItem("not a work item: not JSON") from None


def new_item(envs: Sequence[str], reason: Reason, trigger: str, *, forget: Sequence[Mapping[str, str]] = (),
             force_mint: bool = False, attempt: int = 0) -> WorkItem:
    return WorkItem(id=uuid.uuid4().hex, envs=list(envs), reason=reason, trigger=trigger[:200],
                    forget=[Forget(**dict(f)) for f in forget], force_mint=force_mint, attempt=attempt,
                    enqueued_at=datetime.now(UTC))


# ---- planning ----------------------------------------------------------------------------
def plan_items(groups: Sequence[Sequence[str]], reason: Reason, trigger: str, *, batch: int = DEFAULT_BATCH,
               forget: Sequence[Mapping[str, str]] = (), force_mint: bool = False) -> list[WorkItem]:
    """Work items for `groups` of envs (envs sharing an app-settings site stay in one item, so the
    site still gets one PUT), packed up to `batch` envs an item."""
    batch = max(1, min(batch, MAX_ENVS_PER_ITEM))
    items: list[WorkItem] = []
    current: list[str] = []
    for group in groups:
        group = list(group)
        if current and len(current) + len(group) > batch:
            items.append(new_item(current, reason, trigger, forget=forget, force_mint=force_mint))
            current = []
        while len(group) > MAX_ENVS_PER_ITEM:  # a huge site group: split (its site lease keeps pushes correct)
            items.append(new_item(group[:MAX_ENVS_PER_ITEM], reason, trigger, forget=forget, force_mint=force_mint))
            group = group[MAX_ENVS_PER_ITEM:]
        current.extend(group)
    if current:
        items.append(new_item(current, reason, trigger, forget=forget, force_mint=force_mint))
    return items


def item_size(envs: int, batch: int) -> int:
    """Envs per item for a fan-out of `envs`: `batch`, or fewer so that there are about MIN_ITEMS
    items (at least one env each)."""
    return max(1, min(batch, math.ceil(envs / MIN_ITEMS)))


@dataclass
class Fanout:
    """Enqueues work items for one engine's config (the planners' side)."""

    queue: WorkQueue
    batch: int = DEFAULT_BATCH
    ensured: bool = False

    def enqueue(self, engine: Any, envs: Sequence[str], reason: Reason, trigger: str, *,
                forget: Sequence[Mapping[str, str]] = (), force_mint: bool = False) -> list[WorkItem]:
        """Enqueue `envs` (grouped by shared app-settings sites); returns the items sent.

        Raises:
            azure.core.exceptions.AzureError: the queue could not be written (the caller fails, and
                its trigger is retried: a timer tick, Event Grid, the HTTP caller).
        """
        if not envs:
            return []
        if not self.ensured:
            self.queue.ensure()
            self.ensured = True
        items = plan_items(engine._site_groups(sorted(set(envs))), reason, trigger, batch=item_size(len(set(envs)), self.batch), forget=forget,
                           force_mint=force_mint)
        for item in items:
            self.queue.send(item.to_text())
        log.info("enqueued %d work items (%d envs, %s, %s)", len(items), len(set(envs)), reason, trigger)
        return items


def open_queue(broker: Any, environ: Mapping[str, str]) -> WorkQueue:
    """The work queue of the Function app's storage, with the state store's credential.

    Raises:
        QueueNotConfigured: no queue endpoint is set.
    """
    url = queue_service_url(environ, broker.clients.storage_url)
    config = broker.loaded.config
    store = config.state.store if config.state is not None else next(iter(config.secretStores))
    queue: WorkQueue = broker.clients.work_queue(url, queue_name(environ), broker.store(store).credential)
    return queue


def fanout_for(broker: Any, environ: Mapping[str, str]) -> Fanout:
    """The planners' fan-out over the work queue (batch size `VAULTRELAY_WORK_BATCH`)."""
    try:
        batch = int(environ.get(BATCH_SETTING) or DEFAULT_BATCH)
    except ValueError:
        batch = DEFAULT_BATCH
    return Fanout(open_queue(broker, environ), batch=batch)


# ---- consuming ---------------------------------------------------------------------------
@dataclass
class WorkResult:
    """What one delivery did: `done`, `requeued` (sent again with a delay), `failed` (to be
    delivered again), `poisoned` (last delivery failed), or `malformed` (acknowledged)."""

    item: str
    outcome: str
    envs: list[str] = field(default_factory=list)
    target_writes: int = 0
    state_writes: int = 0
    pushed: list[str] = field(default_factory=list)  # env->target pushed (writes > 0)
    requeued: list[str] = field(default_factory=list)
    causes: dict[str, str] = field(default_factory=dict)  # env -> failure (names and reasons only)
    delay_s: float = 0.0
    throttled: int = 0


class WorkFailed(RuntimeError):
    """An item failed (the host delivers it again; the message names envs and reasons)."""


def max_dequeue(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        return max(1, int(environ.get(MAX_DEQUEUE_SETTING) or DEFAULT_MAX_DEQUEUE))
    except ValueError:
        return DEFAULT_MAX_DEQUEUE


def _is_throttled(text: str) -> bool:
    lowered = text.lower()
    return "throttled" in lowered or "429" in lowered or "too many requests" in lowered


def _throttling(exc: BaseException) -> bool:
    """An Azure answer of 429 (or a state failure caused by one), past the retries it got."""
    if getattr(exc, "status_code", None) == 429:
        return True
    cause = exc.__cause__ or exc.__context__
    return bool(cause is not None and getattr(cause, "status_code", None) == 429) or (
        type(exc).__name__ == "StateUnavailable" and _is_throttled(str(exc)))


def requeue_delay(attempt: int, refused_s: float = 0.0) -> float:
    """Seconds before a re-enqueued item is visible: exponential in its attempts (jittered), and
    never before the longest Retry-After it refused to wait for."""
    backoff = min(REQUEUE_MAX_S, REQUEUE_BASE_S * (2 ** attempt)) * random.uniform(0.75, 1.25)
    return max(backoff, min(REQUEUE_MAX_S, math.ceil(refused_s)))


# A kept storage key listing is used by a work item only if it was made this long after the
# account's last key switch (another instance's rotation: its clock may differ a little).
SWITCH_MARGIN = timedelta(minutes=5)


def _drop_listings_older_than_key_switches(engine: Any) -> None:
    """Drop this process's kept storage key listings made before (or about when) an account's
    active key last switched, so that a work item reusing the others never signs or pushes with
    a key regenerated since it was listed (one read of the storage rotation records).

    Each item would otherwise list every account it uses afresh: two ARM list calls per account,
    against the storage resource provider's 100 lists per 5 minutes per subscription and region,
    a ceiling of a few hundred items per 5 minutes for the whole fleet.

    Raises:
        core.state.tables.StateUnavailable: the state tables failed.
    """
    from core.resolve import forget_values
    from core.sources.listed_keys import forget_listed_keys
    from core.sources.storage import STORAGE_ROTATION

    now = datetime.now(UTC)
    for row in engine.state.query("rotations", STORAGE_ROTATION):
        switched = str(row.fields.get("rotated_at") or "")
        try:
            at = datetime.fromisoformat(switched)
        except ValueError:
            continue
        fresh_after = (at if at.tzinfo else at.replace(tzinfo=UTC)) + SWITCH_MARGIN
        if forget_listed_keys(row.key, listed_before=fresh_after) or now < fresh_after:
            forget_values(account=row.key)  # values taken from such a listing (`cache.secret_cache`)


def run_item(engine: Any, item: WorkItem) -> WorkResult:
    """Sync the item's envs (those that still have targets) and sort the outcome per env."""
    from core.resolve import forget_values
    from core.sources.listed_keys import forget_listed_keys

    for forget in item.forget:
        forget_values(**forget.params())
        if forget.account:
            forget_listed_keys(forget.account)
    known = set(engine.envs_with_targets())
    envs = [e for e in dict.fromkeys(item.envs) if e in known]  # an env removed from the config is done
    result = WorkResult(item.id, "done", envs)
    if not envs:
        return result
    writes_before = engine.state.writes
    _drop_listings_older_than_key_switches(engine)
    report = engine.sync(envs=envs, force_mint=item.force_mint, reuse_listings=True, concurrency=ENV_CONCURRENCY)
    result.state_writes = engine.state.writes - writes_before
    result.target_writes = report.target_writes
    result.pushed = [f"{t.env}->{t.target}" for t in report.targets if t.writes]
    retry: dict[str, str] = {}
    for env in envs:
        targets = [t for t in report.targets if t.env == env]
        problems = list(report.failures.get(env, [])) + [f"{t.target}: {t.error}" for t in targets if t.outcome == "error" and t.error]
        if any(t.outcome == "busy" for t in targets):
            retry[env] = "busy: another consumer holds the env's lease"
        elif problems and all(_is_throttled(p) for p in problems):
            retry[env] = "throttled: " + "; ".join(problems)[:300]
            result.throttled += 1
        elif problems:
            result.causes[env] = "; ".join(problems)[:1000]
    if retry and item.attempt < MAX_REQUEUES and not result.causes:
        result.outcome = "requeued"
        result.requeued = sorted(retry)
        waits = wait_limit()
        result.delay_s = requeue_delay(item.attempt, waits.refused_s if waits is not None else 0.0)
    elif retry:
        result.causes.update({env: cause + f" (after {item.attempt} re-enqueues)" if item.attempt >= MAX_REQUEUES else cause
                              for env, cause in retry.items()})
    if result.causes:
        result.outcome = "failed"
    return result


def handle_message(engine: Any, text: str, *, dequeue_count: int, queue: WorkQueue | None, limit: int | None = None) -> WorkResult:
    """One delivery of a message, as both the queue trigger and `vaultrelay worker` run it.

    Requeued items are sent again (with `queue`) before this returns; a failure on the last
    delivery (`dequeue_count` >= `limit`) records the envs as poisoned first.

    Raises:
        WorkFailed: the item failed; deliver it again (the host does, then moves it to the poison queue).
        core.state.tables.StateUnavailable: the state tables failed (also delivered again).
    """
    limit = limit or max_dequeue()
    try:
        item = parse_item(text)
    except BadWorkItem as exc:
        # Retrying cannot fix it: acknowledged, logged without its content.
        log.error("work item dropped: %s", exc)
        return WorkResult("", "malformed", causes={"(message)": str(exc)})
    waits = WaitLimit(WAIT_MAX_S)
    try:
        with waits_at_most(waits):
            result = run_item(engine, item)
    except Exception as exc:
        if not _throttling(exc):
            raise
        # Throttled before any env could be sorted (the state vault or tables, a shared listing):
        # the whole item waits and comes back, as a throttled env does.
        result = WorkResult(item.id, "requeued", list(item.envs), requeued=list(dict.fromkeys(item.envs)), throttled=len(item.envs),
                            delay_s=requeue_delay(item.attempt, waits.refused_s))
        if item.attempt >= MAX_REQUEUES:
            result.outcome, result.causes = "failed", {env: f"throttled: {type(exc).__name__} (after {item.attempt} re-enqueues)"
                                                       for env in result.requeued}
    if result.outcome == "requeued" and queue is not None:
        again = new_item(result.requeued, item.reason, item.trigger, forget=[f.params() for f in item.forget],
                         force_mint=item.force_mint, attempt=item.attempt + 1)
        queue.send(again.to_text(), delay_s=result.delay_s)
        log.info("work item %s: %s re-enqueued as %s in %.0f s", item.id, ", ".join(result.requeued), again.id, result.delay_s)
    if result.outcome == "failed":
        if dequeue_count >= limit:
            result.outcome = "poisoned"
            for env, cause in result.causes.items():
                engine.state.record_poisoned(env, {"cause": cause, "item": item.id, "trigger": item.trigger, "reason": item.reason,
                                                   "at": datetime.now(UTC).isoformat(), "deliveries": dequeue_count})
        raise WorkFailed(f"work item {item.id} ({item.reason}, {item.trigger}): " +
                         "; ".join(f"{env}: {cause}" for env, cause in sorted(result.causes.items())))
    return result
