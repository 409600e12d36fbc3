"""The console's default sources: local step logs, poison-queue entries, the vendored htmx."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from shared.console.deadletters import dead_letter_of, queue_dead_letters
from shared.console.logs import local_step_logs
from shared.engine.model import StepRun
from shared.errors import PermanentError

ROOT = Path(__file__).resolve().parents[3]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_databricks_logs_are_the_run_dirs_files(tmp_path: Path) -> None:
    key = "abc-etl-2"
    write(tmp_path / "databricks" / key / "stderr.txt", "\n".join(f"line {i}" for i in range(100)) + "\nTraceback!\n")
    write(tmp_path / "databricks" / key / "stdout.txt", "hello\n")
    step = StepRun(name="etl", kind="databricks", attempt=2, key=key, remote_id=key)
    logs = local_step_logs(tmp_path, step)
    assert [(t.label, t.stream) for t in logs] == [("main", "stderr"), ("main", "stdout")]
    assert logs[0].text.endswith("Traceback!") and "line 0\n" not in logs[0].text  # a tail, not the file
    assert logs[0].path == str(tmp_path / "databricks" / key / "stderr.txt")


def test_batch_logs_are_per_task_failed_first(tmp_path: Path) -> None:
    tasks = tmp_path / "batch" / "k-score-1" / "tasks"
    for i in range(12):
        write(tasks / str(i) / "stdout.txt", f"task {i} ok\n")
    write(tasks / "7" / "stderr.txt", "task 7 broke\n")
    logs = local_step_logs(tmp_path, StepRun(name="score", kind="batch", key="k-score-1", remote_id="k-score-1"))
    assert logs[0].label == "task 7" and logs[0].stream == "stderr" and logs[0].text == "task 7 broke"
    assert [t.label for t in logs][1:4] == ["task 7", "task 0", "task 1"]  # then the rest in order
    assert len({t.label for t in logs}) == 8  # at most 8 tasks shown


def test_azureml_logs_per_pipeline_job(tmp_path: Path) -> None:
    run_dir = tmp_path / "azureml" / "k-train-1"
    write(run_dir / "prep" / "stdout.txt", "prepared\n")
    write(run_dir / "train" / "stderr.txt", "ValueError: no rows\n")
    (run_dir / "inputs" / "gold").mkdir(parents=True)
    logs = local_step_logs(tmp_path, StepRun(name="train", kind="azureml", key="k-train-1"))
    assert [(t.label, t.stream) for t in logs] == [("train", "stderr"), ("prep", "stdout")]


def test_no_logs_for_in_process_steps_odd_keys_or_missing_files(tmp_path: Path) -> None:
    assert local_step_logs(tmp_path, StepRun(name="r", kind="register", key="k")) == []
    assert local_step_logs(tmp_path, StepRun(name="e", kind="databricks")) == []
    assert local_step_logs(tmp_path, StepRun(name="e", kind="databricks", remote_id="../../etc")) == []
    assert local_step_logs(tmp_path, StepRun(name="e", kind="databricks", remote_id="12345")) == []


def test_poison_entries_become_dead_letters() -> None:
    entry = {
        "reason": "MaxDeliveryCountExceeded",
        "description": "delivered 6 times",
        "message": {"kind": "tick", "run_id": "r-1", "message_id": "r-1:s:1:3"},
        "queue": "conveyor-work",
        "message_id": "qm-9",
        "dequeue_count": 6,
        "dead_lettered_at": "2026-11-30T12:00:00+00:00",
    }
    d = dead_letter_of(entry)
    assert (d.message_id, d.reason, d.run_id, d.kind, d.delivery_count) == (
        "qm-9",
        "MaxDeliveryCountExceeded",
        "r-1",
        "tick",
        6,
    )
    assert json.loads(d.body)["run_id"] == "r-1"
    raw = dead_letter_of({"reason": "InvalidMessage", "message": "not json <b>"})
    assert raw.body == "not json <b>" and raw.run_id is None and raw.message_id == ""


def test_queue_dead_letters_reads_the_poison_queue_or_says_why_not() -> None:
    class Peeking:
        def peek_poison(self) -> list[dict]:
            return [{"reason": "InvalidMessage", "message": "x", "message_id": "1"}]

    assert [d.reason for d in queue_dead_letters(Peeking())] == ["InvalidMessage"]
    with pytest.raises(PermanentError, match="no dead-letter listing"):
        queue_dead_letters(object())


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
