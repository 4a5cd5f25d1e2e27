"""The HTTP API without a web framework: requests in (path parameter, query, headers), status,
headers and body out.  `functions/http_api.py` and `functions/health.py` are thin shells over it,
and tests can drive it directly.

* `GET /api/envs/{env}`: the resolved env in `format=json|dotenv|shell` (or by `Accept`), with
  `Cache-Control: no-store`.  No token: 401 with a `WWW-Authenticate: Bearer` challenge.  A caller
  not in the env's `access:` list and an env that does not exist get the same 403 body, so
  callers cannot find out which envs exist.  If any variable fails: 502 with the variables'
  names and failure reasons (never values, never partial bundles).  Every fetch is audited; a
  fetch whose audit record cannot be stored answers 503 and returns nothing (fails closed).
  Unauthenticated requests are counted and logged, and stored as one row per cause and window
  (`core.state.audit.AnonymousAudit`), not one row each.
* `GET /api/health?deep=1`: readiness: the config loads and every store's identity can get a
  token for each audience the config needs from it.  Anonymous callers get only ok / not ok; the
  detail (config source, stores, audiences) is for admins (tokens and values are never shown).

One `ApiContext` (config, StoreConnections, authenticator) is kept per process and config version; it is
rebuilt when the version changes.  The config is `$VAULTRELAY_CONFIG`, a file path (checked on
every request: modification time, size) or a blob URL (checked by ETag at most every
`$VAULTRELAY_CONFIG_RELOAD_SECONDS`; see core/config/source.py), else `vaultrelay.yaml`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.render import FORMATS, MEDIA_TYPES, UnrepresentableValue, negotiate, render
from core.state.audit import AnonymousAudit, AuditSink, AuditWriteError, LoggingAuditSink, anonymous_window

log = logging.getLogger("vaultrelay.api")

FETCH_ACTION = "env.fetch"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"}
FORBIDDEN_BODY = {"error": "forbidden", "message": "the caller may not fetch this env, or it does not exist"}
MAX_ENV_LENGTH = 128
AUDIT_UNAVAILABLE_BODY = {"error": "unavailable", "message": "the fetch could not be audited, so nothing is returned; try again later"}


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: bytes
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; charset=utf-8"

    @classmethod
    def json(cls, status: int, document: Any, headers: Mapping[str, str] | None = None) -> ApiResponse:
        return cls(status, (json.dumps(document, sort_keys=True) + "\n").encode(), "application/json", {**NO_STORE, **(headers or {})})


@dataclass
class ApiContext:
    """What one config file gives the API: the loaded config, its StoreConnections and authenticator."""

    loaded: Any  # core.config.LoadedConfig
    broker: Any  # core.plan.StoreConnections
    signature: tuple[Any, ...]
    location: str = ""
    _authenticator: Any = None
    _fingerprinter: tuple[Any, str] | None = None
    _engine: Any = None  # core.push.SyncEngine, built on first use
    _events: Any = None  # core.app.events.KeyVaultEvents
    _audit_sink: AuditSink | None = None
    _anonymous_audit: AnonymousAudit | None = None
    _audit_state: Any = None  # core.state.tables.StateStore
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticator(self, environ: Mapping[str, str]) -> Any:
        from core.access import Authenticator, audiences_from, tenant_from

        with self._lock:
            if self._authenticator is None:
                api = self.loaded.config.api
                self._authenticator = Authenticator(
                    api.auth_mode, authority=self.broker.cloud.authority, tenant_id=tenant_from(environ),
                    audiences=audiences_from(api.audience, environ), environ=environ,
                )
            return self._authenticator

    def engine(self) -> Any:
        """The SyncEngine over this config (state, sync, rotation, events)."""
        from core.push import SyncEngine

        with self._lock:
            engine = self._engine
            if engine is None:
                engine = SyncEngine(self.broker)
                from core.app.work import fanout_for, queue_mode

                if queue_mode(self.broker.environ):
                    # Planners (timer, POST /api/sync, events, rotations) enqueue work items.
                    engine.fanout = fanout_for(self.broker, self.broker.environ)
                self._engine = engine
            return engine

    def worker_engine(self) -> Any:
        """A SyncEngine for one work item (the queue trigger may run several at once on one
        instance: an engine holds one sync's working set), sharing this config's state store
        and fingerprint key; it syncs inline, never enqueues."""
        from core.push import SyncEngine

        shared = self.engine()
        engine = SyncEngine(self.broker, state=shared.state)
        engine._fingerprinter = shared._fingerprinter  # None until one sync fetched it (then shared)
        return engine

    def audit_sink(self) -> AuditSink:
        """The default audit: the `vaultrelay.audit` log and, with a `state:` section, the state
        store's audit table (durable: a failed row write raises AuditWriteError)."""
        from core.state.audit import FanOutAuditSink, TableAuditSink

        with self._lock:
            sink = self._audit_sink
            if sink is None:
                if self.loaded.config.state is not None:
                    sink = FanOutAuditSink(LoggingAuditSink(), TableAuditSink(self.audit_state))
                else:
                    sink = LoggingAuditSink()
                self._audit_sink = sink
            return sink

    def anonymous_audit(self, window_s: float) -> AnonymousAudit:
        """Counts of unauthenticated requests: logged each, stored as one row per cause and
        window in the audit table (with a `state:` section)."""
        with self._lock:
            audit = self._anonymous_audit
            if audit is None:
                audit = AnonymousAudit(self.audit_state if self.loaded.config.state is not None else None, window_s=window_s)
                self._anonymous_audit = audit
            return audit

    def audit_state(self) -> Any:
        """The state store (`core.state.tables.StateStore`) the fetch audit writes to: the
        engine's tables, through a client with a short retry budget (the write is on a fetch's
        path: better a quick 503 than a caller waiting out storage's long backoff).

        Raises:
            ConfigError: no state account; StateUnavailable or an SDK error: the tables cannot be created.
        """
        with self._lock:
            store = self._audit_state
        if store is None:

            from core.errors import ConfigError, ConfigProblem
            from core.state.tables import StateStore

            settings = self.loaded.config.state
            assert settings is not None
            where = settings.table_endpoint or settings.account or self.broker.environ.get("VAULTRELAY_STATE_ACCOUNT")
            if not where:
                raise ConfigError([ConfigProblem(self.loaded.file, None, "state", "set state.account (or $VAULTRELAY_STATE_ACCOUNT) or state.table_endpoint")])
            service = self.broker.clients.audit_table_service(str(where), self.broker.store(settings.store).credential)
            store = StateStore(service, settings.table_prefix)
            with self._lock:
                if self._audit_state is None:
                    self._audit_state = store
                store = self._audit_state
        store.ensure_tables()
        return store

    def fingerprinter(self, environ: Mapping[str, str]) -> tuple[Any, str]:
        from core.state.audit import fingerprinter

        with self._lock:
            if self._fingerprinter is None:
                self._fingerprinter = fingerprinter(self.broker, environ)
            return self._fingerprinter


class ConfigUnavailable(Exception):
    """The config cannot be loaded; the message is for logs (it names the file, never values)."""


class HttpApi:
    """The HTTP API of one process."""

    def __init__(
        self, *, environ: Mapping[str, str] | None = None, audit: AuditSink | None = None,
        broker_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        # An explicit sink replaces the default (the log plus, with state, the audit table).
        self._audit_override = audit
        self._logging_audit = LoggingAuditSink()
        self._broker_factory = broker_factory
        self._anonymous_window = anonymous_window(self.environ)
        self._context: ApiContext | None = None
        self._source: Any = None  # core.config.source.ConfigSource
        self._failed: tuple[str, tuple[Any, ...], str] | None = None
        self._lock = threading.Lock()

    # ---- the config, per version ------------------------------------------------------------
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

    def context(self) -> ApiContext:
        """The context of the current config version, rebuilt when the file (modification time,
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
            current = self._context
            if current is not None and current.location == snapshot.location and current.signature == snapshot.signature:
                return current
            if self._failed is not None and self._failed[:2] == (snapshot.location, snapshot.signature):
                raise ConfigUnavailable(self._failed[2])
            from core.errors import ConfigError

            try:
                loaded = load_snapshot(snapshot, self.environ)
                broker = self._make_broker(loaded)
            except ConfigError as exc:
                # Fail closed (an edit may have revoked access) until the config changes again.
                self._failed = (snapshot.location, snapshot.signature, str(exc))
                raise ConfigUnavailable(str(exc)) from None
            self._failed = None
            context = self._context = ApiContext(loaded=loaded, broker=broker, signature=snapshot.signature,
                                                 location=snapshot.location)
        if current is not None:
            # Requests still running on the old StoreConnections keep using it; close it once they are done
            # (and store the old config's pending counts of unauthenticated requests).
            def retire(old: ApiContext = current) -> None:
                old.anonymous_audit(self._anonymous_window).flush()
                old.broker.close()

            timer = threading.Timer(60.0, retire)
            timer.daemon = True
            timer.start()
        log.info("config %s loaded (%d envs)", snapshot.location, len(loaded.config.envs))
        return context

    def _make_broker(self, loaded: Any) -> Any:
        if self._broker_factory is not None:
            return self._broker_factory(loaded)
        from core.connections import StoreConnections

        return StoreConnections(loaded, environ=self.environ)

    def close(self) -> None:
        with self._lock:
            if self._context is not None:
                self._context.broker.close()
                self._context = None
            source, self._source = self._source, None
        if source is not None:
            source.close()

    # ---- GET /api/envs/{env} -------------------------------------------------------------
    def fetch_env(self, env: str, *, query: Mapping[str, str], headers: Mapping[str, str]) -> ApiResponse:
        """Answer `GET /api/envs/{env}`; `headers` may have names in any case."""
        from core import telemetry

        telemetry.annotate(env=env)
        response = self._fetch_env(env, query, headers)
        telemetry.annotate(outcome=str(response.status))
        log.info("GET /api/envs/%s: %d", telemetry.safe_name(env), response.status)
        return response

    def _fetch_env(self, env: str, query: Mapping[str, str], headers: Mapping[str, str]) -> ApiResponse:
        from core import telemetry
        from core.access import AuthError, AuthUnavailable, may_fetch

        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        try:
            context = self.context()
        except ConfigUnavailable as exc:
            log.error("env fetch refused: %s", exc)
            return ApiResponse.json(503, {"error": "unavailable", "message": "the config cannot be loaded"}, {"Retry-After": "30"})
        try:
            principal = context.authenticator(self.environ).authenticate(lowered)
        except AuthError as exc:
            if self._audit_override is not None:  # an embedder's sink takes every record
                self._audit(context, "anonymous", env, {"outcome": "unauthenticated", "status": str(exc.status)})
            else:  # counted and logged; stored as one row per cause and window, not one per request
                cause = f"{exc.status}-{exc.error or 'no_token'}"
                context.anonymous_audit(self._anonymous_window).record(cause, _printable(env), {"status": str(exc.status)})
            body = {"error": "unauthorized" if exc.status == 401 else "bad_request", "message": exc.description}
            return ApiResponse.json(exc.status, body, {"WWW-Authenticate": exc.www_authenticate})
        except AuthUnavailable as exc:
            log.error("env fetch refused: %s", exc)
            return ApiResponse.json(503, {"error": "unavailable", "message": exc.public}, {"Retry-After": "30"})
        config = context.loaded.config
        if env not in config.envs or not may_fetch(config.access_ids, env, principal):
            self._audit(context, principal.actor, env, {"outcome": "denied", "via": principal.via})
            return ApiResponse.json(403, FORBIDDEN_BODY)
        fmt, problem = _format(query, lowered)
        if fmt is None:
            status = 406 if problem == "accept" else 400
            message = ("no acceptable representation: use application/json, text/plain or text/x-shellscript"
                       if status == 406 else f"format must be one of {', '.join(FORMATS)}")
            return ApiResponse.json(status, {"error": "not_acceptable" if status == 406 else "bad_request", "message": message})
        from core.errors import NotFoundError

        began = time.perf_counter()
        try:
            bundle = context.broker.resolve(env)
        except NotFoundError:
            self._audit(context, principal.actor, env, {"outcome": "denied", "via": principal.via})
            return ApiResponse.json(403, FORBIDDEN_BODY)
        telemetry.record_resolve(time.perf_counter() - began, failed=bool(bundle.failures))
        if bundle.failures:
            for failure in bundle.failures.values():
                telemetry.record_failure(failure.reason, "resolve")
            failures = [{"name": name, "reason": bundle.failures[name].reason} for name in sorted(bundle.failures)]
            for name in sorted(bundle.failures):
                log.warning("env %s: %s", env, bundle.failures[name])
            self._audit(context, principal.actor, env, {
                "outcome": "failed", "via": principal.via, "failed": ",".join(f["name"] for f in failures),
            })
            return ApiResponse.json(502, {"error": "resolution_failed", "env": env, "failures": failures})
        try:
            text = render(bundle.as_plain_dict(), fmt)
        except UnrepresentableValue as exc:
            # Names and reasons only; the caller can ask for a format that carries any value.
            self._audit(context, principal.actor, env, {
                "outcome": "not_representable", "via": principal.via, "format": fmt, "failed": ",".join(exc.problems),
            })
            return ApiResponse.json(406, {"error": "not_acceptable", "message": f"{exc}; ask for format=json"})
        prints, key_source = context.fingerprinter(self.environ)
        detail = {"outcome": "ok", "via": principal.via, "format": fmt, "variables": str(len(bundle.values)),
                  "fingerprint_key": key_source}
        for name, item in sorted(bundle.values.items()):
            detail[f"fp.{name}"] = prints.of(item.value)
            if item.version:
                detail[f"version.{name}"] = str(item.version)
        try:
            self._audit(context, principal.actor, env, detail, required=True)
        except Exception:
            # No values without an audit record: fail closed (logged by the sink, without values).
            telemetry.record_failure("audit_unavailable", "audit")
            return ApiResponse.json(503, AUDIT_UNAVAILABLE_BODY, {"Retry-After": "30"})
        return ApiResponse(200, text.encode(), MEDIA_TYPES[fmt], {**NO_STORE, "Vary": "Accept, Authorization"})

    def audit_sink(self, context: ApiContext | None = None) -> AuditSink:
        """Where this process's audit records go (for `context`'s config)."""
        if self._audit_override is not None:
            return self._audit_override
        return context.audit_sink() if context is not None else self._logging_audit

    def flush_audit(self) -> None:
        """Store the pending counts of unauthenticated requests now (the timer does it each tick)."""
        context = self._context
        if context is not None:
            context.anonymous_audit(self._anonymous_window).flush()

    def _audit(self, context: ApiContext, actor: str, env: str, detail: dict[str, str], *, required: bool = False) -> None:
        """Record a fetch.  A failure is logged; with `required` (values are about to be handed
        out) it is raised as well.

        Raises:
            AuditWriteError: `required` and the record could not be stored.
        """
        safe_env = _printable(env)
        try:
            self.audit_sink(context).record(actor, FETCH_ACTION, safe_env, detail)
        except Exception as exc:  # a broken sink must not turn a fetch into a 500; it is logged
            if not isinstance(exc, AuditWriteError):
                log.exception("audit sink failed for %s on env %s", FETCH_ACTION, safe_env)
            if required:
                raise AuditWriteError(f"{FETCH_ACTION} on {safe_env} was not audited") from None

    # ---- admin routes: POST /sync[/{env}], POST /rotate/{name}, GET /status ----------------
    def admin(self, action: str, *, headers: Mapping[str, str], env: str | None = None, name: str | None = None,
              query: Mapping[str, str] | None = None) -> ApiResponse:
        """Run `sync`, `rotate`, `accept_drift` or `status` for an admin caller; answers carry names, never values."""
        from core.access import AuthError, AuthUnavailable, is_admin

        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        try:
            context = self.context()
        except ConfigUnavailable as exc:
            log.error("%s refused: %s", action, exc)
            return ApiResponse.json(503, {"error": "unavailable", "message": "the config cannot be loaded"}, {"Retry-After": "30"})
        try:
            principal = context.authenticator(self.environ).authenticate(lowered)
        except AuthError as exc:
            body = {"error": "unauthorized" if exc.status == 401 else "bad_request", "message": exc.description}
            return ApiResponse.json(exc.status, body, {"WWW-Authenticate": exc.www_authenticate})
        except AuthUnavailable as exc:
            log.error("%s refused: %s", action, exc)
            return ApiResponse.json(503, {"error": "unavailable", "message": exc.public}, {"Retry-After": "30"})
        api = context.loaded.config.api
        if not is_admin(api.admin_ids, api.admin_role, principal):
            self._record(context, principal.actor, f"admin.{action}", env or name or "", {"outcome": "denied"})
            return ApiResponse.json(403, {"error": "forbidden", "message": "this route needs an admin (api.admins or the admin role)"})
        from core.errors import ConfigError, NotFoundError

        try:
            engine = context.engine()
            if action == "sync":
                dry_run = str((query or {}).get("dry_run", "")).lower() in ("1", "true", "yes")
                if engine.fanout is not None and not dry_run:
                    envs = engine.envs_with_targets()
                    if env is not None and env not in envs:
                        raise NotFoundError(f"env '{env}' has no targets")
                    items = engine.request_sync([env] if env is not None else envs, reason="requested",
                                                trigger=_printable(f"http:{principal.actor}")[:200])
                    self._record(context, principal.actor, "admin.sync", env or "", {"outcome": "202"})
                    return ApiResponse.json(202, {"enqueued": [{"id": i.id, "envs": i.envs} for i in items],
                                                  "envs": sum(len(i.envs) for i in items)})
                report = engine.sync(env, dry_run=dry_run)
                document: dict[str, Any] = {
                    "ok": report.ok, "dry_run": dry_run, "minted": report.minted, "failures": report.failures,
                    "targets": [{k: v for k, v in t.as_dict().items()} for t in report.targets],
                }
                status = 200 if report.ok else 502
            elif action == "rotate":
                from core.rotation.account_keys import KeyRotation

                force = str((query or {}).get("force", "")).lower() in ("1", "true", "yes")
                reports = KeyRotation(engine).rotate(name, force=force)  # counted in the engine
                document = {"rotations": [r.as_dict() for r in reports]}
                status = 502 if any(r.outcome == "error" for r in reports) else 200
            elif action == "accept_drift":
                names = [n for n in str((query or {}).get("names", "")).split(",") if n]
                accepted = engine.accept_drift(env, name, names)
                if any(t.outcome == "busy" for t in accepted):
                    document, status = {"error": "busy", "message": f"a sync of env {env} is running; try again"}, 409
                else:
                    document = {"targets": [t.as_dict() for t in accepted]}
                    status = 502 if any(t.outcome == "error" for t in accepted) else 200
            else:
                from core.app.expiry import DEFAULT_WINDOW, expiring, parse_window

                try:
                    asked = (query or {}).get("expiring")
                    window = parse_window(asked) if asked else DEFAULT_WINDOW
                except ValueError as exc:
                    return ApiResponse.json(400, {"error": "bad_request", "message": f"expiring: {exc}"})
                document = {"targets": engine.status(), "rotations": engine.rotation_status(), "poisoned": engine.poisoned_status(),
                            "expiry_window_seconds": int(window.total_seconds())}
                try:
                    document["expiring"] = [i.as_dict() for i in expiring(engine, window)]
                except Exception as exc:  # the sources are unreachable: the rest of status still answers
                    log.warning("expiry view unavailable: %s", type(exc).__name__)
                    document["expiring"], document["expiry_error"] = [], f"expiry view unavailable: {type(exc).__name__}"
                status = 200
        except (NotFoundError, KeyError) as exc:
            message = str(exc.args[0]) if exc.args else "not found"
            return ApiResponse.json(404, {"error": "not_found", "message": message})
        except ConfigError as exc:
            return ApiResponse.json(409, {"error": "not_configured", "message": "; ".join(p.message for p in exc.problems)})
        self._record(context, principal.actor, f"admin.{action}", env or name or "", {"outcome": str(status)})
        return ApiResponse.json(status, document)

    def _record(self, context: ApiContext, actor: str, action: str, subject: str, detail: dict[str, str]) -> None:
        try:
            self.audit_sink(context).record(actor, action, subject[:MAX_ENV_LENGTH], detail)
        except AuditWriteError:
            pass  # logged by the sink; the admin action already ran and its answer carries no values
        except Exception:
            log.exception("audit sink failed for %s", action)

    # ---- Event Grid and timer -------------------------------------------------------------
    def keyvault_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Handle one Key Vault event.

        Raises:
            ConfigUnavailable: no config (the event is retried by Event Grid).
            Exception: a valid event could not be acted on (retried).
        """
        from core.app.events import KeyVaultEvents

        context = self.context()
        with context._lock:
            handler = context._events
        if handler is None:
            handler = KeyVaultEvents(context.engine())
            with context._lock:
                if context._events is None:
                    context._events = handler
                handler = context._events
        outcome = handler.handle(event)
        return dict(outcome.__dict__)

    def work_item(self, text: str, dequeue_count: int) -> dict[str, Any]:
        """One delivery of a work queue message (the queue trigger's work; core.app.work).

        Raises:
            ConfigUnavailable: no config (delivered again).
            core.app.work.WorkFailed: the item failed (delivered again, then poisoned).
        """
        from core.app.work import handle_message

        context = self.context()
        shared = context.engine()
        queue = shared.fanout.queue if shared.fanout is not None else None
        if queue is None:
            from core.app.work import open_queue

            queue = open_queue(context.broker, self.environ)
        engine = context.worker_engine()
        try:
            result = handle_message(engine, text, dequeue_count=dequeue_count, queue=queue)
        finally:
            if shared._fingerprinter is None and engine._fingerprinter is not None:
                shared._fingerprinter = engine._fingerprinter
        return dict(result.__dict__)

    def scheduled(self) -> dict[str, Any]:
        """The timer's work: rotations that are due, then a sync of every env with targets."""
        from core.rotation.account_keys import KeyRotation

        context = self.context()
        self.flush_audit()  # counts of a quiet instance get stored too
        engine = context.engine()
        rotations = KeyRotation(engine).rotate()  # counted in the engine (re-pushes enqueued in queue mode)
        items = engine.request_sync(engine.envs_with_targets(), reason="scheduled", trigger="timer")
        if items is not None:
            return {"rotations": [r.as_dict() for r in rotations], "ok": not any(r.outcome == "error" for r in rotations),
                    "target_writes": 0, "targets": [], "failures": {}, "enqueued": len(items),
                    "envs": sum(len(i.envs) for i in items)}
        report = engine.sync()
        return {
            "rotations": [r.as_dict() for r in rotations], "ok": report.ok, "target_writes": report.target_writes,
            "targets": [f"{t.env}->{t.target}: {t.outcome}" for t in report.targets], "failures": report.failures,
        }

    # ---- GET /api/health?deep=1 ----------------------------------------------------------
    def readiness(self, headers: Mapping[str, str] | None = None) -> ApiResponse:
        """200 when the config loads, callers can be authenticated in the config's `api.auth_mode`
        and every store's identity gets a token for each audience
        the config needs; 503 otherwise.  Anonymous callers (and callers who are not admins) get
        only `{"status": ...}`; an admin (`api.admins` or the admin role, with a bearer token or
        App Service Authentication) gets the detail: the config source, and per store the
        audiences and what failed.  Never tokens or values."""
        try:
            context = self.context()
        except ConfigUnavailable as exc:
            log.error("readiness: %s", exc)
            # No config: no admin list either, so nobody gets more than the status.
            return ApiResponse.json(503, {"status": "unavailable"})
        ready, detail = self._readiness(context)
        status = 200 if ready else 503
        if not self._health_admin(context, headers or {}):
            return ApiResponse.json(status, {"status": detail["status"]})
        return ApiResponse.json(status, detail)

    def _health_admin(self, context: ApiContext, headers: Mapping[str, str]) -> bool:
        """Whether the caller of a readiness check is an admin (anything else, a bad token
        included, is answered like an anonymous probe: health checks are never refused)."""
        from core.access import AuthError, AuthUnavailable, is_admin

        lowered = {str(k).lower(): str(v) for k, v in headers.items()}
        if "authorization" not in lowered and not any(k.startswith("x-ms-client-principal") for k in lowered):
            return False
        try:
            principal = context.authenticator(self.environ).authenticate(lowered)
        except (AuthError, AuthUnavailable):
            return False
        api = context.loaded.config.api
        return is_admin(api.admin_ids, api.admin_role, principal)

    def _readiness(self, context: ApiContext) -> tuple[bool, dict[str, Any]]:
        # A blob that cannot be re-read leaves the last good config serving, but not ready.
        source_status = self._source.status() if self._source is not None else {"kind": "file", "ok": True}
        broker = context.broker
        stores: dict[str, Any] = {}
        ready = True
        for store, scopes in sorted(store_scopes(broker).items()):
            checks: dict[str, str] = {}
            try:
                credential = broker.store(store).credential
            except Exception as exc:  # an unusable store makes the app not ready
                log.warning("readiness: store %s has no usable credential: %s", store, exc)
                stores[store] = {"ok": False, "error": "no usable credential"}
                ready = False
                continue
            for scope in sorted(scopes):
                try:
                    credential.get_token(scope)
                    checks[scope] = "ok"
                except Exception as exc:  # reported by kind only
                    log.warning("readiness: store %s cannot get a token for %s: %s", store, scope, type(exc).__name__)
                    checks[scope] = _token_failure(exc)
            ok = all(v == "ok" for v in checks.values())
            ready = ready and ok
            stores[store] = {"ok": ok, "scopes": checks}
        ready = ready and bool(source_status.get("ok"))
        # A mode that can authenticate no one (App Service Authentication off, no tenant or
        # audience) makes every request answer 503: not ready either.
        authenticator = context.authenticator(self.environ)
        auth: dict[str, Any] = {"mode": authenticator.mode, "ok": authenticator.problem is None}
        if authenticator.problem:
            auth["problem"] = authenticator.problem
            ready = False
        return ready, {
            "status": "ok" if ready else "unavailable", "config": "ok" if source_status.get("ok") else "stale",
            "config_source": source_status, "stores": stores, "auth": auth,
        }


def store_scopes(broker: Any) -> dict[str, set[str]]:
    """Store -> the token scopes it needs: for every env's references, the targets it writes and
    the state it keeps."""
    from core.sources.base import STORAGE_SCOPE
    from core.sources.registry import sources

    loaded, cloud = broker.loaded, broker.cloud
    vault_scope = f"https://{cloud.vault_dns_suffix}/.default"
    arm_scope = cloud.arm_scope
    storage_scope = STORAGE_SCOPE
    needs: dict[str, set[str]] = {}
    for env in loaded.config.envs:
        for ref in broker.env_plan(env).refs:
            needs.setdefault(ref.store, set()).update(sources().get(ref.kind).token_scopes(ref, cloud))
    config = loaded.config
    for target in config.targets.values():
        store = getattr(target, "store", None)
        if store is not None:
            scope = {"keyvault": vault_scope, "blob": storage_scope, "app_settings": arm_scope}.get(target.type)
            if scope:
                needs.setdefault(store, set()).add(scope)
    if config.state is not None:
        needs.setdefault(config.state.store, set()).add(storage_scope)
        if config.state.vault:
            needs[config.state.store].add(vault_scope)
    return needs


def _token_failure(exc: BaseException) -> str:
    name = type(exc).__name__
    if "Authentication" in name or "Credential" in name:
        return "identity"
    if "Service" in name or isinstance(exc, OSError):
        return "network"
    return "error"


def _printable(env: str) -> str:
    """`env` as audit records and logs show it: escaped when not printable, at most MAX_ENV_LENGTH."""
    return (env if env.isprintable() else env.encode("unicode_escape").decode())[:MAX_ENV_LENGTH]


def _format(query: Mapping[str, str], headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(format, None) or (None, "format" | "accept")."""
    requested = query.get("format")
    if requested is not None:
        return (requested, None) if requested in FORMATS else (None, "format")
    fmt = negotiate(headers.get("accept"))
    return (fmt, None) if fmt else (None, "accept")


_DEFAULT: HttpApi | None = None
_DEFAULT_LOCK = threading.Lock()


def default_api() -> HttpApi:
    """The process-wide HttpApi (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = HttpApi()
        return _DEFAULT


def set_default_api(api: HttpApi | None) -> HttpApi | None:
    """Replace the process-wide HttpApi (e.g. to plug in another audit sink); returns the old one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        old, _DEFAULT = _DEFAULT, api
        return old
