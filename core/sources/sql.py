"""`resource_type: sql`: a connection string that authenticates with the managed identity.

No Azure call is needed, except for a user-assigned identity selected by resource id or object
id: its client id (which SQL connection strings name) is read from a token's `appid` claim.
"""

from __future__ import annotations

from typing import Any

import jwt

from core.sources.base import PlannedRef, RunContext, SourceDefaults, StoreRuntime
from core.sources.fetched import Fetched
from core.sources.kinds import SQL
from core.sources.sql_format import sql_connection_string

SQL_SCOPE = "https://database.windows.net/.default"


class SqlSource(SourceDefaults):
    kind = "sql"
    features = SQL.features

    def token_scopes(self, ref: PlannedRef, cloud: Any) -> set[str]:
        return set()  # the connection string is built locally; the app's SQL client gets its own token

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client_id = store.client_id
        if client_id is None and getattr(store, "user_assigned", False):
            client_id = run.once(("appid", store.name), lambda: _appid_of(store))
        value = sql_connection_string(
            ref.param("server"), ref.param("database"), ref.param("format", "ado"),
            client_id=client_id, sql_suffix=run.sql_suffix,
        )
        return Fetched(value=value, content_type="application/x-connection-string", detail={"kind": "sql", "format": ref.param("format", "ado")})


def _appid_of(store: StoreRuntime) -> str:
    token = store.credential.get_token(SQL_SCOPE).token
    claims = jwt.decode(token, options={"verify_signature": False})
    return str(claims["appid"])
