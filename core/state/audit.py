"""The audit trail: who fetched, synced or rotated what, recorded without values.

`AuditSink` is what the HTTP API writes to.  The sinks here keep records in memory (tests, a
single process), write one JSON line per record to the `vaultrelay.audit` logger (which
Application Insights collects on Azure Functions), or append a row to the state store's audit
table (`<prefix>audit`, the table sync and rotation write to).  The Function app's default is the
logger and, when the config has a `state:` section, the table (`core.runtime.Runtime.audit_sink`, through the runtime's one state store).

The table is durable and says so: when its row cannot be written, `record` raises
`AuditWriteError`, and a fetch that would hand out values answers 503 instead (a secret broker
does not hand out secrets it cannot account for).

Unauthenticated requests (no token, a bad token, a malformed header) cost an attacker nothing, so
they are not a durable row each (`AnonymousAudit`): every one is counted and logged (one JSON line
on `vaultrelay.audit`), and the audit table gets at most one row per cause (`401-no_token`,
`401-invalid_token`, `400-invalid_request`) per window of `$VAULTRELAY_ANONYMOUS_AUDIT_SECONDS`
(default 60), holding the count.  Instances share that row: each merges its counts into it with
an ETag-conditional update (re-read and retried on a conflict), at most once per window and cause,
so 200 anonymous requests are a handful of table writes, not 200 rows in one partition.

A record names the actor (`oid:<object id>`, `appid:<app id>` or `anonymous`), the action
(e.g. `env.fetch`), the env and string details such as the outcome and, per variable, a keyed
fingerprint and the version: enough to tell which version someone received, never a value.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("vaultrelay.audit")

FINGERPRINT_KEY_VARIABLE = "VAULTRELAY_FINGERPRINT_KEY"


@runtime_checkable
class AuditSink(Protocol):
    """Where audit records go; never handed values.  A best-effort sink logs and drops a record
    it cannot store; a durable one raises `AuditWriteError` so the caller can refuse the action."""

    def record(self, actor: str, action: str, env: str, detail: dict[str, str]) -> None: ...


class AuditWriteError(Exception):
    """A durable sink could not store a record (the message names the action and env, never values)."""


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    env: str
    detail: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "actor": self.actor, "action": self.action, "env": self.env, "detail": dict(self.detail)}


class MemoryAuditSink:
    """The last `limit` records, in memory (thread-safe)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._records: deque[AuditRecord] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def record(self, actor: str, action: str, env: str, detail: dict[str, str]) -> None:
        entry = AuditRecord(datetime.now(UTC), actor, action, env, dict(detail))
        with self._lock:
            self._records.append(entry)

    @property
    def records(self) -> list[AuditRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class LoggingAuditSink:
    """One JSON line per record on the `vaultrelay.audit` logger, at INFO."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    def record(self, actor: str, action: str, env: str, detail: dict[str, str]) -> None:
        entry = AuditRecord(datetime.now(UTC), actor, action, env, dict(detail))
        self.logger.info("audit %s", json.dumps(entry.as_dict(), sort_keys=True))


class FanOutAuditSink:
    """Every record to each of `sinks`; one failing sink does not stop the others.

    Raises:
        AuditWriteError: a durable sink failed (after every sink was tried); other sinks'
            failures are logged and dropped.
    """

    def __init__(self, *sinks: AuditSink) -> None:
        self.sinks = sinks

    def record(self, actor: str, action: str, env: str, detail: dict[str, str]) -> None:
        durable_failure: AuditWriteError | None = None
        for sink in self.sinks:
            try:
                sink.record(actor, action, env, detail)
            except AuditWriteError as exc:
                durable_failure = durable_failure or exc
            except Exception:  # a best-effort sink must not break a fetch; the failure is logged
                log.exception("audit sink %s failed to record %s on %s", type(sink).__name__, action, env)
        if durable_failure is not None:
            raise durable_failure


class TableAuditSink:
    """Each record as a row of the state store's audit table, the rows `StateStore.audit` writes
    (`core.state.tables.audit_row`; `subject` is the env).

    `state` returns the `core.state.tables.StateStore` (called per record: it is built and its
    tables are created on first use, and that may fail like a write).
    """

    def __init__(self, state: Callable[[], Any]) -> None:
        self._state = state
        self.writes = 0

    def record(self, actor: str, action: str, env: str, detail: dict[str, str]) -> None:
        """Append the row.

        Raises:
            AuditWriteError: the state store or its audit table cannot be reached or written.
        """
        from core.state.tables import audit_row

        try:
            self._state().put("audit", audit_row(actor, action, env, detail))
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            cause = f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}"
            log.error("audit row for %s on %s could not be written: %s", action, env, cause)
            raise AuditWriteError(f"the audit record of {action} on {env} could not be written: {cause}") from None
        self.writes += 1


ANONYMOUS_ACTION = "env.fetch.unauthenticated"
ANONYMOUS_WINDOW_VARIABLE = "VAULTRELAY_ANONYMOUS_AUDIT_SECONDS"
DEFAULT_ANONYMOUS_WINDOW_S = 60.0
MAX_PENDING_WINDOWS = 64  # (window, cause) counts kept while the table cannot be written
MAX_ENV_SAMPLES = 5


def anonymous_window(environ: Mapping[str, str]) -> float:
    """`$VAULTRELAY_ANONYMOUS_AUDIT_SECONDS` (1 s to 1 day), else 60."""
    raw = (environ.get(ANONYMOUS_WINDOW_VARIABLE) or "").strip()
    try:
        value = float(raw) if raw else DEFAULT_ANONYMOUS_WINDOW_S
    except ValueError:
        log.warning("$%s is not a number of seconds; using %g", ANONYMOUS_WINDOW_VARIABLE, DEFAULT_ANONYMOUS_WINDOW_S)
        return DEFAULT_ANONYMOUS_WINDOW_S
    return min(max(value, 1.0), 86_400.0)


@dataclass
class _Pending:
    count: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    envs: list[str] = field(default_factory=list)


class AnonymousAudit:
    """Unauthenticated requests, counted: every one is logged; the audit table gets one row per
    cause and window (`<inverted window start>-anonymous-<cause>` in the day's partition) whose
    `count` every instance adds its own counts to, conditionally on the row's ETag.

    `state` returns the `core.state.tables.StateStore` (None: log only).  Nothing here raises: a
    count that cannot be stored stays pending (bounded) and is merged on a later write.
    """

    def __init__(self, state: Callable[[], Any] | None, *, window_s: float = DEFAULT_ANONYMOUS_WINDOW_S,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.time) -> None:
        self._state = state
        self.window_s = window_s
        self.logger = logger or log
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[float, str], _Pending] = {}
        self._written: dict[str, float] = {}  # cause -> the window this instance last wrote a row in
        self.counted = 0
        self.writes = 0  # table writes (tests, benchmarks)

    def record(self, cause: str, env: str, detail: Mapping[str, str] | None = None) -> None:
        """Count and log one unauthenticated request for `env` (`cause`: a short fixed name)."""
        now = self._clock()
        entry = AuditRecord(datetime.fromtimestamp(now, UTC), "anonymous", "env.fetch", env, {"outcome": "unauthenticated", "cause": cause, **(detail or {})})
        self.logger.info("audit %s", json.dumps(entry.as_dict(), sort_keys=True))
        window = now - now % self.window_s
        with self._lock:
            self.counted += 1
            pending = self._pending.setdefault((window, cause), _Pending(first_at=now))
            pending.count += 1
            pending.last_at = now
            if env not in pending.envs and len(pending.envs) < MAX_ENV_SAMPLES:
                pending.envs.append(env)
            due = self._state is not None and self._written.get(cause) != window
            if due:
                self._written[cause] = window
            while len(self._pending) > MAX_PENDING_WINDOWS:  # the table has been failing for long: oldest counts go
                oldest = min(self._pending)
                dropped = self._pending.pop(oldest)
                self.logger.warning("anonymous request counts of %s not stored (%d requests): the audit table failed", oldest[1], dropped.count)
        if due:
            self.flush()

    def flush(self) -> None:
        """Merge every pending count into its window's row (the timer calls this too)."""
        if self._state is None:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        failed: dict[tuple[float, str], _Pending] = {}
        try:
            state = self._state()
        except Exception as exc:  # the table is not there: keep the counts for a later write
            self.logger.warning("anonymous request counts not stored: %s", type(exc).__name__)
            failed = pending
        else:
            for (window, cause), counts in sorted(pending.items()):
                try:
                    self._merge(state, window, cause, counts)
                except Exception as exc:  # kept for a later write; the requests were logged
                    self.logger.warning("anonymous request count of %s not stored yet: %s", cause, type(exc).__name__)
                    failed[(window, cause)] = counts
        if failed:
            with self._lock:
                for key, counts in failed.items():
                    current = self._pending.setdefault(key, _Pending(first_at=counts.first_at))
                    current.count += counts.count
                    current.first_at = min(current.first_at, counts.first_at)
                    current.last_at = max(current.last_at, counts.last_at)
                    current.envs = (current.envs + [e for e in counts.envs if e not in current.envs])[:MAX_ENV_SAMPLES]

    def _merge(self, state: Any, window: float, cause: str, counts: _Pending) -> None:
        """Add `counts` to the row of (`window`, `cause`), created if absent; ETag-conditional.

        Raises:
            Exception: the row kept changing, or the table failed.
        """
        from core.state.tables import Conflict, Row

        start = datetime.fromtimestamp(window, UTC)
        partition = start.strftime("%Y%m%d")
        key = f"{10**13 - int(window * 1000):013d}-anonymous-{cause}"
        for _ in range(8):
            row = state.get("audit", partition, key)
            if row is None:
                row = Row(partition, key, {"actor": "anonymous", "action": ANONYMOUS_ACTION, "subject": cause,
                                           "at": start.isoformat(), "count": 0, "window_s": self.window_s,
                                           "first_at": datetime.fromtimestamp(counts.first_at, UTC).isoformat(), "envs": "[]"})
            envs = [e for e in json.loads(str(row.fields.get("envs") or "[]")) if isinstance(e, str)]
            envs = (envs + [e for e in counts.envs if e not in envs])[:MAX_ENV_SAMPLES]
            count = int(row.fields.get("count") or 0) + counts.count
            row.fields.update({"count": count, "last_at": datetime.fromtimestamp(counts.last_at, UTC).isoformat(),
                               "envs": json.dumps(envs), "detail": json.dumps({"count": count, "cause": cause, "window_s": self.window_s})})
            try:
                state.put("audit", row)
            except Conflict:
                continue  # another instance added its counts first: re-read and add ours
            self.writes += 1
            return
        raise RuntimeError(f"the anonymous request row of {cause} kept changing")


_EPHEMERAL_KEY = secrets.token_bytes(32)


def fingerprinter(broker: Any, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """The keyed fingerprinter for audit records (`.of(value)`) and where its key came from.

    With a `state:` section, the sync engine's key (`state.fingerprint_key`, else
    `$VAULTRELAY_FINGERPRINT_KEY`, else the key kept in `state.vault`), so fetch audits and push
    records fingerprint a value alike.  Without one, `$VAULTRELAY_FINGERPRINT_KEY`.  Otherwise,
    or when that key cannot be had, a random key of this process (`ephemeral`: its fingerprints
    can only be compared within one instance).
    """
    from core.state.fingerprints import Fingerprinter

    environ = os.environ if environ is None else environ
    if broker.loaded.config.state is not None:
        try:
            return broker.fingerprinter(), "state"
        except Exception as exc:  # reported, then the per-process key; the fetch itself goes on
            log.warning("the fingerprint key could not be read (%s); audit fingerprints use a per-process key", type(exc).__name__)
            return Fingerprinter(_EPHEMERAL_KEY), "ephemeral"
    from_env = environ.get(FINGERPRINT_KEY_VARIABLE)
    if from_env:
        try:
            return Fingerprinter(from_env.encode()), "environment"
        except ValueError:
            log.warning("$%s is shorter than 16 bytes; audit fingerprints use a per-process key", FINGERPRINT_KEY_VARIABLE)
    return Fingerprinter(_EPHEMERAL_KEY), "ephemeral"
