"""AzureBatchBackend against a fake of the Batch REST API (HTTPS on loopback, api-version
2025-06-01), through the real azure-batch 15 SDK and azure-core pipeline: bearer token,
retries, serialisation and error bodies are the SDK's own; the fake only plays the service."""

from __future__ import annotations

import os
import shlex
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import isodate
import pytest

from shared.backends.azure_batch import AzureBatchBackend, map_batch_error
from shared.backends.base import LaunchRequest
from shared.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    PermanentError,
    RetryableError,
    ThrottledError,
    ValidationError,
)
from shared.settings import Settings
from tests.functional.azure.batch.conftest import ACCOUNT_BLOB, IDENTITY, POOL, FakeCredential, MemoryBlobs
from tests.functional.azure.batch.fake_batch import API_VERSION, TOKEN, FakeBatchService

RUN = "0123456789abcdef0123456789abcdef"
KEY = f"{RUN}-score-1"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HOSTILE = "zz/in put; $(touch pwned) `id` 'q' \"d\" ünï€.csv"
COMMAND = "python score.py --in {input} --name {input_name} --out {output_dir} --task {task_index}"


def request(key: str = KEY, **params: Any) -> LaunchRequest:
    p = {"command": COMMAND, "inputs": "drop/", **params}
    return LaunchRequest(
        run_id=RUN,
        flow="scoring",
        step="score",
        kind="batch",
        key=key,
        attempt=1,
        params=p,
        traceparent=TRACEPARENT,
    )


def seed_inputs(blobs: MemoryBlobs, n: int, hostile: bool = False) -> None:
    for i in range(n):
        blobs.add("drop", f"in/part-{i:04d}.csv")
    if hostile:
        blobs.add("drop", HOSTILE)


def added_tasks(fake: FakeBatchService, key: str = KEY) -> list[dict[str, Any]]:
    return [t for r in fake.calls("POST", f"/jobs/{key}/addtaskcollection") for t in r.body["value"]]


# ---------------------------------------------------------------- launch


def test_launch_sends_one_job_then_tasks_in_parallel_chunks(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs, credential: FakeCredential
) -> None:
    seed_inputs(blobs, 249, hostile=True)  # 250 inputs
    fake.add_delay = 0.15  # long enough for parallel chunks to overlap on the server
    result = backend.launch(request(max_task_retries=2, max_wall_clock_seconds=600, resource_files=["apps/model.pkl"]))

    assert result.remote_id == KEY and not result.reattached
    assert result.url == f"{fake.base_url}/jobs/{KEY}"
    # every request: the SDK's api-version and our bearer token
    assert fake.requests and all(r.query.get("api-version") == API_VERSION for r in fake.requests)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.requests)
    assert credential.scopes and all(s[0].startswith("https://batch.core.windows.net/") for s in credential.scopes)

    (create,) = fake.calls("POST", "/jobs")
    assert create.headers["content-type"].startswith("application/json")
    job = create.body
    assert job["id"] == KEY
    assert job["poolInfo"] == {"poolId": POOL}
    assert job["usesTaskDependencies"] is False
    assert job["onAllTasksComplete"] == "noaction"  # terminatejob only once every task is in
    meta = {m["name"]: m["value"] for m in job["metadata"]}
    assert meta["traceparent"] == TRACEPARENT
    assert (meta["run_id"], meta["flow"], meta["step"]) == (RUN, "scoring", "score")
    assert meta["conveyor-tasks"] == "250"
    assert {"name": "TRACEPARENT", "value": TRACEPARENT} in job["commonEnvironmentSettings"]

    adds = fake.calls("POST", f"/jobs/{KEY}/addtaskcollection")
    assert sorted(len(r.body["value"]) for r in adds) == [50, 100, 100]
    assert fake.max_inflight_adds >= 2, "chunks should be submitted in parallel"
    tasks = added_tasks(fake)
    ids = [t["id"] for t in tasks]
    assert sorted(ids) == [f"task-{i:05d}" for i in range(250)]

    (patch,) = fake.calls("PATCH", f"/jobs/{KEY}")
    assert patch.body == {"onAllTasksComplete": "terminatejob"}
    assert fake.requests.index(patch) > max(fake.requests.index(r) for r in adds)
    assert fake.jobs[KEY]["onAllTasksComplete"] == "terminatejob"

    by_id = {t["id"]: t for t in tasks}
    first = by_id["task-00000"]
    model = {
        "httpUrl": f"{ACCOUNT_BLOB}/apps/model.pkl",
        "filePath": "model.pkl",
        "identityReference": {"resourceId": IDENTITY},
    }
    assert first["resourceFiles"] == [
        model,
        {
            "httpUrl": f"{ACCOUNT_BLOB}/drop/in/part-0000.csv",
            "filePath": "part-0000.csv",
            "identityReference": {"resourceId": IDENTITY},
        },
    ]
    assert first["outputFiles"] == [
        {
            "filePattern": "output/**/*",
            "destination": {
                "container": {
                    "containerUrl": f"{ACCOUNT_BLOB}/outputs",
                    "path": f"{RUN}/score/task-00000",
                    "identityReference": {"resourceId": IDENTITY},
                }
            },
            "uploadOptions": {"uploadCondition": "taskcompletion"},
        }
    ]
    assert first["constraints"]["maxTaskRetryCount"] == 2
    assert isodate.parse_duration(first["constraints"]["maxWallClockTime"]) == timedelta(minutes=10)  # "PT10M00S"
    argv = shlex.split(first["commandLine"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3] == "conveyor-task"  # the setup script, then exec "$@"
    expected = ["python", "score.py", "--in", "part-0000.csv", "--name", "part-0000.csv", "--out", "output", "--task"]
    assert argv[4:] == [*expected, "0"]


def test_project_resource_file_is_staged_by_content_and_fetched_from_there(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs, tmp_path: Path
) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "score.py").write_text("print('v1')\n")
    backend.root = tmp_path  # the deployed project (the Functions app's package)
    seed_inputs(blobs, 1)
    backend.launch(request(resource_files=["./apps/score.py"]))
    staged = [n for (c, n) in blobs.blobs if c == "apps"]
    assert len(staged) == 1 and staged[0].startswith("project/") and staged[0].endswith("/apps/score.py")
    assert blobs.blobs[("apps", staged[0])] == b"print('v1')\n"
    (task,) = added_tasks(fake)
    assert task["resourceFiles"][0]["httpUrl"] == blobs.url("apps", staged[0])
    assert task["resourceFiles"][0]["filePath"] == "score.py"
    # a changed file is a new blob; the first job keeps what it was launched with
    (tmp_path / "apps" / "score.py").write_text("print('v2')\n")
    backend.launch(request(key="run-9-score-2", resource_files=["./apps/score.py"]))
    assert len([n for (c, n) in blobs.blobs if c == "apps"]) == 2
    for bad, why in (("./../secrets.py", "'..'"), ("./apps/missing.py", "no such file")):
        with pytest.raises(ValidationError) as err:
            backend.launch(request(key="run-9-score-3", resource_files=[bad]))
        assert err.value.field == "params.resource_files[0]" and why in str(err.value)


def test_hostile_blob_name_stays_one_word(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs, tmp_path: Path
) -> None:
    blobs.add("drop", HOSTILE)
    script = 'printf "%s\\n" "$@"; ls -d "$3"'
    backend.launch(request(command=["sh", "-c", script, "sh", "{input}", "{input_name}", "{output_dir}"]))
    (task,) = added_tasks(fake)
    local = HOSTILE.rsplit("/", 1)[1]
    assert task["resourceFiles"][0]["filePath"] == local
    assert task["resourceFiles"][0]["httpUrl"] == blobs.url("drop", HOSTILE)
    argv = shlex.split(task["commandLine"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:] == [
        "conveyor-task",
        "sh",
        "-c",
        script,
        "sh",
        local,
        local,
        "output",
    ]
    # run it the way a Linux node does: split the command line, in the task working directory
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AZ_BATCH_TASK_WORKING_DIR": str(tmp_path)}
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout.splitlines() == [local, local, "output", "output"]
    assert not (tmp_path / "pwned").exists()
    assert (tmp_path / "output").is_dir()  # made before the user's command, as locally


def test_relaunch_reattaches_without_a_second_job(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 3)
    backend.launch(request())
    again = backend.launch(request())
    assert again.reattached and again.remote_id == KEY
    assert len(fake.calls("POST", "/jobs")) == 2  # the second got 409 JobExists
    assert list(fake.jobs) == [KEY]
    assert len(fake.calls("POST", f"/jobs/{KEY}/addtaskcollection")) == 1  # tasks not sent again
    assert len(fake.tasks[KEY]) == 3


def test_relaunch_after_crash_mid_add_completes_the_job(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 150)
    fake.seed_job(KEY, POOL, "noaction", [f"task-{i:05d}" for i in range(100)])  # died after one chunk
    result = backend.launch(request())
    assert result.reattached
    assert len(fake.tasks[KEY]) == 150  # the other 50 added, nothing twice
    assert fake.jobs[KEY]["onAllTasksComplete"] == "terminatejob"
    assert len(fake.calls("PATCH", f"/jobs/{KEY}")) == 1


def test_server_error_for_one_task_resends_only_that_task(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 5)
    fake.task_add_server_errors["task-00003"] = 1
    backend.launch(request())
    adds = fake.calls("POST", f"/jobs/{KEY}/addtaskcollection")
    assert len(adds) == 2
    assert [t["id"] for t in adds[1].body["value"]] == ["task-00003"]
    assert len(fake.tasks[KEY]) == 5


def test_task_refused_by_the_service_fails_launch_and_closes_the_job(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 3)
    fake.task_add_client_errors["task-00001"] = ("InvalidPropertyValue", "The value for commandLine is invalid.")
    with pytest.raises(BadRequestError) as info:
        backend.launch(request())
    assert "task-00001: InvalidPropertyValue: The value for commandLine is invalid." in str(info.value)
    (term,) = fake.calls("POST", f"/jobs/{KEY}/terminate")
    assert term.body == {"terminateReason": "LaunchFailedConveyor"}
    assert not fake.calls("PATCH", f"/jobs/{KEY}")


def test_invalid_inputs_are_refused_before_anything_is_created(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 1)
    with pytest.raises(ValidationError) as info:
        backend.launch(request(resource_files=["apps/.."]))
    assert info.value.field == "params.resource_files[0]"
    with pytest.raises(ValidationError) as info:
        backend.launch(request(inputs="empty/"))
    assert info.value.field == "params.inputs"
    with pytest.raises(ValidationError) as info:
        backend.launch(request(command="run {nope}"))
    assert info.value.field == "params.command"
    with pytest.raises(ValidationError) as info:
        backend.launch(request(key="bad key/with slash"))
    assert info.value.field == "key"
    assert fake.requests == []


# ---------------------------------------------------------------- poll


def test_poll_reports_progress_then_success_with_outputs(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 5)
    backend.launch(request())
    fake.set_task_states(KEY, completed=3, running=1)
    status = backend.poll(KEY)
    assert status.state == "running"
    assert status.progress == {"done": 3, "total": 5}
    assert fake.calls("GET", f"/jobs/{KEY}/taskcounts")

    blobs.add("outputs", f"{RUN}/score/task-00000/scores.csv")
    blobs.add("outputs", f"{RUN}/score/task-00004/sub dir/s.csv")
    blobs.add("outputs", f"{RUN}/other/task-00000/not-mine.csv")
    fake.finish(KEY)
    status = backend.poll(KEY)
    assert status.state == "succeeded"
    assert status.progress == {"done": 5, "total": 5}
    assert status.outputs == {
        "job_id": KEY,
        "tasks": 5,
        "output_prefix": f"{ACCOUNT_BLOB}/outputs/{RUN}/score/",
        "outputs": [
            f"{ACCOUNT_BLOB}/outputs/{RUN}/score/task-00000/scores.csv",
            f"{ACCOUNT_BLOB}/outputs/{RUN}/score/task-00004/sub%20dir/s.csv",
        ],
    }
    (listing,) = fake.calls("GET", f"/jobs/{KEY}/tasks")
    assert listing.query["$filter"] == "executionInfo/result eq 'failure'"


def test_poll_failure_carries_the_tasks_execution_info(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 4)
    backend.launch(request())
    fake.page_size = 1  # exercise odata.nextLink paging
    user_failure = {
        "exitCode": 3,
        "retryCount": 2,
        "failureInfo": {
            "category": "usererror",
            "code": "FailureExitCode",
            "message": "The task process exited with an unexpected exit code",
            "details": [{"name": "Message", "value": "The task process exited with an unexpected exit code"}],
        },
    }
    fake.finish(KEY, {"task-00001": user_failure, "task-00002": {**user_failure, "exitCode": 1, "retryCount": 0}})
    status = backend.poll(KEY)
    assert status.state == "failed" and status.retryable is False
    assert status.error is not None
    assert status.error.startswith("2 of 4 tasks failed: ")
    assert "task-00001 (exit code 3, 3 attempt(s)): usererror FailureExitCode: The task process exited" in status.error
    assert "task-00002 (exit code 1, 1 attempt(s))" in status.error
    assert len(fake.calls("GET", f"/jobs/{KEY}/tasks")) == 2  # two pages


def test_logs_fetch_task_files_from_the_nodes_failed_first(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 3)
    backend.launch(request())
    fake.finish(KEY, {"task-00002": {"exitCode": 1, "failureInfo": {"category": "usererror", "code": "X"}}})
    fake.task_files[(KEY, "task-00000", "stdout.txt")] = b"scored 10 rows\n"
    fake.task_files[(KEY, "task-00000", "stderr.txt")] = b""
    fake.task_files[(KEY, "task-00002", "stderr.txt")] = b"Traceback: bad row\n"
    logs = backend.logs(KEY)
    assert [log.name for log in logs] == [
        "task-00002/stdout.txt",
        "task-00002/stderr.txt",
        "task-00000/stdout.txt",
        "task-00000/stderr.txt",
        "task-00001/stdout.txt",
        "task-00001/stderr.txt",
    ]
    by_name = {log.name: log for log in logs}
    assert by_name["task-00002/stderr.txt"].text == "Traceback: bad row\n"
    assert by_name["task-00000/stdout.txt"].text == "scored 10 rows\n" and by_name["task-00000/stderr.txt"].text == ""
    assert by_name["task-00001/stdout.txt"].text is None and "node is gone" in by_name["task-00001/stdout.txt"].note
    assert fake.calls("GET", f"/jobs/{KEY}/tasks/task-00000/files/stdout.txt")


def test_poll_failure_from_server_errors_only_is_retryable(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 2)
    backend.launch(request())
    server = {"failureInfo": {"category": "servererror", "code": "TaskEnded", "message": "node was preempted"}}
    fake.finish(KEY, {"task-00000": server})
    status = backend.poll(KEY)
    assert status.state == "failed" and status.retryable is True
    assert status.error is not None and "no exit code" in status.error and "node was preempted" in status.error


def test_poll_unknown_job_is_not_found_with_the_service_message(
    backend: AzureBatchBackend, fake: FakeBatchService
) -> None:
    with pytest.raises(NotFoundError) as info:
        backend.poll("no-such-job")
    assert "JobNotFound" in str(info.value) and "The specified job does not exist." in str(info.value)
    assert "RequestId" not in str(info.value)


# ---------------------------------------------------------------- cancel


def test_cancel_terminates_then_poll_says_cancelled(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 2)
    backend.launch(request())
    fake.set_task_states(KEY, running=1)
    backend.cancel(KEY)
    (term,) = fake.calls("POST", f"/jobs/{KEY}/terminate")
    assert term.body == {"terminateReason": "CancelledByConveyor"}
    status = backend.poll(KEY)
    assert status.state == "cancelled"
    backend.cancel(KEY)  # 409 JobCompleted: already finished, a no-op
    assert len(fake.calls("POST", f"/jobs/{KEY}/terminate")) == 2


# ---------------------------------------------------------------- errors and retries


def test_503_then_success_is_retried_by_the_sdk(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 1)
    fake.fail("POST", "/jobs", 503, "ServerBusy", "The server is currently unable to receive requests.")
    fake.fail("POST", f"/jobs/{KEY}/addtaskcollection", 429, "TooManyRequests", "Too many requests.")
    result = backend.launch(request())
    assert not result.reattached
    assert len(fake.calls("POST", "/jobs")) == 2
    assert len(fake.calls("POST", f"/jobs/{KEY}/addtaskcollection")) == 2
    assert len(fake.tasks[KEY]) == 1


def test_403_is_permanent_with_the_service_message(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 1)
    fake.fail("POST", "/jobs", 403, "AuthorizationFailure", "This request is not authorized to perform this operation.")
    with pytest.raises(PermanentError) as info:
        backend.launch(request())
    assert isinstance(info.value, AuthError)
    assert (
        str(info.value) == "[batch] 403 AuthorizationFailure: This request is not authorized to perform this operation."
    )
    assert len(fake.calls("POST", "/jobs")) == 1  # not retried


def test_persistent_throttling_surfaces_as_retryable(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    seed_inputs(blobs, 1)
    backend.launch(request())
    fake.fail("GET", f"/jobs/{KEY}/taskcounts", 503, "ServerBusy", "The server is busy.", times=10)
    with pytest.raises(RetryableError) as info:
        backend.poll(KEY)
    assert isinstance(info.value, ThrottledError)
    assert "503 ServerBusy: The server is busy." in str(info.value)
    assert len(fake.calls("GET", f"/jobs/{KEY}/taskcounts")) == 4  # 1 + retry_total=3


def test_map_batch_error_of_non_http_errors() -> None:
    from azure.core.exceptions import ServiceRequestError

    assert map_batch_error(ServiceRequestError("connection refused")).retryable
    assert isinstance(map_batch_error(TimeoutError("read timed out")), RetryableError)


# ---------------------------------------------------------------- from_settings


def test_from_settings_requires_the_account_url(blobs: MemoryBlobs) -> None:
    with pytest.raises(ValidationError) as info:
        AzureBatchBackend.from_settings(Settings.from_env({"CONVEYOR_MODE": "azure"}), blobs)
    assert info.value.field == "CONVEYOR_BATCH_ACCOUNT_URL"


def test_from_settings_builds_a_client_with_the_app_credential(
    fake: FakeBatchService,
    blobs: MemoryBlobs,
    credential: FakeCredential,
    batch_tls: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shared.azure_identity

    monkeypatch.setattr(shared.azure_identity, "get_credential", lambda settings, client_id=None: credential)
    settings = Settings.from_env(
        {
            "CONVEYOR_MODE": "azure",
            "CONVEYOR_BATCH_ACCOUNT_URL": fake.base_url + "/",
            "CONVEYOR_BATCH_POOL_ID": "pool-from-settings",
            "CONVEYOR_BATCH_RESOURCE_IDENTITY": IDENTITY,
            "CONVEYOR_STORAGE__blobServiceUri": "https://data.blob.core.windows.net",
        }
    )
    backend = AzureBatchBackend.from_settings(
        settings, blobs, retry_total=1, retry_backoff_factor=0.01, connection_verify=str(batch_tls[0])
    )
    seed_inputs(blobs, 1)
    backend.launch(request(output_container="results"))
    (create,) = fake.calls("POST", "/jobs")
    assert create.body["poolInfo"] == {"poolId": "pool-from-settings"}
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    (task,) = added_tasks(fake)
    dest = task["outputFiles"][0]["destination"]["container"]
    assert dest["containerUrl"] == "https://data.blob.core.windows.net/results"
    assert dest["identityReference"] == {"resourceId": IDENTITY}


def test_without_identity_or_trace_nothing_empty_is_sent(
    make_client: Any, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    backend = AzureBatchBackend(
        make_client(), blobs, pool_id=POOL, output_container_url=lambda c: f"https://other.example/{c}"
    )
    seed_inputs(blobs, 1)
    req = request(pool="pool-override")
    backend.launch(LaunchRequest(**{**req.__dict__, "traceparent": ""}))
    (create,) = fake.calls("POST", "/jobs")
    assert create.body["poolInfo"] == {"poolId": "pool-override"}
    assert "commonEnvironmentSettings" not in create.body
    assert "traceparent" not in {m["name"] for m in create.body["metadata"]}
    (task,) = added_tasks(fake)
    assert all("identityReference" not in f for f in task["resourceFiles"])
    dest = task["outputFiles"][0]["destination"]["container"]
    assert dest == {"containerUrl": "https://other.example/outputs", "path": f"{RUN}/score/task-00000"}
    assert "maxWallClockTime" not in task["constraints"]


def test_instances_of_a_for_each_step_are_jobs_named_by_their_keys(
    backend: AzureBatchBackend, fake: FakeBatchService, blobs: MemoryBlobs
) -> None:
    from dataclasses import replace

    from shared.engine.model import idempotency_key

    seed_inputs(blobs, 2)
    keys = [idempotency_key(RUN, "score", 1, i) for i in (0, 17)]
    for i, key in zip((0, 17), keys, strict=True):
        r = replace(request(key), index=i, item={"store": f"s{i}"})
        assert backend.launch(r).remote_id == key and backend.launch(r).reattached
    assert sorted(fake.jobs) == sorted(keys) and all(len(k) <= 64 for k in keys)
    job = fake.calls("POST", "/jobs")[0].body
    assert job["id"] == keys[0] and job["displayName"] == "scoring/score[0] attempt 1"
    assert {"name": "index", "value": "0"} in job["metadata"]
