"""`from: {vault, secret[, version][, type: secret|certificate|key]}`: Key Vault objects.

Vault names are global DNS names, so a reference's `subscription` does not change how the value
is read; it matters to the permissions plan and Event Grid wiring only.
"""

from __future__ import annotations

from core.sources.base import PlannedRef, RunContext, StoreRuntime
from core.sources.fetched import Fetched
from core.sources.keyvault_read import read_certificate, read_key, read_secret


class KeyVaultSecretSource:
    kind = "keyvault_secret"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client = run.clients.secret_client(ref.param("vault"), store.credential)
        return read_secret(client, ref.param("secret"), ref.param("version"), now=run.clock())


class KeyVaultCertificateSource:
    kind = "keyvault_certificate"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client = run.clients.secret_client(ref.param("vault"), store.credential)
        return read_certificate(client, ref.param("secret"), ref.param("version"), ref.param("format", "pem"), now=run.clock())


class KeyVaultKeySource:
    kind = "keyvault_key"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client = run.clients.key_client(ref.param("vault"), store.credential)
        return read_key(client, ref.param("secret"), ref.param("version"), ref.param("format", "jwk"), now=run.clock())
