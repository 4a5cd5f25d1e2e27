"""Event Grid delivery of Key Vault events (stub: filled in by the Event Grid work)."""

from __future__ import annotations

from typing import Any

from sandbox.runtime import Runtime
from sandbox.world import Resource


class EventGrid:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def keyvault_event(
        self, vault: Resource, event_type: str, *, object_type: str, name: str, version: str,
        nbf: int | None = None, exp: int | None = None,
    ) -> None:
        """Publish a Key Vault event (e.g. `Microsoft.KeyVault.SecretNewVersionCreated`)."""
        return None

    def control_routes(self, app: Any) -> None:
        return None
