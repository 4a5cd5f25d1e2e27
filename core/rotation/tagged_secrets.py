"""Rotation of Key Vault secrets tagged the way Microsoft's rotation samples tag them.

Microsoft's samples (storage account keys, Cosmos DB keys, "two sets of credentials") keep an
account key in a Key Vault secret tagged `CredentialId` (`key1`/`key2`, or `Primary`/`Secondary`
for Cosmos DB), `ProviderAddress` (the account's ARM resource id) and `ValidityPeriodDays`; on
`SecretNearExpiry` a function regenerates the *alternate* credential and writes it as the secret's
new version with `CredentialId` switched and `expires = now + ValidityPeriodDays`.  vaultrelay does
the same, as a drop-in replacement, for the vaults listed under `rotation.tagged_secrets`:

* triggered by `SecretNearExpiry` / `SecretExpired` (core.app.events) and by the timer / CLI
  `rotate` for secrets within their due window: less than `rotate_before` (default 30 days, Key
  Vault's near-expiry notice) before expiry, capped at half of `ValidityPeriodDays` so that a
  fresh version is never due at once (short validity periods would otherwise rotate in a loop);
* the new key is verified (one authorized call with it for storage; for Cosmos DB, that the listed
  key changed) before the secret version is written; the old credential is left alone, so
  consumers of the previous version keep working until the next rotation regenerates it;
* Cosmos DB's regeneration may take hours: a run waits for it at most `rotation.regenerate_wait`,
  keeps the operation's polling URL in the record and reports `in_progress`; later runs (timer,
  CLI, events) follow that operation up, never start a second one, and write the new version only
  once it succeeded and the listed key changed (core.rotation.account_keys.regenerate_account_key);
* idempotent and safe with several instances: a lease per secret, an ETag-conditional record of
  each phase (`rotations` table, partition `tagged`), and the secret's current version, CredentialId
  and ProviderAddress are checked before acting, so a duplicate or late event (an older version)
  regenerates nothing; a run killed between regenerating and writing is resumed without
  regenerating again (the alternate key's fingerprint before regeneration tells);
* envs with targets that reference the secret are re-pushed with the new version (returned in
  the report's `repush`; the rotate use case, core.app.rotate, syncs them);
* audited (names, versions, key ids; never values).  Secrets with an unsupported
  ProviderAddress kind or unusable tags get a status warning naming the secret and the problem.

`ProviderAddress` is written by whoever may write the secret, so it is never trusted on its own:
vaultrelay acts only on the accounts and servers the config lists for that vault
(`rotation.tagged_secrets[].accounts`, optionally per secret), matched on the whole resource id
(kind, subscription, resource group, name; case-insensitive, never a suffix).  A secret naming any
other one gets a status warning and nothing else: the account is not read, regenerated or set.
The check is made on every read of the secret, the one under the lease included, and the account
acted on is the one checked.

SQL server administrator passwords (Microsoft's "one set of credentials" sample): `CredentialId` is
the server's administrator login, `ProviderAddress` a `Microsoft.Sql/servers` resource id.  There is
one credential and no overlap window: the old password stops working when the new one is set.  A
new random password (core.azure.arm_sql.new_password) is kept only in memory and in Key Vault, in this
order, so that a run killed anywhere leaves no password on the server that nobody stored:

1. the record's phase `storing` (no value) and the server read (it exists, the login matches);
2. the password written as the secret's new version, tags kept plus `vaultrelay-rotation: pending`,
   `expires = now + ValidityPeriodDays`; phase `setting` with that version;
3. the password set on the server (ARM PATCH of `administratorLoginPassword`, a long-running
   operation), the server read back (it exists, `administratorLogin` is the CredentialId);
4. the `pending` tag removed (same version), the record finished, envs re-pushed.

A current version tagged pending is finished by the next run or event (the stored password is set
again: the PATCH is idempotent), never replaced by a new password.  When ARM refuses the PATCH
outright (a 4xx: the server kept its password) the previous version's value is written back as
the current version.  vaultrelay cannot sign in to SQL, so it does not verify the password itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from core.errors import NotFoundError
from core.ownership import MANAGED_BY, MANAGED_BY_VALUE
from core.resolve import forget_values
from core.rotation.regeneration import (
    Regeneration,
    Repush,
    RotationReport,
    counted,
    follow_regeneration,
    regenerate_account_key,
    verify_storage_key,
)
from core.sources.key_access import ensure_account_keys_usable
from core.sources.registry import sources
from core.state.tables import Conflict, Row
from core.values import SecretValue

if TYPE_CHECKING:
    from core.azure.arm_sql import SqlServers
    from core.azure.protocols import SecretClientLike

log = logging.getLogger("vaultrelay.tagged")

TAG_CREDENTIAL = "CredentialId"
TAG_PROVIDER = "ProviderAddress"
TAG_VALIDITY = "ValidityPeriodDays"
SAMPLE_TAGS = (TAG_CREDENTIAL, TAG_PROVIDER, TAG_VALIDITY)
TAG_PENDING = "vaultrelay-rotation"
PENDING = "pending"  # TAG_PENDING's value on a SQL password version not yet known to be set on the server
PARTITION = "tagged"
KIND = "tagged"  # rotation.kind of the rotation metric
LEASE_SECONDS = 900.0

# CredentialId (lower case) -> (provider kind, the alternate credential, the ARM key name to regenerate).
_ALTERNATES = {
    "key1": ("storage", "key2"), "key2": ("storage", "key1"),
    "primary": ("cosmos", "secondary"), "secondary": ("cosmos", "primary"),
    "primaryreadonly": ("cosmos", "secondaryreadonly"), "secondaryreadonly": ("cosmos", "primaryreadonly"),
}
_PROVIDER_KINDS = {"microsoft.storage/storageaccounts": "storage", "microsoft.documentdb/databaseaccounts": "cosmos",
                   "microsoft.sql/servers": "sql"}
# Cosmos DB keyKind of regenerateKey, and the listKeys / readonlykeys attribute holding the key.
_COSMOS_KEY_KIND = {"primary": "primary", "secondary": "secondary", "primaryreadonly": "primaryReadonly", "secondaryreadonly": "secondaryReadonly"}
_COSMOS_ATTRIBUTE = {"primary": "primary_master_key", "secondary": "secondary_master_key",
                     "primaryreadonly": "primary_readonly_master_key", "secondaryreadonly": "secondary_readonly_master_key"}


class UnusableTags(ValueError):
    """The sample tags are there but cannot be acted on; the message names the problem."""


class NotAllowed(UnusableTags):
    """`ProviderAddress` names an account or server the config does not list for the secret's vault."""


@dataclass(frozen=True)
class Provider:
    """The account a `ProviderAddress` names."""

    kind: str  # storage | cosmos | sql
    subscription: str
    resource_group: str
    account: str  # the account's (or SQL server's) name


def parse_provider(address: str) -> Provider:
    """The storage account, Cosmos DB account or SQL server of an ARM resource id.

    Raises:
        UnusableTags: not a resource id, or a resource kind vaultrelay does not rotate.
    """
    parts = [p for p in address.strip().split("/") if p]
    lowered = [p.lower() for p in parts]
    if len(parts) != 8 or lowered[0] != "subscriptions" or lowered[2] != "resourcegroups" or lowered[4] != "providers":
        raise UnusableTags(f"ProviderAddress is not an ARM resource id (/subscriptions/<id>/resourceGroups/<group>/providers/<type>/<name>): {address[:200]!r}")
    resource_type = f"{parts[5]}/{parts[6]}"
    kind = _PROVIDER_KINDS.get(resource_type.lower())
    if kind is None:
        raise UnusableTags(f"ProviderAddress is a {resource_type}; vaultrelay rotates storage accounts, Cosmos DB accounts and SQL servers only")
    return Provider(kind, parts[1], parts[3], parts[7])


@dataclass(frozen=True)
class TaggedSecret:
    """The current version of a tagged secret: its properties, never its value."""

    vault: str
    name: str
    version: str
    credential_id: str
    provider_address: str
    validity: timedelta
    expires_on: datetime | None
    created_on: datetime | None
    content_type: str | None
    tags: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.vault}:{self.name}"

    @property
    def provider(self) -> Provider:
        return parse_provider(self.provider_address)

    @property
    def pending(self) -> bool:
        """A SQL password stored by a rotation that may not be set on the server yet."""
        return self.tags.get(TAG_PENDING, "").lower() == PENDING

    def alternate(self) -> str:
        """The alternate CredentialId, written the way this one is (`key1` -> `key2`, `Primary` -> `Secondary`);
        a SQL server has one credential: its administrator login stays the CredentialId.

        Raises:
            UnusableTags: an unknown CredentialId or one that does not fit the provider.
        """
        kind = self.provider.kind
        if kind == "sql":
            return self.credential_id
        found = _ALTERNATES.get(self.credential_id.lower())
        if found is None or found[0] != kind:
            allowed = ", ".join(k for k, (p, _) in _ALTERNATES.items() if p == kind)
            raise UnusableTags(f"CredentialId {self.credential_id!r} is not a {'storage' if kind == 'storage' else 'Cosmos DB'} key (use {allowed})")
        return _written_like(self.credential_id, found[1])


def _written_like(credential_id: str, alternate: str) -> str:
    """`alternate` (lower case) spelled the way `credential_id` is: only the part that differs is
    swapped (`key1` -> `key2`, `Primary` -> `Secondary`), the rest is kept as written, so
    `PrimaryReadOnly` -> `SecondaryReadOnly`, `secondaryReadonly` -> `primaryReadonly` and
    `KEY2` -> `KEY1`: consumers matching on the tag see the spelling they were set up with."""
    lowered = credential_id.lower()
    for old, new in (("primary", "secondary"), ("secondary", "primary"), ("key1", "key2"), ("key2", "key1")):
        if lowered.startswith(old) and alternate == new + lowered[len(old):]:
            head = credential_id[:len(old)]
            if head.isupper():
                swapped = new.upper()
            elif head[:1].isupper():
                swapped = new.capitalize()
            else:
                swapped = new
            return swapped + credential_id[len(old):]
    return alternate


def tagged_secret(vault: str, properties: Any) -> TaggedSecret | None:
    """A `TaggedSecret` from Key Vault secret properties, or None when the sample tags are absent.

    Raises:
        UnusableTags: ValidityPeriodDays is not a positive number.
    """
    tags = dict(properties.tags or {})
    if not all(tags.get(t) for t in SAMPLE_TAGS):
        return None
    try:
        days = float(tags[TAG_VALIDITY])
    except ValueError:
        days = 0.0
    if not 0 < days <= 3650:
        raise UnusableTags(f"ValidityPeriodDays {tags[TAG_VALIDITY][:20]!r} is not a number of days between 1 and 3650")
    return TaggedSecret(
        vault=vault.lower(), name=str(properties.name), version=str(properties.version or ""), credential_id=tags[TAG_CREDENTIAL],
        provider_address=tags[TAG_PROVIDER], validity=timedelta(days=days), expires_on=properties.expires_on,
        created_on=properties.created_on, content_type=properties.content_type, tags=tags,
    )


class TaggedSecretRotation:
    """Rotates the tagged secrets of the vaults a config opts in, over its runtime (core.runtime).
    A rotated secret's report carries the envs to push in `repush` (nothing is pushed here)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.broker = runtime.connections
        self.watched = {t.vault.lower(): t for t in runtime.config.rotation.tagged_secrets}

    def watches(self, vault: str) -> bool:
        return vault.lower() in self.watched

    def _vault(self, vault: str) -> SecretClientLike:
        settings = self.watched[vault.lower()]
        return self.broker.clients.secret_client(settings.vault, self.broker.store(settings.store).credential)

    def _credential(self, vault: str) -> Any:
        return self.broker.store(self.watched[vault.lower()].store).credential

    def allowed_provider(self, secret: TaggedSecret) -> Provider:
        """The account or server the secret's `ProviderAddress` names, if the config lists it for
        the secret's vault (and, when the entry names secrets, for this secret).

        Raises:
            UnusableTags: the address is not a resource id of a kind vaultrelay rotates.
            NotAllowed: the config does not list that account for this vault and secret.
        """
        provider = secret.provider
        settings = self.watched[secret.vault.lower()]
        wanted = (provider.kind, provider.subscription.lower(), provider.resource_group.lower(), provider.account.lower())
        default_subscription = self.broker.store(settings.store).default_subscription
        listed = False
        for entry in settings.accounts:
            if entry.resource_key(default_subscription) == wanted:
                if entry.admits(secret.name):
                    return provider
                listed = True
        what = {"storage": "storage account", "cosmos": "Cosmos DB account", "sql": "SQL server"}[provider.kind]
        where = f"{what} {provider.account!r} (resource group {provider.resource_group!r}, subscription {provider.subscription!r})"
        if listed:
            raise NotAllowed(f"ProviderAddress names {where}, which rotation.tagged_secrets lists for vault {settings.vault} "
                             f"but not for this secret (its secrets:); not rotated, the account was not touched")
        raise NotAllowed(f"ProviderAddress names {where}, which rotation.tagged_secrets does not list for vault {settings.vault} "
                         f"(accounts:); not rotated, the account was not touched")

    # ---- finding them -------------------------------------------------------------------
    def listed(self, vault: str) -> list[Any]:
        """Properties (never values) of every secret of a watched vault that carries the sample
        tags; secrets vaultrelay pushed itself are never taken for sample-tagged ones."""
        return [props for props in self._vault(vault).list_properties_of_secrets()
                if all((props.tags or {}).get(t) for t in SAMPLE_TAGS) and (props.tags or {}).get(MANAGED_BY) != MANAGED_BY_VALUE]

    def current(self, vault: str, name: str) -> TaggedSecret | None:
        """The secret's current version, or None when it does not exist or carries no sample tags.

        Raises:
            UnusableTags: the tags cannot be acted on.
        """
        from azure.core.exceptions import ResourceNotFoundError

        try:
            secret = self._vault(vault).get_secret(name)
        except ResourceNotFoundError:
            return None
        return tagged_secret(vault, secret.properties)

    # ---- entry points -------------------------------------------------------------------
    def rotate(self, name: str | None = None, *, force: bool = False) -> list[RotationReport]:
        """Rotate the tagged secrets that are due (or `name`, `tagged:<vault>/<secret>`; or all with `force`).
        A vault that cannot be listed is one error report; the other vaults go on.

        Raises:
            NotFoundError: `name` is not a tagged secret of a watched vault.
        """
        if name is not None:
            vault, _, secret = name.removeprefix("tagged:").partition("/")
            if not self.watches(vault) or not secret:
                raise NotFoundError(f"no tagged secret named '{name}' (watched vaults: {', '.join(sorted(self.watched)) or 'none'})")
            try:
                tagged = self.current(vault, secret)
            except UnusableTags:  # rotate_secret records the warning
                return [self.rotate_secret(vault, secret, force=force, reason="forced" if force else "due")]
            if tagged is None:
                raise NotFoundError(f"{vault}/{secret} does not exist or carries no {', '.join(SAMPLE_TAGS)} tags")
            return [self.rotate_secret(vault, secret, force=force, reason="forced" if force else "due")]
        reports = []
        now = self.runtime.clock()
        unfinished = {row.key for row in self.runtime.state.query("rotations", PARTITION) if row.fields.get("phase")}
        for vault in sorted(self.watched):
            try:
                listed = self.listed(vault)
            except Exception as exc:
                log.error("cannot list tagged secrets of %s: %s", vault, type(exc).__name__)
                reports.append(counted(RotationReport(f"tagged:{vault}", "error", error=f"cannot list the vault's secrets: {type(exc).__name__}"), KIND))
                continue
            for props in listed:
                try:
                    quick = tagged_secret(vault, props)
                    if quick is not None:
                        self.allowed_provider(quick)
                except UnusableTags:
                    quick = None  # rotate_secret records the warning, due or not
                if quick is not None and not force and quick.key not in unfinished and not quick.pending and not self.due(quick, now):
                    # The listing carries tags and expiry: a secret that is not due costs no further call.
                    reports.append(counted(RotationReport(f"tagged:{vault}/{props.name}", "not_due", quick.credential_id,
                                                          next_due=self._next_due(quick)), KIND))
                    continue
                reports.append(self.rotate_secret(vault, props.name, force=force, reason="forced" if force else "due"))
        return reports

    def on_event(self, vault: str, name: str, version: str | None, *, expired: bool) -> RotationReport | None:
        """React to SecretNearExpiry / SecretExpired of `vault`/`name`; None when vaultrelay does
        not rotate that secret (the vault is not watched or the secret carries no sample tags)."""
        if not self.watches(vault):
            return None
        try:
            if self.current(vault, name) is None:
                return None
        except UnusableTags:
            pass  # rotate_secret records the warning
        return self.rotate_secret(vault, name, expected_version=version, force=expired,
                                  reason="SecretExpired" if expired else "SecretNearExpiry")

    # ---- one secret ---------------------------------------------------------------------
    def due(self, secret: TaggedSecret, now: datetime) -> bool:
        if secret.expires_on is None:
            return True
        window = min(timedelta(seconds=float(self.watched[secret.vault].rotate_before)), secret.validity / 2)
        return secret.expires_on - now <= window

    def rotate_secret(self, vault: str, name: str, *, expected_version: str | None = None, force: bool = False,
                      reason: str = "due") -> RotationReport:
        """Rotate one tagged secret when due (always with `force`); `expected_version` is the version
        an event was about: when the secret has moved on since, it was already rotated."""
        return counted(self._rotate_secret(vault, name, expected_version=expected_version, force=force, reason=reason), KIND)

    def _rotate_secret(self, vault: str, name: str, *, expected_version: str | None, force: bool, reason: str) -> RotationReport:
        label = f"tagged:{vault.lower()}/{name}"
        now = self.runtime.clock()
        try:
            secret = self.current(vault, name)
            if secret is None:
                return RotationReport(label, "not_tagged")
            provider = self.allowed_provider(secret)
            alternate = secret.alternate()
        except UnusableTags as exc:
            return self._warn(vault, name, str(exc), label)
        state = self.runtime.state
        row = state.get("rotations", PARTITION, secret.key)
        unfinished = (row is not None and bool(row.fields.get("phase"))) or secret.pending
        if not unfinished:
            if expected_version and secret.version != expected_version:
                return RotationReport(label, "already_rotated", new_active=secret.credential_id)
            if not force and not self.due(secret, now):
                return RotationReport(label, "not_due", secret.credential_id, next_due=self._next_due(secret))
        from core.state.leases import holder_is_dead

        # Table keys cannot hold "/": the lease is named vault:secret.
        lease = state.acquire_lease(f"rotate:tagged:{vault.lower()}:{name}", self.runtime.owner, LEASE_SECONDS, stale=holder_is_dead)
        if lease is None:
            return RotationReport(label, "busy")
        try:
            # Re-read under the lease: another instance may have finished meanwhile, or the tags
            # changed since the first read (checked again: the account acted on is this one).
            secret = self.current(vault, name)
            if secret is None:
                return RotationReport(label, "not_tagged")
            provider = self.allowed_provider(secret)
            alternate = secret.alternate()
            row = state.get("rotations", PARTITION, secret.key)
            if provider.kind == "sql":
                return self._rotate_sql(secret, row, expected_version=expected_version, force=force, reason=reason, label=label)
            phase = str(row.fields.get("phase") or "") if row else ""
            if phase and row is not None and row.fields.get("from_version") != secret.version:
                # Killed after writing the new version: only the record is left to finish.
                if secret.credential_id == row.fields.get("target") and secret.provider_address == row.fields.get("provider"):
                    self._finish(row, secret, now)
                    return RotationReport(label, "resumed", row.fields.get("from"), secret.credential_id, next_due=self._next_due(secret))
                phase = ""  # someone else wrote a version: start over from what is there now
            if not phase:
                if expected_version and secret.version != expected_version:
                    return RotationReport(label, "already_rotated", new_active=secret.credential_id)
                if not force and not self.due(secret, now):
                    return RotationReport(label, "not_due", secret.credential_id, next_due=self._next_due(secret))
            return self._run(secret, provider, alternate, row, resumed=bool(phase), reason=reason, label=label)
        except UnusableTags as exc:
            return self._warn(vault, name, str(exc), label)
        except Exception as exc:
            log.error("rotation of %s failed: %s", label, type(exc).__name__)
            state.audit(self.runtime.owner, "tagged.failed", f"{vault}/{name}", {"error": type(exc).__name__})
            return RotationReport(label, "error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        finally:
            state.release_lease(lease)

    def _run(self, secret: TaggedSecret, provider: Provider, alternate: str, row: Row | None, *, resumed: bool, reason: str,
             label: str) -> RotationReport:
        fp = self.runtime.fingerprinter
        report = RotationReport(label, "resumed" if resumed else "rotated", old_active=secret.credential_id, new_active=alternate)
        credential = self._credential(secret.vault)
        # An account whose keys authorize nothing (allowSharedKeyAccess: false, disableLocalAuth: true) is not rotated.
        ensure_account_keys_usable(self.broker.clients, provider.kind, provider.subscription, provider.resource_group, provider.account,
                                   credential, "rotate its keys")
        if not resumed or row is None:
            keys = self._keys(provider, credential)
            fields = {"phase": "regenerating", "from": secret.credential_id, "target": alternate, "from_version": secret.version,
                      "provider": secret.provider_address, "fp_before": fp.of(keys[alternate.lower()]),
                      "started_at": self.runtime.clock().isoformat(), "reason": reason, "operation": "", "operation_status": ""}
            row = self._record(row, secret.key, fields)
        keys = self._keys(provider, credential)
        changed = fp.of(keys[alternate.lower()]) != row.fields.get("fp_before")
        if not changed or row.fields.get("operation"):
            # Start the regeneration, or follow the one a previous run started.
            outcome, row = self._regenerate(provider, alternate.lower(), credential, row)
            keys = self._keys(provider, credential) if outcome.done else keys
            if not outcome.done or fp.of(keys[alternate.lower()]) == row.fields.get("fp_before"):
                if outcome.done and provider.kind == "storage":
                    raise RuntimeError(f"{provider.account} still lists the old {alternate} after regenerating it")
                log.info("rotation %s: %s of %s is being regenerated (%s); a later run writes the new version", label, alternate,
                         provider.account, outcome.status or "running")
                self.runtime.state.audit(self.runtime.owner, "tagged.waiting", f"{secret.vault}/{secret.name}", {
                    "to": alternate, "account": provider.account, "status": outcome.status, "since": row.fields.get("started_at", "")})
                report.outcome = "in_progress"
                return report
        else:
            log.info("rotation %s: %s was already regenerated by an interrupted run", label, alternate)
        problem = verify_storage_key(self.broker.clients, provider.account, keys[alternate.lower()]) if provider.kind == "storage" else None
        if problem:
            raise RuntimeError(f"the regenerated {alternate} did not work: {problem}")
        now = self.runtime.clock()
        tags = {**secret.tags, TAG_CREDENTIAL: alternate, TAG_PROVIDER: secret.provider_address, TAG_VALIDITY: secret.tags[TAG_VALIDITY]}
        written = self._vault(secret.vault).set_secret(secret.name, keys[alternate.lower()], tags=tags, expires_on=now + secret.validity,
                                                       content_type=secret.content_type)
        new = tagged_secret(secret.vault, written.properties)
        assert new is not None
        self._finish(row, new, now)
        report.next_due = self._next_due(new)
        self.runtime.state.audit(self.runtime.owner, "tagged.rotated", f"{secret.vault}/{secret.name}", {
            "from": secret.credential_id, "to": alternate, "kind": provider.kind, "account": provider.account,
            "from_version": secret.version, "to_version": new.version, "reason": reason, "resumed": resumed,
        })
        report.repush = self._repush(secret.vault, secret.name)
        return report

    # ---- SQL server administrator passwords ---------------------------------------------
    def _rotate_sql(self, secret: TaggedSecret, row: Row | None, *, expected_version: str | None, force: bool, reason: str,
                    label: str) -> RotationReport:
        """One SQL password rotation under the secret's lease: finish a pending one, else start one when due."""
        if secret.pending:
            return self._sql_apply(secret, row, None, resumed=True, reason=reason, label=label)
        phase = str(row.fields.get("phase") or "") if row else ""
        if row is not None and phase == "rolling_back":
            # A refused update whose previous value was written back (the current version is not pending).
            row.fields.update({"phase": ""})
            row = self._save(row)
            phase = ""
        if row is not None and phase and row.fields.get("from_version") != secret.version:
            if secret.credential_id == row.fields.get("target") and secret.provider_address == row.fields.get("provider"):
                # Killed after the pending tag was removed: only the record is left to finish.
                now = self.runtime.clock()
                self._finish(row, secret, now)
                return RotationReport(label, "resumed", secret.credential_id, secret.credential_id, next_due=self._next_due(secret))
            phase = ""  # someone else wrote a version: start over from what is there now
        if not phase:
            if expected_version and secret.version != expected_version:
                return RotationReport(label, "already_rotated", new_active=secret.credential_id)
            if not force and not self.due(secret, self.runtime.clock()):
                return RotationReport(label, "not_due", secret.credential_id, next_due=self._next_due(secret))
        # No phase, or killed before a new version was stored: nothing reached the server yet.
        return self._sql_start(secret, row, resumed=bool(phase), reason=reason, label=label)

    def _sql_server(self, secret: TaggedSecret) -> SqlServers:
        """The `SqlServers` of the secret's ProviderAddress, with the vault's store identity."""
        return self.broker.clients.sql_servers(secret.provider.subscription, self._credential(secret.vault))

    def _check_login(self, secret: TaggedSecret, provider: Provider) -> str:
        """The server's administrator login, which must be the CredentialId.

        Raises:
            UnusableTags: the server's administrator login is another one.
        """
        server = self._sql_server(secret).get(provider.resource_group, provider.account)
        if server.administrator_login.lower() != secret.credential_id.lower():
            raise UnusableTags(f"CredentialId {secret.credential_id!r} is not the administrator login of SQL server {provider.account}")
        return str(server.administrator_login)

    def _sql_start(self, secret: TaggedSecret, row: Row | None, *, resumed: bool, reason: str, label: str) -> RotationReport:
        from core.azure.arm_sql import new_password

        provider = secret.provider
        login = self._check_login(secret, provider)
        fields = {"phase": "storing", "from": secret.credential_id, "target": secret.credential_id, "from_version": secret.version,
                  "to_version": "", "provider": secret.provider_address, "fp_before": "",
                  "started_at": self.runtime.clock().isoformat(), "reason": reason}
        row = self._record(row, secret.key, fields)
        password = new_password(login)
        now = self.runtime.clock()
        written = self._vault(secret.vault).set_secret(
            secret.name, password.reveal(), tags={**secret.tags, TAG_PENDING: PENDING}, expires_on=now + secret.validity,
            content_type=secret.content_type)
        pending = tagged_secret(secret.vault, written.properties)
        assert pending is not None
        log.info("rotation %s: new password stored as version %s (pending), setting it on %s", label, pending.version, provider.account)
        row.fields.update({"phase": "setting", "to_version": pending.version})
        row = self._save(row)
        return self._sql_apply(pending, row, password, resumed=resumed, reason=reason, label=label)

    def _sql_apply(self, pending: TaggedSecret, row: Row | None, password: SecretValue | None, *, resumed: bool, reason: str,
                   label: str) -> RotationReport:
        """Set the password stored in `pending` (a version tagged pending) on the server, then finish."""
        from core.azure.arm_sql import PasswordRefused

        provider = pending.provider
        vault = self._vault(pending.vault)
        if row is None or not row.fields.get("phase"):
            # Resumed from the secret alone (the record was lost or never written): the last
            # finished version, if any, is the one a refusal writes back.
            fields = {"phase": "setting", "from": pending.credential_id, "target": pending.credential_id,
                      "from_version": str(row.fields.get("version") or "") if row else "", "to_version": pending.version,
                      "provider": pending.provider_address, "fp_before": "", "started_at": self.runtime.clock().isoformat(), "reason": reason}
            row = self._record(row, pending.key, fields)
        elif row.fields.get("to_version") != pending.version:
            row.fields.update({"phase": "setting", "to_version": pending.version})
            row = self._save(row)
        if password is None:
            log.info("rotation %s: version %s is pending: setting its password on %s again", label, pending.version, provider.account)
            password = SecretValue(vault.get_secret(pending.name, pending.version).value or "")
            self._check_login(pending, provider)  # _sql_start checked it for a new password
        servers = self._sql_server(pending)
        try:
            servers.set_administrator_password(provider.resource_group, provider.account, password)
        except PasswordRefused as exc:
            self._sql_roll_back(pending, row, exc)
        del password
        self._check_login(pending, provider)  # read back: the server is there and the login is the CredentialId
        tags = {k: v for k, v in pending.tags.items() if k != TAG_PENDING}
        final = tagged_secret(pending.vault, vault.update_secret_properties(pending.name, pending.version, tags=tags))
        assert final is not None
        now = self.runtime.clock()
        self._finish(row, final, now)
        self.runtime.state.audit(self.runtime.owner, "tagged.rotated", f"{pending.vault}/{pending.name}", {
            "from": pending.credential_id, "to": pending.credential_id, "kind": "sql", "account": provider.account,
            "from_version": row.fields.get("from_version", ""), "to_version": final.version, "reason": reason, "resumed": resumed,
        })
        report = RotationReport(label, "resumed" if resumed else "rotated", pending.credential_id, pending.credential_id,
                                next_due=self._next_due(final))
        report.repush = self._repush(pending.vault, pending.name)
        return report

    def _sql_roll_back(self, pending: TaggedSecret, row: Row, refused: Exception) -> NoReturn:
        """ARM refused the update, so the server kept its password: make the previous version's
        value current again (consumers must not read a password the server never took).

        Raises:
            RuntimeError: always (the rotation failed); says whether the previous value was restored.
        """
        row.fields.update({"phase": "rolling_back"})
        row = self._save(row)
        from_version = str(row.fields.get("from_version") or "")
        if not from_version:
            raise RuntimeError(f"{refused}; no previous version is known, the stored password stays pending")
        vault = self._vault(pending.vault)
        previous = vault.get_secret(pending.name, from_version)
        restored = vault.set_secret(pending.name, previous.value, tags=dict(previous.properties.tags or {}),
                                    expires_on=previous.properties.expires_on, content_type=previous.properties.content_type)
        row.fields.update({"phase": "", "to_version": "", "last_error": str(refused)[:200]})
        self._save(row)
        raise RuntimeError(f"{refused}; the previous password was written back as version {restored.properties.version}")

    def _finish(self, row: Row, secret: TaggedSecret, now: datetime) -> None:
        row.fields.update({"phase": "", "fp_before": "", "operation": "", "operation_status": "",
                           "active": secret.credential_id, "version": secret.version,
                           "rotated_at": now.isoformat(), "next_due": self._next_due(secret) or ""})
        self._save(row)

    def _next_due(self, secret: TaggedSecret) -> str | None:
        if secret.expires_on is None:
            return None
        window = min(timedelta(seconds=float(self.watched[secret.vault].rotate_before)), secret.validity / 2)
        return (secret.expires_on - window).isoformat()

    def _record(self, row: Row | None, key: str, fields: dict[str, Any]) -> Row:
        """Save the secret's rotation record with `fields` updated (created when `row` is None)."""
        return self._save(Row(PARTITION, key, {**(row.fields if row else {}), **fields}, row.etag if row else None))

    def _save(self, row: Row) -> Row:
        try:
            return self.runtime.state.put("rotations", row)
        except Conflict:
            raise RuntimeError("the rotation record changed underneath this run (another instance); giving up this run") from None

    def _repush(self, vault: str, name: str) -> Repush:
        """The envs with targets that reference the secret (they get the new version once synced)."""
        forget_values(vault=vault, secret=name)
        envs = [env for env in self.runtime.envs_with_targets()
                if any(_reads(r) == (vault, name.lower()) for r in self.broker.env_plan(env).refs)]
        return Repush(envs, f"rotation:tagged:{vault}/{name}", [{"vault": vault, "secret": name}])

    def _warn(self, vault: str, name: str, detail: str, label: str) -> RotationReport:
        message = f"{vault}/{name}: {detail}"
        log.warning("tagged secret not rotated: %s", message)
        state = self.runtime.state
        existing = state.get("rotations", "warning", f"{vault.lower()}:{name}")
        if existing is None or existing.fields.get("detail") != message:
            row = Row("warning", f"{vault.lower()}:{name}", {"detail": message, "at": self.runtime.clock().isoformat()},
                      existing.etag if existing else None)
            try:
                state.put("rotations", row)
            except Conflict:
                pass
        return RotationReport(label, "unsupported", error=detail)

    # ---- provider calls -----------------------------------------------------------------
    def _keys(self, provider: Provider, credential: Any) -> dict[str, str]:
        """The account's keys by lower-case CredentialId, listed now (never a cached listing)."""
        clients = self.broker.clients
        if provider.kind == "storage":
            result = clients.storage_management(provider.subscription, credential).storage_accounts.list_keys(provider.resource_group, provider.account)
            return {key.key_name.lower(): key.value for key in result.keys_property or []}
        accounts = clients.cosmos_management(provider.subscription, credential).database_accounts
        keys = accounts.list_keys(provider.resource_group, provider.account)
        readonly = accounts.list_read_only_keys(provider.resource_group, provider.account)
        found = {k: getattr(keys, a, None) for k, a in _COSMOS_ATTRIBUTE.items() if not k.endswith("readonly")}
        found.update({k: getattr(readonly, a, None) for k, a in _COSMOS_ATTRIBUTE.items() if k.endswith("readonly")})
        return {k: v for k, v in found.items() if v}

    def _regenerate(self, provider: Provider, key: str, credential: Any, row: Row) -> tuple[Regeneration, Row]:
        """Regenerate `key` (storage), or start / follow Cosmos DB's operation for at most
        `rotation.regenerate_wait`, keeping its polling URL in the record."""
        if not row.fields.get("operation"):
            log.info("tagged rotation: regenerating %s of %s", key, provider.account)
        key_name = key if provider.kind == "storage" else _COSMOS_KEY_KIND[key]
        wait = float(self.runtime.config.rotation.regenerate_wait)
        return follow_regeneration(row, self._save, lambda operation, started: regenerate_account_key(
            self.broker.clients, provider.kind, provider.subscription, provider.resource_group, provider.account, key_name, credential,
            operation=operation, wait=wait, on_started=started))


def _reads(ref: Any) -> tuple[str, str] | None:
    """(vault, secret) in lower case of the Key Vault object planned reference `ref` reads, if any."""
    read = sources().get(ref.kind).keyvault_object(ref)
    return (read[0].lower(), read[1].lower()) if read is not None else None
