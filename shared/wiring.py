"""Composition root: builds the adapters the settings ask for, lazily.

Nothing heavy is imported until a port is first used, so a function that only ingests
never loads the Batch, Databricks or Azure ML SDKs. Tests build ``Services`` with their own
adapters through the keyword overrides.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.errors import ValidationError
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from shared.backends.base import JobBackend
    from shared.blobs.base import BlobStore
    from shared.deploy.base import Deployer
    from shared.events.publisher import LifecycleEvents
    from shared.flows.model import FlowsFile
    from shared.queue.base import WorkQueue
    from shared.registry.base import ModelRegistry
    from shared.store.base import InstanceStore, RunStore
    from shared.telemetry.base import Telemetry


class Services:
    """The ports, each built on first use from settings unless handed in."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or get_settings()
        for name, value in overrides.items():
            if name == "backends":
                self._backends = dict(value)
            else:
                self.__dict__[name] = value  # pre-fills a cached_property
        self.__dict__.setdefault("_backends", {})

    def _unsupported(self, port: str) -> ValidationError:
        return ValidationError(
            f"no {self.settings.adapter(port)!r} adapter for {port}", field=f"CONVEYOR_ADAPTER_{port.upper()}"
        )

    @cached_property
    def flows(self) -> FlowsFile:
        from shared.flows.loader import load_flows

        return load_flows(self.settings.flows_file)

    @cached_property
    def queue(self) -> WorkQueue:
        if self.settings.adapter("queue") == "local":
            from shared.queue.storage_queue import StorageQueueWorkQueue

            return StorageQueueWorkQueue.from_settings(self.settings)
        if self.settings.adapter("queue") == "azure":
            from shared.queue.servicebus import ServiceBusWorkQueue

            return ServiceBusWorkQueue.from_settings(self.settings)
        raise self._unsupported("queue")

    @cached_property
    def store(self) -> RunStore:
        from shared.store.table import TableRunStore

        return TableRunStore.from_settings(self.settings)

    @cached_property
    def instances(self) -> InstanceStore:
        """The fan-outs of for_each steps, in the same storage account as the runs."""
        from shared.store.table_instances import TableInstanceStore

        return TableInstanceStore.from_settings(self.settings)

    @cached_property
    def blobs(self) -> BlobStore:
        from shared.blobs.storage import AzureBlobStore

        return AzureBlobStore.from_settings(self.settings)

    @cached_property
    def registry(self) -> ModelRegistry:
        if self.settings.adapter("registry") == "local":
            from shared.registry.mlflow_registry import MlflowRegistry

            return MlflowRegistry.from_settings(self.settings)
        if self.settings.adapter("registry") == "azure":
            if self.settings.azure.azureml_sdk == "v1":
                from shared.registry.azureml_v1 import AzureMLv1Registry

                return AzureMLv1Registry.from_settings(self.settings)
            from shared.registry.azureml_v2 import AzureMLRegistry

            return AzureMLRegistry.from_settings(self.settings)
        raise self._unsupported("registry")

    @cached_property
    def deployer(self) -> Deployer:
        if self.settings.adapter("deployer") == "local":
            from shared.deploy.local_endpoint import LocalScoringDeployer

            return LocalScoringDeployer.from_settings(self.settings)
        if self.settings.adapter("deployer") == "azure":
            if self.settings.azure.azureml_sdk == "v1":
                from shared.deploy.azureml_v1 import AzureMLWebServiceDeployer

                return AzureMLWebServiceDeployer.from_settings(self.settings)
            from shared.deploy.azureml_v2 import AzureMLOnlineDeployer

            return AzureMLOnlineDeployer.from_settings(self.settings)
        raise self._unsupported("deployer")

    @cached_property
    def events(self) -> LifecycleEvents | None:
        """Lifecycle events out, or None when no sink is configured. The outbox lives in the
        run store's account, so a Services handed its own run store (a test double) gets
        none unless it is handed ``events`` too."""
        from shared.store.table import TableRunStore

        if not isinstance(self.store, TableRunStore):
            return None
        from shared.events.publisher import LifecycleEvents

        return LifecycleEvents.from_settings(self.settings)

    @cached_property
    def telemetry(self) -> Telemetry:
        from shared.telemetry.factory import build_telemetry

        return build_telemetry(self.settings)

    def backend(self, kind: str) -> JobBackend:
        """The JobBackend serving a step kind, built on first use (behind the fault injector
        when CONVEYOR_FAULT_RATE asks for one: shared.faults)."""
        if kind not in self._backends:
            from shared.faults import FaultInjector, FaultyBackend

            backend = self._build_backend(kind)
            faults = FaultInjector.from_settings(self.settings)
            self._backends[kind] = FaultyBackend(backend, faults) if faults is not None else backend
        return self._backends[kind]

    def _build_backend(self, kind: str) -> JobBackend:
        s = self.settings
        if kind in ("register", "deploy"):
            return self._model_step(kind)
        adapter = s.adapter(kind)
        if adapter == "local":
            if kind == "batch":
                from shared.backends.local_batch import LocalBatchBackend

                return LocalBatchBackend.from_settings(s, self.blobs)
            if kind == "databricks":
                from shared.backends.local_databricks import LocalDatabricksBackend

                return LocalDatabricksBackend.from_settings(s)
            if kind == "azureml":
                from shared.backends.local_azureml import LocalAzureMLBackend

                return LocalAzureMLBackend.from_settings(s, self.blobs)
        if adapter == "azure":
            if kind == "batch":
                from shared.backends.azure_batch import AzureBatchBackend

                return AzureBatchBackend.from_settings(s, self.blobs)
            if kind == "databricks":
                from shared.backends.azure_databricks import DatabricksJobsBackend

                return DatabricksJobsBackend.from_settings(s)
            if kind == "azureml":
                if s.azure.azureml_sdk == "v1":
                    from shared.backends.azureml_v1 import AzureMLv1Backend

                    return AzureMLv1Backend.from_settings(s)
                from shared.backends.azureml_v2 import AzureMLv2Backend

                return AzureMLv2Backend.from_settings(s)
        raise self._unsupported(kind)

    def _model_step(self, kind: str) -> JobBackend:
        """Register / deploy: in their own process on the local registry and endpoint (a short-lived
        host still finishes them: shared.backends.local_model_steps), else on background threads."""
        from shared.deploy.local_endpoint import LocalScoringDeployer
        from shared.registry.mlflow_registry import MlflowRegistry

        registry = self.registry
        if kind == "register":
            if isinstance(registry, MlflowRegistry):
                from shared.backends.local_model_steps import LocalModelStepBackend

                return LocalModelStepBackend("register", self.settings.home, registry)
            from shared.backends.register import RegisterBackend

            return RegisterBackend(registry)
        deployer = self.deployer
        if isinstance(registry, MlflowRegistry) and isinstance(deployer, LocalScoringDeployer):
            from shared.backends.local_model_steps import LocalModelStepBackend

            return LocalModelStepBackend("deploy", self.settings.home, registry, deployer)
        from shared.backends.deploy import DeployBackend

        return DeployBackend(registry, deployer)


_services: Services | None = None


def get_services() -> Services:
    """Process-wide services (one per Functions worker / local host)."""
    global _services
    if _services is None:
        _services = Services()
    return _services


def set_services(services: Services | None) -> None:
    global _services
    _services = services
