"""Values kept in a Key Vault and handed to an app as references pinned to a version.

App Service (`values: keyvault_reference` of an `app_settings` target) and Container Apps (of a
`container_app` target) read a secret through a reference; a versionless one is re-read only every
24 hours (App Service) or 30 minutes (Container Apps).  Pinning the version makes a new value a new
reference, so the app's configuration changes and the platform reads it at once.  The values are
written as a Key Vault target writes them (core.targets.keyvault: ownership tags, a fingerprint
keyed for this vault and target); someone else's secret is never overwritten.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from core.permissions.matrix import denied_note
from core.targets.base import Change, DesiredItem, TargetContext, TargetError

_SECRET_URL = re.compile(r"^(?P<base>https://[^/]+)/secrets/(?P<secret>[0-9a-zA-Z-]+)/(?P<version>[0-9a-fA-F]{32})/?$", re.IGNORECASE)


class PinnedVault:
    """The vault of one target's references: `pin` writes values, `fingerprint` reads them back."""

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        from core.config.model import KeyVaultTarget
        from core.targets.keyvault import KeyVaultTargetWriter

        self.config = config
        self.ctx = ctx
        vault_target = KeyVaultTarget(type="keyvault", env=config.env, store=config.store, vault=config.vault,
                                      name_style=config.name_style, prefix=config.prefix, deletion_policy=config.deletion_policy)
        self.writer = KeyVaultTargetWriter(vault_target, dataclasses.replace(ctx, recorded_stamps={}, recorded_etag=None))
        self.base = str(self.writer.client.vault_url).rstrip("/")

    def url(self, secret: str, version: str) -> str:
        return f"{self.base}/secrets/{secret}/{version}"

    def pinned(self, variable: str, url: str) -> tuple[str, str] | None:
        """(secret, version) when `url` is a version of `variable`'s secret in this vault."""
        found = _SECRET_URL.match(url.strip())
        if found is None or found["base"].lower() != self.base.lower():
            return None
        if found["secret"].lower() != self.config.secret_for(variable).lower():
            return None
        return found["secret"], found["version"].lower()

    def fingerprint(self, variable: str, url: str) -> str | None:
        """The fingerprint of the value `url` pins (one read), None when it pins nothing of ours.

        Raises:
            TargetError: the vault cannot be read.
        """
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        pinned = self.pinned(variable, url)
        if pinned is None:
            return None
        try:
            held = self.writer.client.get_secret(*pinned)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise TargetError(f"target {self.ctx.name}: reading {pinned[0]} in vault {self.config.vault} failed: HTTP "
                              f"{getattr(exc, 'status_code', None)}{denied_note(exc, 'target:keyvault')}") from None
        return self.ctx.fingerprinter.of(held.value or "")

    def pin(self, env: str, desired: dict[str, DesiredItem], change: Change, owned: frozenset[str]) -> dict[str, str]:
        """Write the changed values (a new version each, or the latest one when it already holds
        exactly that value) and return variable -> the URL of that version; soft-delete the removed
        variables' secrets (deletion_policy: delete, vaultrelay's own only).

        Raises:
            TargetError: a secret is not vaultrelay's, or a write failed.
        """
        from azure.core.exceptions import AzureError

        kv = self.writer
        names = set(change.writes) | set(change.removals)
        snapshot = kv.snapshot(names, {n: "" for n in owned})
        foreign = sorted(snapshot.foreign & names)
        if foreign:
            raise TargetError(f"target {self.ctx.name}: vault {self.config.vault} has secret(s) "
                              f"{', '.join(self.config.secret_for(n) for n in foreign)} not managed by vaultrelay; refusing to overwrite")
        held = kv.holds(desired, {n for n in change.writes if snapshot.stamps.get(n) is not None})
        urls: dict[str, str] = {}
        for name in sorted(change.writes):
            secret = self.config.secret_for(name)
            if name in held:
                try:
                    version = kv.client.get_secret(secret).properties.version
                except AzureError as exc:
                    raise TargetError(f"target {self.ctx.name}: reading {secret} in vault {self.config.vault} failed: HTTP "
                                      f"{getattr(exc, 'status_code', None)}") from None
            else:
                kv._set(secret, desired[name].value.reveal(), desired[name], env, None)
                version = kv.versions[secret.lower()]
            urls[name] = self.url(secret, str(version))
        if self.config.deletion_policy == "delete":
            for name in sorted(change.removals):
                if snapshot.stamps.get(name) is not None:
                    kv._delete(self.config.secret_for(name))
        return urls
