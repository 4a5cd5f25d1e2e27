"""`type: app_settings` target: merge the bundle into an App Service / Functions app's settings.

Settings vaultrelay does not own are kept as they are; a name that already exists and was not
pushed by vaultrelay is refused.  ARM replaces app settings as a whole (no ETag), so the merge is
read-modify-write in one PUT: nothing is half-written.
"""

from __future__ import annotations

from typing import Any

from core.permissions import denied_note
from core.sources.base import resource_group_of
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError


class AppSettingsTargetWriter:
    kind = "app_settings"
    whole_bundle = False
    ownership_in_state = True

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx
        subscription = config.subscription or ctx.subscription
        if not subscription:
            raise TargetError(f"target {ctx.name}: no subscription known for site {config.site}")
        self.web = ctx.clients.web_management(subscription, ctx.credential)
        self._group = config.resource_group
        self._current: dict[str, str] | None = None

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
            raise TargetError(f"target {self.ctx.name}: cannot read app settings of {self.config.site}: HTTP {exc.status_code}{denied_note(exc, 'target:app_settings')}") from None
        return dict(result.properties or {})

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        current = self._current = self._read()
        snapshot = Snapshot()
        for name in names:
            if name in current:
                snapshot.fingerprints[name] = self.ctx.fingerprinter.of(current[name])
                if name not in recorded:
                    snapshot.foreign.add(name)
            else:
                snapshot.fingerprints[name] = None
        return snapshot

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        from azure.core.exceptions import HttpResponseError
        from azure.mgmt.web.models import StringDictionary

        foreign = sorted(snapshot.foreign & set(change.writes | change.removals))
        if foreign:
            raise TargetError(f"target {self.ctx.name}: app setting(s) {', '.join(foreign)} of {self.config.site} exist and are not managed by vaultrelay; refusing to overwrite")
        merged = dict(self._current if self._current is not None else self._read())
        for name in change.writes:
            merged[name] = desired[name].value.reveal()
        if self.config.deletion_policy == "delete":
            for name in change.removals:
                merged.pop(name, None)
        try:
            if self.config.slot:
                self.web.web_apps.update_application_settings_slot(self._resource_group(), self.config.site, self.config.slot, StringDictionary(properties=merged))
            else:
                self.web.web_apps.update_application_settings(self._resource_group(), self.config.site, StringDictionary(properties=merged))
        except HttpResponseError as exc:
            raise TargetError(f"target {self.ctx.name}: updating app settings of {self.config.site} failed: HTTP {exc.status_code}{denied_note(exc, 'target:app_settings')}") from None
        self._current = merged
        return PushResult(writes=1)
