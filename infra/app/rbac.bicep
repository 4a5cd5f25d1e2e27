// Least-privilege roles on what the config reads and writes, from main.bicep's lists (rendered
// by `vaultrelay plan --permissions --bicep-params FILE`).  Each module below grants exactly the
// roles listed in it to the entries its filter selects; entries may live in other resource
// groups and subscriptions.  Role ids as in core/permissions/roles.py.  Keep boolean filters
// parenthesized: tests/infra evaluates them.

@description('Object (principal) id of the Function app\'s identity: the default grantee.')
param principalId string

@description('See main.bicep sourceVaultType.')
param sourceVaults array = []

@description('See main.bicep targetVaultType.')
param targetVaults array = []

@description('See main.bicep storageAccountType.')
param storageAccounts array = []

@description('See main.bicep blobContainerType.')
param blobContainers array = []

@description('See main.bicep cosmosAccountType.')
param cosmosAccounts array = []

@description('See main.bicep webAppType.')
param webApps array = []

@description('See main.bicep sqlServerType.')
param sqlServers array = []

@description('See main.bicep containerAppType.')
param containerApps array = []

@description('The container of the VAULTRELAY_CONFIG blob (main.bicep configBlobContainer; at most one entry): read with the app\'s identity.')
param configContainers array = []

// Key Vault Secrets User
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
// Key Vault Reader
var keyVaultReader = '21090545-7ca7-4776-b22c-e363652d74d2'
// Key Vault Secrets Officer
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
// Storage Account Key Operator Service Role
var storageAccountKeyOperator = '81a9662b-bebf-436f-a333-f67b29880f12'
// Storage Blob Delegator
var storageBlobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
// Storage Table Data Contributor
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// Storage Blob Data Contributor
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
// Storage Blob Data Reader
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
// vaultrelay Cosmos DB Key Reader (custom role, app/custom-roles.bicep)
var cosmosKeyReader = '3b7a5e1c-2d4f-4a8b-9c6e-0f1a2b3c4d5e'
// vaultrelay Cosmos DB Key Operator (custom role, app/custom-roles.bicep)
var cosmosKeyOperator = '7e0b1c2a-9f4d-5c3b-8a6e-1d2f3a4b5c6d'
// Cosmos DB Account Reader Role
var cosmosAccountReader = 'fbdf93bf-df7d-467e-a4d2-9458aa1360c8'
// vaultrelay App Settings Writer (custom role, app/custom-roles.bicep)
var appSettingsWriter = '9d2c4b6a-1e3f-4c5d-8e7f-6a5b4c3d2e1f'
// Container Apps Contributor (listSecrets, write, revision restart: container_app targets)
var containerAppsContributor = '358470bc-b998-42bd-ab17-a7e34c199c0f'
// SQL Server Contributor
var sqlServerContributor = '6d8ee4ec-f05a-4a1d-8b00-a9b17e38b437'

// Deployment names in the target resource groups: unique per vaultrelay deployment.
var deploymentSuffix = uniqueString(resourceGroup().id)

var secretVaults = filter(sourceVaults, v => (v.?secrets ?? true))
var keyVaults = filter(sourceVaults, v => (v.?publicKeys ?? false))
var keyAccounts = filter(storageAccounts, s => (s.?keyRead ?? false) || (s.?keyRotate ?? false))
var delegationAccounts = filter(storageAccounts, s => (s.?userDelegationSas ?? false))
var tableAccounts = filter(storageAccounts, s => (s.?tableData ?? false))
var writeContainers = filter(blobContainers, c => (c.?write ?? false))
var readContainers = filter(blobContainers, c => !(c.?write ?? false))
var cosmosKeyAccounts = filter(cosmosAccounts, c => (c.?keys ?? true) && !(c.?rotate ?? false))
var cosmosRotateAccounts = filter(cosmosAccounts, c => (c.?rotate ?? false))
var cosmosReadOnlyAccounts = filter(cosmosAccounts, c => (c.?readOnlyKeys ?? false))

module secretVaultAccess 'rbac-keyvault.bicep' = [for (v, i) in secretVaults: {
  name: take('vr-kv-secrets-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(v.?subscriptionId ?? subscription().subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    principalId: v.?principalId ?? principalId
    roleDefinitionIds: [
      keyVaultSecretsUser
    ]
  }
}]

module keyVaultAccess 'rbac-keyvault.bicep' = [for (v, i) in keyVaults: {
  name: take('vr-kv-keys-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(v.?subscriptionId ?? subscription().subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    principalId: v.?principalId ?? principalId
    roleDefinitionIds: [
      keyVaultReader
    ]
  }
}]

module targetVaultAccess 'rbac-keyvault.bicep' = [for (v, i) in targetVaults: {
  name: take('vr-kv-target-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(v.?subscriptionId ?? subscription().subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    principalId: v.?principalId ?? principalId
    roleDefinitionIds: [
      keyVaultSecretsOfficer
    ]
  }
}]

module storageKeyAccess 'rbac-storage.bicep' = [for (s, i) in keyAccounts: {
  name: take('vr-st-keys-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(s.?subscriptionId ?? subscription().subscriptionId, s.resourceGroup)
  params: {
    accountName: s.name
    principalId: s.?principalId ?? principalId
    roleDefinitionIds: [
      storageAccountKeyOperator
    ]
  }
}]

module storageDelegationAccess 'rbac-storage.bicep' = [for (s, i) in delegationAccounts: {
  name: take('vr-st-udk-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(s.?subscriptionId ?? subscription().subscriptionId, s.resourceGroup)
  params: {
    accountName: s.name
    principalId: s.?principalId ?? principalId
    roleDefinitionIds: [
      storageBlobDelegator
    ]
  }
}]

module storageTableAccess 'rbac-storage.bicep' = [for (s, i) in tableAccounts: {
  name: take('vr-st-tables-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(s.?subscriptionId ?? subscription().subscriptionId, s.resourceGroup)
  params: {
    accountName: s.name
    principalId: s.?principalId ?? principalId
    roleDefinitionIds: [
      storageTableDataContributor
    ]
  }
}]

module containerWriteAccess 'rbac-container.bicep' = [for (c, i) in writeContainers: {
  name: take('vr-blob-write-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(c.?subscriptionId ?? subscription().subscriptionId, c.resourceGroup)
  params: {
    accountName: c.account
    containerName: c.container
    principalId: c.?principalId ?? principalId
    roleDefinitionIds: [
      storageBlobDataContributor
    ]
  }
}]

module containerReadAccess 'rbac-container.bicep' = [for (c, i) in readContainers: {
  name: take('vr-blob-read-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(c.?subscriptionId ?? subscription().subscriptionId, c.resourceGroup)
  params: {
    accountName: c.account
    containerName: c.container
    principalId: c.?principalId ?? principalId
    roleDefinitionIds: [
      storageBlobDataReader
    ]
  }
}]

// The config itself (VAULTRELAY_CONFIG as a blob URL, core/config/source.py): read with the
// app's identity, so always principalId.
module configReadAccess 'rbac-container.bicep' = [for (c, i) in configContainers: {
  name: take('vr-config-read-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(c.?subscriptionId ?? subscription().subscriptionId, c.resourceGroup)
  params: {
    accountName: c.account
    containerName: c.container
    principalId: principalId
    roleDefinitionIds: [
      storageBlobDataReader
    ]
  }
}]

module cosmosKeyAccess 'rbac-cosmos.bicep' = [for (c, i) in cosmosKeyAccounts: {
  name: take('vr-cosmos-keys-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(c.?subscriptionId ?? subscription().subscriptionId, c.resourceGroup)
  params: {
    accountName: c.name
    principalId: c.?principalId ?? principalId
    roleDefinitionIds: [
      cosmosKeyReader
    ]
  }
}]

module cosmosRotateAccess 'rbac-cosmos.bicep' = [for (c, i) in cosmosRotateAccounts: {
  name: take('vr-cosmos-rotate-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(c.?subscriptionId ?? subscription().subscriptionId, c.resourceGroup)
  params: {
    accountName: c.name
    principalId: c.?principalId ?? principalId
    roleDefinitionIds: [
      cosmosKeyOperator
    ]
  }
}]

module cosmosReadOnlyAccess 'rbac-cosmos.bicep' = [for (c, i) in cosmosReadOnlyAccounts: {
  name: take('vr-cosmos-ro-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(c.?subscriptionId ?? subscription().subscriptionId, c.resourceGroup)
  params: {
    accountName: c.name
    principalId: c.?principalId ?? principalId
    roleDefinitionIds: [
      cosmosAccountReader
    ]
  }
}]

module webAppAccess 'rbac-site.bicep' = [for (w, i) in webApps: {
  name: take('vr-site-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(w.?subscriptionId ?? subscription().subscriptionId, w.resourceGroup)
  params: {
    siteName: w.name
    principalId: w.?principalId ?? principalId
    roleDefinitionIds: [
      appSettingsWriter
    ]
  }
}]

module sqlServerAccess 'rbac-sql.bicep' = [for (q, i) in sqlServers: {
  name: take('vr-sql-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(q.?subscriptionId ?? subscription().subscriptionId, q.resourceGroup)
  params: {
    serverName: q.name
    principalId: q.?principalId ?? principalId
    roleDefinitionIds: [
      sqlServerContributor
    ]
  }
}]

module containerAppAccess 'rbac-containerapp.bicep' = [for (a, i) in containerApps: {
  name: take('vr-capp-${deploymentSuffix}-${i}', 64)
  scope: resourceGroup(a.?subscriptionId ?? subscription().subscriptionId, a.resourceGroup)
  params: {
    appName: a.name
    principalId: a.?principalId ?? principalId
    roleDefinitionIds: [
      containerAppsContributor
    ]
  }
}]
