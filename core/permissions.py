"""The permissions matrix: what each thing vaultrelay does needs in Azure, and the least role.

One source of truth for `vaultrelay plan --permissions`, the Bicep role assignments (checked by
tests) and the hints attached to 403 errors.  Each need names the Azure action, whether it is a
data action, the resource kind whose scope it applies to, and the least built-in (or vaultrelay's
custom) role that grants it.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.azure_roles import ROLES_BY_NAME, RoleDefinition


@dataclass(frozen=True)
class Need:
    """One Azure permission a capability needs."""

    action: str
    data: bool
    scope_kind: str  # "vault", "storage", "container", "cosmos", "site", "table"
    role: str  # least role name granting it
    why: str

    @property
    def role_definition(self) -> RoleDefinition:
        return ROLES_BY_NAME[self.role.lower()]


_KV_GET = Need("Microsoft.KeyVault/vaults/secrets/getSecret/action", True, "vault", "Key Vault Secrets User", "read secret values")
_KV_KEY_READ = Need("Microsoft.KeyVault/vaults/keys/read", True, "vault", "Key Vault Reader", "read public keys")
_KV_SET = Need("Microsoft.KeyVault/vaults/secrets/setSecret/action", True, "vault", "Key Vault Secrets Officer", "write secrets")
_KV_LIST = Need("Microsoft.KeyVault/vaults/secrets/readMetadata/action", True, "vault", "Key Vault Secrets Officer", "list owned secrets and their tags")
_KV_DELETE = Need("Microsoft.KeyVault/vaults/secrets/delete", True, "vault", "Key Vault Secrets Officer", "delete secrets removed from an env")
_ST_LISTKEYS = Need("Microsoft.Storage/storageAccounts/listkeys/action", False, "storage", "Storage Account Key Operator Service Role", "list account keys")
_ST_REGEN = Need("Microsoft.Storage/storageAccounts/regeneratekey/action", False, "storage", "Storage Account Key Operator Service Role", "regenerate account keys")
_ST_UDK = Need("Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action", False, "storage", "Storage Blob Delegator", "get a user delegation key")
_BLOB_READ = Need("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read", True, "container", "Storage Blob Data Reader", "what a read-only user delegation SAS grants")
_BLOB_WRITE = Need("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", True, "container", "Storage Blob Data Contributor", "write blobs (or what a writable user delegation SAS grants)")
_COSMOS_KEYS = Need("Microsoft.DocumentDB/databaseAccounts/listKeys/action", False, "cosmos", "vaultrelay Cosmos DB Key Operator", "list read-write keys")
_COSMOS_RO = Need("Microsoft.DocumentDB/databaseAccounts/readonlykeys/action", False, "cosmos", "Cosmos DB Account Reader Role", "list read-only keys")
_COSMOS_CS = Need("Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action", False, "cosmos", "vaultrelay Cosmos DB Key Operator", "list connection strings")
_COSMOS_REGEN = Need("Microsoft.DocumentDB/databaseAccounts/regenerateKey/action", False, "cosmos", "vaultrelay Cosmos DB Key Operator", "regenerate keys")
_SITE_LIST = Need("Microsoft.Web/sites/config/list/action", False, "site", "Website Contributor", "read app settings to merge")
_SITE_WRITE = Need("Microsoft.Web/sites/config/write", False, "site", "Website Contributor", "write app settings")
_TABLE_RW = Need("Microsoft.Storage/storageAccounts/tableServices/tables/entities/write", True, "table", "Storage Table Data Contributor", "vaultrelay state")

# capability -> needs.  Capabilities are named "<area>:<what>".
MATRIX: dict[str, tuple[Need, ...]] = {
    "source:keyvault_secret": (_KV_GET,),
    "source:keyvault_certificate": (_KV_GET,),
    "source:keyvault_key": (_KV_KEY_READ,),
    "source:storage_key": (_ST_LISTKEYS,),
    "source:sas_account": (_ST_LISTKEYS,),
    "source:sas_service": (_ST_LISTKEYS,),
    "source:sas_user_delegation_read": (_ST_UDK, _BLOB_READ),
    "source:sas_user_delegation_write": (_ST_UDK, _BLOB_WRITE),
    "source:cosmos_key": (_COSMOS_KEYS,),
    "source:cosmos_readonly_key": (_COSMOS_RO,),
    "source:cosmos_connection_string": (_COSMOS_CS,),
    "source:sql": (),
    "source:token": (),
    "rotate:storage_key": (_ST_LISTKEYS, _ST_REGEN),
    "rotate:cosmos_key": (_COSMOS_KEYS, _COSMOS_REGEN),
    "target:keyvault": (_KV_SET, _KV_LIST, _KV_DELETE),
    "target:blob": (_BLOB_WRITE,),
    "target:app_settings": (_SITE_LIST, _SITE_WRITE),
    "target:webhook": (),
    "state:tables": (_TABLE_RW,),
}


def needs_for(capability: str) -> tuple[Need, ...]:
    """The needs of a capability.

    Raises:
        KeyError: unknown capability.
    """
    return MATRIX[capability]


def role_hint_for_action(action: str) -> str | None:
    """The least role that grants `action`, for error messages; None if unknown."""
    lowered = action.lower()
    for needs in MATRIX.values():
        for need in needs:
            if need.action.lower() == lowered:
                return need.role
    return None
