"""`type: keyvault` target: one secret per variable, or one JSON secret for the whole bundle.

Every secret written carries `managed-by: vaultrelay`, the env, the target and a keyed fingerprint
in its tags, plus content type and `expires_on` for values that expire.  A secret that exists
without `managed-by: vaultrelay` is never overwritten or deleted.  Removed variables are deleted
(soft delete) or kept per `deletion_policy`.
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.permissions import denied_note
from core.targets.base import (
    MANAGED_BY,
    MANAGED_BY_VALUE,
    TAG_ENV,
    TAG_FINGERPRINT,
    TAG_TARGET,
    Change,
    DesiredItem,
    PushResult,
    Snapshot,
    TargetContext,
    TargetError,
)

LISTING_TTL_S = 60.0
WRITE_CONCURRENCY = 8  # secrets written at once per target (the vault's pacer slows them on 429s)


def _attempt(operation: Callable[[], None]) -> TargetError | None:
    try:
        operation()
    except TargetError as exc:
        return exc
    return None


class KeyVaultTargetWriter:
    kind = "keyvault"
    ownership_in_state = False

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx
        self.whole_bundle = config.mode == "bundle"
        self.client = ctx.clients.secret_client(config.vault, ctx.credential)
        self.bundle_secret = str(config.bundle_secret)

    def _secret(self, variable: str) -> str:
        return str(self.config.secret_for(variable))

    def _list(self) -> dict[str, Any]:
        """Name -> properties of every secret in the vault.  One listing serves every target of
        a sync run on this vault for LISTING_TTL_S (a vault of 10,000 secrets is 400 pages);
        vaultrelay's own writes update it, other writers are seen by a later listing."""
        key = f"keyvault-listing {self.client.vault_url}"
        cached = self.ctx.run_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < LISTING_TTL_S:
            return dict(cached[1])
        try:
            listing = {p.name: p for p in self.client.list_properties_of_secrets()}
        except Exception as exc:
            raise TargetError(f"target {self.ctx.name}: cannot list secrets of vault {self.config.vault}: {_cause(exc)}") from None
        self.ctx.run_cache[key] = (time.monotonic(), listing)
        return dict(listing)

    def _listed(self, name: str, properties: Any) -> None:
        cached = self.ctx.run_cache.get(f"keyvault-listing {self.client.vault_url}")
        if cached is not None:
            if properties is None:
                cached[1].pop(name, None)
            else:
                cached[1][name] = properties

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        existing = self._list()
        snapshot = Snapshot()
        if self.whole_bundle:
            props = existing.get(self.bundle_secret)
            if props is not None:
                tags = props.tags or {}
                if tags.get(MANAGED_BY) != MANAGED_BY_VALUE:
                    snapshot.foreign.add(self.bundle_secret)
                snapshot.etag = snapshot.bundle_fingerprint = tags.get(TAG_FINGERPRINT)
            snapshot.exists = props is not None
            return snapshot
        for variable in names:
            props = existing.get(self._secret(variable))
            if props is None:
                snapshot.fingerprints[variable] = None
                continue
            tags = props.tags or {}
            if tags.get(MANAGED_BY) != MANAGED_BY_VALUE:
                snapshot.foreign.add(variable)
            snapshot.fingerprints[variable] = tags.get(TAG_FINGERPRINT)
        return snapshot

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        foreign = sorted(snapshot.foreign & (set(change.writes) | set(change.removals))) if not self.whole_bundle else sorted(snapshot.foreign)
        if foreign:
            names = ", ".join(self._secret(v) if not self.whole_bundle else v for v in foreign)
            raise TargetError(f"target {self.ctx.name}: vault {self.config.vault} has secret(s) {names} not managed by vaultrelay; refusing to overwrite")
        if self.whole_bundle:
            return self._push_bundle(env, desired)
        # One secret per write, WRITE_CONCURRENCY at a time (each variable has a secret of its
        # own: config validation refuses two variables or targets on one secret).  A failure
        # leaves the others written (each tagged with its fingerprint), which the next run sees
        # as already in place and does not write again.
        removals = sorted(v for v in change.removals if snapshot.fingerprints.get(v) is not None) if self.config.deletion_policy == "delete" else []
        operations: list[Callable[[], None]] = [
            *(functools.partial(self._set_variable, variable, desired[variable], env) for variable in sorted(change.writes)),
            *(functools.partial(self._delete, self._secret(variable)) for variable in removals),
        ]
        if len(operations) <= 1:
            outcomes = [_attempt(operation) for operation in operations]
        else:
            with ThreadPoolExecutor(max_workers=min(WRITE_CONCURRENCY, len(operations)), thread_name_prefix="vaultrelay-kv-write") as pool:
                outcomes = list(pool.map(_attempt, [functools.partial(contextvars.copy_context().run, op) for op in operations]))
        failures = [outcome for outcome in outcomes if outcome is not None]
        writes = len(operations) - len(failures)
        if failures:
            more = f"and {len(failures) - 1} more; " if len(failures) > 1 else ""
            raise TargetError(f"{failures[0]} ({more}{writes} of {len(operations)} writes done; the next run writes the rest)") from None
        return PushResult(writes=writes)

    def _set_variable(self, variable: str, item: DesiredItem, env: str) -> None:
        self._set(self._secret(variable), item.value.reveal(), item, env)

    def _push_bundle(self, env: str, desired: dict[str, DesiredItem]) -> PushResult:
        payload = json.dumps({name: item.value.reveal() for name, item in sorted(desired.items())}, sort_keys=True)
        fingerprint = self.ctx.fingerprinter.of_mapping({n: i.value for n, i in desired.items()})
        expiries = [i.expires_on for i in desired.values() if i.expires_on is not None]
        item = DesiredItem(self.bundle_secret, None, fingerprint, min(expiries) if expiries else None, "application/json")
        self._set(self.bundle_secret, payload, item, env)
        return PushResult(etag=fingerprint, writes=1)

    def _set(self, name: str, value: str, item: DesiredItem, env: str) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError

        tags = {MANAGED_BY: MANAGED_BY_VALUE, TAG_ENV: env, TAG_TARGET: self.ctx.name, TAG_FINGERPRINT: item.fingerprint}
        kwargs = {"content_type": item.content_type, "expires_on": item.expires_on, "tags": tags}
        try:
            try:
                written = self.client.set_secret(name, value, **kwargs)
            except (ResourceExistsError, HttpResponseError) as exc:
                if getattr(exc, "status_code", None) != 409:
                    raise
                # Deleted earlier (by vaultrelay's deletion policy) and still recoverable: recover, then set.
                self.client.begin_recover_deleted_secret(name).wait()
                written = self.client.set_secret(name, value, **kwargs)
            self._listed(name, written.properties)
        except AzureError as exc:
            raise TargetError(f"target {self.ctx.name}: setting {name} in vault {self.config.vault} failed: {_cause(exc)}") from None

    def _delete(self, name: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self.client.begin_delete_secret(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise TargetError(f"target {self.ctx.name}: deleting {name} in vault {self.config.vault} failed: {_cause(exc)}") from None
        self._listed(name, None)


def _cause(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    return (f"HTTP {status}" if status else type(exc).__name__) + denied_note(exc, "target:keyvault")
