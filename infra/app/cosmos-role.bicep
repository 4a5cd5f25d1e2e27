// The custom role "vaultrelay Cosmos DB Key Operator": only the Cosmos DB key operations
// vaultrelay performs.  The built-in alternative, DocumentDB Account Contributor, can change
// the whole account.  Id, name and actions equal core/azure_roles.py COSMOS_KEY_OPERATOR.
// Custom role ids and names are unique in a tenant: define it in one deployment and list every
// subscription that assigns it in assignableSubscriptionIds.
targetScope = 'subscription'

@description('Subscriptions where the role can be assigned.')
param assignableSubscriptionIds array

// vaultrelay Cosmos DB Key Operator
var cosmosKeyOperator = '7e0b1c2a-9f4d-5c3b-8a6e-1d2f3a4b5c6d'

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: cosmosKeyOperator
  properties: {
    roleName: 'vaultrelay Cosmos DB Key Operator'
    description: 'List, read-only-list and regenerate Cosmos DB account keys (custom role).'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.DocumentDB/databaseAccounts/read'
          'Microsoft.DocumentDB/databaseAccounts/listKeys/action'
          'Microsoft.DocumentDB/databaseAccounts/readonlykeys/action'
          'Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action'
          'Microsoft.DocumentDB/databaseAccounts/regenerateKey/action'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [for id in assignableSubscriptionIds: '/subscriptions/${id}']
  }
}

@description('Resource id of the role definition.')
output roleDefinitionId string = role.id
