// Key Vault events of one source vault -> the Function app's Event Grid-triggered function.
// Deployed into the vault's resource group: an Event Grid system topic lives with its source
// (and in its region), and a vault has at most one.  The topic's system-assigned identity
// dead-letters undeliverable events into a container of the deployment's storage account.

@description('Source Key Vault name.')
param vaultName string

@description('Region of the vault (the system topic must be there).')
param location string

@description('System topic name (the vault\'s existing one, or a new one).')
param systemTopicName string

@description('Tags.')
param tags object = {}

@description('Resource id of the Function app.')
param functionAppResourceId string

@description('Function that receives the events (an Event Grid trigger).')
param functionName string = 'keyvault_events'

@description('Storage account that keeps dead letters.')
param deadLetterStorageAccountName string

@description('Its resource group.')
param deadLetterResourceGroup string

@description('Its subscription.')
param deadLetterSubscriptionId string

@description('Container for dead letters.')
param deadLetterContainerName string

@description('Delivery attempts before dead-lettering.')
param maxDeliveryAttempts int = 30

@description('Minutes of retries before dead-lettering.')
param eventTimeToLiveInMinutes int = 1440

// Storage Blob Data Contributor
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

var eventTypes = [
  'Microsoft.KeyVault.SecretNewVersionCreated'
  'Microsoft.KeyVault.SecretNearExpiry'
  'Microsoft.KeyVault.SecretExpired'
]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

module topic 'br/public:avm/res/event-grid/system-topic:0.6.4' = {
  name: take('vr-evgt-${vaultName}', 64)
  params: {
    name: systemTopicName
    location: location
    tags: tags
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
    managedIdentities: {
      systemAssigned: true
    }
  }
}

// The topic's identity may write dead letters into that one container, nothing else.
module deadLetterAccess 'rbac-container.bicep' = {
  name: take('vr-evgt-dl-${vaultName}', 64)
  scope: resourceGroup(deadLetterSubscriptionId, deadLetterResourceGroup)
  params: {
    accountName: deadLetterStorageAccountName
    containerName: deadLetterContainerName
    principalId: topic.outputs.?systemAssignedMIPrincipalId ?? ''
    roleDefinitionIds: [
      storageBlobDataContributor
    ]
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

// A plain resource (not the AVM module's eventSubscriptions) so that it is created after the
// dead-letter role assignment above exists.
resource eventSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: 'vaultrelay-keyvault-events'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppResourceId}/functions/${functionName}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: eventTypes
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: resourceId(deadLetterSubscriptionId, deadLetterResourceGroup, 'Microsoft.Storage/storageAccounts', deadLetterStorageAccountName)
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
  dependsOn: [
    topic
    deadLetterAccess
  ]
}

@description('System topic resource id.')
output systemTopicId string = topic.outputs.resourceId
