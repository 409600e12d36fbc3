"""A batch job cancelled by another process (the CLI, a second host) while this one runs it.

The running instance looks at the job's cancel marker at most every CANCEL_CHECK_SECONDS on
its hot path, but afresh when a command fails: a command killed by the other process's cancel
is not a failure, no queued task starts after it, and the job ends cancelled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.local_batch import LocalBatchBackend
from tests.functional.backends.conftest import marked_pids, wait_done, wait_for
from tests.functional.backends.dirblobs import DirBlobStore


@pytest.fixture
def blobs(tmp_path: Path) -> DirBlobStore:
    return DirBlobStore(tmp_path / "blobs")


@pytest.fixture
def runner(blobs: DirBlobStore, tmp_path: Path) -> Iterator[LocalBatchBackend]:
    be = LocalBatchBackend(blobs, tmp_path / "home", 2)
    yield be
    for key in list(be._jobs):
        be.cancel(key)
    be.close()


def test_a_cancel_from_another_instance_is_not_recorded_as_failures(
    runner: LocalBatchBackend, blobs: DirBlobStore, tmp_path: Path
) -> None:
    urls = [blobs.upload("in", f"{i}.csv", b"x").url for i in range(6)]
    key = "run1-score-1"
    request = LaunchRequest(
        run_id="run1",
        flow="f",
        step="score",
        kind="batch",
        key=key,
        attempt=1,
        params={"command": "sleep 30", "inputs": urls, "max_task_retries": 2},
    )
    runner.launch(request)
    wait_for(lambda: len(marked_pids(f"batch/{key}/")) >= 2, what="two tasks to run")
    other = LocalBatchBackend(blobs, tmp_path / "home", 2)  # e.g. `conveyor cancel` in another process
    try:
        other.cancel(key)
        wait_for(lambda: not marked_pids(f"batch/{key}/"), what="the tasks to be killed")
        status = wait_done(runner, key)
        assert status.state == "cancelled"
        log = tmp_path / "home" / "batch" / key / "tasks.log"
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        assert records == []  # killed by the cancel: neither failed nor retried
        assert not marked_pids(f"batch/{key}/")  # the queued tasks never started
        assert other.poll(key).state == "cancelled"
    finally:
        other.close()


def test_a_command_starting_as_its_job_is_cancelled_is_killed_by_its_helper(tmp_path: Path) -> None:
    """The race a cancel's /proc scan cannot see: a command that was still being started. Its
    helper looks at the cancel marker once the command runs and kills it then."""
    from shared.backends.commandline import Spawner

    marker = tmp_path / "cancelled"
    marker.write_text("{}")
    spawner = Spawner()

    def run(script: str) -> int:
        return spawner.run(
            ["sh", "-c", script, "sh", str(tmp_path / "ran")],
            cwd=str(tmp_path),
            env={},
            stdout=str(tmp_path / "stdout.txt"),
            stderr=str(tmp_path / "stderr.txt"),
            cancelled=str(marker),
        )

    try:
        assert run('sleep 5; echo ran > "$1"') == -9
        assert not (tmp_path / "ran").exists()
        marker.unlink()  # not cancelled: the same helper runs the next command to its end
        assert run('echo ran > "$1"') == 0
        assert (tmp_path / "ran").read_text() == "ran\n"
    finally:
        spawner.close()


def test_a_word_the_helper_cannot_start_is_an_error_and_the_helper_lives_on(tmp_path: Path) -> None:
    """A NUL byte in a word, a missing program: an OSError for that command, not a dead helper."""
    from shared.backends.commandline import Spawner

    spawner = Spawner()
    files: dict[str, Any] = {"cwd": str(tmp_path), "env": {}, "stdout": str(tmp_path / "o")}
    files["stderr"] = str(tmp_path / "e")
    try:
        with pytest.raises(OSError, match="ValueError"):
            spawner.run(["sh", "-c", "echo a\x00b"], **files)
        with pytest.raises(OSError, match="FileNotFoundError"):
            spawner.run(["no-such-program-here"], **files)
        assert spawner.run(["sh", "-c", "exit 3"], **files) == 3
    finally:
        spawner.close()


def test_a_task_command_starting_as_its_job_is_cancelled_is_killed_by_its_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for a batch task: its node looks at the job's cancel marker once the
    command runs, kills it then, and writes its exit record (adoptable: the command ended).
    (Node.execute holds the task directory's lock around this; here nobody needs it.)
    The node runs in this process here (it sets its own PATH for posix_spawnp and changes to
    the task's directory: both restored after)."""
    from shared.backends.batch_node import Node
    from shared.backends.commandline import child_env

    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    monkeypatch.chdir(tmp_path)
    marker, tdir = tmp_path / "cancelled", tmp_path / "task"
    marker.write_text("{}")
    tdir.mkdir()
    env = child_env()
    node = Node(DirBlobStore(tmp_path / "blobs"), env)

    def spawn(script: str) -> int:
        argv = ["sh", "-c", script, "sh", str(tmp_path / "ran")]
        files = [str(tdir / n) for n in ("stdout.txt", "stderr.txt")]
        out, record = str(tdir / "out"), str(tdir / "exit.json")
        return node.spawn(argv, str(tdir), env, *files, out, record, 1, str(marker))

    assert spawn('sleep 5; echo ran > "$1"') == -9
    assert not (tmp_path / "ran").exists()
    assert json.loads((tdir / "exit.json").read_text()) == {"attempt": 1, "rc": -9}  # it ended: adoptable
    marker.unlink()
    assert spawn('echo ran > "$1"') == 0
    assert (tmp_path / "ran").read_text() == "ran\n"


def test_tasks_run_side_by_side_on_their_nodes_never_more_than_max_workers(blobs: DirBlobStore, tmp_path: Path) -> None:
    """Each task logs when it starts and ends: with 2 workers, 6 tasks overlap two at a time
    (a task never waits behind another while a node is idle) and never three at a time."""
    log = tmp_path / "spans.log"
    be = LocalBatchBackend(blobs, tmp_path / "home", 2)
    urls = [blobs.upload("in", f"{i}.csv", b"x").url for i in range(6)]
    script = 'echo "+ $1" >> "$2"; sleep 0.4; echo "- $1" >> "$2"'
    params = {
        "command": ["sh", "-c", script, "sh", "{task_index}", str(log)],
        "inputs": urls,
        "output_container": "out",
    }
    request = LaunchRequest(run_id="r", flow="f", step="s", kind="batch", key="spans", attempt=1, params=params)
    try:
        be.launch(request)
        status = wait_done(be, "spans")
        assert status.state == "succeeded", status.error
    finally:
        be.close()
    running, most = 0, 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("+") else -1
        most = max(most, running)
    assert most == 2


def test_a_long_job_goes_in_batches_and_its_end_one_task_at_a_time() -> None:
    from shared.backends.local_batch import BATCH_TASKS, _batches, _Task

    tasks = [_Task(f"t{i}", i, "c", f"b{i}", f"u{i}", f"b{i}", ["true"]) for i in range(30)]
    batches = _batches(tasks, workers=2)
    assert [t for b in batches for t in b] == tasks  # every task once, in order
    sizes = [len(b) for b in batches]
    assert sizes == [BATCH_TASKS] * 5 + [1] * 10  # the last 8 to 11 one by one
    assert _batches(tasks[:4], workers=4) == [[t] for t in tasks[:4]]  # a few long tasks: one per node


def test_a_node_that_dies_fails_its_task_with_the_reason_and_the_next_task_gets_a_new_node(
    blobs: DirBlobStore, tmp_path: Path
) -> None:
    import signal

    be = LocalBatchBackend(blobs, tmp_path / "home", 1)
    url = blobs.upload("in", "0.csv", b"x").url
    slow = {"command": ["sleep", "30"], "inputs": [url], "output_container": "out"}
    quick = {"command": ["true"], "inputs": [url], "output_container": "out"}
    try:
        be.launch(LaunchRequest(run_id="r", flow="f", step="s", kind="batch", key="dies", attempt=1, params=slow))
        wait_for(lambda: bool(marked_pids("batch/dies/")), what="the task to run")
        node = be._nodes[0]._proc
        assert node is not None
        os.kill(node.pid, signal.SIGKILL)
        for pid in marked_pids("batch/dies/"):
            os.kill(pid, signal.SIGKILL)
        status = wait_done(be, "dies")
        assert status.state == "failed" and "NodeDied: batch node died while it ran a task" in (status.error or "")
        be.launch(LaunchRequest(run_id="r", flow="f", step="t", kind="batch", key="next", attempt=1, params=quick))
        assert wait_done(be, "next").state == "succeeded"
    finally:
        be.close()
