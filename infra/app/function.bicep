// The Flex Consumption plan and the Function app (Python), from Azure Verified Modules.
// Thin wrapper: picks the identity, the identity-based deployment storage and the settings.

@description('Function app name.')
param name string

@description('Region.')
param location string = resourceGroup().location

@description('Tags (include azd-service-name for azd).')
param tags object = {}

@description('Flex Consumption plan name.')
param planName string

@description('Python version.')
param pythonVersion string = '3.11'

@description('Most instances the app scales out to.')
param maximumInstanceCount int = 40

@description('Memory of each instance.')
param instanceMemoryMB int = 2048

@description('Blob container URL the platform deploys packages from (https://<account>.blob.<suffix>/<container>).')
param deploymentBlobContainerUrl string

@description('Resource id of the user-assigned identity; empty: use the system-assigned identity.')
param userAssignedIdentityResourceId string = ''

@description('Other user-assigned identities to attach (config stores that use them).')
param additionalUserAssignedIdentityIds array = []

@description('App settings (identity-based AzureWebJobsStorage, vaultrelay settings).')
param appSettings object

var useUserAssigned = !empty(userAssignedIdentityResourceId)
var userAssignedIds = union(useUserAssigned ? [
  userAssignedIdentityResourceId
] : [], additionalUserAssignedIdentityIds)

module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'vaultrelay-plan'
  params: {
    name: planName
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    // Flex Consumption runs on Linux only.
    reserved: true
    zoneRedundant: false
  }
}

module site 'br/public:avm/res/web/site:0.16.0' = {
  name: 'vaultrelay-site'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: tags
    serverFarmResourceId: plan.outputs.resourceId
    httpsOnly: true
    // Publishing with basic credentials (FTP, SCM) is off: azd and az deploy with Entra tokens.
    basicPublishingCredentialsPolicies: [
      {
        name: 'ftp'
        allow: false
      }
      {
        name: 'scm'
        allow: false
      }
    ]
    managedIdentities: {
      systemAssigned: !useUserAssigned
      userAssignedResourceIds: userAssignedIds
    }
    // Key Vault references in app settings resolve with the same identity as the code.
    keyVaultAccessIdentityResourceId: useUserAssigned ? userAssignedIdentityResourceId : null
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentBlobContainerUrl
          authentication: useUserAssigned ? {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: userAssignedIdentityResourceId
          } : {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      alwaysOn: false
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    configs: [
      {
        name: 'appsettings'
        properties: appSettings
      }
    ]
  }
}

@description('Function app name.')
output name string = site.outputs.name

@description('Function app resource id.')
output resourceId string = site.outputs.resourceId

@description('Default host name (without https://).')
output defaultHostname string = site.outputs.defaultHostname

@description('Principal id of the system-assigned identity (empty with a user-assigned one).')
output systemAssignedPrincipalId string = site.outputs.?systemAssignedMIPrincipalId ?? ''
