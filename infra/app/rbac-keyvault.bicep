// Role assignments on one existing Key Vault (deployed into the vault's resource group).

@description('Key Vault name.')
param vaultName string

@description('Object (principal) id that receives the roles.')
param principalId string

@description('Role definition ids (GUIDs) to assign.')
param roleDefinitionIds array

@description('Kind of principal (managed identities are service principals).')
param principalType string = 'ServicePrincipal'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in roleDefinitionIds: {
  name: guid(vault.id, principalId, roleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: principalType
  }
}]
