"""The executor over the in-memory ports: drive flows to the end by draining the queue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.backends.base import LaunchRequest, LaunchResult, StepStatus
from shared.engine import control
from shared.engine.executor import Executor, parse_message
from shared.engine.model import Message, Run, RunStatus, StepState, idempotency_key
from shared.errors import (
    ConcurrencyError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
    ValidationError,
)
from shared.flows.model import FlowsFile
from shared.telemetry.base import Span, Telemetry
from shared.telemetry.trace import parse
from tests.fakes import MemoryRunStore, ScriptedBackend
from tests.unit.engine.support import TRACEPARENT, Harness, make_flow, start

TEMPLATED = {
    "extract": {"python_file": "jobs/extract.py", "parameters": ["--n=${trigger.params.n}"]},
    "train": {"python_file": "jobs/train.py", "parameters": ["--in", "${steps.extract.outputs.result}"]},
    "score": {"python_file": "jobs/score.py", "parameters": ["${steps.train.outputs.result}", "${run.id}"]},
}


def test_three_step_flow_runs_to_success() -> None:
    h = Harness(make_flow(params=TEMPLATED))
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED
    assert [s.state for s in run.steps] == [StepState.SUCCEEDED] * 3
    assert [s.outputs for s in run.steps] == [{"result": "extract-1"}, {"result": "train-1"}, {"result": "score-1"}]
    assert h.backend.launches == [idempotency_key("run1", n, 1) for n in ("extract", "train", "score")]
    # params were rendered from the trigger and earlier outputs; lineage rides on the request
    reqs = [h.backend.jobs[k].request for k in h.backend.launches]
    assert reqs[0].params["parameters"] == ["--n=3"]
    assert reqs[1].params["parameters"] == ["--in", "extract-1"]
    assert reqs[2].params["parameters"] == ["train-1", "run1"]
    assert reqs[2].steps == {
        "extract": {"outputs": {"result": "extract-1"}, "remote_id": reqs[0].key, "state": "succeeded"},
        "train": {"outputs": {"result": "train-1"}, "remote_id": reqs[1].key, "state": "succeeded"},
    }
    assert reqs[0].trigger["params"] == {"n": 3}
    assert reqs[0].kind == "databricks" and reqs[0].attempt == 1 and reqs[0].flow == "demo"
    assert run.ended_at is not None and run.started_at is not None and run.ended_at > run.started_at


def test_polls_follow_the_backoff_on_the_clock() -> None:
    h = Harness(make_flow(("a",), poll={"initial_seconds": 2, "multiplier": 2, "max_seconds": 5}))
    h.backend.polls = 3
    h.create()
    h.drain()
    ticks = [(m.tick, d) for m, d in h.queue.sent if m.kind == "tick"]
    assert ticks == [(1, 2.0), (2, 4.0), (3, 5.0), (4, 5.0)]
    assert h.store.get("run1").status is RunStatus.SUCCEEDED


def test_key_is_saved_before_the_launch() -> None:
    h = Harness(make_flow())
    seen: list[tuple[StepState, str | None]] = []
    real_launch = h.backend.launch

    def launch(request: LaunchRequest) -> LaunchResult:
        step = h.store.get(request.run_id).step(request.step)
        seen.append((step.state, step.key))
        return real_launch(request)

    h.backend.launch = launch  # type: ignore[method-assign]
    h.create()
    h.drain()
    assert seen == [(StepState.LAUNCHING, idempotency_key("run1", n, 1)) for n in ("extract", "train", "score")]


def test_template_error_fails_the_step_permanently() -> None:
    params = {"extract": {"python_file": "x.py", "parameters": ["${trigger.params.missing}"]}}
    h = Harness(make_flow(("extract",), params=params, retries={"count": 3}))
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED
    assert "trigger.params.missing" in (run.error or "") and "params.parameters[0]" in (run.error or "")
    assert h.backend.launches == []


def test_retryable_launch_error_is_retried_and_unknown_errors_are_permanent() -> None:
    h = Harness(make_flow(("a",), retries={"count": 2, "backoff_seconds": 1}))
    h.backend.launch_errors[("a", 1)] = TransientError("503 from the service")
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED and run.steps[0].attempt == 2
    assert run.steps[0].history[0]["error"] == "503 from the service"

    h2 = Harness(make_flow(("a",), retries={"count": 2}))
    h2.backend.launch_errors[("a", 1)] = KeyError("boom")
    h2.create()
    h2.drain()
    run = h2.store.get("run1")
    assert run.status is RunStatus.FAILED and "KeyError" in (run.error or "") and run.steps[0].attempt == 1


def test_failed_job_is_retried_with_a_new_key() -> None:
    h = Harness(make_flow(("a", "b"), retries={"count": 1, "backoff_seconds": 30}))
    h.backend.outcomes[("a", 1)] = StepStatus("failed", error="spot node lost", retryable=True)
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED
    assert h.backend.launches == [idempotency_key("run1", "a", 1), idempotency_key("run1", "a", 2), "run1-b-1"]
    assert (run.steps[0].outputs, run.steps[0].attempt) == ({"result": "a-2"}, 2)
    retry_ticks = [d for m, d in h.queue.sent if m.kind == "tick" and m.step == "a" and m.attempt == 1 and d == 30]
    assert retry_ticks == [30]


def test_timeout_on_the_manual_clock_cancels_the_job() -> None:
    h = Harness(make_flow(("a",), timeout_seconds=10, poll={"initial_seconds": 4, "multiplier": 1}))
    h.backend.polls = 100
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED and run.error == "step a failed: timed out after 10s"
    assert h.backend.jobs[run.steps[0].key or ""].cancelled
    assert h.queue.now == pytest.approx(12)  # polls at 4, 8 (running), 12 (> 10s: timed out)


def test_unknown_run_is_dropped() -> None:
    h = Harness(make_flow())
    h.executor.handle(Message(kind="start", run_id="ghost"))
    assert h.queue.sent == [] and h.store.saves == 0


def test_run_of_an_unknown_flow_is_a_permanent_error() -> None:
    h = Harness(make_flow(), flow_name="demo")
    run = h.create()
    row = h.store.get(run.run_id)
    row.flow = "gone"
    h.store.save(row)
    with pytest.raises(NotFoundError, match="gone"):
        h.executor.handle(start(run))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"\xff\xfe", "body"),
        ("{not json", "body"),
        ("[1]", "body"),
        (json.dumps({"kind": "explode", "run_id": "r"}), "kind"),
        (json.dumps({"kind": "start"}), "run_id"),
        (json.dumps({"kind": "start", "run_id": "r", "extra": 1}), "extra"),
        (json.dumps({"kind": "tick", "run_id": "r", "step": "a", "attempt": 1}), "tick"),
    ],
)
def test_malformed_bodies_are_validation_errors(body: str | bytes, field: str) -> None:
    h = Harness(make_flow())
    with pytest.raises(ValidationError) as err:
        h.executor.handle_body(body)
    assert err.value.field == field


def test_handle_body_runs_a_valid_message() -> None:
    h = Harness(make_flow())
    run = h.create()
    h.queue.items.clear()
    h.executor.handle_body(start(run).model_dump_json().encode())
    assert h.store.get("run1").steps[0].state is StepState.RUNNING
    assert parse_message(start(run).model_dump_json()) == start(run)


class RacingStore(MemoryRunStore):
    """Another writer saves first ``races`` times: each save sees a changed ETag."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races

    def save(self, run: Run) -> Run:
        if self.races > 0:
            self.races -= 1
            other = self.get(run.run_id)
            super().save(other)  # bumps the ETag under our feet
        return super().save(run)


def test_lost_save_race_reloads_and_decides_again() -> None:
    h = Harness(make_flow())
    h.store = RacingStore(races=2)
    h.executor.store = h.store
    h.create()
    h.drain()
    assert h.store.get("run1").status is RunStatus.SUCCEEDED
    assert len(h.backend.launches) == 3


def test_endless_races_surface_as_a_retryable_error() -> None:
    h = Harness(make_flow())
    h.store = RacingStore(races=1000)
    h.executor.store = h.store
    run = h.create()
    with pytest.raises(ConcurrencyError) as err:
        h.executor.handle(start(run))
    assert err.value.retryable
    assert h.backend.launches == []


def test_max_concurrent_runs_queues_and_releases_in_order() -> None:
    from datetime import timedelta

    from tests.unit.engine.support import T0

    h = Harness(make_flow(("a", "b"), max_concurrent_runs=1))
    h.backend.polls = 2
    running_at_once: list[int] = []
    real_save = h.store.save

    def save(run: Run) -> Run:
        saved = real_save(run)
        running_at_once.append(len(h.store.list_runs("demo", [RunStatus.RUNNING])))
        return saved

    h.store.save = save  # type: ignore[method-assign]
    for i in range(3):
        h.create(f"run{i}", created=T0 + timedelta(seconds=i))
    h.drain()
    runs = [h.store.get(f"run{i}") for i in range(3)]
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 3
    assert max(running_at_once) == 1
    # the oldest queued run went first
    starts = [r.started_at or T0 for r in runs]
    assert None not in [r.started_at for r in runs] and starts == sorted(starts)
    assert runs[0].ended_at is not None and runs[1].started_at is not None
    assert runs[1].started_at >= runs[0].ended_at


class Recorder(Telemetry):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.events: list[tuple[str, str, str | None, dict[str, Any]]] = []

    def _start(self, span: Span) -> None:
        pass

    def _end(self, span: Span) -> None:
        self.spans.append(span)

    def event(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        self.events.append((name, traceparent, run_id, dict(attributes or {})))


def test_telemetry_spans_and_events_live_in_the_runs_trace() -> None:
    h = Harness(make_flow(("a", "b")))
    rec = Recorder()
    h.executor.telemetry = rec
    h.create()
    h.drain()
    names = [e[0] for e in rec.events]
    assert names[0] == "run.started" and names[-1] == "run.finished"
    assert names.count("step.launched") == 2 and names.count("step.succeeded") == 2
    assert all(tp == TRACEPARENT and rid == "run1" for _, tp, rid, _ in rec.events)
    launches = [s for s in rec.spans if s.name == "step.launch"]
    polls = [s for s in rec.spans if s.name == "step.poll"]
    assert [s.attributes["step"] for s in launches] == ["a", "b"] and len(polls) >= 2
    for s in launches + polls:
        assert s.parent == TRACEPARENT and s.run_id == "run1" and s.attributes["flow"] == "demo"
        assert parse(s.traceparent)[0] == parse(TRACEPARENT)[0]  # type: ignore[index]
    # the launched job carries the launch span's context; ticks carry the run's
    first_req = h.backend.jobs["run1-a-1"].request
    assert first_req.traceparent == launches[0].traceparent
    assert all(m.traceparent == TRACEPARENT for m, _ in h.queue.sent)


def test_failing_launch_marks_its_span_failed() -> None:
    h = Harness(make_flow(("a",)))
    rec = Recorder()
    h.executor.telemetry = rec
    h.backend.launch_errors[("a", 1)] = PermanentError("bad request")
    h.create()
    h.drain()
    (span,) = [s for s in rec.spans if s.name == "step.launch"]
    assert span.status == "error" and "bad request" in span.attributes["error"]
    assert "step.failed" in [e[0] for e in rec.events]


# ---------------------------------------------------------------- control


def test_cancel_a_running_run() -> None:
    h = Harness(make_flow())
    h.backend.polls = 50
    h.create()
    for _ in range(3):  # start, first tick, second tick
        got = h.queue.receive(1)
        if not got:
            h.queue.advance(h.queue.next_visible_in() or 0)
            got = h.queue.receive(1)
        h.executor.handle(got[0].message)
        h.queue.complete(got[0])
    run = control.request_cancel(h.store, h.queue, "run1")
    assert run.cancel_requested and run.status is RunStatus.RUNNING
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.CANCELLED and run.steps[0].state is StepState.CANCELLED
    assert h.backend.jobs["run1-extract-1"].cancelled
    assert len(h.backend.launches) == 1
    with pytest.raises(ConflictError, match="already cancelled"):
        control.request_cancel(h.store, h.queue, "run1")
    with pytest.raises(NotFoundError):
        control.request_cancel(h.store, h.queue, "ghost")


def test_rerun_a_failed_run_reuses_earlier_outputs() -> None:
    h = Harness(make_flow(params=TEMPLATED))
    h.backend.outcomes[("train", 1)] = StepStatus("failed", error="bad data")
    h.create()
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.FAILED and run.error == "step train failed: bad data"
    with pytest.raises(ValidationError) as err:
        control.request_rerun(h.store, h.queue, h.executor.flows, "run1", "score")
    assert err.value.field == "from_step" and "train" in err.value.message
    with pytest.raises(ValidationError) as err:
        control.request_rerun(h.store, h.queue, h.executor.flows, "run1", "nope")
    assert err.value.field == "from_step" and "extract, train, score" in err.value.message

    control.request_rerun(h.store, h.queue, h.executor.flows, "run1", None)
    (msg, _) = h.queue.sent[-1]
    assert (msg.kind, msg.from_step, msg.tick) == ("rerun", "train", 0)
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED and run.reruns == 1
    assert h.backend.launches == ["run1-extract-1", "run1-train-1", "run1-train-2", "run1-score-1"]
    assert h.backend.jobs["run1-train-2"].request.params["parameters"] == ["--in", "extract-1"]

    # delivering the same rerun again after it finished starts nothing
    h.executor.handle(msg)
    assert h.store.get("run1").status is RunStatus.SUCCEEDED and len(h.backend.launches) == 4


def test_rerun_of_an_active_run_is_a_conflict() -> None:
    h = Harness(make_flow())
    h.create()
    with pytest.raises(ConflictError, match="pending"):
        control.request_rerun(h.store, h.queue, h.executor.flows, "run1", None)


def test_from_services_wires_the_ports() -> None:
    from shared.wiring import Services

    backend = ScriptedBackend()
    flows = FlowsFile(flows={"demo": make_flow()})
    services = Services(
        store=MemoryRunStore(), queue=object(), flows=flows, telemetry=Recorder(), backends={"databricks": backend}
    )
    ex = Executor.from_services(services)
    assert ex.store is services.store and ex.flows is flows and ex.telemetry is services.telemetry
    assert ex.backend("databricks") is backend


def test_resume_stalled_restarts_a_run_whose_tick_was_lost() -> None:
    from datetime import timedelta

    h = Harness(make_flow(("a", "b")))
    h.backend.polls = 1
    h.create()
    got = h.queue.receive(1)
    h.executor.handle(got[0].message)  # start: launched, tick 1 sent
    h.queue.items.clear()  # ... and the tick is lost for good (dead-lettered)
    due = h.store.get("run1").due_at  # the tick's scheduled time
    assert due is not None and due > h.now()
    h.queue.advance((due - h.now()).total_seconds() + 35)
    assert h.executor.resume_stalled(grace_seconds=35) == []  # it may still come back (visibility timeout)
    h.queue.advance(1)
    assert h.executor.resume_stalled(grace_seconds=35) == ["run1"]  # overdue: not after a fixed 900 s
    nudged = h.store.get("run1")
    assert nudged.due_at is not None and nudged.due_at > h.now()  # the re-sent tick's deadline
    assert h.executor.resume_stalled(grace_seconds=35) == []  # and it is not nudged again meanwhile
    h.drain()
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED and len(h.backend.launches) == 2
    assert run.steps[0].stalled_seconds > 35  # the time it waited for the lost tick is not its own
    assert run.ended_at is not None and run.ended_at - run.created_at < timedelta(seconds=60)
