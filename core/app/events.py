"""Reactions to Key Vault events (Event Grid or CloudEvents schema).

* `SecretNewVersionCreated`: re-sync only the envs that reference that vault + secret (an index
  built from the config once, not a scan), after dropping the cached value.
* `SecretNearExpiry` / `SecretExpired`: when vaultrelay owns the secret (a SAS it minted in the
  state vault, or a secret it pushed to a target vault) the owning env is re-synced (a minted SAS
  is re-minted); a secret tagged like Microsoft's rotation samples (`CredentialId`,
  `ProviderAddress`, `ValidityPeriodDays`) in a vault listed under `rotation.tagged_secrets` is
  rotated (core.rotation.tagged_secrets); otherwise a warning is recorded for `status`.
* Every event id is recorded once it was handled: duplicates, retries and out-of-order deliveries
  change nothing twice (an older version's event re-syncs to the latest value, a no-op).  An event
  about an unknown secret, of another type, or with a malformed body is logged and acknowledged
  (never retried forever); only a failure of vaultrelay itself raises, so that Event Grid delivers
  again.  Names Key Vault could never produce (a vault name is 3-24 letters, digits and single
  hyphens starting with a letter; an object name 1-127 letters, digits and hyphens; a version 32
  hex digits: Learn, "Azure Key Vault keys, secrets, and certificates overview" and "Key Vault
  naming") make an event malformed: acknowledged, never echoed into logs or state.  An event about
  a vault the config does not name (no reference, target, state vault or tagged rotation uses it)
  is acknowledged as ignored and writes nothing to state: not a status warning, not an event or
  audit row, so a topic shared with other vaults cannot fill the tables.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.app.rotate import repush
from core.app.sync import PushIncomplete, engine, push
from core.mint.sas import DELEGATION_KEY_PREFIX
from core.resolve import forget_values
from core.runtime import Runtime
from core.sources.registry import sources
from core.state.tables import MINTED_RECORDS, Conflict, Row

log = logging.getLogger("vaultrelay.events")

NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
EXPIRED = "Microsoft.KeyVault.SecretExpired"
HANDLED = (NEW_VERSION, NEAR_EXPIRY, EXPIRED)
MAX_ID_ECHO = 200  # a malformed body's id is echoed in the outcome at most this long
_VAULT_NAME = re.compile(r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]")
_OBJECT_NAME = re.compile(r"[0-9a-zA-Z-]{1,127}")
_VERSION = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class KeyVaultEvent:
    id: str
    type: str
    vault: str
    name: str
    version: str | None


class MalformedEvent(ValueError):
    """The event body is not a Key Vault event; the message names the missing or bad field."""


def parse_event(event: Mapping[str, Any]) -> KeyVaultEvent:
    """A Key Vault event from its Event Grid or CloudEvents form (a dict as delivered).

    Raises:
        MalformedEvent: a required field is missing or has the wrong type.
    """
    if not isinstance(event, Mapping):
        raise MalformedEvent(f"expected a JSON object, got {type(event).__name__}")
    event_id = event.get("id")
    event_type = event.get("eventType") or event.get("type")
    data = event.get("data")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedEvent("id: missing")
    if len(event_id) > MAX_ID_ECHO or not event_id.isprintable():
        raise MalformedEvent(f"id: more than {MAX_ID_ECHO} characters or not printable (Event Grid ids are GUIDs)")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEvent("eventType/type: missing")
    if not isinstance(data, Mapping):
        raise MalformedEvent("data: expected an object")
    vault = data.get("VaultName") or data.get("vaultName")
    name = data.get("ObjectName") or data.get("objectName")
    version = data.get("Version") or data.get("version")
    if not isinstance(vault, str) or not vault:
        raise MalformedEvent("data.VaultName: missing")
    if not isinstance(name, str) or not name:
        raise MalformedEvent("data.ObjectName: missing")
    if version is not None and not isinstance(version, str):
        raise MalformedEvent("data.Version: expected a string")
    # Checked with fullmatch on str only: the values are never echoed (they may hold anything).
    if not _VAULT_NAME.fullmatch(vault):
        raise MalformedEvent("data.VaultName: not a Key Vault name (3-24 letters, digits and single hyphens, starting with a letter)")
    if not _OBJECT_NAME.fullmatch(name):
        raise MalformedEvent("data.ObjectName: not a Key Vault object name (1-127 letters, digits and hyphens)")
    if version is not None and not _VERSION.fullmatch(version):
        raise MalformedEvent("data.Version: not a Key Vault version (32 hex digits)")
    return KeyVaultEvent(event_id, event_type, vault.lower(), name.lower(), version)


@dataclass
class EventOutcome:
    event_id: str
    outcome: str  # synced, enqueued (queue mode), rotated, warning, duplicate, ignored, malformed
    envs: list[str] = field(default_factory=list)
    detail: str = ""


def handle_event(runtime: Runtime, raw: Mapping[str, Any]) -> EventOutcome:
    """The Event Grid trigger's use case: one delivered Key Vault event, handled over `runtime`
    (its index of secrets to envs is built once per runtime).

    Raises:
        Exception: vaultrelay could not act on a valid event (Event Grid should retry).
    """
    return runtime.shared("keyvault_events", lambda: KeyVaultEvents(runtime)).handle(raw)


class KeyVaultEvents:
    """Handles Key Vault events over one runtime (core.runtime)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.index = self._build_index()
        self.vaults = self._config_vaults()

    def _build_index(self) -> dict[tuple[str, str], set[str]]:
        """(vault, secret) -> envs with targets that reference it."""
        with_targets = set(self.runtime.envs_with_targets())
        index: dict[tuple[str, str], set[str]] = {}
        for env in with_targets:
            for ref in self.runtime.connections.env_plan(env).refs:
                read = sources().get(ref.kind).keyvault_object(ref)
                if read is not None:
                    index.setdefault((read[0].lower(), read[1].lower()), set()).add(env)
        return index

    def _config_vaults(self) -> frozenset[str]:
        """Every vault the config names: references (of any env), Key Vault targets, the state
        vault and vaults under `rotation.tagged_secrets` (lowercase)."""
        config = self.runtime.config
        reads = [sources().get(ref.kind).keyvault_object(ref) for env in config.envs for ref in self.runtime.connections.env_plan(env).refs]
        vaults = {read[0].lower() for read in reads if read is not None}
        vaults.update(t.vault.lower() for t in config.targets.values() if t.type == "keyvault")
        if config.state is not None and config.state.vault:
            vaults.add(config.state.vault.lower())
        vaults.update(t.vault.lower() for t in config.rotation.tagged_secrets)
        return frozenset(vaults)

    def handle(self, raw: Mapping[str, Any]) -> EventOutcome:
        """Handle one delivered event.

        Raises:
            Exception: vaultrelay could not act on a valid event (Event Grid should retry).
        """
        try:
            event = parse_event(raw)
        except MalformedEvent as exc:
            log.warning("malformed Key Vault event acknowledged: %s", exc)
            raw_id = str(raw.get("id", "") if isinstance(raw, Mapping) else "")[:MAX_ID_ECHO]
            if not raw_id.isprintable():
                raw_id = raw_id.encode("unicode_escape").decode()[:MAX_ID_ECHO]
            return EventOutcome(raw_id, "malformed", detail=str(exc))
        if event.type not in HANDLED:
            return EventOutcome(event.id, "ignored", detail=f"event type {event.type} is not handled")
        if event.vault not in self.vaults:
            # Not ours: nothing is read or written (no status warning, no event or audit row).
            return EventOutcome(event.id, "ignored", detail=f"vault {event.vault} is not in the config")
        if self.runtime.state.event_seen(event.id):
            return EventOutcome(event.id, "duplicate")
        if event.type == NEW_VERSION:
            outcome = self._new_version(event)
        else:
            outcome = self._expiring(event)
        self._record(event, outcome)
        return outcome

    def _new_version(self, event: KeyVaultEvent) -> EventOutcome:
        envs = sorted(self.index.get((event.vault, event.name), set()))
        if not envs:
            return EventOutcome(event.id, "ignored", detail=f"no env with targets references {event.vault}/{event.name}")
        forget_values(vault=event.vault, secret=event.name)
        try:
            pushed = push(self.runtime, envs, reason="secret_changed", trigger=f"event:{event.id}",
                          forget=[{"vault": event.vault, "secret": event.name}])
        except PushIncomplete as exc:
            raise RuntimeError(f"re-sync after a new version of {event.vault}/{event.name}: {exc}") from None
        if pushed.items is not None:
            return EventOutcome(event.id, "enqueued", envs, detail=f"{len(pushed.items)} work items")
        return EventOutcome(event.id, "synced", envs)

    def _expiring(self, event: KeyVaultEvent) -> EventOutcome:
        config = self.runtime.config
        state_vault = (config.state.vault or "").lower() if config.state else ""
        if event.vault == state_vault and event.name.startswith(("vr-sas-", "vr-token-")):
            row = self.runtime.state.get("rotations", MINTED_RECORDS, event.name)
            env = str(row.fields.get("env")) if row else None
            if env and env in self.runtime.envs_with_targets():
                # Key Vault warns 30 days ahead, so every short-lived SAS is "near expiry" from the
                # start: re-sync, which re-mints only when the token is due (rotate_before).
                try:
                    pushed = push(self.runtime, [env], reason="secret_expiring", trigger=f"event:{event.id}")
                except PushIncomplete:
                    raise RuntimeError(f"re-mint for env {env} did not complete") from None
                if pushed.items is not None:
                    return EventOutcome(event.id, "enqueued", [env], detail="minted SAS to be checked by the worker")
                minted = any(report.minted for report in pushed.reports)
                return EventOutcome(event.id, "synced", [env], detail=f"minted SAS checked: re-minted {'yes' if minted else 'no (not due)'}")
        if event.vault == state_vault and event.name.startswith(DELEGATION_KEY_PREFIX):
            return EventOutcome(event.id, "ignored", detail="a cached user delegation key: renewed when a SAS needs more lifetime than it has left")
        tagged = self._tagged_rotation(event)
        if tagged is not None:
            return tagged
        owned = sorted(
            t.env for t in config.targets.values()
            if t.type == "keyvault" and t.vault.lower() == event.vault
        )
        if owned:
            if self.runtime.queue:
                push(self.runtime, owned, reason="secret_expiring", trigger=f"event:{event.id}")
                return EventOutcome(event.id, "enqueued", owned, detail="target secret to be re-pushed")
            for env in owned:  # each on its own: one env's failure is its own (recorded for status)
                engine(self.runtime).sync(env)
            return EventOutcome(event.id, "synced", owned, detail="target secret re-pushed")
        sources = sorted(self.index.get((event.vault, event.name), set()))
        detail = f"{event.type.rsplit('.', 1)[-1]}: {event.vault}/{event.name} is not managed by vaultrelay"
        row = Row("warning", f"{event.vault}:{event.name}", {"event": event.type, "envs": ",".join(sources), "detail": detail})
        existing = self.runtime.state.get("rotations", "warning", row.key)
        row.etag = existing.etag if existing else None
        try:
            self.runtime.state.put("rotations", row)
        except Conflict:
            pass
        log.warning("%s", detail)
        return EventOutcome(event.id, "warning", sources, detail)

    def _tagged_rotation(self, event: KeyVaultEvent) -> EventOutcome | None:
        """Rotate a secret tagged like Microsoft's rotation samples in a vault listed under
        `rotation.tagged_secrets`; None when that does not apply.

        Raises:
            RuntimeError: the rotation failed (Event Grid delivers again; the record lets the
                next attempt resume).
        """
        from core.rotation.tagged_secrets import TaggedSecretRotation

        rotation = TaggedSecretRotation(self.runtime)
        if not rotation.watches(event.vault):
            return None
        report = rotation.on_event(event.vault, event.name, event.version, expired=event.type == EXPIRED)
        if report is None:
            return None
        repush(self.runtime, report)
        if report.outcome == "error":
            raise RuntimeError(f"rotation of {event.vault}/{event.name} failed: {report.error}")
        if report.outcome in ("rotated", "resumed"):
            return EventOutcome(event.id, "rotated", report.repushed, detail=f"{report.old_active} -> {report.new_active}; next due {report.next_due}")
        if report.outcome == "unsupported":
            return EventOutcome(event.id, "warning", detail=f"{event.vault}/{event.name} not rotated: {report.error}")
        return EventOutcome(event.id, "ignored", detail=f"tagged secret {event.vault}/{event.name}: {report.outcome.replace('_', ' ')}")

    def _record(self, event: KeyVaultEvent, outcome: EventOutcome) -> None:
        state = self.runtime.state
        state.record_event(event.id, {"type": event.type, "subject": f"{event.vault}/{event.name}",
                                      "outcome": outcome.outcome, "envs": ",".join(outcome.envs)})
        state.audit(self.runtime.owner, f"event.{outcome.outcome}", f"{event.vault}/{event.name}", {"event": event.id, "envs": outcome.envs})

