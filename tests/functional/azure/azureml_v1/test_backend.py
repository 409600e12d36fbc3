"""AzureMLv1Backend: published pipeline submission over real HTTP, runs through a fake SDK.

The submission is plain REST (``POST {published pipeline endpoint}`` with an AAD bearer token), so
it goes over loopback to pytest-httpserver, and the tests assert the exact request: path, method,
``Authorization: Bearer``, JSON body (``ExperimentName``, ``ParameterAssignments``, ``RunSource``)
and the parsing of the run ``Id``; throttling/unavailability is retried, 400/403/404 fail with the
service's own message. Everything else (the key lookup, tagging, status, metrics, files, cancel) is
azureml-core, whose workspace discovery is impractical to fake over HTTP, so it goes through the
injected fake SDK surface in ``fake_sdk.py``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from werkzeug import Request, Response

from shared.backends import azureml_v1
from shared.backends.azureml_v1 import AzureMLv1Backend, RetryPolicy
from shared.backends.base import LaunchRequest
from shared.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    PermanentError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from tests.functional.azure.azureml_v1.fake_sdk import FakeAzureML, FakeServiceException

SCOPE = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
PIPELINE_ID = "3f1e5d2c-0b8a-4f6e-9c1d-7a2b3c4d5e6f"
SUBMIT_PATH = f"/pipelines/v1.0{SCOPE}/PipelineRuns/PipelineSubmit/{PIPELINE_ID}"
REPO = Path(__file__).resolve().parents[4]


class FakeCredential:
    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("fake-aad-token", int(time.time()) + 3600)


def pipeline_run_response(run_id: str, experiment: str, assignments: dict[str, Any]) -> dict[str, Any]:
    """The PipelineRun entity the submit endpoint answers with (the fields we read: ``Id``)."""
    return {
        "Description": None,
        "Status": {"StatusCode": "NotStarted", "StatusDetail": None, "CreationTime": "2026-01-01T00:00:00Z"},
        "GraphId": "0a1b2c3d-graph",
        "IsSubmitted": False,
        "HasErrors": False,
        "ParameterAssignments": assignments,
        "DataPathAssignments": {},
        "RunHistoryExperimentName": experiment,
        "PipelineId": PIPELINE_ID,
        "RunSource": "SDK",
        "RunType": "HTTP",
        "TotalRunSteps": 2,
        "Id": run_id,
    }


def error_body(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message, "details": []}, "correlation": {}})


@pytest.fixture
def azure() -> FakeAzureML:
    return FakeAzureML()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def backend(httpserver: Any, azure: FakeAzureML, sleeps: list[float]) -> AzureMLv1Backend:
    import requests

    return AzureMLv1Backend(
        requests.Session(),
        lambda pid: httpserver.url_for(f"/pipelines/v1.0{SCOPE}/PipelineRuns/PipelineSubmit/{pid}"),
        azure.workspace,
        credential=FakeCredential(),
        sdk=azure.sdk,
        retry=RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, timeout=5),
        sleep=sleeps.append,
    )


def request(key: str = "run1-train-1", **params: Any) -> LaunchRequest:
    p = {"published_pipeline_id": PIPELINE_ID, "experiment": "retrain", "inputs": {"alpha": "0.5"}, **params}
    return LaunchRequest(
        run_id="run1",
        flow="retrain",
        step="train",
        kind="azureml",
        key=key,
        attempt=1,
        params=p,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


def submit_handler(azure: FakeAzureML, seen: list[dict[str, Any]]) -> Any:
    def handle(req: Request) -> Response:
        body = json.loads(req.get_data())
        seen.append({"headers": dict(req.headers), "body": body, "path": req.path})
        run = azure.create_pipeline_run(body["ExperimentName"])
        doc = pipeline_run_response(run.id, body["ExperimentName"], body.get("ParameterAssignments") or {})
        return Response(json.dumps(doc), status=200, content_type="application/json")

    return handle


# ---------------------------------------------------------------- launch


def test_launch_posts_the_documented_request_and_tags_the_run(httpserver, azure, backend):
    seen: list[dict[str, Any]] = []
    httpserver.expect_ordered_request(SUBMIT_PATH, method="POST").respond_with_handler(submit_handler(azure, seen))

    result = backend.launch(request())

    assert len(seen) == 1
    assert seen[0]["path"] == SUBMIT_PATH
    assert seen[0]["headers"]["Authorization"] == "Bearer fake-aad-token"
    assert seen[0]["headers"]["Content-Type"] == "application/json"
    assert seen[0]["body"] == {
        "ExperimentName": "retrain",
        "ParameterAssignments": {"alpha": "0.5"},
        "RunSource": "SDK",
    }
    assert backend.credential.scopes == [("https://management.azure.com/.default",)]
    run = azure.runs[result.remote_id]
    assert result.remote_id.startswith("pipeline-run-")
    assert result.reattached is False
    assert result.url == run.get_portal_url()
    assert run.tags["conveyor.key"] == "run1-train-1"
    assert run.tags["conveyor.traceparent"] == request().traceparent
    assert run.tags["conveyor.run_id"] == "run1"
    httpserver.check_assertions()


def test_second_launch_with_the_same_key_reattaches_without_posting(httpserver, azure, backend):
    seen: list[dict[str, Any]] = []
    httpserver.expect_request(SUBMIT_PATH, method="POST").respond_with_handler(submit_handler(azure, seen))
    first = backend.launch(request())
    second = backend.launch(request())
    other = backend.launch(request(key="run1-train-2"))

    assert second.remote_id == first.remote_id and second.reattached is True
    assert other.remote_id != first.remote_id and other.reattached is False
    assert len(seen) == 2  # the reattach sent nothing
    assert ("Experiment.get_runs", ("retrain", {"conveyor.key": "run1-train-1"})) in azure.calls


def test_a_run_tagged_by_an_earlier_host_is_found_before_any_post(httpserver, azure, backend):
    existing = azure.create_pipeline_run("retrain")
    existing.tags["conveyor.key"] = "run1-train-1"
    result = backend.launch(request())
    assert result.remote_id == existing.id and result.reattached
    assert len(httpserver.log) == 0


def test_throttling_and_unavailability_are_retried_then_succeed(httpserver, azure, backend, sleeps):
    seen: list[dict[str, Any]] = []
    httpserver.expect_ordered_request(SUBMIT_PATH, method="POST").respond_with_response(
        Response(error_body("TooManyRequests", "Rate limit exceeded"), status=429, headers={"Retry-After": "0.02"})
    )
    httpserver.expect_ordered_request(SUBMIT_PATH, method="POST").respond_with_data(
        error_body("ServiceUnavailable", "The service is busy"), status=503, content_type="application/json"
    )
    httpserver.expect_ordered_request(SUBMIT_PATH, method="POST").respond_with_handler(submit_handler(azure, seen))

    result = backend.launch(request())

    assert len(httpserver.log) == 3 and len(seen) == 1
    assert sleeps == [0.02, 0.02]  # Retry-After honoured, then backoff 0.01 * 2
    assert azure.runs[result.remote_id].tags["conveyor.key"] == "run1-train-1"
    httpserver.check_assertions()


def test_unavailability_that_persists_is_a_retryable_error_with_the_service_message(httpserver, backend, sleeps):
    httpserver.expect_request(SUBMIT_PATH, method="POST").respond_with_data(
        error_body("ServiceUnavailable", "Pipelines service is temporarily unavailable"), status=503
    )
    with pytest.raises(TransientError) as info:
        backend.launch(request())
    assert info.value.retryable and info.value.status == 503
    assert "Pipelines service is temporarily unavailable" in str(info.value)
    assert len(httpserver.log) == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "code", "message", "error"),
    [
        (400, "UserError", "Parameter 'alpha2' is not defined in the published pipeline", BadRequestError),
        (403, "AuthorizationFailed", "The client does not have authorization to perform action", AuthError),
        (404, "NotFound", f"PublishedPipeline {PIPELINE_ID} was not found", NotFoundError),
    ],
)
def test_permanent_errors_fail_at_once_with_the_service_message(
    httpserver, backend, sleeps, status, code, message, error
):
    httpserver.expect_request(SUBMIT_PATH, method="POST").respond_with_data(
        error_body(code, message), status=status, content_type="application/json"
    )
    with pytest.raises(error) as info:
        backend.launch(request())
    assert isinstance(info.value, PermanentError) and not info.value.retryable
    assert message in str(info.value) and code in str(info.value)
    assert info.value.status == status
    assert len(httpserver.log) == 1 and sleeps == []


def test_a_response_without_a_run_id_is_a_permanent_error(httpserver, backend):
    httpserver.expect_request(SUBMIT_PATH, method="POST").respond_with_json({"Status": {"StatusCode": "NotStarted"}})
    with pytest.raises(PermanentError, match="no run Id"):
        backend.launch(request())


def test_a_run_that_cannot_be_tagged_is_cancelled_so_a_retry_leaves_no_orphan(httpserver, azure, backend):
    def handle(req: Request) -> Response:
        run = azure.create_pipeline_run("retrain")
        run.fail_set_tags = FakeServiceException(403, "Caller is not authorized to update run tags")
        return Response(json.dumps(pipeline_run_response(run.id, "retrain", {})), content_type="application/json")

    httpserver.expect_request(SUBMIT_PATH, method="POST").respond_with_handler(handle)
    with pytest.raises(AuthError, match="not authorized to update run tags"):
        backend.launch(request())
    (run,) = [r for r in azure.runs.values() if r.children]
    assert run.cancelled == 1 and "conveyor.key" not in run.tags


def test_params_are_validated_before_anything_is_sent(httpserver, backend):
    with pytest.raises(ValidationError) as info:
        backend.launch(request(published_pipeline_id=None, pipeline="aml/pipeline.yml"))
    assert info.value.field == "params.published_pipeline_id"
    with pytest.raises(ValidationError) as info:
        backend.launch(request(experiment="../etc"))
    assert info.value.field == "params.experiment"
    with pytest.raises(ValidationError) as info:
        backend.launch(request(unknown_field=1))
    assert info.value.field == "params.unknown_field"
    assert len(httpserver.log) == 0


# ---------------------------------------------------------------- poll / cancel


@pytest.fixture
def submitted(azure: FakeAzureML) -> Any:
    run = azure.create_pipeline_run("retrain", steps=2)
    run.tags["conveyor.key"] = "k"
    return run


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("NotStarted", "running"),
        ("Queued", "running"),
        ("Preparing", "running"),
        ("Starting", "running"),
        ("Provisioning", "running"),
        ("Running", "running"),
        ("Finalizing", "running"),
        ("CancelRequested", "running"),
        ("Completed", "succeeded"),
        ("Finished", "succeeded"),
        ("Failed", "failed"),
        ("Canceled", "cancelled"),
    ],
)
def test_run_status_maps_to_step_state(backend, submitted, status, state):
    submitted.status = status
    assert backend.poll(submitted.id).state == state


def test_running_reports_step_progress(backend, submitted):
    submitted.status = "Running"
    submitted.children[0].status = "Completed"
    submitted.children[1].status = "Running"
    assert backend.poll(submitted.id).progress == {"done": 1, "total": 2}


def test_success_outputs_metrics_model_uri_and_portal_url(backend, submitted):
    submitted.status = "Completed"
    first, second = submitted.children
    first.metrics = {"rows": 100, "rmse": 9.5, "loss": [0.9, 0.5, 0.3]}
    second.metrics = {"rmse": 7.25, "table": {"col": [1, 2]}}
    second.files = ["outputs/model/MLmodel", "outputs/model/model.pkl", "logs/azureml/driver.txt"]
    submitted.metrics = {"pipeline_score": 0.8}

    status = backend.poll(submitted.id)

    assert status.state == "succeeded"
    out = status.outputs
    assert out["pipeline_run"] == submitted.id
    # steps in start order (later wins), lists keep their last value, non-scalars are left out
    assert out["metrics"] == {"rows": 100, "rmse": 7.25, "loss": 0.3, "pipeline_score": 0.8}
    assert out["model_uri"] == f"azureml://jobs/{second.id}/outputs/artifacts/paths/outputs/model/"
    assert out["outputs"] == {"step1.model": out["model_uri"]}
    assert out["portal_url"] == submitted.get_portal_url()


def test_steps_are_merged_in_start_order_not_listing_order(backend, submitted):
    submitted.status = "Completed"
    first, second = submitted.children
    submitted.children.reverse()  # the service lists newest first
    first.metrics, second.metrics = {"rmse": 1.0}, {"rmse": 2.0}
    first.files = ["outputs/model/model.pkl"]
    second.files = ["outputs/model/other.pkl"]
    out = backend.poll(submitted.id).outputs
    assert out["metrics"]["rmse"] == 2.0
    assert out["model_uri"].startswith(f"azureml://jobs/{first.id}/")


def test_no_model_folder_means_no_model_uri(backend, submitted):
    submitted.status = "Completed"
    submitted.children[0].files = ["outputs/report.json"]
    out = backend.poll(submitted.id).outputs
    assert out["model_uri"] is None and out["outputs"] == {}


def test_failure_carries_the_run_and_step_error_messages(backend, submitted):
    submitted.status = "Failed"
    submitted.error = {"error": {"code": "UserError", "message": "Pipeline has failed child jobs."}}
    submitted.children[0].status = "Completed"
    submitted.children[1].status = "Failed"
    submitted.children[1].error = {
        "error": {"code": "UserError", "message": "ValueError: could not convert string to float: 'abc'"}
    }
    status = backend.poll(submitted.id)
    assert status.state == "failed"
    assert "Pipeline has failed child jobs." in status.error
    assert "step 'step1'" in status.error and "could not convert string to float" in status.error


def test_poll_of_an_unknown_run_is_not_found(backend):
    with pytest.raises(NotFoundError, match="was not found"):
        backend.poll("pipeline-run-9999")


def test_throttled_sdk_calls_map_to_retryable_errors(backend, azure, submitted):
    def throttled(workspace: Any, run_id: str) -> Any:
        raise FakeServiceException(429, "Rate limit exceeded for run history")

    azure.sdk.Run.get = staticmethod(throttled)
    with pytest.raises(ThrottledError, match="Rate limit exceeded for run history"):
        backend.poll(submitted.id)


def test_cancel_stops_a_running_run_and_leaves_a_finished_one(backend, submitted, azure):
    submitted.status = "Running"
    backend.cancel(submitted.id)
    assert submitted.cancelled == 1 and submitted.status == "Canceled"
    backend.cancel(submitted.id)  # already cancelled: a no-op
    assert submitted.cancelled == 1
    done = azure.create_pipeline_run("retrain")
    done.status = "Completed"
    backend.cancel(done.id)
    assert done.cancelled == 0


# ---------------------------------------------------------------- support status, laziness


def test_end_of_support_is_logged_once_per_process(monkeypatch, caplog, azure):
    monkeypatch.setattr(azureml_v1, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="shared.backends.azureml_v1"):
        AzureMLv1Backend(None, None, azure.workspace, sdk=azure.sdk)
        AzureMLv1Backend(None, None, azure.workspace, sdk=azure.sdk)
    records = [r for r in caplog.records if "end of support" in r.getMessage()]
    assert len(records) == 1 and "2026-06-30" in records[0].getMessage()


def test_importing_the_v1_adapters_loads_no_sdk():
    code = (
        "import sys, shared.backends.azureml_v1, shared.registry.azureml_v1, shared.deploy.azureml_v1;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('azureml', 'requests')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_endpoint_is_the_documented_pipeline_submit_url():
    """Without azureml-pipeline-core, the URL is built from the workspace's discovered pipelines service."""
    pytest.importorskip("azureml.core")
    try:
        import azureml.pipeline.core  # noqa: F401

        pytest.skip("azureml-pipeline-core is installed: PublishedPipeline.get(...).endpoint is used")
    except ImportError:
        pass

    class Context:
        def _get_pipelines_url(self) -> str:
            return "https://westeurope.api.azureml.ms/"

        def _get_workspace_scope(self) -> str:
            return SCOPE

    ws = type("Ws", (), {"service_context": Context()})()
    url = azureml_v1.default_rest_endpoint_for(ws)(PIPELINE_ID)
    assert url == f"https://westeurope.api.azureml.ms{SUBMIT_PATH}"


def test_wiring_builds_the_v1_adapters_lazily_and_names_missing_settings(monkeypatch):
    import shared.azure_identity
    from shared.deploy.azureml_v1 import AzureMLWebServiceDeployer
    from shared.registry.azureml_v1 import AzureMLv1Registry
    from shared.settings import Settings
    from shared.wiring import Services

    monkeypatch.setattr(shared.azure_identity, "get_credential", lambda settings, client_id=None: FakeCredential())
    settings = Settings.from_env({"CONVEYOR_MODE": "azure", "CONVEYOR_AZUREML_SDK": "v1", "CONVEYOR_ROOT": str(REPO)})
    services = Services(settings)
    backend = services.backend("azureml")
    assert isinstance(backend, AzureMLv1Backend)
    assert isinstance(services.registry, AzureMLv1Registry)
    assert isinstance(services.deployer, AzureMLWebServiceDeployer) and services.deployer.target == "aci"
    with pytest.raises(ValidationError) as info:
        backend.launch(request())
    assert info.value.field == "CONVEYOR_AZUREML_SUBSCRIPTION_ID"


def test_instances_are_runs_tagged_with_their_keys(httpserver, azure, backend):
    from dataclasses import replace

    from shared.engine.model import idempotency_key

    seen: list[dict[str, Any]] = []
    httpserver.expect_request(SUBMIT_PATH, method="POST").respond_with_handler(submit_handler(azure, seen))
    keys = [idempotency_key("run1", "train", 1, i) for i in (0, 1)]
    ids = []
    for i, key in enumerate(keys):
        r = replace(request(key), index=i)
        first = backend.launch(r)
        assert backend.launch(r).remote_id == first.remote_id  # found by its key tag, not posted again
        ids.append(first.remote_id)
    assert len(seen) == 2 and ids[0] != ids[1]
    assert [azure.runs[x].tags["conveyor.key"] for x in ids] == keys
    assert [azure.runs[x].tags["conveyor.index"] for x in ids] == ["0", "1"]
