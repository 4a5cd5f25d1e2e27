"""`resource_type: storage`: account keys (`key: key1|key2|active`) and minted SAS tokens.

Keys are listed once per account per run (`listKeys` is shared by every reference to the
account).  When a reference names no resource group, the account is found by listing the
subscription's storage accounts (needs `Microsoft.Storage/storageAccounts/read`, e.g. Reader);
give `resource_group` (or a `resources:` entry) to avoid it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from core.sources.base import PlannedRef, RunContext, StoreRuntime, locate
from core.sources.fetched import Fetched, SourceProblem
from core.sources.sas_mint import CLOCK_SKEW, USER_DELEGATION_KEY_MAX, SasRequest, mint_sas, sas_window

STORAGE_KIND = "storage"


def locate_account(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str) -> tuple[str, str]:
    """(subscription, resource group) of storage `account`.

    Raises:
        SourceProblem: the account is not in the subscription.
    """
    return locate(ref, store, run, STORAGE_KIND, account, "storage account",
                  lambda subscription: run.clients.storage_management(subscription, store.credential).storage_accounts.list())


def account_keys(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str) -> dict[str, str]:
    """`{"key1": ..., "key2": ...}` of `account`, listed once per run."""
    subscription, group = locate_account(ref, store, run, account)

    def list_keys() -> dict[str, str]:
        client = run.clients.storage_management(subscription, store.credential)
        result = client.storage_accounts.list_keys(group, account)
        return {key.key_name.lower(): key.value for key in result.keys_property or []}

    return run.once(("listKeys", subscription, account.lower(), store.name), list_keys)


def active_key_name(ref: PlannedRef, run: RunContext, account: str) -> str:
    """The key a `key: active` reference or a key-signed SAS uses (rotation state decides)."""
    chooser = getattr(run, "active_key", None)
    return str(chooser("storage", account)) if chooser is not None else "key1"


class StorageKeySource:
    kind = "storage_key"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        account = ref.param("account")
        key_name = ref.param("key", "key1")
        if key_name == "active":
            key_name = active_key_name(ref, run, account)
        keys = account_keys(ref, store, run, account)
        if key_name not in keys:
            raise SourceProblem("not_found", f"storage account '{account}' has no key '{key_name}'")
        return Fetched(value=keys[key_name], version=key_name, content_type="application/x-storage-key", detail={"kind": "storage_key", "key": key_name})


class SasSource:
    kind = "sas"

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
        start, expiry = sas_window(request.lifetime, store.max_sas_expiry, run.clock())
        if request.sas_type == "user_delegation":
            return mint_sas(request, start=start, expiry=expiry, user_delegation_key=self._delegation_key(store, run, account, start, expiry))
        key_name = active_key_name(ref, run, account)
        keys = account_keys(ref, store, run, account)
        return mint_sas(request, start=start, expiry=expiry, account_key=keys[key_name], signed_with=key_name)

    @staticmethod
    def _delegation_key(store: StoreRuntime, run: RunContext, account: str, start: Any, expiry: Any) -> Any:
        # One delegation key per account and identity per run, valid as long as the longest
        # SAS a store may mint, but at most 7 days from now (the service refuses longer keys).
        def get() -> Any:
            client = run.clients.blob_service(account, store.credential)
            return client.get_user_delegation_key(start, start + CLOCK_SKEW + min(store.max_sas_expiry, USER_DELEGATION_KEY_MAX))

        kept = getattr(run, "delegation_keys", None)
        if kept is not None:  # kept between runs (state vault): reused while it outlives the SAS
            key = kept.key_for(account, f"{store.name}:{store.identity_description}", expiry, get)
        else:
            key = run.once(("udk", account.lower(), store.name), get)
        if key.signed_expiry is not None and str(key.signed_expiry) < expiry.strftime("%Y-%m-%dT%H:%M:%SZ"):
            raise SourceProblem("invalid", f"a user delegation SAS for '{account}' cannot outlive its delegation key "
                                           f"(at most {USER_DELEGATION_KEY_MAX.days} days); ask for a shorter expiry")
        return key
