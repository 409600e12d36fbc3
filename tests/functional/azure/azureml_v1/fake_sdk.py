"""An in-memory fake of the azureml-core (SDK v1) surface the v1 adapters use.

azureml-core's ``Workspace`` discovers its service endpoints through ARM and the workspace's
discovery URL, which is impractical to fake over HTTP, so the adapters take this SDK surface
(``Experiment``, ``Run``, ``Model``, ``Webservice``, ``AciWebservice``, ``AksWebservice``,
``AksCompute``) injected. Behaviour follows azureml-core 1.61: ``Run.get(ws, id)`` raises a
``ServiceException``-like error with ``status_code`` 404 for an unknown run, ``Model(ws, name,
version)`` raises ``ModelNotFoundException``, ``Webservice(ws, name)`` raises
``WebserviceException('WebserviceNotFound: ...')``, tag filters take ``{k: v}`` (runs) and
``[[k, v]]`` (models). The *published pipeline submission* is not faked here: it is plain REST and
is served by pytest-httpserver in the tests; its handler calls ``FakeAzureML.create_pipeline_run``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from azureml.exceptions import ModelNotFoundException, ModelPathNotFoundException, WebserviceException


class FakeServiceException(Exception):
    """Shaped like azureml._restclient.exceptions.ServiceException: ``status_code`` + ``message``."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.details: list[Any] = []


@dataclass
class FakeWorkspace:
    name: str = "ws"
    subscription_id: str = "sub"
    resource_group: str = "rg"


@dataclass
class FakeRun:
    id: str
    experiment: str
    status: str = "NotStarted"
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    children: list[FakeRun] = field(default_factory=list)
    start_time: str = ""
    error: dict[str, Any] | None = None
    cancelled: int = 0
    fail_set_tags: Exception | None = None
    registered: list[dict[str, Any]] = field(default_factory=list)
    azure: FakeAzureML | None = None

    def get_status(self) -> str:
        return self.status

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.fail_set_tags is not None:
            raise self.fail_set_tags
        self.tags.update(tags)

    def get_tags(self) -> dict[str, str]:
        return dict(self.tags)

    def get_metrics(self, name: str | None = None, recursive: bool = False) -> dict[str, Any]:
        return dict(self.metrics)

    def get_children(self, recursive: bool = False) -> list[FakeRun]:
        return list(self.children)

    def get_file_names(self) -> list[str]:
        return list(self.files)

    def get_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"runId": self.id, "status": self.status, "startTimeUtc": self.start_time}
        if self.error is not None:
            details["error"] = self.error
        return details

    def get_portal_url(self) -> str:
        return f"https://ml.azure.com/runs/{self.id}?wsid=/subscriptions/sub/resourcegroups/rg/workspaces/ws"

    def cancel(self) -> None:
        self.cancelled += 1
        self.status = "Canceled"

    def register_model(self, model_name: str, model_path: str | None = None, **kwargs: Any) -> Any:
        assert self.azure is not None
        if not any(f.startswith(str(model_path).rstrip("/") + "/") or f == model_path for f in self.files):
            raise ModelPathNotFoundException(
                f"Could not locate the provided model_path {model_path} in the set of files uploaded to the run: "
                f"{self.files}\n                See https://aka.ms/run-logging for more details."
            )
        self.registered.append({"model_name": model_name, "model_path": model_path, **kwargs})
        return self.azure.add_model(model_name, run_id=self.id, path=model_path, **kwargs)


@dataclass
class FakeModelRecord:
    name: str
    version: int
    tags: dict[str, str]
    properties: dict[str, str]
    description: str | None = None
    run_id: str | None = None
    path: str | None = None
    model_framework: str | None = None
    model_framework_version: str | None = None
    tag_updates: int = 0

    # the azureml.core.Model instance surface
    def update_tags_properties(
        self,
        add_tags: dict[str, str] | None = None,
        remove_tags: list[str] | None = None,
        add_properties: dict[str, str] | None = None,
    ) -> None:
        self.tag_updates += 1
        for k in remove_tags or []:
            self.tags.pop(k, None)
        self.tags.update(add_tags or {})
        self.properties.update(add_properties or {})

    def add_tags(self, tags: dict[str, str]) -> None:
        self.update_tags_properties(add_tags=tags)


@dataclass
class FakeService:
    name: str
    models: list[Any]
    tags: dict[str, str]
    compute_type: str
    deployment_config: Any = None
    deployment_target: Any = None
    inference_config: Any = None
    state: str = "Transitioning"
    error: Any = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    wait_calls: list[int | None] = field(default_factory=list)
    fail_next_wait: Exception | None = None

    @property
    def scoring_uri(self) -> str:
        return f"http://{self.name}.westeurope.azurecontainer.io/score"

    def update(self, models: list[Any] | None = None, tags: dict[str, str] | None = None, **kwargs: Any) -> None:
        self.updates.append({"models": [(m.name, m.version) for m in models or []], "tags": dict(tags or {}), **kwargs})
        if models is not None:
            self.models = list(models)
        if tags is not None:
            self.tags = dict(tags)
        self.state = "Transitioning"

    def wait_for_deployment(self, show_output: bool = False, timeout_sec: int | None = None) -> None:
        self.wait_calls.append(timeout_sec)
        if self.fail_next_wait is not None:
            exc, self.fail_next_wait = self.fail_next_wait, None
            self.state = "Failed"
            raise exc
        self.state = "Healthy"


class FakeAzureML:
    """One workspace's runs, models and web services, plus the SDK classes bound to them."""

    def __init__(self) -> None:
        self.workspace = FakeWorkspace()
        self.runs: dict[str, FakeRun] = {}
        self.models: dict[tuple[str, int], FakeModelRecord] = {}
        self.services: dict[str, FakeService] = {}
        self.calls: list[tuple[str, Any]] = []
        self._ids = itertools.count(1)
        self.sdk = self._build_sdk()

    # ------------------------------------------------------------ service-side helpers

    def create_pipeline_run(self, experiment: str, steps: int = 2) -> FakeRun:
        """What the pipelines service does on a submit: a pipeline run with its step runs."""
        n = next(self._ids)
        run = FakeRun(id=f"pipeline-run-{n:04d}", experiment=experiment, start_time=f"2026-01-01T00:00:{n:02d}Z")
        run.azure = self
        for i in range(steps):
            child = FakeRun(
                id=f"{run.id}-step{i}",
                experiment=experiment,
                name=f"step{i}",
                start_time=f"2026-01-01T00:{i + 1:02d}:00Z",
            )
            child.azure = self
            run.children.append(child)
            self.runs[child.id] = child
        self.runs[run.id] = run
        return run

    def add_model(self, name: str, **kwargs: Any) -> FakeModelRecord:
        version = 1 + max((v for (n, v) in self.models if n == name), default=0)
        record = FakeModelRecord(
            name=name,
            version=version,
            tags=dict(kwargs.get("tags") or {}),
            properties=dict(kwargs.get("properties") or {}),
            description=kwargs.get("description"),
            run_id=kwargs.get("run_id"),
            path=kwargs.get("path"),
            model_framework=kwargs.get("model_framework"),
            model_framework_version=kwargs.get("model_framework_version"),
        )
        self.models[(name, version)] = record
        return record

    # ------------------------------------------------------------ SDK classes

    def _build_sdk(self) -> SimpleNamespace:
        azure = self

        class Run:
            @staticmethod
            def get(workspace: Any, run_id: str) -> FakeRun:
                assert workspace is azure.workspace
                azure.calls.append(("Run.get", run_id))
                if run_id not in azure.runs:
                    raise FakeServiceException(404, f"Run {run_id} was not found")
                return azure.runs[run_id]

        class Experiment:
            def __init__(self, workspace: Any, name: str) -> None:
                assert workspace is azure.workspace
                self.name = name

            def get_runs(self, tags: dict[str, str] | None = None, **kwargs: Any) -> Any:
                azure.calls.append(("Experiment.get_runs", (self.name, tags)))
                runs = [
                    r
                    for r in azure.runs.values()
                    if r.experiment == self.name and all(r.tags.get(k) == v for k, v in (tags or {}).items())
                ]
                runs.sort(key=lambda r: r.start_time, reverse=True)  # newest first, like the SDK
                yield from runs

        class Model:
            def __new__(cls, workspace: Any, name: str | None = None, version: int | None = None) -> Any:
                assert workspace is azure.workspace
                if version is None:
                    candidates = [m for (n, _), m in azure.models.items() if n == name]
                    if not candidates:
                        raise ModelNotFoundException(f"ModelNotFound: Model with name {name} not found in workspace")
                    return max(candidates, key=lambda m: m.version)
                key = (str(name), int(version))
                if key not in azure.models:
                    raise ModelNotFoundException(f"Model/Version {name}/{version} not found in workspace")
                return azure.models[key]

            @staticmethod
            def list(
                workspace: Any, name: str | None = None, tags: list[list[str]] | None = None, **kwargs: Any
            ) -> list[FakeModelRecord]:
                azure.calls.append(("Model.list", (name, tags)))
                out = []
                for m in azure.models.values():
                    if name is not None and m.name != name:
                        continue
                    if all((m.tags.get(t[0]) == t[1]) if isinstance(t, list) else (t in m.tags) for t in tags or []):
                        out.append(m)
                return out

            @staticmethod
            def register(workspace: Any, model_path: str, model_name: str, **kwargs: Any) -> FakeModelRecord:
                azure.calls.append(("Model.register", (model_path, model_name, kwargs)))
                return azure.add_model(model_name, path=model_path, **kwargs)

            @staticmethod
            def deploy(workspace: Any, name: str, models: Any, **kwargs: Any) -> FakeService:
                azure.calls.append(("Model.deploy", (name, [(m.name, m.version) for m in models], kwargs)))
                config = kwargs.get("deployment_config") or {}
                service = FakeService(
                    name=name,
                    models=list(models),
                    tags=dict(config.get("tags") or {}),
                    compute_type=str(config.get("type", "ACI")),
                    deployment_config=config,
                    deployment_target=kwargs.get("deployment_target"),
                    inference_config=kwargs.get("inference_config"),
                )
                azure.services[name] = service
                return service

        class Webservice:
            def __new__(cls, workspace: Any, name: str) -> Any:
                assert workspace is azure.workspace
                if name not in azure.services:
                    raise WebserviceException(
                        f"WebserviceNotFound: Webservice with name {name} not found in provided workspace"
                    )
                return azure.services[name]

        class AciWebservice:
            @staticmethod
            def deploy_configuration(**kwargs: Any) -> dict[str, Any]:
                return {"type": "ACI", **kwargs}

        class AksWebservice:
            @staticmethod
            def deploy_configuration(**kwargs: Any) -> dict[str, Any]:
                return {"type": "AKS", **kwargs}

        class AksCompute:
            def __init__(self, workspace: Any, name: str) -> None:
                self.name = name

            def __eq__(self, other: object) -> bool:
                return isinstance(other, AksCompute) and other.name == self.name

        return SimpleNamespace(
            Run=Run,
            Experiment=Experiment,
            Model=Model,
            Webservice=Webservice,
            AciWebservice=AciWebservice,
            AksWebservice=AksWebservice,
            AksCompute=AksCompute,
        )
