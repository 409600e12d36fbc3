"""Azure Batch: one job per step attempt, one task per input, the local backend's command lines.

Written against azure-batch 15.x, the azure-core based SDK (``azure.batch.BatchClient``;
the msrest ``BatchServiceClient`` of 14.x and older is gone). Authentication is Microsoft
Entra ID through the app's TokenCredential (``BearerTokenCredentialPolicy``, the SDK's own
scope ``https://batch.core.windows.net//.default``); retries are the SDK's azure-core
RetryPolicy, tunable through ``from_settings(..., retry_total=..., retry_backoff_factor=...)``.

Launch protocol (idempotent on ``request.key``, which is the Batch job id):

1. validate params, list the inputs (before anything exists remotely);
2. ``create_job`` with ``onAllTasksComplete=noaction``: Batch terminates a job with no tasks
   at once under ``terminatejob``, so that mode is only switched on once every task is in;
3. add the tasks with ``create_task_collection`` in chunks of 100, chunks in parallel, per-task
   results checked (``TaskExists`` counts as added: a relaunch re-adds with the same ids);
4. ``update_job(onAllTasksComplete=terminatejob)``: from here the job ends by itself when its
   last task completes, and this mode is the marker that the launch finished.

A second launch of the same key gets 409 ``JobExists``; it reattaches, and only repeats steps
3-4 when the job is still active in ``noaction`` mode (the first launch died half-way).

Blob names are data: the command is an argv template (shared.flows.argv) filled per task
with the run's ``${...}`` scope and the task's ``{placeholders}`` in one pass, and the task's
command line is built from those words by ``command_line`` (each word quoted as exactly one
argument of ``exec "$@"``); local file names go through ``local_file_name`` (no ``..``, no
absolute paths). The step's ``env:`` becomes the job's environment settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.backends.commandline import local_file_name, validation_error
from shared.backends.resource_files import resolve as resolve_resources
from shared.errors import (
    AuthError,
    BadRequestError,
    ConveyorError,
    ThrottledError,
    TransientError,
    ValidationError,
    classify_http_status,
)

if TYPE_CHECKING:
    from azure.batch import BatchClient

    from shared.blobs.base import BlobStore
    from shared.flows.argv import ArgvTemplate
    from shared.settings import Settings

SERVICE = "batch"
MAX_TASKS_PER_REQUEST = 100  # the Batch service's limit for one addtaskcollection call
MAX_OUTPUT_URLS = 1000  # as the local backend: the output prefix finds the rest
CANCEL_REASON = "CancelledByConveyor"
LAUNCH_FAILED_REASON = "LaunchFailedConveyor"
OUTPUT_DIR = "output"  # relative to $AZ_BATCH_TASK_WORKING_DIR, where every task starts
# Batch job ids: letters, digits, hyphens, underscores; at most 64 characters.
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Every POST/PATCH we send is idempotent (job id / task ids / terminate), so retrying them on
# 408/429/502 is safe; azure-core retries POST only on 500/503/504 unless told.
_RETRY_METHODS = frozenset(["HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE", "POST", "PATCH"])
_THROTTLE_CODES = {"ServerBusy", "TooManyRequests"}
_TRANSIENT_CODES = {"OperationTimedOut", "InternalError"}
_FAILED_DETAIL = 5
MAX_LOG_TASKS = 50  # tasks whose stdout/stderr `conveyor logs` fetches (failed ones first)
MAX_LOG_BYTES = 256 * 1024  # the end of a longer file is kept
_META_TASKS = "conveyor-tasks"

# Default client options for from_settings (callers override any of them).
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 4,
    "retry_backoff_factor": 0.8,
    "retry_backoff_max": 30,
    "connection_timeout": 10,
    "read_timeout": 60,
}


def _value(enum_or_str: Any) -> str:
    """The wire value of an SDK enum or a plain string, lowercased ('' for None)."""
    if enum_or_str is None:
        return ""
    return str(getattr(enum_or_str, "value", enum_or_str)).lower()


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0][:300] if text else ""


def batch_error_parts(exc: BaseException) -> tuple[int | None, str | None, str]:
    """(HTTP status, Batch error code, the service's message) of an SDK error.

    Batch error bodies are ``{"code": ..., "message": {"lang": ..., "value": ...}}``; the
    message value carries ``RequestId``/``Time`` lines after the first, which are dropped.
    """
    status = getattr(exc, "status_code", None)
    code: str | None = None
    message = ""
    model = getattr(exc, "model", None)  # azure.batch.models.BatchError, when deserialised
    if model is not None:
        code = getattr(model, "code", None)
        msg = getattr(model, "message", None)
        message = _first_line(getattr(msg, "value", None) if msg is not None else None)
    error = getattr(exc, "error", None)  # azure-core ODataV4Format (BatchErrorFormat)
    if error is not None:
        code = code or getattr(error, "code", None)
        message = message or _first_line(getattr(error, "message", None))
    if not message:
        message = _first_line(str(getattr(exc, "message", None) or exc)) or type(exc).__name__
    return status, code, message


def map_batch_error(exc: BaseException) -> ConveyorError:
    """The Conveyor error for an azure-batch (azure-core) exception, keeping the service's text.

    429 / ServerBusy → ThrottledError; 5xx, OperationTimedOut, timeouts, connection errors →
    TransientError; 401/403 → AuthError; 404 → NotFoundError; 409 → ConflictError; other 4xx →
    BadRequestError. The message reads ``<status> <code>: <service message>``.
    """
    if isinstance(exc, ConveyorError):
        return exc
    from azure.core import exceptions as az

    if isinstance(exc, az.HttpResponseError) and getattr(exc, "status_code", None) is not None:
        status, code, message = batch_error_parts(exc)
        assert status is not None
        label = f"{status} {code}: {message}" if code else f"{status}: {message}"
        if status == 429 or code in _THROTTLE_CODES:
            return ThrottledError(label, service=SERVICE, status=status)
        if code in _TRANSIENT_CODES:
            return TransientError(label, service=SERVICE, status=status)
        cls = classify_http_status(status)
        return cls(label, service=SERVICE, status=status)
    if isinstance(exc, az.ClientAuthenticationError):
        return AuthError(f"authentication failed: {_first_line(str(exc))}", service=SERVICE)
    from shared.azure_errors import map_azure_error

    return map_azure_error(exc, SERVICE)


def _code(exc: BaseException) -> str | None:
    return batch_error_parts(exc)[1]


@dataclass(frozen=True)
class _Input:
    url: str
    blob: str  # the blob name, for {input_blob}
    local: str  # its file name in the task's working directory


class AzureBatchBackend(JobBackend):
    """JobBackend for ``kind: batch`` steps on an Azure Batch pool."""

    kind = "batch"

    def __init__(
        self,
        client: BatchClient,
        blobs: BlobStore,
        pool_id: str | None = None,
        resource_identity: str | None = None,
        output_container_url: Callable[[str], str] | str | None = None,
        *,
        account_url: str | None = None,
        add_concurrency: int = 4,
        add_rounds: int = 3,
        terminate_polling_interval: int = 5,
        root: Path | None = None,
    ) -> None:
        """``output_container_url``: a function container -> URL, or the blob endpoint
        (``https://<account>.blob.core.windows.net``) the container name is appended to;
        by default derived from ``blobs``. ``resource_identity``: ARM id of the pool's
        user-assigned identity that reads inputs and writes outputs (no SAS anywhere).
        ``add_rounds``: how many times tasks refused with a server error are re-sent."""
        self.client = client
        self.blobs = blobs
        self.pool_id = pool_id
        self.resource_identity = resource_identity
        self._output_container_url = output_container_url
        self.account_url = account_url.rstrip("/") if account_url else None
        self.add_concurrency = max(1, add_concurrency)
        self.add_rounds = max(1, add_rounds)
        self.terminate_polling_interval = terminate_polling_interval
        self.root = root  # the deployed project: ./path resource files are staged from it

    @classmethod
    def from_settings(
        cls, settings: Settings, blobs: BlobStore, client: BatchClient | None = None, **client_options: Any
    ) -> AzureBatchBackend:
        """Build from CONVEYOR_BATCH_ACCOUNT_URL (required), CONVEYOR_BATCH_POOL_ID,
        CONVEYOR_BATCH_RESOURCE_IDENTITY and the storage account's blob endpoint.
        ``client_options`` go to ``BatchClient`` (retry_total, retry_backoff_factor,
        connection_verify, ...) over DEFAULT_CLIENT_OPTIONS."""
        az = settings.azure
        account_url = az.require("batch_account_url", "CONVEYOR_BATCH_ACCOUNT_URL").rstrip("/")
        if client is None:
            from azure.batch import BatchClient

            from shared.azure_identity import get_credential

            options = {**DEFAULT_CLIENT_OPTIONS, **client_options}
            client = BatchClient(endpoint=account_url, credential=get_credential(settings), **options)
        return cls(
            client,
            blobs,
            pool_id=az.batch_pool_id,
            resource_identity=az.batch_resource_identity,
            output_container_url=az.storage.service_uri("blob"),
            account_url=account_url,
            root=settings.root,
        )

    # ------------------------------------------------------------ helpers

    def container_url(self, container: str) -> str:
        """The URL of a container of the storage account (no SAS: the pool identity writes)."""
        target = self._output_container_url
        if callable(target):
            return target(container)
        if isinstance(target, str) and target:
            return f"{target.rstrip('/')}/{container}"
        base = getattr(self.blobs, "account_url", None)
        if isinstance(base, str) and base:
            return f"{base.rstrip('/')}/{container}"
        return self.blobs.url(container, "x")[: -len("/x")]

    def _identity(self) -> Any:
        if not self.resource_identity:
            return None
        from azure.batch import models

        return models.BatchNodeIdentityReference(resource_id=self.resource_identity)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise map_batch_error(exc) from exc

    def _job_url(self, key: str) -> str | None:
        return f"{self.account_url}/jobs/{key}" if self.account_url else None

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str) or not _JOB_ID.match(key):
            raise ValidationError(
                f"not usable as a Batch job id (1-64 letters, digits, '-', '_'): {key!r}", field="key"
            )

    # ------------------------------------------------------------ launch

    def launch(self, request: LaunchRequest) -> LaunchResult:
        from azure.batch import models
        from azure.core.exceptions import HttpResponseError

        from shared.flows.model import BatchParams

        key = request.key
        self._check_key(key)
        try:
            params = BatchParams.model_validate(request.params)
        except Exception as exc:
            raise validation_error(exc) from exc
        from shared.flows.argv import parse_command

        command = parse_command(params.command)  # unknown {x}, quoted slots... → field error
        pool = params.pool or self.pool_id
        if not pool:
            raise ValidationError("no Batch pool: set params.pool or CONVEYOR_BATCH_POOL_ID", field="params.pool")
        resources = self._resources(params.resource_files)
        inputs = self._expand_inputs(params.inputs)
        tasks = self._tasks(request, params, command, inputs, resources)

        metadata = [
            models.BatchMetadataItem(name="run_id", value=request.run_id),
            models.BatchMetadataItem(name="flow", value=request.flow),
            models.BatchMetadataItem(name="step", value=request.step),
            models.BatchMetadataItem(name="output_container", value=params.output_container),
            models.BatchMetadataItem(name=_META_TASKS, value=str(len(tasks))),
            *(models.BatchMetadataItem(name=k, value=v) for k, v in request.index_tags("").items()),
        ]
        env = [models.EnvironmentSetting(name=k, value=v) for k, v in request.env.items()]
        if request.traceparent:  # one trace from the trigger to the tasks (env) and the job (metadata)
            metadata.insert(0, models.BatchMetadataItem(name="traceparent", value=request.traceparent))
            env.append(models.EnvironmentSetting(name="TRACEPARENT", value=request.traceparent))
        job = models.BatchJobCreateOptions(
            id=key,
            display_name=f"{request.flow}/{request.unit} attempt {request.attempt}"[:1024],
            pool_info=models.BatchPoolInfo(pool_id=pool),
            uses_task_dependencies=False,
            all_tasks_complete_mode=models.BatchAllTasksCompleteMode.NO_ACTION,
            common_environment_settings=env or None,
            metadata=metadata,
        )
        reattached = False
        try:
            self.client.create_job(job, retry_on_methods=_RETRY_METHODS)
        except HttpResponseError as exc:
            if exc.status_code != 409 or _code(exc) != "JobExists":
                raise map_batch_error(exc) from exc
            reattached = True
        except Exception as exc:
            raise map_batch_error(exc) from exc
        if reattached:
            existing = self._call(self.client.get_job, key)
            done_adding = _value(existing.all_tasks_complete_mode) == "terminatejob"
            if done_adding or _value(existing.state) != "active":
                return LaunchResult(remote_id=key, url=self._job_url(key), reattached=True)
        try:
            self._add_tasks(key, tasks)
        except ConveyorError as exc:
            if not exc.retryable:  # a relaunch would fail the same way: do not leave the job open
                self._terminate(key, LAUNCH_FAILED_REASON, quiet=True)
            raise
        self._call(
            self.client.update_job,
            key,
            models.BatchJobUpdateOptions(all_tasks_complete_mode=models.BatchAllTasksCompleteMode.TERMINATE_JOB),
            retry_on_methods=_RETRY_METHODS,
        )
        return LaunchResult(remote_id=key, url=self._job_url(key), reattached=reattached)

    def _resources(self, refs: list[str]) -> list[tuple[str, str]]:
        """[(http url, local file name)] for params.resource_files (shared/backends/resource_files.py)."""
        return [(r.url, r.local) for r in resolve_resources(refs, self.blobs, self.root)]

    def _expand_inputs(self, inputs: str | list[str]) -> list[_Input]:
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        found: list[_Input] = []
        for i, item in enumerate(items):
            fld = "params.inputs" if isinstance(inputs, str) else f"params.inputs[{i}]"
            item = item.strip()
            if "://" in item:
                _container, name = self.blobs.parse_url(item)
                found.append(_Input(item, name, local_file_name(name, field=fld)))
                continue
            container, _, prefix = item.partition("/")
            if not container:
                raise ValidationError(f"not a blob URL nor container/prefix: {item!r}", field=fld)
            for info in self.blobs.list_blobs(container, prefix):
                if not info.name.endswith("/"):
                    found.append(_Input(info.url, info.name, local_file_name(info.name, field=fld)))
        if not found:
            raise ValidationError(
                f"no inputs: {inputs!r} gave no blobs, so there is no task to run", field="params.inputs"
            )
        return found

    def _tasks(
        self,
        request: LaunchRequest,
        params: Any,
        command: ArgvTemplate,
        inputs: list[_Input],
        resources: list[tuple[str, str]],
    ) -> list[Any]:
        from azure.batch import models

        from shared.flows.argv import command_line

        identity = self._identity()
        out_url = self.container_url(params.output_container)
        constraints = models.BatchTaskConstraints(
            max_task_retry_count=params.max_task_retries,
            max_wall_clock_time=timedelta(seconds=params.max_wall_clock_seconds)
            if params.max_wall_clock_seconds
            else None,
        )
        width = max(5, len(str(len(inputs) - 1)))
        setup = f'mkdir -p {OUTPUT_DIR}; export CONVEYOR_TASK_OUTPUT_DIR="$AZ_BATCH_TASK_WORKING_DIR/{OUTPUT_DIR}"; '
        tasks = []
        for index, item in enumerate(inputs):
            task_id = f"task-{index:0{width}d}"
            values = {
                "input": item.local,
                "input_name": item.local,
                "input_blob": item.blob,
                "input_url": item.url,
                "output_dir": OUTPUT_DIR,
                "task_index": str(index),
                "task_id": task_id,
            }
            argv = command.argv(request.scope, values)
            files = [
                models.ResourceFile(http_url=url, file_path=local, identity_reference=identity)
                for url, local in resources
            ]
            files.append(models.ResourceFile(http_url=item.url, file_path=item.local, identity_reference=identity))
            output = models.OutputFile(
                file_pattern=f"{OUTPUT_DIR}/**/*",
                destination=models.OutputFileDestination(
                    container=models.OutputFileBlobContainerDestination(
                        container_url=out_url,
                        path=f"{request.run_id}/{request.step}/{task_id}",
                        identity_reference=identity,
                    )
                ),
                upload_options=models.OutputFileUploadConfiguration(
                    upload_condition=models.OutputFileUploadCondition.TASK_COMPLETION
                ),
            )
            tasks.append(
                models.BatchTaskCreateOptions(
                    id=task_id,
                    command_line=command_line(argv, setup),
                    resource_files=files,
                    output_files=[output],
                    constraints=constraints,
                )
            )
        return tasks

    def _add_tasks(self, job_id: str, tasks: list[Any]) -> None:
        """Add every task; chunks of 100 in parallel; TaskExists counts as added."""
        chunks = [tasks[i : i + MAX_TASKS_PER_REQUEST] for i in range(0, len(tasks), MAX_TASKS_PER_REQUEST)]
        if len(chunks) == 1:
            self._add_chunk(job_id, chunks[0])
            return
        with ThreadPoolExecutor(
            max_workers=min(self.add_concurrency, len(chunks)), thread_name_prefix="batch-add"
        ) as ex:
            futures = [ex.submit(self._add_chunk, job_id, chunk) for chunk in chunks]
            errors = [f.exception() for f in futures]
        failures = [e for e in errors if e is not None]
        if failures:
            permanent = [e for e in failures if not getattr(e, "retryable", False)]
            raise (permanent or failures)[0]

    def _add_chunk(self, job_id: str, chunk: list[Any]) -> None:
        from azure.batch import models
        from azure.core.exceptions import HttpResponseError

        pending = list(chunk)
        refused: list[str] = []
        last_server_error = ""
        for _round in range(self.add_rounds):
            if not pending:
                break
            try:
                result = self.client.create_task_collection(
                    job_id, models.BatchTaskGroup(task_values=pending), retry_on_methods=_RETRY_METHODS
                )
            except HttpResponseError as exc:
                if _code(exc) == "RequestBodyTooLarge" and len(pending) > 1:
                    half = len(pending) // 2
                    self._add_chunk(job_id, pending[:half])
                    self._add_chunk(job_id, pending[half:])
                    return
                raise map_batch_error(exc) from exc
            except Exception as exc:
                raise map_batch_error(exc) from exc
            by_id = {t.id: t for t in pending}
            retry: list[Any] = []
            for res in result.result_values or []:
                status = _value(res.status)
                err = res.error
                code = getattr(err, "code", None) if err is not None else None
                if status == "success" or (status == "clienterror" and code == "TaskExists"):
                    by_id.pop(res.task_id, None)
                    continue
                text = _first_line(getattr(getattr(err, "message", None), "value", None)) if err is not None else ""
                if status == "servererror":
                    last_server_error = f"{code}: {text}" if code else text
                    if res.task_id in by_id:
                        retry.append(by_id.pop(res.task_id))
                else:
                    refused.append(f"{res.task_id}: {code}: {text}" if code else f"{res.task_id}: {text}")
                    by_id.pop(res.task_id, None)
            # a task with no result at all is treated as not added: send it again
            pending = retry + list(by_id.values())
        if refused:
            more = f" (and {len(refused) - 3} more)" if len(refused) > 3 else ""
            raise BadRequestError(
                f"Batch refused {len(refused)} task(s) of job {job_id}: " + "; ".join(refused[:3]) + more,
                service=SERVICE,
                status=400,
            )
        if pending:
            raise TransientError(
                f"{len(pending)} task(s) of job {job_id} not added after {self.add_rounds} round(s): "
                f"{last_server_error}",
                service=SERVICE,
            )

    # ------------------------------------------------------------ poll

    def poll(self, remote_id: str) -> StepStatus:
        self._check_key(remote_id)
        job = self._call(self.client.get_job, remote_id)
        counts = self._call(self.client.get_job_task_counts, remote_id).task_counts
        meta = {m.name: m.value for m in (job.metadata or [])}
        added = int(counts.active) + int(counts.running) + int(counts.completed)
        try:
            expected = int(meta.get(_META_TASKS) or 0)
        except ValueError:
            expected = 0
        total = max(expected, added)
        progress = {"done": int(counts.completed), "total": total}
        if _value(job.state) != "completed":
            return StepStatus("running", progress=progress)
        reason = (job.execution_info.termination_reason if job.execution_info else None) or ""
        if reason == CANCEL_REASON:
            return StepStatus("cancelled", progress=progress)
        failed = self._failed_tasks(remote_id)
        if failed or int(counts.failed) > 0:
            return self._failure(failed, int(counts.failed), total, progress)
        if reason and reason != "AllTasksComplete":
            return StepStatus(
                "failed",
                error=f"job {remote_id} ended before its tasks completed: {reason}",
                progress=progress,
                retryable=False,
            )
        return StepStatus(
            "succeeded", outputs=self._outputs(remote_id, meta, total), progress={"done": total, "total": total}
        )

    def _failed_tasks(self, job_id: str) -> list[Any]:
        pages: Iterable[Any] = self._call(
            self.client.list_tasks, job_id, filter="executionInfo/result eq 'failure'", select=["id", "executionInfo"]
        )
        try:
            return list(pages)
        except Exception as exc:  # paging happens while iterating
            raise map_batch_error(exc) from exc

    @staticmethod
    def _failure(failed: list[Any], counted: int, total: int, progress: dict[str, int]) -> StepStatus:
        parts = []
        all_server = bool(failed)
        for task in failed[:_FAILED_DETAIL]:
            info = task.execution_info
            exit_code = getattr(info, "exit_code", None) if info is not None else None
            attempts = (getattr(info, "retry_count", 0) or 0) + 1 if info is not None else 1
            fi = getattr(info, "failure_info", None) if info is not None else None
            exit_part = f"exit code {exit_code}" if exit_code is not None else "no exit code"
            detail = ""
            if fi is not None:
                detail = f"{_value(fi.category) or 'unknown'} {fi.code or ''}: {_first_line(fi.message)}".strip()
                extra = [f"{d.name}={_first_line(d.value)}" for d in (fi.details or []) if d.name and d.value][:2]
                if extra:
                    detail += " (" + ", ".join(extra) + ")"
            parts.append(f"{task.id} ({exit_part}, {attempts} attempt(s))" + (f": {detail}" if detail else ""))
        for task in failed:
            info = task.execution_info
            fi = getattr(info, "failure_info", None) if info is not None else None
            if fi is None or _value(fi.category) != "servererror":
                all_server = False
        more = [t.id for t in failed[_FAILED_DETAIL : _FAILED_DETAIL + 20]]
        if more:
            parts.append("also failed: " + ", ".join(more) + (" ..." if len(failed) > _FAILED_DETAIL + 20 else ""))
        n = max(len(failed), counted)
        msg = f"{n} of {total} tasks failed: " + "\n".join(parts) if parts else f"{n} of {total} tasks failed"
        return StepStatus("failed", error=msg, progress=progress, retryable=all_server)

    def _outputs(self, job_id: str, meta: dict[str, str], total: int) -> dict[str, Any]:
        run_id, step = meta.get("run_id") or "", meta.get("step") or ""
        container = meta.get("output_container") or "outputs"
        prefix_name = f"{run_id}/{step}/"
        urls = sorted(b.url for b in self.blobs.list_blobs(container, prefix_name) if not b.name.endswith("/"))
        outputs: dict[str, Any] = {
            "job_id": job_id,
            "tasks": total,
            "output_prefix": self.blobs.url(container, prefix_name),
            "outputs": urls[:MAX_OUTPUT_URLS],
        }
        if len(urls) > MAX_OUTPUT_URLS:
            outputs["outputs_truncated"] = True
            outputs["outputs_count"] = len(urls)
        return outputs

    # ------------------------------------------------------------ logs

    def logs(self, remote_id: str) -> list[StepLog]:
        """``stdout.txt``/``stderr.txt`` of the job's tasks from their nodes (Batch's file API),
        failed tasks first, at most ``MAX_LOG_TASKS`` of them. A task's files live on its
        node: once the node is gone (pool scaled down) Batch answers 404 and the log says so."""
        from azure.core.exceptions import ResourceNotFoundError

        self._check_key(remote_id)
        try:
            tasks = list(self._call(self.client.list_tasks, remote_id, select=["id", "executionInfo"]))
        except ConveyorError:
            raise
        except Exception as exc:  # paging happens while iterating
            raise map_batch_error(exc) from exc
        tasks.sort(key=lambda t: (_value(getattr(t.execution_info, "result", None)) != "failure", t.id))
        found: list[StepLog] = []
        for task in tasks[:MAX_LOG_TASKS]:
            for name in ("stdout.txt", "stderr.txt"):
                try:
                    data = b"".join(self.client.download_task_file(remote_id, task.id, name))
                except ResourceNotFoundError:
                    note = "not on a node (the task has not run, or its node is gone)"
                    found.append(StepLog(f"{task.id}/{name}", note=note))
                    continue
                except Exception as exc:
                    raise map_batch_error(exc) from exc
                cut = len(data) > MAX_LOG_BYTES
                text = data[-MAX_LOG_BYTES:].decode("utf-8", "replace")
                found.append(StepLog(f"{task.id}/{name}", text=text, note="last 256 KiB" if cut else ""))
        if len(tasks) > MAX_LOG_TASKS:
            found.append(StepLog("tasks", note=f"{len(tasks) - MAX_LOG_TASKS} more tasks not shown"))
        return found or [StepLog("tasks", note="the job has no tasks yet")]

    # ------------------------------------------------------------ cancel

    def cancel(self, remote_id: str) -> None:
        self._check_key(remote_id)
        self._terminate(remote_id, CANCEL_REASON)

    def _terminate(self, job_id: str, reason: str, *, quiet: bool = False) -> None:
        """Terminate a job; 409 (already completed / terminating) is a no-op. The SDK's
        poller watches the job's state on a daemon thread; nobody waits for it here."""
        from azure.core.exceptions import HttpResponseError

        try:
            self.client.begin_terminate_job(
                job_id,
                # BatchJobTerminateOptions is not exported by azure.batch.models; this is its wire form
                {"terminateReason": reason},  # type: ignore[arg-type]
                polling_interval=self.terminate_polling_interval,
            )  # (no retry_on_methods here: this method hands its kwargs to LROPoller too)
        except HttpResponseError as exc:
            if exc.status_code == 409:
                return
            if quiet:
                return
            raise map_batch_error(exc) from exc
        except Exception as exc:
            if quiet:
                return
            raise map_batch_error(exc) from exc
