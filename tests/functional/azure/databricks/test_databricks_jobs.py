"""DatabricksJobsBackend against a faithful fake of the Jobs API 2.2 on loopback (fake_jobs.py).

The real databricks-sdk WorkspaceClient talks HTTP to the fake: host-metadata probe, auth
headers, request bodies, the SDK's own retries and error parsing are all exercised.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from shared.backends.azure_databricks import (
    AZURE_DATABRICKS_SCOPE,
    AZURE_MANAGEMENT_SCOPE,
    DatabricksJobsBackend,
    config_kwargs,
    map_databricks_error,
)
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
from shared.settings import AzureSettings, Settings

from .fake_jobs import API, MULTI_TASK_OUTPUT_ERROR, WORKSPACE_ID, FakeDatabricks

REPO_ROOT = Path(__file__).resolve().parents[4]
PAT = "dapi-fake-token"
RESOURCE_ID = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Databricks/workspaces/ws"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def azure_settings(host: str | None, **azure: Any) -> Settings:
    return Settings(mode="azure", azure=AzureSettings(databricks_host=host, **azure), env={})


def request_for(
    params: dict[str, Any], *, step: str = "etl", attempt: int = 1, run_id: str = "a" * 32
) -> LaunchRequest:
    return LaunchRequest(
        run_id=run_id,
        flow="retrain",
        step=step,
        kind="databricks",
        key=f"{run_id}-{step}-{attempt}",
        attempt=attempt,
        params=params,
        traceparent=TRACEPARENT,
    )


@pytest.fixture
def fake(httpserver: Any) -> FakeDatabricks:
    return FakeDatabricks(httpserver.url_for("/"), token=PAT, jobs={42: ["etl"], 7: ["prep", "train"]}).install(
        httpserver
    )


def make_backend(fake: FakeDatabricks, retry_timeout_seconds: int = 10, **azure: Any) -> DatabricksJobsBackend:
    azure.setdefault("databricks_auth", "pat")
    azure.setdefault("databricks_token", PAT)
    return DatabricksJobsBackend.from_settings(
        azure_settings(fake.base_url, **azure), retry_timeout_seconds=retry_timeout_seconds
    )


@pytest.fixture
def backend(fake: FakeDatabricks) -> DatabricksJobsBackend:
    return make_backend(fake)


SCRIPT: dict[str, Any] = {
    "python_file": "/Workspace/conveyor/medallion.py",
    "parameters": ["--input", "abfss://in/x.csv"],
}


# ------------------------------------------------------------------ client & launch


def test_client_probes_host_metadata_and_sends_pat_and_workspace_id(fake: FakeDatabricks, backend: Any) -> None:
    probes = fake.calls("/.well-known/databricks-config")
    assert [p.method for p in probes] == ["GET"]
    backend.launch(request_for({"job_id": 42}))
    call = fake.api_calls()[0]
    assert call.headers["Authorization"] == f"Bearer {PAT}"
    # workspace_id came from the metadata probe; the SDK scopes requests with it
    assert call.headers["X-Databricks-Workspace-Id"] == WORKSPACE_ID


def test_run_now_sends_job_token_and_params_and_reattaches(fake: FakeDatabricks, backend: Any) -> None:
    req = request_for({"job_id": 42, "parameters": ["--lake", "abfss://lake/run1"]})
    first = backend.launch(req)
    again = backend.launch(req)  # a redelivered launch message
    calls = fake.calls(f"{API}/run-now")
    assert [c.method for c in calls] == ["POST", "POST"]
    expected = {"job_id": 42, "idempotency_token": req.key, "python_params": ["--lake", "abfss://lake/run1"]}
    assert calls[0].body == expected
    assert calls[1].body == expected
    assert first.remote_id == again.remote_id
    assert list(fake.runs) == [int(first.remote_id)]  # one remote run


def test_run_now_without_parameters_keeps_the_jobs_own(fake: FakeDatabricks, backend: Any) -> None:
    req = request_for({"job_id": 42})
    backend.launch(req)
    assert fake.calls(f"{API}/run-now")[0].body == {"job_id": 42, "idempotency_token": req.key}


def test_submit_serverless_one_time_run_exact_body_and_reattach(fake: FakeDatabricks, backend: Any) -> None:
    req = request_for(SCRIPT)
    first = backend.launch(req)
    again = backend.launch(req)
    calls = fake.calls(f"{API}/runs/submit")
    expected = {
        "run_name": f"conveyor-retrain-etl-{req.run_id}",
        "idempotency_token": req.key,
        "tasks": [
            {
                "task_key": "etl",
                "spark_python_task": {"python_file": SCRIPT["python_file"], "parameters": SCRIPT["parameters"]},
                "environment_key": "default",
            }
        ],
        "environments": [{"environment_key": "default", "spec": {"environment_version": "2"}}],
    }
    assert [c.body for c in calls] == [expected, expected]
    assert first.remote_id == again.remote_id and len(fake.runs) == 1


def test_submit_new_cluster_carries_trace_and_run_id(fake: FakeDatabricks, backend: Any) -> None:
    cluster = {
        "spark_version": "15.4.x-scala2.12",
        "node_type_id": "Standard_DS3_v2",
        "num_workers": 2,
        "spark_env_vars": {"PYSPARK_PYTHON": "/databricks/python3/bin/python3"},
    }
    req = request_for({**SCRIPT, "cluster": cluster})
    backend.launch(req)
    body = fake.calls(f"{API}/runs/submit")[0].body
    assert "environments" not in body
    task = body["tasks"][0]
    assert "environment_key" not in task
    assert task["new_cluster"] == {
        **cluster,
        "spark_env_vars": {
            "PYSPARK_PYTHON": "/databricks/python3/bin/python3",
            "TRACEPARENT": TRACEPARENT,
            "CONVEYOR_RUN_ID": req.run_id,
        },
    }


def test_step_env_goes_to_a_new_cluster_and_is_refused_where_it_cannot_apply(
    fake: FakeDatabricks, backend: Any
) -> None:
    cluster = {"spark_version": "15.4.x-scala2.12", "node_type_id": "Standard_DS3_v2", "num_workers": 1}
    req = request_for({**SCRIPT, "cluster": {**cluster, "spark_env_vars": {"B": "cluster"}}})
    backend.launch(LaunchRequest(**{**req.__dict__, "env": {"A": "step $(x)", "B": "step"}}))
    env = fake.calls(f"{API}/runs/submit")[0].body["tasks"][0]["new_cluster"]["spark_env_vars"]
    assert (env["A"], env["B"]) == ("step $(x)", "cluster")
    for params in (SCRIPT, {**SCRIPT, "cluster": {"existing_cluster_id": "c-1"}}, {"job_id": 7}):
        req = request_for(params, attempt=2)
        with pytest.raises(ValidationError) as err:
            backend.launch(LaunchRequest(**{**req.__dict__, "env": {"A": "1"}}))
        assert err.value.field == "env"


def test_submit_on_existing_cluster(fake: FakeDatabricks, backend: Any) -> None:
    backend.launch(request_for({**SCRIPT, "cluster": {"existing_cluster_id": "0923-164208-meows279"}}))
    task = fake.calls(f"{API}/runs/submit")[0].body["tasks"][0]
    assert task["existing_cluster_id"] == "0923-164208-meows279"
    assert "new_cluster" not in task and "environment_key" not in task


def test_launch_refuses_long_key_and_bad_params_before_any_request(fake: FakeDatabricks, backend: Any) -> None:
    req = request_for({"job_id": 42})
    long_key = dataclasses.replace(req, key="k" * 65)
    with pytest.raises(ValidationError) as err:
        backend.launch(long_key)
    assert err.value.field == "key"
    with pytest.raises(ValidationError) as err:
        backend.launch(request_for({"parameters": ["x"]}))
    assert err.value.field is not None and err.value.field.startswith("params")
    assert fake.api_calls() == []


# ------------------------------------------------------------------ poll


def test_lifecycle_to_success_with_json_exit_value_from_the_task_run(fake: FakeDatabricks, backend: Any) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    task_id = fake.runs[run_id].tasks[0].run_id
    for life in ("QUEUED", "PENDING", "RUNNING", "TERMINATING", "BLOCKED", "WAITING_FOR_RETRY"):
        fake.set_state(run_id, life)
        status = backend.poll(str(run_id))
        assert status.state == "running", life
        assert status.progress == {"done": 0, "total": 1}
    assert fake.calls(f"{API}/runs/get")[0].query == {"run_id": str(run_id)}
    fake.set_state(run_id, "TERMINATED", "SUCCESS")
    fake.set_output(task_id, notebook_output={"result": '{"gold": "abfss://lake/gold", "rows": 3}', "truncated": False})
    status = backend.poll(str(run_id))
    assert status.state == "succeeded"
    assert status.progress == {"done": 1, "total": 1}
    assert status.outputs == {
        "run_id": run_id,
        "result": {"gold": "abfss://lake/gold", "rows": 3},
        "run_page_url": f"{fake.base_url}/?o={WORKSPACE_ID}#job/{900000 + run_id}/run/{run_id}",
    }
    outputs = fake.calls(f"{API}/runs/get-output")
    assert [c.query for c in outputs] == [{"run_id": str(task_id)}]  # the TASK run, not the parent


@pytest.mark.parametrize(
    ("output", "result"),
    [
        ({"logs": 'reading input\n{"gold": "g", "rows": 5}\n\n', "logs_truncated": False}, {"gold": "g", "rows": 5}),
        ({"logs": "done: 5 rows\n"}, "done: 5 rows"),
        ({"notebook_output": {"result": "plain text"}}, "plain text"),
        ({"notebook_output": {}}, None),
    ],
)
def test_result_from_exit_value_or_last_stdout_line(
    fake: FakeDatabricks, backend: Any, output: dict, result: Any
) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    fake.set_state(run_id, "TERMINATED", "SUCCESS")
    fake.set_output(fake.runs[run_id].tasks[0].run_id, **output)
    assert backend.poll(str(run_id)).outputs["result"] == result


def test_logs_are_each_task_runs_output(fake: FakeDatabricks, backend: Any) -> None:
    run_id = int(backend.launch(request_for({"job_id": 7})).remote_id)
    prep, train = fake.runs[run_id].tasks
    fake.set_state(run_id, "TERMINATED", "FAILED", task_states=[("TERMINATED", "SUCCESS"), ("TERMINATED", "FAILED")])
    fake.set_output(prep.run_id, logs="read 1200 rows\n", logs_truncated=True)
    fake.set_output(train.run_id, error="ValueError: no rows", error_trace="Traceback ...\nValueError: no rows")
    logs = backend.logs(str(run_id))
    assert [log.name for log in logs] == [f"{prep.task_key}/output", f"{train.task_key}/output"]
    assert logs[0].text is not None and logs[0].text.startswith("read 1200 rows") and "truncated" in logs[0].text
    assert logs[1].text == "error: ValueError: no rows\nTraceback ...\nValueError: no rows"
    asked = [c.query for c in fake.calls(f"{API}/runs/get-output")]
    assert asked == [{"run_id": str(prep.run_id)}, {"run_id": str(train.run_id)}]


def test_multi_task_job_reads_the_last_task_and_counts_progress(fake: FakeDatabricks, backend: Any) -> None:
    run_id = int(backend.launch(request_for({"job_id": 7})).remote_id)
    prep, train = fake.runs[run_id].tasks
    fake.set_state(run_id, "RUNNING", task_states=[("TERMINATED", "SUCCESS"), ("RUNNING", None)])
    assert backend.poll(str(run_id)).progress == {"done": 1, "total": 2}
    fake.set_state(run_id, "TERMINATED", "SUCCESS", task_states=[("TERMINATED", "SUCCESS"), ("TERMINATED", "SUCCESS")])
    fake.set_output(train.run_id, notebook_output={"result": '{"model_uri": "runs:/abc/model"}'})
    status = backend.poll(str(run_id))
    assert status.outputs["result"] == {"model_uri": "runs:/abc/model"}
    assert [c.query["run_id"] for c in fake.calls(f"{API}/runs/get-output")] == [str(train.run_id)]
    assert str(prep.run_id) not in [c.query["run_id"] for c in fake.calls(f"{API}/runs/get-output")]


def test_the_fake_refuses_output_of_a_multi_task_parent(fake: FakeDatabricks, backend: Any) -> None:
    """Why the backend asks for the task run's output: the service refuses the parent's."""
    run_id = int(backend.launch(request_for({"job_id": 7})).remote_id)
    with pytest.raises(BadRequestError) as err:
        try:
            backend.client.jobs.get_run_output(run_id)
        except Exception as exc:
            raise map_databricks_error(exc) from exc
    assert MULTI_TASK_OUTPUT_ERROR in str(err.value)


def test_failure_carries_state_message_and_error_trace_tail(fake: FakeDatabricks, backend: Any) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    task_id = fake.runs[run_id].tasks[0].run_id
    message = "Task etl failed with message: Workload failed, see run output for details."
    fake.set_state(run_id, "TERMINATED", "FAILED", message)
    trace = "\n".join(["Traceback (most recent call last):"] + [f"  frame {i}" for i in range(30)])
    trace += "\nValueError: column 'qty' is missing"
    fake.set_output(task_id, error="ValueError: column 'qty' is missing", error_trace=trace)
    status = backend.poll(str(run_id))
    assert status.state == "failed"
    assert status.retryable is False
    assert status.error is not None
    assert f"FAILED: {message}" in status.error
    assert "ValueError: column 'qty' is missing" in status.error
    assert "frame 29" in status.error and "frame 0\n" not in status.error  # the trace's tail only
    assert fake.calls(f"{API}/runs/get-output")[0].query == {"run_id": str(task_id)}


@pytest.mark.parametrize(
    ("life", "result", "code", "state", "retryable"),
    [
        ("TERMINATED", "TIMEDOUT", None, "failed", False),
        ("TERMINATED", "CANCELED", "USER_CANCELED", "cancelled", False),
        ("TERMINATED", "FAILED", "CLOUD_FAILURE", "failed", True),
        ("TERMINATED", "MAXIMUM_CONCURRENT_RUNS_REACHED", None, "failed", True),
        ("INTERNAL_ERROR", None, "INTERNAL_ERROR", "failed", True),
        ("SKIPPED", None, "SKIPPED", "failed", True),
    ],
)
def test_terminal_states(
    fake: FakeDatabricks, backend: Any, life: str, result: str | None, code: str | None, state: str, retryable: bool
) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    fake.set_state(run_id, life, result, f"the service says {life}/{result}", termination_code=code)
    status = backend.poll(str(run_id))
    assert status.state == state
    assert status.retryable is retryable
    assert status.error is not None and f"the service says {life}/{result}" in status.error


@pytest.mark.parametrize(
    ("life", "result", "code", "ttype", "state"),
    [
        ("WAITING_FOR_RETRY", None, None, None, "running"),  # status.state WAITING
        ("TERMINATED", "SUCCESS", "SUCCESS", "SUCCESS", "succeeded"),
        ("TERMINATED", "FAILED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR", "failed"),
        ("TERMINATED", "CANCELED", "CANCELED", "SUCCESS", "cancelled"),
    ],
)
def test_newer_status_object_alone(
    fake: FakeDatabricks, backend: Any, life: str, result: str | None, code: str | None, ttype: str | None, state: str
) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    fake.runs[run_id].with_state = False
    fake.set_state(run_id, life, result, "status message", termination_code=code, termination_type=ttype)
    fake.set_output(fake.runs[run_id].tasks[0].run_id, logs="42\n")
    status = backend.poll(str(run_id))
    assert status.state == state
    if state == "succeeded":
        assert status.outputs["result"] == 42
    if state == "failed":
        assert status.error is not None and "RUN_EXECUTION_ERROR: status message" in status.error


def test_unknown_run_is_not_found_with_the_service_message(fake: FakeDatabricks, backend: Any) -> None:
    with pytest.raises(NotFoundError) as err:
        backend.poll("999")
    assert "Run 999 does not exist." in str(err.value)
    assert err.value.retryable is False


# ------------------------------------------------------------------ cancel


def test_cancel_posts_the_run_id_and_the_run_ends_cancelled(fake: FakeDatabricks, backend: Any) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    fake.set_state(run_id, "RUNNING")
    backend.cancel(str(run_id))
    calls = fake.calls(f"{API}/runs/cancel")
    assert [(c.method, c.body) for c in calls] == [("POST", {"run_id": run_id})]
    # the SDK's Wait was not waited on: no runs/get after the cancel
    assert fake.api_calls()[-1].path == f"{API}/runs/cancel"
    assert backend.poll(str(run_id)).state == "cancelled"


# ------------------------------------------------------------------ errors & retries


def test_429_then_200_is_retried_by_the_sdk(fake: FakeDatabricks, backend: Any) -> None:
    run_id = int(backend.launch(request_for(SCRIPT)).remote_id)
    fake.fail_next(f"{API}/runs/get", 429, "REQUEST_LIMIT_EXCEEDED", "Too many requests.", headers={"Retry-After": "0"})
    assert backend.poll(str(run_id)).state == "running"
    assert len(fake.calls(f"{API}/runs/get")) == 2


def test_503_on_submit_is_retried_with_the_same_token_one_run(fake: FakeDatabricks, backend: Any) -> None:
    fake.fail_next(
        f"{API}/runs/submit", 503, "TEMPORARILY_UNAVAILABLE", "The service is busy.", headers={"Retry-After": "0"}
    )
    req = request_for(SCRIPT)
    backend.launch(req)
    calls = fake.calls(f"{API}/runs/submit")
    assert len(calls) == 2
    assert {c.body["idempotency_token"] for c in calls} == {req.key}
    assert len(fake.runs) == 1


def test_throttling_that_outlasts_the_retry_budget_is_retryable(fake: FakeDatabricks) -> None:
    backend = make_backend(fake, retry_timeout_seconds=1)
    fake.fail_next(
        f"{API}/run-now",
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "Rate limit for run-now exceeded.",
        times=20,
        headers={"Retry-After": "0"},
    )
    started = time.monotonic()
    with pytest.raises(ThrottledError) as err:
        backend.launch(request_for({"job_id": 42}))
    assert time.monotonic() - started < 10
    assert err.value.retryable is True
    assert "Rate limit for run-now exceeded." in str(err.value)


def test_500_is_transient(fake: FakeDatabricks, backend: Any) -> None:
    fake.fail_next(f"{API}/runs/cancel", 500, "INTERNAL_ERROR", "Internal error happened.")
    with pytest.raises(TransientError) as err:
        backend.cancel("1001")
    assert "INTERNAL_ERROR: Internal error happened." in str(err.value)


@pytest.mark.parametrize(
    ("path", "status", "code", "message", "expected"),
    [
        (
            f"{API}/runs/submit",
            400,
            "INVALID_PARAMETER_VALUE",
            "Python file path must be absolute: samples/databricks_etl/medallion.py",
            BadRequestError,
        ),
        (
            f"{API}/run-now",
            403,
            "PERMISSION_DENIED",
            "User conveyor-mi does not have Manage Run or Owner or Admin permissions on job 42",
            AuthError,
        ),
        (f"{API}/run-now", 404, "RESOURCE_DOES_NOT_EXIST", "Job 42 does not exist.", NotFoundError),
    ],
)
def test_permanent_errors_keep_the_service_message(
    fake: FakeDatabricks, backend: Any, path: str, status: int, code: str, message: str, expected: type
) -> None:
    fake.fail_next(path, status, code, message)
    params: dict[str, Any] = SCRIPT if path.endswith("submit") else {"job_id": 42}
    with pytest.raises(PermanentError) as err:
        backend.launch(request_for(params))
    assert type(err.value) is expected
    assert err.value.retryable is False
    assert f"{code}: {message}" in str(err.value)
    assert len(fake.calls(path)) == 1  # not retried


def test_missing_job_is_a_bad_request_from_the_service(fake: FakeDatabricks, backend: Any) -> None:
    with pytest.raises(BadRequestError) as err:
        backend.launch(request_for({"job_id": 5}))
    assert "Job 5 does not exist." in str(err.value)


def test_wrong_token_is_an_auth_error(fake: FakeDatabricks) -> None:
    backend = make_backend(fake, databricks_token="dapi-wrong")
    with pytest.raises(AuthError) as err:
        backend.launch(request_for({"job_id": 42}))
    assert "Invalid access token." in str(err.value)
    assert "dapi-wrong" not in str(err.value)


def test_tokens_never_reach_the_logs(fake: FakeDatabricks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = make_backend(fake)
    run_id = backend.launch(request_for(SCRIPT)).remote_id
    backend.poll(run_id)
    assert any("databricks" in r.name for r in caplog.records)  # the SDK did log at DEBUG
    assert PAT not in caplog.text


# ------------------------------------------------------------------ auth


class FakeCredential:
    """A TokenCredential: one fake token per scope, counting the calls."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        token = {AZURE_DATABRICKS_SCOPE: "aad-databricks-token", AZURE_MANAGEMENT_SCOPE: "arm-management-token"}
        return AccessToken(token[scopes[0]], int(time.time()) + 3600)


@pytest.fixture
def msi_fake(httpserver: Any) -> FakeDatabricks:
    return FakeDatabricks(httpserver.url_for("/"), token="aad-databricks-token").install(httpserver)


def test_azure_msi_sends_entra_token_management_token_and_resource_id(msi_fake: FakeDatabricks) -> None:
    credential = FakeCredential()
    settings = azure_settings(msi_fake.base_url, databricks_auth="azure-msi", databricks_resource_id=RESOURCE_ID)
    backend = DatabricksJobsBackend.from_settings(settings, credential=credential, retry_timeout_seconds=5)
    run_id = backend.launch(request_for({"job_id": 42})).remote_id
    backend.poll(run_id)
    backend.poll(run_id)
    calls = msi_fake.api_calls()
    assert len(calls) == 3
    for call in calls:
        assert call.headers["Authorization"] == "Bearer aad-databricks-token"
        assert call.headers["X-Databricks-Azure-Sp-Management-Token"] == "arm-management-token"
        assert call.headers["X-Databricks-Azure-Workspace-Resource-Id"] == RESOURCE_ID
    assert sorted(credential.scopes) == sorted([AZURE_DATABRICKS_SCOPE, AZURE_MANAGEMENT_SCOPE])  # cached


def test_azure_msi_without_resource_id_sends_only_the_bearer(msi_fake: FakeDatabricks) -> None:
    credential = FakeCredential()
    settings = azure_settings(msi_fake.base_url, databricks_auth="azure-msi")
    backend = DatabricksJobsBackend.from_settings(settings, credential=credential, retry_timeout_seconds=5)
    backend.launch(request_for({"job_id": 42}))
    call = msi_fake.api_calls()[0]
    assert call.headers["Authorization"] == "Bearer aad-databricks-token"
    assert "X-Databricks-Azure-Sp-Management-Token" not in call.headers
    assert "X-Databricks-Azure-Workspace-Resource-Id" not in call.headers
    assert credential.scopes == [AZURE_DATABRICKS_SCOPE]


def test_settings_errors_name_the_app_setting() -> None:
    with pytest.raises(ValidationError) as err:
        DatabricksJobsBackend.from_settings(azure_settings(None))
    assert err.value.field == "CONVEYOR_DATABRICKS_HOST"
    with pytest.raises(ValidationError) as err:
        DatabricksJobsBackend.from_settings(
            azure_settings("https://adb-1.2.azuredatabricks.net", databricks_auth="pat")
        )
    assert err.value.field == "CONVEYOR_DATABRICKS_TOKEN"
    with pytest.raises(ValidationError) as err:
        DatabricksJobsBackend.from_settings(azure_settings("https://adb-1.2.azuredatabricks.net", databricks_auth="x"))
    assert err.value.field == "CONVEYOR_DATABRICKS_AUTH"
    with pytest.raises(ValidationError) as err:
        config_kwargs(
            azure_settings(
                "https://adb-1.2.azuredatabricks.net", databricks_auth="azure-client-secret", databricks_client_id="c"
            )
        )
    assert err.value.field == "CONVEYOR_DATABRICKS_CLIENT_SECRET"


def test_client_secret_config_uses_the_sdks_azure_client_secret_auth() -> None:
    settings = azure_settings(
        "https://adb-1.2.azuredatabricks.net/",
        databricks_auth="azure-client-secret",
        databricks_client_id="client",
        databricks_client_secret="secret",
        databricks_tenant_id="tenant",
        databricks_resource_id=RESOURCE_ID,
    )
    assert config_kwargs(settings) == {
        "host": "https://adb-1.2.azuredatabricks.net",
        "azure_client_id": "client",
        "azure_client_secret": "secret",
        "azure_tenant_id": "tenant",
        "azure_workspace_resource_id": RESOURCE_ID,
        "auth_type": "azure-client-secret",
    }


def test_module_import_does_not_load_the_sdk() -> None:
    code = (
        "import sys, shared.backends.azure_databricks as m; "
        "assert not any(k.startswith('databricks') for k in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


@pytest.fixture(autouse=True)
def _no_databricks_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The SDK also reads DATABRICKS_* variables and ~/.databrickscfg: keep the host's out of the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("DATABRICKS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", os.devnull)
    yield


def test_instances_send_their_own_tokens_and_name_their_runs(fake: FakeDatabricks, backend: Any) -> None:
    from dataclasses import replace

    from shared.engine.model import idempotency_key

    keys = []
    for i in (0, 1):
        req = request_for(SCRIPT)
        key = idempotency_key(req.run_id, req.step, 1, i)
        keys.append(key)
        r = replace(req, key=key, index=i)
        assert backend.launch(r).remote_id == backend.launch(r).remote_id  # a redelivered launch reattaches
    calls = fake.calls(f"{API}/runs/submit")
    assert [c.body["idempotency_token"] for c in calls] == [keys[0], keys[0], keys[1], keys[1]]
    assert calls[0].body["run_name"] == f"conveyor-retrain-etl[0]-{request_for(SCRIPT).run_id}"
    assert len(fake.runs) == 2
