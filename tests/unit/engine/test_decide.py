"""decide(): one test per rule, driven through the pure function alone."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shared.backends.base import LaunchResult, StepStatus
from shared.engine.commands import Cancel, Emit, Launch, Poll, Send, StartQueued
from shared.engine.decide import (
    Decision,
    Event,
    Incoming,
    Launched,
    LaunchFailed,
    Polled,
    PollFailed,
    decide,
    tick_message,
)
from shared.engine.model import Message, Run, RunStatus, StepState, idempotency_key
from shared.flows.model import Flow
from tests.unit.engine.support import T0, make_flow, make_run, start


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def of(decision: Decision, kind: type) -> list:
    return [c for c in decision.commands if isinstance(c, kind)]


def emitted(decision: Decision) -> list[str]:
    return [c.name for c in decision.commands if isinstance(c, Emit)]


def apply(run: Run, flow: Flow, event: Event, now: datetime = T0) -> Decision:
    d = decide(run, flow, event, now)
    return d


def running_step(flow: Flow, *, now: datetime = T0) -> Run:
    """A run whose first step is launched and waiting for tick 1."""
    run = make_run(flow)
    run = apply(run, flow, Incoming(start(run)), now).run
    first = run.steps[0]
    return apply(run, flow, Launched(first.name, 1, LaunchResult("job-1")), now).run


def the_tick(run: Run, step: str) -> Message:
    return tick_message(run, run.step(step))


# ---------------------------------------------------------------- start


def test_start_launches_first_step_with_recorded_key() -> None:
    flow = make_flow()
    run = make_run(flow)
    d = apply(run, flow, Incoming(start(run)))
    assert d.changed
    assert d.run.status is RunStatus.RUNNING and d.run.started_at == T0
    first = d.run.steps[0]
    assert first.state is StepState.LAUNCHING and first.attempt == 1
    assert first.key == idempotency_key("run1", "extract", 1)
    assert of(d, Launch) == [Launch("extract", 1, first.key)]
    assert "run.started" in emitted(d)
    assert [s.state for s in d.run.steps[1:]] == [StepState.PENDING, StepState.PENDING]


def test_duplicate_start_of_a_running_run_is_a_no_op() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Incoming(start(run)))
    assert not d.changed and d.commands == []
    assert d.run == run


def test_start_redelivered_while_launching_relaunches_the_same_key() -> None:
    flow = make_flow()
    run = make_run(flow)
    launching = apply(run, flow, Incoming(start(run))).run
    d = apply(launching, flow, Incoming(start(run)))
    assert not d.changed
    assert of(d, Launch) == [Launch("extract", 1, idempotency_key("run1", "extract", 1))]
    assert d.run.steps[0].attempt == 1


def test_start_beyond_max_concurrent_runs_queues_the_run() -> None:
    flow = make_flow(max_concurrent_runs=2)
    run = make_run(flow)
    d = apply(run, flow, Incoming(start(run), active_runs=2))
    assert d.changed and d.run.status is RunStatus.QUEUED
    assert of(d, Launch) == []
    # still full: stays queued, nothing to save
    again = apply(d.run, flow, Incoming(start(run), active_runs=2))
    assert not again.changed and of(again, Launch) == []
    # a slot freed (StartQueued re-sent the start): runs
    freed = apply(d.run, flow, Incoming(start(run), active_runs=1))
    assert freed.run.status is RunStatus.RUNNING
    assert of(freed, Launch) == [Launch("extract", 1, idempotency_key("run1", "extract", 1))]


def test_finishing_a_run_releases_a_slot() -> None:
    flow = make_flow(("only",), max_concurrent_runs=1)
    run = running_step(flow)
    d = apply(run, flow, Polled("only", 1, StepStatus("succeeded")))
    assert d.run.status is RunStatus.SUCCEEDED
    assert of(d, StartQueued) == [StartQueued("demo")]


# ---------------------------------------------------------------- launch, tick, poll


def test_launched_schedules_the_first_tick() -> None:
    flow = make_flow(poll={"initial_seconds": 3, "multiplier": 2, "max_seconds": 20})
    run = make_run(flow)
    run = apply(run, flow, Incoming(start(run))).run
    d = apply(run, flow, Launched("extract", 1, LaunchResult("job-1", url="http://x/1")))
    step = d.run.steps[0]
    assert step.state is StepState.RUNNING and step.remote_id == "job-1" and step.remote_url == "http://x/1"
    assert step.tick == 1
    sends = of(d, Send)
    assert len(sends) == 1
    msg = sends[0].message
    assert (msg.kind, msg.step, msg.attempt, msg.tick) == ("tick", "extract", 1, 1)
    assert msg.traceparent == run.traceparent
    assert sends[0].delay_seconds == 3
    assert "step.launched" in emitted(d)


def test_stale_launched_is_ignored() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Launched("extract", 1, LaunchResult("job-other")))
    assert not d.changed and d.commands == [] and d.run.steps[0].remote_id == "job-1"
    d = apply(run, flow, Launched("extract", 7, LaunchResult("job-other")))
    assert not d.changed and d.commands == []


def test_only_the_current_tick_polls() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Incoming(the_tick(run, "extract")))
    assert of(d, Poll) == [Poll("extract", 1, "job-1")]
    assert not d.changed
    stale = Message(kind="tick", run_id="run1", flow="demo", step="extract", attempt=1, tick=0)
    assert apply(run, flow, Incoming(stale)).commands == []
    wrong_attempt = Message(kind="tick", run_id="run1", flow="demo", step="extract", attempt=2, tick=1)
    assert apply(run, flow, Incoming(wrong_attempt)).commands == []
    other_step = Message(kind="tick", run_id="run1", flow="demo", step="train", attempt=1, tick=1)
    assert apply(run, flow, Incoming(other_step)).commands == []


def test_polls_back_off_up_to_the_cap() -> None:
    flow = make_flow(poll={"initial_seconds": 2, "multiplier": 2, "max_seconds": 10})
    run = running_step(flow)
    delays = []
    for i in range(5):
        d = apply(run, flow, Polled("extract", 1, StepStatus("running", progress={"done": i, "total": 5})), at(i))
        run = d.run
        assert run.steps[0].polls == i + 1 and run.steps[0].tick == i + 2
        assert run.steps[0].progress == {"done": i, "total": 5}
        (send,) = of(d, Send)
        assert send.message.tick == run.steps[0].tick
        delays.append(send.delay_seconds)
    assert delays == [4, 8, 10, 10, 10]


def test_success_saves_outputs_and_launches_the_next_step() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("succeeded", outputs={"uri": "blob://x"})), at(30))
    first, second = d.run.steps[0], d.run.steps[1]
    assert first.state is StepState.SUCCEEDED and first.outputs == {"uri": "blob://x"} and first.ended_at == at(30)
    assert second.state is StepState.LAUNCHING and second.attempt == 1
    assert of(d, Launch) == [Launch("train", 1, idempotency_key("run1", "train", 1))]
    assert d.run.status is RunStatus.RUNNING
    assert "step.succeeded" in emitted(d)


def test_last_step_success_finishes_the_run() -> None:
    flow = make_flow(("a", "b"))
    run = running_step(flow)
    run = apply(run, flow, Polled("a", 1, StepStatus("succeeded"))).run
    run = apply(run, flow, Launched("b", 1, LaunchResult("job-b"))).run
    d = apply(run, flow, Polled("b", 1, StepStatus("succeeded", outputs={"n": 1})), at(99))
    assert d.run.status is RunStatus.SUCCEEDED and d.run.ended_at == at(99) and d.run.error is None
    assert of(d, StartQueued) == [StartQueued("demo")]
    assert "run.finished" in emitted(d)
    assert of(d, Launch) == []


def test_gate_output_is_copied_to_the_run() -> None:
    flow = make_flow(("deploy",))
    run = running_step(flow)
    gate = {"promoted": False, "reason": "r2 0.7 <= champion 0.8"}
    d = apply(run, flow, Polled("deploy", 1, StepStatus("succeeded", outputs={"gate": gate})))
    assert d.run.gate == gate


# ---------------------------------------------------------------- failures and retries


def test_retryable_failure_waits_then_launches_a_new_attempt() -> None:
    flow = make_flow(retries={"count": 2, "backoff_seconds": 10, "multiplier": 3})
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("failed", error="503", retryable=True)), at(5))
    step = d.run.steps[0]
    assert step.state is StepState.RETRY_WAIT and step.error == "503" and step.error_retryable is True
    assert step.history[-1]["attempt"] == 1 and step.history[-1]["error"] == "503"
    (send,) = of(d, Send)
    assert send.delay_seconds == 10 and send.message.tick == step.tick
    assert "step.retrying" in emitted(d)
    assert d.run.status is RunStatus.RUNNING
    # the retry tick launches attempt 2 with a new key
    d2 = apply(d.run, flow, Incoming(send.message), at(15))
    step = d2.run.steps[0]
    assert step.state is StepState.LAUNCHING and step.attempt == 2
    assert of(d2, Launch) == [Launch("extract", 2, idempotency_key("run1", "extract", 2))]
    assert step.started_at == at(15)
    # second failure backs off longer
    run = apply(d2.run, flow, Launched("extract", 2, LaunchResult("job-2"))).run
    d3 = apply(run, flow, Polled("extract", 2, StepStatus("failed", error="503", retryable=True)))
    assert of(d3, Send)[0].delay_seconds == 30
    # the third failure exhausts count=2
    run = apply(d3.run, flow, Incoming(of(d3, Send)[0].message)).run
    run = apply(run, flow, Launched("extract", 3, LaunchResult("job-3"))).run
    d4 = apply(run, flow, Polled("extract", 3, StepStatus("failed", error="503", retryable=True)))
    assert d4.run.status is RunStatus.FAILED and d4.run.steps[0].state is StepState.FAILED
    assert d4.run.error == "step extract failed: 503"
    assert [h["attempt"] for h in d4.run.steps[0].history] == [1, 2, 3]


def test_permanent_failure_is_not_retried_by_default() -> None:
    flow = make_flow(retries={"count": 3})
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("failed", error="bad input", retryable=False)))
    assert d.run.status is RunStatus.FAILED
    assert d.run.error == "step extract failed: bad input"
    assert of(d, StartQueued) == [StartQueued("demo")]
    assert "step.failed" in emitted(d) and "run.finished" in emitted(d)


def test_retries_on_any_retries_permanent_failures() -> None:
    flow = make_flow(retries={"count": 1, "on": "any"})
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("failed", error="bad input", retryable=False)))
    assert d.run.steps[0].state is StepState.RETRY_WAIT


def test_launch_failure_permanent_and_retryable() -> None:
    flow = make_flow(retries={"count": 1})
    run = make_run(flow)
    launching = apply(run, flow, Incoming(start(run))).run
    d = apply(launching, flow, LaunchFailed("extract", 1, "throttled", True))
    step = d.run.steps[0]  # retryable: the same key again after the poll backoff (it reattaches)
    assert (step.state, step.attempt, step.key, step.tick) == (StepState.LAUNCHING, 1, "run1-extract-1", 1)
    assert [c.message.tick for c in of(d, Send)] == [1]
    d = apply(launching, flow, LaunchFailed("extract", 1, "unknown ref", False))
    assert d.run.status is RunStatus.FAILED and "unknown ref" in (d.run.error or "")
    # a launch failure for another attempt is stale
    assert not apply(launching, flow, LaunchFailed("extract", 2, "x", False)).changed


def test_transient_poll_failure_polls_again_without_burning_an_attempt() -> None:
    flow = make_flow(retries={"count": 0})
    run = running_step(flow)
    d = apply(run, flow, PollFailed("extract", 1, "connection reset", True), at(10))
    step = d.run.steps[0]
    assert step.state is StepState.RUNNING and step.attempt == 1 and step.tick == 2
    assert [c.message.tick for c in of(d, Send)] == [2]
    d = apply(run, flow, PollFailed("extract", 1, "404 job gone", False))
    assert d.run.status is RunStatus.FAILED
    assert of(d, Cancel) == [Cancel("extract", "job-1")]


def test_timeout_cancels_the_job_and_retries() -> None:
    flow = make_flow(timeout_seconds=60, retries={"count": 1, "backoff_seconds": 5})
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("running")), at(30))
    assert d.run.steps[0].state is StepState.RUNNING
    d = apply(d.run, flow, Polled("extract", 1, StepStatus("running")), at(61))
    step = d.run.steps[0]
    assert of(d, Cancel) == [Cancel("extract", "job-1")]
    assert step.state is StepState.RETRY_WAIT and step.error == "timed out after 60s" and step.error_retryable
    # transient poll errors do not outlive the timeout either
    d = apply(run, flow, PollFailed("extract", 1, "503", True), at(120))
    assert of(d, Cancel) == [Cancel("extract", "job-1")] and d.run.steps[0].state is StepState.RETRY_WAIT


def test_timeout_without_retries_fails_the_run() -> None:
    flow = make_flow(timeout_seconds=60)
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("running")), at(61))
    assert d.run.status is RunStatus.FAILED and d.run.error == "step extract failed: timed out after 60s"


# ---------------------------------------------------------------- cancel


def cancel_msg(run: Run, tick: int | None = None) -> Message:
    return Message(kind="cancel", run_id=run.run_id, flow=run.flow, tick=tick)


def test_cancel_running_run_cancels_the_remote_job() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Incoming(cancel_msg(run)), at(7))
    assert d.run.status is RunStatus.CANCELLED and d.run.cancel_requested and d.run.ended_at == at(7)
    assert d.run.steps[0].state is StepState.CANCELLED
    assert of(d, Cancel) == [Cancel("extract", "job-1")]
    assert of(d, StartQueued) == [StartQueued("demo")]
    # cancelled runs ignore everything after
    assert apply(d.run, flow, Incoming(cancel_msg(run))).commands == []
    assert not apply(d.run, flow, Polled("extract", 1, StepStatus("succeeded"))).changed


def test_cancel_pending_or_queued_has_no_side_effects() -> None:
    flow = make_flow(max_concurrent_runs=1)
    run = make_run(flow)
    queued = apply(run, flow, Incoming(start(run), active_runs=1)).run
    for r in (run, queued):
        d = apply(r, flow, Incoming(cancel_msg(r)))
        assert d.run.status is RunStatus.CANCELLED
        assert of(d, Cancel) == [] and of(d, StartQueued) == [] and of(d, Launch) == []
    # a later start does not revive it
    cancelled = apply(run, flow, Incoming(cancel_msg(run))).run
    assert apply(cancelled, flow, Incoming(start(run))).commands == []


def test_launch_that_lands_after_cancel_is_stopped() -> None:
    flow = make_flow()
    run = make_run(flow)
    launching = apply(run, flow, Incoming(start(run))).run
    cancelled = apply(launching, flow, Incoming(cancel_msg(run))).run
    assert cancelled.steps[0].state is StepState.CANCELLED
    d = apply(cancelled, flow, Launched("extract", 1, LaunchResult("job-late")))
    assert of(d, Cancel) == [Cancel("extract", "job-late")]
    assert d.run.status is RunStatus.CANCELLED


def test_cancel_requested_on_the_run_wins_over_a_tick() -> None:
    flow = make_flow()
    run = running_step(flow)
    run.cancel_requested = True
    d = apply(run, flow, Incoming(the_tick(run, "extract")))
    assert d.run.status is RunStatus.CANCELLED and of(d, Poll) == []
    assert of(d, Cancel) == [Cancel("extract", "job-1")]


def test_cancel_for_an_earlier_life_of_the_run_is_ignored() -> None:
    flow = make_flow()
    run = running_step(flow)
    run.reruns = 1
    assert not apply(run, flow, Incoming(cancel_msg(run, tick=0))).changed
    assert apply(run, flow, Incoming(cancel_msg(run, tick=1))).run.status is RunStatus.CANCELLED


# ---------------------------------------------------------------- rerun


def failed_at_train(flow: Flow) -> Run:
    run = running_step(flow)
    run = apply(run, flow, Polled("extract", 1, StepStatus("succeeded", outputs={"uri": "u1"}))).run
    run = apply(run, flow, Launched("train", 1, LaunchResult("job-t1"))).run
    run = apply(run, flow, Polled("train", 1, StepStatus("failed", error="oom"))).run
    assert run.status is RunStatus.FAILED
    return run


def rerun_msg(run: Run, from_step: str | None, tick: int | None = None) -> Message:
    return Message(kind="rerun", run_id=run.run_id, flow=run.flow, from_step=from_step, tick=tick)


def test_rerun_keeps_earlier_outputs_and_relaunches_with_a_new_key() -> None:
    flow = make_flow()
    run = failed_at_train(flow)
    d = apply(run, flow, Incoming(rerun_msg(run, "train", tick=0)), at(500))
    assert d.run.status is RunStatus.RUNNING and d.run.reruns == 1 and d.run.error is None
    extract, train, score = d.run.steps
    assert extract.state is StepState.SUCCEEDED and extract.outputs == {"uri": "u1"}
    assert train.state is StepState.LAUNCHING and train.attempt == 2
    assert train.key == idempotency_key("run1", "train", 2) != idempotency_key("run1", "train", 1)
    assert train.history and train.history[0]["error"] == "oom"
    assert score.state is StepState.PENDING
    assert of(d, Launch) == [Launch("train", 2, train.key)]
    # the same rerun delivered again does nothing
    assert not apply(d.run, flow, Incoming(rerun_msg(run, "train", tick=0))).changed


def test_rerun_defaults_to_the_first_unfinished_step() -> None:
    flow = make_flow()
    run = failed_at_train(flow)
    d = apply(run, flow, Incoming(rerun_msg(run, None)))
    assert of(d, Launch)[0].step == "train"


def test_rerun_from_an_earlier_step_resets_it_and_later_ones() -> None:
    flow = make_flow()
    run = failed_at_train(flow)
    d = apply(run, flow, Incoming(rerun_msg(run, "extract")))
    assert [s.state for s in d.run.steps] == [StepState.LAUNCHING, StepState.PENDING, StepState.PENDING]
    assert d.run.steps[0].outputs == {} and d.run.steps[0].attempt == 2


@pytest.mark.parametrize("from_step", ["score", "nope"])
def test_rerun_refuses_unknown_steps_and_skipping_unfinished_ones(from_step: str) -> None:
    flow = make_flow()
    run = failed_at_train(flow)
    d = apply(run, flow, Incoming(rerun_msg(run, from_step)))
    assert not d.changed and d.commands == []


def test_rerun_of_an_active_run_is_a_no_op() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Incoming(rerun_msg(run, "extract")))
    assert not d.changed and d.commands == []


def test_rerun_respects_max_concurrent_runs() -> None:
    flow = make_flow(max_concurrent_runs=1)
    run = failed_at_train(flow)
    d = apply(run, flow, Incoming(rerun_msg(run, "train"), active_runs=1))
    assert d.run.status is RunStatus.QUEUED and of(d, Launch) == []
    d = apply(d.run, flow, Incoming(start(run), active_runs=0))
    assert of(d, Launch) == [Launch("train", 2, idempotency_key("run1", "train", 2))]


# ---------------------------------------------------------------- crash recovery


def test_redelivered_stale_message_resends_the_current_tick() -> None:
    flow = make_flow()
    run = make_run(flow)
    launching = apply(run, flow, Incoming(start(run))).run
    running = apply(launching, flow, Launched("extract", 1, LaunchResult("job-1"))).run
    # the handler saved RUNNING, then crashed before sending tick 1; the start comes back
    d = apply(running, flow, Incoming(start(run), redelivered=True))
    assert not d.changed
    assert [c.message for c in of(d, Send)] == [the_tick(running, "extract")]
    # a first delivery of the same stale message does nothing (duplicates die out)
    assert apply(running, flow, Incoming(start(run))).commands == []


def test_redelivered_tick_after_retry_wait_relaunches_the_saved_key() -> None:
    flow = make_flow(retries={"count": 1})
    run = running_step(flow)
    waiting = apply(run, flow, Polled("extract", 1, StepStatus("failed", retryable=True))).run
    retry_tick = the_tick(waiting, "extract")
    launching = apply(waiting, flow, Incoming(retry_tick)).run
    d = apply(launching, flow, Incoming(retry_tick, redelivered=True))
    assert not d.changed
    assert of(d, Launch) == [Launch("extract", 2, idempotency_key("run1", "extract", 2))]


def test_redelivered_message_of_a_finished_run_releases_a_slot() -> None:
    flow = make_flow(("only",), max_concurrent_runs=1)
    run = running_step(flow)
    done = apply(run, flow, Polled("only", 1, StepStatus("succeeded"))).run
    d = apply(done, flow, Incoming(the_tick(run, "only"), redelivered=True))
    assert of(d, StartQueued) == [StartQueued("demo")] and not d.changed


def test_step_missing_from_a_changed_flow_fails_the_run() -> None:
    flow = make_flow(("a", "b"))
    run = running_step(flow)
    shrunk = make_flow(("a",))
    run = apply(run, shrunk, Polled("a", 1, StepStatus("succeeded"))).run
    assert run.status is RunStatus.FAILED and "not in flow" in (run.error or "")
