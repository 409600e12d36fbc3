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
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from shared.azureml_common import azureml_errors
from shared.deploy.base import Deployer, Deployment
from shared.errors import NotFoundError, PermanentError, TransientError, ValidationError
from shared.registry.base import ModelVersion

if TYPE_CHECKING:
    from shared.settings import Settings

COLOURS = ("blue", "green")
MODEL_NAME_TAG = "conveyor.model_name"
MODEL_VERSION_TAG = "conveyor.model_version"
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

    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        check_azure_endpoint_name(endpoint)
        from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

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
        wanted = (model.name, str(model.version))
        live = self._live(ep)
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
