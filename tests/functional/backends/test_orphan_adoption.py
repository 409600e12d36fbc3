"""A host killed with its whole process group: the restarted host adopts what its processes did.

Each host here is a real process in its own session, killed with ``killpg(SIGKILL)`` the way
``conveyor up`` dies in the chaos test. Its commands (and their helpers, in their own
sessions) outlive it, run to the end and leave their exit codes; a new backend instance on
the same home adopts them. Every command appends ``start``/``end`` to a log of its own, so
the tests see how often each one really ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from shared.backends.local_batch import LocalBatchBackend
from shared.backends.local_databricks import LocalDatabricksBackend
from tests.conftest import REPO_ROOT
from tests.functional.backends.conftest import marked_pids, wait_done, wait_for
from tests.functional.backends.dirblobs import DirBlobStore

KEY = "run1-score-1"

BATCH_HOST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shared.backends.base import LaunchRequest
    from shared.backends.local_batch import LocalBatchBackend
    from tests.functional.backends.dirblobs import DirBlobStore
    blobs = DirBlobStore(Path(sys.argv[1]))
    be = LocalBatchBackend(blobs, Path(sys.argv[2]), 2)
    script = 'echo start >> "$3/$1.log"; sleep 1.5; echo "$1" > "$2/o.txt"; echo end >> "$3/$1.log"'
    be.launch(LaunchRequest("run1", "f", "score", "batch", sys.argv[4], 1,
              {"command": ["sh", "-c", script, "sh", "{task_id}", "{output_dir}", sys.argv[3]],
               "inputs": [blobs.url("in", f"{i}.csv") for i in range(4)], "output_container": "out"}))
    print("launched", flush=True)
    time.sleep(60)
    """
)


def _start_host(source: str, *args: str) -> subprocess.Popen[bytes]:
    host = subprocess.Popen(
        [sys.executable, "-c", source, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,  # its own process group, as `conveyor up` runs
    )
    assert host.stdout is not None and host.stdout.readline().strip() == b"launched"
    return host


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _kill_group(host: subprocess.Popen[bytes]) -> None:
    os.killpg(host.pid, signal.SIGKILL)
    host.wait()


def _runs(logs: Path) -> dict[str, list[str]]:
    return {p.stem: p.read_text().split() for p in sorted(logs.glob("*.log"))}


def _blobs(tmp_path: Path) -> DirBlobStore:
    blobs = DirBlobStore(tmp_path / "blobs")
    for i in range(4):
        blobs.upload("in", f"{i}.csv", str(i).encode())
    return blobs


def _kill_batch_host_mid_job(tmp_path: Path) -> tuple[DirBlobStore, Path, Path, list[int]]:
    """A host running a 4-task batch job, killed with its group once two tasks run: (the blobs,
    its home, the tasks' logs, the host's children then: the spawner helpers)."""
    blobs, home, logs = _blobs(tmp_path), tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    host = _start_host(BATCH_HOST, str(tmp_path / "blobs"), str(home), str(logs), KEY)
    try:
        wait_for(lambda: len(marked_pids(f"batch/{KEY}/")) >= 2, what="two tasks to run")
        helpers = _children(host.pid)
    finally:
        _kill_group(host)
    return blobs, home, logs, helpers


def _finish_without_reruns(blobs: DirBlobStore, home: Path, logs: Path) -> None:
    """A new backend on the dead host's home finishes the job: every command ran exactly once."""
    second = LocalBatchBackend(blobs, home, 2)
    try:
        status = wait_done(second, KEY, timeout=60)
    finally:
        second.close()
    assert status.state == "succeeded", status.error
    assert status.reruns == 0
    runs = _runs(logs)
    assert sorted(runs) == [f"task-{i:05d}" for i in range(4)]
    assert all(r == ["start", "end"] for r in runs.values()), runs  # each command ran once


def test_finished_orphans_are_adopted_not_run_again(tmp_path: Path) -> None:
    blobs, home, logs, _helpers = _kill_batch_host_mid_job(tmp_path)
    assert marked_pids(f"batch/{KEY}/")  # the tasks outlive their host's process group
    _finish_without_reruns(blobs, home, logs)
    outputs = sorted(blobs.download("out", f"run1/score/task-{i:05d}/o.txt").decode().strip() for i in range(4))
    assert outputs == [f"task-{i:05d}" for i in range(4)]  # the adopted tasks' outputs were uploaded
    lines = (home / "batch" / KEY / "tasks.log").read_text()
    assert '"ad":1' in lines  # at least one task was adopted from the dead host


STAGING_HOST = BATCH_HOST.replace(
    "blobs = DirBlobStore(Path(sys.argv[1]))",
    "from tests.functional.backends.dirblobs import SlowDirBlobStore\nblobs = SlowDirBlobStore(Path(sys.argv[1]), 2.0)",
)


def test_a_task_its_node_was_staging_when_the_host_died_is_adopted_not_run_twice(tmp_path: Path) -> None:
    """A node outlives its host, so it finishes the task it was staging: the restarted host's
    node must wait for it (the task directory's lock is held from staging on), not take the
    half-staged directory for a task killed mid-flight and run it a second time beside it."""
    blobs, home, logs = _blobs(tmp_path), tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    host = _start_host(STAGING_HOST, str(tmp_path / "blobs"), str(home), str(logs), KEY)
    tasks = home / "batch" / KEY / "tasks"
    try:
        wait_for(lambda: tasks.is_dir() and len(list(tasks.iterdir())) >= 2, what="two tasks staging")
        assert not marked_pids(f"batch/{KEY}/") and not list(logs.iterdir())  # no command began yet
    finally:
        _kill_group(host)
    _finish_without_reruns(blobs, home, logs)
    assert '"ad":1' in (home / "batch" / KEY / "tasks.log").read_text()  # the staged ones were adopted


def test_work_killed_mid_flight_is_run_again_and_counted(tmp_path: Path) -> None:
    blobs, home, logs, helpers = _kill_batch_host_mid_job(tmp_path)
    for pid in helpers:  # then the helpers and their commands: nobody is left to record an exit code
        os.killpg(pid, signal.SIGKILL)
    for pid in marked_pids(f"batch/{KEY}/"):
        os.kill(pid, signal.SIGKILL)
    killed = [name for name, r in _runs(logs).items() if r == ["start"]]
    assert killed
    second = LocalBatchBackend(blobs, home, 2)
    try:
        status = wait_done(second, KEY)
    finally:
        second.close()
    assert status.state == "succeeded", status.error
    assert status.reruns == len(killed)  # counted: a re-run after host loss
    runs = _runs(logs)
    for name, r in runs.items():
        assert r == (["start", "start", "end"] if name in killed else ["start", "end"]), (name, r)


DATABRICKS_HOST = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from shared.backends.base import LaunchRequest
    from shared.backends.local_databricks import LocalDatabricksBackend
    be = LocalDatabricksBackend(Path(sys.argv[1]), Path(sys.argv[2]), "")
    be.launch(LaunchRequest("run1", "f", "etl", "databricks", "run1-etl-1", 1, {"python_file": "job.py"}))
    print("launched", flush=True)
    time.sleep(60)
    """
)


def test_a_databricks_script_outliving_its_host_is_adopted_with_its_exit_value(tmp_path: Path) -> None:
    root, home = tmp_path / "project", tmp_path / "home"
    root.mkdir()
    log = tmp_path / "ran.log"
    (root / "job.py").write_text(
        textwrap.dedent(
            f"""
            import time
            with open({str(log)!r}, "a") as f:
                f.write("start\\n")
            time.sleep(1.5)
            with open({str(log)!r}, "a") as f:
                f.write("end\\n")
            dbutils.notebook.exit("7")
            """
        )
    )
    host = _start_host(DATABRICKS_HOST, str(home), str(root))
    try:
        wait_for(lambda: marked_pids("databricks/run1-etl-1/"), what="the script to start")
    finally:
        _kill_group(host)
    second = LocalDatabricksBackend(home, root, "")
    status = wait_done(second, "run1-etl-1")
    assert status.state == "succeeded", status.error
    assert status.outputs["result"] == 7
    assert status.reruns == 0
    assert log.read_text().split() == ["start", "end"]  # adopted, not run again
