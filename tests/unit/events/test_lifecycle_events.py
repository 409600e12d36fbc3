"""Lifecycle events through the executor: which CloudEvents a run produces, and the guarantee.

In memory (MemoryOutbox, recording sinks): the engine's Emits become the issue's events with
run id, flow and trace id; ids are stable, so every duplicate carries the id already seen; a
crash between a save and its recording is repaired by the redelivery; an unavailable outbox
or a failing sink never fails the run; retries back off, permanent refusals drop only that
sink, and events expire after a day.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from azure.core.messaging import CloudEvent

from shared.backends.base import StepStatus
from shared.engine.executor import Executor
from shared.engine.model import Run, RunStatus
from shared.events import lifecycle
from shared.events.base import CloudEventJson, EventSink, Failure
from shared.events.publisher import MAX_AGE, LifecycleEvents
from shared.flows.model import Flow, FlowsFile
from tests.fakes import MemoryOutbox, MemoryRunStore, ScriptedBackend
from tests.unit.engine.support import T0, TRACEPARENT, Harness

GATE = {
    "decision": "promoted",
    "reason": "no champion yet",
    "metric": "r2",
    "direction": "maximize",
    "candidate": 0.91,
    "champion": None,
    "champion_version": None,
    "version": "3",
}


def model_flow() -> Flow:
    return Flow.model_validate(
        {
            "triggers": [{"kind": "manual"}],
            "model": {"name": "forecaster", "metric": "r2"},
            "steps": [
                {"name": "train", "kind": "databricks", "params": {"python_file": "jobs/train.py"}},
                {"name": "register", "kind": "register", "params": {"model_uri": "runs:/x/model"}},
                {"name": "deploy", "kind": "deploy"},
            ],
        }
    )


def outcomes(gate: dict[str, Any] = GATE) -> dict[tuple[str, int], StepStatus]:
    registered = {
        "model_name": "forecaster",
        "version": "3",
        "model_uri": "models:/forecaster/3",
        "metrics": {"r2": 0.91},
    }
    deployed = {
        "gate": gate,
        "decision": gate["decision"],
        "model_name": "forecaster",
        "version": "3",
        "endpoint": "demo",
        "scoring_url": "http://127.0.0.1:5088/score",
    }
    return {
        ("register", 1): StepStatus("succeeded", outputs=registered),
        ("deploy", 1): StepStatus("succeeded", outputs=deployed),
    }


class RecordingSink(EventSink):
    def __init__(self, name: str, fail: Failure | None = None, times: int = 0) -> None:
        self.name = name
        self.got: list[CloudEventJson] = []
        self.fail, self.times = fail, times

    def deliver(self, events: list[CloudEventJson]) -> dict[str, Failure]:
        if self.fail is not None and self.times > 0:
            self.times -= 1
            return {str(e["id"]): self.fail for e in events}
        self.got.extend(events)
        return {}

    @property
    def types(self) -> list[str]:
        return [str(e["type"]).removeprefix("conveyor.") for e in self.got]


def harness(flow: Flow, *sinks: EventSink, backend: ScriptedBackend | None = None) -> tuple[Harness, LifecycleEvents]:
    h = Harness(flow, backend=backend)
    events = LifecycleEvents(MemoryOutbox(), list(sinks) or [RecordingSink("log")], clock=h.now, background=False)
    h.executor.events = events
    return h, events


def test_a_model_run_publishes_the_issue_events_in_order_with_run_flow_and_trace() -> None:
    sink = RecordingSink("log")
    h, events = harness(model_flow(), sink, backend=ScriptedBackend(outcomes=outcomes()))
    h.create()
    h.drain()
    assert h.store.get("run1").status is RunStatus.SUCCEEDED
    events.deliver_due()
    assert sink.types == ["run.started", "model.registered", "gate.decided", "model.deployed", "run.succeeded"]
    for e in sink.got:
        assert e["specversion"] == "1.0" and e["source"] == "/conveyor/flows/demo"
        assert e["data"]["run_id"] == "run1" and e["data"]["flow"] == "demo"
        assert e["data"]["trace_id"] == TRACEPARENT.split("-")[1] and e["traceparent"] == TRACEPARENT
        parsed = CloudEvent.from_dict(dict(e))  # a valid CloudEvent for azure-core
        assert parsed.id == e["id"] and parsed.extensions == {"traceparent": TRACEPARENT}
    by = {t: e for t, e in zip(sink.types, sink.got, strict=True)}
    assert by["model.registered"]["data"]["model_uri"] == "models:/forecaster/3"
    assert by["model.registered"]["subject"] == "runs/run1/steps/register"
    assert by["gate.decided"]["data"]["decision"] == "promoted" and by["gate.decided"]["data"]["candidate"] == 0.91
    assert by["model.deployed"]["data"]["scoring_url"] == "http://127.0.0.1:5088/score"
    done = by["run.succeeded"]["data"]
    assert done["status"] == "succeeded" and done["model"] == {"name": "forecaster", "version": "3"}
    assert done["duration_seconds"] is not None and by["run.succeeded"]["subject"] == "runs/run1"
    assert len({e["id"] for e in sink.got}) == 5


def test_a_rejected_gate_is_decided_but_not_deployed() -> None:
    sink = RecordingSink("log")
    rejected = {**GATE, "decision": "rejected", "reason": "worse than the champion", "champion": 0.95}
    h, events = harness(model_flow(), sink, backend=ScriptedBackend(outcomes=outcomes(rejected)))
    h.create()
    h.drain()
    events.deliver_due()
    assert sink.types == ["run.started", "model.registered", "gate.decided", "run.succeeded"]
    assert sink.got[2]["data"]["decision"] == "rejected"


def test_a_failed_step_and_run_carry_the_error() -> None:
    sink = RecordingSink("log")
    backend = ScriptedBackend(
        outcomes={("train", 1): StepStatus("failed", error="[blob] missing: ${x}", retryable=False)}
    )
    h, events = harness(model_flow(), sink, backend=backend)
    h.create()
    h.drain()
    events.deliver_due()
    assert sink.types == ["run.started", "step.failed", "run.failed"]
    step = sink.got[1]["data"]
    assert (step["step"], step["attempt"], step["error"], step["retryable"]) == (
        "train",
        1,
        "[blob] missing: ${x}",
        False,
    )
    assert sink.got[2]["data"]["error"] == "step train failed: [blob] missing: ${x}"


def test_ids_are_the_same_from_the_emit_and_from_the_state_and_change_with_a_rerun() -> None:
    h, _ = harness(model_flow(), backend=ScriptedBackend(outcomes=outcomes()))
    h.create()
    h.drain()
    run = h.store.get("run1")
    state = lifecycle.from_state(run)
    assert state == lifecycle.from_state(run)
    assert lifecycle.from_emit(run, "run.finished", {"status": "succeeded"}) == [state[-1]]
    assert [e["type"] for e in lifecycle.from_emit(run, "step.succeeded", {"step": "deploy"})] == [
        "conveyor.gate.decided",
        "conveyor.model.deployed",
    ]
    assert lifecycle.from_emit(run, "step.launched", {"step": "train"}) == []
    again = run.model_copy(update={"reruns": 1})
    assert {e["id"] for e in lifecycle.from_state(again)}.isdisjoint(e["id"] for e in state)


class CrashAfterSave(MemoryRunStore):
    """Saves, then 'dies' (raises) right after the save that finishes a run: its Emits never run."""

    def __init__(self) -> None:
        super().__init__()
        self.crashes = 1

    def save(self, run: Run) -> Run:
        saved = super().save(run)
        if saved.status.terminal and self.crashes:
            self.crashes -= 1
            raise SystemExit("the host died after the save")
        return saved


def test_a_crash_between_the_save_and_its_events_is_repaired_by_the_redelivery() -> None:
    sink = RecordingSink("log")
    h, events = harness(model_flow(), sink, backend=ScriptedBackend(outcomes=outcomes()))
    h.store = store = CrashAfterSave()
    h.executor.store = store
    h.create()
    with pytest.raises(SystemExit):
        h.drain()
    assert store.get("run1").status is RunStatus.SUCCEEDED
    events.deliver_due()
    assert "run.succeeded" not in sink.types and "model.deployed" not in sink.types  # lost with the host
    delivered_before = list(sink.types)
    [left] = [q for q in h.queue.items]  # the message being handled when it died comes back
    h.queue.advance(3600)
    h.drain()
    events.deliver_due()
    assert sink.types[len(delivered_before) :] == ["gate.decided", "model.deployed", "run.succeeded"]
    h.executor.handle(left.message, delivery_count=3)  # yet another redelivery: nothing twice
    events.deliver_due()
    assert sorted(sink.types) == sorted(set(sink.types))


def test_an_unavailable_outbox_or_a_failing_sink_never_fails_the_run() -> None:
    class Exploding(EventSink):
        name = "boom"

        def deliver(self, events: list[CloudEventJson]) -> dict[str, Failure]:
            raise RuntimeError("sink bug")

    sink = RecordingSink("log")
    h, events = harness(model_flow(), sink, Exploding(), backend=ScriptedBackend(outcomes=outcomes()))
    outbox = events.outbox
    assert isinstance(outbox, MemoryOutbox)
    outbox.fail_adds = 2  # run.started and model.registered cannot be written when they happen
    h.create()
    h.drain()
    assert h.store.get("run1").status is RunStatus.SUCCEEDED
    events.deliver_due()  # writes the held events first, then delivers
    assert sorted(sink.types) == sorted(
        ["run.started", "model.registered", "gate.decided", "model.deployed", "run.succeeded"]
    )
    assert all("boom" in e.pending for e in outbox.rows.values())  # the raising sink retries


def test_retries_back_off_permanent_refusals_drop_one_sink_and_old_events_expire() -> None:
    flaky = RecordingSink("flaky", Failure("503"), times=2)
    refusing = RecordingSink("refusing", Failure("400 bad event", retryable=False), times=99)
    steady = RecordingSink("steady")
    clock = [T0]
    outbox = MemoryOutbox()
    events = LifecycleEvents(outbox, [flaky, refusing, steady], clock=lambda: clock[0], background=False)
    event = {"id": "e1", "type": "conveyor.run.started", "time": lifecycle.iso(T0), "data": {}}
    outbox.add([event], ["flaky", "refusing", "steady", "removed"], T0)
    report = events.deliver_due()
    assert report.retrying == 1 and [d[1] for d in report.dropped] == ["refusing", "removed"]
    assert outbox.rows["e1"].pending == ["flaky"] and outbox.rows["e1"].next_at == T0 + timedelta(seconds=1)
    assert len(steady.got) == 1 and refusing.got == []
    assert events.deliver_due().retrying == 0  # not due yet: nothing is sent
    clock[0] = T0 + timedelta(seconds=1)
    events.deliver_due()
    assert outbox.rows["e1"].next_at == clock[0] + timedelta(seconds=2)  # doubled
    clock[0] += timedelta(seconds=2)
    assert events.deliver_due().delivered == 1 and len(flaky.got) == 1 and len(steady.got) == 1
    assert "e1" in outbox.delivered and outbox.rows == {}
    # an event no sink takes for a day is kept as expired
    down = RecordingSink("down", Failure("timeout"), times=10**6)
    old = LifecycleEvents(MemoryOutbox(), [down], clock=lambda: clock[0], background=False)
    old.outbox.add([{**event, "id": "e2"}], ["down"], clock[0])
    clock[0] += MAX_AGE
    assert old.deliver_due().expired == 1


def test_the_executor_without_events_is_unchanged() -> None:
    h = Harness(model_flow(), backend=ScriptedBackend(outcomes=outcomes()))
    assert h.executor.events is None
    h.create()
    h.drain()
    assert h.store.get("run1").status is RunStatus.SUCCEEDED
    assert Executor(h.store, h.queue, FlowsFile(flows={"demo": model_flow()}), lambda k: h.backend).events is None
