"""An in-memory stand-in for the part of ``azure.ai.ml.MLClient`` the v2 adapters use.

Why a fake of the SDK surface and not of HTTP: azure-ai-ml resolves the workspace (discovery
URL, datastores, code upload to the workspace storage, run history on a regional host) before a
job is even submitted, which makes a faithful loopback fake of its wire impractical. So the
adapters are driven through this object instead, built from REAL azure-ai-ml entity classes
(``PipelineJob`` from ``load_job``, ``_BaseJob`` child jobs as run history returns them,
``Model``, ``ManagedOnlineEndpoint``, ``ManagedOnlineDeployment``, run history ``RunDetails``)
and raising REAL azure-core exceptions (``ResourceNotFoundError``, ``ResourceExistsError``,
``HttpResponseError`` with a status code), the way the SDK surfaces service answers.

Every call is recorded in ``calls`` as ``(operation, args)``; ``fail`` queues an exception for
the next call of an operation (e.g. ``fail("jobs.get", http_error(503, ...))``).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-conveyor"
WS = "ws-conveyor"
ARM_WS = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"


class FakeCredential:
    """A TokenCredential that hands out a fixed token (never DefaultAzureCredential in tests)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("fake-token", 4_102_444_800)


def http_error(status: int, message: str, code: str | None = None) -> HttpResponseError:
    """An HttpResponseError as azure-core raises it for a service answer with ``status``."""
    cls: type[HttpResponseError] = HttpResponseError
    if status == 404:
        cls = ResourceNotFoundError
    elif status == 409:
        cls = ResourceExistsError
    exc = cls(message=message)
    exc.status_code = status
    if code:
        exc.error_code = code  # type: ignore[attr-defined]
    return exc


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._fail: dict[str, list[BaseException]] = defaultdict(list)

    def fail(self, op: str, exc: BaseException) -> None:
        self._fail[op].append(exc)

    def hit(self, op: str, *args: Any) -> None:
        self.calls.append((op, args))
        if self._fail[op]:
            raise self._fail[op].pop(0)

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)


class FakePoller:
    """azure-core LROPoller surface: result(timeout) and done()."""

    def __init__(self, value: Any, done: bool = True) -> None:
        self.value = value
        self._done = done
        self.timeouts: list[float | None] = []

    def result(self, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return self.value if self._done else None

    def done(self) -> bool:
        return self._done


# ---------------------------------------------------------------- jobs


class FakeRunsOperations:
    def __init__(self, jobs: FakeJobs) -> None:
        self.jobs = jobs

    def get_run_details(self, run_id: str) -> Any:
        from azure.ai.ml._restclient.runhistory.models._models_py3 import ErrorResponse, RootError, RunDetails

        self.jobs.rec.hit("runs.get_run_details", run_id)
        err = self.jobs.errors.get(run_id)
        if err is None:
            return RunDetails(run_id=run_id, status=self.jobs.status_of(run_id))
        code, message = err
        return RunDetails(
            run_id=run_id, status="Failed", error=ErrorResponse(error=RootError(code=code, message=message))
        )


class FakeJobs:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.store: dict[str, Any] = {}
        self.children: dict[str, list[Any]] = {}
        self.errors: dict[str, tuple[str, str]] = {}
        self._runs_operations = FakeRunsOperations(self)

    def status_of(self, name: str) -> str | None:
        job = self.store.get(name)
        if job is not None:
            return job.status
        for kids in self.children.values():
            for kid in kids:
                if kid.name == name:
                    return kid.status
        return None

    def create_or_update(self, job: Any, **kwargs: Any) -> Any:
        self.rec.hit("jobs.create_or_update", job, kwargs)
        if job.name in self.store:
            raise http_error(409, f"(UserError) A job with this name already exists: {job.name}", "UserError")
        remote = job  # PipelineJob does not deep-copy; the service's answer is the same entity plus id/status
        remote._id = f"{ARM_WS}/jobs/{job.name}"
        remote._status = "NotStarted"
        self.store[job.name] = remote
        return remote

    def get(self, name: str) -> Any:
        self.rec.hit("jobs.get", name)
        if name not in self.store:
            raise http_error(404, f"(UserError) Job {name} was not found", "UserError")
        return self.store[name]

    def list(self, *, parent_job_name: str | None = None, **_: Any) -> list[Any]:
        self.rec.hit("jobs.list", parent_job_name)
        if parent_job_name is None:
            return list(self.store.values())
        self.get(parent_job_name)
        return list(self.children.get(parent_job_name, []))

    def begin_cancel(self, name: str, **_: Any) -> FakePoller:
        self.rec.hit("jobs.begin_cancel", name)
        job = self.get(name)
        if job.status in ("Completed", "Failed", "Canceled"):
            raise http_error(400, f"(UserError) Job {name} is in a terminal state {job.status}", "UserError")
        job._status = "CancelRequested"
        return FakePoller(None)

    # test helpers (the "service" side)
    def set_status(self, name: str, status: str) -> None:
        self.store[name]._status = status

    def add_child(self, parent: str, name: str, display_name: str, status: str) -> Any:
        from azure.ai.ml.entities._job.base_job import _BaseJob

        child = _BaseJob(name=name, display_name=display_name, status=status, experiment_name="sales-forecaster")
        self.children.setdefault(parent, []).append(child)
        return child


class FakeWorkspaces:
    def __init__(self, rec: Recorder, tracking_uri: str) -> None:
        self.rec = rec
        self.tracking_uri = tracking_uri

    def get(self, name: str) -> Any:
        from azure.ai.ml.entities import Workspace

        self.rec.hit("workspaces.get", name)
        ws = Workspace(name=name)
        ws._mlflow_tracking_uri = self.tracking_uri
        return ws


# ---------------------------------------------------------------- models


class FakeModels:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.store: dict[tuple[str, str], Any] = {}

    def _copy(self, model: Any) -> Any:
        return copy.deepcopy(model)

    def create_or_update(self, model: Any) -> Any:
        self.rec.hit("models.create_or_update", model)
        stored = self._copy(model)
        if stored.version is None:
            numbers = [int(v) for (n, v) in self.store if n == model.name]
            stored.version = str(max(numbers, default=0) + 1)
            stored._id = f"{ARM_WS}/models/{model.name}/versions/{stored.version}"
        self.store[(stored.name, str(stored.version))] = stored
        return self._copy(stored)

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        self.rec.hit("models.get", name, version)
        key = (name, str(version))
        if key not in self.store:
            raise http_error(404, f"(UserError) Model {name}:{version} not found", "UserError")
        return self._copy(self.store[key])

    def list(self, name: str | None = None, stage: str | None = None, **_: Any) -> list[Any]:
        self.rec.hit("models.list", name)
        if name is None:  # containers: one entry per name
            latest: dict[str, Any] = {}
            for (n, _v), m in sorted(self.store.items(), key=lambda kv: int(kv[0][1])):
                latest[n] = m
            return [self._copy(m) for m in latest.values()]
        return [self._copy(m) for (n, _v), m in self.store.items() if n == name]

    def download(self, name: str, version: str, download_path: str = ".") -> None:
        """The SDK's ``models.download``: the version's files under ``<download_path>/<name>/``.
        Here a version's ``path`` is a local folder (tests register local MLflow models), copied."""
        import shutil
        from pathlib import Path

        self.rec.hit("models.download", name, version)
        model = self.get(name, version)
        source = Path(str(model.path))
        target = Path(download_path) / name / source.name
        shutil.copytree(source, target)


# ---------------------------------------------------------------- online endpoints


class FakeEndpoints:
    def __init__(self, rec: Recorder, deployments: FakeDeployments) -> None:
        self.rec = rec
        self.store: dict[str, Any] = {}
        self.deployments = deployments

    def get(self, name: str, **_: Any) -> Any:
        self.rec.hit("online_endpoints.get", name)
        if name not in self.store:
            raise http_error(404, f"(UserError) Endpoint {name} not found", "UserError")
        return copy.deepcopy(self.store[name])

    def begin_create_or_update(self, endpoint: Any, **_: Any) -> FakePoller:
        self.rec.hit("online_endpoints.begin_create_or_update", copy.deepcopy(endpoint))
        for colour, pct in dict(endpoint.traffic or {}).items():
            if pct and (endpoint.name, colour) not in self.deployments.store:
                raise http_error(400, f"(BadArgument) Deployment {colour} does not exist", "BadArgument")
        stored = copy.deepcopy(endpoint)
        stored._scoring_uri = f"https://{endpoint.name}.westeurope.inference.ml.azure.com/score"
        stored._provisioning_state = "Succeeded"
        self.store[endpoint.name] = stored
        return FakePoller(copy.deepcopy(stored))


class FakeDeployments:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.store: dict[tuple[str, str], Any] = {}
        self.finish = True  # False: the LRO does not finish within the adapter's wait
        self.outcome = "Succeeded"

    def get(self, name: str, endpoint_name: str, **_: Any) -> Any:
        self.rec.hit("online_deployments.get", name, endpoint_name)
        key = (endpoint_name, name)
        if key not in self.store:
            raise http_error(404, f"(UserError) Deployment {name} not found", "UserError")
        return copy.deepcopy(self.store[key])

    def begin_create_or_update(self, deployment: Any, **_: Any) -> FakePoller:
        self.rec.hit("online_deployments.begin_create_or_update", copy.deepcopy(deployment))
        stored = copy.deepcopy(deployment)
        stored._provisioning_state = self.outcome if self.finish else "Creating"
        self.store[(deployment.endpoint_name, deployment.name)] = stored
        return FakePoller(copy.deepcopy(stored), done=self.finish)


class FakeMLClient:
    """``jobs``, ``models``, ``online_endpoints``, ``online_deployments``, ``workspaces``."""

    def __init__(self, tracking_uri: str = "azureml://unused/mlflow") -> None:
        self.rec = Recorder()
        self.workspace_name = WS
        self.subscription_id = SUB
        self.resource_group_name = RG
        self.jobs = FakeJobs(self.rec)
        self.models = FakeModels(self.rec)
        self.online_deployments = FakeDeployments(self.rec)
        self.online_endpoints = FakeEndpoints(self.rec, self.online_deployments)
        self.workspaces = FakeWorkspaces(self.rec, tracking_uri)
