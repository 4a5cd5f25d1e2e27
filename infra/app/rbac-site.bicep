// Role assignments on one existing App Service / Functions app (deployed into its resource group).

@description('Site name.')
param siteName string

@description('Object (principal) id that receives the roles.')
param principalId string

@description('Role definition ids (GUIDs) to assign.')
param roleDefinitionIds array

@description('Kind of principal (managed identities are service principals).')
param principalType string = 'ServicePrincipal'

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: siteName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in roleDefinitionIds: {
  name: guid(site.id, principalId, roleId)
  scope: site
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: principalType
  }
}]
