"""Azure ML SDK v1 (azureml-core): run a *published pipeline* as a step.

.. warning::
   Azure ML SDK v1 (``azureml-core``, ``azureml-pipeline-*``) is **past its end of support
   (2026-06-30)**: Microsoft no longer fixes it and its legacy services may stop working at any
   time. It is here because it was asked for; new flows should use the v2 adapter
   (``CONVEYOR_AZUREML_SDK=v2``, azure-ai-ml). Building any v1 adapter logs this once per process.

How a step runs (the documented v1 pattern for published pipelines):

* **Submit** — ``POST {endpoint}`` where ``endpoint`` is the published pipeline's REST endpoint
  (``PublishedPipeline.get(ws, id).endpoint``, i.e.
  ``https://<region>.api.azureml.ms/pipelines/v1.0/subscriptions/<sub>/resourceGroups/<rg>/providers/
  Microsoft.MachineLearningServices/workspaces/<ws>/PipelineRuns/PipelineSubmit/<id>``) with
  ``Authorization: Bearer <AAD token for https://management.azure.com/.default>`` and the JSON body
  ``{"ExperimentName": params.experiment, "ParameterAssignments": params.inputs, "RunSource": "SDK"}``.
  The response's ``"Id"`` is the pipeline run id (our ``remote_id``). 429/502/503/504 and connection
  failures are retried here (bounded, exponential backoff, ``Retry-After`` honoured); other statuses
  map to shared.errors with the service's own message (400 → BadRequestError, 401/403 → AuthError,
  404 → NotFoundError, 5xx → TransientError).
* **Idempotency** — the v1 submit API takes no idempotency token. Before submitting, the experiment
  is searched for a run tagged ``conveyor.key == request.key`` (``Experiment(ws, name).get_runs(tags=
  {...})``); one found is reattached. Right after the POST the new run is tagged (``conveyor.key``,
  ``conveyor.traceparent``, run/flow/step) through ``Run.get(ws, id).set_tags``; if tagging fails
  the untagged run is cancelled before the error is raised, so a retry does not leave an orphan.
  **Known window**: a crash (or a read timeout after the service accepted the POST) between the
  POST and the tagging leaves a run the key lookup cannot see, and a redelivered launch submits a
  second one. The submit body's documented fields carry no tag we could search on instead.
* **Poll** — ``Run.get(ws, id).get_status()``: NotStarted/Starting/Provisioning/Preparing/Queued/
  Running/Finalizing/CancelRequested/NotResponding → running; Completed/Finished → succeeded;
  Failed → failed (the run's error message, plus the first failed step's); Canceled → cancelled.
  Outputs on success (same keys as the local adapter):

  - ``pipeline_run``: the pipeline run id;
  - ``metrics``: the step runs' metrics merged in start order, then the pipeline run's own (a name
    logged several times keeps its last value; non-scalar metrics such as tables are left out);
  - ``model_uri``: v1 has no typed pipeline outputs in azureml-core, so the convention is the run
    history's ``outputs/`` folder: the first step (in start order) that uploaded files under
    ``outputs/model/`` gives ``azureml://jobs/<step run id>/outputs/artifacts/paths/outputs/model/``
    (the artifact URI form both SDKs understand; the v1 registry registers it with
    ``Run.register_model``); None when no step wrote one;
  - ``outputs``: ``{"<step name>.model": model_uri}`` when found;
  - ``portal_url``: the run's Azure ML studio URL.
* **Cancel** — ``run.cancel()`` unless already finished.

The SDK surface used (``Experiment``, ``Run``, ``Model``, ``Webservice``, ``AciWebservice``,
``AksWebservice``, ``AksCompute``) is reached through ``sdk`` (default: a lazy ``azureml.core``
namespace) so tests can hand in fakes: azureml-core's workspace discovery is impractical to fake over
HTTP. azureml-core and requests are imported lazily (``import shared.backends.azureml_v1`` loads
neither).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from shared.azureml_common import workspace_ids
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.errors import (
    AuthError,
    BadRequestError,
    ConveyorError,
    NotFoundError,
    PermanentError,
    ThrottledError,
    TransientError,
    ValidationError,
    classify_http_status,
)

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "azureml-v1"
END_OF_SUPPORT = "2026-06-30"
ARM_SCOPE = "https://management.azure.com/.default"
KEY_TAG = "conveyor.key"
TRACE_TAG = "conveyor.traceparent"
MODEL_FOLDER = "outputs/model/"
_EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
_RUNNING = {
    "notstarted",
    "starting",
    "provisioning",
    "preparing",
    "queued",
    "running",
    "finalizing",
    "cancelrequested",
    "notresponding",
    "pausing",
    "paused",
}
_SUCCEEDED = {"completed", "finished"}
_FAILED = {"failed"}
_CANCELLED = {"canceled", "cancelled"}
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_DETAIL = 500

_warned = False
_warn_lock = threading.Lock()


def warn_end_of_support(what: str) -> None:
    """Log, once per process, that Azure ML SDK v1 is past its end of support."""
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    log.warning(
        "%s uses Azure ML SDK v1 (azureml-core), which is past its end of support (%s): "
        "it gets no fixes and its legacy services may stop working; prefer CONVEYOR_AZUREML_SDK=v2",
        what,
        END_OF_SUPPORT,
    )


# ---------------------------------------------------------------- SDK surface and workspace


def load_sdk() -> SimpleNamespace:
    """The azureml-core classes the v1 adapters use (imported here, lazily)."""
    from azureml.core import Experiment, Model, Run
    from azureml.core.compute import AksCompute
    from azureml.core.webservice import AciWebservice, AksWebservice, Webservice

    return SimpleNamespace(
        Experiment=Experiment,
        Run=Run,
        Model=Model,
        Webservice=Webservice,
        AciWebservice=AciWebservice,
        AksWebservice=AksWebservice,
        AksCompute=AksCompute,
    )


def _scope_for(resource: str) -> str:
    """An AAD scope for an azureml-core 'audience' (a v1 resource id such as https://management.core.windows.net/)."""
    if resource.endswith("/.default"):
        return resource
    return resource + ".default" if resource.endswith("/") else resource + "/.default"


def workspace_from_settings(settings: Settings, credential: Any | None = None) -> Any:
    """``azureml.core.Workspace`` for the configured workspace, authenticated with the app's identity.

    Uses ``TokenAuthentication`` fed by the azure-identity credential (managed identity in Azure),
    so no service principal secret or CLI login is needed.
    """
    subscription, group, name = workspace_ids(settings)
    if credential is None:
        from shared.azure_identity import get_credential

        credential = get_credential(settings)
    cred = credential
    with azureml_errors(f"open workspace {name}"):
        from azureml.core import Workspace
        from azureml.core.authentication import TokenAuthentication

        auth = TokenAuthentication(lambda audience: cred.get_token(_scope_for(str(audience))).token)
        return Workspace(subscription_id=subscription, resource_group=group, workspace_name=name, auth=auth)


class AzureMLv1Workspace:
    """What every v1 adapter reaches lazily: ``sdk`` (default :func:`load_sdk`) and ``workspace`` (the one
    handed in, else built once, thread-safely, by ``workspace_factory``). Subclasses call ``_init_workspace``."""

    def _init_workspace(
        self, workspace: Any | None, sdk: Any | None, workspace_factory: Callable[[], Any] | None
    ) -> None:
        self._workspace = workspace
        self._workspace_factory = workspace_factory
        self._sdk = sdk
        self._workspace_lock = threading.Lock()

    @property
    def sdk(self) -> Any:
        if self._sdk is None:
            self._sdk = load_sdk()
        return self._sdk

    @property
    def workspace(self) -> Any:
        if self._workspace is None:
            with self._workspace_lock:
                if self._workspace is None:
                    if self._workspace_factory is None:
                        raise ValidationError("no Azure ML workspace configured", field="CONVEYOR_AZUREML_WORKSPACE")
                    self._workspace = self._workspace_factory()
        return self._workspace


def default_rest_endpoint_for(workspace: Any) -> Callable[[str], str]:
    """published pipeline id → its REST endpoint.

    ``PublishedPipeline.get(ws, id).endpoint`` when azureml-pipeline-core is installed; otherwise the
    same URL built from the workspace's discovered pipelines service and scope.
    """

    def endpoint_for(published_pipeline_id: str) -> str:
        try:
            from azureml.pipeline.core import PublishedPipeline  # type: ignore[import-not-found]
        except ImportError:
            ctx = workspace.service_context
            base = str(ctx._get_pipelines_url()).rstrip("/")
            return (
                f"{base}/pipelines/v1.0{ctx._get_workspace_scope()}/PipelineRuns/PipelineSubmit/{published_pipeline_id}"
            )
        with azureml_errors(f"published pipeline {published_pipeline_id}"):
            return str(PublishedPipeline.get(workspace, published_pipeline_id).endpoint)

    return endpoint_for


# ---------------------------------------------------------------- errors


def _first_line(text: str) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:_MAX_DETAIL] if text else ""


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        with contextlib.suppress(TypeError, ValueError):
            if value is not None and str(value).strip():
                return int(str(value).strip())
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return int(value) if isinstance(value, int) else None


def _message_of(exc: BaseException) -> str:
    """The service's message: ServiceException/AzureMLException keep it in ``.message``."""
    message = getattr(exc, "message", None)
    text = str(message) if message else str(exc)
    details = getattr(exc, "details", None)
    if isinstance(details, list):
        extra = [str(getattr(d, "message", d)) for d in details if getattr(d, "message", d)]
        if extra:
            text = f"{text} ({'; '.join(extra)})"
    # WebserviceException messages embed the response: keep the service's "message" line when present.
    m = re.search(r'"message"\s*:\s*"([^"]+)"', text)
    if m and text.startswith("Received bad response"):
        return m.group(1)[:_MAX_DETAIL]
    return _first_line(text) or type(exc).__name__


def map_azureml_v1_error(exc: BaseException, what: str) -> ConveyorError:
    """Conveyor's error for an azureml-core / requests exception raised while doing ``what``."""
    if isinstance(exc, ConveyorError):
        return exc
    name = type(exc).__name__
    detail = _message_of(exc)
    label = f"{what}: {detail}"
    status = _status_of(exc)
    if name in ("ModelNotFoundException", "ModelPathNotFoundException", "DiscoveryUrlNotFoundException"):
        return NotFoundError(label, service=SERVICE, status=404)
    if name == "AuthenticationException":
        return AuthError(label, service=SERVICE, status=status or 401)
    if isinstance(exc, TimeoutError | ConnectionError) or name in (
        "ConnectionError",
        "ConnectTimeout",
        "ReadTimeout",
        "Timeout",
        "ChunkedEncodingError",
    ):
        return TransientError(f"{what}: {name}: {detail}", service=SERVICE)
    if status is None and re.search(r"NotFound\b|not found", detail):
        return NotFoundError(label, service=SERVICE, status=404)
    if status is not None:
        cls = classify_http_status(status)
        return cls(label, service=SERVICE, status=status)
    if name in ("UserErrorException", "RunConfigurationException", "ComputeTargetException"):
        return BadRequestError(label, service=SERVICE)
    if re.search(r"timed? ?out|temporar|throttl|too many requests", detail, re.I):
        return TransientError(label, service=SERVICE)
    if name.endswith("Exception") or name.endswith("Error"):
        return PermanentError(label, service=SERVICE)
    return ConveyorError(label, service=SERVICE)


@contextlib.contextmanager
def azureml_errors(what: str) -> Iterator[None]:
    """Map anything the SDK raises inside the block (except our own errors) into shared.errors."""
    try:
        yield
    except ConveyorError:
        raise
    except Exception as exc:
        raise map_azureml_v1_error(exc, what) from exc


def _service_message(response: Any) -> str:
    """The error message in a v1 service response body (``{"error": {"code", "message"}}`` and kin)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error") or body.get("Error")
        if isinstance(err, dict):
            code = err.get("code") or err.get("Code")
            msg = err.get("message") or err.get("Message")
            if msg:
                return f"{code}: {msg}" if code else str(msg)
        for key in ("message", "Message"):
            if body.get(key):
                return str(body[key])
    return _first_line(getattr(response, "text", "") or "") or f"HTTP {response.status_code}"


# ---------------------------------------------------------------- backend


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of the submit POST on throttling / unavailability / connection failures."""

    attempts: int = 4
    backoff: float = 1.0  # first wait, doubled each time
    max_backoff: float = 20.0
    timeout: float = 60.0  # per request (connect, read)

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            with contextlib.suppress(ValueError):
                return min(max(float(retry_after), 0.0), self.max_backoff)
        return min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)


class AzureMLv1Backend(AzureMLv1Workspace, JobBackend):
    """JobBackend for ``kind: azureml`` on SDK v1: published pipelines (see the module docstring)."""

    kind = "azureml"

    def __init__(
        self,
        session: Any,
        rest_endpoint_for: Callable[[str], str] | None,
        workspace: Any | None = None,
        *,
        credential: Any | None = None,
        sdk: Any | None = None,
        workspace_factory: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        warn_end_of_support("the azureml step backend")
        self.session = session
        self._rest_endpoint_for = rest_endpoint_for
        self._init_workspace(workspace, sdk, workspace_factory)
        self.credential = credential
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._token: tuple[str, float] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, workspace: Any | None = None, session: Any | None = None
    ) -> AzureMLv1Backend:
        from shared.azure_identity import get_credential

        credential = get_credential(settings)
        if session is None:
            import requests

            session = requests.Session()
        return cls(
            session,
            None,
            workspace,
            credential=credential,
            workspace_factory=lambda: workspace_from_settings(settings, credential),
        )

    # ------------------------------------------------------------ plumbing

    def rest_endpoint_for(self, published_pipeline_id: str) -> str:
        if self._rest_endpoint_for is None:
            self._rest_endpoint_for = default_rest_endpoint_for(self.workspace)
        return self._rest_endpoint_for(published_pipeline_id)

    def _bearer(self) -> str:
        now = time.time()
        if self._token is None or self._token[1] - 300 <= now:
            if self.credential is None:
                raise AuthError("no credential to get an Azure ML token with", service=SERVICE)
            try:
                token = self.credential.get_token(ARM_SCOPE)
            except Exception as exc:
                raise AuthError(
                    f"could not get a token for {ARM_SCOPE}: {_first_line(str(exc))}", service=SERVICE
                ) from exc
            self._token = (str(token.token), float(token.expires_on))
        return self._token[0]

    def _run(self, run_id: str) -> Any:
        ws = self.workspace
        with azureml_errors(f"run {run_id}"):
            return self.sdk.Run.get(ws, run_id)

    # ------------------------------------------------------------ launch

    def _params(self, request: LaunchRequest) -> Any:
        from shared.backends.register import parse_params
        from shared.flows.model import AzureMLParams

        params = parse_params(AzureMLParams, request.params)
        if not params.published_pipeline_id:
            raise ValidationError(
                "the Azure ML v1 adapter runs published pipelines: set params.published_pipeline_id "
                "(params.pipeline is a v2 pipeline job YAML: use CONVEYOR_AZUREML_SDK=v2 for it)",
                field="params.published_pipeline_id",
            )
        if not _EXPERIMENT_RE.match(params.experiment):
            raise ValidationError(
                "experiment names are 1-255 of A-Z a-z 0-9 _ - starting with a letter or digit, "
                f"got {params.experiment!r}",
                field="params.experiment",
            )
        return params

    def find_run(self, experiment: str, key: str) -> Any | None:
        """The run in ``experiment`` tagged ``conveyor.key == key`` (the newest, if several)."""
        ws = self.workspace
        with azureml_errors(f"search experiment {experiment} for key {key}"):
            exp = self.sdk.Experiment(ws, experiment)
            for run in exp.get_runs(tags={KEY_TAG: key}):
                return run
        return None

    def launch(self, request: LaunchRequest) -> LaunchResult:
        params = self._params(request)
        if request.env:
            raise ValidationError(
                "a published pipeline's environment is fixed when it is published: env: cannot be set per run",
                field="env",
            )
        existing = self.find_run(params.experiment, request.key)
        if existing is not None:
            return LaunchResult(remote_id=str(existing.id), url=self._portal_url(existing), reattached=True)
        endpoint = self.rest_endpoint_for(params.published_pipeline_id)
        body = {
            "ExperimentName": params.experiment,
            "ParameterAssignments": dict(params.inputs),
            "RunSource": "SDK",
        }
        run_id = self.submit(endpoint, body)
        run = self._tag_or_cancel(run_id, request)
        return LaunchResult(remote_id=run_id, url=self._portal_url(run))

    def submit(self, endpoint: str, body: dict[str, Any]) -> str:
        """POST the submission (bounded retries on 429/502/503/504 and connection failures); the run id."""
        what = f"submit published pipeline to {endpoint.split('?')[0].rsplit('/', 1)[-1]}"
        attempt = 0
        while True:
            attempt += 1
            headers = {"Authorization": f"Bearer {self._bearer()}", "Content-Type": "application/json"}
            try:
                response = self.session.post(endpoint, json=body, headers=headers, timeout=self.retry.timeout)
            except Exception as exc:
                err = map_azureml_v1_error(exc, what)
                # Only failures before the request reached the service are safe to resend.
                sent = type(exc).__name__ in ("ReadTimeout", "ChunkedEncodingError")
                if err.retryable and not sent and attempt < self.retry.attempts:
                    self._sleep(self.retry.delay(attempt, None))
                    continue
                raise err from exc
            status = int(response.status_code)
            if status < 300:
                try:
                    doc = response.json()
                except ValueError:
                    doc = None
                run_id = doc.get("Id") if isinstance(doc, dict) else None
                if not run_id:
                    raise PermanentError(
                        f"{what}: the response has no run Id: {_first_line(response.text)}",
                        service=SERVICE,
                        status=status,
                    )
                return str(run_id)
            message = f"{what}: HTTP {status}: {_service_message(response)}"
            if status in _RETRY_STATUSES and attempt < self.retry.attempts:
                log.info("%s (attempt %d of %d, retrying)", message, attempt, self.retry.attempts)
                self._sleep(self.retry.delay(attempt, response.headers.get("Retry-After")))
                continue
            if status == 429:
                raise ThrottledError(message, service=SERVICE, status=status)
            if status == 401:
                self._token = None
            raise classify_http_status(status)(message, service=SERVICE, status=status)

    def _tag_or_cancel(self, run_id: str, request: LaunchRequest) -> Any:
        tags = {
            KEY_TAG: request.key,
            TRACE_TAG: request.traceparent,
            "conveyor.run_id": request.run_id,
            "conveyor.flow": request.flow,
            "conveyor.step": request.step,
            **request.index_tags(),
        }
        tags = {k: v for k, v in tags.items() if v}
        last: ConveyorError | None = None
        for attempt in range(1, self.retry.attempts + 1):
            try:
                run = self._run(run_id)
                with azureml_errors(f"tag run {run_id}"):
                    run.set_tags(tags)
                return run
            except ConveyorError as exc:
                last = exc
                if not exc.retryable:
                    break
                if attempt < self.retry.attempts:
                    self._sleep(self.retry.delay(attempt, None))
        assert last is not None
        log.warning("could not tag pipeline run %s with its key; cancelling it: %s", run_id, last)
        with contextlib.suppress(Exception):
            self._run(run_id).cancel()
        raise last

    @staticmethod
    def _portal_url(run: Any) -> str | None:
        try:
            url = run.get_portal_url()
        except Exception:
            return None
        return str(url) if url else None

    # ------------------------------------------------------------ poll / cancel

    def logs(self, remote_id: str) -> list[StepLog]:
        """Not fetched: the pipeline run's logs stay in the workspace (its portal page)."""
        return [
            StepLog(
                "run",
                note=f"Azure ML (v1) keeps the logs of pipeline run {remote_id} in the workspace; they are not "
                "fetched here: open the run's portal page (the step's remote url)",
            )
        ]

    def poll(self, remote_id: str) -> StepStatus:
        run = self._run(remote_id)
        with azureml_errors(f"status of run {remote_id}"):
            status = str(run.get_status() or "")
        state = status.lower()
        if state in _SUCCEEDED:
            return StepStatus("succeeded", outputs=self._outputs(run, remote_id))
        if state in _FAILED:
            return StepStatus("failed", error=self._failure(run, remote_id))
        if state in _CANCELLED:
            return StepStatus("cancelled", error=f"pipeline run {remote_id} was cancelled")
        if state and state not in _RUNNING:
            log.warning("pipeline run %s has an unknown status %r; treating it as running", remote_id, status)
        return StepStatus("running", progress=self._progress(run))

    @staticmethod
    def _children(run: Any) -> list[Any]:
        with azureml_errors(f"steps of run {run.id}"):
            children = list(run.get_children())

        def started(child: Any) -> str:
            try:
                return str(child.get_details().get("startTimeUtc") or "")
            except Exception:
                return ""

        return sorted(children, key=started)

    def _progress(self, run: Any) -> dict[str, int] | None:
        try:
            children = list(run.get_children())
        except Exception:
            return None
        if not children:
            return None
        done = sum(1 for c in children if str(c.get_status() or "").lower() in _SUCCEEDED)
        return {"done": done, "total": len(children)}

    def _outputs(self, run: Any, run_id: str) -> dict[str, Any]:
        children = self._children(run)
        metrics: dict[str, Any] = {}
        for child in [*children, run]:
            with azureml_errors(f"metrics of run {child.id}"):
                metrics.update(_scalar_metrics(child.get_metrics()))
        model_uri = None
        outputs: dict[str, str] = {}
        for child in [*children, run]:
            with azureml_errors(f"files of run {child.id}"):
                names = list(child.get_file_names())
            if any(str(n).startswith(MODEL_FOLDER) for n in names):
                model_uri = f"azureml://jobs/{child.id}/outputs/artifacts/paths/{MODEL_FOLDER}"
                step = str(getattr(child, "name", None) or child.id)
                outputs[f"{step}.model"] = model_uri
                break
        return {
            "pipeline_run": run_id,
            "metrics": metrics,
            "outputs": outputs,
            "model_uri": model_uri,
            "portal_url": self._portal_url(run),
        }

    def _failure(self, run: Any, run_id: str) -> str:
        message = _run_error(run) or "the pipeline run failed"
        try:
            children = self._children(run)
        except ConveyorError:
            children = []
        for child in children:
            if str(child.get_status() or "").lower() in _FAILED:
                step = str(getattr(child, "name", None) or child.id)
                child_msg = _run_error(child)
                if child_msg and child_msg not in message:
                    message = f"{message}; step {step!r} ({child.id}): {child_msg}"
                elif not child_msg:
                    message = f"{message}; step {step!r} ({child.id}) failed"
                break
        return f"pipeline run {run_id} failed: {message}"

    def cancel(self, remote_id: str) -> None:
        run = self._run(remote_id)
        with azureml_errors(f"cancel run {remote_id}"):
            status = str(run.get_status() or "").lower()
            if status in _SUCCEEDED | _FAILED | _CANCELLED:
                return
            run.cancel()


def _run_error(run: Any) -> str:
    """The error message in ``run.get_details()`` (``{"error": {"error": {"code", "message"}}}``)."""
    try:
        details = run.get_details() or {}
    except Exception:
        return ""
    err = details.get("error")
    if isinstance(err, dict):
        nested = err.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else err
        msg = inner.get("message") or ""
        code = inner.get("code") or ""
        if msg:
            return f"{code}: {msg}"[:_MAX_DETAIL] if code else str(msg)[:_MAX_DETAIL]
    if isinstance(err, str) and err:
        return err[:_MAX_DETAIL]
    return ""


def _scalar_metrics(raw: Any) -> dict[str, Any]:
    """Metric name → value; a metric logged several times (a list) keeps its last value."""
    out: dict[str, Any] = {}
    if not isinstance(raw, dict):
        return out
    for name, value in raw.items():
        if isinstance(value, list):
            value = value[-1] if value else None
        if isinstance(value, bool | int | float | str):
            out[str(name)] = value
    return out
