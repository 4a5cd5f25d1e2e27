"""`from: {vault, secret[, version][, type: secret|certificate|key]}`: Key Vault objects.

Vault names are global DNS names, so a reference's `subscription` does not change how the value
is read; it matters to the permissions plan and Event Grid wiring only.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from core.sources.base import PlannedRef, RunContext, SourceDefaults, StoreRuntime
from core.sources.fetched import Fetched
from core.sources.keyvault_read import read_certificate, read_key, read_secret
from core.sources.kinds import KEYVAULT


class _KeyVaultObjects(SourceDefaults):
    """What the three Key Vault sources share: a vault, a named object, the vault's token."""

    features = KEYVAULT.features

    def fetch_target(self, ref: PlannedRef) -> Hashable:
        return ("vault", str(ref.param("vault", "")).lower())

    def keyvault_object(self, ref: PlannedRef) -> tuple[str, str] | None:
        return str(ref.param("vault")), str(ref.param("secret"))

    def token_scopes(self, ref: PlannedRef, cloud: Any) -> set[str]:
        return {f"https://{cloud.vault_dns_suffix}/.default"}

    def names(self, ref: PlannedRef) -> tuple[str, str]:
        vault = str(ref.param("vault") or "")
        return f"{vault}/{ref.param('secret')}", vault


class KeyVaultSecretSource(_KeyVaultObjects):
    kind = "keyvault_secret"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client = run.clients.secret_client(ref.param("vault"), store.credential)
        return read_secret(client, ref.param("secret"), ref.param("version"), now=run.clock())


class KeyVaultCertificateSource(_KeyVaultObjects):
    kind = "keyvault_certificate"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client = run.clients.secret_client(ref.param("vault"), store.credential)
        return read_certificate(client, ref.param("secret"), ref.param("version"), ref.param("format", "pem"), now=run.clock())


class KeyVaultKeySource(_KeyVaultObjects):
    kind = "keyvault_key"

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        client = run.clients.key_client(ref.param("vault"), store.credential)
        return read_key(client, ref.param("secret"), ref.param("version"), ref.param("format", "jwk"), now=run.clock())
