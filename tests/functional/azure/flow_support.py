"""Helpers for the whole-flow acceptance test in azure mode (test_whole_flow.py).

Everything here drives the *real* Conveyor code (ingest, engine, executor, every Azure adapter)
against the service fakes the per-adapter tests already have; nothing below re-implements an
adapter. What is faithful HTTP and what is an injected SDK surface:

* Azure Batch — HTTPS fake of the Batch REST API (``batch/fake_batch.py``), driven by the real
  ``azure.batch.BatchClient`` (bearer token, api-version, azure-core retries).
* Azure Databricks — loopback fake of the Jobs API 2.2 (``databricks/fake_jobs.py``), driven by the
  real ``databricks.sdk.WorkspaceClient`` (host-metadata probe, Entra token headers from the
  app's credential, the SDK's own retries and error parsing).
* Azure ML metrics — a loopback fake of the workspace's MLflow tracking REST API (``runs/get``).
* Application Insights — a fake ingestion endpoint (``telemetry/test_appinsights_exporters.py``)
  fed by the real azure-monitor-opentelemetry exporters.
* Run store and blobs — real Table and Blob Storage adapters on Azurite (identity-based
  construction of the same adapters is covered by ``storage/``).
* Service Bus — AMQP is impractical to fake, so the adapter gets ``FakeServiceBusClient``
  (``servicebus/fake_sdk.py``, an injected SDK-surface fake); :class:`ServiceBusBroker` below
  plays the broker behind it: duplicate detection on ``message_id``, scheduled enqueue times,
  and redelivery after a lost lock (the AMQP delivery-count goes up).
* Azure ML jobs, models, online endpoints — azure-ai-ml resolves the workspace before it sends
  anything, so the adapters get ``FakeMLClient`` (``azureml_v2/fake_mlclient.py``, an injected
  SDK-surface fake built from real azure-ai-ml entities and azure-core errors).

:class:`AzureWorld` is the services' side of the conversation: between two queue messages, remote
work moves on as it would in Azure (Batch tasks run then complete and upload their output files,
the Databricks run terminates SUCCESS with a notebook exit value, the Azure ML pipeline job and
its child jobs complete and log MLflow metrics).
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shared.blobs.base import BlobStore
from shared.engine.executor import Executor
from shared.engine.model import Run
from shared.queue.servicebus import ServiceBusWorkQueue
from shared.store.base import RunStore
from tests.functional.azure.azureml_v2.fake_mlclient import FakeMLClient
from tests.functional.azure.batch.fake_batch import FakeBatchService
from tests.functional.azure.databricks.fake_jobs import FakeDatabricks
from tests.functional.azure.servicebus.fake_sdk import FakeReceivedMessage, FakeServiceBusClient

REPO_ROOT = Path(__file__).resolve().parents[3]
FLOW = "retrain"
MODEL = "sales-forecaster"
ENDPOINT = "sales-forecaster"
LAKE = "abfss://lake@conveyorlake.dfs.core.windows.net/runs"
PYTHON_FILE = "/Workspace/Shared/conveyor/medallion.py"
MLFLOW_PATH = (
    "/mlflow/v1.0/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
)

# The root flows.yaml's retrain flow with azure-mode params: the Databricks entry is a workspace
# path, the Azure ML pipeline input is the abfss:// URL the Databricks job reports.
FLOWS_YAML = f"""\
version: 1
flows:
  {FLOW}:
    triggers:
      - kind: blob
        container: landing
        suffix: .csv
    policies:
      max_concurrent_runs: 2
    model:
      name: {MODEL}
      metric: r2
      direction: maximize
    steps:
      - name: score
        kind: batch
        params:
          command: python score_file.py --input {{input}} --output-dir {{output_dir}}
          inputs: "${{trigger.blob.url}}"
          resource_files:
            - apps/batch_app/score_file.py
          max_task_retries: 1
        retries: {{count: 2, backoff_seconds: 5}}
        timeout_seconds: 1800
      - name: etl
        kind: databricks
        params:
          python_file: {PYTHON_FILE}
          parameters: ["--input", "${{trigger.blob.url}}", "--lake", "{LAKE}/${{run.id}}"]
        retries: {{count: 2, backoff_seconds: 10}}
        timeout_seconds: 1800
      - name: train
        kind: azureml
        params:
          pipeline: samples/aml_pipeline/pipeline.yml
          experiment: {MODEL}
          inputs:
            gold: "${{steps.etl.outputs.result.gold}}"
        retries: {{count: 1, backoff_seconds: 30}}
        timeout_seconds: 3600
      - name: register
        kind: register
        params:
          model_uri: "${{steps.train.outputs.model_uri}}"
          metrics:
            r2: "${{steps.train.outputs.metrics.r2}}"
            rmse: "${{steps.train.outputs.metrics.rmse}}"
          tags:
            trained_by: conveyor
      - name: deploy
        kind: deploy
        params:
          version: "${{steps.register.outputs.version}}"
          endpoint: {ENDPOINT}
"""


def write_flows(directory: Path) -> Path:
    path = directory / "flows.azure.yaml"
    path.write_text(FLOWS_YAML, encoding="utf-8")
    return path


def eventgrid_body(url: str, etag: str, size: int, container: str, name: str) -> bytes:
    """tests/events/blob_created_eventgrid.json with this blob's URL, eTag, size and subject."""
    events = json.loads((REPO_ROOT / "tests" / "events" / "blob_created_eventgrid.json").read_text("utf-8"))
    event = events[0]
    event["subject"] = f"/blobServices/default/containers/{container}/blobs/{name}"
    event["data"].update({"url": url, "eTag": etag, "contentLength": size})
    return json.dumps([event]).encode("utf-8")


# ------------------------------------------------------------------ Service Bus broker


@dataclass(order=True)
class _Queued:
    due: datetime
    seq: int
    message_id: str = field(compare=False)
    body: bytes = field(compare=False)


class ServiceBusBroker:
    """The broker behind ``FakeServiceBusClient``: what the adapter sent becomes deliverable.

    * duplicate detection: a ``message_id`` already accepted within ``window`` is dropped (the
      queue has ``requiresDuplicateDetection``; Conveyor's ids are run ids and tick keys);
    * ``scheduled_enqueue_time_utc``: messages are delivered in due-time order. Time is
      collapsed: the next due message is handed out at once, no sleeping;
    * delivery-count: :meth:`deliver` hands a message to the receiver with the AMQP header's
      count, so a redelivery after a lost lock arrives with ``delivery_count`` + 1.
    """

    def __init__(self, client: FakeServiceBusClient, window: timedelta = timedelta(minutes=10)) -> None:
        self.client = client
        self.window = window
        self._consumed: dict[int, int] = {}
        self._heap: list[_Queued] = []
        self._seq = itertools.count()
        self.seen: dict[str, datetime] = {}
        self.accepted: list[str] = []  # message ids, in acceptance order
        self.duplicates: list[str] = []  # message ids dropped by duplicate detection
        self.scheduled: list[tuple[str, float]] = []  # (message id, delay seconds) of scheduled messages

    def pump(self) -> None:
        """Take in everything the adapter's senders have sent since the last pump."""
        for sender in self.client.senders:
            sent = sender.sent
            start = self._consumed.get(id(sender), 0)
            self._consumed[id(sender)] = len(sent)
            for message in sent[start:]:
                self._accept(message)

    def _accept(self, message: Any) -> None:
        now = datetime.now(UTC)
        mid = str(message.message_id)
        first = self.seen.get(mid)
        if first is not None and now - first < self.window:
            self.duplicates.append(mid)
            return
        self.seen[mid] = now
        self.accepted.append(mid)
        due = message.scheduled_enqueue_time_utc or now
        if message.scheduled_enqueue_time_utc is not None:
            self.scheduled.append((mid, (due - now).total_seconds()))
        body = message.body
        raw = body if isinstance(body, bytes) else b"".join(bytes(part) for part in body)
        heapq.heappush(self._heap, _Queued(due, next(self._seq), mid, raw))

    def pending(self) -> int:
        self.pump()
        return len(self._heap)

    def next(self) -> _Queued | None:
        """The next message due (collapsed time), removed from the queue."""
        self.pump()
        return heapq.heappop(self._heap) if self._heap else None

    def deliver(self, item: _Queued, delivery_count: int) -> None:
        """Make ``item`` receivable with the AMQP header's delivery-count (0 on the first delivery)."""
        received = FakeReceivedMessage(raw=item.body, delivery_count=delivery_count, message_id=item.message_id)
        # FakeReceiver rebinds its list when it hands messages out: append to the live one.
        inbox = self.client.receivers[-1].available if self.client.receivers else self.client.available
        inbox.append(received)


# ------------------------------------------------------------------ MLflow tracking fake


class MlflowTracking:
    """``GET <tracking uri>/api/2.0/mlflow/runs/get?run_id=`` as the workspace's MLflow answers it."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.metrics: dict[str, dict[str, float]] = {}
        self.requests: list[str] = []
        server.expect_request(f"{MLFLOW_PATH}/api/2.0/mlflow/runs/get", method="GET").respond_with_handler(self._get)

    @property
    def tracking_uri(self) -> str:
        return self.server.url_for(MLFLOW_PATH)

    def _get(self, request: Request) -> Response:
        run_id = request.args.get("run_id", "")
        self.requests.append(run_id)
        if request.headers.get("Authorization") != "Bearer fake-token":
            return _json({"error_code": "UNAUTHENTICATED", "message": "Invalid access token."}, 401)
        if run_id not in self.metrics:
            return _json({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{run_id}' not found."}, 404)
        doc = {
            "run": {
                "info": {"run_id": run_id, "run_uuid": run_id, "status": "FINISHED"},
                "data": {
                    "metrics": [
                        {"key": k, "value": v, "timestamp": 1718000000000, "step": 0}
                        for k, v in self.metrics[run_id].items()
                    ],
                    "params": [],
                    "tags": [],
                },
            }
        }
        return _json(doc)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


# ------------------------------------------------------------------ the services' side


TRAIN_METRICS = {"rmse": 3.2, "r2": 0.52}  # the train node logs a first r2; evaluate's wins
EVALUATE_METRICS = {"r2": 0.83}


@dataclass
class AzureWorld:
    """Moves remote work forward between two queue messages, as the services would.

    Each remote job is seen running at the first advance after it appears and finishes at the
    second, so the engine polls every step at least once while it runs. The online deployment
    needs no advancing: the deploy step waits for its long-running operation inside ``launch``,
    and ``FakeMLClient``'s poller answers ``Succeeded``.
    """

    batch: FakeBatchService
    databricks: FakeDatabricks
    ml: FakeMLClient
    mlflow: MlflowTracking
    blobs: BlobStore
    ages: dict[str, int] = field(default_factory=dict)

    def _age(self, key: str) -> int:
        age = self.ages.get(key, 0)
        self.ages[key] = age + 1
        return age

    def advance(self) -> None:
        self._advance_batch()
        self._advance_databricks()
        self._advance_azureml()

    def _advance_batch(self) -> None:
        for job_id, job in list(self.batch.jobs.items()):
            # A job is only live once Conveyor's launch switched it to terminatejob (all tasks in).
            if job["state"] != "active" or job["onAllTasksComplete"] != "terminatejob":
                continue
            if self._age(f"batch:{job_id}") == 0:
                self.batch.set_task_states(job_id, running=len(self.batch.tasks[job_id]))
                continue
            for task in self.batch.tasks[job_id].values():
                self._upload_task_outputs(task)
            self.batch.finish(job_id)

    def _upload_task_outputs(self, task: dict[str, Any]) -> None:
        """What Batch's OutputFile upload does when a task completes: ``output/**/*`` → container/path/."""
        for spec in task.get("outputFiles", []):
            dest = spec["destination"]["container"]
            container = urlsplit(dest["containerUrl"]).path.rstrip("/").rsplit("/", 1)[-1]
            self.blobs.upload(container, f"{dest['path']}/scored.csv", b"id,score\n1,0.9\n")

    def _advance_databricks(self) -> None:
        for run_id, run in list(self.databricks.runs.items()):
            if run.life_cycle_state in ("TERMINATED", "SKIPPED", "INTERNAL_ERROR"):
                continue
            if self._age(f"databricks:{run_id}") == 0:
                self.databricks.set_state(run_id, "RUNNING")
                continue
            params = run.tasks[0].spec["spark_python_task"].get("parameters", [])
            lake = params[params.index("--lake") + 1]
            result = {"gold": f"{lake}/gold/sales/", "rows": 1200}
            self.databricks.set_state(run_id, "TERMINATED", "SUCCESS")
            for task in run.tasks:
                self.databricks.set_output(task.run_id, notebook_output={"result": json.dumps(result)})

    def _advance_azureml(self) -> None:
        jobs = self.ml.jobs
        for name, job in list(jobs.store.items()):
            if job.status in ("Completed", "Failed", "Canceled"):
                continue
            if self._age(f"azureml:{name}") == 0:
                jobs.set_status(name, "Running")
                jobs.add_child(name, f"{name}-train", "train", "Running")
                jobs.add_child(name, f"{name}-evaluate", "evaluate", "NotStarted")
                continue
            for child in jobs.children.get(name, []):
                child._status = "Completed"
            self.mlflow.metrics[f"{name}-train"] = dict(TRAIN_METRICS)
            self.mlflow.metrics[f"{name}-evaluate"] = dict(EVALUATE_METRICS)
            jobs.set_status(name, "Completed")


# ------------------------------------------------------------------ the drive loop


@dataclass
class Drive:
    """What happened while driving the engine."""

    handled: list[tuple[str, int]] = field(default_factory=list)  # (message id, delivery count)
    kinds: list[str] = field(default_factory=list)


def drive(
    executor: Executor,
    queue: ServiceBusWorkQueue,
    broker: ServiceBusBroker,
    store: RunStore,
    run_id: str,
    advance: Callable[[], None],
    max_messages: int = 200,
) -> tuple[Run, Drive]:
    """Deliver every message twice until the run is terminal and the queue is empty.

    Each message is received through the adapter (delivery-count 0 → ``dequeue_count`` 1) and
    handled; then its lock is "lost" before it is completed, so Service Bus delivers it again
    (delivery-count 1 → ``dequeue_count`` 2) and it is handled again — the redelivery path
    — and completed. Between messages the services move on (``advance``).
    """
    log = Drive()
    for _ in range(max_messages):
        item = broker.next()
        if item is None:
            break
        for delivery_count in (0, 1):
            broker.deliver(item, delivery_count)
            (received,) = queue.receive(max_messages=1)
            assert received.message.message_id == item.message_id
            assert received.dequeue_count == delivery_count + 1
            executor.handle(received.message, delivery_count=received.dequeue_count)
            log.handled.append((item.message_id, received.dequeue_count))
            log.kinds.append(received.message.kind)
        queue.complete(received)
        advance()
    else:
        raise AssertionError(f"the run did not finish within {max_messages} messages")
    return store.get(run_id), log
