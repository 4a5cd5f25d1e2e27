"""Minting SAS tokens: account, service (blob, container, table) and user delegation SAS.

Start time is 15 minutes in the past to absorb clock skew (Microsoft's guidance); expiry is the
requested lifetime capped by the store's maximum.  HTTPS-only by default.  The returned
metadata says which key signed the token (`key1`, `key2` or `user_delegation`), which rotation
needs, and never contains the token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.azure.protocols import SecretClientLike
from core.ownership import MANAGED_BY, MANAGED_BY_VALUE
from core.sources.fetched import Fetched, SourceProblem

log = logging.getLogger("vaultrelay.sas")

CLOCK_SKEW = timedelta(minutes=15)
# Azure refuses a Get User Delegation Key whose start or expiry is more than 7 days from the
# service's clock (400 InvalidXmlNodeValue); a key asked for exactly now + 7 days by a client
# whose clock runs ahead fails.  vaultrelay asks for keys that end at least an hour inside it, so
# a user delegation SAS (which cannot outlive its key) lasts at most 6 days 23 hours.
USER_DELEGATION_KEY_MAX = timedelta(days=7)
DELEGATION_KEY_MARGIN = timedelta(hours=1)
USER_DELEGATION_SAS_MAX = USER_DELEGATION_KEY_MAX - DELEGATION_KEY_MARGIN
# A delegation key ends this long after the SAS it is requested for: 10 % of the SAS lifetime,
# between 5 minutes and 1 hour.  It is reused for a later SAS only while it still ends within
# that margin of it, so a key never outlives a SAS it signed by more than the margin.
DELEGATION_KEY_SLACK_MIN = timedelta(minutes=5)
DELEGATION_KEY_SLACK_MAX = timedelta(hours=1)
DELEGATION_KEY_PREFIX = "vr-udk-"
_DELEGATION_KEY_FIELDS = ("signed_oid", "signed_tid", "signed_delegated_user_tid", "signed_start", "signed_expiry",
                          "signed_service", "signed_version", "value")


@dataclass(frozen=True)
class SasRequest:
    """What to mint; validated by the config model before it gets here."""

    account: str
    sas_type: str  # "account", "service" or "user_delegation"
    permissions: str
    lifetime: timedelta
    services: str | None = None  # account SAS: b, q, t, f
    resource_types: str | None = None  # account SAS: s, c, o
    container: str | None = None
    blob: str | None = None
    table: str | None = None
    ip: str | None = None
    https_only: bool = True


def sas_window(lifetime: timedelta, cap: timedelta, now: datetime) -> tuple[datetime, datetime]:
    """(start, expiry) for a token minted at `now`."""
    return now - CLOCK_SKEW, now + min(lifetime, cap)


def delegation_key_slack(lifetime: timedelta) -> timedelta:
    """How long after a SAS of `lifetime` its delegation key may end."""
    return min(max(lifetime / 10, DELEGATION_KEY_SLACK_MIN), DELEGATION_KEY_SLACK_MAX)


def delegation_key_window(now: datetime, sas_start: datetime, sas_expiry: datetime, lifetime: timedelta) -> tuple[datetime, datetime]:
    """(start, expiry) to ask Azure for a delegation key signing a SAS valid `sas_start`-`sas_expiry`:
    from the SAS's start to `delegation_key_slack` after its end, and never later than
    `USER_DELEGATION_SAS_MAX` from `now` (an hour inside Azure's 7-day bound, whatever the skew
    between this clock and the service's)."""
    return sas_start, min(sas_expiry + delegation_key_slack(lifetime), now + USER_DELEGATION_SAS_MAX)


def format_lifetime(value: timedelta) -> str:
    """`6d 23h`, `2h`, `90s`: a duration for messages."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return " ".join(parts) or "0s"


def mint_sas(
    request: SasRequest, *, start: datetime, expiry: datetime, account_key: str | None = None,
    signed_with: str | None = None, user_delegation_key: Any = None,
) -> Fetched:
    """A SAS token (without the leading '?').

    Raises:
        SourceProblem: the request cannot be signed with what was given.
    """
    protocol = "https" if request.https_only else "https,http"
    if request.sas_type == "user_delegation":
        if user_delegation_key is None or not request.container:
            raise SourceProblem("invalid", "a user delegation SAS needs a container (and optionally a blob) and a delegation key")
        token = _blob_sas(request, start, expiry, protocol, user_delegation_key=user_delegation_key)
        signer = "user_delegation"
    else:
        if account_key is None:
            raise SourceProblem("invalid", f"an {request.sas_type} SAS needs an account key")
        signer = signed_with or "key"
        if request.sas_type == "account":
            from azure.storage.blob import AccountSasPermissions, ResourceTypes, Services, generate_account_sas

            token = generate_account_sas(
                request.account, account_key,
                resource_types=ResourceTypes.from_string(request.resource_types or "sco"),
                permission=AccountSasPermissions.from_string(request.permissions),
                expiry=expiry, start=start, ip=request.ip,
                services=Services.from_string(request.services or "b"), protocol=protocol,
            )
        elif request.table:
            from azure.core.credentials import AzureNamedKeyCredential
            from azure.data.tables import TableSasPermissions, generate_table_sas

            token = generate_table_sas(
                AzureNamedKeyCredential(request.account, account_key), request.table,
                permission=TableSasPermissions(**_table_permissions(request.permissions)),
                expiry=expiry, start=start, ip_address_or_range=request.ip, protocol=protocol,
            )
        elif request.container:
            token = _blob_sas(request, start, expiry, protocol, account_key=account_key)
        else:
            raise SourceProblem("invalid", "a service SAS needs a container, blob or table")
    return Fetched(
        value=token, expires_on=expiry, content_type="application/x-sas-token",
        detail={"kind": "sas", "sas_type": request.sas_type, "signed_with": signer, "start": start.isoformat()},
    )


def _blob_sas(request: SasRequest, start: datetime, expiry: datetime, protocol: str, **signing: Any) -> str:
    from azure.storage.blob import (
        BlobSasPermissions,
        ContainerSasPermissions,
        generate_blob_sas,
        generate_container_sas,
    )

    assert request.container is not None
    if request.blob:
        return generate_blob_sas(
            request.account, request.container, request.blob,
            permission=BlobSasPermissions.from_string(request.permissions),
            expiry=expiry, start=start, ip=request.ip, protocol=protocol, **signing,
        )
    return generate_container_sas(
        request.account, request.container,
        permission=ContainerSasPermissions.from_string(request.permissions),
        expiry=expiry, start=start, ip=request.ip, protocol=protocol, **signing,
    )


def _table_permissions(letters: str) -> dict[str, bool]:
    names = {"r": "read", "a": "add", "u": "update", "d": "delete"}
    unknown = set(letters) - set(names)
    if unknown:
        raise SourceProblem("invalid", f"table SAS permissions must be among 'raud', got {''.join(sorted(unknown))!r}")
    return {names[letter]: True for letter in letters}


def now_utc() -> datetime:
    return datetime.now(UTC)


def delegation_key_expiry(key: Any) -> datetime | None:
    """When a delegation key (`UserDelegationKey`) ends, or None when it does not say."""
    try:
        return datetime.fromisoformat(str(key.signed_expiry).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


class StoredDelegationKeys:
    """User delegation keys kept between runs and instances in the state vault.

    A delegation key is a secret (anyone holding it signs SAS for the identity, as far as the
    identity's data roles go, until the key ends), so it lives in Key Vault, never in the state
    tables: one secret per account, identity and SAS lifetime (`vr-udk-<digest>`), its value the
    key's fields as JSON, `expires_on` the key's own expiry, tags naming the account and expiry.

    A key is requested for the SAS it signs (`delegation_key_window`: it ends at most
    `delegation_key_slack` after that SAS) and reused for a later SAS only while it still ends
    within that slack of the later SAS too: reuse never lengthens a key's life, it only saves a
    request when SAS are minted close together (fetches, instances, runs).  A SAS must not outlive
    its key, so a key that ends before the SAS is never used.  Keeping it is an optimisation: when
    the vault cannot be read or written, the new key is still used and the reason is logged (never
    the key).
    """

    def __init__(self, vault: SecretClientLike, *, clock: Callable[[], datetime] = now_utc) -> None:
        self.vault = vault
        self.clock = clock
        self.requested = 0  # keys this object asked Azure for
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def secret_name(account: str, identity: str, lifetime: timedelta) -> str:
        """The state vault secret keeping `identity`'s key for SAS of `lifetime` on `account`."""
        digest = hashlib.sha256(repr((account.lower(), identity, int(lifetime.total_seconds()))).encode()).hexdigest()[:24]
        return f"{DELEGATION_KEY_PREFIX}{digest}"

    def key_for(self, account: str, identity: str, sas_expiry: datetime, lifetime: timedelta, request: Callable[[], Any]) -> Any:
        """A delegation key of `identity` for `account` that ends no earlier than `sas_expiry` and no
        later than `delegation_key_slack(lifetime)` after it: the one kept in the vault, else
        `request()`'s (which is then kept)."""
        name = self.secret_name(account, identity, lifetime)
        slack = delegation_key_slack(lifetime)
        with self._lock:
            key = self._memo.get(name)
            if not self._fits(key, sas_expiry, slack):
                key = self._read(name)
            if not self._fits(key, sas_expiry, slack):
                key = request()
                self.requested += 1
                self._store(name, account, key)
            self._memo[name] = key
            return key

    def _fits(self, key: Any, sas_expiry: datetime, slack: timedelta) -> bool:
        expiry = delegation_key_expiry(key) if key is not None else None
        return expiry is not None and sas_expiry <= expiry <= sas_expiry + slack and self.clock() < expiry

    def _read(self, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import UserDelegationKey

        try:
            stored = self.vault.get_secret(name)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            log.warning("cannot read the kept delegation key %s (%s); requesting a new one", name, _why(exc))
            return None
        try:
            fields = json.loads(stored.value or "")
            key = UserDelegationKey()
            for field in _DELEGATION_KEY_FIELDS:
                setattr(key, field, fields.get(field))
        except (ValueError, AttributeError):
            log.warning("the kept delegation key %s is not readable; requesting a new one", name)
            return None
        return key if key.value else None

    def _store(self, name: str, account: str, key: Any) -> None:
        expiry = delegation_key_expiry(key)
        body = json.dumps({field: getattr(key, field, None) for field in _DELEGATION_KEY_FIELDS}, sort_keys=True)
        try:
            self.vault.set_secret(name, body, content_type="application/x-user-delegation-key", expires_on=expiry, tags={
                MANAGED_BY: MANAGED_BY_VALUE, "vaultrelay-account": account.lower(), "signed-expiry": str(key.signed_expiry),
                "issued": self.clock().isoformat(timespec="seconds")})
        except Exception as exc:
            log.warning("cannot keep the new delegation key in %s (%s); it serves this process only", name, _why(exc))


def _why(exc: Exception) -> str:
    """What went wrong with the state vault, for a log line: the error type, HTTP status and
    service error code (never the message, which could echo what was sent)."""
    parts = [type(exc).__name__]
    status = getattr(exc, "status_code", None)
    if status:
        parts.append(f"HTTP {status}")
    code = getattr(exc, "error_code", None) or getattr(getattr(exc, "error", None), "code", None)
    if code:
        parts.append(str(code))
    return " ".join(parts)
