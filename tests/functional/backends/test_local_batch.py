"""LocalBatchBackend with real processes and blobs on Azurite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.local_batch import LocalBatchBackend
from shared.blobs.storage import AzureBlobStore
from shared.settings import Settings
from tests.conftest import REPO_ROOT, unique_suffix
from tests.functional.backends.conftest import marked_pids, wait_done, wait_for
from tests.functional.backends.dirblobs import DirBlobStore


@pytest.fixture
def blobs(storage_settings: Settings) -> AzureBlobStore:
    return AzureBlobStore.from_settings(storage_settings)


@pytest.fixture
def backend(blobs: AzureBlobStore, tmp_path: Path) -> Iterator[LocalBatchBackend]:
    be = LocalBatchBackend(blobs, tmp_path / "home", 2)
    yield be
    for key in list(be._jobs):
        be.cancel(key)
    be.close()


@pytest.fixture
def container() -> str:
    return f"in{unique_suffix()}"


def sh(script: str, *args: str) -> list[str]:
    """A command that runs ``script`` in a shell, ``args`` (placeholders) as its $1, $2...: the
    way to use shell features now that commands run without one."""
    return ["sh", "-c", script, "sh", *args]


def req(params: dict, key: str = "run1-score-1") -> LaunchRequest:
    return LaunchRequest(run_id="run1", flow="f", step="score", kind="batch", key=key, attempt=1, params=params)


def test_project_file_resource_is_staged_by_the_host(blobs: AzureBlobStore, container: str, tmp_path: Path) -> None:
    # Issue 9: `up` then `drop` failed because only `demo` uploaded the batch app. A ./path
    # resource file is a project file the backend uploads itself (once per content).
    project = tmp_path / "project"
    (project / "app").mkdir(parents=True)
    (project / "app" / "run.sh").write_text('printf "app:%s" "$(cat "$1")" > "$2/out.txt"\n')
    be = LocalBatchBackend(blobs, tmp_path / "home", 2, root=project)
    try:
        blobs.upload(container, "in/a.csv", b"A")
        params = {
            "command": "sh run.sh {input} {output_dir}",
            "inputs": f"{container}/in/",
            "resource_files": ["./app/run.sh"],
            "output_container": container,
        }
        status = wait_done(be, be.launch(req(params)).remote_id)
        assert status.state == "succeeded", status.error
        assert blobs.download(container, "run1/score/task-00000/out.txt") == b"app:A"
        staged = [b.name for b in blobs.list_blobs("apps", "project/") if b.name.endswith("/app/run.sh")]
        assert len(staged) >= 1
        before = len(blobs.list_blobs("apps", "project/"))
        wait_done(be, be.launch(req(params, key="run1-score-2")).remote_id)
        assert len(blobs.list_blobs("apps", "project/")) == before  # same content: not uploaded again
    finally:
        be.close()


def test_fan_out_with_resource_files_and_uploaded_outputs(
    backend: LocalBatchBackend, blobs: AzureBlobStore, container: str
) -> None:
    app = blobs.upload("apps", f"{container}/app.sh", b'printf "%s:" "$(cat "$1")" > "$2/result.txt"\n')
    for i in range(3):
        blobs.upload(container, f"day/{i}.csv", f"rows-{i}".encode())
    command = sh(
        'sh app.sh "$1" "$2" && mkdir "$2/sub" && echo "$AZ_BATCH_TASK_ID" > "$2/sub/id"', "{input}", "{output_dir}"
    )
    params = {
        "command": command,
        "inputs": f"{container}/day/",
        "resource_files": [app.url],
        "output_container": container,
    }
    result = backend.launch(req(params))
    assert result.remote_id == "run1-score-1" and not result.reattached
    status = wait_done(backend, "run1-score-1")
    assert status.state == "succeeded", status.error
    assert status.progress == {"done": 3, "total": 3}
    out = status.outputs
    assert out["job_id"] == "run1-score-1" and out["tasks"] == 3
    assert out["output_prefix"] == blobs.url(container, "run1/score/")
    assert len(out["outputs"]) == 6
    for i in range(3):
        tid = f"task-{i:05d}"
        assert blobs.download(container, f"run1/score/{tid}/result.txt") == f"rows-{i}:".encode()
        assert blobs.download(container, f"run1/score/{tid}/sub/id").decode().strip() == tid
        assert blobs.url(container, f"run1/score/{tid}/result.txt") in out["outputs"]
    task_dir = backend.home / "batch" / "run1-score-1" / "tasks" / "task-00001"
    assert (task_dir / "wd" / "1.csv").read_text() == "rows-1"
    assert (task_dir / "wd" / "app.sh").exists()
    assert (task_dir / "stdout.txt").exists() and (task_dir / "stderr.txt").exists()
    # `conveyor logs`: every task's stdout and stderr, task by task
    logs = backend.logs("run1-score-1")
    assert [log.name for log in logs] == [f"task-{i:05d}/{f}" for i in range(3) for f in ("stdout.txt", "stderr.txt")]
    assert logs[2].path == task_dir / "stdout.txt"


def test_malicious_blob_names_are_data(
    backend: LocalBatchBackend, blobs: AzureBlobStore, container: str, tmp_path: Path
) -> None:
    evil = "x; touch PWNED $(touch PWNED2) ..evil.csv"
    url = blobs.upload(container, f"drop/{evil}", b"evil").url
    command = sh(
        'cat "$1" > "$2/copy" && printf %s "$3" > "$2/name" && ls > "$2/ls"', "{input}", "{output_dir}", "{input_name}"
    )
    params = {"command": command, "inputs": [url], "output_container": container}
    status = wait_done(backend, backend.launch(req(params)).remote_id)
    assert status.state == "succeeded", status.error
    wd = backend.home / "batch" / "run1-score-1" / "tasks" / "task-00000" / "wd"
    assert (wd / evil).read_bytes() == b"evil"
    assert (wd / "output" / "copy").read_bytes() == b"evil"
    assert (wd / "output" / "name").read_text() == evil
    assert blobs.download(container, "run1/score/task-00000/name").decode() == evil
    assert not list(tmp_path.rglob("PWNED*"))
    assert not list(REPO_ROOT.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_traversal_in_blob_names_lands_inside_wd(tmp_path: Path) -> None:
    # Azure normalises '..' out of URLs, so a directory-backed store holds the hostile names.
    store = DirBlobStore(tmp_path / "blobs")
    urls = [store.upload("in", "../../x", b"up").url, store.upload("in", "a/../../../etc/y.csv", b"y").url]
    be = LocalBatchBackend(store, tmp_path / "home", 1)
    try:
        status = wait_done(
            be,
            be.launch(req({"command": sh('cat "$1" > "$2/c"', "{input}", "{output_dir}"), "inputs": urls})).remote_id,
        )
        assert status.state == "succeeded", status.error
        tasks = tmp_path / "home" / "batch" / "run1-score-1" / "tasks"
        assert (tasks / "task-00000" / "wd" / "x").read_bytes() == b"up"
        assert (tasks / "task-00001" / "wd" / "y.csv").read_bytes() == b"y"
        assert not (tmp_path / "x").exists() and not (tmp_path / "home" / "batch" / "x").exists()
    finally:
        be.close()


def test_task_retry_then_success(backend: LocalBatchBackend, blobs: AzureBlobStore, container: str) -> None:
    url = blobs.upload(container, "a.csv", b"a").url
    flaky = sh('test -f seen || { touch seen; echo boom >&2; exit 3; }; echo ok > "$1/ok"', "{output_dir}")
    status = wait_done(
        backend,
        backend.launch(
            req({"command": flaky, "inputs": url, "max_task_retries": 1, "output_container": container})
        ).remote_id,
    )
    assert status.state == "succeeded", status.error
    log = (backend.home / "batch" / "run1-score-1" / "tasks.log").read_text().splitlines()
    assert json.loads(log[0])["a"] == 2
    # without retries the same command fails, naming the task, its exit code and stderr
    status = wait_done(backend, backend.launch(req({"command": flaky, "inputs": url}, key="run1-score-2")).remote_id)
    assert status.state == "failed" and status.retryable is False
    assert "task-00000 (exit code 3" in (status.error or "") and "boom" in (status.error or "")


def test_wall_clock_kills_the_task(backend: LocalBatchBackend, blobs: AzureBlobStore, container: str) -> None:
    url = blobs.upload(container, "a.csv", b"a").url
    start = time.monotonic()
    status = wait_done(
        backend,
        backend.launch(
            req(
                {
                    "command": sh("sleep 30 & sleep 30; wait"),
                    "inputs": url,
                    "max_wall_clock_seconds": 1,
                    "max_task_retries": 2,
                }
            )
        ).remote_id,
    )
    assert time.monotonic() - start < 10
    assert status.state == "failed"
    assert "exceeded max wall clock" in (status.error or "")
    wait_for(lambda: not marked_pids("batch/run1-score-1/"), what="the task's processes to die")


def test_idempotent_launch_and_empty_inputs(backend: LocalBatchBackend, blobs: AzureBlobStore, container: str) -> None:
    url = blobs.upload(container, "a.csv", b"a").url
    params = {"command": sh("echo run >> ../../count; sleep 0.3"), "inputs": url}
    first = backend.launch(req(params))
    second = backend.launch(req(params))
    third = LocalBatchBackend(blobs, backend.home, 1).launch(req(params))
    assert (first.reattached, second.reattached, third.reattached) == (False, True, True)
    assert wait_done(backend, first.remote_id).state == "succeeded"
    assert (backend.home / "batch" / "run1-score-1" / "tasks" / "count").read_text() == "run\n"
    status = wait_done(
        backend,
        backend.launch(req({"command": "true", "inputs": f"{container}/nothing-here/"}, key="run1-score-2")).remote_id,
    )
    assert status.state == "failed" and "no inputs" in (status.error or "")


def test_cancel_kills_running_tasks(backend: LocalBatchBackend, blobs: AzureBlobStore, container: str) -> None:
    urls = [blobs.upload(container, f"{i}.csv", b"a").url for i in range(4)]
    key = backend.launch(req({"command": "sleep 60", "inputs": urls})).remote_id
    wait_for(lambda: len(marked_pids(f"batch/{key}/")) >= 2, what="two tasks to run")
    backend.cancel(key)
    wait_for(lambda: not marked_pids(f"batch/{key}/"), what="the tasks to be killed")
    status = wait_done(backend, key)
    assert status.state == "cancelled"
    time.sleep(0.3)
    assert not marked_pids(f"batch/{key}/")  # the queued tasks never started
    backend.cancel(key)  # a no-op now


def test_job_survives_a_new_backend_instance(blobs: AzureBlobStore, container: str, tmp_path: Path) -> None:
    urls = [blobs.upload(container, f"{i}.csv", str(i).encode()).url for i in range(4)]
    params = {
        "command": sh('sleep 0.5; cp "$1" "$2/"', "{input}", "{output_dir}"),
        "inputs": urls,
        "output_container": container,
    }
    first = LocalBatchBackend(blobs, tmp_path / "home", 2)
    first.launch(req(params))
    del first  # the object is gone mid-run; its threads finish what they hold
    second = LocalBatchBackend(blobs, tmp_path / "home", 2)
    status = wait_done(second, "run1-score-1")
    assert status.state == "succeeded", status.error
    assert len(status.outputs["outputs"]) == 4
    second.close()


HOST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shared.backends.base import LaunchRequest
    from shared.backends.local_batch import LocalBatchBackend
    from shared.blobs.storage import AzureBlobStore
    blobs = AzureBlobStore(sys.argv[1])
    be = LocalBatchBackend(blobs, Path(sys.argv[2]), 2)
    urls = sys.argv[4:]
    be.launch(LaunchRequest("run1", "f", "score", "batch", "run1-score-1", 1,
              {"command": ["sh", "-c", 'sleep 1; cp "$1" "$2/"', "sh", "{input}", "{output_dir}"],
               "inputs": urls, "output_container": sys.argv[3]}))
    print("launched", flush=True)
    time.sleep(60)
    """
)


def test_host_killed_mid_run_a_new_host_finishes_the_job(
    blobs: AzureBlobStore, storage_settings: Settings, container: str, tmp_path: Path
) -> None:
    urls = [blobs.upload(container, f"{i}.csv", str(i).encode()).url for i in range(5)]
    home = tmp_path / "home"
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, storage_settings.connection_string, str(home), container, *urls],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == b"launched"
        wait_for(lambda: len(marked_pids("batch/run1-score-1/")) >= 2, what="tasks to run")
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    assert marked_pids("batch/run1-score-1/")  # orphans of the dead host still run
    second = LocalBatchBackend(blobs, home, 2)
    try:
        status = wait_done(second, "run1-score-1")
        assert status.state == "succeeded", status.error
        assert sorted(blobs.download(container, f"run1/score/task-{i:05d}/{i}.csv") for i in range(5)) == [
            str(i).encode() for i in range(5)
        ]
        lines = (home / "batch" / "run1-score-1" / "tasks.log").read_text().splitlines()
        assert sorted(json.loads(line)["t"] for line in lines) == [f"task-{i:05d}" for i in range(5)]
        assert not marked_pids("batch/run1-score-1/")
    finally:
        second.close()


def test_instances_of_a_for_each_step_are_separate_jobs_under_their_keys(
    backend: LocalBatchBackend, blobs: AzureBlobStore, container: str
) -> None:
    from shared.engine.model import idempotency_key

    url = blobs.upload(container, "a.csv", b"a").url
    params = {"command": sh("echo run >> ../../count"), "inputs": url}
    keys = [idempotency_key("0123456789abcdef0123456789abcdef", "score", 1, i) for i in (0, 1)]
    for i, key in enumerate(keys):
        request = LaunchRequest(
            run_id="r", flow="f", step="score", kind="batch", key=key, attempt=1, params=params, index=i, item=f"p{i}"
        )
        assert backend.launch(request).remote_id == key
        assert backend.launch(request).reattached
    for key in keys:
        assert wait_done(backend, key).state == "succeeded"
        assert (backend.home / "batch" / key / "tasks" / "count").read_text() == "run\n"
        assert json.loads((backend.home / "batch" / key / "job.json").read_text())["index"] == keys.index(key)
