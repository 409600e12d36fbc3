"""Issue 3 acceptance: one whole ``retrain`` flow in azure mode, every port on its Azure adapter.

A real Event Grid ``BlobCreated`` delivery (tests/events/blob_created_eventgrid.json, pointed at
a blob really uploaded) goes through ``IngestService`` twice; the engine is then driven from the
Service Bus work queue, every message delivered TWICE to ``Executor.handle`` (the second time as
a redelivery after a lost lock, ``delivery_count`` 2), with scheduled ticks delivered in due
order without sleeping, until the queue is empty. Between messages the services move on.

Which parts are faithful HTTP fakes and which are injected SDK-surface fakes (details in
flow_support.py):

* HTTP, driven by the real SDKs: Azure Batch REST (HTTPS, ``azure.batch.BatchClient``),
  Databricks Jobs API 2.2 (``databricks.sdk.WorkspaceClient`` with Entra tokens from the app's
  credential), the Azure ML workspace's MLflow tracking REST API (metrics), the Application
  Insights ingestion endpoint (azure-monitor-opentelemetry exporters). Run store and blobs are
  the real Table/Blob adapters on Azurite (their identity-based construction is covered by
  tests/functional/azure/storage).
* Injected SDK surfaces, because the wire is impractical to fake: Service Bus (AMQP) —
  ``FakeServiceBusClient`` with a broker modelling duplicate detection, scheduled enqueue time
  and delivery-count; azure-ai-ml (workspace discovery before any job call) — ``FakeMLClient``
  with real azure-ai-ml entities and azure-core errors.

The error-path tests inject the services' own error answers (Batch 503 ServerBusy, Databricks
403 PERMISSION_DENIED and 429 REQUEST_LIMIT_EXCEEDED, Azure ML 404) and check what the run says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from shared.backends.azure_batch import AzureBatchBackend
from shared.backends.azure_databricks import AZURE_DATABRICKS_SCOPE, DatabricksJobsBackend
from shared.backends.azureml_v2 import AzureMLv2Backend
from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.blobs.storage import AzureBlobStore
from shared.deploy.azureml_v2 import AzureMLOnlineDeployer
from shared.engine.executor import Executor
from shared.engine.model import Run, RunStatus, StepState
from shared.flows.loader import load_flows
from shared.ingest.service import IngestService
from shared.queue.servicebus import ServiceBusWorkQueue
from shared.registry.azureml_v2 import AzureMLRegistry
from shared.settings import AzureSettings, Settings
from shared.store.table import TableRunStore
from shared.telemetry.opentelemetry_exporter import OpenTelemetryAppInsights
from shared.telemetry.trace import trace_id
from shared.wiring import Services
from tests.functional.azure.azureml_v2.fake_mlclient import RG, SUB, WS, FakeCredential, FakeMLClient, http_error
from tests.functional.azure.batch.conftest import FAST_RETRIES, IDENTITY, POOL, batch_server, batch_tls
from tests.functional.azure.batch.fake_batch import SERVER_BUSY, FakeBatchService
from tests.functional.azure.databricks.fake_jobs import API, FakeDatabricks
from tests.functional.azure.flow_support import (
    ENDPOINT,
    EVALUATE_METRICS,
    FLOW,
    LAKE,
    MODEL,
    PYTHON_FILE,
    REPO_ROOT,
    TRAIN_METRICS,
    AzureWorld,
    Drive,
    MlflowTracking,
    ServiceBusBroker,
    drive,
    eventgrid_body,
    write_flows,
)
from tests.functional.azure.servicebus.fake_sdk import FakeServiceBusClient
from tests.functional.azure.telemetry.test_appinsights_exporters import FakeIngestion, ingestion

__all__ = ["batch_server", "batch_tls", "ingestion"]  # fixtures reused from the per-adapter tests

BATCH_SCOPE = "https://batch.core.windows.net//.default"
ARM_SCOPE = "https://management.azure.com/.default"
BLOB_NAME = "sales/2024-06-01/part-0001.csv"
BLOB_DATA = b"date,store,units\n2024-06-01,7,12\n"
DATABRICKS_FORBIDDEN = "User conveyor-mi does not have permission to submit runs in this workspace"
AML_NOT_FOUND = "(UserError) Compute cpu-cluster was not found in workspace ws-conveyor"


@dataclass
class FlowEnv:
    settings: Settings
    services: Services
    ingest: IngestService
    executor: Executor
    queue: ServiceBusWorkQueue
    broker: ServiceBusBroker
    world: AzureWorld
    batch: FakeBatchService
    databricks: FakeDatabricks
    ml: FakeMLClient
    mlflow: MlflowTracking
    ingestion: FakeIngestion
    telemetry: OpenTelemetryAppInsights
    credential: FakeCredential
    store: TableRunStore
    blobs: AzureBlobStore

    def drop_blob(self) -> bytes:
        """Upload the sales file to ``landing`` (Azurite) and return its Event Grid delivery."""
        info = self.blobs.upload("landing", BLOB_NAME, BLOB_DATA)
        return eventgrid_body(info.url, info.etag, info.size, "landing", BLOB_NAME)

    def trigger_twice(self) -> str:
        """The same Event Grid delivery twice (at-least-once): one run, one start message."""
        body = self.drop_blob()
        headers = {"aeg-event-type": "Notification", "Content-Type": "application/json"}
        first = self.ingest.ingest_eventgrid(body, headers).results
        again = self.ingest.ingest_eventgrid(body, headers).results
        assert [(r.flow, r.status) for r in first] == [(FLOW, "created")]
        assert [(r.flow, r.status, r.run_id) for r in again] == [(FLOW, "duplicate", first[0].run_id)]
        return first[0].run_id

    def run_flow(self) -> tuple[Run, Drive]:
        run_id = self.trigger_twice()
        return drive(self.executor, self.queue, self.broker, self.store, run_id, self.world.advance)


@pytest.fixture
def mlflow_server() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


@pytest.fixture
def env(
    storage_settings: Settings,
    batch_server: HTTPServer,
    batch_tls: tuple[Path, Any],
    httpserver: HTTPServer,
    mlflow_server: HTTPServer,
    ingestion: FakeIngestion,
    tmp_path: Path,
) -> Iterator[FlowEnv]:
    from azure.batch import BatchClient

    batch_server.clear()
    batch = FakeBatchService(batch_server.url_for("/").rstrip("/"))
    batch_server.expect_request(re.compile(".*")).respond_with_handler(batch.handle)
    databricks = FakeDatabricks(httpserver.url_for("/"), token="fake-token", jobs={}).install(httpserver)
    mlflow = MlflowTracking(mlflow_server)
    ml = FakeMLClient(tracking_uri=mlflow.tracking_uri)
    credential = FakeCredential()  # the app's identity: one credential for every service

    settings = storage_settings.with_overrides(
        mode="azure",
        root=REPO_ROOT,
        flows_file=write_flows(tmp_path),
        storage_connection=storage_settings.connection_string,  # Azurite, as AzureWebJobsStorage would
        appinsights_connection_string=ingestion.connection_string,
        azure=AzureSettings(
            batch_account_url=batch.base_url,
            batch_pool_id=POOL,
            batch_resource_identity=IDENTITY,
            databricks_host=databricks.base_url,
            databricks_auth="azure-msi",
            azureml_subscription_id=SUB,
            azureml_resource_group=RG,
            azureml_workspace=WS,
            azureml_compute="cpu-cluster",
        ),
    )
    store = TableRunStore.from_settings(settings)
    blobs = AzureBlobStore.from_settings(settings)
    sb_client = FakeServiceBusClient()
    queue = ServiceBusWorkQueue.from_settings(settings, client=sb_client)  # type: ignore[arg-type]
    batch_client = BatchClient(
        endpoint=batch.base_url, credential=credential, connection_verify=str(batch_tls[0]), **FAST_RETRIES
    )
    registry = AzureMLRegistry.from_settings(settings, ml_client=ml)
    telemetry = OpenTelemetryAppInsights.from_settings(
        settings,
        exporter_options={"disable_offline_storage": True, "timeout": 5.0, "retry_total": 0},
        schedule_delay_millis=60_000,  # nothing leaves before flush()
    )
    services = Services(
        settings,
        queue=queue,
        store=store,
        blobs=blobs,
        registry=registry,
        telemetry=telemetry,
        flows=load_flows(settings.flows_file),
        backends={
            "batch": AzureBatchBackend.from_settings(settings, blobs, client=batch_client),
            "databricks": DatabricksJobsBackend.from_settings(
                settings, credential=credential, retry_timeout_seconds=10
            ),
            "azureml": AzureMLv2Backend(
                ml, root=settings.root, compute=settings.azure.azureml_compute, credential=credential
            ),
            "register": RegisterBackend(registry),
            "deploy": DeployBackend(registry, AzureMLOnlineDeployer.from_settings(settings, ml_client=ml)),
        },
    )
    world = AzureWorld(batch=batch, databricks=databricks, ml=ml, mlflow=mlflow, blobs=blobs)
    try:
        yield FlowEnv(
            settings=settings,
            services=services,
            ingest=IngestService.from_services(services),
            executor=Executor.from_services(services),
            queue=queue,
            broker=ServiceBusBroker(sb_client),
            world=world,
            batch=batch,
            databricks=databricks,
            ml=ml,
            mlflow=mlflow,
            ingestion=ingestion,
            telemetry=telemetry,
            credential=credential,
            store=store,
            blobs=blobs,
        )
    finally:
        telemetry.close()
        batch_server.clear()


# ------------------------------------------------------------------ helpers


def step_error(run: Run, name: str) -> str:
    return run.step(name).error or ""


def submits(env: FlowEnv) -> list[Any]:
    return env.databricks.calls(f"{API}/runs/submit")


def created_jobs(env: FlowEnv) -> list[str]:
    return [args[0].name for op, args in env.ml.rec.calls if op == "jobs.create_or_update"]


# ------------------------------------------------------------------ the whole flow


def test_whole_flow_in_azure_mode_is_one_run_one_of_each_remote_job_and_one_trace(env: FlowEnv) -> None:
    run, log = env.run_flow()

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert [s.state for s in run.steps] == [StepState.SUCCEEDED] * 5
    assert all(s.attempt == 1 for s in run.steps), [(s.name, s.attempt) for s in run.steps]
    # every message was handled twice, the second time as a redelivery; nothing left on the queue
    assert log.handled and all(
        log.handled[i][1] == 1 and log.handled[i + 1] == (log.handled[i][0], 2) for i in range(0, len(log.handled), 2)
    )
    assert env.broker.pending() == 0
    assert log.kinds[0] == "start" and set(log.kinds) == {"start", "tick"}
    # redeliveries re-send the tick already scheduled: Service Bus duplicate detection drops them
    assert env.broker.duplicates, "redelivered ticks must collapse on the broker"
    assert set(env.broker.duplicates) <= set(env.broker.accepted)
    assert len(env.broker.accepted) == len(set(env.broker.accepted))
    assert all(delay > 0 for _mid, delay in env.broker.scheduled)  # ticks travel as scheduled messages
    start_messages = [m for m in env.broker.client.senders[0].sent if m.subject == "start"]
    # the second delivery, while the run was still pending, sent its start again: one message id,
    # which the broker's duplicate detection collapses
    assert {m.message_id for m in start_messages} == {run.run_id}
    assert [mid for mid in env.broker.accepted if mid == run.run_id] == [run.run_id]

    # ---- Batch: exactly one job (POST /jobs once), named by the step's key, one task for the blob
    score = run.step("score")
    assert score.key is not None
    assert len(env.batch.calls("POST", "/jobs")) == 1
    assert list(env.batch.jobs) == [score.key] == [score.remote_id]
    (task,) = env.batch.tasks[score.key].values()
    blob_url = env.blobs.url("landing", BLOB_NAME)
    assert [rf["httpUrl"] for rf in task["resourceFiles"]] == [
        env.blobs.url("apps", "batch_app/score_file.py"),
        blob_url,
    ]
    assert score.outputs["tasks"] == 1
    assert score.outputs["outputs"] == [env.blobs.url("outputs", f"{run.run_id}/score/task-00000/scored.csv")]

    # ---- Databricks: one runs/submit per idempotency token, one remote run
    etl = run.step("etl")
    calls = submits(env)
    assert len(calls) == 1 and calls[0].body["idempotency_token"] == etl.key
    assert calls[0].body["tasks"][0]["spark_python_task"] == {
        "python_file": PYTHON_FILE,
        "parameters": ["--input", blob_url, "--lake", f"{LAKE}/{run.run_id}"],
    }
    assert list(env.databricks.runs) == [int(etl.remote_id or "0")]
    assert etl.outputs["result"] == {"gold": f"{LAKE}/{run.run_id}/gold/sales/", "rows": 1200}

    # ---- Azure ML: one pipeline job, named by the key, the gold URL bound as its input
    train = run.step("train")
    assert train.key is not None
    assert created_jobs(env) == [train.key]
    job = env.ml.jobs.store[train.key]
    assert job.inputs["gold"].path == etl.outputs["result"]["gold"]
    assert job.settings.default_compute == "cpu-cluster"
    assert job.tags["conveyor.run_id"] == run.run_id
    assert train.outputs["metrics"] == {"rmse": TRAIN_METRICS["rmse"], "r2": EVALUATE_METRICS["r2"]}
    assert train.outputs["model_uri"] == f"azureml://jobs/{train.key}/outputs/model"

    # ---- one model version registered with its lineage, one deployment, the gate on the run
    versions = list(env.ml.models.store.values())
    assert [(m.name, m.version) for m in versions] == [(MODEL, "1")]
    assert env.ml.rec.count("models.create_or_update") >= 1
    registered = [a[0] for op, a in env.ml.rec.calls if op == "models.create_or_update" and a[0].version is None]
    assert len(registered) == 1
    tags = versions[0].tags
    assert tags["conveyor.run_id"] == run.run_id and tags["source.blob_url"] == blob_url
    assert tags["step.etl.remote_id"] == etl.remote_id and tags["trained_by"] == "conveyor"
    assert tags["conveyor.alias"] == "champion"
    assert run.step("register").outputs["version"] == "1"
    deployments = [a[0] for op, a in env.ml.rec.calls if op == "online_deployments.begin_create_or_update"]
    assert [(d.endpoint_name, d.name, d.model) for d in deployments] == [(ENDPOINT, "blue", f"azureml:{MODEL}:1")]
    assert env.ml.online_endpoints.store[ENDPOINT].traffic == {"blue": 100}
    assert run.gate is not None
    assert run.gate["decision"] == "promoted" and run.gate["promote"] is True
    assert run.gate["metric"] == "r2" and run.gate["candidate"] == EVALUATE_METRICS["r2"]
    assert run.gate["champion_version"] is None and run.gate["version"] == "1"
    assert run.step("deploy").outputs["scoring_url"] == env.ml.online_endpoints.store[ENDPOINT].scoring_uri

    # ---- one credential, the app's identity, asked for each service's token
    scopes = {s for (s,) in env.credential.scopes}
    assert {BATCH_SCOPE, AZURE_DATABRICKS_SCOPE, ARM_SCOPE} <= scopes

    # ---- telemetry: everything at the ingestion endpoint is one operation, the run's trace
    env.telemetry.flush()
    envelopes = env.ingestion.envelopes
    op = trace_id(run.traceparent)
    assert op is not None and envelopes

    assert {e["tags"]["ai.operation.id"] for e in envelopes} == {op} == {run.run_id}
    names = {e["data"]["baseData"].get("name") for e in envelopes}
    expected = {"trigger.received", "run.created", "run.started", "step.launch", "step.poll"}
    assert expected | {"step.launched", "step.succeeded", "run.finished"} <= names
    launches = [e for e in envelopes if e["data"]["baseData"].get("name") == "step.launch"]
    props = [e["data"]["baseData"].get("properties", {}) for e in launches]
    assert sorted(p["step"] for p in props) == sorted(s.name for s in run.steps)
    assert all(p["run_id"] == run.run_id for e in envelopes for p in [e["data"]["baseData"].get("properties", {})])


# ------------------------------------------------------------------ error paths


def test_batch_503_twice_on_job_create_is_retried_by_the_sdk_and_makes_one_job(env: FlowEnv) -> None:
    env.batch.fail("POST", "/jobs", 503, "ServerBusy", SERVER_BUSY, times=2)
    run, _ = env.run_flow()
    assert run.status is RunStatus.SUCCEEDED, run.error
    score = run.step("score")
    assert score.state is StepState.SUCCEEDED and score.attempt == 1
    posts = env.batch.calls("POST", "/jobs")
    assert len(posts) == 3 and {p.body["id"] for p in posts} == {score.key}
    assert list(env.batch.jobs) == [score.key]


def test_databricks_403_on_submit_fails_the_run_with_the_services_message(env: FlowEnv) -> None:
    env.databricks.fail_next(f"{API}/runs/submit", 403, "PERMISSION_DENIED", DATABRICKS_FORBIDDEN)
    run, _ = env.run_flow()
    assert run.status is RunStatus.FAILED
    etl = run.step("etl")
    assert etl.state is StepState.FAILED and etl.attempt == 1  # permanent: not retried
    assert f"PERMISSION_DENIED: {DATABRICKS_FORBIDDEN}" in step_error(run, "etl")
    assert run.error is not None and DATABRICKS_FORBIDDEN in run.error and "etl" in run.error
    assert len(submits(env)) == 1 and env.databricks.runs == {}
    assert [s.state for s in run.steps[2:]] == [StepState.PENDING] * 3
    assert env.ml.rec.count("jobs.create_or_update") == 0


def test_azureml_404_on_create_fails_the_step_with_the_services_message(env: FlowEnv) -> None:
    env.ml.rec.fail("jobs.create_or_update", http_error(404, AML_NOT_FOUND, "UserError"))
    run, _ = env.run_flow()
    assert run.status is RunStatus.FAILED
    train = run.step("train")
    assert train.state is StepState.FAILED and train.attempt == 1
    assert AML_NOT_FOUND in step_error(run, "train")
    assert run.error is not None and AML_NOT_FOUND in run.error
    assert env.ml.jobs.store == {} and env.ml.models.store == {}
    assert run.step("register").state is StepState.PENDING


def test_databricks_429_then_success_is_one_run_and_the_step_succeeds(env: FlowEnv) -> None:
    env.databricks.fail_next(
        f"{API}/runs/submit", 429, "REQUEST_LIMIT_EXCEEDED", "Too many requests.", headers={"Retry-After": "0"}
    )
    run, _ = env.run_flow()
    assert run.status is RunStatus.SUCCEEDED, run.error
    etl = run.step("etl")
    assert etl.state is StepState.SUCCEEDED and etl.attempt == 1
    calls = submits(env)
    assert len(calls) == 2 and {c.body["idempotency_token"] for c in calls} == {etl.key}
    assert list(env.databricks.runs) == [int(etl.remote_id or "0")]
