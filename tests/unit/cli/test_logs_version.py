"""`conveyor --version`, `conveyor logs` over local backend files, readable engine log lines."""

from __future__ import annotations

import io
import logging
import tomllib
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from shared import cli
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.engine.commands import Emit
from shared.engine.executor import event_text
from shared.engine.model import RunStatus, StepState
from shared.errors import ValidationError
from shared.runlogs import follow_logs, print_logs, targets
from shared.settings import Settings
from shared.terminal import log_to_console
from shared.wiring import Services
from tests.conftest import REPO_ROOT
from tests.fakes import MemoryRunStore
from tests.unit.cli.test_render import make_run

runner = CliRunner()


def test_version_is_the_packages() -> None:
    result = runner.invoke(cli.app, ["--version"])
    expected = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.exit_code == 0 and result.output == f"conveyor {expected}\n"
    from shared import __version__

    assert __version__ == expected  # the source tree says the same


class FileBackend(JobBackend):
    """A backend whose logs are files in a directory (as the local backends' are)."""

    kind = "batch"

    def __init__(self, root: Path) -> None:
        self.root = root

    def launch(self, request: LaunchRequest) -> LaunchResult:
        raise NotImplementedError

    def poll(self, remote_id: str) -> StepStatus:
        raise NotImplementedError

    def cancel(self, remote_id: str) -> None:
        raise NotImplementedError

    def logs(self, remote_id: str) -> list[StepLog]:
        d = self.root / remote_id
        return [StepLog(f"{p.parent.name}/{p.name}", path=p) for p in sorted(d.glob("*/*.txt"))]


@pytest.fixture
def services(tmp_path: Path) -> Services:
    store = MemoryRunStore()
    return Services(
        Settings(home=tmp_path, root=tmp_path, env={}), store=store, backends={"batch": FileBackend(tmp_path / "jobs")}
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def launched_run(services: Services):  # type: ignore[no-untyped-def]
    run = make_run(
        [
            ("score", "batch", StepState.FAILED, {"done": 1, "total": 2}),
            ("register", "register", StepState.PENDING, None),
        ],
        RunStatus.FAILED,
    )
    run.steps[0].remote_id = "job-2"
    run.steps[0].attempt = 2
    run.steps[0].history = [{"attempt": 1, "remote_id": "job-1", "outcome": "failed"}]
    run.steps[1].attempt = 1
    run.steps[1].remote_id = "model:1"
    services.store.create_if_absent(run)
    return run


def capture() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_logs_prints_each_file_of_the_current_attempt(services: Services, tmp_path: Path) -> None:
    run = launched_run(services)
    write(tmp_path / "jobs/job-2/task-00000/stdout.txt", "scored 10 rows\n")
    write(tmp_path / "jobs/job-2/task-00001/stderr.txt", "\x1b[31mTraceback [/x]\n")
    write(tmp_path / "jobs/job-1/task-00000/stderr.txt", "first attempt failed\n")
    out, buf = capture()
    assert print_logs(out, services, run) == 2
    text = buf.getvalue()
    assert "==> score  task-00000/stdout.txt  attempt 2" in text and "scored 10 rows" in text
    assert "\\x1b[31mTraceback [/x]" in text  # an escape sequence from a task is shown, not obeyed
    assert "first attempt failed" not in text
    assert "register runs inside the host: see `conveyor trace RUN`" in text
    out, buf = capture()
    print_logs(out, services, run, "score", attempt=1)
    assert "first attempt failed" in buf.getvalue() and "scored" not in buf.getvalue()


def test_logs_refuses_an_unknown_step_or_attempt(services: Services) -> None:
    run = launched_run(services)
    with pytest.raises(ValidationError, match="no step 'nope'"):
        targets(run, "nope")
    with pytest.raises(ValidationError, match=r"no attempt 5 \(attempts: 1, 2\)"):
        targets(run, "score", 5)
    with pytest.raises(ValidationError, match="--attempt needs a STEP"):
        targets(run, None, 1)


def test_follow_prints_lines_as_they_are_written_until_the_run_ends(services: Services, tmp_path: Path) -> None:
    run = launched_run(services)
    run.status = RunStatus.RUNNING
    run.steps[0].state = StepState.RUNNING
    store = services.store
    store.rows[run.run_id] = ("e", run.model_dump_json())  # type: ignore[attr-defined]
    log = write(tmp_path / "jobs/job-2/task-00000/stdout.txt", "line 1\npart")
    polls = {"n": 0}
    real_get = store.get

    def get(run_id: str):  # type: ignore[no-untyped-def]
        polls["n"] += 1
        if polls["n"] == 2:
            with log.open("a") as fh:
                fh.write("ial 2\n")
            write(tmp_path / "jobs/job-2/task-00001/stdout.txt", "second task\n")
        if polls["n"] == 3:
            done = real_get(run_id)
            done.status = RunStatus.FAILED
            done.steps[0].state = StepState.FAILED
            return done
        return real_get(run_id)

    store.get = get  # type: ignore[method-assign]
    out, buf = capture()
    ended = follow_logs(out, services, run.run_id, "score", poll=0.01, timeout=30)
    assert ended.status is RunStatus.FAILED
    assert buf.getvalue().splitlines() == [
        "score/task-00000/stdout.txt | line 1",
        "score/task-00000/stdout.txt | partial 2",
        "score/task-00001/stdout.txt | second task",
    ]


def test_logs_command_through_the_cli(memory_storage: MemoryRunStore) -> None:
    run = make_run([("score", "batch", StepState.PENDING, None)], RunStatus.PENDING)
    memory_storage.create_if_absent(run)
    result = runner.invoke(cli.app, ["logs", run.run_id[:8]])
    assert result.exit_code == 0, result.output
    assert "no step of this run has been launched yet" in result.output
    result = runner.invoke(cli.app, ["logs", run.run_id, "nope"])
    assert result.exit_code == 2 and "no step 'nope'" in result.output


def test_engine_events_are_readable_lines() -> None:
    run = make_run([("score", "batch", StepState.FAILED, None)], RunStatus.FAILED)
    run.run_id = "24f9c3a1b1f9426acbe9010122067bd2"
    err = "1 of 1 tasks failed: task-00000: NotFoundError: [blob] blob apps/x.py not found"
    cases = [
        (Emit("run.started", {"trigger": "blob", "reruns": 0}), "run 24f9c3a1b1f9 retrain started (blob)"),
        (
            Emit("step.launched", {"step": "score", "attempt": 1, "remote_id": "k-1", "reattached": False}),
            "run 24f9c3a1b1f9 retrain step score launched (attempt 1): k-1",
        ),
        (
            Emit("step.failed", {"step": "score", "attempt": 1, "error": err, "duration_seconds": 2.24}),
            f"run 24f9c3a1b1f9 retrain step score failed (attempt 1, 2.2s): {err}",
        ),
        (
            Emit("run.finished", {"status": "failed", "error": "boom", "duration_seconds": 3.0}),
            "run 24f9c3a1b1f9 retrain failed in 3.0s: boom",
        ),
    ]
    for cmd, expected in cases:
        assert event_text(run, cmd) == expected


def test_up_console_log_lines_are_readable() -> None:
    buf = io.StringIO()
    handler = log_to_console(buf)
    try:
        logging.getLogger("conveyor.engine").warning("run 24f9 retrain step score failed (attempt 1, 2.2s): x")
        logging.getLogger("azure.core.pipeline").info("Request URL: ...")  # not ours: not shown
    finally:
        logging.getLogger("conveyor").removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0][8:] == " warning: run 24f9 retrain step score failed (attempt 1, 2.2s): x"
