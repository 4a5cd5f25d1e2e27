"""`resource_type: storage`: account keys (`key: key1|key2|active`) and minted SAS tokens.

Keys are listed once per account per run (`listKeys` is shared by every reference to the
account), and kept between fetches in one process for a bounded time (core.sources.listed_keys):
the storage resource provider throttles `listKeys` per subscription and region.  When a reference
names no resource group, the account is found by listing the subscription's storage accounts
(needs `Microsoft.Storage/storageAccounts/read`, e.g. Reader); give `resource_group` (or a
`resources:` entry) to avoid it.

An account with `allowSharedKeyAccess: false` gets neither its keys published nor a key-signed
SAS minted (core.sources.key_access).  A user delegation SAS is signed with a delegation key
that ends shortly after the SAS and well inside Azure's 7-day bound (core.mint.sas).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator
from datetime import timedelta
from typing import Any

from core.mint.sas import (
    USER_DELEGATION_KEY_MAX,
    USER_DELEGATION_SAS_MAX,
    SasRequest,
    delegation_key_expiry,
    delegation_key_window,
    format_lifetime,
    mint_sas,
    sas_window,
)
from core.sources.base import STORAGE_SCOPE, PlannedRef, RunContext, SourceDefaults, StoreRuntime, constant, locate
from core.sources.fetched import Fetched, SourceProblem
from core.sources.key_access import shared_key_allowed_by, storage_refusal, storage_shared_key_allowed
from core.sources.kinds import SAS, STORAGE_KEY
from core.sources.listed_keys import PROCESS_LISTED_KEYS

log = logging.getLogger("vaultrelay.storage")

STORAGE_KIND = "storage"
STORAGE_ROTATION = "storage"  # the account key rotation record kind (core.rotation.account_keys)
_capped_warned: set[tuple[str, str]] = set()
# How much earlier than asked a user delegation SAS may end to end with the key of the run's first one.
KEY_TRIM_MAX = timedelta(minutes=5)


def _listing_key(what: str, run: RunContext, store: StoreRuntime, subscription: str, account: str) -> tuple[str, ...]:
    return (what, run.clients.cloud.arm_endpoint.lower(), subscription.lower(), account.lower(), store.identity_description)


def locate_account(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str) -> tuple[str, str]:
    """(subscription, resource group) of storage `account`.  When it is found by listing the
    subscription, the listing's `allowSharedKeyAccess` is kept too (no GET needed later).

    Raises:
        SourceProblem: the account is not in the subscription.
    """
    def listing(subscription: str) -> Iterator[Any]:
        for item in run.clients.storage_management(subscription, store.credential).storage_accounts.list():
            if str(item.name).lower() == account.lower():
                allowed = shared_key_allowed_by(item)
                PROCESS_LISTED_KEYS.put(_listing_key("shared-key", run, store, subscription, account), allowed, store.listed_keys_ttl)
                run.once(("sharedKey", subscription, account.lower(), store.name), constant(allowed))
            yield item

    return locate(ref, store, run, STORAGE_KIND, account, "storage account", listing)


def account_keys(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str, *, fresh: bool = False) -> dict[str, str]:
    """`{"key1": ..., "key2": ...}` of `account`: listed once per run, and reused from this
    process's recent listing unless `fresh` or the run lists afresh (`RunContext.reuse_listings`)."""
    subscription, group = locate_account(ref, store, run, account)

    def list_keys() -> dict[str, str]:
        client = run.clients.storage_management(subscription, store.credential)
        result = client.storage_accounts.list_keys(group, account)
        return {key.key_name.lower(): key.value for key in result.keys_property or []}

    def kept() -> dict[str, str]:
        return PROCESS_LISTED_KEYS.get(_listing_key("keys", run, store, subscription, account), store.listed_keys_ttl, list_keys,
                                       reuse=run.reuse_listings and not fresh)

    if fresh:
        return kept()
    return run.once(("listKeys", subscription, account.lower(), store.name), kept)


def require_shared_key_access(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str, doing: str) -> None:
    """Refuse `doing` when storage `account` has `allowSharedKeyAccess: false` (see core.sources.key_access).

    Raises:
        KeyAccessDisabled: the account forbids Shared Key.
    """
    subscription, group = locate_account(ref, store, run, account)

    def read() -> bool | None:
        return storage_shared_key_allowed(run.clients, subscription, group, account, store.credential,
                                          lambda: account_keys(ref, store, run, account))

    def kept() -> bool | None:
        return PROCESS_LISTED_KEYS.get(_listing_key("shared-key", run, store, subscription, account), store.listed_keys_ttl, read,
                                       reuse=run.reuse_listings)

    if run.once(("sharedKey", subscription, account.lower(), store.name), kept) is False:
        raise storage_refusal(account, doing)


def active_key_name(ref: PlannedRef, run: RunContext, account: str) -> str:
    """The key a `key: active` reference or a key-signed SAS uses (rotation state decides)."""
    chooser = getattr(run, "active_key", None)
    return str(chooser("storage", account)) if chooser is not None else "key1"


class _AccountKeyed(SourceDefaults):
    """References of one storage account share its listKeys (and delegation key) per run."""

    def fetch_target(self, ref: PlannedRef) -> Hashable:
        return ("account", False, str(ref.param("account", "")).lower())

    def follows_active_key(self, ref: PlannedRef) -> tuple[str, str] | None:
        return STORAGE_ROTATION, str(ref.param("account"))


class StorageKeySource(_AccountKeyed):
    kind = "storage_key"
    features = STORAGE_KEY.features

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        account = ref.param("account")
        key_name = ref.param("key", "key1")
        if key_name == "active":
            key_name = active_key_name(ref, run, account)
        keys = account_keys(ref, store, run, account)
        require_shared_key_access(ref, store, run, account, "publish its keys")
        if key_name not in keys:
            raise SourceProblem("not_found", f"storage account '{account}' has no key '{key_name}'")
        return Fetched(value=keys[key_name], version=key_name, content_type="application/x-storage-key", detail={"kind": "storage_key", "key": key_name})


class SasSource(_AccountKeyed):
    kind = "sas"
    features = SAS.features

    def follows_active_key(self, ref: PlannedRef) -> tuple[str, str] | None:
        return None if self.uses_delegation_key(ref) else super().follows_active_key(ref)

    def uses_delegation_key(self, ref: PlannedRef) -> bool:
        return bool(ref.param("sas_type") == "user_delegation")

    def minted_lifetime(self, ref: PlannedRef) -> timedelta | None:
        return timedelta(seconds=float(ref.param("expiry_s")))

    def token_scopes(self, ref: PlannedRef, cloud: Any) -> set[str]:
        return {STORAGE_SCOPE} if self.uses_delegation_key(ref) else {cloud.arm_scope}

    def names(self, ref: PlannedRef) -> tuple[str, str]:
        account = str(ref.param("account") or "")
        scope = "/".join(str(p) for p in (ref.param("container"), ref.param("blob"), ref.param("table")) if p)
        return f"{account}/{scope}" if scope else account, account

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        account = ref.param("account")
        request = SasRequest(
            account=account,
            sas_type=ref.param("sas_type"),
            permissions=ref.param("permissions"),
            lifetime=timedelta(seconds=ref.param("expiry_s")),
            services=ref.param("services"),
            resource_types=ref.param("resource_types"),
            container=ref.param("container"),
            blob=ref.param("blob"),
            table=ref.param("table"),
            ip=ref.param("ip"),
            https_only=ref.param("https_only", True),
        )
        if request.sas_type == "user_delegation":
            return self._user_delegation(ref, request, store, run)
        start, expiry = sas_window(request.lifetime, store.max_sas_expiry, run.clock())
        key_name = active_key_name(ref, run, account)
        keys = account_keys(ref, store, run, account)
        require_shared_key_access(ref, store, run, account, f"mint a key-signed {request.sas_type} SAS")
        return mint_sas(request, start=start, expiry=expiry, account_key=keys[key_name], signed_with=key_name)

    def _user_delegation(self, ref: PlannedRef, request: SasRequest, store: StoreRuntime, run: RunContext) -> Fetched:
        """A user delegation SAS of at most `USER_DELEGATION_SAS_MAX` (longer ones that Azure's
        7-day bound allows are capped, with a warning once per reference and process; beyond 7
        days it is refused), signed with a delegation key that ends shortly after it."""
        account = request.account
        lifetime = min(request.lifetime, store.max_sas_expiry)
        if lifetime > USER_DELEGATION_KEY_MAX:
            raise SourceProblem("invalid", f"a user delegation SAS for '{account}' cannot outlive its delegation key, which Azure "
                                           f"grants for at most {USER_DELEGATION_KEY_MAX.days} days; ask for an expiry of at most "
                                           f"{format_lifetime(USER_DELEGATION_SAS_MAX)}")
        if lifetime > USER_DELEGATION_SAS_MAX:
            warned = (ref.path, store.name)
            if warned not in _capped_warned:
                _capped_warned.add(warned)
                log.warning("%s: a user delegation SAS lasts at most %s (its delegation key must end inside Azure's 7-day bound, "
                            "measured by the service's clock); %s asks for %s, so it is capped", ref.path,
                            format_lifetime(USER_DELEGATION_SAS_MAX), ref.name, format_lifetime(lifetime))
            lifetime = USER_DELEGATION_SAS_MAX
        now = run.clock()
        start, expiry = sas_window(lifetime, lifetime, now)
        key = self._delegation_key(store, run, account, now, start, expiry, lifetime)
        key_expiry = delegation_key_expiry(key)
        if key_expiry is not None and key_expiry < expiry:
            # A key shared by SAS minted moments apart (one run) may end seconds before the later
            # one would: the SAS ends with its key.  Anything more is a key that cannot serve it.
            if expiry - key_expiry > KEY_TRIM_MAX:
                raise SourceProblem("invalid", f"a user delegation SAS for '{account}' cannot outlive its delegation key "
                                               f"(which ends {key.signed_expiry}); ask for a shorter expiry")
            expiry = key_expiry
        return mint_sas(request, start=start, expiry=expiry, user_delegation_key=key)

    @staticmethod
    def _delegation_key(store: StoreRuntime, run: RunContext, account: str, now: Any, start: Any, expiry: Any, lifetime: timedelta) -> Any:
        # A key that ends a little after the SAS it signs (core.mint.sas.delegation_key_window),
        # per account, identity and SAS lifetime: one per run, or kept between runs in the state
        # vault and reused only while it still ends within that margin of the new SAS.
        key_start, key_expiry = delegation_key_window(now, start, expiry, lifetime)

        def get() -> Any:
            return run.clients.blob_service(account, store.credential).get_user_delegation_key(key_start, key_expiry)

        kept = getattr(run, "delegation_keys", None)
        if kept is not None:
            return kept.key_for(account, f"{store.name}:{store.identity_description}", expiry, lifetime, get)
        return run.once(("udk", account.lower(), store.name, lifetime.total_seconds()), get)
