// Roles the Function app's identity needs on the resources this deployment creates: the
// Functions host's AzureWebJobsStorage (blobs incl. deployment packages, queues), vaultrelay's
// state tables, telemetry, and vaultrelay's state vault.  Role ids as in core/permissions/roles.py.

@description('Object (principal) id of the Function app\'s identity.')
param principalId string

@description('The deployment\'s storage account.')
param storageAccountName string

@description('The Application Insights component.')
param appInsightsName string

@description('vaultrelay\'s state vault (empty: none was created).  The app\'s identity is the only principal with a role on it.')
param stateVaultName string = ''

// Storage Blob Data Owner
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Queue Data Contributor
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
// Storage Table Data Contributor
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// Monitoring Metrics Publisher
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
// Key Vault Secrets Officer
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

var storageRoles = [
  storageBlobDataOwner
  storageQueueDataContributor
  storageTableDataContributor
]

resource storage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storageAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in storageRoles: {
  name: guid(storage.id, principalId, roleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource telemetryAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

module ownVaultAccess 'rbac-keyvault.bicep' = if (!empty(stateVaultName)) {
  name: 'vaultrelay-state-vault-rbac'
  params: {
    vaultName: stateVaultName
    principalId: principalId
    roleDefinitionIds: [
      keyVaultSecretsOfficer
    ]
  }
}
