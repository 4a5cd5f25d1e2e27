"""The connections to a config's secret stores, shared by the CLI and the Function app.

`StoreConnections` is one per process and config: the cloud, the shared credentials and SDK
clients, the per-store runtime settings, and resolving an env through them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from core.azure.clients import AzureClients
from core.azure.protocols import SecretClientLike
from core.bundle import Bundle
from core.compose import compose_bundle
from core.config import LoadedConfig, ManagedIdentityStore, resolve_cloud
from core.config.cloud import CloudEndpoints
from core.errors import ConfigError, ConfigProblem, NotFoundError
from core.identity import CredentialPool, credential_spec
from core.ownership import MANAGED_BY, MANAGED_BY_VALUE
from core.plan import EnvPlan, plan_env
from core.resolve import Resolver
from core.sources.base import PlannedRef, StoreRuntime
from core.sources.listed_keys import listed_keys_ttl
from core.sources.registry import sources
from core.state.fingerprints import Fingerprinter

log = logging.getLogger("vaultrelay.plan")

FINGERPRINT_SECRET = "vaultrelay-fingerprint-key"


class StoreConnections:
    """Resolves a config's envs with shared credentials and clients (one per process and config)."""

    def __init__(
        self, loaded: LoadedConfig, *, environ: Mapping[str, str] | None = None,
        credentials: CredentialPool | None = None, clients: AzureClients | None = None,
    ) -> None:
        self.loaded = loaded
        self.environ = os.environ if environ is None else environ
        self.cloud: CloudEndpoints = resolve_cloud(loaded.config.cloud, self.environ)
        stores = loaded.config.secretStores.values()
        pool = max([s.performance.max_concurrent for s in stores] + [10])
        self.clients = clients or AzureClients(self.cloud, pool_size=pool)
        self.credentials = credentials or CredentialPool()
        self._stores: dict[str, StoreRuntime] = {}
        self._store_errors: dict[str, str] = {}
        self.last_stats: Any = None
        self._delegation_keys: Any = None  # core.mint.sas.StoredDelegationKeys, built on first use
        self._delegation_keys_checked = False
        self._plans: dict[str, EnvPlan] = {}
        self._fingerprinter: Fingerprinter | None = None
        self._lock = threading.Lock()

    # ---- stores -------------------------------------------------------------------------
    def store(self, name: str) -> StoreRuntime:
        """The runtime of store `name` (its credential is built on first use).

        Raises:
            NotFoundError: no such store.
            ValueError: the store has no usable credential.
        """
        if name in self._stores:
            return self._stores[name]
        config = self.loaded.config.secretStores.get(name)
        if config is None:
            raise NotFoundError(f"no store '{name}'")
        skipped = frozenset(i for (store, i) in self.loaded.skipped_fallbacks if store == name)
        spec = credential_spec(config, self.cloud, skipped=skipped, environ=self.environ)
        credential = self.credentials.get(spec)
        runtime = StoreRuntime(
            name=name, credential=credential, identity_description=spec.description,
            max_concurrent=config.performance.max_concurrent, batch_size=config.performance.batch_size,
            secret_cache_ttl=float(config.cache.secret_cache.ttl) if config.cache.secret_cache.enabled else 0.0,
            listed_keys_ttl=listed_keys_ttl(self.environ),
        )
        if isinstance(config, ManagedIdentityStore):
            identity = config.identity
            uses_identity = config.fallback is None or any(f.type == "managed_identity" for f in config.fallback)
            runtime.client_id = identity.client_id if uses_identity else None
            runtime.user_assigned = identity.type == "user_assigned" and uses_identity
            runtime.default_subscription = (config.default_subscription or self.environ.get("VAULTRELAY_SUBSCRIPTION_ID")
                                            or self.environ.get("AZURE_SUBSCRIPTION_ID") or None)
            runtime.resource_overrides = {
                (r.type, r.name.lower()): (r.subscription, r.resource_group) for r in config.resources
            }
            runtime.max_sas_expiry = timedelta(seconds=config.max_sas_expiry)
            runtime.preferred_regions = tuple(config.preferred_regions)
            if config.debug.log_requests:
                self.clients.log_requests_for(credential)
            if config.debug.enabled:
                logging.getLogger("vaultrelay").setLevel(logging.DEBUG)
        self._stores[name] = runtime
        log.info("store %s: %s", name, spec.description)
        return runtime

    def kept_delegation_keys(self) -> Any:
        """The user delegation keys kept between runs in `state.vault` (one object per StoreConnections,
        so per process and config), or None when there is nowhere to keep them: the config has no
        `state.vault`, or the state store has no usable identity.  Without them a key is requested
        per run.  The reason is logged once; a key never is."""
        with self._lock:
            if self._delegation_keys_checked:
                return self._delegation_keys
            self._delegation_keys_checked = True
            settings = self.loaded.config.state
            if settings is None or not settings.vault:
                log.info("user delegation keys are requested per run: the config has no state.vault to keep them in")
                return None
            try:
                credential = self.store(settings.store).credential
                vault = self.clients.secret_client(settings.vault, credential)
            except (ValueError, NotFoundError) as exc:
                log.warning("user delegation keys are requested per run: state store '%s' is not usable (%s)", settings.store, exc)
                return None
            from core.mint.sas import StoredDelegationKeys

            self._delegation_keys = StoredDelegationKeys(vault)
            return self._delegation_keys

    # ---- resolve ------------------------------------------------------------------------
    def env_plan(self, env: str) -> EnvPlan:
        """The env's plan (pure: config -> plan), computed once per config and then shared by
        every run and use case over it: callers read it, never change it.

        Raises:
            NotFoundError: no such env.
        """
        plan = self._plans.get(env)
        if plan is None:
            plan = self._plans.setdefault(env, plan_env(self.loaded, env))
        return plan

    def plan(self, env: str) -> EnvPlan:
        """The env's plan with the identity each of its stores uses (for `vaultrelay plan`).

        Raises:
            NotFoundError: no such env.
        """
        plan = self.env_plan(env)
        stores: dict[str, str] = {}
        for ref in plan.refs:
            if ref.store not in stores:
                try:
                    stores[ref.store] = self.store(ref.store).identity_description
                except ValueError as exc:
                    stores[ref.store] = f"unusable: {exc}"
        return replace(plan, stores=stores)

    def resolve(self, env: str, *, active_key: Any = None) -> Bundle:
        """Resolve every variable of `env`; per-variable failures land in the bundle.

        `active_key(kind, account)` names the key rotation keeps in use ("key1"/"key2" for
        storage, "primary"/"secondary" for Cosmos DB); default key1 / primary.

        Raises:
            NotFoundError: no such env.
        """
        plan = self.env_plan(env)
        bundle = self.resolve_refs(env, plan.refs, plan.literals, active_key=active_key)
        compose_bundle(bundle, plan.composed)
        return bundle

    def resolve_refs(self, env: str, refs: list[PlannedRef], literals: Mapping[str, str] | None = None, *, active_key: Any = None,
                     fresh: bool = False, delegation_keys: Any = None, reuse_listings: bool = False) -> Bundle:
        """Resolve `refs` (and pass `literals` through) as one run; `fresh` bypasses the secret cache
        (minting must mint); `delegation_keys` keeps user delegation keys between runs (default:
        this StoreConnections's, kept in `state.vault` when the config has one).

        Storage key listings kept in this process (core.sources.listed_keys) are reused unless
        `fresh` or `active_key` is given: a run that consults the rotation record (the sync
        engine's) or mints lists afresh, and what it lists is kept for the fetches that follow.
        `reuse_listings` lets a run with `active_key` reuse them too (a work item, which first
        drops listings older than the accounts' last key switch: core.app.work)."""
        plan = EnvPlan(env=env, literals=dict(literals or {}), refs=list(refs))
        if delegation_keys is None and any(sources().get(r.kind).uses_delegation_key(r) for r in plan.refs):
            delegation_keys = self.kept_delegation_keys()
        stores: dict[str, StoreRuntime] = {}
        unusable: dict[str, str] = {}
        for ref in plan.refs:
            if ref.store in stores or ref.store in unusable:
                continue
            try:
                stores[ref.store] = self.store(ref.store)
            except ValueError as exc:
                unusable[ref.store] = str(exc)
        from core.value_cache import ValueCache

        resolver = Resolver(stores, self.clients, sql_suffix=self.cloud.sql_suffix, active_key=active_key,
                            value_cache=ValueCache() if fresh else None, delegation_keys=delegation_keys,
                            reuse_listings=not fresh and (active_key is None or reuse_listings))
        bundle = resolver.resolve(env, [r for r in plan.refs if r.store in stores], plan.literals)
        self.last_stats = resolver.last_stats
        for ref in plan.refs:
            if ref.store in unusable:
                from core.bundle import ResolutionFailure

                bundle.failures[ref.name] = ResolutionFailure(ref.name, ref.path, "identity", f"store '{ref.store}': {unusable[ref.store]}")
        return bundle

    def close(self) -> None:
        self.clients.close()
        self.credentials.close()

    # ---- state: the fingerprint key ----------------------------------------------------
    def state_vault(self) -> SecretClientLike:
        """The client of `state.vault` (the config has one)."""
        settings = self.loaded.config.state
        assert settings is not None and settings.vault is not None
        return self.clients.secret_client(settings.vault, self.store(settings.store).credential)

    def fingerprinter(self) -> Fingerprinter:
        """The HMAC key: `state.fingerprint_key`, else $VAULTRELAY_FINGERPRINT_KEY, else a key kept
        in `state.vault` (created once; the oldest version wins if two instances race).

        Raises:
            ConfigError: no key can be found or made.
        """
        if self._fingerprinter is None:
            made = Fingerprinter(self._fingerprint_key().encode())
            with self._lock:
                if self._fingerprinter is None:
                    self._fingerprinter = made
        return self._fingerprinter

    def _fingerprint_key(self) -> str:
        settings = self.loaded.config.state
        configured = settings.fingerprint_key if settings else None
        if configured is not None:
            return self.resolve_variable(configured, "state.fingerprint_key")
        from_env = self.environ.get("VAULTRELAY_FINGERPRINT_KEY")
        if from_env:
            return from_env
        if settings is not None and settings.vault:
            return self._vault_fingerprint_key()
        raise ConfigError([ConfigProblem(self.loaded.file, None, "state.fingerprint_key",
                                         "no fingerprint key: set state.fingerprint_key, $VAULTRELAY_FINGERPRINT_KEY or state.vault")])

    def _vault_fingerprint_key(self) -> str:
        import secrets

        from azure.core.exceptions import ResourceNotFoundError

        vault = self.state_vault()
        try:
            vault.get_secret(FINGERPRINT_SECRET)
        except ResourceNotFoundError:
            vault.set_secret(FINGERPRINT_SECRET, secrets.token_urlsafe(48), content_type="application/x-vaultrelay-key",
                             tags={MANAGED_BY: MANAGED_BY_VALUE})
        versions = sorted(vault.list_properties_of_secret_versions(FINGERPRINT_SECRET), key=lambda p: (p.created_on, p.version))
        return str(vault.get_secret(FINGERPRINT_SECRET, versions[0].version).value)

    def resolve_variable(self, variable: Any, path: str) -> str:
        """A literal or a single `from:` reference (signing keys, the fingerprint key).

        Raises:
            ConfigError: the reference does not resolve.
        """
        if variable.from_ is None:
            return str(variable.value)
        from core.plan import plan_reference

        ref = plan_reference("_", path, variable.from_, self.loaded.config.secretStores[variable.from_.store])
        bundle = self.resolve_refs("_", [ref])
        if bundle.failures:
            raise ConfigError([ConfigProblem(self.loaded.file, None, path, f"does not resolve: {bundle.failures['_'].reason}")])
        return str(bundle.values["_"].value.reveal())
