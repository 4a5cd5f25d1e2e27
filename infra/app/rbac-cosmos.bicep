// Role assignments on one existing Cosmos DB account (deployed into its resource group).

@description('Cosmos DB account name.')
param accountName string

@description('Object (principal) id that receives the roles.')
param principalId string

@description('Role definition ids (GUIDs) to assign: built-in, or the custom role defined at subscription scope.')
param roleDefinitionIds array

@description('Kind of principal (managed identities are service principals).')
param principalType string = 'ServicePrincipal'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' existing = {
  name: accountName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in roleDefinitionIds: {
  name: guid(account.id, principalId, roleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: principalType
  }
}]
