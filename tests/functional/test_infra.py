"""infra/main.bicep says what the app needs, and checkov (offline) finds nothing to fail.

No Bicep compiler can be installed here (the bicep CLI downloads a binary), so the template
is read as text: resource blocks are cut out by brace matching and their properties checked.
The cross-checks tie the template to the code: binding expressions (%NAME%) and connection
names used by functions/ must be app settings, the Event Grid destination must name the
real blob_created function, defaults must agree with shared/settings.py.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.backends.base import StepStatus
from shared.engine.model import RunStatus
from shared.settings import Settings
from tests.fakes import ScriptedBackend
from tests.functional.azure.telemetry.test_appinsights_exporters import (
    FakeIngestion,
    build_opencensus,
    build_otel,
    ingestion,  # noqa: F401 - fixture: the fake ingestion endpoint the exporters' own tests use
)
from tests.unit.engine.support import Harness, make_flow

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

RESOURCE_RE = re.compile(
    r"^resource\s+(\w+)\s+'([^'@]+)@([^']+)'\s*=\s*(?:\[\s*for\s+[^:]+:\s*)?(?:if\s*\(([^)]*)\)\s*)?\{",
    re.MULTILINE,
)


def _strip_comments(text: str) -> str:
    """Drop whole-line // comments (strings such as 'https://' stay intact)."""
    return "\n".join("" if line.lstrip().startswith("//") else line for line in text.splitlines())


def _block(text: str, open_brace: int) -> str:
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace : i + 1]
    raise AssertionError(f"unbalanced braces from offset {open_brace}")


def _resources(text: str) -> dict[str, dict[str, str]]:
    code = _strip_comments(text)
    found: dict[str, dict[str, str]] = {}
    for m in RESOURCE_RE.finditer(code):
        found[m.group(1)] = {
            "type": m.group(2),
            "api": m.group(3),
            "condition": (m.group(4) or "").strip(),
            "body": _block(code, m.end() - 1),
        }
    return found


def _params(text: str) -> dict[str, str | None]:
    """param name -> default expression (None when required)."""
    out: dict[str, str | None] = {}
    for m in re.finditer(r"^param\s+(\w+)\s+\w+(?:\s*=\s*(.+))?$", text, re.MULTILINE):
        out[m.group(1)] = m.group(2).strip() if m.group(2) else None
    return out


def _object_keys(body: str) -> dict[str, str]:
    """Top-level `key: value` lines of a Bicep object literal body (one level deep)."""
    keys: dict[str, str] = {}
    depth = 0
    for line in body.splitlines()[1:-1]:
        stripped = line.strip()
        if depth == 0:
            m = re.match(r"^(\w+)\s*:\s*(.*)$", stripped)
            if m:
                keys[m.group(1)] = m.group(2)
        depth += line.count("{") + line.count("[") - line.count("}") - line.count("]")
    return keys


@pytest.fixture(scope="module")
def text() -> str:
    return MAIN.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def res(text: str) -> dict[str, dict[str, str]]:
    return _resources(text)


@pytest.fixture(scope="module")
def app_settings(text: str) -> dict[str, str]:
    code = _strip_comments(text)
    m = re.search(r"^var baseAppSettings = \{", code, re.MULTILINE)
    assert m, "baseAppSettings object not found"
    return _object_keys(_block(code, m.end() - 1))


def _sub(body: str, key: str) -> str:
    """The nested object literal `key: { ... }` inside body."""
    return _block(body, body.index(f"{key}: {{") + len(key) + 2)


def _of_type(res: dict[str, dict[str, str]], rtype: str) -> dict[str, dict[str, str]]:
    return {name: r for name, r in res.items() if r["type"] == rtype}


def _has(body: str, prop: str, value: str) -> bool:
    return re.search(rf"^\s*{re.escape(prop)}:\s*{re.escape(value)}\s*$", body, re.MULTILINE) is not None


def test_resource_parser_sees_the_whole_template(res: dict[str, dict[str, str]]) -> None:
    # Guards the text parser itself: every `resource` line was cut into a block.
    assert len(res) == MAIN.read_text().count("\nresource ")
    assert all(r["body"].endswith("}") for r in res.values())


def test_function_app_is_python_311_on_flex_consumption(res: dict[str, dict[str, str]]) -> None:
    (plan,) = _of_type(res, "Microsoft.Web/serverfarms").values()
    assert _has(plan["body"], "name", "'FC1'")
    assert _has(plan["body"], "tier", "'FlexConsumption'")
    (site,) = _of_type(res, "Microsoft.Web/sites").values()
    body = site["body"]
    assert _has(body, "kind", "'functionapp,linux'")
    assert _has(body, "type", "'SystemAssigned'")
    assert _has(body, "httpsOnly", "true")
    assert _has(body, "minTlsVersion", "'1.2'")
    assert _has(body, "ftpsState", "'Disabled'")
    config = _sub(body, "functionAppConfig")
    runtime = _sub(config, "runtime")
    assert _has(runtime, "name", "'python'")
    assert _has(runtime, "version", "'3.11'")
    deployment = _sub(config, "deployment")
    assert _has(deployment, "type", "'SystemAssignedIdentity'")
    assert "scaleAndConcurrency" in config
    # Basic-auth publishing (FTP and SCM) is switched off.
    policies = _of_type(res, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {re.search(r"name: '(\w+)'", p["body"]).group(1) for p in policies.values()} == {"ftp", "scm"}  # type: ignore[union-attr]
    assert all(_has(p["body"], "allow", "false") for p in policies.values())


def test_storage_accounts_accept_identities_only(res: dict[str, dict[str, str]]) -> None:
    accounts = _of_type(res, "Microsoft.Storage/storageAccounts")
    assert len(accounts) == 2
    for name, acct in accounts.items():
        body = acct["body"]
        for prop, value in [
            ("allowSharedKeyAccess", "false"),
            ("allowBlobPublicAccess", "false"),
            ("minimumTlsVersion", "'TLS1_2'"),
            ("supportsHttpsTrafficOnly", "true"),
            ("isLocalUserEnabled", "false"),
        ]:
            assert _has(body, prop, value), f"{name}: {prop} should be {value}"
    for svc in _of_type(res, "Microsoft.Storage/storageAccounts/blobServices").values():
        assert "deleteRetentionPolicy" in svc["body"] and "containerDeleteRetentionPolicy" in svc["body"]
    containers = _of_type(res, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert all(_has(c["body"], "publicAccess", "'None'") for c in containers.values())


def test_landing_and_deadletter_containers_live_in_the_data_account(text: str, res: dict[str, dict[str, str]]) -> None:
    params = _params(text)
    assert params["landingContainerName"] == "'landing'"
    assert params["deadLetterContainerName"] == "'deadletter'"
    for container in ("landingContainer", "deadLetterContainer"):
        assert _has(res[container]["body"], "parent", "dataBlobService")
    assert _has(res["dataBlobService"]["body"], "parent", "dataStorage")
    assert _has(res["extraContainers"]["body"], "parent", "dataBlobService")
    assert _has(res["runsTable"]["body"], "name", "runsTableName")


def test_service_bus_queue_deduplicates_and_dead_letters(text: str, res: dict[str, dict[str, str]]) -> None:
    (ns,) = _of_type(res, "Microsoft.ServiceBus/namespaces").values()
    assert _has(ns["body"], "disableLocalAuth", "true")
    assert _has(ns["body"], "minimumTlsVersion", "'1.2'")
    assert _has(ns["body"], "name", "'Standard'")
    (queue,) = _of_type(res, "Microsoft.ServiceBus/namespaces/queues").values()
    body = queue["body"]
    assert _has(body, "requiresDuplicateDetection", "true")
    assert _has(body, "deadLetteringOnMessageExpiration", "true")
    for prop in ("duplicateDetectionHistoryTimeWindow", "maxDeliveryCount"):
        assert _has(body, prop, prop), f"queue {prop} should come from the parameter"
    assert _has(body, "lockDuration", "'PT${lockDurationSeconds}S'")
    params = _params(text)
    assert params["maxDeliveryCount"] == "10"
    assert params["lockDurationSeconds"] == "60"
    assert "@maxValue(300)\nparam lockDurationSeconds" in text, "the lock duration must be <= PT5M"
    # a message whose handler died comes back after the lock: the engine's grace is the same figure
    assert "CONVEYOR_VISIBILITY_TIMEOUT_SECONDS: string(lockDurationSeconds)" in text


def test_app_insights_is_workspace_based_with_local_auth_off(res: dict[str, dict[str, str]]) -> None:
    (ai,) = _of_type(res, "Microsoft.Insights/components").values()
    assert _has(ai["body"], "DisableLocalAuth", "true")
    assert _has(ai["body"], "WorkspaceResourceId", "logAnalytics.id")
    assert _of_type(res, "Microsoft.OperationalInsights/workspaces")


def test_event_subscription_sends_blob_created_to_the_real_function(text: str, res: dict[str, dict[str, str]]) -> None:
    (topic,) = _of_type(res, "Microsoft.EventGrid/systemTopics").values()
    assert _has(topic["body"], "source", "dataStorage.id")
    assert _has(topic["body"], "type", "'SystemAssigned'")
    (sub,) = _of_type(res, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
    assert sub["condition"] == "deployEventSubscription", "phase 2 only: the function must exist first"
    assert _params(text)["deployEventSubscription"] == "false"
    body = sub["body"]
    assert "'Microsoft.Storage.BlobCreated'" in body
    assert _has(body, "subjectBeginsWith", "subjectBeginsWith")
    assert _has(body, "subjectEndsWith", "subjectEndsWith")
    assert "maxDeliveryAttempts" in body and "eventTimeToLiveInMinutes" in body
    dead_letter = _sub(body, "deadLetterWithResourceIdentity")
    assert _has(dead_letter, "type", "'SystemAssigned'")
    assert _has(dead_letter, "blobContainerName", "deadLetterContainer.name")
    destination = _sub(body, "destination")
    assert _has(destination, "endpointType", "'AzureFunction'")
    assert "/functions/${blobCreatedFunctionName}'" in destination
    assert "maxEventsPerBatch" in destination and "preferredBatchSizeInKilobytes" in destination
    # The function name in the template is the one functions/blob_events.py registers.
    declared = re.search(r"^var blobCreatedFunctionName = '(\w+)'", text, re.MULTILINE)
    assert declared
    source = (ROOT / "functions" / "blob_events.py").read_text()
    registered = re.findall(r'@bp\.function_name\("(\w+)"\)\s*\n@bp\.event_grid_trigger', source)
    assert registered == [declared.group(1)]
    # The subject filter's default watches the landing container.
    assert _params(text)["subjectBeginsWith"] == "'/blobServices/default/containers/landing/blobs/'"


def test_app_settings_are_identity_based_and_cover_the_bindings(app_settings: dict[str, str], text: str) -> None:
    required = {
        "AzureWebJobsStorage__accountName",
        "ServiceBusConnection__fullyQualifiedNamespace",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "CONVEYOR_MODE",
        "CONVEYOR_QUEUE_NAME",
        "CONVEYOR_RUNS_TABLE",
        "CONVEYOR_TELEMETRY_EXPORTER",
    }
    assert required <= app_settings.keys()
    assert app_settings["CONVEYOR_MODE"] == "'azure'"
    assert app_settings["CONVEYOR_TELEMETRY_EXPORTER"] == "'opentelemetry'"
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'Authorization=AAD'"
    # Flex Consumption rejects these; the runtime comes from functionAppConfig.
    assert not {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "AzureWebJobsStorage"} & app_settings.keys()
    # No keys or connection strings with secrets anywhere in the template.
    code = _strip_comments(text)
    assert "listKeys(" not in code and "AccountKey=" not in code and "SharedAccessKey" not in code
    # Every %SETTING% binding expression and every connection name in functions/ resolves.
    sources = "\n".join(p.read_text() for p in (ROOT / "functions").glob("*.py"))
    for name in set(re.findall(r"%(\w+)%", sources)):
        assert name in app_settings, f"binding expression %{name}% has no app setting in infra"
    for conn in set(re.findall(r'connection="(\w+)"', sources)):
        assert any(k == conn or k.startswith(conn + "__") for k in app_settings), f"connection {conn} unset"
    # The telemetry exporter value is one the code knows.
    assert ast.literal_eval(app_settings["CONVEYOR_TELEMETRY_EXPORTER"]) in {"local", "opentelemetry", "opencensus"}


def test_infra_defaults_agree_with_the_app_settings_defaults(text: str, app_settings: dict[str, str]) -> None:
    params = _params(text)
    defaults = Settings()
    assert params["queueName"] == f"'{defaults.queue_name}'"
    assert params["runsTableName"] == f"'{defaults.runs_table}'"
    assert params["instancesTableName"] == f"'{defaults.instances_table_name}'"
    assert app_settings["CONVEYOR_INSTANCES_TABLE"] == "instancesTable.name"
    assert app_settings["CONVEYOR_QUEUE_NAME"] == "workQueue.name"
    assert app_settings["CONVEYOR_RUNS_TABLE"] == "runsTable.name"
    # The app's retry bookkeeping reads the same number the queue dead-letters at.
    assert app_settings["CONVEYOR_MAX_DELIVERY_COUNT"] == "string(maxDeliveryCount)"
    assert Settings.from_env({"CONVEYOR_MAX_DELIVERY_COUNT": "10"}).max_delivery_count == 10


def test_role_assignments_use_builtin_ids_and_deterministic_names(text: str, res: dict[str, dict[str, str]]) -> None:
    m = re.search(r"^var roleIds = \{", text, re.MULTILINE)
    assert m
    role_ids = {k: ast.literal_eval(v) for k, v in _object_keys(_block(text, m.end() - 1)).items()}
    guid = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    assert all(guid.match(v) for v in role_ids.values()) and len(set(role_ids.values())) == len(role_ids)
    assignments = _of_type(res, "Microsoft.Authorization/roleAssignments")
    used: list[tuple[str, str, str]] = []
    for name, ra in assignments.items():
        body = ra["body"]
        assert re.search(r"^\s*name: guid\(", body, re.MULTILINE), f"{name}: name must be guid(...)"
        assert _has(body, "principalType", "'ServicePrincipal'"), name
        role = re.search(r"roleDefinitions', roleIds\.(\w+)\)", body)
        scope = re.search(r"^\s*scope: (\w+)$", body, re.MULTILINE)
        principal = re.search(r"principalId: (\w+)\.identity\.principalId", body)
        assert role and scope and principal, name
        assert role.group(1) in role_ids
        used.append((principal.group(1), role.group(1), scope.group(1)))
    expected = {
        ("functionApp", "storageBlobDataOwner", "appStorage"),
        ("functionApp", "storageQueueDataContributor", "appStorage"),
        ("functionApp", "storageTableDataContributor", "appStorage"),
        ("functionApp", "storageBlobDataOwner", "dataStorage"),
        ("functionApp", "storageQueueDataContributor", "dataStorage"),
        ("functionApp", "storageTableDataContributor", "dataStorage"),
        ("functionApp", "serviceBusDataSender", "workQueue"),
        ("functionApp", "serviceBusDataReceiver", "workQueue"),
        ("functionApp", "monitoringMetricsPublisher", "appInsights"),
        ("functionApp", "keyVaultSecretsUser", "keyVault"),
        ("functionApp", "eventGridDataSender", "eventsTopic"),
        ("systemTopic", "storageBlobDataContributor", "deadLetterContainer"),
    }
    assert set(used) == expected and len(used) == len(expected)


# ------------------------------------------------------------------ API versions, Key Vault


def test_api_versions_are_ga(res: dict[str, dict[str, str]]) -> None:
    previews = {f"{r['type']}@{r['api']}" for r in res.values() if "preview" in r["api"]}
    assert not previews, previews
    assert all(r["api"] == "2024-01-01" for r in res.values() if r["type"].startswith("Microsoft.ServiceBus/"))
    # GA diagnostic settings (2016-09-01): one setting named 'service' per resource.
    assert {r["api"] for r in res.values() if r["type"] == "Microsoft.Insights/diagnosticSettings"} == {"2016-09-01"}


def _decorators(text: str, param: str) -> list[str]:
    """The @decorator lines directly above `param <name>`."""
    lines = text.splitlines()
    (index,) = [i for i, line in enumerate(lines) if re.match(rf"^param {param}\b", line)]
    found = []
    for line in reversed(lines[:index]):
        if not line.startswith("@"):
            break
        found.append(line)
    return found


def _var(code: str, name: str) -> str:
    """The expression of `var <name> = ...`, continued over lines while braces are open."""
    m = re.search(rf"^var {name} = (.+)$", code, re.MULTILINE)
    assert m, f"var {name} not found"
    end = m.end()
    while code[m.start(1) : end].count("{") > code[m.start(1) : end].count("}"):
        end = code.index("\n", end + 1) if "\n" in code[end + 1 :] else len(code)
    return " ".join(line.strip() for line in code[m.start(1) : end].splitlines())


def test_key_vault_is_rbac_with_purge_protection(res: dict[str, dict[str, str]]) -> None:
    (vault,) = _of_type(res, "Microsoft.KeyVault/vaults").values()
    body = vault["body"]
    for prop, value in [
        ("enableRbacAuthorization", "true"),
        ("enableSoftDelete", "true"),
        ("enablePurgeProtection", "true"),
        ("softDeleteRetentionInDays", "keyVaultSoftDeleteRetentionDays"),
        ("enabledForTemplateDeployment", "false"),
        # Public network as the storage accounts have it (no VNet in this deployment).
        ("publicNetworkAccess", "'Enabled'"),
        ("defaultAction", "'Allow'"),
    ]:
        assert _has(body, prop, value), f"key vault: {prop} should be {value}"
    assert "accessPolicies" not in body, "RBAC mode: no access policies"
    accounts = _of_type(res, "Microsoft.Storage/storageAccounts").values()
    assert all(_has(acct["body"], "publicNetworkAccess", "'Enabled'") for acct in accounts)


def test_secrets_come_from_secure_parameters_and_reach_the_app_as_key_vault_references(
    text: str, res: dict[str, dict[str, str]], app_settings: dict[str, str]
) -> None:
    code = _strip_comments(text)
    secrets = _of_type(res, "Microsoft.KeyVault/vaults/secrets")
    # settings var -> (app setting, secure parameter, secret resource, what the app reads from it)
    cases: dict[str, tuple[str, str, str, Callable[[Settings], str | None]]] = {
        "devopsSecretSettings": (
            "CONVEYOR_DEVOPS_SECRET",
            "devopsSecret",
            "devopsSecretValue",
            lambda s: s.devops_secret,
        ),
        "databricksTokenSettings": (
            "CONVEYOR_DATABRICKS_TOKEN",
            "databricksToken",
            "databricksTokenValue",
            lambda s: s.azure.databricks_token,
        ),
    }
    assert set(secrets) == {case[2] for case in cases.values()}
    for var, (setting, param, resource, read) in cases.items():
        assert "@secure()" in _decorators(text, param), f"{param} must be @secure()"
        assert _params(text)[param] == "''", f"{param}: optional, no default value"
        secret = secrets[resource]["body"]
        assert _has(secret, "parent", "keyVault")
        assert _has(secret, "value", param)
        assert _has(secret, "contentType", "'text/plain'")
        # Created only when given, and the setting exists exactly then: an unresolved
        # reference would reach the app as the literal '@Microsoft.KeyVault(...)' text.
        flag = secrets[resource]["condition"]
        assert _var(code, flag) == f"!empty({param})"
        value = _var(code, var)
        assert value.startswith(f"{flag} ? {{") and value.endswith("} : {}"), value
        assert f"{setting}: '@Microsoft.KeyVault(SecretUri=${{{resource}.properties.secretUri}})'" in value
        # The setting's name is the one the app reads.
        assert read(Settings.from_env({setting: "from-key-vault"})) == "from-key-vault"
        # The value goes to the vault and nowhere else: no setting, var or output holds it.
        uses = [line.strip() for line in code.splitlines() if re.search(rf"\b{param}\b", line)]
        assert uses == [f"param {param} string = ''", f"var {flag} = !empty({param})", f"value: {param}"], uses
        assert not re.search(rf"^output .*\b({param}|{resource})\b", code, re.MULTILINE)
    # A token means personal-access-token auth for the Databricks adapter.
    assert "CONVEYOR_DATABRICKS_AUTH: 'pat'" in _var(code, "databricksTokenSettings")
    assert Settings.from_env({"CONVEYOR_DATABRICKS_AUTH": "pat"}).azure.databricks_auth == "pat"
    # Both maps are merged into the app settings (extraAppSettings last, so it still wins).
    assert "items(union(baseAppSettings, devopsSecretSettings, databricksTokenSettings, extraAppSettings))" in code
    assert not {"CONVEYOR_DEVOPS_SECRET", "CONVEYOR_DATABRICKS_TOKEN"} & app_settings.keys()


# ------------------------------------------------------------------ lifecycle events topic

EVENTS_SETTING = "CONVEYOR_EVENTS_TOPIC_ENDPOINT"


def test_events_topic_takes_cloud_events_from_identities_only(
    res: dict[str, dict[str, str]], app_settings: dict[str, str]
) -> None:
    topics = _of_type(res, "Microsoft.EventGrid/topics")
    assert set(topics) == {"eventsTopic"}
    body = topics["eventsTopic"]["body"]
    assert _has(body, "inputSchema", "'CloudEventSchemaV1_0'")
    assert _has(body, "disableLocalAuth", "true"), "identity-based publishing only"
    assert _has(body, "minimumTlsVersionAllowed", "'1.2'")
    assert _has(body, "publicNetworkAccess", "'Enabled'")
    assert app_settings[EVENTS_SETTING] == "eventsTopic.properties.endpoint"
    # The app's EventGrid Data Sender role on it is in the role-assignment test's expected set.


def test_events_topic_setting_is_the_one_the_publisher_reads() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "shared").rglob("*.py"))
    if EVENTS_SETTING not in sources:
        pytest.skip(f"no publisher in shared/ reads {EVENTS_SETTING} on this branch yet")
    assert EVENTS_SETTING in (ROOT / "local.settings.sample.json").read_text()


# ------------------------------------------------------------------ diagnostics and alerts


def test_every_resource_with_logs_sends_them_to_log_analytics(res: dict[str, dict[str, str]]) -> None:
    settings = _of_type(res, "Microsoft.Insights/diagnosticSettings")
    scopes = [re.search(r"^\s*scope: (\w+)$", d["body"], re.MULTILINE) for d in settings.values()]
    assert all(scopes)
    assert sorted(m.group(1) for m in scopes if m) == sorted(
        [
            "appBlobService",
            "dataBlobService",
            "dataTableService",
            "serviceBus",
            "keyVault",
            "functionApp",
            "systemTopic",
            "eventsTopic",
        ]
    )
    for name, d in settings.items():
        assert _has(d["body"], "workspaceId", "logAnalytics.id"), name
        # 2016-09-01 has no category groups: every log category is named
        assert "categoryGroup" not in d["body"], name
        assert re.search(r"^\s*category: '\w+'$", d["body"], re.MULTILINE), name
        assert _has(d["body"], "name", "'service'"), name


def _kql(text: str, var: str) -> list[str]:
    """The stages of a KQL query held in a multi-line string var."""
    m = re.search(rf"^var {var} = '''\n(.*?)'''$", text, re.MULTILINE | re.DOTALL)
    assert m, f"var {var} is not a multi-line string"
    return [stage.strip() for stage in m.group(1).split("|") if stage.strip()]


def _run_kql(stages: list[str], tables: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Evaluate the small KQL subset the alert queries use; any other stage is an error.

    Supported: a table name, ``where COL == "text"|true|false`` and
    ``extend NAME = tostring(customDimensions.KEY), ...``.
    """
    rows = [dict(r) for r in tables[stages[0]]]
    for stage in stages[1:]:
        if m := re.fullmatch(r'where (\w+) == (?:"([^"]*)"|(true|false))', stage):
            col, text_value, bool_value = m.groups()
            want: Any = text_value if bool_value is None else bool_value == "true"
            rows = [r for r in rows if r.get(col) == want]
        elif m := re.fullmatch(r"extend (.+)", stage):
            for assignment in m.group(1).split(","):
                am = re.fullmatch(r"\s*(\w+) = tostring\(customDimensions\.(\w+)\)\s*", assignment)
                assert am, f"unsupported extend: {assignment!r}"
                for r in rows:
                    value = r["customDimensions"].get(am.group(2))
                    r[am.group(1)] = "" if value is None else str(value)
        else:
            raise AssertionError(f"unsupported KQL stage: {stage!r}")
    return rows


def test_alerts_notify_the_action_group_e_mail(text: str, res: dict[str, dict[str, str]]) -> None:
    (group,) = _of_type(res, "Microsoft.Insights/actionGroups").values()
    assert _params(text)["alertEmail"] is None, "alertEmail is required: alerts must reach someone"
    assert _has(group["body"], "emailAddress", "alertEmail")
    assert _has(group["body"], "enabled", "true")
    metric_alerts = _of_type(res, "Microsoft.Insights/metricAlerts")
    log_alerts = _of_type(res, "Microsoft.Insights/scheduledQueryRules")
    assert set(metric_alerts) == {"deadLetterAlert"}
    assert set(log_alerts) == {"failedRunsAlert", "functionFailuresAlert"}
    for name, alert in {**metric_alerts, **log_alerts}.items():
        assert "actionGroup.id" in alert["body"], f"{name} notifies nobody"
        assert _has(alert["body"], "enabled", "true"), name
        assert re.search(r"^\s*scopes: \[\s*\w+\.id\s*\]", alert["body"], re.MULTILINE), name

    dead = metric_alerts["deadLetterAlert"]["body"]
    assert re.search(r"scopes: \[\s*serviceBus\.id\s*\]", dead)
    assert _has(dead, "metricNamespace", "'Microsoft.ServiceBus/namespaces'")
    assert _has(dead, "metricName", "'DeadletteredMessages'")
    assert _has(dead, "name", "'EntityName'") and re.search(r"values: \[\s*workQueue\.name\s*\]", dead)
    assert _has(dead, "operator", "'GreaterThan'") and _has(dead, "threshold", "0")

    for name, query in (("failedRunsAlert", "failedRunsQuery"), ("functionFailuresAlert", "functionFailuresQuery")):
        body = log_alerts[name]["body"]
        assert re.search(r"scopes: \[\s*appInsights\.id\s*\]", body), f"{name} must query Application Insights"
        assert _has(body, "query", query)
        assert _has(body, "timeAggregation", "'Count'")
        assert _has(body, "operator", "'GreaterThan'") and _has(body, "threshold", "0")
    # One alert per flow / per function: the dimension is a column the query returns.
    assert _has(log_alerts["failedRunsAlert"]["body"], "name", "'flow'")
    assert "flow = tostring(customDimensions.flow)" in " ".join(_kql(text, "failedRunsQuery"))
    assert _kql(text, "functionFailuresQuery") == ["requests", "where success == false"]
    assert _has(log_alerts["functionFailuresAlert"]["body"], "name", "'operation_Name'")


@pytest.mark.parametrize("exporter", ["opentelemetry", "opencensus"])
def test_failed_runs_query_finds_exactly_the_failed_run_the_exporters_send(
    text: str, request: pytest.FixtureRequest, exporter: str
) -> None:
    """The engine's own run.finished events, through the real exporter, as Application Insights stores them.

    Application Insights keeps an EventData envelope as a ``customEvents`` row whose
    ``name`` is baseData.name and ``customDimensions`` baseData.properties. One run fails,
    one succeeds; the alert query must return exactly the failed one, with its flow.
    """
    fake: FakeIngestion = request.getfixturevalue("ingestion")
    build = {"opentelemetry": build_otel, "opencensus": build_opencensus}[exporter]
    tel = build(fake.connection_string)
    failing = Harness(
        make_flow(),
        flow_name="nightly",
        backend=ScriptedBackend(outcomes={("extract", 1): StepStatus("failed", error="boom", retryable=False)}),
    )
    passing = Harness(make_flow(), flow_name="retrain")
    try:
        for harness, run_id in ((failing, "run-failed"), (passing, "run-ok")):
            harness.executor.telemetry = tel
            harness.create(run_id)
            harness.drain()
        tel.flush()
    finally:
        tel.close()
    assert [r.status for r in (failing.store.get("run-failed"), passing.store.get("run-ok")) if r] == [
        RunStatus.FAILED,
        RunStatus.SUCCEEDED,
    ]
    custom_events = [
        {"name": e["data"]["baseData"]["name"], "customDimensions": e["data"]["baseData"].get("properties") or {}}
        for e in fake.of("EventData")
    ]
    assert sum(e["name"] == "run.finished" for e in custom_events) == 2, custom_events
    hits = _run_kql(_kql(text, "failedRunsQuery"), {"customEvents": custom_events})
    assert [(h["customDimensions"].get("run_id"), h["flow"], h["status"]) for h in hits] == [
        ("run-failed", "nightly", "failed")
    ]


def test_parameters_file_only_sets_declared_parameters(text: str) -> None:
    declared = _params(text)
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(declared)
    assert given["deployEventSubscription"]["value"] is False


def test_checkov_suppressions_are_inline_justified_and_parseable(text: str) -> None:
    skips = re.findall(r"//\s*checkov:skip=(CKV2?_AZURE_\d+):(.*)$", text, re.MULTILINE)
    assert skips, "expected the documented suppressions"
    for check, reason in skips:
        assert len(reason.strip()) >= 40, f"{check}: give the reason, not just the id"
    # checkov's Bicep parser (pycep) rejects more than 4 consecutive comment lines inside
    # an object: the scan would then report a parsing error instead of checking anything.
    run = 0
    for line in text.splitlines():
        if line.startswith((" ", "\t")) and line.strip().startswith("//"):
            run += 1
            assert run <= 4, f"more than 4 consecutive comment lines before: {line.strip()[:60]}"
        else:
            run = 0


@pytest.mark.skipif(not CHECKOV.exists(), reason="no .venv-checkov: run `make infra-check` (make test does it first)")
def test_checkov_finds_no_failed_check_offline() -> None:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="true")
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep,) = [r for r in reports if r.get("check_type") == "bicep"]
    summary = bicep["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["failed"] == 0, [c["check_id"] for c in bicep["results"]["failed_checks"]]
    assert summary["passed"] > 0
    for skipped in bicep["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "").strip()) >= 40, skipped["check_id"]
