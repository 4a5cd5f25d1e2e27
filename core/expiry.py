"""The expiry watch: what vaultrelay depends on that expires within a window, and who renews it.

vaultrelay reads the expiry of everything it resolves: a Key Vault secret's `exp`, a certificate's
validity, the SAS tokens and access tokens it mints, and rotation due dates.  `expiring` resolves
every env (a dry run: nothing is minted, nothing is written) and lists, per thing, when it expires,
from which vault or account, which envs use it, and whether vaultrelay renews it itself (it mints
SAS and tokens again, rotates keys, and rewrites secrets under `rotation.tagged_secrets`); a Key
Vault secret or certificate that someone else sets is not renewable by vaultrelay.  A secret that
has already expired (Key Vault refuses to hand it out) is listed as expired.  Names and times only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.sources.registry import sources
from core.state.tables import ACCOUNT_KEY_RECORDS, MINTED_RECORDS

DEFAULT_WINDOW = timedelta(days=30)


@dataclass
class Expiring:
    """One thing that expires: names and times, never a value."""

    name: str  # e.g. kv-source/db-password
    kind: str  # keyvault_secret, keyvault_certificate, sas, token, storage_key, cosmos_key, tagged_secret
    where: str  # the vault, account or resource it comes from
    expires_on: datetime | None  # None: already refused as expired, time unknown
    envs: list[str] = field(default_factory=list)  # env.VARIABLE that use it
    renewable: bool = False
    renewal: str = ""  # how vaultrelay renews it, or what to do
    expired: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "where": self.where,
                "expires_on": self.expires_on.isoformat() if self.expires_on else None, "envs": sorted(self.envs),
                "renewable": self.renewable, "renewal": self.renewal, "expired": self.expired}


def parse_window(text: str) -> timedelta:
    """`30d`, `12h`, `90m` or a number of days.

    Raises:
        ValueError: not a window.
    """
    text = text.strip().lower()
    units = {"d": "days", "h": "hours", "m": "minutes", "w": "weeks"}
    try:
        if text and text[-1] in units:
            amount = float(text[:-1])
            window = timedelta(**{units[text[-1]]: amount})
        else:
            window = timedelta(days=float(text))
    except ValueError:
        raise ValueError(f"'{text}' is not a window (e.g. 30d, 12h, 2w)") from None
    if window <= timedelta(0):
        raise ValueError(f"'{text}' is not a positive window")
    return window


def expiring(engine: Any, window: timedelta = DEFAULT_WINDOW, *, now: datetime | None = None) -> list[Expiring]:
    """Everything vaultrelay depends on that expires before `now + window` (or has expired), soonest first.

    Raises:
        StateUnavailable: the state tables cannot be read (rotation due dates, minted SAS).
    """
    now = now or datetime.now(UTC)
    horizon = now + window
    loaded = engine.broker.loaded
    config = loaded.config
    found: dict[tuple[str, str], Expiring] = {}
    minted = {(str(r.get("env")), str(r.get("variable"))): _time(r.get("expires")) for r in engine.rotation_status() if r.get("kind") == MINTED_RECORDS}
    for env in sorted(config.envs):
        bundle, _ = engine.resolve_env(env, dry_run=True)
        for item, user in in_bundle(engine.broker, env, bundle, now, minted):
            existing = found.setdefault((item.kind, item.name.lower()), item)
            if user not in existing.envs:
                existing.envs.append(user)
    for row in engine.rotation_status():
        kind = row.get("kind")
        due = _time(row.get("next_due"))
        if kind in ACCOUNT_KEY_RECORDS and due is not None:
            name = str(row.get("name"))
            found.setdefault((f"{kind}_key", name.lower()), Expiring(name, f"{kind}_key", name.split(":")[-1], due, renewable=True,
                                                                     renewal="rotated by vaultrelay when due", expired=due <= now))
    items = [i for i in found.values() if i.expired or (i.expires_on is not None and i.expires_on <= horizon)]
    from core import telemetry

    for i in items:
        telemetry.record_expiring(i.kind, renewable=i.renewable)
    return sorted(items, key=lambda i: (i.expires_on or datetime.min.replace(tzinfo=UTC), i.name))


def in_bundle(broker: Any, env: str, bundle: Any, now: datetime,
              minted: dict[tuple[str, str], datetime | None] | None = None) -> list[tuple[Expiring, str]]:
    """What of an env's resolved bundle expires (whatever the window), with the `env.VARIABLE`
    using it.  `minted`: (env, variable) -> expiry of SAS and tokens minted before (state)."""
    tagged_vaults = {t.vault.lower() for t in broker.loaded.config.rotation.tagged_secrets}
    refs = {ref.name: ref for ref in broker.env_plan(env).refs}
    found: list[tuple[Expiring, str]] = []
    for variable, value in bundle.values.items():
        ref = refs.get(variable)
        if ref is None or value.expires_on is None:
            continue
        source = sources().get(ref.kind)
        name, where = source.names(ref)
        renewable = source.features.renewal is not None or (source.features.reads_keyvault and where.lower() in tagged_vaults)
        renewal = source.features.renewal or ("rotated by rotation.tagged_secrets" if renewable else
                                              "set a new version (or a new certificate) before it expires")
        found.append((Expiring(name, ref.kind, where, value.expires_on, renewable=renewable, renewal=renewal,
                               expired=value.expires_on <= now), f"{env}.{variable}"))
    for variable, failure in bundle.failures.items():
        ref = refs.get(variable)
        if ref is None:
            continue
        source = sources().get(ref.kind)
        name, where = source.names(ref)
        expires = (minted or {}).get((env, variable))
        if failure.reason == "would_mint" and expires is not None:
            # minted before and due again: the record says when the one in use expires
            found.append((Expiring(name, ref.kind, where, expires, renewable=True, renewal=source.features.renewal or "",
                                   expired=expires <= now), f"{env}.{variable}"))
        elif failure.reason == "expired":
            renewable = source.features.reads_keyvault and where.lower() in tagged_vaults
            found.append((Expiring(name, ref.kind, where, None, renewable=renewable,
                                   renewal="set a new version: Key Vault refuses to hand it out", expired=True), f"{env}.{variable}"))
    return found


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def blocking(items: list[Expiring]) -> list[Expiring]:
    """What vaultrelay cannot renew itself (a CI check fails on these)."""
    return [i for i in items if not i.renewable]
