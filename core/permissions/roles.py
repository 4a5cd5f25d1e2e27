"""Azure built-in role definitions that vaultrelay needs, as data.

One source of truth: the permissions matrix, the Bicep cross-checks and the local sandbox's RBAC
all read these definitions.  Ids are the real built-in role definition ids (they are the same in
every tenant); actions are the subset of each role's real `actions` / `dataActions` /
`notActions` that matters for the operations vaultrelay and its sandbox perform.  Matching is
case-insensitive with `*` wildcards, as in Azure RBAC.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoleDefinition:
    """A built-in (or custom) Azure role definition."""

    role_id: str
    name: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()
    description: str = field(default="", compare=False)

    def allows(self, action: str, *, data: bool) -> bool:
        """Whether this role grants `action` (a data action when `data` is true)."""
        allowed, denied = (
            (self.data_actions, self.not_data_actions) if data else (self.actions, self.not_actions)
        )
        return _matches_any(action, allowed) and not _matches_any(action, denied)


def _matches_any(action: str, patterns: tuple[str, ...]) -> bool:
    lowered = action.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)


_KV_CONTROL_READ = (
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/vaults/*/read",
    "Microsoft.KeyVault/operations/read",
)

_ROLES: tuple[RoleDefinition, ...] = (
    # --- general ---
    RoleDefinition(
        "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner", actions=("*",),
        description="Full access to manage all resources, including assigning roles.",
    ),
    RoleDefinition(
        "b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor", actions=("*",),
        not_actions=(
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
        ),
        description="Full access to manage all resources, but no role assignments.",
    ),
    RoleDefinition(
        "acdd72a7-3385-48ef-bd42-f606fba81ae7", "Reader", actions=("*/read",),
        description="View all resources, but no changes and no keys.",
    ),
    RoleDefinition(
        "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9", "User Access Administrator",
        actions=("*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"),
        description="Manage user access to Azure resources.",
    ),
    # --- Key Vault (data plane, RBAC permission model) ---
    RoleDefinition(
        "00482a5a-887f-4fb3-b363-3b7fe8e74483", "Key Vault Administrator",
        actions=_KV_CONTROL_READ, data_actions=("Microsoft.KeyVault/vaults/*",),
        description="All data plane operations on a vault and its objects.",
    ),
    RoleDefinition(
        "4633458b-17de-408a-b874-0445c86b69e6", "Key Vault Secrets User",
        data_actions=(
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ),
        description="Read secret contents.",
    ),
    RoleDefinition(
        "b86a8fe4-44ce-4948-aee5-eccb2c155cd7", "Key Vault Secrets Officer",
        actions=_KV_CONTROL_READ, data_actions=("Microsoft.KeyVault/vaults/secrets/*",),
        description="Any action on the secrets of a vault, except managing permissions.",
    ),
    RoleDefinition(
        "21090545-7ca7-4776-b22c-e363652d74d2", "Key Vault Reader",
        actions=_KV_CONTROL_READ,
        data_actions=(
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ),
        description="Read metadata of vaults and their objects; no secret contents.",
    ),
    RoleDefinition(
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba", "Key Vault Certificate User",
        data_actions=(
            "Microsoft.KeyVault/vaults/certificates/read",
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
            "Microsoft.KeyVault/vaults/keys/read",
        ),
        description="Read entire certificate contents including secret and key portion.",
    ),
    RoleDefinition(
        "a4417e6f-fecd-4de8-b567-7b0420556985", "Key Vault Certificates Officer",
        actions=_KV_CONTROL_READ,
        data_actions=(
            "Microsoft.KeyVault/vaults/certificatecas/*",
            "Microsoft.KeyVault/vaults/certificates/*",
            "Microsoft.KeyVault/vaults/certificatecontacts/write",
        ),
        description="Any action on the certificates of a vault, except managing permissions.",
    ),
    RoleDefinition(
        "12338af0-0e69-4776-bea7-57ae8d297424", "Key Vault Crypto User",
        data_actions=(
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/update/action",
            "Microsoft.KeyVault/vaults/keys/backup/action",
            "Microsoft.KeyVault/vaults/keys/encrypt/action",
            "Microsoft.KeyVault/vaults/keys/decrypt/action",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
            "Microsoft.KeyVault/vaults/keys/sign/action",
            "Microsoft.KeyVault/vaults/keys/verify/action",
        ),
        description="Cryptographic operations using keys.",
    ),
    RoleDefinition(
        "14b46e9e-c2b7-41b4-b07b-48a6ebf60603", "Key Vault Crypto Officer",
        actions=_KV_CONTROL_READ,
        data_actions=(
            "Microsoft.KeyVault/vaults/keys/*",
            "Microsoft.KeyVault/vaults/keyrotationpolicies/*",
        ),
        description="Any action on the keys of a vault, except managing permissions.",
    ),
    # --- Storage ---
    RoleDefinition(
        "81a9662b-bebf-436f-a333-f67b29880f12", "Storage Account Key Operator Service Role",
        actions=(
            "Microsoft.Storage/storageAccounts/listkeys/action",
            "Microsoft.Storage/storageAccounts/regeneratekey/action",
        ),
        description="List and regenerate storage account access keys.",
    ),
    RoleDefinition(
        "17d1049b-9a84-46fb-8f53-869881c3d3ab", "Storage Account Contributor",
        actions=(
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/diagnosticSettings/*",
            "Microsoft.Network/virtualNetworks/subnets/joinViaServiceEndpoint/action",
            "Microsoft.ResourceHealth/availabilityStatuses/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Storage/storageAccounts/*",
            "Microsoft.Support/*",
        ),
        description="Manage storage accounts, including their keys.",
    ),
    RoleDefinition(
        "db58b8e5-c6ad-4a2a-8342-4190687cbf4a", "Storage Blob Delegator",
        actions=("Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",),
        description="Get a user delegation key to sign user delegation SAS.",
    ),
    RoleDefinition(
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe", "Storage Blob Data Contributor",
        actions=(
            "Microsoft.Storage/storageAccounts/blobServices/containers/delete",
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/write",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ),
        data_actions=(
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/move/action",
            "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
        ),
        description="Read, write and delete blob containers and blobs.",
    ),
    RoleDefinition(
        "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1", "Storage Blob Data Reader",
        actions=(
            "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ),
        data_actions=("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",),
        description="Read blob containers and blobs.",
    ),
    RoleDefinition(
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "Storage Blob Data Owner",
        actions=(
            "Microsoft.Storage/storageAccounts/blobServices/containers/*",
            "Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action",
        ),
        data_actions=("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*",),
        description="Full access to blob containers and data, including POSIX ACLs (the Functions host's AzureWebJobsStorage).",
    ),
    RoleDefinition(
        "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a", "Storage Queue Data Message Sender",
        data_actions=("Microsoft.Storage/storageAccounts/queueServices/queues/messages/add/action",),
        description="Add messages to a queue (vaultrelay's planners enqueue work items).",
    ),
    RoleDefinition(
        "8a0f0c08-91a1-4084-bc3d-661d67233fed", "Storage Queue Data Message Processor",
        data_actions=(
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
        ),
        description="Peek, receive and delete messages (the queue trigger and vaultrelay worker).",
    ),
    RoleDefinition(
        "19e7f393-937e-4f77-808e-94535e297925", "Storage Queue Data Reader",
        actions=("Microsoft.Storage/storageAccounts/queueServices/queues/read",),
        data_actions=("Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",),
        description="Read queues and their messages (the trigger reads the queue's length to scale).",
    ),
    RoleDefinition(
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88", "Storage Queue Data Contributor",
        actions=(
            "Microsoft.Storage/storageAccounts/queueServices/queues/delete",
            "Microsoft.Storage/storageAccounts/queueServices/queues/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/write",
        ),
        data_actions=(
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/delete",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/add/action",
        ),
        description="Read, write and delete queues and queue messages (the Functions host's AzureWebJobsStorage).",
    ),
    RoleDefinition(
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", "Storage Table Data Contributor",
        actions=(
            "Microsoft.Storage/storageAccounts/tableServices/tables/read",
            "Microsoft.Storage/storageAccounts/tableServices/tables/write",
            "Microsoft.Storage/storageAccounts/tableServices/tables/delete",
        ),
        data_actions=(
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/read",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/write",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/delete",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/add/action",
            "Microsoft.Storage/storageAccounts/tableServices/tables/entities/update/action",
        ),
        description="Read, write and delete tables and entities.",
    ),
    RoleDefinition(
        "76199698-9eea-4c19-bc75-cec21354c6b6", "Storage Table Data Reader",
        actions=("Microsoft.Storage/storageAccounts/tableServices/tables/read",),
        data_actions=("Microsoft.Storage/storageAccounts/tableServices/tables/entities/read",),
        description="Read tables and entities.",
    ),
    # --- Cosmos DB ---
    RoleDefinition(
        "5bd9cd88-fe45-4216-938b-f97437e15450", "DocumentDB Account Contributor",
        actions=(
            "Microsoft.Authorization/*/read",
            "Microsoft.DocumentDb/databaseAccounts/*",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Insights/diagnosticSettings/*",
            "Microsoft.Network/virtualNetworks/subnets/joinViaServiceEndpoint/action",
            "Microsoft.ResourceHealth/availabilityStatuses/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
        ),
        description="Manage Cosmos DB accounts, including their keys.",
    ),
    RoleDefinition(
        "fbdf93bf-df7d-467e-a4d2-9458aa1360c8", "Cosmos DB Account Reader Role",
        actions=(
            "Microsoft.Authorization/*/read",
            "Microsoft.DocumentDB/*/read",
            "Microsoft.DocumentDB/databaseAccounts/readonlykeys/action",
            "Microsoft.Insights/MetricDefinitions/read",
            "Microsoft.Insights/Metrics/read",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
        ),
        description="Read Cosmos DB account data and read-only keys.",
    ),
    # --- Azure SQL ---
    RoleDefinition(
        "6d8ee4ec-f05a-4a1d-8b00-a9b17e38b437", "SQL Server Contributor",
        actions=(
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.ResourceHealth/availabilityStatuses/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Sql/locations/*/read",
            "Microsoft.Sql/servers/*",
            "Microsoft.Support/*",
            "Microsoft.Insights/metrics/read",
            "Microsoft.Insights/metricDefinitions/read",
        ),
        not_actions=(
            "Microsoft.Sql/managedInstances/*",
            "Microsoft.Sql/servers/auditingSettings/*",
            "Microsoft.Sql/servers/databases/auditingSettings/*",
            "Microsoft.Sql/servers/securityAlertPolicies/*",
            "Microsoft.Sql/servers/vulnerabilityAssessments/*",
            "Microsoft.Sql/servers/azureADOnlyAuthentications/delete",
            "Microsoft.Sql/servers/azureADOnlyAuthentications/write",
        ),
        description="Manage SQL servers and databases (their administrator password included), but not access to them "
                    "and not their security-related policies.",
    ),
    # --- Azure Monitor ---
    RoleDefinition(
        "3913510d-42f4-4e42-8a64-420c390055eb", "Monitoring Metrics Publisher",
        actions=(
            "Microsoft.Insights/Register/Action",
            "Microsoft.Support/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
        ),
        data_actions=("Microsoft.Insights/Metrics/Write", "Microsoft.Insights/Telemetry/Write"),
        description="Publish metrics and telemetry (Application Insights with local authentication disabled).",
    ),
    # --- Container Apps (the sandbox's Microsoft.App/containerApps; subset of the real actions) ---
    RoleDefinition(
        "358470bc-b998-42bd-ab17-a7e34c199c0f", "Container Apps Contributor",
        actions=(
            "Microsoft.App/containerApps/*",
            "Microsoft.App/managedEnvironments/read",
            "Microsoft.App/managedEnvironments/join/action",
            "Microsoft.Authorization/*/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
        ),
        description="Manage container apps, their secrets included (listSecrets).",
    ),
    RoleDefinition(
        "ad2dd5fb-cd4b-4fd4-a9b6-4fed3630980b", "ContainerApp Reader",
        actions=(
            "Microsoft.App/containerApps/read",
            "Microsoft.App/containerApps/*/read",
            "Microsoft.App/managedEnvironments/read",
            "Microsoft.Authorization/*/read",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
        ),
        description="Read container apps and their revisions; no secret values (no listSecrets).",
    ),
    # --- App Service ---
    RoleDefinition(
        "de139f84-1756-47ae-9be6-808fbbe84772", "Website Contributor",
        actions=(
            "Microsoft.Authorization/*/read",
            "Microsoft.Insights/alertRules/*",
            "Microsoft.Insights/components/*",
            "Microsoft.ResourceHealth/availabilityStatuses/read",
            "Microsoft.Resources/deployments/*",
            "Microsoft.Resources/subscriptions/resourceGroups/read",
            "Microsoft.Support/*",
            "Microsoft.Web/certificates/*",
            "Microsoft.Web/listSitesAssignedToHostName/read",
            "Microsoft.Web/serverFarms/join/action",
            "Microsoft.Web/serverFarms/read",
            "Microsoft.Web/sites/*",
        ),
        description="Manage websites (not web plans), including app settings.",
    ),
)

BUILTIN_ROLES: dict[str, RoleDefinition] = {role.role_id: role for role in _ROLES}
ROLES_BY_NAME: dict[str, RoleDefinition] = {role.name.lower(): role for role in _ROLES}


def role_by_name(name: str) -> RoleDefinition:
    """The built-in role called `name` (case-insensitive).

    Raises:
        KeyError: no such role is known.
    """
    return ROLES_BY_NAME[name.lower()]


def role_definition_resource_id(subscription_id: str, role: RoleDefinition) -> str:
    """The ARM id of a role definition, as used in role assignment bodies."""
    return (
        f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/"
        f"roleDefinitions/{role.role_id}"
    )


# Custom roles vaultrelay's infra defines (infra/app/custom-roles.bicep) where the built-ins are too
# broad.  Cosmos DB has no built-in role that lists keys or connection strings without also being
# able to change the whole account (DocumentDB Account Contributor); Cosmos DB Account Reader Role
# reads the read-only keys only.  App Service's Website Contributor can change, restart, deploy
# to and delete the site; an app_settings target only lists and writes its settings.
COSMOS_KEY_READER = RoleDefinition(
    "3b7a5e1c-2d4f-4a8b-9c6e-0f1a2b3c4d5e",
    "vaultrelay Cosmos DB Key Reader",
    actions=(
        "Microsoft.DocumentDB/databaseAccounts/read",
        "Microsoft.DocumentDB/databaseAccounts/listKeys/action",
        "Microsoft.DocumentDB/databaseAccounts/readonlykeys/action",
        "Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action",
    ),
    description="List Cosmos DB account keys and connection strings; no regeneration, no other change (custom role).",
)
COSMOS_KEY_OPERATOR = RoleDefinition(
    "7e0b1c2a-9f4d-5c3b-8a6e-1d2f3a4b5c6d",
    "vaultrelay Cosmos DB Key Operator",
    actions=(
        "Microsoft.DocumentDB/databaseAccounts/read",
        "Microsoft.DocumentDB/databaseAccounts/listKeys/action",
        "Microsoft.DocumentDB/databaseAccounts/readonlykeys/action",
        "Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action",
        "Microsoft.DocumentDB/databaseAccounts/regenerateKey/action",
    ),
    description="List, read-only-list and regenerate Cosmos DB account keys (custom role).",
)
APP_SETTINGS_WRITER = RoleDefinition(
    "9d2c4b6a-1e3f-4c5d-8e7f-6a5b4c3d2e1f",
    "vaultrelay App Settings Writer",
    actions=(
        "Microsoft.Web/sites/read",
        "Microsoft.Web/sites/config/read",
        "Microsoft.Web/sites/config/list/action",
        "Microsoft.Web/sites/config/write",
        "Microsoft.Web/sites/slots/read",
        "Microsoft.Web/sites/slots/config/list/action",
        "Microsoft.Web/sites/slots/config/write",
    ),
    description="List and write the configuration (app settings) of a site and its slots; no deployment, restart or deletion (custom role).",
)
CUSTOM_ROLES: dict[str, RoleDefinition] = {role.role_id: role for role in (COSMOS_KEY_READER, COSMOS_KEY_OPERATOR, APP_SETTINGS_WRITER)}
ROLES_BY_NAME.update({role.name.lower(): role for role in CUSTOM_ROLES.values()})
