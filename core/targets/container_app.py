"""`type: container_app` target: an env's variables as a Container App's secrets.

Read with `listSecrets` (`POST .../containerApps/{app}/listSecrets`: the values; a GET of the app
never returns them) and written with one `PATCH .../containerApps/{app}` (Container Apps - Update,
long-running) carrying `properties.configuration.secrets`.  PATCH is a JSON merge patch: objects
are merged, **arrays are replaced whole**, so the secrets array sent is every secret the app keeps:
the others' (their values, or their `keyVaultUrl` and `identity`) as listSecrets returned them right
before the PATCH, under a lease per app in the state table, plus vaultrelay's.  Secrets are
application-scope configuration: changing them creates no revision, and running replicas keep the
values they started with, so after a change the active revision is restarted (`restart: true`).

Container Apps secrets carry no tags: the names vaultrelay wrote are recorded in state before the
write (as for app settings); any other name is someone else's and is never overwritten or removed.
With `values: keyvault_reference` the values go to `vault` (core.targets.pinned) and each secret is
`keyVaultUrl` pinned to the version written, read by the app's `identity`.
"""

from __future__ import annotations

from typing import Any

from core.permissions.matrix import denied_note
from core.sources.base import resource_group_of
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError


class ContainerAppTargetWriter:
    kind = "container_app"
    whole_bundle = False
    ownership_in_state = True

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx
        subscription = ctx.subscription_for(config.subscription, f"container app {config.app}")
        self.client = ctx.clients.container_apps(subscription, ctx.credential)
        self._group = config.resource_group
        self.push_lease = f"containerapp:{subscription}:{config.app}".lower()
        """Pushes to one app (any env, any instance) are serialised under this lease (core.push)."""
        self.references = bool(config.references)
        self.vault: Any = None
        if self.references:
            from core.targets.pinned import PinnedVault

            self.vault = PinnedVault(config, ctx)
        self._current: dict[str, dict[str, Any]] = {}

    def _fail(self, what: str, exc: Exception) -> TargetError:
        status = getattr(exc, "status_code", None)
        cause = f"HTTP {status}" if status else type(exc).__name__
        return TargetError(f"target {self.ctx.name}: {what} container app {self.config.app} failed: {cause}"
                           f"{denied_note(exc, 'target:container_app')}")

    def _resource_group(self) -> str:
        from azure.core.exceptions import AzureError

        if self._group:
            return str(self._group)
        try:
            for app in self.client.container_apps.list_by_subscription():
                if str(app.name).lower() == self.config.app.lower():
                    self._group = resource_group_of(str(app.id))
                    return str(self._group)
        except AzureError as exc:
            raise self._fail("finding", exc) from None
        raise TargetError(f"target {self.ctx.name}: container app {self.config.app} not found")

    def _secrets(self) -> dict[str, dict[str, Any]]:
        """Secret name -> what the PATCH must send back for it (value, or keyVaultUrl and identity)."""
        from azure.core.exceptions import AzureError

        try:
            listed = self.client.container_apps.list_secrets(self._resource_group(), self.config.app).value or []
        except AzureError as exc:
            raise self._fail("listing the secrets of", exc) from None
        found: dict[str, dict[str, Any]] = {}
        for secret in listed:
            if getattr(secret, "key_vault_url", None):
                found[str(secret.name)] = {"name": secret.name, "keyVaultUrl": secret.key_vault_url, "identity": secret.identity}
            else:
                found[str(secret.name)] = {"name": secret.name, "value": secret.value}
        return found

    def _content(self, variable: str, entry: dict[str, Any]) -> str:
        if "keyVaultUrl" in entry:
            if self.references and str(entry.get("identity") or "").lower() == self.config.identity.lower():
                fingerprint = self.vault.fingerprint(variable, str(entry["keyVaultUrl"]))
                if fingerprint is not None:
                    return str(fingerprint)
            return self.ctx.fingerprinter.of(f"keyVaultUrl\0{entry['keyVaultUrl']}\0{entry.get('identity')}")
        return self.ctx.fingerprinter.of(entry.get("value") or "")

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        self._current = self._secrets()
        snapshot = Snapshot()
        for variable in names:
            entry = self._current.get(self.config.app_secret_for(variable))
            if entry is None:
                snapshot.fingerprints[variable] = None
                continue
            snapshot.fingerprints[variable] = self._content(variable, entry)
            if variable not in recorded:
                snapshot.foreign.add(variable)
        return snapshot

    def unsettled(self, desired: dict[str, DesiredItem]) -> frozenset[str]:
        """With references: names whose secret still holds vaultrelay's value itself (pushed before
        `values: keyvault_reference` was set)."""
        if not self.references:
            return frozenset()
        names = set()
        for variable, item in desired.items():
            entry = self._current.get(self.config.app_secret_for(variable))
            if entry is not None and "value" in entry and self.ctx.fingerprinter.of(entry.get("value") or "") == item.fingerprint:
                names.add(variable)
        return frozenset(names)

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        """One PATCH of the app's whole secrets array (call under `push_lease`), then a restart of
        the active revision when `restart`.

        Raises:
            TargetError: a name is someone else's, or reading or writing failed (nothing written:
                with references, versions may have been added to the vault, which the next run reuses).
        """
        from azure.core.exceptions import AzureError

        delete = self.config.deletion_policy == "delete"
        touched = set(change.writes) | (set(change.removals) if delete else set())
        foreign = sorted(snapshot.foreign & touched)
        if foreign:
            raise TargetError(f"target {self.ctx.name}: secret(s) {', '.join(self.config.app_secret_for(v) for v in foreign)} of container "
                              f"app {self.config.app} exist and are not managed by vaultrelay; refusing to overwrite")
        owned = frozenset(n for n in snapshot.fingerprints if n not in snapshot.foreign)
        urls = self.vault.pin(env, desired, change, owned) if self.references else {}
        current = self._secrets()  # right before the PATCH: what others wrote meanwhile is kept
        merged = dict(current)
        for variable in sorted(change.writes):
            secret = self.config.app_secret_for(variable)
            if self.references:
                merged[secret] = {"name": secret, "keyVaultUrl": urls[variable], "identity": self.config.identity}
            else:
                merged[secret] = {"name": secret, "value": desired[variable].value.reveal()}
        if delete:
            for variable in change.removals:
                merged.pop(self.config.app_secret_for(variable), None)
        if merged == current:
            return PushResult(writes=0)
        group = self._resource_group()
        try:
            self.client.container_apps.begin_update(group, self.config.app, {"properties": {"configuration": {
                "secrets": list(merged.values())}}}).result()
        except AzureError as exc:
            raise self._fail("updating the secrets of", exc) from None
        finally:
            del merged, current
        if self.config.restart:
            try:
                revision = self.client.container_apps.get(group, self.config.app).latest_revision_name
                if revision:
                    self.client.container_apps_revisions.restart_revision(group, self.config.app, revision)
            except AzureError as exc:
                raise self._fail("restarting the active revision of (the secrets are written)", exc) from None
        return PushResult(writes=1)
