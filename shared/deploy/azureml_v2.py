"""Deployer on an Azure ML managed online endpoint through azure-ai-ml (SDK v2), blue/green.

An endpoint has at most two deployments, ``blue`` and ``green``. ``deploy`` creates or updates
the one *not* taking traffic with the model (``azureml:<name>:<version>``; an MLflow model needs
no scoring script or environment), waits for it, then moves 100 % of the traffic to it and 0 %
to the other, which is kept for ``rollback`` (traffic back to the other colour). The served
model is also written on the deployment's tags (``conveyor.model_name``/``conveyor.model_version``).

Waiting: a managed deployment takes minutes. This adapter waits for the deployment's
long-running operation with a bound (``wait_timeout``, 20 minutes by default) because the
deploy step does its work inside ``launch``. If the bound passes, the deployment keeps
provisioning in Azure and ``deploy`` raises a TransientError; the engine retries the step, and
the retry finds the deployment (same model, still provisioning → retry again; succeeded →
switch the traffic; failed → update it again). A future change should move that wait into
the deploy step's ``poll`` so no function ever blocks for minutes.

``scoring_url`` is the endpoint's ``scoring_uri``. azure-ai-ml is imported lazily.

Many models (``deploy_partition``). A managed online endpoint takes only a few deployments, so
partitions are not deployments: the endpoint gets ONE deployment, ``many``, whose scoring code
is shared/deploy/scoring/ (``azureml_score.py`` with the protocol module, on the conda
environment next to it) and whose environment variables name the workspace, the model-name
prefix (``sales-forecaster-`` for ``sales-forecaster-<store>``) and the partition key column.
The scoring code routes each row by that column and loads partition ``p``'s champion of model
``<prefix><p>`` from the workspace registry (cached; looked up again every refresh interval).
So a promotion is the registry's champion tag, which the deploy step moves before calling
``deploy_partition``; ``deploy_partition`` only makes sure the deployment exists with the same
prefix and key (creating it once, with 100 % of the traffic) and that the model's name is
``<prefix><partition>``. A rejected candidate changes nothing, so its partition keeps its champion.
The endpoint's system-assigned identity needs read access to the workspace's models
(``AzureML Data Scientist`` on the workspace, or a custom role with
``Microsoft.MachineLearningServices/workspaces/models/*/read``). An endpoint is blue/green
(one model) or ``many``, never both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.azureml_common import azureml_errors
from shared.deploy.base import Deployer, Deployment, check_partition, check_partition_key
from shared.errors import ConflictError, NotFoundError, PermanentError, TransientError, ValidationError
from shared.registry.base import ModelVersion

if TYPE_CHECKING:
    from shared.settings import Settings

COLOURS = ("blue", "green")
MODEL_NAME_TAG = "conveyor.model_name"
MODEL_VERSION_TAG = "conveyor.model_version"
MANY = "many"  # the one deployment of a many-models endpoint
MANY_PREFIX_ENV = "CONVEYOR_MANY_MODEL_PREFIX"
MANY_KEY_ENV = "CONVEYOR_MANY_PARTITION_KEY"
SCORING_CODE = Path(__file__).resolve().parent / "scoring"  # shipped as the many deployment's code
SCORING_SCRIPT = "azureml_score.py"
SCORING_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
# Azure ML online endpoint names: 3-32 characters, a letter first, then letters, digits and '-'.
_ENDPOINT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
_MODEL_ID_RE = re.compile(r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
_PROVISIONING = ("Creating", "Updating", "Scaling")


def check_azure_endpoint_name(endpoint: str, field: str = "params.endpoint") -> str:
    if not isinstance(endpoint, str) or not _ENDPOINT_RE.match(endpoint):
        raise ValidationError(
            "Azure ML endpoint names are 3-32 letters, digits and '-', starting with a letter and not "
            f"ending with '-', got {endpoint!r}",
            field=field,
        )
    return endpoint


def served_model(deployment: Any) -> tuple[str, str] | None:
    """(name, version) a deployment serves: its Conveyor tags, else its model reference."""
    tags = dict(getattr(deployment, "tags", None) or {})
    if tags.get(MODEL_NAME_TAG) and tags.get(MODEL_VERSION_TAG):
        return str(tags[MODEL_NAME_TAG]), str(tags[MODEL_VERSION_TAG])
    model = getattr(deployment, "model", None)
    ref = model if isinstance(model, str) else getattr(model, "id", None)
    if not ref and model is not None and getattr(model, "name", None) and getattr(model, "version", None):
        return str(model.name), str(model.version)
    if not ref:
        return None
    ref = str(ref)
    if m := _MODEL_ID_RE.search(ref):
        return m.group("name"), m.group("version")
    if ref.startswith("azureml:"):
        parts = ref[len("azureml:") :].split(":")
        if len(parts) == 2:
            return parts[0], parts[1]
    return None


class AzureMLOnlineDeployer(Deployer):
    def __init__(
        self,
        ml_client: Any,
        instance_type: str = "Standard_DS3_v2",
        instance_count: int = 1,
        *,
        auth_mode: str = "key",
        wait_timeout: float = 1200.0,
    ) -> None:
        self.ml_client = ml_client
        self.instance_type = instance_type
        self.instance_count = instance_count
        self.auth_mode = auth_mode
        self.wait_timeout = wait_timeout

    @classmethod
    def from_settings(cls, settings: Settings, ml_client: Any | None = None) -> AzureMLOnlineDeployer:
        if ml_client is None:
            from shared.azureml_common import ml_client_from_settings

            ml_client = ml_client_from_settings(settings)
        return cls(ml_client)

    # ------------------------------------------------------------ plumbing

    def _wait(self, poller: Any, what: str) -> Any:
        """The LRO's result within ``wait_timeout``; TransientError when it is still going."""
        with azureml_errors(what):
            result = poller.result(timeout=self.wait_timeout)
            done = poller.done() if hasattr(poller, "done") else True
        if not done:
            raise TransientError(
                f"{what}: still in progress after {self.wait_timeout:g}s; it goes on in Azure and a retry "
                "of the step picks it up",
                service="azureml",
            )
        return result

    def _endpoint(self, endpoint: str) -> Any | None:
        try:
            with azureml_errors(f"get online endpoint {endpoint}"):
                return self.ml_client.online_endpoints.get(name=endpoint)
        except NotFoundError:
            return None

    def _deployment(self, endpoint: str, colour: str) -> Any | None:
        try:
            with azureml_errors(f"get deployment {colour} of {endpoint}"):
                return self.ml_client.online_deployments.get(name=colour, endpoint_name=endpoint)
        except NotFoundError:
            return None

    @staticmethod
    def _live(ep: Any) -> str | None:
        traffic = {str(k): int(v or 0) for k, v in dict(getattr(ep, "traffic", None) or {}).items()}
        live = [k for k, v in sorted(traffic.items(), key=lambda kv: -kv[1]) if v > 0]
        return live[0] if live else None

    def _result(self, endpoint: str, ep: Any, colour: str, fallback: ModelVersion | None = None) -> Deployment | None:
        dep = self._deployment(endpoint, colour)
        served = served_model(dep) if dep is not None else None
        if served is None and fallback is not None:
            served = (fallback.name, fallback.version)
        if served is None:
            return None
        return Deployment(
            endpoint=endpoint,
            model_name=served[0],
            version=served[1],
            scoring_url=str(getattr(ep, "scoring_uri", None) or ""),
        )

    def _set_traffic(self, ep: Any, live: str, others: list[str]) -> Any:
        ep.traffic = {live: 100, **{o: 0 for o in others if o != live}}
        poller = self._call(
            f"route traffic of {ep.name} to {live}", self.ml_client.online_endpoints.begin_create_or_update, ep
        )
        self._wait(poller, f"route traffic of {ep.name} to {live}")
        return self._endpoint(ep.name) or ep

    @staticmethod
    def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with azureml_errors(what):
            return fn(*args, **kwargs)

    # ------------------------------------------------------------ port

    def _ensure_endpoint(self, endpoint: str) -> Any:
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        ep = self._endpoint(endpoint)
        if ep is None:
            new_ep = ManagedOnlineEndpoint(name=endpoint, auth_mode=self.auth_mode, tags={"conveyor.managed": "true"})
            poller = self._call(
                f"create online endpoint {endpoint}", self.ml_client.online_endpoints.begin_create_or_update, new_ep
            )
            self._wait(poller, f"create online endpoint {endpoint}")
            ep = self._endpoint(endpoint)
            if ep is None:
                raise TransientError(f"online endpoint {endpoint} not found after creation", service="azureml")
        return ep

    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        check_azure_endpoint_name(endpoint)
        from azure.ai.ml.entities import ManagedOnlineDeployment

        ep = self._ensure_endpoint(endpoint)
        wanted = (model.name, str(model.version))
        live = self._live(ep)
        if live == MANY:
            raise ConflictError(
                f"endpoint {endpoint} serves partition models (deployment {MANY}); a single model needs an "
                "endpoint of its own",
                service="azureml",
            )
        if live is not None:
            current = self._deployment(endpoint, live)
            if current is not None and served_model(current) == wanted:
                result = self._result(endpoint, ep, live, model)
                assert result is not None
                return result  # already serving it: deploying twice changes nothing
        target = next((c for c in COLOURS if c != live), COLOURS[0])
        existing = self._deployment(endpoint, target)
        state = str(getattr(existing, "provisioning_state", "") or "") if existing is not None else ""
        if existing is not None and served_model(existing) == wanted and state in _PROVISIONING:
            raise TransientError(
                f"deployment {target} of {endpoint} is still {state.lower()}; a retry of the step picks it up",
                service="azureml",
            )
        if existing is None or served_model(existing) != wanted or state not in ("Succeeded", ""):
            deployment = ManagedOnlineDeployment(
                name=target,
                endpoint_name=endpoint,
                model=f"azureml:{model.name}:{model.version}",
                instance_type=self.instance_type,
                instance_count=self.instance_count,
                tags={MODEL_NAME_TAG: model.name, MODEL_VERSION_TAG: str(model.version)},
            )
            what = f"deploy {model.name} v{model.version} to {endpoint}/{target}"
            poller = self._call(what, self.ml_client.online_deployments.begin_create_or_update, deployment)
            done = self._wait(poller, what)
            final = str(getattr(done, "provisioning_state", "") or "")
            if final and final not in ("Succeeded",):
                raise PermanentError(f"{what}: provisioning ended {final}", service="azureml")
        others = [str(k) for k in dict(getattr(ep, "traffic", None) or {})]
        ep = self._set_traffic(ep, target, others)
        result = self._result(endpoint, ep, target, model)
        assert result is not None
        return result

    def current(self, endpoint: str) -> Deployment | None:
        ep = self._endpoint(endpoint)
        if ep is None:
            return None
        live = self._live(ep)
        return self._result(endpoint, ep, live) if live else None

    def rollback(self, endpoint: str) -> Deployment | None:
        """Send the traffic back to the other colour; None when there is nothing to go back to."""
        ep = self._endpoint(endpoint)
        if ep is None:
            return None
        live = self._live(ep)
        candidates = [c for c in COLOURS if c != live]
        for colour in candidates:
            dep = self._deployment(endpoint, colour)
            if dep is not None and served_model(dep) is not None:
                others = [str(k) for k in dict(getattr(ep, "traffic", None) or {})]
                ep = self._set_traffic(ep, colour, others)
                return self._result(endpoint, ep, colour)
        return None

    # ------------------------------------------------------------ many models

    def _many_settings(self, endpoint: str, prefix: str, partition_key: str) -> dict[str, str]:
        ws = {
            "CONVEYOR_MANY_SUBSCRIPTION_ID": str(getattr(self.ml_client, "subscription_id", "") or ""),
            "CONVEYOR_MANY_RESOURCE_GROUP": str(getattr(self.ml_client, "resource_group_name", "") or ""),
            "CONVEYOR_MANY_WORKSPACE": str(getattr(self.ml_client, "workspace_name", "") or ""),
        }
        missing = [k for k, v in ws.items() if not v]
        if missing:
            raise ValidationError(
                "the many-models deployment needs the workspace's subscription, resource group and name",
                field="CONVEYOR_AZUREML_WORKSPACE",
            )
        return {MANY_PREFIX_ENV: prefix, MANY_KEY_ENV: partition_key, "CONVEYOR_MANY_ENDPOINT": endpoint, **ws}

    @staticmethod
    def _many_of(dep: Any) -> tuple[str, str] | None:
        """(model prefix, partition key) a ``many`` deployment serves with, from its environment."""
        env = dict(getattr(dep, "environment_variables", None) or {})
        if env.get(MANY_PREFIX_ENV) and env.get(MANY_KEY_ENV):
            return str(env[MANY_PREFIX_ENV]), str(env[MANY_KEY_ENV])
        return None

    def _many_deployment(self, endpoint: str, prefix: str, partition_key: str) -> Any:
        """The endpoint's ``many`` deployment, created once with 100 % of the traffic."""
        from azure.ai.ml.entities import CodeConfiguration, Environment, ManagedOnlineDeployment

        ep = self._ensure_endpoint(endpoint)
        live = self._live(ep)
        if live is not None and live != MANY:
            raise ConflictError(
                f"endpoint {endpoint} serves one model (deployment {live}); partition models need an endpoint "
                "of their own",
                service="azureml",
            )
        dep = self._deployment(endpoint, MANY)
        state = str(getattr(dep, "provisioning_state", "") or "") if dep is not None else ""
        serving = self._many_of(dep) if dep is not None else None
        if serving is not None and serving != (prefix, partition_key):
            raise ConflictError(
                f"endpoint {endpoint} serves models {serving[0]}<partition> routed by {serving[1]!r}, not "
                f"{prefix}<partition> by {partition_key!r}",
                service="azureml",
            )
        if dep is not None and serving is not None and state in _PROVISIONING:
            raise TransientError(
                f"deployment {MANY} of {endpoint} is still {state.lower()}; a retry of the step picks it up",
                service="azureml",
            )
        if dep is None or serving is None or state not in ("Succeeded", ""):
            deployment = ManagedOnlineDeployment(
                name=MANY,
                endpoint_name=endpoint,
                code_configuration=CodeConfiguration(code=str(SCORING_CODE), scoring_script=SCORING_SCRIPT),
                environment=Environment(image=SCORING_IMAGE, conda_file=str(SCORING_CODE / "environment.yml")),
                environment_variables=self._many_settings(endpoint, prefix, partition_key),
                instance_type=self.instance_type,
                instance_count=self.instance_count,
                tags={"conveyor.many_models": "true", "conveyor.model_prefix": prefix},
            )
            what = f"create the many-models deployment {endpoint}/{MANY}"
            poller = self._call(what, self.ml_client.online_deployments.begin_create_or_update, deployment)
            dep = self._wait(poller, what)
            final = str(getattr(dep, "provisioning_state", "") or "")
            if final and final not in ("Succeeded",):
                raise PermanentError(f"{what}: provisioning ended {final}", service="azureml")
        if live != MANY:
            others = [str(k) for k in dict(getattr(ep, "traffic", None) or {})]
            self._set_traffic(ep, MANY, others)
        return dep

    def _champion(self, name: str) -> str | None:
        from shared.deploy.scoring.azureml_score import champion_version, list_versions

        with azureml_errors(f"versions of model {name}"):
            return champion_version(list_versions(self.ml_client, name))

    def _partition_deployment(self, ep: Any, prefix: str, partition: str) -> Deployment | None:
        version = self._champion(f"{prefix}{partition}")
        if version is None:
            return None
        return Deployment(
            endpoint=str(ep.name),
            model_name=f"{prefix}{partition}",
            version=version,
            scoring_url=str(getattr(ep, "scoring_uri", None) or ""),
            partition=partition,
        )

    def deploy_partition(self, endpoint: str, partition: str, model: ModelVersion, partition_key: str) -> Deployment:
        check_azure_endpoint_name(endpoint)
        check_partition(partition)
        check_partition_key(partition_key)
        prefix = model.name[: -len(partition)] if model.name.endswith(partition) else ""
        if not prefix:
            raise ValidationError(
                f"the many-models deployment finds partition {partition!r}'s model by the name <prefix>{partition}: "
                f"name it so (e.g. sales-forecaster-${{item.inputs.partition}}), got {model.name!r}",
                field="params.model_name",
            )
        self._many_deployment(endpoint, prefix, partition_key)
        ep = self._endpoint(endpoint)
        return Deployment(
            endpoint=endpoint,
            model_name=model.name,
            version=str(model.version),
            scoring_url=str(getattr(ep, "scoring_uri", None) or ""),
            partition=partition,
        )

    def _many(self, endpoint: str) -> tuple[Any, str] | None:
        ep = self._endpoint(endpoint)
        if ep is None or self._live(ep) != MANY:
            return None
        dep = self._deployment(endpoint, MANY)
        serving = self._many_of(dep) if dep is not None else None
        return (ep, serving[0]) if serving is not None else None

    def current_partition(self, endpoint: str, partition: str) -> Deployment | None:
        """The champion the ``many`` deployment serves for ``partition`` (what its scoring code loads)."""
        many = self._many(endpoint)
        return self._partition_deployment(many[0], many[1], partition) if many is not None else None

    def partitions(self, endpoint: str) -> dict[str, Deployment]:
        """Every ``<prefix><partition>`` model of the workspace that has a champion."""
        many = self._many(endpoint)
        if many is None:
            return {}
        ep, prefix = many
        with azureml_errors("list registered models"):
            names = sorted({str(m.name) for m in self.ml_client.models.list()})
        found = {}
        for name in names:
            if name.startswith(prefix) and len(name) > len(prefix):
                deployment = self._partition_deployment(ep, prefix, name[len(prefix) :])
                if deployment is not None:
                    found[name[len(prefix) :]] = deployment
        return found
