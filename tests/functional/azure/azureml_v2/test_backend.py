"""AzureMLv2Backend against a fake of the MLClient surface (see fake_mlclient.py for why).

The pipeline YAML is parsed for real by ``azure.ai.ml.load_job`` (samples/aml_pipeline/
pipeline.yml) and the submitted ``PipelineJob`` is inspected: its name is the key, the input is
bound as an ``Input``, tags, experiment and compute are set. The job metrics come from the
workspace's MLflow tracking REST API, faked on loopback with pytest-httpserver: the exact
request (path, run_id query, bearer token) is asserted.

Retries: in Azure, MLClient's azure-core RetryPolicy retries 429/5xx before the adapter sees
them; what reaches the adapter is mapped to RetryableError (the engine retries the step) or to
PermanentError carrying the service's message (the step fails with it). Both are asserted here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from shared.azureml_common import ml_client_from_settings
from shared.backends.azureml_v2 import AzureMLv2Backend, MlflowRestMetrics
from shared.backends.base import LaunchRequest
from shared.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    PermanentError,
    RetryableError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.settings import AzureSettings, Settings
from tests.functional.azure.azureml_v2.fake_mlclient import RG, SUB, WS, FakeCredential, FakeMLClient, http_error

ROOT = Path(__file__).resolve().parents[4]
GOLD = "https://lakeacct.blob.core.windows.net/lake/gold/sales/"
MLFLOW_PATH = f"/mlflow/v1.0/subscriptions/{SUB}/resourceGroups/{RG}/workspaces/{WS}"


def request(key: str = "3f2a9c-train-1", **params: Any) -> LaunchRequest:
    p: dict[str, Any] = {
        "pipeline": "samples/aml_pipeline/pipeline.yml",
        "experiment": "sales-forecaster",
        "inputs": {"gold": GOLD},
    }
    p.update(params)
    return LaunchRequest(
        run_id="3f2a9c",
        flow="retrain",
        step="train",
        kind="azureml",
        key=key,
        attempt=1,
        params=p,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


@pytest.fixture
def client() -> FakeMLClient:
    return FakeMLClient()


@pytest.fixture
def metrics_server(httpserver: HTTPServer) -> HTTPServer:
    return httpserver


def backend(client: FakeMLClient, server: HTTPServer | None = None, **kw: Any) -> AzureMLv2Backend:
    reader = None
    if server is not None:
        reader = MlflowRestMetrics(server.url_for(MLFLOW_PATH), FakeCredential())
    return AzureMLv2Backend(client, root=ROOT, compute="cpu-cluster-2", metrics_reader=reader, **kw)


def mlflow_run(run_id: str, metrics: dict[str, float]) -> dict[str, Any]:
    """The shape of MLflow's GET /api/2.0/mlflow/runs/get answer."""
    return {
        "run": {
            "info": {"run_id": run_id, "run_uuid": run_id, "status": "FINISHED"},
            "data": {
                "metrics": [{"key": k, "value": v, "timestamp": 1718000000000, "step": 0} for k, v in metrics.items()],
                "params": [],
                "tags": [],
            },
        }
    }


def submitted(client: FakeMLClient) -> tuple[Any, dict[str, Any]]:
    calls = [args for op, args in client.rec.calls if op == "jobs.create_or_update"]
    assert len(calls) == 1, calls
    return calls[0][0], calls[0][1]


def test_launch_submits_the_real_pipeline_named_by_key_then_polls_to_outputs(
    client: FakeMLClient, metrics_server: HTTPServer
) -> None:
    b = backend(client, metrics_server)
    res = b.launch(request())
    assert res.remote_id == "3f2a9c-train-1" and not res.reattached
    assert res.url and "runs/3f2a9c-train-1" in res.url and WS in res.url

    job, kwargs = submitted(client)
    from azure.ai.ml import Input
    from azure.ai.ml.entities import PipelineJob

    assert isinstance(job, PipelineJob)
    assert job.name == "3f2a9c-train-1"
    assert job.experiment_name == "sales-forecaster" and kwargs["experiment_name"] == "sales-forecaster"
    bound = job.inputs["gold"]
    assert isinstance(bound, Input) and bound.type == "uri_folder" and bound.path == GOLD
    assert job.settings is not None and job.settings.default_compute == "cpu-cluster-2"
    assert job.tags == {
        "conveyor.run_id": "3f2a9c",
        "conveyor.flow": "retrain",
        "conveyor.step": "train",
        "conveyor.key": "3f2a9c-train-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    assert set(job.jobs) == {"train", "evaluate"}  # the YAML's nodes, parsed by azure-ai-ml

    # running, one of two children done
    client.jobs.set_status("3f2a9c-train-1", "Running")
    client.jobs.add_child("3f2a9c-train-1", "c-train-01", "train", "Completed")
    client.jobs.add_child("3f2a9c-train-1", "c-eval-02", "evaluate", "Running")
    st = b.poll("3f2a9c-train-1")
    assert st.state == "running" and st.progress == {"done": 1, "total": 2}

    for status in ("Queued", "Preparing", "Starting", "Provisioning", "Finalizing", "NotStarted"):
        client.jobs.set_status("3f2a9c-train-1", status)
        assert b.poll("3f2a9c-train-1").state == "running", status

    # completed: metrics from each child's MLflow run (later nodes win), outputs addressed by job
    for run_id, metrics in (("c-train-01", {"r2": 0.5, "rmse": 3.0}), ("c-eval-02", {"r2": 0.81})):
        metrics_server.expect_ordered_request(
            f"{MLFLOW_PATH}/api/2.0/mlflow/runs/get",
            method="GET",
            query_string={"run_id": run_id},
            headers={"Authorization": "Bearer fake-token"},
        ).respond_with_json(mlflow_run(run_id, metrics))
    client.jobs.set_status("3f2a9c-train-1", "Completed")
    client.jobs.children["3f2a9c-train-1"][1]._status = "Completed"
    st = b.poll("3f2a9c-train-1")
    metrics_server.check_assertions()
    assert st.state == "succeeded"
    assert st.outputs == {
        "pipeline_run": "3f2a9c-train-1",
        "metrics": {"r2": 0.81, "rmse": 3.0},
        "outputs": {
            "train.model": "azureml://jobs/3f2a9c-train-1/outputs/model",
            "evaluate.report": "azureml://jobs/3f2a9c-train-1/outputs/report",
            "pipeline.model": "azureml://jobs/3f2a9c-train-1/outputs/model",
            "pipeline.report": "azureml://jobs/3f2a9c-train-1/outputs/report",
        },
        "model_uri": "azureml://jobs/3f2a9c-train-1/outputs/model",
        "studio_url": res.url,
    }  # no "inputs": the gold folder is data, not a literal


def test_literal_inputs_are_bound_quoted_and_come_back_as_outputs_inputs(client: FakeMLClient) -> None:
    """A for_each over train's outputs names each instance's partition by ${item.inputs.partition}."""
    b = backend(client)
    req = request(pipeline="samples/aml_pipeline/partitions_pipeline.yml", inputs={"gold": GOLD, "partition": "7 $(x)"})
    b.launch(req)
    job, _ = submitted(client)
    assert job.inputs["partition"] == "'7 $(x)'"  # one shell word where Azure ML pastes it
    assert job.tags["conveyor.input.partition"] == "7 $(x)"  # the value itself
    client.jobs.set_status("3f2a9c-train-1", "Completed")
    assert b.poll("3f2a9c-train-1").outputs["inputs"] == {"partition": "7 $(x)"}


def test_metrics_reader_defaults_to_the_workspace_tracking_uri(httpserver: HTTPServer) -> None:
    client = FakeMLClient(tracking_uri=httpserver.url_for(MLFLOW_PATH))
    cred = FakeCredential()
    b = AzureMLv2Backend(client, root=ROOT, credential=cred)
    b.launch(request())
    client.jobs.add_child("3f2a9c-train-1", "c1", "train", "Completed")
    client.jobs.set_status("3f2a9c-train-1", "Completed")
    httpserver.expect_request(
        f"{MLFLOW_PATH}/api/2.0/mlflow/runs/get", query_string={"run_id": "c1"}
    ).respond_with_json(mlflow_run("c1", {"r2": 0.7}))
    st = b.poll("3f2a9c-train-1")
    assert st.outputs["metrics"] == {"r2": 0.7}
    assert client.rec.count("workspaces.get") == 1
    assert cred.scopes == [("https://management.azure.com/.default",)]


def test_mlflow_metrics_errors_are_mapped(httpserver: HTTPServer) -> None:
    reader = MlflowRestMetrics(httpserver.url_for("/mlflow"), FakeCredential(), timeout=5)
    httpserver.expect_oneshot_request("/mlflow/api/2.0/mlflow/runs/get").respond_with_json(
        {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}, status=503
    )
    with pytest.raises(TransientError, match="try later"):
        reader("r1")
    httpserver.expect_oneshot_request("/mlflow/api/2.0/mlflow/runs/get").respond_with_json(
        {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'r2' not found"}, status=404
    )
    assert reader("r2") == {}
    httpserver.expect_oneshot_request("/mlflow/api/2.0/mlflow/runs/get").respond_with_json(
        {"error_code": "PERMISSION_DENIED", "message": "no access to workspace"}, status=403
    )
    with pytest.raises(AuthError, match="no access to workspace"):
        reader("r3")


def test_second_launch_reattaches_without_a_second_job(client: FakeMLClient) -> None:
    b = backend(client)
    first = b.launch(request())
    again = b.launch(request())
    assert again.remote_id == first.remote_id and again.reattached
    assert client.rec.count("jobs.create_or_update") == 1


def test_name_taken_between_get_and_create_reattaches(client: FakeMLClient) -> None:
    b = backend(client)
    # another worker created it after our get: the service answers 409 on create
    client.rec.fail("jobs.create_or_update", http_error(409, "(UserError) Job 3f2a9c-train-1 already exists"))
    client.jobs.store["3f2a9c-train-1"] = SimpleNamespace(status="Running", studio_url=None)
    client.rec.fail("jobs.get", http_error(404, "(UserError) not found"))
    res = b.launch(request())
    assert res.reattached and res.remote_id == "3f2a9c-train-1"
    assert client.rec.count("jobs.create_or_update") == 1


def test_failed_job_reports_the_service_error_and_the_failed_node(client: FakeMLClient) -> None:
    b = backend(client)
    b.launch(request())
    client.jobs.set_status("3f2a9c-train-1", "Failed")
    client.jobs.add_child("3f2a9c-train-1", "c-train-01", "train", "Failed")
    client.jobs.add_child("3f2a9c-train-1", "c-eval-02", "evaluate", "Canceled")
    client.jobs.errors["3f2a9c-train-1"] = ("UserError", "Execution failed. User process 'python' exited with 1")
    st = b.poll("3f2a9c-train-1")
    assert st.state == "failed"
    assert st.error is not None
    assert "Azure ML job 3f2a9c-train-1 Failed (failed: train)" in st.error
    assert "UserError: Execution failed. User process 'python' exited with 1" in st.error
    assert "https://ml.azure.com/runs/3f2a9c-train-1" in st.error

    client.jobs.set_status("3f2a9c-train-1", "NotResponding")
    assert b.poll("3f2a9c-train-1").state == "failed"


def test_cancel_requests_cancellation_without_waiting_and_is_a_noop_when_finished(client: FakeMLClient) -> None:
    b = backend(client)
    b.launch(request())
    client.jobs.set_status("3f2a9c-train-1", "Running")
    b.cancel("3f2a9c-train-1")
    assert client.rec.count("jobs.begin_cancel") == 1
    assert b.poll("3f2a9c-train-1").state == "running"  # CancelRequested
    client.jobs.set_status("3f2a9c-train-1", "Canceled")
    assert b.poll("3f2a9c-train-1").state == "cancelled"
    b.cancel("3f2a9c-train-1")  # terminal: the service's 400 is not an error for us
    b.cancel("no-such-job")  # unknown: nothing to stop


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, "TooManyRequests", ThrottledError),
        (503, "ServiceUnavailable", TransientError),
        (500, "InternalServerError", TransientError),
    ],
)
def test_transient_service_errors_are_retryable_and_a_retry_makes_one_job(
    client: FakeMLClient, status: int, code: str, expected: type[Exception]
) -> None:
    b = backend(client)
    client.rec.fail("jobs.create_or_update", http_error(status, f"({code}) The service is busy, retry later", code))
    with pytest.raises(expected) as info:
        b.launch(request())
    assert isinstance(info.value, RetryableError)
    assert "The service is busy, retry later" in str(info.value)
    res = b.launch(request())  # the engine's retry
    assert not res.reattached
    assert client.rec.count("jobs.create_or_update") == 2 and len(client.jobs.store) == 1

    client.rec.fail("jobs.get", http_error(status, f"({code}) busy", code))
    with pytest.raises(RetryableError):
        b.poll(res.remote_id)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "(UserError) Compute cpu-cluster-2 not found in workspace", BadRequestError),
        (403, "(AuthorizationFailed) The client does not have authorization to perform action", AuthError),
        (404, "(UserError) Workspace ws-conveyor not found", NotFoundError),
    ],
)
def test_permanent_service_errors_keep_the_service_message(
    client: FakeMLClient, status: int, message: str, expected: type[Exception]
) -> None:
    b = backend(client)
    client.rec.fail("jobs.create_or_update", http_error(status, message))
    with pytest.raises(expected) as info:
        b.launch(request())
    assert isinstance(info.value, PermanentError) and not info.value.retryable
    assert message in str(info.value)


def test_sdk_validation_errors_are_permanent_not_transient(client: FakeMLClient) -> None:
    from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, ValidationException

    b = backend(client)
    client.rec.fail(
        "jobs.create_or_update",
        ValidationException(
            message="Required input 'gold' for component 'train' not provided.",
            no_personal_data_message="Required input not provided",
            target=ErrorTarget.PIPELINE,  # type: ignore[arg-type]  # the SDK's own constants
            error_category=ErrorCategory.USER_ERROR,  # type: ignore[arg-type]
        ),
    )
    with pytest.raises(BadRequestError, match="Required input 'gold'"):
        b.launch(request())


def test_params_are_validated_before_anything_is_sent(client: FakeMLClient) -> None:
    b = backend(client)
    with pytest.raises(ValidationError) as info:
        b.launch(request(pipeline="../outside.yml"))
    assert info.value.field == "params.pipeline"
    with pytest.raises(ValidationError) as info:
        b.launch(request(inputs={"silver": GOLD}))
    assert info.value.field == "params.inputs.silver" and "gold" in str(info.value)
    with pytest.raises(ValidationError) as info:
        b.launch(request(inputs={"gold": "data/gold"}))  # a local path would be uploaded from the app
    assert info.value.field == "params.inputs.gold"
    with pytest.raises(ValidationError) as info:
        b.launch(request(pipeline=None, published_pipeline_id="abc"))
    assert info.value.field == "params.pipeline"
    assert client.rec.count("jobs.create_or_update") == 0


def test_azureml_asset_and_file_urls_bind_with_their_types(client: FakeMLClient) -> None:
    b = backend(client)
    b.launch(request(key="k-asset-1", inputs={"gold": "azureml:gold-sales:3"}))
    job, _ = submitted(client)
    assert job.inputs["gold"].path == "azureml:gold-sales:3" and job.inputs["gold"].type == "uri_folder"


def test_ml_client_from_settings_names_the_missing_setting_and_builds_without_requests() -> None:
    settings = Settings(mode="azure", root=ROOT, azure=AzureSettings(azureml_subscription_id=SUB))
    with pytest.raises(ValidationError) as info:
        ml_client_from_settings(settings, FakeCredential())
    assert info.value.field == "CONVEYOR_AZUREML_RESOURCE_GROUP"
    settings = Settings(
        mode="azure",
        root=ROOT,
        azure=AzureSettings(azureml_subscription_id=SUB, azureml_resource_group=RG, azureml_workspace=WS),
    )
    cred = FakeCredential()
    ml = ml_client_from_settings(settings, cred)
    from azure.ai.ml import MLClient

    assert isinstance(ml, MLClient)
    assert (ml.subscription_id, ml.resource_group_name, ml.workspace_name) == (SUB, RG, WS)
    assert cred.scopes == []  # no token asked for: nothing was sent


def test_wiring_builds_the_v2_adapters_from_settings_without_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.azure_identity
    from shared.deploy.azureml_v2 import AzureMLOnlineDeployer
    from shared.registry.azureml_v2 import AzureMLRegistry
    from shared.wiring import Services

    cred = FakeCredential()
    monkeypatch.setattr(shared.azure_identity, "get_credential", lambda settings, client_id=None: cred)
    env = {
        "CONVEYOR_MODE": "azure",
        "CONVEYOR_ROOT": str(ROOT),
        "CONVEYOR_AZUREML_SUBSCRIPTION_ID": SUB,
        "CONVEYOR_AZUREML_RESOURCE_GROUP": RG,
        "CONVEYOR_AZUREML_WORKSPACE": WS,
        "CONVEYOR_AZUREML_COMPUTE": "cpu-cluster",
    }
    services = Services(Settings.from_env(env))
    b = services.backend("azureml")
    assert isinstance(b, AzureMLv2Backend) and b.compute == "cpu-cluster" and b.root == ROOT
    assert b.ml_client.workspace_name == WS
    assert isinstance(services.registry, AzureMLRegistry)
    assert isinstance(services.deployer, AzureMLOnlineDeployer)
    assert cred.scopes == []


LITERAL_PIPELINE = """\
type: pipeline
inputs:
  label: plain
  alpha: 0.1
jobs:
  echo:
    type: command
    code: .
    environment: azureml:AzureML-sklearn-1.5@latest
    command: python echo.py --label ${{inputs.label}} --alpha ${{inputs.alpha}}
    environment_variables: {FROM_YAML: yaml}
    inputs:
      label: ${{parent.inputs.label}}
      alpha: ${{parent.inputs.alpha}}
"""


def test_literal_inputs_reach_the_remote_shell_as_one_word_and_env_is_set_per_job(
    client: FakeMLClient, tmp_path: Path
) -> None:
    """Azure ML pastes a literal input into its command line, which runs in a shell: a hostile
    value is sent shell-quoted (one word there), a plain one unchanged; the step's env: goes
    to every job, under what the YAML sets."""
    import shlex

    (tmp_path / "p.yml").write_text(LITERAL_PIPELINE)
    (tmp_path / "echo.py").write_text("print('x')\n")
    hostile = "a b; $(touch CANARY_M1) `id` 'q'"
    b = AzureMLv2Backend(client, root=tmp_path, compute="cpu")
    req = request(pipeline="p.yml", inputs={"label": hostile, "alpha": "0.5"})
    req = LaunchRequest(**{**req.__dict__, "env": {"GREETING": "hi $(x)", "FROM_YAML": "step"}})
    b.launch(req)
    job, _ = submitted(client)
    assert shlex.split(f"--label {job.inputs['label']}") == ["--label", hostile]
    assert job.inputs["alpha"] == "0.5"
    assert dict(job.jobs["echo"].environment_variables) == {"GREETING": "hi $(x)", "FROM_YAML": "yaml"}


def test_instances_are_jobs_named_by_their_keys(client: FakeMLClient) -> None:
    from dataclasses import replace

    from shared.engine.model import idempotency_key

    b = backend(client)
    keys = [idempotency_key("3f2a9c", "train", 1, i) for i in (0, 1)]
    for i, key in enumerate(keys):
        r = replace(request(key), index=i)
        assert b.launch(r).remote_id == b.launch(r).remote_id
    jobs = [args[0] for op, args in client.rec.calls if op == "jobs.create_or_update"]
    assert [j.name for j in jobs] == keys  # already valid job names: used as they are
    assert [j.tags["conveyor.index"] for j in jobs] == ["0", "1"]
