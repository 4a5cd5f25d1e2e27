"""Key Vault data plane stand-in (stub: filled in by the Key Vault work)."""

from __future__ import annotations

from sandbox.http import Service
from sandbox.runtime import Runtime


class KeyVaultService(Service):
    name = "keyvault"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
