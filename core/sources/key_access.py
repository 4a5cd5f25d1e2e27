"""Accounts that forbid keys: storage `allowSharedKeyAccess: false`, Cosmos DB `disableLocalAuth: true`.

Such an account still lists its keys, but they authorize nothing: Azure Storage refuses every
Shared Key request and every key-signed (account or service) SAS with 403
`KeyBasedAuthenticationNotPermitted` (Learn: "Prevent Shared Key authorization for an Azure
Storage account"), and Cosmos DB refuses keys and connection strings with 401 "Local
Authorization is disabled" (Learn: "Connect to Azure Cosmos DB for NoSQL using role-based access
control and Microsoft Entra ID", disable key-based authentication).  vaultrelay reads the property and refuses, naming the account and the
property, to publish a key, a key-signed SAS or a connection string, or to rotate keys, for such
an account: never a silently useless value.

How the property is read, cheaply:
* from the account listing vaultrelay already makes when a reference names no resource group
  (the listing carries every account's properties);
* else one GET of the account (`Microsoft.Storage/storageAccounts/read` /
  `Microsoft.DocumentDB/databaseAccounts/read`).  Cosmos DB: every role vaultrelay needs for keys
  includes the read.  Storage: "Storage Account Key Operator Service Role" does not, so when the
  GET is refused vaultrelay asks the data plane instead: one Get Blob Service Properties with the
  listed key, whose 403 `KeyBasedAuthenticationNotPermitted` answers the same question with no
  role at all.  When neither answers (a firewall in front of the data plane), the value is
  published as before and the reason logged.

Storage facts are kept with the account's listing (core.sources.listed_keys), so a burst of
fetches reads the property once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from core.sources.fetched import SourceProblem

if TYPE_CHECKING:
    from core.azure.clients import AzureClients

log = logging.getLogger("vaultrelay.key_access")

REASON = "key_access_disabled"
STORAGE_PROPERTY = "allowSharedKeyAccess"
COSMOS_PROPERTY = "disableLocalAuth"


class KeyAccessDisabled(SourceProblem):
    """The account forbids key-based access, so what was asked for would authorize nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(REASON, message)


def storage_refusal(account: str, doing: str) -> KeyAccessDisabled:
    """The error for `doing` (e.g. "publish its keys") on a storage account without Shared Key access."""
    return KeyAccessDisabled(
        f"storage account '{account}' has {STORAGE_PROPERTY}: false: its keys authorize nothing, so vaultrelay will not {doing}; "
        f"use a user delegation SAS or Entra ID auth instead (Azure refuses Shared Key and key-signed SAS there with 403 "
        f"KeyBasedAuthenticationNotPermitted; a user delegation SAS is operation: generate_sas with sas_type: user_delegation)")


def cosmos_refusal(account: str, doing: str) -> KeyAccessDisabled:
    """The error for `doing` on a Cosmos DB account with local (key) authentication disabled."""
    return KeyAccessDisabled(
        f"Cosmos DB account '{account}' has {COSMOS_PROPERTY}: true: its keys authorize nothing, so vaultrelay will not {doing}; "
        f"use Entra ID auth instead (Azure answers 401 'Local Authorization is disabled'; give the consumer a Cosmos DB "
        f"data-plane role, or publish a token: operation: get_token, resource: https://cosmos.azure.com)")


def shared_key_allowed_by(account_model: Any) -> bool:
    """`allowSharedKeyAccess` of an SDK storage account (null means true, as Azure documents)."""
    return getattr(account_model, "allow_shared_key_access", None) is not False


def local_auth_allowed_by(account_model: Any) -> bool:
    """Not `disableLocalAuth` of an SDK Cosmos DB account (null means local auth is on)."""
    return getattr(account_model, "disable_local_auth", None) is not True


def storage_shared_key_allowed(clients: AzureClients, subscription: str, group: str, account: str, credential: Any,
                               keys: Any = None) -> bool | None:
    """Whether storage `account` accepts Shared Key (and key-signed SAS): its `allowSharedKeyAccess`
    read with one GET, else (the GET refused) asked of the data plane with a listed key (`keys()`
    gives `{"key1": ...}`); None when neither can tell."""
    from azure.core.exceptions import HttpResponseError

    try:
        return shared_key_allowed_by(clients.storage_management(subscription, credential).storage_accounts.get_properties(group, account))
    except HttpResponseError as exc:
        if exc.status_code != 403 or keys is None:
            log.info("cannot read %s of storage account %s (HTTP %s)", STORAGE_PROPERTY, account, exc.status_code)
            return None
    return _probe_data_plane(clients, account, keys)


def _probe_data_plane(clients: AzureClients, account: str, keys: Any) -> bool | None:
    from azure.core.exceptions import HttpResponseError

    listed = keys()
    key = listed.get("key1") or next(iter(listed.values()), None)
    if not key:
        return None
    # No retry: this probe sits on a caller's path (a fetch, a resolve), and the storage SDK's
    # retry backs off 15 s first; a probe that cannot tell now publishes as before (None).
    client = clients.account_key_blob_service(account, key, retry_total=0)
    try:
        client.get_service_properties()
    except HttpResponseError as exc:
        if exc.status_code == 403 and getattr(exc, "error_code", None) == "KeyBasedAuthenticationNotPermitted":
            return False
        log.info("cannot tell whether storage account %s accepts Shared Key (HTTP %s %s)", account, exc.status_code,
                 getattr(exc, "error_code", None) or "")
        return None
    return True


def cosmos_local_auth_allowed(clients: AzureClients, subscription: str, group: str, account: str, credential: Any) -> bool | None:
    """Whether Cosmos DB `account` accepts keys (not `disableLocalAuth`), read with one GET; None
    when the GET is refused."""
    from azure.core.exceptions import HttpResponseError

    try:
        return local_auth_allowed_by(clients.cosmos_management(subscription, credential).database_accounts.get(group, account))
    except HttpResponseError as exc:
        log.info("cannot read %s of Cosmos DB account %s (HTTP %s)", COSMOS_PROPERTY, account, exc.status_code)
        return None


def ensure_account_keys_usable(clients: AzureClients, kind: str, subscription: str, group: str, account: str, credential: Any,
                               doing: str) -> None:
    """Refuse `doing` with an account's keys when the account forbids key access (read now).

    Raises:
        KeyAccessDisabled: storage `allowSharedKeyAccess: false` or Cosmos DB `disableLocalAuth: true`.
    """
    if kind == "storage":
        def keys() -> dict[str, str]:
            result = clients.storage_management(subscription, credential).storage_accounts.list_keys(group, account)
            return {key.key_name.lower(): key.value for key in result.keys_property or []}

        if storage_shared_key_allowed(clients, subscription, group, account, credential, keys) is False:
            raise storage_refusal(account, doing)
    elif kind == "cosmos" and cosmos_local_auth_allowed(clients, subscription, group, account, credential) is False:
        raise cosmos_refusal(account, doing)
