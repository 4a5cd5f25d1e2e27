// Roles the Function app's identity needs on the resources this deployment creates: the
// Functions host's AzureWebJobsStorage (blobs incl. deployment packages), the work queues, vaultrelay's
// state tables, telemetry, and vaultrelay's state vault.  Role ids as in core/permissions/roles.py.

@description('Object (principal) id of the Function app\'s identity.')
param principalId string

@description('The deployment\'s storage account.')
param storageAccountName string

@description('The work queue (and `<name>-poison`) in the storage account.')
param workQueueName string = 'vaultrelay-work'

@description('The Application Insights component.')
param appInsightsName string

@description('vaultrelay\'s state vault (empty: none was created).  The app\'s identity is the only principal with a role on it.')
param stateVaultName string = ''

// Storage Blob Data Owner
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Queue Data Message Sender
var storageQueueDataMessageSender = 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
// Storage Queue Data Message Processor
var storageQueueDataMessageProcessor = '8a0f0c08-91a1-4084-bc3d-661d67233fed'
// Storage Queue Data Reader
var storageQueueDataReader = '19e7f393-937e-4f77-808e-94535e297925'
// Storage Table Data Contributor
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// Monitoring Metrics Publisher
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
// Key Vault Secrets Officer
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

var storageRoles = [
  storageBlobDataOwner
  storageTableDataContributor
]

// The work queue: planners (timer, POST /api/sync, events, rotations) send; the queue trigger
// (and vaultrelay worker) receives and deletes, and reads the queue's length to scale.  The poison
// queue: the host moves a message there after maxDequeueCount failed deliveries (send only).
// Granted on the queues themselves, not the account; both queues exist (main.bicep creates them).
var workQueueRoles = [
  storageQueueDataMessageSender
  storageQueueDataMessageProcessor
  storageQueueDataReader
]

resource storage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2024-01-01' existing = {
  name: 'default'
  parent: storage
}

resource workQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  name: workQueueName
  parent: queueService
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' existing = {
  name: '${workQueueName}-poison'
  parent: queueService
}

resource workQueueAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in workQueueRoles: {
  name: guid(workQueue.id, principalId, roleId)
  scope: workQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource poisonQueueAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, principalId, storageQueueDataMessageSender)
  scope: poisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataMessageSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
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
