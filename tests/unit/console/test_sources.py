"""The console's default sources: step log tails (JobBackend.logs), dead letters (the queue port), htmx."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.backends.base import StepLog
from shared.console.deadletters import dead_letter_of, queue_dead_letters, queue_replay
from shared.console.logs import step_logs
from shared.engine.model import Message, StepRun
from shared.errors import ConflictError, NotFoundError
from shared.queue.base import DeadLetter as QueueDeadLetter
from shared.queue.base import ReplayReport

ROOT = Path(__file__).resolve().parents[3]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


class ListedLogs:
    """A backend whose ``logs`` lists given files/texts (the port the console reads)."""

    def __init__(self, logs: list[StepLog]) -> None:
        self._logs = logs

    def logs(self, remote_id: str) -> list[StepLog]:
        return self._logs


def backend_of(logs: list[StepLog]) -> Callable[[str], ListedLogs]:
    return lambda kind: ListedLogs(logs)


def test_databricks_logs_are_the_run_dirs_files(tmp_path: Path) -> None:
    key = "abc-etl-2"
    err, out = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    write(err, "\n".join(f"line {i}" for i in range(100)) + "\nTraceback!\n")
    write(out, "hello\n")
    step = StepRun(name="etl", kind="databricks", attempt=2, key=key, remote_id=key)
    logs = step_logs(backend_of([StepLog("stdout.txt", path=out), StepLog("stderr.txt", path=err)]), step)
    assert [(t.label, t.stream) for t in logs] == [("main", "stderr"), ("main", "stdout")]
    assert logs[0].text.endswith("Traceback!") and "line 0\n" not in logs[0].text  # a tail, not the file
    assert logs[0].path == str(err)


def test_batch_logs_are_per_task_failed_first(tmp_path: Path) -> None:
    found = []
    for i in range(12):
        write(tmp_path / str(i) / "stdout.txt", f"task {i} ok\n")
        found.append(StepLog(f"task-{i}/stdout.txt", path=tmp_path / str(i) / "stdout.txt"))
    write(tmp_path / "7" / "stderr.txt", "task 7 broke\n")
    found.append(StepLog("task-7/stderr.txt", path=tmp_path / "7" / "stderr.txt"))
    logs = step_logs(backend_of(found), StepRun(name="score", kind="batch", key="k-score-1", remote_id="k-score-1"))
    assert logs[0].label == "task-7" and logs[0].stream == "stderr" and logs[0].text == "task 7 broke"
    assert [t.label for t in logs][1:4] == ["task-7", "task-0", "task-1"]  # then the rest in order
    assert len({t.label for t in logs}) == 8  # at most 8 tasks shown


def test_remote_texts_and_notes(tmp_path: Path) -> None:
    listed = [
        StepLog("train/stderr.txt", text="a\nValueError: no rows\n"),
        StepLog("prep/stdout.txt", text="prepared\n"),
        StepLog("azureml", note="the workspace keeps them"),
    ]
    logs = step_logs(backend_of(listed), StepRun(name="train", kind="azureml", key="k-train-1"))
    assert [(t.label, t.stream, t.text) for t in logs] == [
        ("train", "stderr", "a\nValueError: no rows"),
        ("prep", "stdout", "prepared"),
    ]


def test_no_logs_for_in_process_steps_or_steps_not_launched() -> None:
    boom = backend_of([StepLog("x/stderr.txt", text="never read")])
    assert step_logs(boom, StepRun(name="r", kind="register", key="k")) == []
    assert step_logs(boom, StepRun(name="e", kind="databricks")) == []


def letter(**kw: Any) -> QueueDeadLetter:
    base = {
        "id": "entry-1",
        "message_id": "r-1:s:1:3",
        "reason": "MaxDeliveryCountExceeded",
        "description": "delivered 6 times",
        "delivery_count": 6,
        "body": '{"kind": "tick", "run_id": "r-1"}',
        "dead_lettered_at": datetime(2026, 11, 30, 12, tzinfo=UTC),
        "message": Message(kind="tick", run_id="r-1", step="s", attempt=1, tick=3),
    }
    return QueueDeadLetter(**{**base, **kw})


def test_queue_dead_letters_become_the_page_s_rows() -> None:
    d = dead_letter_of(letter())
    assert (d.message_id, d.reason, d.run_id, d.kind, d.delivery_count) == (
        "r-1:s:1:3",
        "MaxDeliveryCountExceeded",
        "r-1",
        "tick",
        6,
    )
    assert json.loads(d.body)["run_id"] == "r-1" and d.dead_lettered_at == "2026-11-30T12:00:00+00:00"
    raw = dead_letter_of(letter(message=None, message_id="", body="not json <b>"))
    assert raw.body == "not json <b>" and raw.run_id is None and raw.message_id == "entry-1"


class Letters:
    """The two queue-port calls the console makes."""

    def __init__(self, report: ReplayReport) -> None:
        self.report = report
        self.asked: list[list[str] | None] = []

    def dead_letters(self, limit: int = 100) -> list[QueueDeadLetter]:
        return [letter()][:limit]

    def replay_dead_letters(self, ids: list[str] | None, flow: str | None = None) -> ReplayReport:
        self.asked.append(ids)
        return self.report


def test_replay_is_the_queue_s_replay_and_says_what_did_not_happen() -> None:
    done = Letters(ReplayReport(replayed=[letter()]))
    assert [d.reason for d in queue_dead_letters(done)] == ["MaxDeliveryCountExceeded"]
    queue_replay(done)("r-1:s:1:3")
    assert done.asked == [["r-1:s:1:3"]]
    with pytest.raises(NotFoundError):
        queue_replay(Letters(ReplayReport(missing=["x"])))("x")
    with pytest.raises(ConflictError, match="duplicate-detection"):
        queue_replay(Letters(ReplayReport(kept=[(letter(), "inside the duplicate-detection window")])))("r-1:s:1:3")


def test_vendored_htmx_is_the_npm_pinned_copy() -> None:
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    version = package["dependencies"]["htmx.org"]
    assert lock["packages"]["node_modules/htmx.org"]["version"] == version
    vendored = ROOT / "shared" / "console" / "static" / "vendor"
    assert f"htmx.org {version}" in (vendored / "README.txt").read_text(encoding="utf-8")
    assert "Zero-Clause BSD" in (vendored / "htmx.LICENSE.txt").read_text(encoding="utf-8")
    installed = ROOT / "node_modules" / "htmx.org"
    if not installed.is_dir():
        pytest.skip("node_modules/htmx.org not installed (make install runs npm ci)")
    assert json.loads((installed / "package.json").read_text(encoding="utf-8"))["version"] == version
    digest = hashlib.sha256((vendored / "htmx.min.js").read_bytes()).hexdigest()
    assert digest == hashlib.sha256((installed / "dist" / "htmx.min.js").read_bytes()).hexdigest()
    assert (vendored / "htmx.LICENSE.txt").read_bytes() == (installed / "LICENSE").read_bytes()
