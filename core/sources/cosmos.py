"""`resource_type: cosmosdb`: account keys and connection strings through ARM.

Read-only keys use `readonlykeys` (Cosmos DB Account Reader Role suffices); read-write keys
`listKeys`; connection strings `listConnectionStrings`.  Each call is made once per account per
run and shared by every reference to the account.

An account with `disableLocalAuth: true` lists keys that authorize nothing: vaultrelay refuses to
publish them or a connection string (core.sources.key_access).  The property comes with the
account listing when the account is located by listing, else from one GET of the account (every
role that lists keys includes the read); what was read is kept like storage key listings
(core.sources.listed_keys).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

from core.sources.base import PlannedRef, RunContext, SourceDefaults, StoreRuntime, constant, locate
from core.sources.fetched import Fetched, SourceProblem
from core.sources.key_access import cosmos_local_auth_allowed, cosmos_refusal, local_auth_allowed_by
from core.sources.kinds import COSMOS
from core.sources.listed_keys import PROCESS_LISTED_KEYS

COSMOS_KIND = "cosmosdb"
COSMOS_ROTATION = "cosmos"  # the account key rotation record kind (core.rotation.account_keys)
_KEY_ATTRIBUTES = {
    "primary": "primary_master_key",
    "secondary": "secondary_master_key",
    "primary_readonly": "primary_readonly_master_key",
    "secondary_readonly": "secondary_readonly_master_key",
}
_CONNECTION_STRING_DESCRIPTIONS = {
    "primary": "primary sql connection string",
    "secondary": "secondary sql connection string",
    "primary_readonly": "primary read-only sql connection string",
    "secondary_readonly": "secondary read-only sql connection string",
}


def _fact_key(run: RunContext, store: StoreRuntime, subscription: str, account: str) -> tuple[str, ...]:
    return ("cosmos-local-auth", run.clients.cloud.arm_endpoint.lower(), subscription.lower(), account.lower(), store.identity_description)


def _locate(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str) -> tuple[str, str]:
    def listing(subscription: str) -> Iterator[Any]:
        for item in run.clients.cosmos_management(subscription, store.credential).database_accounts.list():
            if str(item.name).lower() == account.lower():  # the listing says whether it takes keys: no GET later
                allowed = local_auth_allowed_by(item)
                PROCESS_LISTED_KEYS.put(_fact_key(run, store, subscription, account), allowed, store.listed_keys_ttl)
                run.once(("cosmos-local-auth", subscription, account.lower(), store.name), constant(allowed))
            yield item

    return locate(ref, store, run, COSMOS_KIND, account, "Cosmos DB account", listing)


def require_local_auth(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str, doing: str) -> None:
    """Refuse `doing` when Cosmos DB `account` has `disableLocalAuth: true`.

    Raises:
        KeyAccessDisabled: the account takes Entra ID only.
    """
    subscription, group = _locate(ref, store, run, account)

    def kept() -> bool | None:
        return PROCESS_LISTED_KEYS.get(
            _fact_key(run, store, subscription, account), store.listed_keys_ttl,
            lambda: cosmos_local_auth_allowed(run.clients, subscription, group, account, store.credential), reuse=run.reuse_listings)

    if run.once(("cosmos-local-auth", subscription, account.lower(), store.name), kept) is False:
        raise cosmos_refusal(account, doing)


class CosmosSource(SourceDefaults):
    kind = "cosmos"
    features = COSMOS.features

    def fetch_target(self, ref: PlannedRef) -> Hashable:
        return ("account", True, str(ref.param("account", "")).lower())

    def follows_active_key(self, ref: PlannedRef) -> tuple[str, str] | None:
        return COSMOS_ROTATION, str(ref.param("account"))

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        account = ref.param("account")
        key = ref.param("key", "primary")
        if key == "active":
            chooser = getattr(run, "active_key", None)
            key = str(chooser("cosmos", account)) if chooser is not None else "primary"
        subscription, group = _locate(ref, store, run, account)
        client = run.clients.cosmos_management(subscription, store.credential)
        connection_string = ref.param("format", "key") == "connection_string"
        require_local_auth(ref, store, run, account, "publish a connection string" if connection_string else "publish its keys")
        if connection_string:
            strings: Any = run.once(("cosmos-cs", subscription, account.lower(), store.name), lambda: client.database_accounts.list_connection_strings(group, account))
            wanted = _CONNECTION_STRING_DESCRIPTIONS[key]
            for item in strings.connection_strings or []:
                if (item.description or "").lower() == wanted:
                    return Fetched(value=item.connection_string, version=key, content_type="application/x-connection-string", detail={"kind": "cosmos_connection_string", "key": key})
            raise SourceProblem("not_found", f"Cosmos DB account '{account}' lists no '{wanted}'")
        if key.endswith("_readonly"):
            keys: Any = run.once(("cosmos-ro", subscription, account.lower(), store.name), lambda: client.database_accounts.list_read_only_keys(group, account))
        else:
            keys = run.once(("cosmos-keys", subscription, account.lower(), store.name), lambda: client.database_accounts.list_keys(group, account))
        value = getattr(keys, _KEY_ATTRIBUTES[key], None)
        if not value:
            raise SourceProblem("not_found", f"Cosmos DB account '{account}' returned no {key} key")
        return Fetched(value=value, version=key, content_type="application/x-cosmos-key", detail={"kind": "cosmos_key", "key": key})
