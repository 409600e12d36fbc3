"""Every app setting Conveyor reads, in one place.

Names follow Azure Functions conventions (flat env vars; ``__`` for nested connection
settings). ``local.settings.sample.json`` lists and explains each one; keep them in step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from shared.errors import ValidationError

Mode = Literal["local", "azure"]

# Azurite's published development account (not a secret: it is in Azurite's docs).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Port names that can be switched between adapters one by one (CONVEYOR_ADAPTER_<PORT>).
PORTS = ("queue", "store", "blobs", "batch", "databricks", "azureml", "registry", "deployer", "telemetry")


log = logging.getLogger("conveyor.settings")

# What App Service hands an app for a Key Vault reference it could not resolve (missing secret,
# no "Key Vault Secrets User" role yet, firewall): the reference text itself.
UNRESOLVED_KEY_VAULT = "@Microsoft.KeyVault("


def without_unresolved_references(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without settings whose value is an unresolved Key Vault reference, each logged as an
    error naming it: such a value must never act as the secret (a DevOps hook secret equal to
    the reference text would be guessable), so the setting counts as not set (hooks refused,
    Databricks auth failing with its own clear error)."""
    out = {}
    for name, value in env.items():
        if value.strip().startswith(UNRESOLVED_KEY_VAULT):
            log.error(
                "setting %s is an unresolved Key Vault reference; treating it as not set "
                "(check the secret exists and the app's identity is Key Vault Secrets User)",
                name,
            )
            continue
        out[name] = value
    return out


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValidationError(f"must be an integer, got {raw!r}", field=name) from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValidationError(f"must be a number, got {raw!r}", field=name) from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise ValidationError(f"must be a finite number, got {raw!r}", field=name)
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value <= 0:
        raise ValidationError(f"must be more than 0, got {value}", field=name)
    return value


def _non_negative(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise ValidationError(f"must be 0 (off) or more, got {value}", field=name)
    return value


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ValidationError(f"must be at least 1, got {value}", field=name)
    return value


def _list(raw: str | None) -> tuple[str, ...]:
    """A comma-separated setting as its non-empty items, in order, without repeats."""
    return tuple(dict.fromkeys(part.strip() for part in (raw or "").split(",") if part.strip()))


@dataclass(frozen=True)
class IdentityConnection:
    """An identity-based connection as Functions defines them (``<Name>__serviceUri`` etc.).

    ``credential`` is ``managedidentity`` or empty (DefaultAzureCredential); ``client_id``
    picks a user-assigned identity.
    """

    name: str
    connection_string: str | None = None
    account_name: str | None = None
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    fully_qualified_namespace: str | None = None
    credential: str | None = None
    client_id: str | None = None

    @classmethod
    def read(cls, env: Mapping[str, str], name: str, connection_setting: str | None = None) -> IdentityConnection:
        """``connection_setting`` names the plain connection-string setting (default: ``name``)."""

        def get(suffix: str) -> str | None:
            return env.get(f"{name}__{suffix}") or None

        return cls(
            name=name,
            connection_string=env.get(connection_setting or name) or None,
            account_name=get("accountName"),
            blob_service_uri=get("blobServiceUri") or get("serviceUri"),
            queue_service_uri=get("queueServiceUri"),
            table_service_uri=get("tableServiceUri"),
            fully_qualified_namespace=get("fullyQualifiedNamespace"),
            credential=get("credential"),
            client_id=get("clientId"),
        )

    def service_uri(self, service: str) -> str | None:
        """``https://<account>.<service>.core.windows.net`` unless given explicitly."""
        explicit = {
            "blob": self.blob_service_uri,
            "queue": self.queue_service_uri,
            "table": self.table_service_uri,
        }[service]
        if explicit:
            return explicit.rstrip("/")
        if self.account_name:
            return f"https://{self.account_name}.{service}.core.windows.net"
        return None

    @property
    def configured(self) -> bool:
        return bool(
            self.connection_string
            or self.account_name
            or self.blob_service_uri
            or self.queue_service_uri
            or self.table_service_uri
            or self.fully_qualified_namespace
        )


@dataclass(frozen=True)
class AzureSettings:
    """What the Azure adapters read (CONVEYOR_MODE=azure). Identity-based by default."""

    storage: IdentityConnection = field(default_factory=lambda: IdentityConnection("CONVEYOR_STORAGE"))
    service_bus: IdentityConnection = field(default_factory=lambda: IdentityConnection("ServiceBusConnection"))
    managed_identity_client_id: str | None = None
    # Azure Batch
    batch_account_url: str | None = None
    batch_pool_id: str | None = None
    batch_resource_identity: str | None = None  # ARM id of the pool's user-assigned identity for blob access
    # Databricks
    databricks_host: str | None = None
    databricks_auth: str = "azure-msi"  # azure-msi | pat | azure-client-secret
    databricks_token: str | None = None
    databricks_client_id: str | None = None
    databricks_client_secret: str | None = None
    databricks_tenant_id: str | None = None
    databricks_resource_id: str | None = None
    # Azure ML
    azureml_subscription_id: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    azureml_sdk: str = "v2"  # v2 (azure-ai-ml, supported) | v1 (azureml-core, past support 2026-06-30)
    azureml_compute: str | None = None
    azureml_deployment_target: str = "online"  # v2: online endpoint; v1: aci | aks
    azureml_aks_cluster: str | None = None

    @classmethod
    def read(cls, env: Mapping[str, str]) -> AzureSettings:
        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            storage=IdentityConnection.read(env, "CONVEYOR_STORAGE", "CONVEYOR_STORAGE_CONNECTION"),
            service_bus=IdentityConnection.read(env, "ServiceBusConnection"),
            managed_identity_client_id=get("CONVEYOR_MANAGED_IDENTITY_CLIENT_ID"),
            batch_account_url=get("CONVEYOR_BATCH_ACCOUNT_URL"),
            batch_pool_id=get("CONVEYOR_BATCH_POOL_ID"),
            batch_resource_identity=get("CONVEYOR_BATCH_RESOURCE_IDENTITY"),
            databricks_host=get("CONVEYOR_DATABRICKS_HOST"),
            databricks_auth=(get("CONVEYOR_DATABRICKS_AUTH") or "azure-msi").lower(),
            databricks_token=get("CONVEYOR_DATABRICKS_TOKEN"),
            databricks_client_id=get("CONVEYOR_DATABRICKS_CLIENT_ID"),
            databricks_client_secret=get("CONVEYOR_DATABRICKS_CLIENT_SECRET"),
            databricks_tenant_id=get("CONVEYOR_DATABRICKS_TENANT_ID"),
            databricks_resource_id=get("CONVEYOR_DATABRICKS_RESOURCE_ID"),
            azureml_subscription_id=get("CONVEYOR_AZUREML_SUBSCRIPTION_ID"),
            azureml_resource_group=get("CONVEYOR_AZUREML_RESOURCE_GROUP"),
            azureml_workspace=get("CONVEYOR_AZUREML_WORKSPACE"),
            azureml_sdk=(get("CONVEYOR_AZUREML_SDK") or "v2").lower(),
            azureml_compute=get("CONVEYOR_AZUREML_COMPUTE"),
            azureml_deployment_target=(get("CONVEYOR_AZUREML_DEPLOYMENT_TARGET") or "online").lower(),
            azureml_aks_cluster=get("CONVEYOR_AZUREML_AKS_CLUSTER"),
        )

    def require(self, field_name: str, setting: str) -> str:
        """The value of a required Azure setting, or a ValidationError naming the app setting."""
        value = getattr(self, field_name)
        if not value:
            raise ValidationError("is required in azure mode", field=setting)
        return str(value)


@dataclass(frozen=True)
class Settings:
    mode: Mode = "local"
    root: Path = field(default_factory=Path.cwd)
    home: Path = field(default_factory=lambda: Path.cwd() / ".conveyor")
    flows_file: Path = field(default_factory=lambda: Path.cwd() / "flows.yaml")
    # storage (queue / table / blob). Locally: Azurite on loopback.
    storage_connection: str | None = None
    azurite_host: str = "127.0.0.1"
    azurite_blob_port: int = 10000
    azurite_queue_port: int = 10001
    azurite_table_port: int = 10002
    queue_name: str = "conveyor-work"
    runs_table: str = "conveyorruns"
    instances_table: str = ""  # "" = runs_table + "instances"
    max_delivery_count: int = 5
    # local host
    host_port: int = 7071
    scoring_port: int = 5088
    watch_interval_seconds: float = 1.0
    batch_max_workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    # Azure DevOps service hook authentication
    devops_username: str | None = None
    devops_password: str | None = None
    devops_secret_header: str = "X-Conveyor-Secret"  # noqa: S105 - a header name, not a secret
    devops_secret: str | None = None
    # registry / telemetry
    mlflow_tracking_uri: str | None = None
    # local | opentelemetry | opencensus; "" = by adapter("telemetry"): azure -> opentelemetry, local -> local
    telemetry_exporter: str = ""
    appinsights_connection_string: str | None = None
    appinsights_authentication_string: str | None = None  # "Authorization=AAD[;ClientId=<guid>]"
    # stall recovery (shared/ingest/sweeper.py): a run is nudged once its next message is overdue by
    # more than the visibility timeout (how long a taken message stays hidden: the local workers'
    # receive; in Azure set it to the Service Bus lock duration) plus the margin
    visibility_timeout_seconds: int = 30
    stall_margin_seconds: int = 5
    sweep_interval_seconds: float = 10.0  # the local scheduler's sweep (in Azure: CONVEYOR_SCHEDULE_TICK)
    stall_idle_seconds: int = 900  # a running run with no deadline (only fan-outs active) idle this long
    # fault injection (shared/faults.py): this share of storage and backend calls fail on purpose
    fault_rate: float = 0.0
    fault_seed: int | None = None

    # lifecycle events out (shared.events): an Event Grid custom topic (identity-based) and/or webhooks
    events_topic_endpoint: str | None = None
    events_webhooks: tuple[str, ...] = ()
    website_hostname: str | None = None  # set by App Service/Functions; the webhook handshake's origin
    # retention (shared.ops.retention): 0 days = off
    retention_days: int = 30
    retention_statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled")
    retention_schedule: str = "0 0 3 * * *"
    adapters: Mapping[str, str] = field(default_factory=dict)
    azure: AzureSettings = field(default_factory=AzureSettings)
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = without_unresolved_references(os.environ if env is None else env)
        root = Path(env.get("CONVEYOR_ROOT") or Path.cwd()).resolve()
        home = Path(env.get("CONVEYOR_HOME") or root / ".conveyor").resolve()
        mode = env.get("CONVEYOR_MODE", "local").strip().lower()
        if mode not in ("local", "azure"):
            raise ValidationError(f"must be 'local' or 'azure', got {mode!r}", field="CONVEYOR_MODE")
        adapters = {}
        for port in PORTS:
            value = env.get(f"CONVEYOR_ADAPTER_{port.upper()}")
            if value:
                adapters[port] = value.strip().lower()
        return cls(
            mode=mode,  # type: ignore[arg-type]
            root=root,
            home=home,
            flows_file=Path(env.get("CONVEYOR_FLOWS_FILE") or root / "flows.yaml"),
            storage_connection=env.get("CONVEYOR_STORAGE_CONNECTION") or env.get("AzureWebJobsStorage") or None,
            azurite_host=env.get("CONVEYOR_AZURITE_HOST", "127.0.0.1"),
            azurite_blob_port=_int(env, "CONVEYOR_AZURITE_BLOB_PORT", 10000),
            azurite_queue_port=_int(env, "CONVEYOR_AZURITE_QUEUE_PORT", 10001),
            azurite_table_port=_int(env, "CONVEYOR_AZURITE_TABLE_PORT", 10002),
            queue_name=env.get("CONVEYOR_QUEUE_NAME", "conveyor-work"),
            runs_table=env.get("CONVEYOR_RUNS_TABLE", "conveyorruns"),
            instances_table=env.get("CONVEYOR_INSTANCES_TABLE", "").strip(),
            max_delivery_count=_int(env, "CONVEYOR_MAX_DELIVERY_COUNT", 5),
            host_port=_int(env, "CONVEYOR_HOST_PORT", 7071),
            scoring_port=_int(env, "CONVEYOR_SCORING_PORT", 5088),
            watch_interval_seconds=float(env.get("CONVEYOR_WATCH_INTERVAL_SECONDS", "1.0")),
            batch_max_workers=_int(env, "CONVEYOR_BATCH_MAX_WORKERS", os.cpu_count() or 2),
            devops_username=env.get("CONVEYOR_DEVOPS_USERNAME") or None,
            devops_password=env.get("CONVEYOR_DEVOPS_PASSWORD") or None,
            devops_secret_header=env.get("CONVEYOR_DEVOPS_SECRET_HEADER", "X-Conveyor-Secret"),
            devops_secret=env.get("CONVEYOR_DEVOPS_SECRET") or None,
            mlflow_tracking_uri=env.get("CONVEYOR_MLFLOW_TRACKING_URI") or None,
            telemetry_exporter=env.get("CONVEYOR_TELEMETRY_EXPORTER", "").strip().lower(),
            appinsights_connection_string=env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or None,
            appinsights_authentication_string=env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") or None,
            visibility_timeout_seconds=_positive(env, "CONVEYOR_VISIBILITY_TIMEOUT_SECONDS", 30),
            stall_margin_seconds=_non_negative(env, "CONVEYOR_STALL_MARGIN_SECONDS", 5),
            sweep_interval_seconds=_positive_float(env, "CONVEYOR_SWEEP_INTERVAL_SECONDS", 10.0),
            stall_idle_seconds=_positive(env, "CONVEYOR_STALL_IDLE_SECONDS", 900),
            fault_rate=_float(env, "CONVEYOR_FAULT_RATE", 0.0),
            fault_seed=_int(env, "CONVEYOR_FAULT_SEED", -1) if env.get("CONVEYOR_FAULT_SEED") else None,
            events_topic_endpoint=(env.get("CONVEYOR_EVENTS_TOPIC_ENDPOINT") or "").strip() or None,
            events_webhooks=_list(env.get("CONVEYOR_EVENTS_WEBHOOKS")),
            website_hostname=env.get("WEBSITE_HOSTNAME") or None,
            retention_days=_non_negative(env, "CONVEYOR_RETENTION_DAYS", 30),
            retention_statuses=_list(env.get("CONVEYOR_RETENTION_STATUSES")) or ("succeeded", "failed", "cancelled"),
            retention_schedule=(env.get("CONVEYOR_RETENTION_SCHEDULE") or "").strip() or "0 0 3 * * *",
            adapters=adapters,
            azure=AzureSettings.read(env),
            env=env,
        )

    @property
    def instances_table_name(self) -> str:
        """The table of for_each instances: CONVEYOR_INSTANCES_TABLE, else the runs table's name + ``instances``."""
        return self.instances_table or (self.runs_table + "instances")[:63]

    def adapter(self, port: str) -> str:
        """Which adapter serves ``port``: the per-port override, else the mode."""
        return self.adapters.get(port, self.mode)

    @property
    def connection_string(self) -> str:
        """Storage connection string; locally the Azurite dev account on our ports."""
        conn = self.storage_connection
        if conn and conn.strip() != "UseDevelopmentStorage=true":
            return conn
        h = self.azurite_host
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://{h}:{self.azurite_blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint=http://{h}:{self.azurite_queue_port}/{AZURITE_ACCOUNT};"
            f"TableEndpoint=http://{h}:{self.azurite_table_port}/{AZURITE_ACCOUNT};"
        )

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


_cached: Settings | None = None


def get_settings() -> Settings:
    """Settings from the process environment, read once."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached


def reset_settings() -> None:
    global _cached
    _cached = None
