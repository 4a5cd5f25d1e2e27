"""`resource_type: cosmosdb`: account keys and connection strings through ARM.

Read-only keys use `readonlykeys` (Cosmos DB Account Reader Role suffices); read-write keys
`listKeys`; connection strings `listConnectionStrings`.  Each call is made once per account per
run and shared by every reference to the account.
"""

from __future__ import annotations

from typing import Any

from core.sources.base import PlannedRef, RunContext, StoreRuntime, locate
from core.sources.fetched import Fetched, SourceProblem

COSMOS_KIND = "cosmosdb"
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


def _locate(ref: PlannedRef, store: StoreRuntime, run: RunContext, account: str) -> tuple[str, str]:
    return locate(ref, store, run, COSMOS_KIND, account, "Cosmos DB account",
                  lambda subscription: run.clients.cosmos_management(subscription, store.credential).database_accounts.list())


class CosmosSource:
    kind = "cosmos"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        account = ref.param("account")
        key = ref.param("key", "primary")
        if key == "active":
            chooser = getattr(run, "active_key", None)
            key = str(chooser("cosmos", account)) if chooser is not None else "primary"
        subscription, group = _locate(ref, store, run, account)
        client = run.clients.cosmos_management(subscription, store.credential)
        if ref.param("format", "key") == "connection_string":
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
