"""What every stand-in can reach: the world, the token issuer, endpoints and the other parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.faults import Counters, Faults
from sandbox.tokens import TokenIssuer
from sandbox.world import World

if TYPE_CHECKING:
    from sandbox.azurite import AzuriteManager
    from sandbox.eventgrid import EventGrid


ARM_RETRY_AFTER_S = 10
"""ARM's `Retry-After` on a long-running operation that is still running (its 201/202 and its
status polls): the resource provider contract's minimum (seconds); `--arm-retry-after` or the
control API set another (tests use 0)."""


@dataclass
class Runtime:
    world: World
    issuer: TokenIssuer
    faults: Faults
    counters: Counters
    domain: str
    https_port: int = 0
    events: EventGrid | None = None
    azurite: AzuriteManager | None = None
    arm_retry_after_s: int = ARM_RETRY_AFTER_S
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        """`<domain>:<port>`: every HTTPS stand-in is `https://<name>.<suffix>`."""
        return f"{self.domain}:{self.https_port}"

    @property
    def authority(self) -> str:
        return f"https://login.{self.suffix}"

    @property
    def arm_endpoint(self) -> str:
        return f"https://management.{self.suffix}"

    @property
    def vault_dns_suffix(self) -> str:
        """Vault `v` is at `https://v.<vault_dns_suffix>`."""
        return f"vault.{self.suffix}"

    @property
    def keyvault_audience(self) -> str:
        """The challenge resource and token audience of the sandbox's vaults."""
        return f"https://vault.{self.suffix}"

    def vault_url(self, name: str) -> str:
        return f"https://{name}.{self.vault_dns_suffix}"

    def storage_endpoint(self, account: str, service: str) -> str:
        """`https://<account>.<blob|table|queue>.<suffix>` (production-style URL, proxied to Azurite)."""
        return f"https://{account}.{service}.{self.suffix}"
