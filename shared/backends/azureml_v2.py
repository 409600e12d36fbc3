"""Azure ML pipeline jobs through azure-ai-ml (SDK v2, the supported one).

``launch`` loads the step's pipeline job YAML (``params.pipeline``, relative to the project
root) with ``azure.ai.ml.load_job``, names the job after the step's idempotency key, binds
``params.inputs``, sets the compute (``params.compute`` or CONVEYOR_AZUREML_COMPUTE) and the
Conveyor tags, and submits it with ``ml_client.jobs.create_or_update``. A job with that name
already existing (found first, or a 409 / "already exists" on create) is reattached: one
remote job per key, whatever the number of redeliveries.

``poll`` reads ``jobs.get(name).status``. On success the outputs match the local backend::

    {"pipeline_run": <job name>,
     "metrics": {...},                     # the child jobs' MLflow metrics, later nodes win
     "outputs": {"<node>.<output>": "azureml://jobs/<job>/outputs/<output>", ...},
     "model_uri": <the first node output named "model">,
     "studio_url": <job.studio_url>,
     "inputs": {...}}                      # the literal params.inputs (if any), from the job's conveyor.input.* tags

A node output bound to a pipeline output (``${{parent.outputs.model}}``) is addressed on the
pipeline job (``azureml://jobs/<pipeline>/outputs/<name>``); an unbound one on its child job,
found by display name (Azure ML gives a child job its node's display name, or the node name).

Metrics: azure-ai-ml has no metrics API; Azure ML keeps job metrics in its MLflow tracking
store, where an MLflow run id is the job name. ``MlflowRestMetrics`` reads them with one
``GET <tracking uri>/api/2.0/mlflow/runs/get?run_id=<child>`` per child job and a token from
the app's credential, so neither mlflow nor azureml-mlflow has to be deployed. The tracking URI
is the workspace's ``mlflow_tracking_uri`` (``azureml://<region>.api.azureml.ms/mlflow/...``).

``cancel`` calls ``jobs.begin_cancel`` without waiting. azure-ai-ml is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.azureml_common import (
    SERVICE,
    aml_name,
    azureml_errors,
    is_already_exists,
    job_state,
    map_azureml_error,
    pipeline_params,
)
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.errors import (
    ConveyorError,
    NotFoundError,
    TransientError,
    ValidationError,
    classify_http_status,
)
from shared.flows.argv import shell_word

if TYPE_CHECKING:
    from pathlib import Path

    from shared.settings import Settings

MetricsReader = Callable[[str], dict[str, float]]

_DATA_TYPES = ("uri_folder", "uri_file", "mltable", "mlflow_model", "custom_model", "triton_model")
_LITERAL_TYPES = ("string", "number", "integer", "boolean")
_URL_SCHEMES = ("https", "azureml", "abfss", "abfs", "wasbs", "wasb", "adl")
_ARM_SCOPE = "https://management.azure.com/.default"
INPUT_TAG_PREFIX = "conveyor.input."  # a literal params.inputs value, as bound (read back as outputs.inputs)


def is_data_url(value: str) -> bool:
    """A URL Azure ML can mount or download: https, azureml://, abfss://, wasbs://, adl://, or an azureml: asset."""
    if value.startswith("azureml:"):
        return True
    scheme = urllib.parse.urlparse(value).scheme.lower()
    return scheme in _URL_SCHEMES and "://" in value


class MlflowRestMetrics:
    """Latest metric values of an Azure ML job from the workspace's MLflow tracking REST API.

    ``tracking_uri``: the workspace's ``mlflow_tracking_uri`` (``azureml://`` is read as
    ``https://``); ``credential``: an azure-core TokenCredential (ARM scope, as azureml-mlflow uses).
    """

    def __init__(self, tracking_uri: str, credential: Any, *, timeout: float = 30.0) -> None:
        if tracking_uri.startswith("azureml://"):
            tracking_uri = "https://" + tracking_uri[len("azureml://") :]
        self.base = tracking_uri.rstrip("/")
        self.credential = credential
        self.timeout = timeout

    def __call__(self, run_id: str) -> dict[str, float]:
        query = urllib.parse.urlencode({"run_id": run_id})
        url = f"{self.base}/api/2.0/mlflow/runs/get?{query}"
        token = self.credential.get_token(_ARM_SCOPE).token
        req = urllib.request.Request(  # noqa: S310 - https (or a loopback fake in tests)
            url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                doc = json.loads(resp.read().decode("utf-8") or "{}")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")[:500]
            try:
                parsed = json.loads(body)
                code, message = parsed.get("error_code", ""), parsed.get("message", body)
            except ValueError:
                code, message = "", body
            if exc.code == 404 or code == "RESOURCE_DOES_NOT_EXIST":
                return {}  # a job that logged nothing has no MLflow run
            cls = classify_http_status(exc.code)
            raise cls(f"MLflow metrics of {run_id}: {exc.code} {code} {message}".strip(), service=SERVICE) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TransientError(f"MLflow metrics of {run_id}: {exc}", service=SERVICE) from exc
        metrics: dict[str, float] = {}
        for m in ((doc.get("run") or {}).get("data") or {}).get("metrics") or []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                metrics[str(m["key"])] = float(m["value"])
        return metrics


class AzureMLv2Backend(JobBackend):
    kind = "azureml"

    def __init__(
        self,
        ml_client: Any,
        *,
        root: Path | None = None,
        compute: str | None = None,
        metrics_reader: MetricsReader | None = None,
        credential: Any | None = None,
    ) -> None:
        from pathlib import Path

        self.ml_client = ml_client
        self.root = Path(root or Path.cwd()).resolve()
        self.compute = compute
        self._metrics_reader = metrics_reader
        self._credential = credential

    @classmethod
    def from_settings(cls, settings: Settings, ml_client: Any | None = None) -> AzureMLv2Backend:
        credential = None
        if ml_client is None:
            from shared.azure_identity import get_credential
            from shared.azureml_common import ml_client_from_settings

            credential = get_credential(settings)
            ml_client = ml_client_from_settings(settings, credential)
        return cls(ml_client, root=settings.root, compute=settings.azure.azureml_compute, credential=credential)

    # ------------------------------------------------------------ launch

    def _load(self, request: LaunchRequest) -> tuple[Any, str]:
        params, path = pipeline_params(request, self.root)
        if path is None:
            raise ValidationError(
                "the v2 SDK submits pipeline job YAML: set params.pipeline (published_pipeline_id needs "
                "CONVEYOR_AZUREML_SDK=v1)",
                field="params.pipeline",
            )
        from azure.ai.ml import Input, load_job

        try:
            job: Any = load_job(source=str(path))
        except Exception as exc:
            err = map_azureml_error(exc, f"load {params.pipeline}")
            raise ValidationError(err.message, field="params.pipeline") from exc
        if getattr(job, "type", None) != "pipeline":
            raise ValidationError(f"expected type: pipeline, got {job.type!r}", field="params.pipeline")
        name = aml_name(request.key)
        job.name = name
        job.experiment_name = params.experiment
        declared = dict(job.inputs or {})
        literals: dict[str, str] = {}
        for iname, value in params.inputs.items():
            fld = f"params.inputs.{iname}"
            if iname not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise ValidationError(f"the pipeline has no input {iname!r} (known: {known})", field=fld)
            itype = _declared_type(declared[iname])
            if itype in _LITERAL_TYPES:
                # Azure ML substitutes a literal into ${{inputs.x}} of a command it runs in a shell:
                # quoted, the value is exactly one word there (a plain value is left as it is).
                job.inputs[iname] = shell_word(value)
                literals[iname] = value
            elif is_data_url(value):
                if itype not in _DATA_TYPES:
                    itype = "uri_folder" if value.endswith("/") else "uri_file"
                job.inputs[iname] = Input(type=itype, path=value)
            elif itype in _DATA_TYPES:
                raise ValidationError(
                    f"a {itype} input needs a URL Azure ML can read (https://, azureml://, abfss://, wasbs://), "
                    f"got {value!r}",
                    field=fld,
                )
            else:
                job.inputs[iname] = shell_word(value)
                literals[iname] = value
        for node in dict(job.jobs or {}).values():  # the step's env:, under what the YAML sets per job
            if request.env and hasattr(node, "environment_variables"):
                node.environment_variables = {**request.env, **dict(node.environment_variables or {})}
        compute = params.compute or self.compute
        if compute:
            job.settings.default_compute = compute
        tags = dict(job.tags or {})
        tags.update(
            {
                "conveyor.run_id": request.run_id,
                "conveyor.flow": request.flow,
                "conveyor.step": request.step,
                "conveyor.key": request.key,
                "traceparent": request.traceparent,
                **request.index_tags(),
                **{f"{INPUT_TAG_PREFIX}{k}": v for k, v in literals.items()},
            }
        )
        job.tags = {k: v for k, v in tags.items() if v}
        return job, name

    def _existing(self, name: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.ml_client.jobs.get(name)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            err = map_azureml_error(exc, f"get job {name}")
            if isinstance(err, NotFoundError):
                return None
            raise err from exc

    def launch(self, request: LaunchRequest) -> LaunchResult:
        job, name = self._load(request)
        existing = self._existing(name)
        if existing is not None:
            return LaunchResult(remote_id=name, url=_studio_url(existing), reattached=True)
        try:
            created = self.ml_client.jobs.create_or_update(job, experiment_name=job.experiment_name)
        except Exception as exc:
            if is_already_exists(exc):
                with azureml_errors(f"get job {name}"):
                    found = self.ml_client.jobs.get(name)
                return LaunchResult(remote_id=name, url=_studio_url(found), reattached=True)
            raise map_azureml_error(exc, f"submit pipeline job {name}") from exc
        return LaunchResult(remote_id=name, url=_studio_url(created), reattached=False)

    # ------------------------------------------------------------ poll

    def logs(self, remote_id: str) -> list[StepLog]:
        """Not fetched: Azure ML keeps a pipeline job's logs (one folder per child job) in the
        workspace; downloading them is a separate artifact transfer, so this says where they are."""
        return [
            StepLog(
                "job",
                note=f"Azure ML keeps the logs of pipeline job {remote_id} in the workspace; they are not "
                f"fetched here: `az ml job download --name {remote_id} --all`, or the job's studio page",
            )
        ]

    def poll(self, remote_id: str) -> StepStatus:
        with azureml_errors(f"get job {remote_id}"):
            job = self.ml_client.jobs.get(remote_id)
        state = job_state(getattr(job, "status", None))
        if state == "running":
            return StepStatus("running", progress=self._progress(remote_id))
        if state == "cancelled":
            return StepStatus("cancelled", error=f"Azure ML job {remote_id} was canceled")
        if state == "failed":
            return StepStatus("failed", error=self._failure(remote_id, job))
        return StepStatus("succeeded", outputs=self._outputs(remote_id, job))

    def _children(self, name: str) -> list[Any]:
        with azureml_errors(f"list child jobs of {name}"):
            return list(self.ml_client.jobs.list(parent_job_name=name))

    def _progress(self, name: str) -> dict[str, int] | None:
        try:
            children = self._children(name)
        except ConveyorError:
            return None
        if not children:
            return None
        done = sum(1 for c in children if job_state(getattr(c, "status", None)) == "succeeded")
        return {"done": done, "total": len(children)}

    def _failure(self, name: str, job: Any) -> str:
        status = getattr(job, "status", "Failed")
        parts = [f"Azure ML job {name} {status}"]
        detail = _run_error(self.ml_client, name)
        failed = []
        with contextlib.suppress(ConveyorError):
            for child in self._children(name):
                if job_state(getattr(child, "status", None)) == "failed":
                    label = getattr(child, "display_name", None) or child.name
                    failed.append(label)
                    if not detail:
                        detail = _run_error(self.ml_client, child.name)
        if failed:
            parts.append(f"(failed: {', '.join(failed)})")
        text = " ".join(parts)
        if detail:
            text += f": {detail}"
        url = _studio_url(job)
        if url:
            text += f"\nsee {url}"
        return text

    def _outputs(self, name: str, job: Any) -> dict[str, Any]:
        children = self._children(name)
        by_label: dict[str, Any] = {}
        for child in children:
            for label in (getattr(child, "display_name", None), getattr(child, "name", None)):
                if label:
                    by_label.setdefault(str(label), child)
        nodes = dict(getattr(job, "jobs", None) or {})
        outputs: dict[str, str] = {}
        model_uri: str | None = None
        ordered_children: list[Any] = []
        for node_name, node in nodes.items():
            child = by_label.get(str(getattr(node, "display_name", None) or "")) or by_label.get(node_name)
            if child is not None and child not in ordered_children:
                ordered_children.append(child)
            for oname, out in dict(getattr(node, "outputs", None) or {}).items():
                uri = _output_uri(name, child, oname, out)
                if uri is None:
                    continue
                outputs[f"{node_name}.{oname}"] = uri
                if model_uri is None and oname == "model":
                    model_uri = uri
        for pname in dict(getattr(job, "outputs", None) or {}):
            outputs.setdefault(f"pipeline.{pname}", f"azureml://jobs/{name}/outputs/{pname}")
        if model_uri is None and "model" in dict(getattr(job, "outputs", None) or {}):
            model_uri = f"azureml://jobs/{name}/outputs/model"
        ordered_children += [c for c in children if c not in ordered_children]
        metrics: dict[str, float] = {}
        reader = self._metrics()
        if reader is not None:
            for child in ordered_children or [job]:
                metrics.update(reader(str(child.name)))
        result: dict[str, Any] = {
            "pipeline_run": name,
            "metrics": metrics,
            "outputs": outputs,
            "model_uri": model_uri,
            "studio_url": _studio_url(job),
        }
        literals = {
            str(k)[len(INPUT_TAG_PREFIX) :]: str(v)
            for k, v in dict(getattr(job, "tags", None) or {}).items()
            if str(k).startswith(INPUT_TAG_PREFIX)
        }
        if literals:
            result["inputs"] = literals
        return result

    def _metrics(self) -> MetricsReader | None:
        if self._metrics_reader is None:
            credential = self._credential or getattr(self.ml_client, "_credential", None)
            workspace = getattr(self.ml_client, "workspace_name", None)
            if credential is None or not workspace:
                return None
            with azureml_errors(f"get workspace {workspace}"):
                uri = self.ml_client.workspaces.get(workspace).mlflow_tracking_uri
            if not uri:
                return None
            self._metrics_reader = MlflowRestMetrics(uri, credential)
        return self._metrics_reader

    # ------------------------------------------------------------ cancel

    def cancel(self, remote_id: str) -> None:
        """Ask Azure ML to cancel (no wait); a no-op when the job has already finished."""
        try:
            self.ml_client.jobs.begin_cancel(remote_id)
        except Exception as exc:
            err = map_azureml_error(exc, f"cancel job {remote_id}")
            if isinstance(err, NotFoundError):
                return
            if not err.retryable:
                with azureml_errors(f"get job {remote_id}"):
                    job = self.ml_client.jobs.get(remote_id)
                if job_state(getattr(job, "status", None)) != "running":
                    return
            raise err from exc


def _studio_url(job: Any) -> str | None:
    try:
        url = getattr(job, "studio_url", None)
    except Exception:  # studio_url derives from the id; a partial entity may not have one
        return None
    return str(url) if url else None


def _declared_type(pipeline_input: Any) -> str:
    """The declared type of a pipeline input (``PipelineInput`` keeps the YAML's declaration in ``_data``)."""
    for source in (pipeline_input, getattr(pipeline_input, "_meta", None), getattr(pipeline_input, "_data", None)):
        if isinstance(source, dict):
            value = source.get("type")
        else:
            value = getattr(source, "type", None) if source is not None else None
        if isinstance(value, str) and value:
            return value
    return ""


def _output_uri(pipeline: str, child: Any | None, oname: str, out: Any) -> str | None:
    """``azureml://jobs/<pipeline>/outputs/<p>`` when bound to a pipeline output, else on the child job."""
    binding = getattr(out, "_data", None)  # azure-ai-ml keeps a node output's binding expression here
    if isinstance(binding, str):
        expr = binding.strip()
        prefix, suffix = "${{parent.outputs.", "}}"
        if expr.startswith(prefix) and expr.endswith(suffix):
            return f"azureml://jobs/{pipeline}/outputs/{expr[len(prefix) : -len(suffix)]}"
    if child is not None:
        return f"azureml://jobs/{child.name}/outputs/{oname}"
    return None


def _run_error(ml_client: Any, name: str) -> str | None:
    """The run's error message from run history (azure-ai-ml's own stream() reads it the same way)."""
    runs = getattr(ml_client.jobs, "_runs_operations", None)
    if runs is None:
        return None
    try:
        details = runs.get_run_details(name)
    except Exception:
        return None
    error = getattr(details, "error", None)
    if error is None:
        return None
    doc = error.as_dict() if hasattr(error, "as_dict") else error
    if isinstance(doc, dict):
        inner: dict[str, Any] = doc["error"] if isinstance(doc.get("error"), dict) else doc
        message = inner.get("message") or json.dumps(inner)[:500]
        code = inner.get("code")
        return f"{code}: {message}" if code else str(message)
    return str(doc)[:500]
