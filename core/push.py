"""Sync: resolve each env that has targets and push only what changed, recording every decision.

For each env (under a lease, so concurrent instances do not push the same env at once):
1. resolve the env; SAS tokens come from the state vault (`core.mint.minted`), re-minted only
   when due.  If any variable fails, **no target of the env is touched** (no partial bundle is
   ever published) and the failure is recorded for `status`.
2. per target: read its snapshot, compare with the last push record (keyed fingerprints, and
   the stamp each write left: `core.targets.base`) and the desired bundle: adds / updates /
   removals by name, and drift (a stamp that is no longer the one of vaultrelay's write: someone
   changed the target since).  A changed name is read once, and one that holds exactly what
   vaultrelay would push is in place, not drift.  `drift_policy: repair` adds the drifted names
   to the writes; drift is recorded with when it was found until repaired, overwritten,
   accepted (`accept_drift`) or put back.  Unchanged and no drift: zero target writes, zero
   state writes, no read beyond the snapshot.
3. push, then replace the push record conditionally on its ETag.  A crash (or a state failure)
   between 2 and 3 leaves the old record; the next run compares the target itself with the
   desired bundle, writes only what is not there yet and records it, so it converges without
   claiming a push that did not happen.  Targets that cannot mark what vaultrelay wrote (app
   settings) get the names about to be written recorded first (`pending`).

App settings are one resource per site and slot that ARM replaces as a whole: their pushes wait
until every env of the sync that points at the same site and slot has been through steps 1-2
(envs sharing a site are synced one after the other, their leases held), then go out as one
read-modify-write under a lease per site and slot (core.targets.app_settings): one PUT, one
restart, whatever the number of envs and targets.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from core import telemetry
from core.azure.protocols import SecretClientLike
from core.bundle import Bundle, ResolvedValue
from core.compose import compose_bundle
from core.connections import StoreConnections
from core.errors import NotFoundError
from core.sources.registry import sources
from core.state.fingerprints import Fingerprinter
from core.state.leases import holder_is_dead
from core.state.tables import MINTED_RECORDS, ROTATION_PARTITIONS, Conflict, Lease, Row, StateStore, StateUnavailable
from core.targets.app_settings import SiteChange, site_key
from core.targets.base import RUN_ENVS, Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError
from core.targets.registry import TargetRegistry

log = logging.getLogger("vaultrelay.sync")

LEASE_SECONDS = 120.0
# Up to this many envs, a sync reads their push records by partition (4 queries); beyond, one scan.
PARTITION_QUERY_MAX_ENVS = 60
SITE_LEASE_SECONDS = 60.0
# Waits for a site's lease held by another instance (its push is one read and one PUT).
SITE_LEASE_WAITS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class TargetReport:
    env: str
    target: str
    kind: str
    adds: list[str] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # drift written back (drift_policy: repair)
    writes: int = 0
    # unchanged, pushed, recorded (the target already held the bundle; only state caught up),
    # would_push, error, skipped, busy (its env or, for app settings, its site was being pushed by another instance)
    outcome: str = "unchanged"
    error: str | None = None

    # The push record is out of date (drift, a cleared error, a push not yet recorded): a state write is due.
    record_stale: bool = field(default=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "record_stale"}


@dataclass
class _SitePush:
    """An app-settings push waiting for the other targets of its site and slot in this sync."""

    report: TargetReport
    record: Row | None
    target: Any
    desired: dict[str, DesiredItem]
    change: Change
    owned: frozenset[str]
    writer: Any
    diff: Diff
    left: dict[str, str]  # drift that stays after the push (name -> when found)


@dataclass
class SyncReport:
    targets: list[TargetReport] = field(default_factory=list)
    minted: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)  # env -> failing variables (with reasons)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and all(t.outcome not in ("error",) for t in self.targets)

    @property
    def target_writes(self) -> int:
        return sum(t.writes for t in self.targets)


@dataclass
class Diff:
    """What one target needs: the change to push, the names that drifted, and the stamps to record."""

    change: Change
    drift: set[str]
    stamps: dict[str, str] = field(default_factory=dict)  # per-variable: name -> stamp of content vaultrelay holds for its own
    etag: str | None = None  # whole-bundle: the stamp to record when nothing is written
    stamped: bool = False
    whole: bool = False


def _recorded_etag(record: Row | None) -> str | None:
    """The whole target's stamp after vaultrelay's last write (or an accepted change); None when
    there is none to compare with (never pushed, or a target that cannot be read back)."""
    if record is None or not record.fields.get("pushed_at"):
        return None
    return str(record.fields.get("target_etag") or "") or None


def drift_found(record: Row | None) -> dict[str, str]:
    """Drifted name -> when it was first found (ISO time; "" from records of earlier versions)."""
    raw = record.json("drift", {}) if record else {}
    return {str(n): "" for n in raw} if isinstance(raw, list) else {str(n): str(t) for n, t in raw.items()}


class SyncEngine:
    """Sync, drift and status over one runtime (core.runtime): resolve each env (SAS tokens
    re-minted when due through core.mint), diff it against its targets, push, record.  An engine
    holds one sync's working set: build one per sync (they share the runtime's state store,
    clients and fingerprint key).  Rotation does not call it: the rotate use case (core.app.rotate)
    hands what a rotation changed to a sync."""

    def __init__(
        self, runtime: Any, *, registry: TargetRegistry | None = None, owner: str | None = None,
        clock: Callable[[], datetime] | None = None, fanout: Any = None,
    ) -> None:
        if isinstance(runtime, StoreConnections):  # a runtime of its own over these connections
            from core.runtime import Runtime

            runtime = Runtime(connections=runtime, owner=owner, clock=clock, targets=registry)
        self.runtime = runtime
        self.broker: StoreConnections = runtime.connections
        self.config = runtime.config
        self.registry = registry or runtime.targets
        self.owner = owner or runtime.owner
        self.clock: Callable[[], datetime] = clock or runtime.clock
        # Held for one sync() only: values resolved for all its envs at once, the push records
        # read in one scan (for the read-only passes), and what target writers share (listings).
        self._prefetched: dict[str, Bundle] = {}
        self._preloaded: dict[tuple[str, str], Row] | None = None
        self._run_cache: dict[str, Any] = {}
        # App-settings pushes by site and slot, waiting for the end of their group of envs, and
        # the env leases held until they are out.
        self._site_pushes: dict[str, list[_SitePush]] = {}
        self._held_leases: list[Lease] = []
        # Queue mode (core.app.work.Fanout): planners enqueue work items instead of syncing.
        self.fanout: Any = fanout
        self._by_env: dict[str, dict[str, Any]] | None = None
        # For one sync(): reuse this process's kept storage key listings (a work item's choice).
        self._reuse_listings = False
        self._concurrency = 1

    # ---- wiring -------------------------------------------------------------------------
    @property
    def state(self) -> StateStore:
        """The runtime's state store (tables created on first use).

        Raises:
            ConfigError: the config has no `state:` section or no state account.
        """
        return self.runtime.state  # type: ignore[no-any-return]

    def state_vault(self) -> SecretClientLike:
        return self.broker.state_vault()

    @property
    def fingerprinter(self) -> Fingerprinter:
        """The HMAC key of this config (`StoreConnections.fingerprinter`).

        Raises:
            ConfigError: no key can be found or made.
        """
        return self.broker.fingerprinter()

    def resolve_variable(self, variable: Any, path: str) -> str:
        """A literal or a single `from:` reference (`StoreConnections.resolve_variable`).

        Raises:
            ConfigError: the reference does not resolve.
        """
        return self.broker.resolve_variable(variable, path)

    def active_key(self, kind: str, account: str) -> str:
        return self.runtime.active_key(kind, account)  # type: ignore[no-any-return]

    # ---- resolve for sync ---------------------------------------------------------------
    def resolve_env(self, env: str, *, force_mint: bool = False, dry_run: bool = False) -> tuple[Bundle, list[Any]]:
        """The env's bundle with SAS tokens served from (and minted into) the state vault."""
        from core.mint.minted import MintedValues

        plan = self.broker.env_plan(env)
        sas = [r for r in plan.refs if sources().features(r.kind).minted]
        others = [r for r in plan.refs if not sources().features(r.kind).minted]
        began = time.perf_counter()
        prefetched = self._prefetched.get(env)
        if prefetched is not None:
            bundle = Bundle(env, dict(prefetched.values), dict(prefetched.failures))
            for name, value in plan.literals.items():
                bundle.values[name] = ResolvedValue.literal(name, value)
        else:
            bundle = self.broker.resolve_refs(env, others, plan.literals, active_key=self.active_key, reuse_listings=self._reuse_listings)
        outcomes: list[Any] = []
        if sas:
            def record(ref: Any, outcome: Any) -> None:
                self.state.audit(self.owner, "sas.minted", f"{env}/{ref.name}", {"reason": outcome.reason, "expires": str(outcome.expires_on)})
                row = self.state.get("rotations", MINTED_RECORDS, outcome.secret) or Row(MINTED_RECORDS, outcome.secret)  # SAS and tokens
                row.fields.update({"variable": ref.name, "env": env, "issued": self.clock().isoformat(), "expires": str(outcome.expires_on),
                                   "reason": outcome.reason})
                try:
                    self.state.put("rotations", row)
                except Conflict:
                    log.info("rotation record of %s updated concurrently", outcome.secret)

            minted = MintedValues(self.broker, self.state_vault(), active_key=self.active_key, clock=self.clock, on_mint=record)
            minted.fill(env, sas, bundle, force=force_mint, dry_run=dry_run)
            outcomes = minted.outcomes
        compose_bundle(bundle, plan.composed)  # templates over the env's values, minted ones included
        telemetry.record_resolve(time.perf_counter() - began, failed=any(f.reason != "would_mint" for f in bundle.failures.values()))
        return bundle, outcomes

    # ---- sync ---------------------------------------------------------------------------
    def envs_with_targets(self) -> list[str]:
        return self.runtime.envs_with_targets()  # type: ignore[no-any-return]

    def _prefetch(self, envs: list[str]) -> None:
        """Resolve the (not minted) references of `envs` as one run, so a secret or key that many
        envs share is fetched once per sync, not once per env.  Values are held for this sync only."""
        refs: list[Any] = []
        for env in envs:
            refs.extend(replace(r, name=f"{env}\0{r.name}") for r in self.broker.env_plan(env).refs if not sources().features(r.kind).minted)
        bundle = self.broker.resolve_refs("(sync)", refs, active_key=self.active_key, reuse_listings=self._reuse_listings)
        split = {env: Bundle(env) for env in envs}
        for key, value in bundle.values.items():
            env, _, name = key.partition("\0")
            split[env].values[name] = replace(value, name=name)
        for key, failure in bundle.failures.items():
            env, _, name = key.partition("\0")
            split[env].failures[name] = replace(failure, name=name)
        self._prefetched = split

    def sync(self, env: str | None = None, *, envs: Sequence[str] | None = None, dry_run: bool = False, force_mint: bool = False,
             progress: Callable[[str], None] | None = None, reuse_listings: bool = False, concurrency: int = 1) -> SyncReport:
        """Sync `env`, or the `envs` given (a work item's batch), or every env that has targets;
        `progress(env)` is called as each env is done.  An env synced without failure loses its
        poison record (core.app.work), if it had one.  `reuse_listings`: storage key listings
        this process keeps are used rather than listed afresh (the caller dropped stale ones).
        `concurrency`: envs synced at once (envs with app-settings targets stay one at a time).

        Raises:
            NotFoundError: `env` (or one of `envs`) has no targets.
        """
        began = time.monotonic()
        chosen = self.envs_with_targets()
        wanted = [env] if env is not None else list(envs) if envs is not None else None
        if wanted is not None:
            missing = [e for e in wanted if e not in chosen]
            if missing:
                raise NotFoundError(f"env '{missing[0]}' has no targets (envs with targets: {', '.join(chosen) or 'none'})")
            chosen = list(dict.fromkeys(wanted))
        report = SyncReport()
        self._reuse_listings, self._concurrency = reuse_listings, max(1, concurrency)
        try:
            self._sync_envs(chosen, report, dry_run=dry_run, force_mint=force_mint, progress=progress)
        finally:
            self._prefetched, self._preloaded, self._run_cache, self._reuse_listings, self._concurrency = {}, None, {}, False, 1
        report.seconds = time.monotonic() - began
        if not dry_run:
            telemetry.record_sync(report)
            self._clear_poisoned(chosen, report)
            self._notify(report)
        return report

    def _notify(self, report: SyncReport) -> None:
        """`notify:` events of this sync (each sent once across instances: core.notify)."""
        from core.notify import Notifier, occurrence

        notifier = Notifier(self)
        if not notifier.enabled:
            return
        for env, failing in sorted(report.failures.items()):
            notifier.emit("push_failed", env, occurrence(*failing), {"env": env, "failures": failing})
        for t in report.targets:
            if t.outcome not in ("error", "unchanged", "pushed", "recorded") or (t.outcome == "error" and t.env in report.failures):
                continue
            subject = f"{t.env}->{t.target}"
            try:
                record = self.state.get("pushes", t.env, t.target)
            except StateUnavailable:
                record = None
            last_push = record.fields.get("pushed_at", "") if record else ""
            if t.outcome == "error" and t.error:
                notifier.emit("push_failed", subject, occurrence(t.error, last_push),
                              {"env": t.env, "target": t.target, "kind": t.kind, "error": t.error, "last_push": last_push or None})
            if t.drift:
                found = drift_found(record)
                notifier.emit("drift_found", subject, occurrence(*t.drift, last_push),
                              {"env": t.env, "target": t.target, "kind": t.kind, "names": t.drift, "repaired": t.repaired,
                               "found": {n: found.get(n) or None for n in t.drift}})

    def _notify_expiring(self, env: str, bundle: Bundle) -> None:
        """`expiring` events: what this env resolved that vaultrelay cannot renew and that expires
        within `notify.expiring_within`."""
        from core.expiry import in_bundle
        from core.notify import Notifier, occurrence

        notifier = Notifier(self)
        if not notifier.wants("expiring"):
            return
        assert self.config.notify is not None
        now = self.clock()
        horizon = now.timestamp() + float(self.config.notify.expiring_within)
        for item, user in in_bundle(self.broker, env, bundle, now):
            if item.renewable or (item.expires_on is not None and item.expires_on.timestamp() > horizon):
                continue
            expires = item.expires_on.isoformat() if item.expires_on else "expired"
            notifier.emit("expiring", item.name, occurrence(expires), {"name": item.name, "kind": item.kind, "where": item.where,
                                                                     "expires_on": item.expires_on.isoformat() if item.expires_on else None,
                                                                     "expired": item.expired, "used_by": user})

    def _clear_poisoned(self, envs: Sequence[str], report: SyncReport) -> None:
        """Drop the poison records of the envs this sync completed (one read of the records)."""
        try:
            poisoned = self.state.poisoned()
            if not poisoned:
                return
            bad = set(report.failures) | {t.env for t in report.targets if t.outcome in ("error", "busy")}
            cleared = self.state.clear_poisoned([e for e in envs if e not in bad], poisoned)
        except StateUnavailable as exc:
            log.warning("poison records not checked: %s", exc)
            return
        for env in cleared:
            self.state.audit(self.owner, "work.unpoisoned", env, {})

    def request_sync(self, envs: Sequence[str], *, reason: Any, trigger: str, forget: Sequence[Mapping[str, str]] = (),
                     force_mint: bool = False) -> list[Any] | None:
        """A planner's request to sync `envs`: enqueued as work items when this engine fans out
        (`self.fanout`, queue mode; returns the items), else None and the caller syncs inline."""
        if self.fanout is None:
            return None
        return list(self.fanout.enqueue(self, envs, reason, trigger, forget=forget, force_mint=force_mint))

    def _sync_envs(self, envs: list[str], report: SyncReport, *, dry_run: bool, force_mint: bool,
                   progress: Callable[[str], None] | None = None) -> None:
        self._run_cache[RUN_ENVS] = len(envs)
        if len(envs) > 1:
            try:
                self._prefetch(envs)
            except StateUnavailable:
                self._prefetched = {}  # each env resolves on its own and reports the failure
            try:
                # The push records read at once instead of one read per target (read-only passes
                # only): the envs' partitions for a work item's few envs, one scan for a whole fleet
                # (a work item scanning every env's records would cost O(fleet) per item).
                rows = (self.state.query_partitions("pushes", envs) if len(envs) <= PARTITION_QUERY_MAX_ENVS
                        else self.state.query("pushes"))
                self._preloaded = {(r.partition, r.key): r for r in rows}
            except StateUnavailable:
                self._preloaded = None  # each env reads its own and reports the failure
        groups = self._site_groups(envs)
        if self._concurrency > 1 and len(groups) > 1 and not any(
                self._site_key_of(t) for env in envs for t in self._targets_of(env).values()):
            # No app-settings site among them (each group is one env, and no site push waits for
            # the end of a group): the envs go at once, each under its own lease, as instances do.
            def one(name: str) -> None:
                self._sync_one_env(name, report, dry_run=dry_run, force_mint=force_mint)
                if progress is not None:
                    progress(name)

            with ThreadPoolExecutor(max_workers=min(self._concurrency, len(groups)), thread_name_prefix="vaultrelay-env") as pool:
                for done in [pool.submit(contextvars.copy_context().run, one, name) for (name,) in groups]:
                    done.result()
            return
        for group in groups:
            try:
                for name in group:
                    self._sync_one_env(name, report, dry_run=dry_run, force_mint=force_mint)
                    if progress is not None:
                        progress(name)
            finally:
                self._flush_sites()

    def _sync_one_env(self, name: str, report: SyncReport, *, dry_run: bool, force_mint: bool) -> None:
        targets = self._targets_of(name)
        start = len(report.targets)
        with telemetry.fields(env=name):  # every log record of this env's sync carries it
            try:
                self._sync_env(name, targets, report, dry_run=dry_run, force_mint=force_mint)
            except StateUnavailable as exc:
                # Raised before any of these targets was written (a failure after a push is caught
                # where it happens): report it; it cannot be recorded, the state is what failed.
                log.warning("sync %s stopped: %s", name, exc)
                reported = {t.target for t in report.targets[start:]}
                report.targets.extend(TargetReport(name, n, t.type, outcome="error", error=f"{exc}; nothing pushed")
                                      for n, t in targets.items() if n not in reported)

    def _targets_of(self, env: str) -> dict[str, Any]:
        """The env's targets by name, in name order (indexed once: a work item's few envs must
        not each scan a fleet's targets)."""
        if self._by_env is None:
            by_env: dict[str, dict[str, Any]] = {}
            for n, t in sorted(self.config.targets.items()):
                by_env.setdefault(t.env, {})[n] = t
            self._by_env = by_env
        return dict(self._by_env.get(env, {}))

    def _site_key_of(self, target: Any) -> str | None:
        """The site and slot an app_settings target writes (None: another kind, or no subscription known)."""
        if target.type != "app_settings":
            return None
        subscription = target.subscription or self.broker.store(target.store).default_subscription
        return site_key(subscription, target.site, target.slot) if subscription else None

    def _site_groups(self, envs: list[str]) -> list[list[str]]:
        """`envs` in groups that share no app-settings site and slot with another group (most
        groups are one env), each synced as a unit so that a site gets one push per sync."""
        parent = {env: env for env in envs}

        def root(env: str) -> str:
            while parent[env] != env:
                parent[env] = parent[parent[env]]
                env = parent[env]
            return env

        first_env: dict[str, str] = {}
        for _, target in sorted(self.config.targets.items()):
            key = self._site_key_of(target) if target.env in parent else None
            if key is None:
                continue
            if key in first_env:
                parent[root(target.env)] = root(first_env[key])
            else:
                first_env[key] = target.env
        groups: dict[str, list[str]] = {}
        for env in envs:
            groups.setdefault(root(env), []).append(env)
        return sorted(groups.values(), key=lambda g: g[0])

    def _sync_env(self, env: str, targets: dict[str, Any], report: SyncReport, *, dry_run: bool, force_mint: bool) -> None:
        if not dry_run and not force_mint:
            # A read-only pass first: an unchanged env costs no lease and no state write at all.
            probe = SyncReport()
            self._sync_env_pass(env, targets, probe, dry_run=True, force_mint=False)
            if not probe.failures and all(t.outcome == "unchanged" and not t.record_stale for t in probe.targets):
                report.targets.extend(probe.targets)
                return
        lease = None if dry_run else self.state.acquire_lease(f"sync:{env}", self.owner, LEASE_SECONDS, stale=holder_is_dead)
        if lease is None and not dry_run:
            report.targets.extend(TargetReport(env, n, t.type, outcome="busy") for n, t in targets.items())
            return
        waiting = sum(len(p) for p in self._site_pushes.values())
        try:
            self._sync_env_pass(env, targets, report, dry_run=dry_run, force_mint=force_mint)
        finally:
            if lease is not None:
                if sum(len(p) for p in self._site_pushes.values()) > waiting:
                    self._held_leases.append(lease)  # released once its app-settings pushes are out
                else:
                    self.state.release_lease(lease)

    def _sync_env_pass(self, env: str, targets: dict[str, Any], report: SyncReport, *, dry_run: bool, force_mint: bool) -> None:
        bundle, minted = self.resolve_env(env, force_mint=force_mint, dry_run=dry_run)
        report.minted.extend(f"{env}/{m.name}" for m in minted)
        if not dry_run:
            self._notify_expiring(env, bundle)
        would_mint = {n for n, f in bundle.failures.items() if f.reason == "would_mint"}
        failures = {n: f for n, f in bundle.failures.items() if n not in would_mint}
        if failures:
            # a 403's hint names the missing role and where (core.permissions.matrix.denied_role_hint)
            failing = sorted(f"{n}: {f.reason}" + (f" ({f.hint})" if f.reason == "access_denied" and f.hint else "") for n, f in failures.items())
            report.failures[env] = failing
            for name, target in targets.items():
                item = TargetReport(env, name, target.type, outcome="skipped", error=f"env {env} did not resolve completely ({', '.join(failing)}); nothing pushed")
                report.targets.append(item)
                if not dry_run:
                    self._record_error(env, name, item.error or "")
            return
        desired = {
            name: DesiredItem(name, item.value, self.fingerprinter.of(item.value), item.expires_on, item.content_type, item.detail.get("kind"),
                              item.version)
            for name, item in bundle.values.items()
        }
        for name in would_mint:  # dry run: a token that would be minted counts as a change
            desired[name] = DesiredItem(name, None, "(to be minted)")
        for name, target in targets.items():
            with telemetry.fields(env=env, target=name):  # the target's snapshot, diff, push and records
                report.targets.append(self._sync_target(env, name, target, desired, dry_run=dry_run))

    def _context(self, name: str, target: Any, record: Row | None = None) -> TargetContext:
        store_name = getattr(target, "store", None)
        credential = self.broker.store(store_name).credential if store_name else None
        subscription = self.broker.store(store_name).default_subscription if store_name else None
        return TargetContext(name=name, clients=self.broker.clients, credential=credential, fingerprinter=self.fingerprinter,
                             subscription=subscription, resolve_value=lambda v: self.resolve_variable(v, f"targets.{name}.signing_key"),
                             run_cache=self._run_cache, recorded_stamps=record.json("stamps", {}) if record else {},
                             recorded_etag=_recorded_etag(record))

    def _sync_target(self, env: str, name: str, target: Any, desired: dict[str, DesiredItem], *, dry_run: bool) -> TargetReport:
        report = TargetReport(env, name, target.type)
        if dry_run and self._preloaded is not None:
            record = self._preloaded.get((env, name))
        else:
            record = self.state.get("pushes", env, name)
        recorded: dict[str, str] = record.json("fingerprints", {}) if record else {}
        pending: dict[str, str] = record.json("pending", {}) if record else {}
        try:
            writer = self.registry.build(target, self._context(name, target, record))
            shape = getattr(writer, "shape", None)
            if shape is not None:  # what this target writes besides the value (expiry, content type, tags)
                desired = shape(desired)
            snapshot = writer.snapshot(set(desired) | set(recorded) | set(pending), {**pending, **recorded})
            diff = self._diff(writer, desired, record, snapshot)
        except TargetError as exc:
            return self._fail(report, str(exc), dry_run)
        except Exception as exc:
            return self._fail(report, f"target {name}: {type(exc).__name__}", dry_run)
        change = diff.change
        unsettled = getattr(writer, "unsettled", None)
        if unsettled is not None:
            try:
                extra = unsettled(desired) - change.adds  # e.g. app settings not slot-sticky yet
            except TargetError as exc:
                return self._fail(report, str(exc), dry_run)
            if extra:
                change = Change(change.adds, change.updates | extra, change.removals)
        report.adds, report.updates, report.removals = sorted(change.adds), sorted(change.updates), sorted(change.removals)
        report.drift = sorted(diff.drift)
        if change.empty and getattr(writer, "references", False) and not dry_run:
            # Nothing to write: whether the site still resolves what it holds (a role taken away).
            checked = self._check_references(report, writer, set(desired) - set(diff.drift))
            if checked.outcome == "error":
                return checked
        found = drift_found(record)
        drift_map = {n: found.get(n) or self.clock().isoformat() for n in diff.drift}
        if diff.drift and target.drift_policy == "repair":
            repaired = frozenset(desired) - change.adds if writer.whole_bundle else frozenset(diff.drift) & frozenset(desired)
            change = Change(change.adds, change.updates | repaired, change.removals)
            report.updates = sorted(change.updates)
            report.repaired = report.drift if writer.whole_bundle else sorted(repaired)
        if writer.whole_bundle and not change.empty:
            change = Change(change.adds, frozenset(desired) - change.adds, change.removals)
        fingerprints = {n: d.fingerprint for n, d in desired.items()}
        if change.empty:
            content_stale = (record is None or recorded != fingerprints or bool(pending) or diff.stamps != (record.json("stamps", {}))
                             or (writer.whole_bundle and (diff.etag or "") != (record.fields.get("target_etag") or "")))
            drift_changed = set(drift_map) != set(found)
            report.record_stale = content_stale or drift_changed or (record is not None and record.fields.get("outcome") == "error")
            if not report.record_stale or dry_run:
                return report
            if not diff.drift and content_stale:
                # The target already holds the desired bundle (an earlier push whose record was
                # not written, or a change that put back what vaultrelay would push): record it,
                # write nothing to the target.
                report.outcome = "recorded"
                self._record_push(report, record, target, desired, change, diff, PushResult(), drift_map)
                if drift_changed and report.outcome == "recorded":
                    self._audit_drift(report, found, drift_map, target.drift_policy)
                return report
            assert record is not None  # no record: nothing can have drifted
            try:
                self._update_record(record, {"fingerprints": fingerprints, "stamps": diff.stamps, "target_etag": diff.etag or "",
                                             "drift": drift_map, "outcome": "ok" if record.fields.get("pushed_at") else "never", "error": ""})
            except StateUnavailable as exc:
                return self._fail(report, f"target {name}: {exc}", dry_run)
            if drift_changed:
                self._audit_drift(report, found, drift_map, target.drift_policy)
            return report
        report.record_stale = True
        if dry_run:
            report.outcome = "would_push"
            return report
        if getattr(writer, "ownership_in_state", False) and change.writes:
            # Names this target cannot mark as ours: record them before writing them, so a push
            # whose record is lost is still recognised as vaultrelay's by the next run.
            try:
                # (not a name someone else holds: the push refuses those, and they stay theirs)
                ours = {n: fingerprints[n] for n in change.writes if n not in snapshot.foreign}
                record = self._write_record(env, name, record, {"pending": {**pending, **ours}})
            except StateUnavailable as exc:
                return self._fail(report, f"target {name}: {exc}; nothing pushed", dry_run)
        # What vaultrelay writes is no longer drift; a bundle is rewritten whole.
        left = {} if writer.whole_bundle else {n: t for n, t in drift_map.items() if n not in change.writes and n in desired}
        site = getattr(writer, "site_key", None)
        if site:
            # Pushed with the other targets of the same site and slot at the end of the group.
            owned = frozenset(recorded) | frozenset(pending)
            self._site_pushes.setdefault(site, []).append(_SitePush(report, record, target, desired, change, owned, writer, diff, left))
            return report
        lease_name = getattr(writer, "push_lease", None)  # a read-modify-write of one resource (container apps)
        lease: Lease | None = None
        if lease_name:
            try:
                lease = self._site_lease(lease_name)
            except StateUnavailable as exc:
                return self._fail(report, f"target {name}: {exc}; nothing pushed", dry_run)
            if lease is None:
                report.outcome = "busy"
                report.error = f"target {name} is being pushed by another instance; the next run pushes"
                return report
        try:
            result = writer.push(env, desired, change, snapshot)
        except TargetError as exc:
            return self._fail(report, str(exc), dry_run)
        except Exception as exc:
            return self._fail(report, f"target {name}: push failed: {type(exc).__name__}", dry_run)
        finally:
            if lease is not None:
                self.state.release_lease(lease)
        report.writes = result.writes
        report.outcome = "pushed"
        return self._record_push(report, record, target, desired, change, diff, result, left)

    # ---- app settings: one push per site and slot --------------------------------------------
    def _flush_sites(self) -> None:
        """Push the waiting app-settings changes, one read-modify-write per site and slot, then
        release the env leases held for them."""
        pushes, self._site_pushes = self._site_pushes, {}
        leases, self._held_leases = self._held_leases, []
        try:
            for items in pushes.values():
                with telemetry.fields(env=items[0].report.env, target=items[0].report.target):
                    self._push_site(items)
        finally:
            for lease in leases:
                self.state.release_lease(lease)

    def _site_lease(self, name: str) -> Lease | None:
        for wait in (0.0, *SITE_LEASE_WAITS):
            if wait:
                time.sleep(wait)
            lease = self.state.acquire_lease(name, self.owner, SITE_LEASE_SECONDS, stale=holder_is_dead)
            if lease is not None:
                return lease
        return None

    def _push_site(self, items: list[_SitePush]) -> None:
        """One site and slot: under its lease, re-read its settings, merge every waiting target's
        change in, write them in one PUT (none when nothing changes), record each target."""
        import contextlib

        writer = items[0].writer
        where = f"{writer.config.site}" + (f" (slot {writer.config.slot})" if writer.config.slot else "")
        try:
            lease = self._site_lease(writer.site_lease)
        except StateUnavailable as exc:
            for item in items:
                self._fail(item.report, f"target {item.report.target}: {exc}; nothing pushed", False)
            return
        if lease is None:
            for item in items:
                item.report.outcome = "busy"
                item.report.error = f"the app settings of {where} are being pushed by another instance; the next run pushes"
            return

        @contextlib.contextmanager
        def slot_config_lease() -> Iterator[None]:
            held = self._site_lease(writer.slot_config_lease)
            if held is None:
                raise TargetError(f"the slot settings of {writer.config.site} are being updated by another instance; the next run pushes")
            try:
                yield
            finally:
                self.state.release_lease(held)

        try:
            changes = []
            for i in list(items):
                settings = None
                if getattr(i.writer, "references", False):
                    try:  # the values go to the vault first; the settings pin the versions written
                        settings = i.writer.pin(i.report.env, i.desired, i.change, i.owned)
                    except TargetError as exc:
                        self._fail(i.report, str(exc), False)
                        items.remove(i)
                        continue
                changes.append(SiteChange(i.report.target, i.desired, i.change, i.owned, i.target.deletion_policy == "delete",
                                          bool(i.target.slot_setting), settings))
            if not items:
                return
            try:
                result = writer.push_site(changes, slot_config_lease=slot_config_lease)
            except TargetError as exc:
                first = items[0].report.target
                cause = str(exc).removeprefix(f"target {first}: ")
                for item in items:
                    with_first = "" if item is items[0] else f" (one request with target {first})"
                    self._fail(item.report, f"target {item.report.target}{with_first}: {cause}", False)
                return
            except Exception as exc:
                for item in items:
                    self._fail(item.report, f"target {item.report.target}: push failed: {type(exc).__name__}", False)
                return
            if result.sticky_added:
                log.info("app settings %s made slot-sticky on %s", ", ".join(result.sticky_added), writer.config.site)
            for item in items:
                if item.report.target in result.refused:
                    self._fail(item.report, result.refused[item.report.target], False)
                    continue
                item.report.writes = 1 if result.put else 0
                item.report.outcome = "pushed" if result.put else "recorded"
                self._record_push(item.report, item.record, item.target, item.desired, item.change, item.diff, PushResult(), item.left)
                if getattr(item.writer, "references", False) and item.report.outcome != "error":
                    self._check_references(item.report, item.writer, set(item.desired))
        finally:
            self.state.release_lease(lease)

    def _check_references(self, report: TargetReport, writer: Any, names: set[str]) -> TargetReport:
        """An app-settings target writing Key Vault references: App Service's report of the
        references it holds; one the site's identity cannot resolve makes the target an error
        (recorded for status and notifications), even though the settings are in place."""
        try:
            problems = writer.unresolved(names)
        except TargetError as exc:
            return self._fail(report, str(exc), False)
        if problems:
            return self._fail(report, writer.unresolved_error(problems), False)
        return report

    def _record_push(self, report: TargetReport, record: Row | None, target: Any, desired: dict[str, DesiredItem],
                     change: Change, diff: Diff, result: PushResult, drift_map: dict[str, str]) -> TargetReport:
        stamps = dict(diff.stamps)
        for n in change.writes if not diff.whole else ():
            # Without stamps (app settings) the fingerprint of what was written is the baseline.
            stamp = result.stamps.get(n) if diff.stamped else None
            if stamp:
                stamps[n] = stamp
            else:
                stamps.pop(n, None)
        fields = {
            "fingerprints": {n: d.fingerprint for n, d in desired.items()}, "pending": {}, "stamps": stamps,
            "pushed_at": self.clock().isoformat(), "outcome": "ok", "error": "", "drift": drift_map,
            "target_etag": (result.etag if report.writes else diff.etag) or "", "kind": target.type, "writes": report.writes,
        }
        try:
            self._write_record(report.env, report.target, record, fields)
        except StateUnavailable as exc:
            # The target holds the new bundle but state does not say so: the next run compares
            # the target with the bundle, finds it in place and records it without rewriting it.
            report.outcome = "error"
            report.error = (f"target {report.target}: {'pushed' if report.writes else 'up to date'} ({report.writes} writes) "
                            f"but the push record was not written: {exc}; the next run records it")
            log.warning("sync %s -> %s: %s", report.env, report.target, report.error)
            return report
        self.state.audit(self.owner, "push" if report.writes else "push.recorded", f"{report.env}->{report.target}", {
            "adds": report.adds, "updates": report.updates, "removals": report.removals, "drift": report.drift,
            "repaired": report.repaired, "drift_policy": target.drift_policy,
            "fingerprints": {n: desired[n].fingerprint for n in sorted(change.writes)},
        })
        return report

    def _audit_drift(self, report: TargetReport, before: dict[str, str], after: dict[str, str], policy: str) -> None:
        self.state.audit(self.owner, "drift", f"{report.env}->{report.target}", {
            "found": sorted(set(after) - set(before)), "cleared": sorted(set(before) - set(after)), "drift": sorted(after),
            "drift_policy": policy,
        })

    @staticmethod
    def _diff(writer: Any, desired: dict[str, DesiredItem], record: Row | None, snapshot: Snapshot) -> Diff:
        """What to write, what drifted, and the stamps the target shows for what vaultrelay holds.

        Compared with the push record first: adds / updates / removals by fingerprint.  Then the
        target: a name vaultrelay wrote whose stamp is no longer the one recorded for its write
        (or the one accepted) has changed since; a changed name, or one with no stamp recorded
        (a push whose record was lost), is looked at closely (`holds`), and one that holds exactly
        what vaultrelay would write now is neither written again nor drift.  The rest of the
        changed ones are drift.  An unchanged target is never read more than its snapshot.
        """
        recorded: dict[str, str] = record.json("fingerprints", {}) if record else {}
        adds = frozenset(n for n in desired if n not in recorded)
        updates = frozenset(n for n in desired if n in recorded and recorded[n] != desired[n].fingerprint)
        removals = frozenset(n for n in recorded if n not in desired)
        if writer.whole_bundle:
            return SyncEngine._diff_whole(writer, desired, record, snapshot, Change(adds, updates, removals))
        if not getattr(writer, "stamped", False):
            return SyncEngine._diff_by_value(desired, record, snapshot, Change(adds, updates, removals))
        recorded_stamps: dict[str, str] = record.json("stamps", {}) if record else {}
        current = snapshot.stamps
        changed: set[str] = set()  # vaultrelay wrote it, and its stamp is no longer the one of that write
        unproven: set[str] = set()  # pushed before stamps were recorded (or the record was lost)
        check: set[str] = set()  # to be looked at closely (`holds`)
        for n, stamp in current.items():
            if n in snapshot.foreign:
                continue
            if n in recorded_stamps:
                if (stamp or "") == recorded_stamps[n]:
                    continue  # as vaultrelay left it (or as it was accepted)
                if n in recorded:
                    changed.add(n)
            elif n in recorded:
                unproven.add(n)
            if n in desired and stamp is not None:
                check.add(n)
        holds = getattr(writer, "holds", None)
        held = holds(desired, check) if check and holds is not None else set()
        # No stamp to compare with: drift only when gone, or no longer what vaultrelay pushed and would push now.
        drift = (changed - held) | {n for n in unproven - held if current[n] is None or (n in desired and recorded[n] == desired[n].fingerprint)}
        gone = {n for n in removals if current.get(n, "") is None}
        stamps = {n: s for n, s in recorded_stamps.items() if n in desired}
        for n in held:
            stamps[n] = current[n] or ""
        return Diff(Change(adds - held, updates - held, removals - gone), drift, stamps=stamps, stamped=True)

    @staticmethod
    def _diff_whole(writer: Any, desired: dict[str, DesiredItem], record: Row | None, snapshot: Snapshot, change: Change) -> Diff:
        """A whole-bundle target: one stamp (blob ETag, bundle secret times and tags) for everything."""
        last_etag = _recorded_etag(record)
        etag = snapshot.etag if snapshot.exists else None
        if last_etag is not None and (etag or "") == last_etag:
            return Diff(change, set(), etag=last_etag, whole=True)
        if not snapshot.exists:
            return Diff(change, {"(content)"} if last_etag else set(), etag=last_etag, whole=True)
        holds = getattr(writer, "holds", None)
        if not snapshot.foreign and holds is not None and holds(desired, set()):
            return Diff(Change(), set(), etag=etag, whole=True)
        return Diff(change, {"(content)"} if last_etag else set(), etag=last_etag, whole=True)

    @staticmethod
    def _diff_by_value(desired: dict[str, DesiredItem], record: Row | None, snapshot: Snapshot, change: Change) -> Diff:
        """A target read with its values (app settings): the fingerprint of what is there now is
        compared with what vaultrelay pushed (or accepted)."""
        recorded: dict[str, str] = record.json("fingerprints", {}) if record else {}
        pending: dict[str, str] = record.json("pending", {}) if record else {}
        accepted: dict[str, str] = record.json("stamps", {}) if record else {}
        current = snapshot.fingerprints
        drift: set[str] = set()
        for n, fp in recorded.items():
            if n not in current:
                continue
            ours = {accepted.get(n, fp), pending.get(n), desired[n].fingerprint if n in desired else None} - {None}
            if (current[n] or "") not in ours:
                drift.add(n)
        placed = {n for n in desired if n not in snapshot.foreign and current.get(n) == desired[n].fingerprint}
        gone = {n for n in change.removals if n in current and current[n] is None}
        stamps = {n: s for n, s in accepted.items() if n in desired and n not in placed}
        return Diff(Change(change.adds - placed, change.updates - placed, change.removals - gone), drift, stamps=stamps)

    def _fail(self, report: TargetReport, message: str, dry_run: bool) -> TargetReport:
        report.outcome = "error"
        report.error = message
        log.warning("sync %s -> %s failed: %s", report.env, report.target, message)
        if not dry_run:
            try:
                self._record_error(report.env, report.target, message)
            except StateUnavailable as exc:
                report.error = f"{message} (not recorded for status: {exc})"
        return report

    def _record_error(self, env: str, target: str, message: str) -> None:
        record = self.state.get("pushes", env, target)
        if record is not None and record.fields.get("error") == message:
            return
        self._write_record(env, target, record, {"error": message, "failed_at": self.clock().isoformat(), "outcome": "error"})

    def _update_record(self, record: Row, updates: dict[str, Any]) -> None:
        self._write_record(record.partition, record.key, record, updates)

    def _write_record(self, env: str, target: str, record: Row | None, updates: dict[str, Any]) -> Row:
        """Merge `updates` into the push record, conditionally on its ETag (re-read on conflict).

        Raises:
            Conflict: the record kept changing.
            StateUnavailable: the table failed.
        """
        for _ in range(5):
            row = Row(env, target, dict(record.fields) if record else {}, record.etag if record else None)
            for key, value in updates.items():
                if isinstance(value, dict | list):
                    row.set_json(key, value)
                else:
                    row.fields[key] = value
            try:
                return self.state.put("pushes", row)
            except Conflict:
                record = self.state.get("pushes", env, target)
        raise Conflict(f"push record {env}/{target} kept changing")

    # ---- drift ------------------------------------------------------------------------------
    def accept_drift(self, env: str | None = None, target: str | None = None, names: Sequence[str] = ()) -> list[TargetReport]:
        """Accept the drift recorded for the matching targets (all drifted names, or `names`): what
        each target holds now becomes the baseline, so it is no longer reported; vaultrelay still
        owns the names, and a later change of the env is pushed over it as usual.  Audited.

        Raises:
            NotFoundError: no target matches `env` and `target`.
            StateUnavailable: the state tables failed.
        """
        chosen = {n: t for n, t in sorted(self.config.targets.items()) if (env is None or t.env == env) and (target is None or n == target)}
        if not chosen:
            raise NotFoundError(f"no target {target or ''} of env {env or '(any)'} in the config (targets: {', '.join(sorted(self.config.targets)) or 'none'})")
        reports: list[TargetReport] = []
        for name, config in chosen.items():
            report = TargetReport(config.env, name, config.type)
            record = self.state.get("pushes", config.env, name)
            found = drift_found(record)
            accept = set(found) & set(names) if names else set(found)
            if record is None or not accept:
                reports.append(report)
                continue
            lease = self.state.acquire_lease(f"sync:{config.env}", self.owner, LEASE_SECONDS, stale=holder_is_dead)
            if lease is None:
                report.outcome = "busy"
                reports.append(report)
                continue
            try:
                reports.append(self._accept(report, config, accept))
            finally:
                self.state.release_lease(lease)
        return reports

    def _accept(self, report: TargetReport, config: Any, accept: set[str]) -> TargetReport:
        record = self.state.get("pushes", report.env, report.target)  # again, under the lease
        found = drift_found(record)
        accept &= set(found)
        if record is None or not accept:
            return report
        recorded: dict[str, str] = record.json("fingerprints", {})
        pending: dict[str, str] = record.json("pending", {})
        try:
            writer = self.registry.build(config, self._context(report.target, config, record))
            snapshot = writer.snapshot(set(recorded) | set(pending), {**pending, **recorded})
        except TargetError as exc:
            report.outcome, report.error = "error", str(exc)
            return report
        updates: dict[str, Any] = {"drift": {n: t for n, t in found.items() if n not in accept}}
        if writer.whole_bundle:
            updates["target_etag"] = (snapshot.etag if snapshot.exists else "") or ""
        else:
            current = snapshot.stamps if getattr(writer, "stamped", False) else snapshot.fingerprints
            updates["stamps"] = {**record.json("stamps", {}), **{n: current.get(n) or "" for n in accept}}
        self._update_record(record, updates)
        self.state.audit(self.owner, "drift.accepted", f"{report.env}->{report.target}", {"accepted": sorted(accept), "drift_policy": config.drift_policy})
        report.outcome, report.drift = "accepted", sorted(accept)
        return report

    # ---- status -------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Per env and target: last push, drift (with when each name was found), last error; per
        rotation: active key, next due."""
        rows: list[dict[str, Any]] = []
        for name, target in sorted(self.config.targets.items()):
            record = self.state.get("pushes", target.env, name)
            fields = record.fields if record else {}
            found = drift_found(record)
            rows.append({
                "env": target.env, "target": name, "kind": target.type, "last_push": fields.get("pushed_at", ""),
                "outcome": fields.get("outcome", "never"), "drift": ", ".join(sorted(found)),
                "drift_found": dict(sorted(found.items())), "drift_since": min((t for t in found.values() if t), default=""),
                "drift_policy": target.drift_policy,
                "last_error": fields.get("error", ""), "variables": len(record.json("fingerprints", {})) if record else 0,
            })
        return rows

    def poisoned_status(self) -> list[dict[str, Any]]:
        """Envs whose work item went to the poison queue: env, cause, item, trigger, when (no values)."""
        return [{"env": row.key, "cause": str(row.fields.get("cause", "")), "item": str(row.fields.get("item", "")),
                 "trigger": str(row.fields.get("trigger", "")), "reason": str(row.fields.get("reason", "")),
                 "at": str(row.fields.get("at", "")), "deliveries": int(row.fields.get("deliveries", 0) or 0)}
                for row in self.state.poisoned()]

    def rotation_status(self) -> list[dict[str, Any]]:
        rows = []
        for kind in ROTATION_PARTITIONS:  # tagged: core.rotation.tagged_secrets
            for row in self.state.query("rotations", kind):
                rows.append({"kind": kind, "name": row.key, **{k: v for k, v in row.fields.items() if not k.startswith("fp_")}})
        return rows
