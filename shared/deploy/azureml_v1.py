"""Deployer on Azure ML SDK v1 legacy real-time web services (ACI or AKS).

.. warning::
   Azure ML SDK v1 is **past its end of support (2026-06-30)**, and ACI/AKS *web services* are the
   legacy v1 deployment path (managed online endpoints replace them in v2: use
   ``CONVEYOR_AZUREML_SDK=v2``). Building this adapter logs that once per process.

* ``deploy(endpoint, model)`` — the endpoint is a web service named ``endpoint``:

  - absent → ``Model.deploy(ws, endpoint, [model], inference_config, deployment_config,
    deployment_target, overwrite=True)`` with ``AciWebservice.deploy_configuration(...)`` or
    ``AksWebservice.deploy_configuration(...)`` + ``AksCompute(ws, aks_cluster)``;
  - present, serving another model → ``service.update(models=[model], inference_config=...,
    tags=...)``;
  - already serving that model → nothing changes (idempotent).

  Then ``service.wait_for_deployment(timeout_sec=wait_timeout)`` (bounded; a timeout is a
  TransientError, a failed deployment a PermanentError with the service's message).
  ``inference_config=None`` means a v1 *no-code* deployment, which needs the model registered with
  a framework (tag ``model_framework`` at register time); pass an ``InferenceConfig`` for others.
* History lives on the service's tags: ``conveyor.model`` = ``name:version`` now served,
  ``conveyor.history`` = JSON list of the ``name:version`` served before (oldest first, last 20).
* ``current`` — the service's model (``service.models``), else None.
* ``rollback`` — serve the last history entry again (``service.update(models=[previous])``).
* ``scoring_url`` is ``service.scoring_uri``.

Tests hand in a fake of the SDK surface (``sdk``: ``Model``, ``Webservice``, ``AciWebservice``,
``AksWebservice``, ``AksCompute``) and a fake workspace, since azureml-core's workspace discovery
is impractical to fake over HTTP.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from shared.backends.azureml_v1 import (
    SERVICE,
    AzureMLv1Workspace,
    azureml_errors,
    warn_end_of_support,
    workspace_from_settings,
)
from shared.deploy.base import Deployer, Deployment
from shared.errors import NotFoundError, PermanentError, TransientError, ValidationError
from shared.registry.base import ModelVersion

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.settings import Settings

MODEL_TAG = "conveyor.model"
HISTORY_TAG = "conveyor.history"
HISTORY_MAX = 20
TARGETS = ("aci", "aks")
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")


def check_service_name(endpoint: str, field: str = "params.endpoint") -> str:
    """v1 web service names: 3-32 of a-z 0-9 -, starting with a letter, not ending with a dash."""
    if not isinstance(endpoint, str) or not _SERVICE_NAME.match(endpoint):
        raise ValidationError(
            f"v1 web service names are 3-32 of a-z 0-9 - starting with a letter, got {endpoint!r}", field=field
        )
    return endpoint


def _ref(name: str, version: Any) -> str:
    return f"{name}:{version}"


def _split_ref(ref: str) -> tuple[str, str]:
    name, _, version = str(ref).rpartition(":")
    return name, version


class AzureMLWebServiceDeployer(AzureMLv1Workspace, Deployer):
    def __init__(
        self,
        workspace: Any | None = None,
        target: str = "aci",
        aks_cluster: str | None = None,
        *,
        sdk: Any | None = None,
        workspace_factory: Callable[[], Any] | None = None,
        inference_config: Any | None = None,
        deployment_options: dict[str, Any] | None = None,
        wait_timeout: int = 900,
    ) -> None:
        target = (target or "aci").lower()
        if target not in TARGETS:
            raise ValidationError(
                f"v1 web services deploy to 'aci' or 'aks', got {target!r}", field="CONVEYOR_AZUREML_DEPLOYMENT_TARGET"
            )
        if target == "aks" and not aks_cluster:
            raise ValidationError("is required for target 'aks'", field="CONVEYOR_AZUREML_AKS_CLUSTER")
        warn_end_of_support("the web service deployer")
        self._init_workspace(workspace, sdk, workspace_factory)
        self.target = target
        self.aks_cluster = aks_cluster
        self.inference_config = inference_config
        self.deployment_options = dict(deployment_options or {})
        self.wait_timeout = wait_timeout

    @classmethod
    def from_settings(cls, settings: Settings, workspace: Any | None = None) -> AzureMLWebServiceDeployer:
        az = settings.azure
        target = az.azureml_deployment_target
        if target == "online":  # the v2 default: v1 has no managed online endpoints; ACI is its simplest host
            target = "aci"
        return cls(
            workspace,
            target,
            az.azureml_aks_cluster,
            workspace_factory=lambda: workspace_from_settings(settings),
        )

    # ------------------------------------------------------------ plumbing

    def _service(self, endpoint: str) -> Any | None:
        try:
            with azureml_errors(f"web service {endpoint}"):
                return self.sdk.Webservice(self.workspace, endpoint)
        except NotFoundError:
            return None

    def _model(self, name: str, version: str) -> Any:
        with azureml_errors(f"model {name} version {version}"):
            return self.sdk.Model(self.workspace, name=name, version=int(version))

    @staticmethod
    def _tags(service: Any) -> dict[str, str]:
        return {str(k): str(v) for k, v in (getattr(service, "tags", None) or {}).items()}

    @staticmethod
    def _history(tags: dict[str, str]) -> list[str]:
        try:
            value = json.loads(tags.get(HISTORY_TAG) or "[]")
        except ValueError:
            return []
        return [str(v) for v in value] if isinstance(value, list) else []

    @staticmethod
    def _served(service: Any) -> tuple[str, str] | None:
        models = list(getattr(service, "models", None) or [])
        if models:
            return str(models[0].name), str(models[0].version)
        ref = (getattr(service, "tags", None) or {}).get(MODEL_TAG)
        return _split_ref(ref) if ref else None

    def _deployment(self, endpoint: str, service: Any, served: tuple[str, str]) -> Deployment:
        return Deployment(
            endpoint=endpoint,
            model_name=served[0],
            version=served[1],
            scoring_url=str(getattr(service, "scoring_uri", None) or ""),
        )

    def _wait(self, service: Any, endpoint: str) -> None:
        try:
            service.wait_for_deployment(show_output=False, timeout_sec=self.wait_timeout)
        except Exception as exc:
            state = getattr(service, "state", None)
            text = str(getattr(exc, "message", None) or exc)
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise TransientError(
                    f"web service {endpoint} did not finish deploying within {self.wait_timeout}s (state {state})",
                    service=SERVICE,
                ) from exc
            with azureml_errors(f"deploy web service {endpoint} (state {state})"):
                raise
        state = str(getattr(service, "state", "") or "")
        if state.lower() in ("failed", "unhealthy"):
            error = getattr(service, "error", None)
            raise PermanentError(f"web service {endpoint} is {state}: {error or 'no error given'}", service=SERVICE)

    def _deployment_config(self, tags: dict[str, str], description: str) -> Any:
        opts = {"tags": tags, "description": description, **self.deployment_options}
        if self.target == "aks":
            return self.sdk.AksWebservice.deploy_configuration(**opts)
        return self.sdk.AciWebservice.deploy_configuration(**opts)

    def _swap(self, endpoint: str, service: Any, model: Any, tags: dict[str, str]) -> Any:
        with azureml_errors(f"update web service {endpoint}"):
            kwargs: dict[str, Any] = {"models": [model], "tags": tags}
            if self.inference_config is not None:
                kwargs["inference_config"] = self.inference_config
            service.update(**kwargs)
        self._wait(service, endpoint)
        return service

    # ------------------------------------------------------------ port

    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        check_service_name(endpoint)
        wanted = (model.name, str(model.version))
        service = self._service(endpoint)
        if service is not None:
            served = self._served(service)
            state = str(getattr(service, "state", "") or "").lower()
            if served == wanted and state not in ("failed", "unhealthy"):
                if state in ("transitioning", "creating", "updating"):
                    self._wait(service, endpoint)
                return self._deployment(endpoint, service, wanted)
        aml_model = self._model(*wanted)
        if service is None:
            tags = {MODEL_TAG: _ref(*wanted), HISTORY_TAG: "[]"}
            with azureml_errors(f"create web service {endpoint}"):
                kwargs: dict[str, Any] = {
                    "deployment_config": self._deployment_config(tags, f"Conveyor endpoint {endpoint}"),
                    "overwrite": True,
                }
                if self.inference_config is not None:
                    kwargs["inference_config"] = self.inference_config
                if self.target == "aks":
                    kwargs["deployment_target"] = self.sdk.AksCompute(self.workspace, self.aks_cluster)
                service = self.sdk.Model.deploy(self.workspace, endpoint, [aml_model], **kwargs)
            self._wait(service, endpoint)
            return self._deployment(endpoint, service, wanted)
        tags = self._tags(service)
        history = self._history(tags)
        served = self._served(service)
        if served is not None and served != wanted:
            history.append(_ref(*served))
        tags.update({MODEL_TAG: _ref(*wanted), HISTORY_TAG: json.dumps(history[-HISTORY_MAX:])})
        service = self._swap(endpoint, service, aml_model, tags)
        return self._deployment(endpoint, service, wanted)

    def current(self, endpoint: str) -> Deployment | None:
        service = self._service(endpoint)
        if service is None:
            return None
        served = self._served(service)
        return self._deployment(endpoint, service, served) if served else None

    def rollback(self, endpoint: str) -> Deployment | None:
        service = self._service(endpoint)
        if service is None:
            return None
        tags = self._tags(service)
        history = self._history(tags)
        if not history:
            return None
        previous = _split_ref(history.pop())
        aml_model = self._model(*previous)
        tags.update({MODEL_TAG: _ref(*previous), HISTORY_TAG: json.dumps(history)})
        service = self._swap(endpoint, service, aml_model, tags)
        return self._deployment(endpoint, service, previous)

    def history(self, endpoint: str) -> list[str]:
        """``name:version`` entries served before the current one, oldest first."""
        service = self._service(endpoint)
        return self._history(self._tags(service)) if service is not None else []

    # ------------------------------------------------------------ many models

    def _no_partitions(self) -> PermanentError:
        return PermanentError(
            f"an ACI/AKS web service (CONVEYOR_AZUREML_DEPLOYMENT_TARGET={self.target}) cannot serve partition "
            "models: many models are served by one Azure ML managed online deployment; set "
            "CONVEYOR_AZUREML_SDK=v2 and CONVEYOR_AZUREML_DEPLOYMENT_TARGET=online",
            service="azureml",
        )

    def deploy_partition(self, endpoint: str, partition: str, model: ModelVersion, partition_key: str) -> Deployment:
        raise self._no_partitions()

    def current_partition(self, endpoint: str, partition: str) -> Deployment | None:
        raise self._no_partitions()

    def partitions(self, endpoint: str) -> dict[str, Deployment]:
        raise self._no_partitions()
