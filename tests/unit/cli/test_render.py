"""Rendering of runs, gate decisions, traces and progress (no storage)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from shared.cli import RunFollower, gate_lines, model_of, print_run, run_json, trace_tree
from shared.engine.model import Run, RunStatus, StepRun, StepState, TriggerContext

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_run(states: list[tuple[str, str, StepState, dict | None]], status: RunStatus) -> Run:
    steps = []
    for i, (name, kind, state, progress) in enumerate(states):
        started = T0 + timedelta(seconds=10 * i) if state is not StepState.PENDING else None
        ended = started + timedelta(seconds=4) if started and state.terminal else None
        steps.append(
            StepRun(
                name=name,
                kind=kind,
                state=state,
                attempt=1 if started else 0,
                started_at=started,
                ended_at=ended,
                progress=progress,
            )
        )
    return Run(
        run_id="a" * 32,
        flow="retrain",
        status=status,
        trigger=TriggerContext(kind="manual", source="cli"),
        steps=steps,
        created_at=T0,
        updated_at=T0,
        started_at=T0,
    )


def capture(width: int = 160, terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=terminal, color_system=None), buf


def test_print_run_shows_steps_durations_gate_and_model() -> None:
    run = make_run(
        [
            ("score", "batch", StepState.SUCCEEDED, {"done": 3, "total": 3}),
            ("register", "register", StepState.SUCCEEDED, None),
            ("deploy", "deploy", StepState.SUCCEEDED, None),
        ],
        RunStatus.SUCCEEDED,
    )
    run.steps[1].outputs = {"model_name": "sales", "version": "2"}
    run.gate = {
        "decision": "rejected",
        "metric": "r2",
        "direction": "maximize",
        "candidate": 0.71,
        "champion": 0.8,
        "champion_version": "1",
        "reason": "not higher",
    }
    con, buf = capture()
    print_run(run, con)
    out = buf.getvalue()
    assert "score" in out and "3/3" in out and "4.0s" in out
    assert "gate: rejected on r2" in out
    assert "candidate r2=0.71" in out and "champion r2=0.8 (v1)" in out
    assert "model: sales version 2" in out
    assert "register.version = 2" in out


def test_gate_lines_first_model_has_no_champion() -> None:
    lines = gate_lines({"decision": "promoted", "metric": "r2", "candidate": 0.9, "champion": None})
    assert "promoted" in lines[0] and "champion r2=- (none yet)" in lines[1]
    assert gate_lines(None) == []


def test_model_of_falls_back_to_gate() -> None:
    run = make_run([("deploy", "deploy", StepState.SUCCEEDED, None)], RunStatus.SUCCEEDED)
    assert model_of(run) is None
    run.gate = {"model_name": "m", "version": "3"}
    assert model_of(run) == {"name": "m", "version": "3"}


def test_run_json_has_durations() -> None:
    run = make_run(
        [("a", "batch", StepState.SUCCEEDED, None), ("b", "batch", StepState.PENDING, None)], RunStatus.RUNNING
    )
    doc = run_json(run)
    assert doc["durations"] == {"a": 4.0, "b": None}
    assert doc["steps"][0]["name"] == "a"


def test_trace_tree_nests_children_and_events_under_their_span() -> None:
    recs = [
        {
            "type": "event",
            "name": "trigger.received",
            "span_id": None,
            "parent_span_id": "root0",
            "ts": "1",
            "attributes": {"run_id": "x", "kind": "blob"},
        },
        {
            "type": "span",
            "name": "step.launch",
            "span_id": "s1",
            "parent_span_id": "root0",
            "duration_ms": 1500.0,
            "ts": "2",
            "status": "ok",
            "attributes": {"step": "score"},
        },
        {
            "type": "span",
            "name": "backend.submit",
            "span_id": "s2",
            "parent_span_id": "s1",
            "duration_ms": 12.5,
            "ts": "3",
            "status": "error",
            "attributes": {},
        },
        {
            "type": "event",
            "name": "step.launched",
            "span_id": None,
            "parent_span_id": "s1",
            "ts": "4",
            "attributes": {},
        },
    ]
    con, buf = capture()
    con.print(trace_tree(recs, "run x"))
    lines = buf.getvalue().splitlines()
    launch = next(i for i, ln in enumerate(lines) if "step.launch " in ln)
    submit = next(i for i, ln in enumerate(lines) if "backend.submit" in ln)
    launched = next(i for i, ln in enumerate(lines) if "step.launched" in ln)
    assert "1.50s" in lines[launch] and "step=score" in lines[launch]
    assert "12.5ms" in lines[submit] and "ERROR" in lines[submit]
    # children are indented deeper than their parent span
    indent = lambda s: len(s) - len(s.lstrip("│ ├└─"))  # noqa: E731
    assert indent(lines[submit]) > indent(lines[launch]) and indent(lines[launched]) > indent(lines[launch])
    assert "run_id=" not in buf.getvalue()


def test_follower_prints_lines_without_a_terminal() -> None:
    con, buf = capture()
    seq = [
        make_run([("score", "batch", StepState.RUNNING, {"done": 1, "total": 4})], RunStatus.RUNNING),
        make_run([("score", "batch", StepState.RUNNING, {"done": 1, "total": 4})], RunStatus.RUNNING),
        make_run([("score", "batch", StepState.SUCCEEDED, {"done": 4, "total": 4})], RunStatus.SUCCEEDED),
    ]
    with RunFollower(con) as f:
        for r in seq:
            f.update(r)
    lines = buf.getvalue().splitlines()
    assert lines == [
        "  score        running 1/4",
        "run aaaaaaaaaaaa running",
        "  score        succeeded 4/4",
        "run aaaaaaaaaaaa succeeded",
    ]


def test_follower_draws_progress_bars_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    con, buf = capture(terminal=True)
    with RunFollower(con) as f:
        assert f.interactive
        f.update(
            make_run(
                [
                    ("score", "batch", StepState.RUNNING, {"done": 2, "total": 5}),
                    ("train", "azureml", StepState.PENDING, None),
                ],
                RunStatus.RUNNING,
            )
        )
        f.update(
            make_run(
                [
                    ("score", "batch", StepState.SUCCEEDED, {"done": 5, "total": 5}),
                    ("train", "azureml", StepState.SUCCEEDED, None),
                ],
                RunStatus.SUCCEEDED,
            )
        )
        tasks = {t.fields["step"]: t for t in f._progress.tasks}
        assert tasks["score"].completed == 5 and tasks["score"].total == 5
        assert tasks["train"].completed == 1
    assert "5/5" in buf.getvalue()


def test_show_lists_the_attempts_a_rerun_replaced() -> None:
    # Issue 9: after `rerun`, `show` hid the failed first attempt.
    run = make_run(
        [("score", "batch", StepState.SUCCEEDED, None), ("etl", "databricks", StepState.SUCCEEDED, None)],
        RunStatus.SUCCEEDED,
    )
    run.reruns = 1
    etl = run.steps[1]
    etl.attempt = 2
    etl.remote_id = "r-etl-2"
    t1 = T0 + timedelta(seconds=10)
    etl.history = [
        {
            "attempt": 1,
            "key": "r-etl-1",
            "remote_id": "r-etl-1",
            "outcome": "failed",
            "started_at": t1.isoformat(),
            "ended_at": (t1 + timedelta(seconds=3)).isoformat(),
            "error": "medallion.py exited with code 1: [lake] missing",
            "retryable": False,
        },
        {"attempt": 2, "key": "r-etl-2", "remote_id": "r-etl-2", "outcome": "succeeded", "error": None},
    ]
    run.steps[0].history = [{"attempt": 1, "outcome": "succeeded", "remote_id": "r-score-1"}]
    con, buf = capture()
    print_run(run, con)
    out = buf.getvalue()
    assert "earlier attempts (1 rerun)" in out
    failed = next(ln for ln in out.splitlines() if "attempt 1" in ln)
    assert failed.split()[:4] == ["etl", "attempt", "1", "failed"]
    assert "3.0s" in failed and "r-etl-1" in failed and "medallion.py exited with code 1: [lake] missing" in failed
    assert "attempt 2" not in out and "r-score-1" not in out  # what the table already shows is not repeated


def test_show_without_earlier_attempts_has_no_history_section() -> None:
    run = make_run([("score", "batch", StepState.SUCCEEDED, None)], RunStatus.SUCCEEDED)
    run.steps[0].history = [{"attempt": 1, "outcome": "succeeded"}]
    con, buf = capture()
    print_run(run, con)
    assert "earlier attempts" not in buf.getvalue()
