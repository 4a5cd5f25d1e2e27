// vaultrelay on Azure Functions (Flex Consumption, Python), deployed with `azd up` or
// `az deployment sub create` (docs/deploy.md).  Resources use version-pinned Azure Verified
// Modules; role assignments and the Event Grid subscriptions are plain resources in the thin
// wrappers under app/ so that every role id stays visible next to its name.
targetScope = 'subscription'

metadata description = 'vaultrelay: resolves, rotates and pushes secrets with the Function app\'s managed identity.'

// ---- where and what ----------------------------------------------------------------------
@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group and seeds the other resource names.')
param environmentName string

@minLength(1)
@description('Region of the resource group, the Function app, its storage and its monitoring (a region that offers Flex Consumption).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create or reuse (default rg-<environmentName>).')
param resourceGroupName string = ''

@description('UserAssigned: create a user-assigned identity, attach it and name it in AZURE_CLIENT_ID. SystemAssigned: use the app\'s system-assigned identity instead.')
@allowed([
  'UserAssigned'
  'SystemAssigned'
])
param identityType string = 'UserAssigned'

@description('Resource ids of other user-assigned identities that config stores use; they are attached to the app (grant them roles with principalId in the lists below).')
param additionalUserAssignedIdentityIds array = []

@description('Python version of the Function app.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Flex Consumption: most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: memory of each instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Redundancy of the storage account (AzureWebJobsStorage, deployment packages, state tables, dead letters).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Days Log Analytics keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// ---- vaultrelay settings -----------------------------------------------------------------
@description('VAULTRELAY_CONFIG: path of the config file in the deployed package (relative paths resolve against the worker\'s working directory), or an https://<account>.blob.<suffix>/<container>/<blob> URL read with the app\'s identity (set configBlobContainer to grant it Storage Blob Data Reader on that container).')
param vaultrelayConfig string = 'vaultrelay.yaml'

type configBlobContainerType = {
  // storage account and container of the VAULTRELAY_CONFIG blob
  account: string
  container: string
  // the account's resource group (default: the deployment's) and subscription (default: this one)
  resourceGroup: string?
  subscriptionId: string?
}

@description('Where the VAULTRELAY_CONFIG blob lives, when vaultrelayConfig is a blob URL: the app\'s identity gets Storage Blob Data Reader on that container (nothing more). Empty account: no grant. Not needed when the blob is in the template\'s own storage account (the identity has Storage Blob Data Owner there).')
param configBlobContainer configBlobContainerType = {
  account: ''
  container: ''
}

@description('VAULTRELAY_SYNC_SCHEDULE: NCRONTAB schedule (six fields) of the scheduled sync.')
param syncSchedule string = '0 */15 * * * *'

@description('VAULTRELAY_API_AUDIENCE: audience (e.g. api://vaultrelay or the app registration\'s client id) that tokens for GET /api/envs/{env} must carry; comma-separated for several.')
param apiAudience string = ''

@description('Prefix of the state tables (state.table_prefix in the config).')
param stateTablePrefix string = 'vaultrelay'

@description('The work queue planners enqueue sync work items to (in the deployment\'s storage account); its poison queue is `<name>-poison`.')
@minLength(3)
@maxLength(56)
param workQueueName string = 'vaultrelay-work'

@description('VAULTRELAY_SUBSCRIPTION_ID: subscription of storage and Cosmos DB accounts that references do not place (default: this one).')
param defaultSubscriptionId string = subscription().subscriptionId

@description('Optional Key Vault secret URI (versionless) holding the HMAC key for fingerprints; set as a Key Vault reference in VAULTRELAY_FINGERPRINT_KEY. Keep it in a vault only vaultrelay reads (never a target\'s vault) and grant the app Key Vault Secrets User there (sourceVaults). Without it vaultrelay keeps the key in the state vault.')
param fingerprintKeySecretUri string = ''

@description('Create vaultrelay\'s state vault (state.vault: user delegation keys, the fingerprint key, minted SAS tokens): RBAC mode, soft delete, purge protection; the app\'s identity gets Key Vault Secrets Officer on it and nobody else gets any role. Never a target\'s vault (`vaultrelay validate` refuses that). Its name is in VAULTRELAY_STATE_VAULT: write state.vault: ${VAULTRELAY_STATE_VAULT} in the config.')
param createStateVault bool = true

@description('Name of the state vault (default kv-vrs-<token>).')
param stateVaultName string = ''

// ---- Key Vault events --------------------------------------------------------------------
@description('Create an Event Grid system topic per source vault (events not false) with a subscription to the function below. The function must already be deployed: enable after the first `azd deploy`.')
param keyVaultEventsEnabled bool = false

@description('Function that receives Key Vault events (an Event Grid trigger).')
param eventFunctionName string = 'keyvault_events'

@description('Event Grid delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param eventMaxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event before it is dead-lettered.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

// ---- what vaultrelay reads and writes (`vaultrelay plan --permissions --bicep-params FILE`) --
@description('Define vaultrelay\'s custom roles (Cosmos DB key reader and operator, app settings writer; app/custom-roles.bicep) when cosmosAccounts or webApps need them (once per tenant: set false where another deployment defines them).')
param createCustomRoles bool = true

type sourceVaultType = {
  // vault name; resource group and (default: this) subscription
  name: string
  resourceGroup: string
  subscriptionId: string?
  // Key Vault Secrets User: secrets and certificates (default true)
  secrets: bool?
  // Key Vault Reader: public parts of keys (type: key references)
  publicKeys: bool?
  // wire this vault's events when keyVaultEventsEnabled (default true)
  events: bool?
  // the vault's region: its Event Grid system topic lives there (default: location)
  location: string?
  // a vault has at most one system topic: name the existing one to reuse it
  systemTopicName: string?
  // who gets the roles (default: the Function app's identity)
  principalId: string?
}

type targetVaultType = {
  // Key Vault Secrets Officer: targets of type keyvault and state.vault
  name: string
  resourceGroup: string
  subscriptionId: string?
  principalId: string?
}

type storageAccountType = {
  name: string
  resourceGroup: string
  subscriptionId: string?
  // Storage Account Key Operator Service Role: storage keys, account and service SAS
  keyRead: bool?
  // the same role: dual-key rotation (regenerateKey)
  keyRotate: bool?
  // Storage Blob Delegator: user delegation SAS (plus a data role on the container, blobContainers)
  userDelegationSas: bool?
  // Storage Table Data Contributor: state tables kept in this account
  tableData: bool?
  principalId: string?
}

type blobContainerType = {
  // storage account, its resource group and (default: this) subscription
  account: string
  container: string
  resourceGroup: string
  subscriptionId: string?
  // Storage Blob Data Contributor (blob targets, writable user delegation SAS), else Reader
  write: bool?
  principalId: string?
}

type cosmosAccountType = {
  name: string
  resourceGroup: string
  subscriptionId: string?
  // vaultrelay Cosmos DB Key Reader: read-write keys and connection strings, no regeneration (default true)
  keys: bool?
  // vaultrelay Cosmos DB Key Operator instead: the same plus regenerateKey (dual-key and tagged rotation)
  rotate: bool?
  // Cosmos DB Account Reader Role: read-only keys only
  readOnlyKeys: bool?
  principalId: string?
}

type webAppType = {
  // vaultrelay App Settings Writer: targets of type app_settings (the site and its slots)
  name: string
  resourceGroup: string
  subscriptionId: string?
  principalId: string?
}

type containerAppType = {
  // Container Apps Contributor: targets of type container_app
  name: string
  resourceGroup: string
  subscriptionId: string?
  principalId: string?
}

type sqlServerType = {
  // SQL Server Contributor: administrator passwords rotated through rotation.tagged_secrets
  name: string
  resourceGroup: string
  subscriptionId: string?
  principalId: string?
}

@description('Key Vaults vaultrelay reads secrets, certificates or keys from.')
param sourceVaults sourceVaultType[] = []

@description('Key Vaults vaultrelay writes (keyvault targets, state.vault).')
param targetVaults targetVaultType[] = []

@description('Storage accounts whose keys vaultrelay reads or rotates, or whose user delegation keys it gets.')
param storageAccounts storageAccountType[] = []

@description('Blob containers vaultrelay writes (blob targets) or mints user delegation SAS for.')
param blobContainers blobContainerType[] = []

@description('Cosmos DB accounts whose keys or connection strings vaultrelay reads or rotates.')
param cosmosAccounts cosmosAccountType[] = []

@description('App Service / Functions apps whose settings vaultrelay writes (app_settings targets).')
param webApps webAppType[] = []

@description('Container apps whose secrets vaultrelay writes (container_app targets).')
param containerApps containerAppType[] = []

@description('SQL servers whose administrator password vaultrelay sets (rotation.tagged_secrets accounts).')
param sqlServers sqlServerType[] = []

// ---- names -------------------------------------------------------------------------------
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var useUserAssigned = identityType == 'UserAssigned'
var functionAppName = 'func-vaultrelay-${resourceToken}'
var storageAccountName = take('stvr${resourceToken}', 24)
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'
var deadLetterContainerName = 'eventgrid-deadletter'
var stateTables = [
  'pushes'
  'rotations'
  'events'
  'leases'
  'audit'
]
var stateVaultResourceName = empty(stateVaultName) ? take('kv-vrs-${resourceToken}', 24) : stateVaultName

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

// ---- identity ----------------------------------------------------------------------------
module appIdentity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = if (useUserAssigned) {
  name: 'vaultrelay-identity'
  scope: rg
  params: {
    name: 'id-vaultrelay-${resourceToken}'
    location: location
    tags: tags
  }
}

var identityResourceId = useUserAssigned ? appIdentity!.outputs.resourceId : ''
var identityClientId = useUserAssigned ? appIdentity!.outputs.clientId : ''

// ---- monitoring --------------------------------------------------------------------------
module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'vaultrelay-logs'
  scope: rg
  params: {
    name: 'log-vaultrelay-${resourceToken}'
    location: location
    tags: tags
    dataRetention: logRetentionInDays
  }
}

module appInsights 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'vaultrelay-appinsights'
  scope: rg
  params: {
    name: 'appi-vaultrelay-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    // Telemetry is sent with the app's identity (Monitoring Metrics Publisher), no instrumentation key.
    disableLocalAuth: true
  }
}

// ---- storage: AzureWebJobsStorage, deployment packages, state tables, dead letters -------
module storage 'br/public:avm/res/storage/storage-account:0.29.0' = {
  name: 'vaultrelay-storage'
  scope: rg
  params: {
    name: storageAccountName
    location: location
    tags: tags
    kind: 'StorageV2'
    skuName: storageSkuName
    // Identity only: no account keys in settings, no Shared Key requests at all.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // Flex Consumption without VNet integration reaches storage over its public endpoint;
    // access is by Entra identity and RBAC only (allowSharedKeyAccess false).
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containerDeleteRetentionPolicyEnabled: true
      containerDeleteRetentionPolicyDays: 7
      deleteRetentionPolicyEnabled: true
      deleteRetentionPolicyDays: 7
      containers: [
        {
          name: deploymentContainerName
          publicAccess: 'None'
        }
        {
          name: deadLetterContainerName
          publicAccess: 'None'
        }
      ]
    }
    tableServices: {
      tables: [for table in stateTables: {
        name: '${stateTablePrefix}${table}'
      }]
    }
    // The work queue (core/app/work.py) and the poison queue the Functions host moves a message
    // to after maxDequeueCount failed deliveries (host.json); created here so the app's identity
    // needs no queue management role, only message roles on these two (host-rbac.bicep).
    queueServices: {
      queues: [
        {
          name: workQueueName
        }
        {
          name: '${workQueueName}-poison'
        }
      ]
    }
  }
}

// ---- vaultrelay's state vault -------------------------------------------------------------
// Its secrets sign SAS tokens (user delegation keys) and key the fingerprint tags on targets, so
// only the app's identity gets a role on it (host-rbac.bicep); no target, no reader, no deployer
// data role.  Everything in it can be minted again, so soft delete keeps it the shortest time
// Key Vault allows; purge protection stops a control-plane principal from purging it for good.
module stateVault 'br/public:avm/res/key-vault/vault:0.13.0' = if (createStateVault) {
  name: 'vaultrelay-state-vault'
  scope: rg
  params: {
    name: stateVaultResourceName
    location: location
    tags: tags
    sku: 'standard'
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: true
    enableVaultForDeployment: false
    enableVaultForTemplateDeployment: false
    enableVaultForDiskEncryption: false
    // Every read of it (AuditEvent: caller, operation, secret name) goes to the workspace.
    diagnosticSettings: [
      {
        workspaceResourceId: logAnalytics.outputs.resourceId
      }
    ]
    // Reached by the Function app over its public endpoint (no VNet); data access is RBAC only.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// ---- the Function app --------------------------------------------------------------------
var storageSuffix = environment().suffixes.storage
var baseSettings = {
  // AzureWebJobsStorage by identity: no connection string, no account key.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__blobServiceUri: 'https://${storageAccountName}.blob.${storageSuffix}'
  AzureWebJobsStorage__queueServiceUri: 'https://${storageAccountName}.queue.${storageSuffix}'
  AzureWebJobsStorage__tableServiceUri: 'https://${storageAccountName}.table.${storageSuffix}'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: useUserAssigned ? 'ClientId=${identityClientId};Authorization=AAD' : 'Authorization=AAD'
  VAULTRELAY_CONFIG: vaultrelayConfig
  VAULTRELAY_CONFIG_RELOAD_SECONDS: '30'
  VAULTRELAY_LISTED_KEYS_TTL_SECONDS: '300'
  // The worker forwards every logger's INFO records to Application Insights: keep the SDK's at WARNING.
  VAULTRELAY_SDK_LOG_LEVEL: 'WARNING'
  // Unauthenticated requests: one audit row per cause and minute, holding the count.
  VAULTRELAY_ANONYMOUS_AUDIT_SECONDS: '60'
  VAULTRELAY_SYNC_SCHEDULE: syncSchedule
  // Planners enqueue work items; the queue-triggered sync_work syncs them (docs/deploy.md).
  VAULTRELAY_SYNC_MODE: 'queue'
  VAULTRELAY_WORK_QUEUE: workQueueName
  VAULTRELAY_WORK_BATCH: '10'
  // Equal to host.json's extensions.queues.maxDequeueCount: the last delivery records the poison.
  VAULTRELAY_WORK_MAX_DEQUEUE: '5'
  VAULTRELAY_STATE_ACCOUNT: storageAccountName
  VAULTRELAY_API_AUDIENCE: apiAudience
  VAULTRELAY_TENANT_ID: tenant().tenantId
  VAULTRELAY_CLOUD: environment().name
  VAULTRELAY_SUBSCRIPTION_ID: defaultSubscriptionId
}
var userAssignedSettings = {
  // The identity azure-identity and the Functions host use (config: client_id: ${AZURE_CLIENT_ID}).
  AZURE_CLIENT_ID: identityClientId
  AzureWebJobsStorage__clientId: identityClientId
}
var fingerprintSettings = {
  VAULTRELAY_FINGERPRINT_KEY: '@Microsoft.KeyVault(SecretUri=${fingerprintKeySecretUri})'
}
var stateVaultSettings = {
  // The config names it: state.vault: ${VAULTRELAY_STATE_VAULT}
  VAULTRELAY_STATE_VAULT: stateVaultResourceName
}
var appSettings = union(baseSettings, useUserAssigned ? userAssignedSettings : {}, empty(fingerprintKeySecretUri) ? {} : fingerprintSettings, createStateVault ? stateVaultSettings : {})

module functionApp 'app/function.bicep' = {
  name: 'vaultrelay-function'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: union(tags, {
      'azd-service-name': 'api'
    })
    planName: 'plan-vaultrelay-${resourceToken}'
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    deploymentBlobContainerUrl: '${storage.outputs.primaryBlobEndpoint}${deploymentContainerName}'
    userAssignedIdentityResourceId: identityResourceId
    additionalUserAssignedIdentityIds: additionalUserAssignedIdentityIds
    appSettings: appSettings
  }
}

var principalId = useUserAssigned ? appIdentity!.outputs.principalId : functionApp.outputs.systemAssignedPrincipalId

// ---- roles the app needs on its own resources --------------------------------------------
module hostAccess 'app/host-rbac.bicep' = {
  name: 'vaultrelay-host-rbac'
  scope: rg
  params: {
    principalId: principalId
    storageAccountName: storage.outputs.name
    appInsightsName: appInsights.outputs.name
    stateVaultName: createStateVault ? stateVault!.outputs.name : ''
    workQueueName: workQueueName
  }
}

// ---- roles the app needs on what the config reads and writes -----------------------------
module customRoles 'app/custom-roles.bicep' = if (createCustomRoles && (!empty(cosmosAccounts) || !empty(webApps))) {
  name: 'vaultrelay-custom-roles'
  params: {
    assignableSubscriptionIds: union([
      subscription().subscriptionId
    ], map(cosmosAccounts, c => c.?subscriptionId ?? subscription().subscriptionId), map(webApps, w => w.?subscriptionId ?? subscription().subscriptionId))
    cosmos: !empty(cosmosAccounts)
    appSettings: !empty(webApps)
  }
}

var configContainers = empty(configBlobContainer.account) ? [] : [
  {
    account: configBlobContainer.account
    container: configBlobContainer.container
    resourceGroup: configBlobContainer.?resourceGroup ?? rg.name
    subscriptionId: configBlobContainer.?subscriptionId ?? subscription().subscriptionId
  }
]

module configAccess 'app/rbac.bicep' = {
  name: 'vaultrelay-config-rbac'
  scope: rg
  params: {
    principalId: principalId
    configContainers: configContainers
    sourceVaults: sourceVaults
    targetVaults: targetVaults
    storageAccounts: storageAccounts
    blobContainers: blobContainers
    cosmosAccounts: cosmosAccounts
    webApps: webApps
    sqlServers: sqlServers
    containerApps: containerApps
  }
  dependsOn: [
    customRoles
  ]
}

// ---- Key Vault events --------------------------------------------------------------------
var eventVaults = keyVaultEventsEnabled ? filter(sourceVaults, v => v.?events ?? true) : []

module keyVaultEvents 'app/eventgrid.bicep' = [for (v, i) in eventVaults: {
  name: take('vaultrelay-kv-events-${resourceToken}-${i}', 64)
  scope: resourceGroup(v.?subscriptionId ?? subscription().subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    location: v.?location ?? location
    systemTopicName: v.?systemTopicName ?? 'evgt-${v.name}'
    tags: tags
    functionAppResourceId: functionApp.outputs.resourceId
    functionName: eventFunctionName
    deadLetterStorageAccountName: storage.outputs.name
    deadLetterResourceGroup: rg.name
    deadLetterSubscriptionId: subscription().subscriptionId
    deadLetterContainerName: deadLetterContainerName
    maxDeliveryAttempts: eventMaxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
  dependsOn: [
    hostAccess
  ]
}]

// ---- outputs (azd stores them in the environment) ----------------------------------------
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = 'https://${functionApp.outputs.defaultHostname}'
output VAULTRELAY_PRINCIPAL_ID string = principalId
output VAULTRELAY_IDENTITY_CLIENT_ID string = identityClientId
output VAULTRELAY_STATE_ACCOUNT string = storage.outputs.name
output VAULTRELAY_STATE_VAULT string = createStateVault ? stateVaultResourceName : ''
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
