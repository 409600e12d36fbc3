"""Issue 9, tried as a new user would: the README's commands as real processes on a fresh home.

``conveyor up`` runs as its own process (its own Azurite on free ports, a fresh data home,
the repository's flows.yaml, cwd = the repository), then ``conveyor drop
samples/data/sales_reference.csv`` -- no ``make demo`` before, nobody uploads the batch app:
the host stages the project file itself. ``conveyor show RUN --follow`` follows the run to
its end; ``conveyor logs RUN score`` prints the task's real stdout file. Along the way: the
schedule of ``nightly-refresh`` does not run a past fire on the fresh home, the ETL lake is
under the data home (``<home>/dbfs/...``) and not in ``<cwd>/.conveyor/lake``, and the ``up``
console shows readable lines, not Python dicts.

The second test reruns a failed run and checks that ``show`` lists the failed first attempt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shared.cli import app
from shared.host.runtime import LocalHost
from shared.local.azurite import port_open
from shared.settings import Settings
from tests.conftest import REPO_ROOT, cli_environment
from tests.e2e.conftest import free_ports, get

SAMPLE = "samples/data/sales_reference.csv"


def conveyor(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """A running `conveyor up` on a fresh home and free ports; yields (env, home, its stderr file)."""
    blob, queue, table, host_port, scoring_port = free_ports(5)
    home = tmp_path / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "CONVEYOR_HOME": str(home),
        "CONVEYOR_AZURITE_BLOB_PORT": str(blob),
        "CONVEYOR_AZURITE_QUEUE_PORT": str(queue),
        "CONVEYOR_AZURITE_TABLE_PORT": str(table),
        "CONVEYOR_HOST_PORT": str(host_port),
        "CONVEYOR_SCORING_PORT": str(scoring_port),
        "CONVEYOR_WATCH_INTERVAL_SECONDS": "0.5",
        "CONVEYOR_BATCH_MAX_WORKERS": "2",
        "CI": "true",
    }
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(  # the newcomer's terminal
            [sys.executable, "-m", "shared.cli", "up"], cwd=REPO_ROOT, env=env, stdout=o, stderr=e
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"conveyor up exited early:\n{err.read_text()}"
            if port_open("127.0.0.1", host_port) and "Ctrl-C to stop." in out.read_text():  # the banner is out
                status, doc = get(f"http://127.0.0.1:{host_port}/admin/host/status")
                if status == 200 and doc.get("state") == "Running":
                    break
            assert time.monotonic() < deadline, f"conveyor up did not come up:\n{err.read_text()}"
            time.sleep(0.5)
        yield env, home, err
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not any(port_open("127.0.0.1", p) for p in (blob, queue, table, host_port))  # up stopped what it started


def runs(env: dict[str, str]) -> list[dict[str, Any]]:
    done = conveyor(env, "runs", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_readme_up_then_drop_succeeds_on_a_fresh_home(newcomer: tuple[dict[str, str], Path, Path]) -> None:
    env, home, up_err = newcomer
    dropped = conveyor(env, "drop", SAMPLE)
    assert dropped.returncode == 0, dropped.stderr
    assert "flows watching it: retrain (the running host will start them)" in dropped.stdout

    deadline = time.monotonic() + 120
    while not (found := [r for r in runs(env) if r["flow"] == "retrain"]):
        assert time.monotonic() < deadline, "the drop started no run"
        time.sleep(1)
    run_id = found[0]["run_id"]
    followed = conveyor(env, "show", run_id[:12], "--follow", "--timeout", "600", timeout=660)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert f"run {run_id}  flow retrain  succeeded" in followed.stdout
    assert "gate: promoted on r2" in followed.stdout

    # the nightly schedule was first seen now: its fire 0-24 hours ago did not run
    assert [r["flow"] for r in runs(env)] == ["retrain"]
    assert (home / "telemetry").is_dir()

    # the ETL lake is under the data home, not in <cwd>/.conveyor/lake
    assert (home / "dbfs" / "conveyor" / "lake" / run_id / "gold" / "_delta_log").is_dir()
    assert not (REPO_ROOT / ".conveyor" / "lake" / run_id).exists()

    # the batch task's real stdout/stderr files
    logs = conveyor(env, "logs", run_id[:12], "score")
    assert logs.returncode == 0, logs.stderr
    task_dir = home / "batch"
    assert "==> score  task-00000/stdout.txt  attempt 1" in logs.stdout
    assert str(task_dir) in logs.stdout

    # the up console: readable engine lines, no Python dicts
    console = up_err.read_text()
    assert f"run {run_id[:12]} retrain step score succeeded (attempt 1" in console, console
    assert f"run {run_id[:12]} retrain succeeded in" in console
    assert "{'" not in console and "'run_id':" not in console


FAILS_ONCE = """\
import pathlib, sys
marker = pathlib.Path(sys.argv[2])
if not marker.exists():
    print("[lake] not ready [/x]", file=sys.stderr)
    sys.exit(3)
dbutils.notebook.exit("ok")
"""


def test_show_lists_the_failed_attempt_a_rerun_replaced(e2e_settings: Settings, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    project.mkdir()
    (project / "flaky.py").write_text(FAILS_ONCE)
    marker = tmp_path / "ready"
    flows = tmp_path / "flows.yaml"
    step = {
        "name": "etl",
        "kind": "databricks",
        "params": {"python_file": "flaky.py", "parameters": ["--m", str(marker)]},
    }
    flows.write_text(json.dumps({"flows": {"flaky": {"triggers": [{"kind": "manual"}], "steps": [step]}}}))
    s = e2e_settings.with_overrides(flows_file=flows, root=project)
    env = cli_environment(s, flows)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    with LocalHost(s, workers=1, watch=False, schedule=False) as host:
        started = runner.invoke(app, ["trigger", "flaky", "--json"])
        assert started.exit_code == 0, started.output
        run_id = json.loads(started.output)["run_id"]
        assert host.wait_for_run(run_id, timeout=120).status.value == "failed"
        marker.write_text("ready")
        rerun = runner.invoke(app, ["rerun", run_id, "--from", "etl", "--follow", "--timeout", "120"])
        assert rerun.exit_code == 0, rerun.output  # followed to the end of the rerun, not the failed run
        shown = runner.invoke(app, ["show", run_id])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "succeeded" in out and "earlier attempts (1 rerun)" in out
    failed = next(ln for ln in out.splitlines() if "attempt 1" in ln)
    assert failed.split()[:4] == ["etl", "attempt", "1", "failed"]
    assert "flaky.py exited with code 3" in failed and "[lake] not ready [/x]" in out
    logs = runner.invoke(app, ["logs", run_id, "etl", "--attempt", "1"])
    assert logs.exit_code == 0 and "[lake] not ready [/x]" in logs.output


SHOW_INPUT = """\
import sys
print("got", sys.argv[2].rsplit("/", 1)[-1])
dbutils.notebook.exit("ok")
"""


def test_drop_follow_follows_the_run_the_file_starts(e2e_settings: Settings, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    project.mkdir()
    (project / "show.py").write_text(SHOW_INPUT)
    container = "drops"
    step = {
        "name": "etl",
        "kind": "databricks",
        "params": {"python_file": "show.py", "parameters": ["--input", "${trigger.blob.url}"]},
    }
    flows = tmp_path / "flows.yaml"
    trigger = {"kind": "blob", "container": container, "suffix": ".csv"}
    flows.write_text(json.dumps({"flows": {"ingest": {"triggers": [trigger], "steps": [step]}}}))
    s = e2e_settings.with_overrides(flows_file=flows, root=project)
    for k, v in cli_environment(s, flows).items():
        monkeypatch.setenv(k, v)
    data = tmp_path / "day [1].csv"
    data.write_text("a,b\n1,2\n")
    runner = CliRunner()
    with LocalHost(s, workers=1, schedule=False):
        dropped = runner.invoke(app, ["drop", str(data), "--container", container, "--follow", "--timeout", "120"])
        assert dropped.exit_code == 0, dropped.output
        assert "flow ingest  succeeded" in dropped.output
        run_id = next(
            ln.split()[1] for ln in dropped.output.splitlines() if ln.startswith("run ") and "flow ingest" in ln
        )
        logs = runner.invoke(app, ["logs", run_id, "--follow", "--timeout", "30"])
    assert logs.exit_code == 0, logs.output
    assert "etl/stdout.txt | got day%20%5B1%5D.csv" in logs.output or "etl/stdout.txt | got day [1].csv" in logs.output
