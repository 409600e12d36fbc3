// Conveyor on Azure: one resource group holding
//   * a Python 3.11 Function App on the Flex Consumption plan (system-assigned identity),
//   * its host storage account (deployment package container, host leases/timers),
//   * a data storage account (landing + deadletter containers, runs table),
//   * a Service Bus namespace with the work queue (duplicate detection, dead-lettering),
//   * Log Analytics + workspace-based Application Insights (Entra ID ingestion only),
//   * an Event Grid system topic on the data account and, in phase 2, the BlobCreated
//     subscription that pushes to the `blob_created` function,
//   * an Event Grid custom topic (CloudEvents 1.0, Entra ID only) Conveyor publishes its
//     lifecycle events to (run.started, run.failed, model.deployed, ...),
//   * a Key Vault (Azure RBAC) holding the DevOps hook secret and the Databricks token,
//     read by the app through Key Vault references,
//   * an action group (e-mail) and alerts: dead-lettered work messages, failed runs,
//     failed function invocations; diagnostic settings of every resource to Log Analytics,
//   * the role assignments that let the identities do exactly that, with no keys anywhere.
//
// Deploy in two phases (infra/README.md has the commands):
//   1. this template with deployEventSubscription=false, 2. publish the code,
//   3. this template again with deployEventSubscription=true (the function must exist
//      before Event Grid can validate an AzureFunction endpoint).
//
// Checked offline by `make infra-check` (checkov, bicep framework). Every suppression is
// inline, next to the resource, with its reason. API versions are GA only: diagnostic
// settings use 2016-09-01 (the GA version: one setting named 'service' per resource, log
// categories listed by name instead of the preview-only 'allLogs' category group).

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

@description('Short lowercase name used to derive every resource name (3-11 letters/digits).')
@minLength(3)
@maxLength(11)
param baseName string = 'conveyor'

@description('Azure region; must offer the Flex Consumption plan.')
param location string = resourceGroup().location

@description('Tags put on every resource.')
param tags object = {
  app: 'conveyor'
}

@description('Phase 2 switch: create the Event Grid subscription to the blob_created function. Leave false until the code is published.')
param deployEventSubscription bool = false

// Function App (Flex Consumption)
@description('Flex Consumption: the most instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Flex Consumption: memory per instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption zone redundancy (region-dependent; the platform then keeps at least two always-ready instances per scale group, billed).')
param zoneRedundant bool = false

@description('NCRONTAB (with seconds) of the schedule_tick timer: fires flow schedules and the pending-run sweeper.')
param scheduleTick string = '0 * * * * *'

@description('NCRONTAB (UTC) of the daily retention timer that purges finished runs older than retentionDays.')
param retentionSchedule string = '0 0 3 * * *'

@description('Finished runs older than this many days are purged daily (0 = keep forever).')
@minValue(0)
param retentionDays int = 30

@description('Extra app settings merged over the defaults, e.g. the Batch / Azure ML / Databricks settings of infra/README.md.')
param extraAppSettings object = {}

// Service Bus work queue
@description('Service Bus queue that carries start/tick/step messages; also CONVEYOR_QUEUE_NAME.')
param queueName string = 'conveyor-work'

@description('Deliveries before Service Bus dead-letters a message; also CONVEYOR_MAX_DELIVERY_COUNT.')
@minValue(1)
@maxValue(2000)
param maxDeliveryCount int = 10

@description('Peek-lock duration in seconds (at most 300). The Functions host renews the lock while a message is processed; a message whose handler died comes back after it, so it is also CONVEYOR_VISIBILITY_TIMEOUT_SECONDS (the stall sweep waits this long + the stall margin past a deadline).')
@minValue(5)
@maxValue(300)
param lockDurationSeconds int = 60

@description('Window in which a second message with the same MessageId (= run id for start messages) is dropped.')
param duplicateDetectionHistoryTimeWindow string = 'PT1H'

@description('Time to live of a work message before it expires into the dead-letter queue.')
param defaultMessageTimeToLive string = 'P14D'

// Storage
@description('Table holding run state; also CONVEYOR_RUNS_TABLE.')
param runsTableName string = 'conveyorruns'

@description('Table holding the instances of for_each steps (outside the run documents); also CONVEYOR_INSTANCES_TABLE.')
param instancesTableName string = 'conveyorrunsinstances'

@description('Container where data drops land (watched by the Event Grid subscription).')
param landingContainerName string = 'landing'

@description('Container receiving Event Grid events that could not be delivered.')
param deadLetterContainerName string = 'deadletter'

@description('More private containers in the data account: apps (Batch application files, resource_files in flows.yaml) and outputs (step outputs, the batch default output_container).')
param extraContainerNames array = [
  'apps'
  'outputs'
]

@description('Days deleted blobs and containers stay recoverable.')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 7

@description('Storage redundancy (SKU name) of both storage accounts.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_GRS'

// Monitoring
@description('Log Analytics retention in days.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('E-mail address the action group notifies for every Conveyor alert (dead letters, failed runs, function failures).')
@minLength(3)
param alertEmail string

// Secrets (Key Vault)
@secure()
@description('Shared secret Azure DevOps service hooks send in the CONVEYOR_DEVOPS_SECRET_HEADER header. Stored in Key Vault; the app reads it through a Key Vault reference. Empty = no secret, no CONVEYOR_DEVOPS_SECRET setting. Pass it on every deployment.')
param devopsSecret string = ''

@secure()
@description('Databricks personal access token. Stored in Key Vault; the app reads it through a Key Vault reference and CONVEYOR_DATABRICKS_AUTH becomes pat. Empty = managed identity (azure-msi). Pass it on every deployment.')
param databricksToken string = ''

@description('Days a deleted Key Vault and its secrets stay recoverable; purge protection forbids purging them sooner.')
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionDays int = 90

// Event Grid subscription
@description('BlobCreated subject filter prefix: /blobServices/default/containers/<container>/blobs/<prefix>.')
param subjectBeginsWith string = '/blobServices/default/containers/landing/blobs/'

@description('BlobCreated subject filter suffix (e.g. .csv, _SUCCESS); empty = any blob.')
param subjectEndsWith string = ''

@description('Event Grid delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param eventMaxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event before dead-lettering it.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

@description('Events per delivery to the function (the blob_created trigger handles one event per invocation).')
@minValue(1)
@maxValue(5000)
param maxEventsPerBatch int = 1

@description('Preferred batch size in kilobytes for deliveries to the function.')
@minValue(1)
@maxValue(1024)
param preferredBatchSizeInKilobytes int = 64

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

var suffix = uniqueString(subscription().id, resourceGroup().id, baseName)
var functionAppName = 'func-${baseName}-${suffix}'
var planName = 'plan-${baseName}-${suffix}'
var appStorageName = take(toLower(replace('st${baseName}fn${suffix}', '-', '')), 24)
var dataStorageName = take(toLower(replace('st${baseName}dt${suffix}', '-', '')), 24)
var serviceBusName = 'sb-${baseName}-${suffix}'
var logAnalyticsName = 'log-${baseName}-${suffix}'
var appInsightsName = 'appi-${baseName}-${suffix}'
var systemTopicName = 'evgt-${baseName}-${suffix}'
var eventsTopicName = 'evgt-${baseName}-events-${suffix}'
var keyVaultName = take('kv-${baseName}-${suffix}', 24)
var actionGroupName = 'ag-${baseName}-${suffix}'
var deploymentContainerName = 'app-package-${take(suffix, 8)}'
var blobCreatedFunctionName = 'blob_created'

// Key Vault secret names and whether each secret was given.
var devopsSecretName = 'conveyor-devops-secret'
var databricksTokenName = 'conveyor-databricks-token'
var hasDevopsSecret = !empty(devopsSecret)
var hasDatabricksToken = !empty(databricksToken)

// Built-in role definition ids (Azure RBAC built-in roles).
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
}

// ---------------------------------------------------------------------------------------
// Monitoring: Log Analytics + workspace-based Application Insights (Entra ID ingestion)
// ---------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    IngestionMode: 'LogAnalytics'
    // Only Entra ID-authenticated telemetry is accepted: the function identity holds
    // Monitoring Metrics Publisher and APPLICATIONINSIGHTS_AUTHENTICATION_STRING says AAD.
    DisableLocalAuth: true
  }
}

// ---------------------------------------------------------------------------------------
// Storage: host account (Functions runtime + deployment package) and data account
// ---------------------------------------------------------------------------------------

// Two accounts on purpose: the data account's Event Grid topic then sees only data drops
// (not the host's lease/timer/package writes), the Event Grid identity gets rights on the
// data account only, and a data-retention policy can differ from the host's.
resource appStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_43: Computed name (take of toLower of st + baseName + uniqueString, 24 chars), always lowercase alphanumeric; checkov cannot evaluate the expression.
  name: appStorageName
  location: location
  tags: tags
  sku: {
    name: storageSku
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // checkov:skip=CKV_AZURE_59: No VNet in this deployment (Flex Consumption without VNet integration reaches storage over the public endpoint); access is Entra ID only with shared keys off, TLS 1.2, no anonymous blobs.
    publicNetworkAccess: 'Enabled'
    // checkov:skip=CKV_AZURE_35: Default action Allow for the same reason as CKV_AZURE_59; add VNet integration + private endpoints to deny by default.
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource appBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: appStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: appBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_43: Computed name (take of toLower of st + baseName + uniqueString, 24 chars), always lowercase alphanumeric; checkov cannot evaluate the expression.
  name: dataStorageName
  location: location
  tags: tags
  sku: {
    name: storageSku
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    isLocalUserEnabled: false
    isSftpEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // checkov:skip=CKV_AZURE_59: No VNet in this deployment (Flex Consumption without VNet integration reaches storage over the public endpoint); access is Entra ID only with shared keys off, TLS 1.2, no anonymous blobs.
    publicNetworkAccess: 'Enabled'
    // checkov:skip=CKV_AZURE_35: Default action Allow for the same reason as CKV_AZURE_59; add VNet integration + private endpoints to deny by default.
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource dataBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
  properties: {
    // A blob overwritten in `landing` gets a new eTag and so a new run; versions keep
    // the inputs of earlier runs readable (lineage records the eTag).
    isVersioningEnabled: true
    changeFeed: {
      enabled: true
      retentionInDays: softDeleteRetentionDays
    }
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
  }
}

resource landingContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: landingContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource extraContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in extraContainerNames: {
    parent: dataBlobService
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

resource dataTableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
}

resource runsTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: dataTableService
  name: runsTableName
}

resource instancesTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: dataTableService
  name: instancesTableName
}

// Storage diagnostics to Log Analytics (read/write/delete logs of blob, queue and table).
resource appBlobDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: appBlobService
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource dataBlobDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: dataBlobService
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource dataTableDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: dataTableService
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Service Bus: the work queue
// ---------------------------------------------------------------------------------------

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: serviceBusName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  // Not here: customer-managed keys require the Premium tier; Standard is enough for one work queue and encrypts at rest with Microsoft-managed keys.
  // Public network access: the Flex Consumption app has no VNet here; access is Entra ID only (local SAS auth disabled) over TLS 1.2. Network rules/private endpoints need Premium.
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
    zoneRedundant: false
  }
}

resource workQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: serviceBus
  name: queueName
  properties: {
    // Start messages carry MessageId = run id: a second send of the same run inside the
    // window is dropped by the broker (exactly-once start, see docs/architecture.md).
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: duplicateDetectionHistoryTimeWindow
    maxDeliveryCount: maxDeliveryCount
    lockDuration: 'PT${lockDurationSeconds}S'
    defaultMessageTimeToLive: defaultMessageTimeToLive
    deadLetteringOnMessageExpiration: true
    requiresSession: false
    enablePartitioning: false
    maxSizeInMegabytes: 1024
  }
}

resource serviceBusDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: serviceBus
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'OperationalLogs'
        enabled: true
      }
      {
        category: 'VNetAndIPFilteringLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        timeGrain: 'PT1M'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Key Vault (Azure RBAC): the DevOps hook secret and the Databricks token
// ---------------------------------------------------------------------------------------

// Secret values come only from the @secure() parameters and never appear in an output or
// an app setting: the app settings are Key Vault references the platform resolves with
// the app's identity (Key Vault Secrets User on this vault).
resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    // checkov:skip=CKV_AZURE_189: No VNet in this deployment: the Flex Consumption app resolves its Key Vault references over the public endpoint; access is Entra ID + Azure RBAC only (no access policies), TLS only.
    publicNetworkAccess: 'Enabled'
    // checkov:skip=CKV_AZURE_109: Default action Allow for the same reason as CKV_AZURE_189; add VNet integration + a private endpoint to deny by default.
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource devopsSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasDevopsSecret) {
  // checkov:skip=CKV_AZURE_41: No expiry date: an expired secret is refused to the Key Vault reference and App Service then hands the app the literal reference text; rotate by redeploying with a new value (or az keyvault secret set).
  // checkov:skip=CKV_AZURE_114: contentType is set (text/plain, below); checkov's Bicep parser nests a conditional resource's body one level deeper and does not see it (tests/functional/test_infra.py asserts it).
  parent: keyVault
  name: devopsSecretName
  properties: {
    value: devopsSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource databricksTokenValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasDatabricksToken) {
  // checkov:skip=CKV_AZURE_41: No expiry date: an expired secret is refused to the Key Vault reference and App Service then hands the app the literal reference text; rotate by redeploying with a new value (or az keyvault secret set).
  // checkov:skip=CKV_AZURE_114: contentType is set (text/plain, below); checkov's Bicep parser nests a conditional resource's body one level deeper and does not see it (tests/functional/test_infra.py asserts it).
  parent: keyVault
  name: databricksTokenName
  properties: {
    value: databricksToken
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource keyVaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: keyVault
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
      {
        category: 'AzurePolicyEvaluationDetails'
        enabled: true
      }
    ]
    metrics: [
      {
        timeGrain: 'PT1M'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Function App on Flex Consumption
// ---------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  // checkov:skip=CKV_AZURE_225: Zone redundancy is opt-in through the zoneRedundant parameter: on Flex Consumption it is region-dependent and bills at least two always-ready instances per scale group, which a scale-to-zero event-driven app does not need by default.
  properties: {
    reserved: true // Linux
    zoneRedundant: zoneRedundant
  }
}

// <namespace>.servicebus.windows.net (or the sovereign-cloud suffix), from the endpoint
// https://<namespace>.servicebus.windows.net:443/
var serviceBusFqdn = split(split(serviceBus.properties.serviceBusEndpoint, '//')[1], ':')[0]

// App settings. Flex Consumption sets the runtime from functionAppConfig.runtime, so
// FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION must NOT be set here.
var baseAppSettings = {
  // Host storage, identity-based (no connection string, no key).
  AzureWebJobsStorage__accountName: appStorage.name
  // Service Bus trigger connection="ServiceBusConnection", identity-based.
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusFqdn
  // Application Insights with Entra ID authentication (local auth is disabled).
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  // Conveyor (shared/settings.py).
  CONVEYOR_MODE: 'azure'
  CONVEYOR_QUEUE_NAME: workQueue.name
  CONVEYOR_RUNS_TABLE: runsTable.name
  CONVEYOR_INSTANCES_TABLE: instancesTable.name
  CONVEYOR_MAX_DELIVERY_COUNT: string(maxDeliveryCount)
  CONVEYOR_TELEMETRY_EXPORTER: 'opentelemetry'
  CONVEYOR_SCHEDULE_TICK: scheduleTick
  CONVEYOR_RETENTION_SCHEDULE: retentionSchedule
  CONVEYOR_RETENTION_DAYS: string(retentionDays)
  CONVEYOR_VISIBILITY_TIMEOUT_SECONDS: string(lockDurationSeconds)
  // The deployed package is read-only; local scratch state goes to the instance's /tmp.
  CONVEYOR_HOME: '/tmp/conveyor'
  // Conveyor's own data storage (runs table, blobs), identity-based, same `__` convention
  // as the Functions host. The Azure storage adapters read these (infra/README.md).
  CONVEYOR_STORAGE__accountName: dataStorage.name
  CONVEYOR_STORAGE__blobServiceUri: dataStorage.properties.primaryEndpoints.blob
  CONVEYOR_STORAGE__queueServiceUri: dataStorage.properties.primaryEndpoints.queue
  CONVEYOR_STORAGE__tableServiceUri: dataStorage.properties.primaryEndpoints.table
  CONVEYOR_LANDING_CONTAINER: landingContainer.name
  CONVEYOR_DEADLETTER_CONTAINER: deadLetterContainer.name
  // Lifecycle CloudEvents go to the custom topic with the app's identity (EventGrid Data Sender).
  CONVEYOR_EVENTS_TOPIC_ENDPOINT: eventsTopic.properties.endpoint
}

// Secrets as Key Vault references (the versionless secretUri: a new version is picked up
// within a day, at once on restart). Only a secret that was given gets a setting: an
// unresolvable reference would reach the app as its literal text.
var devopsSecretSettings = hasDevopsSecret ? {
  CONVEYOR_DEVOPS_SECRET: '@Microsoft.KeyVault(SecretUri=${devopsSecretValue.properties.secretUri})'
} : {}
var databricksTokenSettings = hasDatabricksToken ? {
  CONVEYOR_DATABRICKS_TOKEN: '@Microsoft.KeyVault(SecretUri=${databricksTokenValue.properties.secretUri})'
  CONVEYOR_DATABRICKS_AUTH: 'pat'
} : {}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  // No App Service Authentication (Easy Auth): it would reject Event Grid and Azure DevOps webhooks; callers authenticate with function keys (http_auth_level=FUNCTION) and the webhook credentials.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales out from zero on demand; a minimum of warm instances means billed always-ready instances, which this event-driven app (Event Grid and Service Bus retry deliveries) does not need.
  // checkov:skip=CKV_AZURE_213: App Service health-check instance replacement does not fit a scale-to-zero Flex app whose routes all need a function key; failures are watched in Application Insights.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // checkov:skip=CKV_AZURE_17: Client certificates cannot be presented by Event Grid push deliveries or Azure DevOps service hooks; HTTP routes use function keys plus the DevOps basic auth/secret header.
    clientCertEnabled: false
    // checkov:skip=CKV_AZURE_222: Public network access is required: Event Grid push delivery and Azure DevOps service hooks call the app from the internet (no VNet in this deployment).
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Inline (not a sites/config resource) so the host starts with its settings at once.
      appSettings: [for setting in items(union(baseAppSettings, devopsSecretSettings, databricksTokenSettings, extraAppSettings)): {
        name: setting.key
        value: string(setting.value)
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${appStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
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
        version: '3.11'
      }
    }
  }
  dependsOn: [
    deploymentContainer
  ]
}

// No publishing with basic credentials: deployments authenticate with Entra ID.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// FunctionAppLogs (host and worker log lines) and the app's metrics to Log Analytics.
resource functionAppDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: functionApp
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'FunctionAppLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        timeGrain: 'PT1M'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Role assignments: function identity
// ---------------------------------------------------------------------------------------

// Host storage: the Flex host reads its package and keeps leases/timers/keys in blobs
// (Blob Data Owner is the documented requirement); queues and tables for host features.
resource appStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appStorage.id, functionApp.id, roleIds.storageBlobDataOwner)
  scope: appStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource appStorageQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appStorage.id, functionApp.id, roleIds.storageQueueDataContributor)
  scope: appStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource appStorageTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appStorage.id, functionApp.id, roleIds.storageTableDataContributor)
  scope: appStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Data storage: Conveyor reads landing blobs, writes step outputs, keeps runs in a table.
resource dataStorageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionApp.id, roleIds.storageBlobDataOwner)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource dataStorageQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionApp.id, roleIds.storageQueueDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource dataStorageTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionApp.id, roleIds.storageTableDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Service Bus: send (ingest, scheduled ticks) and receive (orchestrator trigger), on the
// work queue only.
resource queueSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workQueue.id, functionApp.id, roleIds.serviceBusDataSender)
  scope: workQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.serviceBusDataSender)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource queueReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workQueue.id, functionApp.id, roleIds.serviceBusDataReceiver)
  scope: workQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.serviceBusDataReceiver)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights with DisableLocalAuth: telemetry is accepted from identities
// holding Monitoring Metrics Publisher on the component.
resource appInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionApp.id, roleIds.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault references are resolved with the app's identity: read secret values, on this
// vault only (no key, certificate or management rights).
resource keyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, functionApp.id, roleIds.keyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Lifecycle events: publish to the custom topic (its local auth is off), nothing else.
resource eventsTopicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventsTopic.id, functionApp.id, roleIds.eventGridDataSender)
  scope: eventsTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.eventGridDataSender)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------------------------------
// Event Grid: system topic on the data account, BlobCreated -> blob_created function
// ---------------------------------------------------------------------------------------

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: dataStorage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// The topic's identity writes undeliverable events into the deadletter container only.
resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, systemTopic.id, roleIds.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Phase 2 only: Event Grid validates an AzureFunction endpoint when the subscription is
// created, so the blob_created function must already be published.
resource blobCreatedSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deployEventSubscription) {
  parent: systemTopic
  name: 'blob-created-to-conveyor'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: subjectBeginsWith
      subjectEndsWith: subjectEndsWith
      isSubjectCaseSensitive: false
      enableAdvancedFilteringOnArrays: true
    }
    retryPolicy: {
      maxDeliveryAttempts: eventMaxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: dataStorage.id
          blobContainerName: deadLetterContainer.name
        }
      }
    }
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionApp.id}/functions/${blobCreatedFunctionName}'
        maxEventsPerBatch: maxEventsPerBatch
        preferredBatchSizeInKilobytes: preferredBatchSizeInKilobytes
      }
    }
  }
  dependsOn: [
    deadLetterWriter
  ]
}

// Delivery and publish failures of the system topic (BlobCreated) to Log Analytics.
resource systemTopicDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: systemTopic
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'DeliveryFailures'
        enabled: true
      }
    ]
    metrics: [
      {
        timeGrain: 'PT1M'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Event Grid: custom topic for Conveyor's lifecycle events (CloudEvents 1.0)
// ---------------------------------------------------------------------------------------

// Conveyor publishes run.started, run.succeeded, run.failed, step.failed, model.registered,
// gate.decided and model.deployed here with azure-eventgrid's EventGridPublisherClient
// and the app's identity; subscribers (Logic Apps, Teams, functions) attach their own
// event subscriptions. Access keys and SAS tokens are refused (disableLocalAuth).
resource eventsTopic 'Microsoft.EventGrid/topics@2025-02-15' = {
  name: eventsTopicName
  location: location
  tags: tags
  // Lets subscribers deliver and dead-letter with the topic's identity instead of keys.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    minimumTlsVersionAllowed: '1.2'
    // checkov:skip=CKV_AZURE_193: Public network access is required: the Flex Consumption app has no VNet here and publishes over the public endpoint with Entra ID tokens only (local auth disabled), TLS 1.2 minimum.
    publicNetworkAccess: 'Enabled'
  }
}

resource eventsTopicDiagnostics 'Microsoft.Insights/diagnosticSettings@2016-09-01' = {
  name: 'service'
  scope: eventsTopic
  properties: {
    workspaceId: logAnalytics.id
    logs: [
      {
        category: 'DeliveryFailures'
        enabled: true
      }
      {
        category: 'PublishFailures'
        enabled: true
      }
      {
        category: 'DataPlaneRequests'
        enabled: true
      }
    ]
    metrics: [
      {
        timeGrain: 'PT1M'
        enabled: true
      }
    ]
  }
}

// ---------------------------------------------------------------------------------------
// Alerts: one action group (e-mail), three rules
// ---------------------------------------------------------------------------------------

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take(baseName, 12)
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// A message the broker dead-lettered (MaxDeliveryCount reached, or TTL expired) is work
// that will not run until someone replays it (`conveyor dlq list` / `dlq replay`). Stateful:
// fires once while the dead-letter queue is non-empty, resolves when it is empty again.
resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-${baseName}-dead-lettered-${suffix}'
  location: 'global'
  tags: tags
  properties: {
    description: 'The Conveyor work queue holds dead-lettered messages: list them with conveyor dlq list, replay with conveyor dlq replay.'
    severity: 2
    enabled: true
    scopes: [
      serviceBus.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered-messages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                workQueue.name
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// Failed runs, from the telemetry Conveyor itself sends: decide() emits `run.finished` with
// attribute status (succeeded | failed | cancelled); both exporters send events as App
// Insights custom events, attributes as string custom dimensions (shared/telemetry).
var failedRunsQuery = '''
customEvents
| where name == "run.finished"
| extend status = tostring(customDimensions.status), flow = tostring(customDimensions.flow)
| where status == "failed"
'''

resource failedRunsAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-failed-runs-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Conveyor: failed runs'
    description: 'A Conveyor run ended with status failed (run.finished custom event); one alert per flow. conveyor show RUN tells which step and why.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: false
    criteria: {
      allOf: [
        {
          query: failedRunsQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'flow'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Function failures: every invocation the Functions host records as a failed request
// (an exception escaped the function), per function name.
var functionFailuresQuery = '''
requests
| where success == false
'''

resource functionFailuresAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${baseName}-function-failures-${suffix}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Conveyor: function failures'
    description: 'A Conveyor function invocation failed (Application Insights request with success false); one alert per function.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: false
    criteria: {
      allOf: [
        {
          query: functionFailuresQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'operation_Name'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// ---------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------

output functionAppName string = functionApp.name
output functionAppHostName string = functionApp.properties.defaultHostName
output functionAppHostNames array = functionApp.properties.hostNames
output functionAppPrincipalId string = functionApp.identity.principalId
output serviceBusNamespace string = serviceBus.name
output serviceBusFullyQualifiedNamespace string = serviceBusFqdn
output workQueueName string = workQueue.name
output appStorageAccountName string = appStorage.name
output dataStorageAccountName string = dataStorage.name
output landingContainerName string = landingContainer.name
output deadLetterContainerName string = deadLetterContainer.name
output runsTableName string = runsTable.name
output instancesTableName string = instancesTable.name
output appInsightsName string = appInsights.name
output appInsightsConnectionStringSetting string = 'APPLICATIONINSIGHTS_CONNECTION_STRING'
output eventGridSystemTopicName string = systemTopic.name
output eventSubscriptionDeployed bool = deployEventSubscription
output eventsTopicName string = eventsTopic.name
output eventsTopicEndpoint string = eventsTopic.properties.endpoint
output keyVaultName string = keyVault.name
output actionGroupName string = actionGroup.name
