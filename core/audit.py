"""The audit trail: who fetched, synced or rotated what, recorded without values.

`AuditSink` is what the HTTP API writes to.  The sinks here keep records in memory (tests, a
single process), write one JSON line per record to the `vaultrelay.audit` logger (which
Application Insights collects on Azure Functions), or append a row to the state store's audit
table (`<prefix>audit`, the table sync and rotation write to).  The Function app's default is the
logger and, when the config has a `state:` section, the table (core/api.py).

The table is durable and says so: when its row cannot be written, `record` raises
`AuditWriteError`, and a fetch that would hand out values answers 503 instead (a secret broker
does not hand out secrets it cannot account for).

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
        from core.engine.sync import SyncEngine

        try:
            return SyncEngine(broker).fingerprinter, "state"
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
