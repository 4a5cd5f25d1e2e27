"""`operation: get_token`: an Entra access token for any resource; its expiry is metadata."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.sources.base import PlannedRef, RunContext, SourceDefaults, StoreRuntime
from core.sources.fetched import Fetched
from core.sources.kinds import TOKEN


def scope_of(resource: str | None, scope: str | None) -> str:
    """`https://vault.azure.net` -> `https://vault.azure.net/.default`; a scope is kept."""
    if scope:
        return scope
    assert resource is not None
    return resource.rstrip("/") + "/.default"


class TokenSource(SourceDefaults):
    kind = "token"
    features = TOKEN.features

    def token_scopes(self, ref: PlannedRef, cloud: Any) -> set[str]:
        return {scope_of(ref.param("resource"), ref.param("scope"))}

    def names(self, ref: PlannedRef) -> tuple[str, str]:
        what = str(ref.param("resource") or ref.param("scope") or "")
        return what, what

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        token = store.credential.get_token(scope_of(ref.param("resource"), ref.param("scope")))
        return Fetched(
            value=token.token, expires_on=datetime.fromtimestamp(token.expires_on, UTC),
            content_type="application/jwt", detail={"kind": "token"},
        )
