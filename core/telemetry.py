"""Telemetry: the operation context of log records, metrics, and Azure Monitor when configured.

* **Operation context.** The function shells run each invocation inside `invocation(...)`: every
  log record created meanwhile (vaultrelay's and the SDKs') carries `vaultrelay.operation_id`
  (the W3C trace id of the host's `traceparent`, i.e. Application Insights' operation id, else
  the invocation id), `vaultrelay.invocation_id`, `vaultrelay.function` and, once known,
  `vaultrelay.env`, `vaultrelay.target`, `vaultrelay.outcome` (`annotate(...)`).  They are log
  record attributes, which the OpenTelemetry log handler exports as custom dimensions.
  `fields(env=..., target=...)` scopes fields to a block (the engine wraps each env and each
  target's plan/push in it), in an invocation or not (the CLI's records carry them too).
* **Metrics** through the OpenTelemetry metrics API only (a no-op until a meter provider is
  set): `vaultrelay.pushes` {target.kind, outcome}, `vaultrelay.rotations` {rotation.kind,
  outcome}, `vaultrelay.failures` {reason, stage} and the histogram `vaultrelay.resolve.duration`
  (seconds) {outcome}.  Attribute values are names from a fixed vocabulary; anything else is
  recorded as `other`, so a value can never become a metric attribute.
* **Azure Monitor.** With `APPLICATIONINSIGHTS_CONNECTION_STRING` set, the first invocation calls
  `azure.monitor.opentelemetry.configure_azure_monitor` (not at import: cold starts), with the
  app's managed identity when `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` says `Authorization=AAD`.
  Skipped when the Functions worker already did it (`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`).

Nothing here raises to its caller: a telemetry failure is logged once and the request goes on.
Importing this module imports no OpenTelemetry package.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vaultrelay.telemetry")

CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_STRING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
WORKER_TELEMETRY = "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"
PREFIX = "vaultrelay."
FIELDS = ("env", "target", "outcome")

_SAFE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


# ---- operation context of log records ---------------------------------------------------------
@dataclass
class Operation:
    """One function invocation, as log records see it."""

    operation_id: str
    invocation_id: str
    function: str
    fields: dict[str, str] = field(default_factory=dict)

    def attributes(self) -> dict[str, str]:
        found = {f"{PREFIX}operation_id": self.operation_id, f"{PREFIX}invocation_id": self.invocation_id,
                 f"{PREFIX}function": self.function}
        found.update({f"{PREFIX}{k}": v for k, v in self.fields.items()})
        return found


_current: contextvars.ContextVar[Operation | None] = contextvars.ContextVar("vaultrelay_operation", default=None)
# Record attributes of the enclosing `fields(...)` blocks (never mutated: each block sets a new dict).
_scoped: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("vaultrelay_fields", default=None)
_factory_lock = threading.Lock()
_factory_installed = False


def current() -> Operation | None:
    """The invocation running in this context, if any."""
    return _current.get()


def _install_record_factory() -> None:
    """Wrap the log record factory once so that records carry the current operation.  A record
    factory (not a Filter) because logger filters do not apply to child loggers' records."""
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            operation = _current.get()
            if operation is not None:
                record.__dict__.update(operation.attributes())
            scoped = _scoped.get()
            if scoped:
                record.__dict__.update(scoped)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def safe_name(value: object) -> str:
    """`value` if it is a short name (letters, digits, `_.:-`), else `other`."""
    text = str(value)
    return text if _SAFE.match(text) else "other"


def annotate(**fields: object) -> None:
    """Add structured fields (`env`, `target`, `outcome`) to the current invocation's records."""
    operation = _current.get()
    if operation is None:
        return
    for key, value in fields.items():
        if key in FIELDS and value is not None:
            operation.fields[key] = safe_name(value)


@contextmanager
def fields(**values: object) -> Iterator[None]:
    """Structured fields (`env`, `target`, `outcome`) on every log record created in this context
    (resolve threads included) until the block ends; an enclosing block's fields come back after
    it.  Works outside an invocation too (the CLI).  Values that are not short names are `other`."""
    added = {f"{PREFIX}{k}": safe_name(v) for k, v in values.items() if k in FIELDS and v is not None}
    if not added:
        yield
        return
    _install_record_factory()
    token = _scoped.set({**(_scoped.get() or {}), **added})
    try:
        yield
    finally:
        _scoped.reset(token)


def _operation_ids(context: Any) -> tuple[str, str]:
    invocation_id = str(getattr(context, "invocation_id", "") or "") or uuid.uuid4().hex
    trace = getattr(context, "trace_context", None)
    parent = str(getattr(trace, "trace_parent", "") or getattr(trace, "Traceparent", "") or "").strip().lower()
    match = _TRACEPARENT.match(parent)
    return (match.group(1) if match else invocation_id), invocation_id


@contextmanager
def invocation(context: Any, function: str, **fields: object) -> Iterator[Operation]:
    """Run one invocation: telemetry configured (first time), records tagged, a span opened as
    a child of the host's `traceparent` when tracing is configured.  `context` is the
    azure.functions Context (None when a test calls the function directly)."""
    ensure_configured()
    _install_record_factory()
    operation_id, invocation_id = _operation_ids(context)
    operation = Operation(operation_id, invocation_id, function)
    token = _current.set(operation)
    annotate(**fields)
    span = _start_span(context, function)
    try:
        yield operation
    finally:
        if span is not None:
            try:
                span.__exit__(None, None, None)
            except Exception:  # noqa: S110 (telemetry never breaks a request)
                pass
        _current.reset(token)


def _start_span(context: Any, function: str) -> Any:
    if not _state.configured:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        trace_context = getattr(context, "trace_context", None)
        carrier = {"traceparent": str(getattr(trace_context, "trace_parent", "") or "")}
        state = str(getattr(trace_context, "trace_state", "") or "")
        if state:
            carrier["tracestate"] = state
        parent = TraceContextTextMapPropagator().extract(carrier)
        manager = trace.get_tracer("vaultrelay").start_as_current_span(function, context=parent)
        manager.__enter__()
        return manager
    except Exception as exc:
        _warn_once("span", exc)
        return None


# ---- Azure Monitor ------------------------------------------------------------------------------
@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    attempted: bool = False
    configured: bool = False
    reason: str = "not attempted"
    warned: set[str] = field(default_factory=set)


_state = _State()


def status() -> dict[str, Any]:
    """Whether Azure Monitor export is on, and why not (for logs and tests; no secrets)."""
    return {"azure_monitor": _state.configured, "reason": _state.reason}


def ensure_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Configure Azure Monitor export once per process when a connection string is set.
    Returns whether it is configured; failures are logged and leave telemetry off."""
    if _state.attempted:
        return _state.configured
    with _state.lock:
        if _state.attempted:
            return _state.configured
        environ = os.environ if environ is None else environ
        try:
            _state.configured, _state.reason = _configure(environ)
        except Exception as exc:  # the exporter must never break a request
            _state.configured, _state.reason = False, f"configuration failed ({type(exc).__name__})"
            log.warning("Azure Monitor telemetry is off: %s", _state.reason)
        _state.attempted = True
        return _state.configured


def _configure(environ: Mapping[str, str]) -> tuple[bool, str]:
    connection = (environ.get(CONNECTION_STRING) or "").strip()
    if not connection:
        return False, f"${CONNECTION_STRING} is not set"
    if (environ.get(WORKER_TELEMETRY) or "").strip().lower() == "true":
        return False, f"the Functions worker exports telemetry (${WORKER_TELEMETRY})"
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {"connection_string": connection, "logger_name": "vaultrelay"}
    if "authorization=aad" in (environ.get(AUTHENTICATION_STRING) or "").replace(" ", "").lower():
        from core.identity import app_credential

        options["credential"] = app_credential(environ)
    configure_azure_monitor(**options)
    log.info("Azure Monitor telemetry is on (logs of vaultrelay.*, traces, metrics)")
    return True, "configured"


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _state.warned:
        _state.warned.add(what)
        log.warning("telemetry %s failed (%s); telemetry goes on without it", what, type(exc).__name__)


# ---- metrics ------------------------------------------------------------------------------------
class _Instruments:
    def __init__(self, provider: Any) -> None:
        meter = provider.get_meter("vaultrelay")
        self.pushes = meter.create_counter("vaultrelay.pushes", unit="{push}", description="target pushes by target kind and outcome")
        self.rotations = meter.create_counter("vaultrelay.rotations", unit="{rotation}", description="key rotations by kind and outcome")
        self.failures = meter.create_counter("vaultrelay.failures", unit="{failure}", description="failures by reason and stage")
        self.resolve = meter.create_histogram("vaultrelay.resolve.duration", unit="s", description="time to resolve one env")
        self.drift = meter.create_counter("vaultrelay.drift", unit="{name}", description="names found drifted, by target kind and policy")
        self.notifications = meter.create_counter("vaultrelay.notifications", unit="{notification}",
                                                  description="notifications by event and outcome (sent, failed)")
        self.expiring = meter.create_counter("vaultrelay.expiring", unit="{item}",
                                             description="things found expiring within the window by kind and renewable (true, false)")


_instruments_lock = threading.Lock()
_instruments: _Instruments | None = None
_provider_override: Any = None
_metrics_unavailable = False


def use_meter_provider(provider: Any) -> None:
    """Record metrics with `provider` (None: the global OpenTelemetry provider again)."""
    global _instruments, _provider_override
    with _instruments_lock:
        _provider_override = provider
        _instruments = None


def _get() -> _Instruments | None:
    global _instruments, _metrics_unavailable
    if _instruments is not None or _metrics_unavailable:
        return _instruments
    with _instruments_lock:
        if _instruments is None and not _metrics_unavailable:
            try:
                provider = _provider_override
                if provider is None:
                    from opentelemetry import metrics

                    provider = metrics.get_meter_provider()
                _instruments = _Instruments(provider)
            except ImportError:
                _metrics_unavailable = True  # opentelemetry-api not installed: metrics are off
    return _instruments


def _record(what: str, action: Any) -> None:
    try:
        instruments = _get()
        if instruments is not None:
            action(instruments)
    except Exception as exc:
        _warn_once(what, exc)


def record_push(target_kind: str, outcome: str) -> None:
    """One target of a sync: `outcome` is the TargetReport's (pushed, unchanged, error, ...)."""
    attributes = {"target.kind": safe_name(target_kind), "outcome": safe_name(outcome)}
    _record("push metric", lambda i: i.pushes.add(1, attributes))
    if outcome == "error":
        record_failure("target_error", "push")


def record_rotation(kind: str, outcome: str) -> None:
    """One key rotation: `kind` storage, cosmos, sas, ...; `outcome` the RotationReport's."""
    attributes = {"rotation.kind": safe_name(kind), "outcome": safe_name(outcome)}
    _record("rotation metric", lambda i: i.rotations.add(1, attributes))
    if outcome == "error":
        record_failure("rotation_error", "rotate")


def record_failure(reason: str, stage: str) -> None:
    """A failure: `reason` a short name (not_found, access_denied, ...), `stage` resolve, push, rotate, audit."""
    attributes = {"reason": safe_name(reason), "stage": safe_name(stage)}
    _record("failure metric", lambda i: i.failures.add(1, attributes))


def record_resolve(seconds: float, *, failed: bool = False) -> None:
    """One env resolved in `seconds` (`failed`: some variable did not resolve)."""
    attributes = {"outcome": "failed" if failed else "ok"}
    _record("resolve metric", lambda i: i.resolve.record(max(0.0, float(seconds)), attributes))


def record_drift(target_kind: str, names: int, *, repaired: bool) -> None:
    """Drifted names of one target in one sync (`repaired`: drift_policy repair wrote them back)."""
    attributes = {"target.kind": safe_name(target_kind), "repaired": "true" if repaired else "false"}
    _record("drift metric", lambda i: i.drift.add(names, attributes))


def record_notification(event: str, *, sent: bool) -> None:
    """One notification: `event` push_failed, drift_found, rotation_done, rotation_failed, expiring."""
    attributes = {"event": safe_name(event), "outcome": "sent" if sent else "failed"}
    _record("notification metric", lambda i: i.notifications.add(1, attributes))


def record_expiring(kind: str, *, renewable: bool) -> None:
    """One thing found expiring within the window (the sync's or status's check)."""
    attributes = {"kind": safe_name(kind), "renewable": "true" if renewable else "false"}
    _record("expiring metric", lambda i: i.expiring.add(1, attributes))


def record_sync(report: Any) -> None:
    """A sync's pushes (each TargetReport's kind and outcome) and the resolution failures it met
    (`report.failures`: env -> ["NAME: reason", ...])."""
    try:
        for target in report.targets:
            record_push(target.kind, target.outcome)
            if target.drift:
                record_drift(target.kind, len(target.drift), repaired=bool(target.repaired))
        for failing in report.failures.values():
            for item in failing:
                record_failure(str(item).rpartition(": ")[2], "resolve")
    except Exception as exc:
        _warn_once("sync metrics", exc)
