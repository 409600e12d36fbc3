"""Azure Databricks: the Jobs API (2.2, through databricks-sdk) as a JobBackend.

``params.job_id`` runs an existing job (``jobs/run-now``, ``python_params`` = ``params.parameters``);
``params.python_file`` submits a one-time run (``jobs/runs/submit``) of one ``spark_python_task``
whose task key is the step name, on:

- ``params.cluster = {"existing_cluster_id": "..."}``: that cluster;
- any other ``params.cluster``: a new cluster with that spec (``ClusterSpec``), with
  ``TRACEPARENT`` / ``CONVEYOR_RUN_ID`` added to its ``spark_env_vars`` (unless set);
- no ``params.cluster``: serverless compute, one environment (``environment_version`` 2).

Both send ``idempotency_token = request.key`` (≤64 characters): Databricks answers a repeated
token with the run it already started, so a redelivered launch reattaches instead of starting
a second run. The SDK returns a ``Wait``; nothing here waits on it. The remote id is the
Databricks run id.

``poll`` reads ``jobs/runs/get`` (``state`` and the newer ``status``), and on success reads the
task run's ``jobs/runs/get-output``: the ``dbutils.notebook.exit`` value, or else the last line
of the task's stdout, JSON-decoded when it parses, becomes the ``result`` output — the same
outputs as the local backend (``run_id``, ``result``) plus ``run_page_url``.

Auth (``CONVEYOR_DATABRICKS_AUTH``): ``azure-msi`` (default) takes Entra tokens for the Azure
Databricks resource from azure-identity (the app's managed identity) and, when
``CONVEYOR_DATABRICKS_RESOURCE_ID`` is set, adds the ARM management token and workspace
resource id headers (for an identity that is not yet a workspace user but has a role on the
workspace resource); ``pat`` uses ``CONVEYOR_DATABRICKS_TOKEN``; ``azure-client-secret`` uses a
service principal secret through the SDK's own ``azure-client-secret`` auth. Tokens are never
logged.

SDK errors are mapped at this edge (``map_databricks_error``): throttling, 5xx and timeouts are
retryable, bad requests / auth / not found are permanent, with the service's own message.
databricks.sdk is imported only inside the methods (cold start).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from shared.azure_errors import ErrorRule, first_rule
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    PermanentError,
    ThrottledError,
    TransientError,
    ValidationError,
)

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.jobs import Run, RunOutput, RunTask

    from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "databricks"
# The Entra application of Azure Databricks (the same id in every tenant) and ARM.
AZURE_DATABRICKS_SCOPE = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default"
AZURE_MANAGEMENT_SCOPE = "https://management.core.windows.net/.default"
MAX_IDEMPOTENCY_TOKEN = 64
SERVERLESS_ENVIRONMENT_KEY = "default"
SERVERLESS_ENVIRONMENT_VERSION = "2"
DEFAULT_RETRY_TIMEOUT_SECONDS = 60  # the SDK's own default (300 s) is too long inside a function
DEFAULT_HTTP_TIMEOUT_SECONDS = 60
AUTH_MODES = ("azure-msi", "pat", "azure-client-secret")

_RUNNING_LIFECYCLE = {"PENDING", "QUEUED", "RUNNING", "TERMINATING", "BLOCKED", "WAITING_FOR_RETRY", "WAITING"}
_TASK_DONE_LIFECYCLE = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}
_SUCCESS_RESULTS = {"SUCCESS", "SUCCESS_WITH_FAILURES"}
_CANCELLED = {"CANCELED", "USER_CANCELED"}
# Outcomes where trying again (a new attempt, a new run) may well succeed.
_RETRYABLE_RESULTS = {"MAXIMUM_CONCURRENT_RUNS_REACHED"}
_RETRYABLE_TERMINATION_CODES = {
    "INTERNAL_ERROR",
    "CLOUD_FAILURE",
    "CLUSTER_REQUEST_LIMIT_EXCEEDED",
    "MAX_CONCURRENT_RUNS_EXCEEDED",
    "MAX_JOB_QUEUE_SIZE_EXCEEDED",
    "MAX_SPARK_CONTEXTS_EXCEEDED",
    "WORKSPACE_RUN_LIMIT_EXCEEDED",
    "SKIPPED",
}
_RETRYABLE_TERMINATION_TYPES = {"INTERNAL_ERROR", "CLOUD_FAILURE"}
_MAX_MESSAGE = 500
_TRACE_LINES = 15


# --------------------------------------------------------------------------- errors


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0][:_MAX_MESSAGE] if text else ""


def map_databricks_error(exc: BaseException) -> ConveyorError:
    """The Conveyor error for a databricks-sdk (or requests / azure-identity) exception.

    429 / RESOURCE_EXHAUSTED / REQUEST_LIMIT_EXCEEDED → ThrottledError; 5xx, DEADLINE_EXCEEDED,
    ABORTED, connection failures and the SDK's own retry timeout → TransientError;
    401/403 → AuthError; 404 / RESOURCE_DOES_NOT_EXIST → NotFoundError; 409 → ConflictError;
    400 / INVALID_PARAMETER_VALUE / INVALID_STATE / 501 → BadRequestError. The message keeps the
    service's ``error_code`` and ``message``.
    """
    if isinstance(exc, ConveyorError):
        return exc
    from databricks.sdk import errors as dbx

    if isinstance(exc, dbx.DatabricksError):
        code = exc.error_code
        text = _first_line(str(exc)) or type(exc).__name__
        label = f"{code}: {text}" if code else text
        rules: list[ErrorRule] = [
            (dbx.TooManyRequests, ThrottledError, 429),
            (dbx.TemporarilyUnavailable, TransientError, 503),
            (dbx.DeadlineExceeded, TransientError, 504),
            (dbx.InternalError, TransientError, 500),
            (dbx.Aborted | dbx.Cancelled, TransientError, None),
            (dbx.Unauthenticated, AuthError, 401),
            (dbx.PermissionDenied, AuthError, 403),
            (dbx.NotFound, NotFoundError, 404),
            (dbx.ResourceConflict, ConflictError, 409),
            (dbx.BadRequest, BadRequestError, 400),
            (dbx.NotImplemented, BadRequestError, 501),
        ]
        # An error the SDK could not classify (e.g. a 502 from a gateway): worth another try.
        return first_rule(exc, rules, label, SERVICE) or TransientError(label, service=SERVICE)
    if isinstance(exc, TimeoutError):
        # The SDK's retry loop gave up (``retry_timeout_seconds``); the cause is the last error.
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, TimeoutError):
            inner = map_databricks_error(cause)
            if inner.retryable:
                return type(inner)(f"{inner.message} (gave up retrying: {exc})", service=SERVICE, status=inner.status)
        return TransientError(f"TimeoutError: {_first_line(str(exc))}", service=SERVICE)
    import requests  # a dependency of databricks-sdk

    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return TransientError(f"{type(exc).__name__}: {_first_line(str(exc))}", service=SERVICE)
    if type(exc).__module__.startswith("azure."):
        from shared.azure_errors import map_azure_error

        return map_azure_error(exc, SERVICE)
    if isinstance(exc, ConnectionError):
        return TransientError(f"{type(exc).__name__}: {_first_line(str(exc))}", service=SERVICE)
    return ConveyorError(f"{type(exc).__name__}: {_first_line(str(exc))}", service=SERVICE)


# --------------------------------------------------------------------------- auth


class AzureIdentityHeaders:
    """Request headers from an azure-core TokenCredential, tokens cached until 5 minutes before expiry.

    ``Authorization: Bearer <token for the Azure Databricks resource>``; with a workspace resource
    id also ``X-Databricks-Azure-SP-Management-Token`` (an ARM token) and
    ``X-Databricks-Azure-Workspace-Resource-Id``.
    """

    REFRESH_MARGIN_SECONDS = 300

    def __init__(self, credential: Any, resource_id: str | None = None) -> None:
        self._credential = credential
        self._resource_id = resource_id
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _token(self, scope: str) -> str:
        with self._lock:
            cached = self._tokens.get(scope)
            if cached and cached[1] - self.REFRESH_MARGIN_SECONDS > time.time():
                return cached[0]
            token = self._credential.get_token(scope)
            self._tokens[scope] = (token.token, float(token.expires_on))
            return str(token.token)

    def __call__(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token(AZURE_DATABRICKS_SCOPE)}"}
        if self._resource_id:
            headers["X-Databricks-Azure-SP-Management-Token"] = self._token(AZURE_MANAGEMENT_SCOPE)
            headers["X-Databricks-Azure-Workspace-Resource-Id"] = self._resource_id
        return headers


def azure_identity_strategy(credential: Any, resource_id: str | None = None) -> Any:
    """A databricks-sdk ``CredentialsStrategy`` (``Config(credentials_strategy=...)``) over azure-identity."""
    from databricks.sdk.credentials_provider import CredentialsStrategy

    class _AzureIdentityStrategy(CredentialsStrategy):
        def auth_type(self) -> str:
            return "conveyor-azure-identity"

        def __call__(self, cfg: Any) -> Any:
            return AzureIdentityHeaders(credential, resource_id)

    return _AzureIdentityStrategy()


def config_kwargs(settings: Settings, credential: Any | None = None) -> dict[str, Any]:
    """The ``databricks.sdk.core.Config`` arguments for the configured auth (secrets included: never log)."""
    az = settings.azure
    host = az.require("databricks_host", "CONVEYOR_DATABRICKS_HOST").rstrip("/")
    auth = (az.databricks_auth or "azure-msi").lower()
    if auth == "pat":
        return {"host": host, "token": az.require("databricks_token", "CONVEYOR_DATABRICKS_TOKEN"), "auth_type": "pat"}
    if auth == "azure-client-secret":
        return {
            "host": host,
            "azure_client_id": az.require("databricks_client_id", "CONVEYOR_DATABRICKS_CLIENT_ID"),
            "azure_client_secret": az.require("databricks_client_secret", "CONVEYOR_DATABRICKS_CLIENT_SECRET"),
            "azure_tenant_id": az.require("databricks_tenant_id", "CONVEYOR_DATABRICKS_TENANT_ID"),
            **({"azure_workspace_resource_id": az.databricks_resource_id} if az.databricks_resource_id else {}),
            "auth_type": "azure-client-secret",
        }
    if auth == "azure-msi":
        if credential is None:
            from shared.azure_identity import get_credential

            credential = get_credential(settings)
        return {"host": host, "credentials_strategy": azure_identity_strategy(credential, az.databricks_resource_id)}
    raise ValidationError(
        f"unknown auth {auth!r}; use one of {', '.join(AUTH_MODES)}", field="CONVEYOR_DATABRICKS_AUTH"
    )


# --------------------------------------------------------------------------- backend


def _enum_value(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _decode(text: str | None) -> Any:
    """JSON-decoded when it parses, else the text (like the local backend's exit value)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _last_line(text: str | None) -> str | None:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _tail(text: str | None, lines: int = _TRACE_LINES) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


class DatabricksJobsBackend(JobBackend):
    """JobBackend over the Databricks Jobs API; ``client`` is an already-built ``WorkspaceClient``."""

    kind = "databricks"

    def __init__(self, client: WorkspaceClient) -> None:
        self.client = client

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        client: WorkspaceClient | None = None,
        *,
        credential: Any | None = None,
        retry_timeout_seconds: int = DEFAULT_RETRY_TIMEOUT_SECONDS,
        http_timeout_seconds: int = DEFAULT_HTTP_TIMEOUT_SECONDS,
    ) -> DatabricksJobsBackend:
        """Build the client from settings (unless given). ``credential`` overrides get_credential (azure-msi).

        ``retry_timeout_seconds`` caps the SDK's own retries of 429/503 and connection errors.
        """
        if client is None:
            kwargs = config_kwargs(settings, credential)
            from databricks.sdk import WorkspaceClient
            from databricks.sdk.core import Config

            try:
                config = Config(
                    **kwargs,
                    retry_timeout_seconds=retry_timeout_seconds,
                    http_timeout_seconds=http_timeout_seconds,
                )
            except ValueError as exc:
                # The SDK's message names its own fields; it carries no secret values.
                raise ValidationError(
                    f"cannot configure the Databricks client: {_first_line(str(exc))}", field="CONVEYOR_DATABRICKS_AUTH"
                ) from exc
            client = WorkspaceClient(config=config)
        return cls(client)

    # ---------------------------------------------------------------- launch

    def launch(self, request: LaunchRequest) -> LaunchResult:
        from shared.backends.commandline import validation_error
        from shared.flows.model import DatabricksParams

        try:
            params = DatabricksParams.model_validate(request.params)
        except Exception as exc:
            raise validation_error(exc) from exc
        key = request.key
        if not key or len(key) > MAX_IDEMPOTENCY_TOKEN:
            raise ValidationError(
                f"the idempotency key must be 1..{MAX_IDEMPOTENCY_TOKEN} characters (Databricks idempotency_token), "
                f"got {len(key)}",
                field="key",
            )
        cluster = params.cluster or {}
        if request.env and (params.job_id is not None or not cluster or set(cluster) == {"existing_cluster_id"}):
            raise ValidationError(
                "a Databricks step's env: is set as spark_env_vars of a one-time run's new cluster (params.cluster); "
                "an existing job, an existing cluster or serverless compute keeps its own environment",
                field="env",
            )
        try:
            if params.job_id is not None:
                waiter = self.client.jobs.run_now(
                    params.job_id,
                    idempotency_token=key,
                    python_params=[str(p) for p in params.parameters] if params.parameters else None,
                )
            else:
                waiter = self._submit(request, params.python_file or "", params.parameters, params.cluster)
        except Exception as exc:
            raise map_databricks_error(exc) from exc
        response = waiter.response
        run_id = getattr(response, "run_id", None)
        if run_id is None:
            raise TransientError("the Jobs API answered without a run_id", service=SERVICE)
        log.info("databricks run %s for %s (step %s)", run_id, key, request.step)
        return LaunchResult(remote_id=str(run_id))

    def _submit(self, request: LaunchRequest, python_file: str, parameters: list[str], cluster: dict | None) -> Any:
        from databricks.sdk.service.compute import ClusterSpec, Environment
        from databricks.sdk.service.jobs import JobEnvironment, SparkPythonTask, SubmitTask

        task = SubmitTask(
            task_key=_task_key(request.step),
            spark_python_task=SparkPythonTask(python_file=python_file, parameters=[str(p) for p in parameters]),
        )
        environments = None
        if cluster and set(cluster) == {"existing_cluster_id"}:
            task.existing_cluster_id = str(cluster["existing_cluster_id"])
        elif cluster:
            spec = ClusterSpec.from_dict(cluster)
            env_vars = {**request.env, **(spec.spark_env_vars or {})}  # the step's env:, then the cluster spec's
            if request.traceparent:
                env_vars.setdefault("TRACEPARENT", request.traceparent)
            env_vars.setdefault("CONVEYOR_RUN_ID", request.run_id)
            spec.spark_env_vars = env_vars
            task.new_cluster = spec
        else:
            task.environment_key = SERVERLESS_ENVIRONMENT_KEY
            environments = [
                JobEnvironment(
                    environment_key=SERVERLESS_ENVIRONMENT_KEY,
                    spec=Environment(environment_version=SERVERLESS_ENVIRONMENT_VERSION),
                )
            ]
        return self.client.jobs.submit(
            run_name=f"conveyor-{request.flow}-{request.unit}-{request.run_id}",
            idempotency_token=request.key,
            tasks=[task],
            environments=environments,
        )

    # ---------------------------------------------------------------- poll

    def poll(self, remote_id: str) -> StepStatus:
        run_id = _run_id(remote_id)
        try:
            run = self.client.jobs.get_run(run_id)
        except Exception as exc:
            raise map_databricks_error(exc) from exc
        tasks = list(run.tasks or [])
        total = max(len(tasks), 1)
        done = sum(1 for t in tasks if _task_done(t))
        state, detail, retryable = _outcome(run)
        if state == "running":
            return StepStatus(state="running", progress={"done": done, "total": total})
        progress = {"done": total if state == "succeeded" else done, "total": total}
        if state == "succeeded":
            outputs: dict[str, Any] = {"run_id": run.run_id or run_id, "result": None, "run_page_url": run.run_page_url}
            task = _result_task(run)
            output = self._output(task.run_id if task and task.run_id else run_id, must=True)
            if output is not None:
                outputs["result"] = _result(output)
            return StepStatus(state="succeeded", outputs=outputs, progress=progress)
        if state == "cancelled":
            return StepStatus(state="cancelled", progress=progress, error=f"Databricks run {run_id} {detail}".strip())
        error = f"Databricks run {run_id} {detail}".strip()
        failed = _failed_task(run)
        if failed is not None and failed.run_id:
            output = self._output(failed.run_id, must=False)
            if output is not None:
                if output.error and output.error not in error:
                    error += f"\n{_first_line(output.error)}"
                if output.error_trace:
                    error += f"\n{_tail(output.error_trace)}"
        if run.run_page_url:
            error += f"\n{run.run_page_url}"
        return StepStatus(state="failed", progress=progress, error=error, retryable=retryable)

    def _output(self, task_run_id: int, *, must: bool) -> RunOutput | None:
        """``jobs/runs/get-output`` of a task run; on failure: raise retryable errors when ``must``, else None."""
        try:
            return self.client.jobs.get_run_output(task_run_id)
        except Exception as exc:
            err = map_databricks_error(exc)
            if must and err.retryable:
                raise err from exc
            log.warning("databricks get-output of run %s failed: %s", task_run_id, err)
            return None

    # ---------------------------------------------------------------- logs

    def logs(self, remote_id: str) -> list[StepLog]:
        """Each task run's ``jobs/runs/get-output``: its logs (stdout of a Python task, as far
        as Databricks keeps it), error and error trace. Cluster driver logs stay in the
        workspace (the run page)."""
        run_id = _run_id(remote_id)
        try:
            run = self.client.jobs.get_run(run_id)
        except Exception as exc:
            raise map_databricks_error(exc) from exc
        found: list[StepLog] = []
        for task in run.tasks or []:
            if not task.run_id:
                continue
            try:
                output = self.client.jobs.get_run_output(task.run_id)
            except Exception as exc:
                found.append(StepLog(f"{task.task_key}/output", note=f"not fetched: {map_databricks_error(exc)}"))
                continue
            parts = [output.logs or ""]
            if output.logs_truncated:
                parts.append("[Databricks truncated these logs; the run page has them all]")
            if output.error:
                parts.append(f"error: {output.error}")
            if output.error_trace:
                parts.append(output.error_trace)
            text = "\n".join(p for p in parts if p)
            found.append(StepLog(f"{task.task_key}/output", text=text or None, note="" if text else "no output yet"))
        page = f" (driver and cluster logs: {run.run_page_url})" if run.run_page_url else ""
        return found or [StepLog("run", note=f"no task run has output yet{page}")]

    # ---------------------------------------------------------------- cancel

    def cancel(self, remote_id: str) -> None:
        try:
            self.client.jobs.cancel_run(_run_id(remote_id))  # a Wait; not waited on
        except Exception as exc:
            raise map_databricks_error(exc) from exc


# --------------------------------------------------------------------------- run state


def _run_id(remote_id: str) -> int:
    try:
        return int(remote_id)
    except (TypeError, ValueError):
        raise PermanentError(f"not a Databricks run id: {remote_id!r}", service=SERVICE) from None


def _task_key(step: str) -> str:
    """Task keys allow [A-Za-z0-9_-]; step names are close to that already."""
    key = "".join(c if c.isalnum() or c in "_-" else "_" for c in step)[:100]
    return key or "task"


def _lifecycle(obj: Run | RunTask) -> tuple[str | None, str | None, str | None]:
    state = obj.state
    if state is None:
        return None, None, None
    return _enum_value(state.life_cycle_state), _enum_value(state.result_state), state.state_message


def _task_done(task: RunTask) -> bool:
    life, _, _ = _lifecycle(task)
    if life is not None:
        return life in _TASK_DONE_LIFECYCLE
    return task.status is not None and _enum_value(task.status.state) == "TERMINATED"


def _outcome(run: Run) -> tuple[str, str, bool]:
    """(running|succeeded|failed|cancelled, human detail, retryable) from ``state`` or ``status``."""
    life, result, message = _lifecycle(run)
    status = run.status
    status_state = _enum_value(status.state) if status else None
    term = status.termination_details if status else None
    code = _enum_value(term.code) if term else None
    ttype = _enum_value(term.type) if term else None
    term_message = term.message if term else None
    msg = message or term_message or ""

    if life is None and status_state is None:
        return "running", "", False
    if life in _RUNNING_LIFECYCLE or (life is None and status_state in _RUNNING_LIFECYCLE):
        return "running", "", False
    if life == "TERMINATED" and result:
        if result in _SUCCESS_RESULTS:
            return "succeeded", result, False
        if result in _CANCELLED:
            return "cancelled", f"{result}: {msg}".rstrip(": "), False
        retryable = result in _RETRYABLE_RESULTS or code in _RETRYABLE_TERMINATION_CODES
        return "failed", f"{result}: {msg}".rstrip(": "), retryable
    if life in ("INTERNAL_ERROR", "SKIPPED"):
        return "failed", f"{life}: {msg}".rstrip(": "), True
    # The newer status object (Jobs API 2.2) alone, or TERMINATED without a result_state.
    if status_state == "TERMINATED" or life == "TERMINATED":
        if code in _CANCELLED:
            return "cancelled", f"{code}: {msg}".rstrip(": "), False
        if code in _SUCCESS_RESULTS or (code is None and ttype == "SUCCESS"):
            return "succeeded", code or "SUCCESS", False
        retryable = code in _RETRYABLE_TERMINATION_CODES or ttype in _RETRYABLE_TERMINATION_TYPES
        label = code or ttype or life or status_state or "TERMINATED"
        return "failed", f"{label}: {msg}".rstrip(": "), retryable
    return "failed", f"{life or status_state}: {msg}".rstrip(": "), False


def _task_succeeded(task: RunTask) -> bool:
    _, result, _ = _lifecycle(task)
    if result is not None:
        return result in _SUCCESS_RESULTS
    term = task.status.termination_details if task.status else None
    return term is not None and _enum_value(term.code) in ("SUCCESS", "SUCCESS_WITH_FAILURES")


def _result_task(run: Run) -> RunTask | None:
    """The task whose output is the step's result: the only one, else the last to finish successfully."""
    tasks = list(run.tasks or [])
    if len(tasks) <= 1:
        return tasks[0] if tasks else None
    ok = [t for t in tasks if _task_succeeded(t)] or tasks
    return max(ok, key=lambda t: t.end_time or 0)


def _failed_task(run: Run) -> RunTask | None:
    tasks = list(run.tasks or [])
    for task in tasks:
        _, result, _ = _lifecycle(task)
        if result is not None and result not in _SUCCESS_RESULTS:
            return task
    return tasks[0] if len(tasks) == 1 else None


def _result(output: RunOutput) -> Any:
    """The ``dbutils.notebook.exit`` value, else the last stdout line; JSON-decoded when it parses."""
    notebook = output.notebook_output
    if notebook is not None and notebook.result is not None:
        return _decode(notebook.result)
    return _decode(_last_line(output.logs))
