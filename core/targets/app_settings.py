"""`type: app_settings` target: merge the bundle into an App Service / Functions app's settings.

ARM replaces a slot's app settings as a whole (`PUT .../config/appsettings` takes no ETag: the last
writer wins) and every change restarts the app.  So:

* the engine pushes a site's slot once per sync: the changes of every target of the sync that
  points at the same site and slot (several envs may) are merged into **one PUT** (one restart),
  and a sync that changes nothing sends none;
* that PUT is a read-modify-write under a lease per site and slot in the state table (not per
  env: two envs or two instances pushing to one site would otherwise drop each other's updates),
  with the settings **re-read right before the PUT**, so settings vaultrelay does not own (and
  those other targets own) always survive;
* a name that already exists and was not pushed by this target is refused (never overwritten);
* `slot_setting: true` makes the target's names slot-sticky (the site's `slotConfigNames`), so a
  slot swap does not carry them to the other slot: the names are added to the sticky list (merged,
  under a lease per site; names others made sticky are never dropped) **before** the values are
  written, and never removed.

`values: keyvault_reference`: the values go to the target's `vault` instead (one secret per
variable, with the ownership tags and keyed fingerprint of a Key Vault target: core.targets.keyvault)
and each setting is `@Microsoft.KeyVault(SecretUri=https://<vault>/secrets/<name>/<version>)`, pinned
to the version written.  A new value is a new version, so the setting changes and App Service
restarts with it at once (a versionless reference is re-read only every 24 hours).  What a setting
holds is judged by the value of the version it pins (one read per pinned setting per sync); after
each push, and on every sync, App Service's own report of its references
(`config/configreferences/appsettings`) says whether the site's identity resolves them, and one that
does not is a target error naming the setting and App Service's status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from core.permissions.matrix import denied_note
from core.sources.base import resource_group_of
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError


def site_key(subscription: str, site: str, slot: str | None) -> str:
    """The name of a site's slot in leases and batches (a state table key: no `/`, `#`, `?`, `\\`)."""
    return f"{subscription}:{site}:{slot or ''}".lower()


@dataclass
class SiteChange:
    """One target's part of a site push."""

    target: str
    desired: dict[str, DesiredItem]
    change: Change
    owned: frozenset[str]  # names this target pushed (or was about to push) before this run
    delete: bool  # deletion_policy: delete
    slot_setting: bool
    settings: dict[str, str] | None = None  # name -> the text to write (Key Vault references); None: the values


_PINNED = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=(?P<url>[^)]+)\)$", re.IGNORECASE)


@dataclass
class SiteResult:
    """What one site push did: whether a PUT was sent, which targets were refused and why."""

    put: bool = False
    refused: dict[str, str] = field(default_factory=dict)
    sticky_added: list[str] = field(default_factory=list)


class AppSettingsTargetWriter:
    kind = "app_settings"
    whole_bundle = False
    ownership_in_state = True

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx
        subscription = ctx.subscription_for(config.subscription, f"site {config.site}")
        self.web = ctx.clients.web_management(subscription, ctx.credential)
        self._group = config.resource_group
        self.site_key = site_key(subscription, config.site, config.slot)
        """Targets with the same key are pushed together, under one lease (see core.push)."""
        self.site_lease = f"appsettings:{self.site_key}"
        self.slot_config_lease = f"slotconfig:{site_key(subscription, config.site, None)}"
        self._where = f"{config.site}" + (f" (slot {config.slot})" if config.slot else "")
        self.references = bool(getattr(config, "references", False))
        self.vault_writer: Any = None
        self._current: dict[str, str] = {}
        if self.references:
            from core.targets.pinned import PinnedVault

            self.vault_writer = PinnedVault(config, ctx)

    def _resource_group(self) -> str:
        if self._group:
            return str(self._group)
        for site in self.web.web_apps.list():
            if site.name.lower() == self.config.site.lower():
                self._group = resource_group_of(str(site.id))
                return str(self._group)
        raise TargetError(f"target {self.ctx.name}: site {self.config.site} not found")

    def _read(self) -> dict[str, str]:
        from azure.core.exceptions import HttpResponseError

        try:
            if self.config.slot:
                result = self.web.web_apps.list_application_settings_slot(self._resource_group(), self.config.site, self.config.slot)
            else:
                result = self.web.web_apps.list_application_settings(self._resource_group(), self.config.site)
        except HttpResponseError as exc:
            raise TargetError(f"target {self.ctx.name}: cannot read app settings of {self._where}: HTTP {exc.status_code}{denied_note(exc, 'target:app_settings')}") from None
        return dict(result.properties or {})

    def _sticky(self) -> set[str]:
        """The site's slot-sticky app setting names."""
        from azure.core.exceptions import HttpResponseError

        try:
            names = self.web.web_apps.list_slot_configuration_names(self._resource_group(), self.config.site)
        except HttpResponseError as exc:
            raise TargetError(f"target {self.ctx.name}: cannot read the slot settings of {self.config.site}: HTTP {exc.status_code}"
                              f"{denied_note(exc, 'target:app_settings_slot_setting')}") from None
        return set(names.app_setting_names or [])

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        current = self._read()
        self._current = current
        snapshot = Snapshot()
        for name in names:
            if name in current:
                snapshot.fingerprints[name] = self._content(name, current[name])
                if name not in recorded:
                    snapshot.foreign.add(name)
            else:
                snapshot.fingerprints[name] = None
        return snapshot

    def _content(self, name: str, text: str) -> str:
        """The fingerprint of what setting `name` gives the app: its text, or with references the
        value of the secret version it pins in this target's vault (one read)."""
        if self.references:
            found = _PINNED.match(text.strip())
            if found is not None:
                fingerprint = self.vault_writer.fingerprint(name, found["url"])
                if fingerprint is not None:
                    return fingerprint
        return self.ctx.fingerprinter.of(text)

    def _pinned(self, name: str, text: str) -> tuple[str, str] | None:
        """(secret, version) when `text` is a reference pinned to `name`'s secret in this target's vault."""
        found = _PINNED.match(text.strip()) if self.references else None
        return self.vault_writer.pinned(name, found["url"]) if found is not None else None

    def unsettled(self, desired: dict[str, DesiredItem]) -> frozenset[str]:
        """Names to push even though their values are in place: with `slot_setting`, those not
        slot-sticky yet (the flag was just turned on, or someone removed them from the list);
        with references, those that still hold vaultrelay's value itself (pushed before
        `values: keyvault_reference` was set)."""
        names: set[str] = set()
        if self.references:
            names |= {n for n, item in desired.items() if n in self._current and self._pinned(n, self._current[n]) is None
                      and self.ctx.fingerprinter.of(self._current[n]) == item.fingerprint}
        if self.config.slot_setting and desired:
            names |= set(desired) - set(self._sticky())
        return frozenset(names)

    def pin(self, env: str, desired: dict[str, DesiredItem], change: Change, owned: frozenset[str]) -> dict[str, str]:
        """With references: write the changed values to the vault and return name -> the setting
        pinning the version written (core.targets.pinned).

        Raises:
            TargetError: a secret is not vaultrelay's, or a write failed (the settings are not written).
        """
        return {name: f"@Microsoft.KeyVault(SecretUri={url})" for name, url in self.vault_writer.pin(env, desired, change, owned).items()}

    def unresolved(self, names: set[str]) -> dict[str, str]:
        """Of `names` (settings holding references), those App Service reports it cannot resolve
        for the site's identity: name -> status and details (never a value).

        Raises:
            TargetError: the report cannot be read.
        """
        from azure.core.exceptions import HttpResponseError

        if not names:
            return {}
        try:
            if self.config.slot:
                listed = self.web.web_apps.get_app_settings_key_vault_references_slot(self._resource_group(), self.config.site, self.config.slot)
            else:
                listed = self.web.web_apps.get_app_settings_key_vault_references(self._resource_group(), self.config.site)
            found = {str(r.id).rsplit("/", 1)[1]: r for r in listed}
        except HttpResponseError as exc:
            raise TargetError(f"target {self.ctx.name}: cannot read the Key Vault reference status of {self._where}: HTTP "
                              f"{exc.status_code}{denied_note(exc, 'target:app_settings')}") from None
        problems: dict[str, str] = {}
        for name in sorted(names):
            reference = found.get(name)
            status = getattr(reference, "status", None) if reference is not None else "NotReported"
            status = getattr(status, "value", status)  # the SDK's ResolveStatus enum, or its text
            if status != "Resolved":
                details = getattr(reference, "details", None) or ""
                problems[name] = f"{status}" + (f": {details}" if details else "")
        return problems

    def unresolved_error(self, problems: dict[str, str]) -> str:
        listing = "; ".join(f"{n} ({why})" for n, why in sorted(problems.items()))
        return (f"target {self.ctx.name}: Key Vault reference(s) of {self._where} do not resolve for the site's identity: {listing} "
                f"(the site's identity needs Key Vault Secrets User on vault {self.config.vault})")

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        """This target alone as one site push (no lease: the engine batches and leases pushes)."""
        owned = frozenset(n for n in snapshot.fingerprints if n not in snapshot.foreign)
        settings = self.pin(env, desired, change, owned) if self.references else None
        result = self.push_site([SiteChange(self.ctx.name, desired, change, owned, self.config.deletion_policy == "delete",
                                            bool(self.config.slot_setting), settings)])
        if result.refused:
            raise TargetError(result.refused[self.ctx.name])
        return PushResult(writes=1 if result.put else 0)

    def push_site(self, changes: list[SiteChange], *, slot_config_lease: Any = None) -> SiteResult:
        """Merge the changes of several targets of this site's slot into its current settings and
        write them in one PUT (none when nothing changes).  Call under the site's lease.

        `slot_config_lease()` is a context manager holding the site's slot-config lease (for the
        read-modify-write of the sticky names); None: no lease.

        Raises:
            TargetError: reading or writing failed; nothing was written (sticky names may have
                been added, which is harmless and what the next run needs anyway).
        """
        from azure.core.exceptions import HttpResponseError
        from azure.mgmt.web.models import StringDictionary

        result = SiteResult()
        current = self._read()  # right before the PUT: what others wrote meanwhile is kept
        merged = dict(current)
        sticky: set[str] = set()
        for item in changes:
            touched = item.change.writes | (item.change.removals if item.delete else frozenset())
            foreign = sorted(n for n in touched if n in current and n not in item.owned)
            if foreign:
                result.refused[item.target] = (f"target {item.target}: app setting(s) {', '.join(foreign)} of {self._where} exist and are "
                                               "not managed by vaultrelay; refusing to overwrite")
                continue
            for name in item.change.writes:
                merged[name] = item.settings[name] if item.settings is not None else item.desired[name].value.reveal()
            if item.delete:
                for name in item.change.removals:
                    merged.pop(name, None)
            if item.slot_setting:
                sticky |= set(item.change.writes)
        if sticky:
            result.sticky_added = self._make_sticky(sticky, slot_config_lease)
        if merged != current:
            try:
                if self.config.slot:
                    self.web.web_apps.update_application_settings_slot(self._resource_group(), self.config.site, self.config.slot,
                                                                       StringDictionary(properties=merged))
                else:
                    self.web.web_apps.update_application_settings(self._resource_group(), self.config.site, StringDictionary(properties=merged))
            except HttpResponseError as exc:
                raise TargetError(f"target {self.ctx.name}: updating app settings of {self._where} failed: HTTP {exc.status_code}"
                                  f"{denied_note(exc, 'target:app_settings')}") from None
            result.put = True
        del merged
        return result

    def _make_sticky(self, names: set[str], lease: Any) -> list[str]:
        """Add `names` to the site's sticky app setting names (read-modify-write, one PUT, none when
        they all are already); the names others made sticky stay.  Returns the names added."""
        import contextlib

        from azure.core.exceptions import HttpResponseError
        from azure.mgmt.web.models import SlotConfigNames, SlotConfigNamesResource

        with lease() if lease is not None else contextlib.nullcontext():
            try:
                current = self.web.web_apps.list_slot_configuration_names(self._resource_group(), self.config.site)
                have = list(current.app_setting_names or [])
                missing = sorted(names - set(have))
                if missing:
                    self.web.web_apps.update_slot_configuration_names(self._resource_group(), self.config.site, SlotConfigNamesResource(
                        properties=SlotConfigNames(app_setting_names=have + missing,
                                                   connection_string_names=list(current.connection_string_names or []),
                                                   azure_storage_config_names=list(current.azure_storage_config_names or []))))
            except HttpResponseError as exc:
                raise TargetError(f"target {self.ctx.name}: making settings of {self.config.site} slot-sticky failed: HTTP {exc.status_code}"
                                  f"{denied_note(exc, 'target:app_settings_slot_setting')}") from None
        return missing
