// Role assignments on one existing Azure SQL logical server (deployed into its resource group).

@description('SQL server name.')
param serverName string

@description('Object (principal) id that receives the roles.')
param principalId string

@description('Role definition ids (GUIDs) to assign.')
param roleDefinitionIds array

@description('Kind of principal (managed identities are service principals).')
param principalType string = 'ServicePrincipal'

// An existing server, only referenced as the assignments' scope: its auditing and threat
// detection are its owner's settings, which this template neither deploys nor changes
// (.checkov.yaml says why checkov's SQL server checks are skipped).
resource server 'Microsoft.Sql/servers@2023-08-01' existing = {
  name: serverName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in roleDefinitionIds: {
  name: guid(server.id, principalId, roleId)
  scope: server
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: principalType
  }
}]
