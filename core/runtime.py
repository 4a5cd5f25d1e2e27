"""One `Runtime` per config version: what every use case runs over.

It holds the loaded config and builds, each once and on first use, what the stages share: the
connections to the secret stores (`core.connections.StoreConnections`: cloud, credentials, SDK
clients from the one client factory, the env plans, the fingerprint key, the minted-value
store's state vault and kept delegation keys), the state store (ONE `StateStore`: sync, rotation,
events and the fetch audit all write through it; the audit's writes get a short retry budget per
call, not a client of their own), the target registry, the authenticator of API callers and the
audit sinks.  `close()` releases the clients and credentials.

`LiveRuntime` is the process-wide holder the Function app, its triggers and the local worker use:
it reads `$VAULTRELAY_CONFIG` (a file, checked on every use by modification time and size, or a
blob URL, checked by ETag at most every `$VAULTRELAY_CONFIG_RELOAD_SECONDS`; core/config/source.py),
builds a new Runtime when the config changes, and retires the old one once the requests still
running on it are done.  The CLI builds one Runtime from the config it loaded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from core.connections import StoreConnections
from core.errors import ConfigError, ConfigProblem
from core.state.leases import instance_id
from core.state.tables import StateStore
from core.targets.registry import TargetRegistry, default_targets

log = logging.getLogger("vaultrelay.runtime")

T = TypeVar("T")

RETIRE_AFTER_S = 60.0
MODE_SETTING = "VAULTRELAY_SYNC_MODE"


def queue_mode(environ: Mapping[str, str]) -> bool:
    """Whether planners enqueue (`VAULTRELAY_SYNC_MODE=queue`) rather than sync inline."""
    return (environ.get(MODE_SETTING) or "inline").strip().lower() == "queue"


class Runtime:
    """Everything one config version needs at run time, built once and shared by the use cases."""

    def __init__(
        self, loaded: Any = None, *, environ: Mapping[str, str] | None = None, connections: StoreConnections | None = None,
        clients: Any = None, credentials: Any = None, audit: Any = None, targets: TargetRegistry | None = None,
        owner: str | None = None, clock: Callable[[], datetime] | None = None, location: str = "",
        signature: tuple[Any, ...] = (), queue: bool = False,
    ) -> None:
        if connections is None:
            assert loaded is not None, "a Runtime needs a loaded config or its StoreConnections"
            connections = StoreConnections(loaded, environ=environ, clients=clients, credentials=credentials)
        self.connections = connections
        self.loaded = connections.loaded
        self.config = self.loaded.config
        self.environ = connections.environ if environ is None else environ
        self.clients = connections.clients
        self.targets = targets or default_targets()
        self.owner = owner or instance_id()
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.location = location
        self.signature = signature
        # Planners (the timer, POST /api/sync, events, rotations) enqueue work items instead of
        # syncing inline (the Function app with VAULTRELAY_SYNC_MODE=queue; `vaultrelay sync --queue`).
        self.queue = queue
        self._audit_override = audit  # an embedder's sink takes every fetch record
        self._state: StateStore | None = None
        self._shared: dict[str, Any] = {}
        self._lock = threading.RLock()

    # ---- the pipeline's shared parts ---------------------------------------------------
    @property
    def state(self) -> StateStore:
        """The state store (tables created on first use).

        Raises:
            ConfigError: the config has no `state:` section or no state account.
            StateUnavailable: the tables cannot be created.
        """
        store = self._state
        if store is None:
            store = self._build_state()
        store.ensure_tables()
        return store

    def _build_state(self) -> StateStore:
        settings = self.config.state
        if settings is None:
            raise ConfigError([ConfigProblem(self.loaded.file, None, "state", "sync, rotate and status need a state: section")])
        endpoint = settings.table_endpoint
        account = settings.account or self.environ.get("VAULTRELAY_STATE_ACCOUNT")
        if not endpoint and not account:
            raise ConfigError([ConfigProblem(self.loaded.file, self.loaded.line_of(("state",)), "state",
                                             "set state.account (or $VAULTRELAY_STATE_ACCOUNT) or state.table_endpoint")])
        credential = self.connections.store(settings.store).credential
        service = self.clients.table_service(str(endpoint or account), credential)
        with self._lock:
            if self._state is None:
                self._state = StateStore(service, settings.table_prefix)
            return self._state

    def audit_state(self) -> Any:
        """The state store as the fetch audit writes to it: the same store and table clients, each
        call with the client factory's short retry budget (`AzureClients.short_retry`).

        Raises:
            ConfigError: no state account; StateUnavailable: the tables cannot be created.
        """
        store = self._state or self._build_state()
        options = self.clients.short_retry()
        store.ensure_tables(**options)
        return store.with_call_options(**options)

    @property
    def fingerprinter(self) -> Any:
        """The HMAC key of this config (`StoreConnections.fingerprinter`).

        Raises:
            ConfigError: no key can be found or made.
        """
        return self.connections.fingerprinter()

    def resolve_variable(self, variable: Any, path: str) -> str:
        """A literal or a single `from:` reference (`StoreConnections.resolve_variable`).

        Raises:
            ConfigError: the reference does not resolve.
        """
        return self.connections.resolve_variable(variable, path)

    def envs_with_targets(self) -> list[str]:
        return sorted({t.env for t in self.config.targets.values()})

    def active_key(self, kind: str, account: str) -> str:
        """The key rotation keeps in use for `account` (key1/key2, primary/secondary)."""
        row = self.state.get("rotations", kind, account.lower())
        default = "key1" if kind == "storage" else "primary"
        return str(row.fields.get("active", default)) if row else default

    def shared(self, name: str, build: Callable[[], T]) -> T:
        """A part a use case keeps per runtime (the work queue's fan-out, the event index), built once."""
        with self._lock:
            if name not in self._shared:
                self._shared[name] = build()
            return self._shared[name]  # type: ignore[no-any-return]

    # ---- callers of the HTTP API -----------------------------------------------------------
    def authenticator(self) -> Any:
        """The authenticator of API callers in the config's `api.auth_mode` (core.access)."""
        from core.access import Authenticator, audiences_from, tenant_from

        def build() -> Any:
            api = self.config.api
            return Authenticator(api.auth_mode, authority=self.connections.cloud.authority, tenant_id=tenant_from(self.environ),
                                 audiences=audiences_from(api.audience, self.environ), environ=self.environ)

        return self.shared("authenticator", build)

    def audit_sink(self) -> Any:
        """Where fetch and admin records go: an embedder's sink when one was given; else the
        `vaultrelay.audit` log and, with a `state:` section, the audit table (durable: a failed
        row write raises AuditWriteError)."""
        if self._audit_override is not None:
            return self._audit_override
        from core.state.audit import FanOutAuditSink, LoggingAuditSink, TableAuditSink

        def build() -> Any:
            if self.config.state is not None:
                return FanOutAuditSink(LoggingAuditSink(), TableAuditSink(self.audit_state))
            return LoggingAuditSink()

        return self.shared("audit_sink", build)

    @property
    def audit_overridden(self) -> bool:
        return self._audit_override is not None

    def anonymous_audit(self) -> Any:
        """Counts of unauthenticated requests: logged each, stored as one row per cause and
        window in the audit table (with a `state:` section)."""
        from core.state.audit import AnonymousAudit, anonymous_window

        return self.shared("anonymous_audit", lambda: AnonymousAudit(
            self.audit_state if self.config.state is not None else None, window_s=anonymous_window(self.environ)))

    def audit_fingerprinter(self) -> tuple[Any, str]:
        """The fetch audit's fingerprinter and where its key came from (core.state.audit.fingerprinter)."""
        from core.state.audit import fingerprinter

        return self.shared("audit_fingerprinter", lambda: fingerprinter(self.connections, self.environ))

    def close(self) -> None:
        self.connections.close()


class ConfigUnavailable(Exception):
    """The config cannot be loaded; the message is for logs (it names the file, never values)."""


class LiveRuntime:
    """The Runtime of the current config version, for one process (the Function app, the worker)."""

    def __init__(self, *, environ: Mapping[str, str] | None = None, audit: Any = None,
                 connections_factory: Callable[[Any], StoreConnections] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self._audit = audit
        self._connections_factory = connections_factory
        self._runtime: Runtime | None = None
        self._source: Any = None  # core.config.source.ConfigSource
        self._failed: tuple[str, tuple[Any, ...], str] | None = None
        self._lock = threading.Lock()

    def _config_source(self) -> Any:
        """The source `$VAULTRELAY_CONFIG` names (kept while the setting is unchanged).

        Raises:
            ConfigUnavailable: the setting is not a usable path or blob URL.
        """
        from core.config.source import ConfigSourceError, config_location, open_source

        location = config_location(self.environ)
        with self._lock:
            if self._source is not None and self._source.location == location:
                return self._source
            try:
                source = open_source(self.environ)
            except ConfigSourceError as exc:
                raise ConfigUnavailable(str(exc)) from None
            old, self._source = self._source, source
        if old is not None:
            old.close()
        return source

    def source_status(self) -> dict[str, Any]:
        """The config source's health (a blob that cannot be re-read leaves the last good config serving)."""
        return self._source.status() if self._source is not None else {"kind": "file", "ok": True}

    def current(self) -> Runtime:
        """The runtime of the current config version, rebuilt when the file (modification time,
        size) or the blob (ETag) changed.

        Raises:
            ConfigUnavailable: the config cannot be read (and no version was read before), or the
                current version is invalid (fails closed until it changes again).
        """
        from core.config.source import ConfigSourceError, load_snapshot

        source = self._config_source()
        try:
            snapshot = source.snapshot()
        except ConfigSourceError as exc:
            raise ConfigUnavailable(str(exc)) from None
        with self._lock:
            current = self._runtime
            if current is not None and current.location == snapshot.location and current.signature == snapshot.signature:
                return current
            if self._failed is not None and self._failed[:2] == (snapshot.location, snapshot.signature):
                raise ConfigUnavailable(self._failed[2])
            try:
                loaded = load_snapshot(snapshot, self.environ)
                connections = (self._connections_factory(loaded) if self._connections_factory is not None
                               else StoreConnections(loaded, environ=self.environ))
            except ConfigError as exc:
                # Fail closed (an edit may have revoked access) until the config changes again.
                self._failed = (snapshot.location, snapshot.signature, str(exc))
                raise ConfigUnavailable(str(exc)) from None
            self._failed = None
            runtime = self._runtime = Runtime(connections=connections, environ=self.environ, audit=self._audit,
                                              location=snapshot.location, signature=snapshot.signature,
                                              queue=queue_mode(self.environ))
        if current is not None:
            # Requests still running on the old runtime keep using it; close it once they are done
            # (and store the old config's pending counts of unauthenticated requests).
            def retire(old: Runtime = current) -> None:
                old.anonymous_audit().flush()
                old.close()

            timer = threading.Timer(RETIRE_AFTER_S, retire)
            timer.daemon = True
            timer.start()
        log.info("config %s loaded (%d envs)", snapshot.location, len(loaded.config.envs))
        return runtime

    def flush_audit(self) -> None:
        """Store the pending counts of unauthenticated requests now (the timer does it each tick)."""
        runtime = self._runtime
        if runtime is not None:
            runtime.anonymous_audit().flush()

    def close(self) -> None:
        with self._lock:
            if self._runtime is not None:
                self._runtime.close()
                self._runtime = None
            source, self._source = self._source, None
        if source is not None:
            source.close()


_DEFAULT: LiveRuntime | None = None
_DEFAULT_LOCK = threading.Lock()


def live_runtime() -> LiveRuntime:
    """The process-wide LiveRuntime (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = LiveRuntime()
        return _DEFAULT


def set_live_runtime(live: LiveRuntime | None) -> LiveRuntime | None:
    """Replace the process-wide LiveRuntime (e.g. to plug in another audit sink); returns the old one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        old, _DEFAULT = _DEFAULT, live
        return old
