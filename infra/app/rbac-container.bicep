// Role assignments on one existing blob container (deployed into its account's resource group).

@description('Storage account name.')
param accountName string

@description('Blob container name.')
param containerName string

@description('Object (principal) id that receives the roles.')
param principalId string

@description('Role definition ids (GUIDs) to assign.')
param roleDefinitionIds array

@description('Kind of principal (managed identities are service principals).')
param principalType string = 'ServicePrincipal'

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: accountName

  resource blobService 'blobServices' existing = {
    name: 'default'

    resource container 'containers' existing = {
      name: containerName
    }
  }
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in roleDefinitionIds: {
  name: guid(account::blobService::container.id, principalId, roleId)
  scope: account::blobService::container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: principalType
  }
}]
