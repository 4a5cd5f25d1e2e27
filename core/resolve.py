"""Resolve an env: deduplicated, concurrent, cached, with per-reference failures.

* Identical references (same store, kind and parameters) are fetched once per run, whatever
  the variables that use them; shared ARM calls (listKeys, delegation keys, discovery) run once
  per run through the run context.
* Fetches run on a thread pool; each store allows at most `performance.max_concurrent` of its
  fetches at once and dispatches them in waves of `performance.batch_size`.
* `cache.secret_cache` keeps values across runs in this process for `ttl` seconds.
* A failure is recorded for its variables only; the rest still resolve.  Nothing here logs or
  raises a value.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import time
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.azure.clients import AzureClients
from core.bundle import Bundle, ResolutionFailure, ResolvedValue
from core.sources.base import PlannedRef, RunContext, StoreRuntime, translate_error
from core.sources.fetched import Fetched
from core.sources.registry import SourceRegistry, default_registry, sources
from core.value_cache import ValueCache

log = logging.getLogger("vaultrelay.resolve")

# Values survive between runs in one process (a warm Functions instance) only for stores that
# enable secret_cache, and only for their ttl.
PROCESS_VALUE_CACHE: ValueCache[Fetched] = ValueCache()


@dataclass
class ResolveStats:
    references: int = 0
    unique: int = 0
    fetched: int = 0
    cache_hits: int = 0
    failed: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


class Resolver:
    """Resolves planned references with the stores' identities."""

    def __init__(
        self, stores: Mapping[str, StoreRuntime], clients: AzureClients, *,
        registry: SourceRegistry | None = None, value_cache: ValueCache[Fetched] | None = None,
        sql_suffix: str = "database.windows.net", active_key: Any = None, delegation_keys: Any = None,
        reuse_listings: bool = True,
    ) -> None:
        self.stores = dict(stores)
        self.clients = clients
        self.registry = registry or default_registry()
        self.value_cache = value_cache if value_cache is not None else PROCESS_VALUE_CACHE
        self.sql_suffix = sql_suffix
        self.active_key = active_key
        self.delegation_keys = delegation_keys  # core.mint.sas.StoredDelegationKeys, when kept between runs
        self.reuse_listings = reuse_listings  # storage key listings kept in the process (core.sources.listed_keys)
        self.last_stats = ResolveStats()

    def resolve(self, env: str, refs: Iterable[PlannedRef], literals: Mapping[str, Any] | None = None) -> Bundle:
        """Resolve every reference of `env`; literals are passed through.

        Never raises for a reference's failure: it lands in `Bundle.failures`.
        """
        began = time.monotonic()
        bundle = Bundle(env=env)
        for name, value in (literals or {}).items():
            bundle.values[name] = ResolvedValue.literal(name, value)
        refs = list(refs)
        groups: dict[tuple[Any, ...], list[PlannedRef]] = {}
        for ref in refs:
            groups.setdefault(ref.dedup_key, []).append(ref)
        stats = ResolveStats(references=len(refs), unique=len(groups))
        run = RunContext(clients=self.clients, sql_suffix=self.sql_suffix, reuse_listings=self.reuse_listings)
        if self.active_key is not None:
            run.active_key = self.active_key  # type: ignore[attr-defined]
        if self.delegation_keys is not None:
            run.delegation_keys = self.delegation_keys  # type: ignore[attr-defined]

        pending: dict[Future[Fetched], list[PlannedRef]] = {}
        to_fetch: list[tuple[PlannedRef, list[PlannedRef]]] = []
        for key, group in groups.items():
            first = group[0]
            store = self.stores.get(first.store)
            if store is None:
                self._fail(bundle, group, "invalid", f"unknown store '{first.store}'", None)
                continue
            cached = self.value_cache.get(self._cache_key(store, key)) if store.secret_cache_ttl > 0 else None
            if cached is not None:
                stats.cache_hits += 1
                self._succeed(bundle, group, store, cached)
                continue
            to_fetch.append((first, group))

        workers = max([s.max_concurrent for s in self.stores.values()] + [1])
        with ThreadPoolExecutor(max_workers=min(workers * max(1, len(self.stores)), 256), thread_name_prefix="vaultrelay-resolve") as pool:
            for credential, scope in self._token_prefetches(to_fetch):
                pool.submit(contextvars.copy_context().run, credential.prefetch, scope)
            for wave in self._waves(to_fetch):
                for first, group in wave:
                    store = self.stores[first.store]
                    pending[pool.submit(contextvars.copy_context().run, self._fetch, first, store, run)] = group  # the log context follows
            for future, group in pending.items():
                first = group[0]
                store = self.stores[first.store]
                try:
                    fetched = future.result()
                except Exception as exc:
                    reason, message, hint = translate_error(exc)
                    self._fail(bundle, group, reason, message, hint)
                    stats.failed += len(group)
                    continue
                stats.fetched += 1
                stats.by_kind[first.kind] = stats.by_kind.get(first.kind, 0) + 1
                if store.secret_cache_ttl > 0:
                    self.value_cache.put(self._cache_key(store, first.dedup_key), fetched, self._ttl(store, fetched))
                self._succeed(bundle, group, store, fetched)
        stats.seconds = time.monotonic() - began
        self.last_stats = stats
        log.debug("resolved env %s: %d references, %d unique, %d fetched, %d cached, %d failed in %.3fs",
                  env, stats.references, stats.unique, stats.fetched, stats.cache_hits, stats.failed, stats.seconds)
        return bundle

    def _token_prefetches(self, items: list[tuple[PlannedRef, list[PlannedRef]]]) -> list[tuple[Any, str]]:
        """(credential, scope) of the Key Vault tokens this run will need and has not cached.

        A Key Vault client asks for its token only after the vault's 401 challenge names the
        scope; fetching it alongside the challenge takes one round trip off a cold run.  The
        scope is the cloud's vault audience, what every vault of the cloud's domain names.
        """
        wanted: dict[tuple[int, str], tuple[Any, str]] = {}
        for first, _group in items:
            read = self.registry.get(first.kind).keyvault_object(first)
            if read is None:
                continue
            store = self.stores[first.store]
            scope = self.clients.keyvault_scope(read[0])
            if scope is None or not hasattr(store.credential, "prefetch"):
                continue
            wanted.setdefault((id(store.credential), scope), (store.credential, scope))
        return [(credential, scope) for credential, scope in wanted.values() if not credential.has_token(scope)]

    def _waves(self, items: list[tuple[PlannedRef, list[PlannedRef]]]) -> Iterable[list[tuple[PlannedRef, list[PlannedRef]]]]:
        # Interleave stores so one slow store does not hold back another's first wave.
        by_store: dict[str, list[tuple[PlannedRef, list[PlannedRef]]]] = {}
        for item in items:
            by_store.setdefault(item[0].store, []).append(item)
        by_store = {name: _dispatch_order(queue, self.registry) for name, queue in by_store.items()}
        offsets = dict.fromkeys(by_store, 0)
        while any(offsets[s] < len(by_store[s]) for s in by_store):
            wave: list[tuple[PlannedRef, list[PlannedRef]]] = []
            for store_name, queue in by_store.items():
                size = self.stores[store_name].batch_size
                wave.extend(queue[offsets[store_name]: offsets[store_name] + size])
                offsets[store_name] += size
            yield wave

    def _fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        source = self.registry.get(ref.kind)
        with store.semaphore:
            log.debug("fetching %s for %s via store %s (%s)", ref.description, ref.name, store.name, store.identity_description)
            return source.fetch(ref, store, run)

    @staticmethod
    def _cache_key(store: StoreRuntime, key: tuple[Any, ...]) -> tuple[Any, ...]:
        return (store.identity_description, *key)

    @staticmethod
    def _ttl(store: StoreRuntime, fetched: Fetched) -> float:
        ttl = store.secret_cache_ttl
        if fetched.expires_on is not None:
            # Never serve a cached value past (or close to) its own expiry.
            remaining = fetched.expires_on.timestamp() - time.time() - 60
            ttl = min(ttl, remaining)
        return ttl

    @staticmethod
    def _succeed(bundle: Bundle, group: list[PlannedRef], store: StoreRuntime, fetched: Fetched) -> None:
        from core.sources.transforms import TransformError, apply_transforms
        from core.values import SecretValue

        for ref in group:
            value, content_type = fetched.value, fetched.content_type
            if ref.transforms:
                try:
                    value = apply_transforms(value, ref.transforms)
                except TransformError as exc:
                    bundle.failures[ref.name] = ResolutionFailure(name=ref.name, path=ref.path, reason="invalid", message=str(exc))
                    log.warning("could not resolve %s (%s): invalid (a transform failed)", ref.name, ref.path)
                    continue
                content_type = None  # the shaped value is no longer what the source's content type describes
            bundle.values[ref.name] = ResolvedValue(
                name=ref.name, value=SecretValue(value), source=ref.description, store=store.name,
                identity=store.identity_description, version=fetched.version, expires_on=fetched.expires_on,
                content_type=content_type, detail=dict(fetched.detail),
            )

    @staticmethod
    def _fail(bundle: Bundle, group: list[PlannedRef], reason: str, message: str, hint: str | None) -> None:
        for ref in group:
            bundle.failures[ref.name] = ResolutionFailure(name=ref.name, path=ref.path, reason=reason, message=message, hint=hint)
            log.warning("could not resolve %s (%s): %s", ref.name, ref.path, reason)


def forget_values(**params: str) -> int:
    """Drop cached values of references whose parameters include all of `params` (compared
    case-insensitively), e.g. `forget_values(account="acct")` after a key rotation or
    `forget_values(vault="kv", secret="db")` after a new secret version."""
    wanted = {k: v.lower() for k, v in params.items()}

    def matches(key: Any) -> bool:
        found = dict(key[-1]) if isinstance(key, tuple) and key and isinstance(key[-1], tuple) else {}
        return all(str(found.get(k, "")).lower() == v for k, v in wanted.items())

    return PROCESS_VALUE_CACHE.invalidate(matches)


def _dispatch_order(items: list[tuple[PlannedRef, list[PlannedRef]]], registry: SourceRegistry | None = None) -> list[tuple[PlannedRef, list[PlannedRef]]]:
    """One store's fetches in the order that shortens the run's critical path.

    First one reference per target (vault, account): their one-off round trips (the Key Vault
    challenge and token, the ARM token and listKeys) then overlap instead of each target waiting
    for the previous one.  Then the other fetches that need requests of their own, round-robin over
    targets.  Last the references that only reuse a per-run shared call (a second key or SAS of an
    account): by then the shared call is done, so they never hold a concurrency slot while waiting.
    Each source says what its fetch targets and whether it shares a call (core.sources.base.Source).
    """
    registry = registry or sources()
    groups: dict[Hashable, list[tuple[PlannedRef, list[PlannedRef]]]] = {}
    for item in items:
        groups.setdefault(registry.get(item[0].kind).fetch_target(item[0]), []).append(item)

    def shares(item: tuple[PlannedRef, list[PlannedRef]]) -> bool:
        return registry.features(item[0].kind).shares_account_call

    leaders = [group[0] for group in groups.values()]
    independent = [[item for item in group[1:] if not shares(item)] for group in groups.values()]
    spread = [item for row in itertools.zip_longest(*independent) for item in row if item is not None]
    followers = [item for group in groups.values() for item in group[1:] if shares(item)]
    return leaders + spread + followers
