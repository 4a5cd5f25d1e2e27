"""Minting SAS tokens: account, service (blob, container, table) and user delegation SAS.

Start time is 15 minutes in the past to absorb clock skew (Microsoft's guidance); expiry is the
requested lifetime capped by the store's maximum.  HTTPS-only by default.  The returned
metadata says which key signed the token (`key1`, `key2` or `user_delegation`), which rotation
needs, and never contains the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core.sources.fetched import Fetched, SourceProblem

CLOCK_SKEW = timedelta(minutes=15)
USER_DELEGATION_KEY_MAX = timedelta(days=7)


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
