// vaultrelay's custom roles: only the operations vaultrelay performs, where the built-ins are too
// broad.  Ids, names and actions equal core/permissions/roles.py CUSTOM_ROLES.
// - Cosmos DB: DocumentDB Account Contributor can change the whole account; Cosmos DB Account
//   Reader Role reads only the read-only keys.  Reading keys or connection strings needs the key
//   reader; only rotation needs the key operator (regenerateKey).
// - App Service: Website Contributor can deploy to, restart, reconfigure and delete the site; an
//   app_settings target only lists and writes the site's (or a slot's) configuration.
// Custom role ids and names are unique in a tenant: define them in one deployment and list every
// subscription that assigns them in assignableSubscriptionIds.
targetScope = 'subscription'

@description('Subscriptions where the roles can be assigned.')
param assignableSubscriptionIds array

@description('Define the two Cosmos DB roles.')
param cosmos bool = true

@description('Define the app settings role.')
param appSettings bool = true

// vaultrelay Cosmos DB Key Reader
var cosmosKeyReader = '3b7a5e1c-2d4f-4a8b-9c6e-0f1a2b3c4d5e'
// vaultrelay Cosmos DB Key Operator
var cosmosKeyOperator = '7e0b1c2a-9f4d-5c3b-8a6e-1d2f3a4b5c6d'
// vaultrelay App Settings Writer
var appSettingsWriter = '9d2c4b6a-1e3f-4c5d-8e7f-6a5b4c3d2e1f'

var scopes = [for id in assignableSubscriptionIds: '/subscriptions/${id}']

resource cosmosKeyReaderRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (cosmos) {
  name: cosmosKeyReader
  properties: {
    roleName: 'vaultrelay Cosmos DB Key Reader'
    description: 'List Cosmos DB account keys and connection strings; no regeneration, no other change (custom role).'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.DocumentDB/databaseAccounts/read'
          'Microsoft.DocumentDB/databaseAccounts/listKeys/action'
          'Microsoft.DocumentDB/databaseAccounts/readonlykeys/action'
          'Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: scopes
  }
}

resource cosmosKeyOperatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (cosmos) {
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
    assignableScopes: scopes
  }
}

resource appSettingsWriterRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (appSettings) {
  name: appSettingsWriter
  properties: {
    roleName: 'vaultrelay App Settings Writer'
    description: 'List and write the configuration (app settings) of a site and its slots; no deployment, restart or deletion (custom role).'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.Web/sites/read'
          'Microsoft.Web/sites/config/read'
          'Microsoft.Web/sites/config/list/action'
          'Microsoft.Web/sites/config/write'
          'Microsoft.Web/sites/slots/read'
          'Microsoft.Web/sites/slots/config/list/action'
          'Microsoft.Web/sites/slots/config/write'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: scopes
  }
}
