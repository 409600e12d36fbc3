"""Stall recovery rules in ``decide`` (pure): deadlines, overdue runs, stall time, launch retries, re-runs.

Every waiting unit records when the message it waits on is due; a run is overdue once its
deadline plus the grace (the queue's visibility timeout and a margin) has passed; time spent
waiting past a deadline is not counted against the step's timeout; a retryable launch failure
launches the same key again; a backend's re-run after host loss is written into the history.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.backends.base import LaunchResult, StepStatus
from shared.engine.attempts import HOST_LOSS_RERUN, STALL_TOLERANCE_SECONDS
from shared.engine.commands import Cancel, Launch, Send
from shared.engine.decide import (
    Incoming,
    Launched,
    LaunchFailed,
    Polled,
    overdue,
    pending_due,
    planned_start,
    resent_due,
)
from shared.engine.model import Run, RunStatus, StepState
from tests.unit.engine.support import T0, make_flow, make_run, start
from tests.unit.engine.test_decide import apply, at, emitted, of, running_step, the_tick

GRACE = 35.0
IDLE = 900.0


def test_a_launch_is_due_now_and_a_tick_when_it_is_scheduled() -> None:
    flow = make_flow(poll={"initial_seconds": 4, "multiplier": 2, "max_seconds": 60})
    run = make_run(flow)
    launching = apply(run, flow, Incoming(start(run)), at(1)).run
    assert launching.steps[0].due_at == at(1) == launching.due_at  # the Launched observation is due now
    running = apply(launching, flow, Launched("extract", 1, LaunchResult("job-1")), at(2)).run
    assert running.steps[0].due_at == at(6) == running.due_at  # tick 1, sent with the first poll delay
    polled = apply(running, flow, Incoming(the_tick(running, "extract")), at(6))
    again = apply(polled.run, flow, Polled("extract", 1, StepStatus("running")), at(6)).run
    assert again.due_at == at(6 + 8)
    done = apply(again, flow, Polled("extract", 1, StepStatus("succeeded")), at(14)).run
    assert done.steps[0].due_at is None and done.due_at == at(14)  # the next step's launch is due now


def test_a_run_is_overdue_once_its_deadline_and_the_grace_have_passed() -> None:
    flow = make_flow()
    run = running_step(flow)
    assert run.due_at is not None
    assert not overdue(run, run.due_at + timedelta(seconds=GRACE), GRACE, IDLE)  # it may still come back
    assert overdue(run, run.due_at + timedelta(seconds=GRACE + 0.001), GRACE, IDLE)
    queued = run.model_copy(update={"status": RunStatus.QUEUED})
    done = run.model_copy(update={"status": RunStatus.SUCCEEDED})
    later = run.due_at + timedelta(days=1)
    assert not overdue(queued, later, GRACE, IDLE) and not overdue(done, later, GRACE, IDLE)


def test_a_running_run_without_a_deadline_waits_for_the_idle_bound() -> None:
    run = running_step(make_flow()).model_copy(update={"due_at": None})  # e.g. only a fan-out is active
    assert not overdue(run, run.updated_at + timedelta(seconds=IDLE), GRACE, IDLE)
    assert overdue(run, run.updated_at + timedelta(seconds=IDLE + 1), GRACE, IDLE)


def test_a_run_with_only_fan_outs_active_goes_by_its_instances_earliest_deadline() -> None:
    run = running_step(make_flow()).model_copy(update={"due_at": None})
    due = run.updated_at + timedelta(seconds=IDLE * 3)  # instances ticking long after the run's last save
    assert not overdue(run, due + timedelta(seconds=GRACE), GRACE, IDLE, instances_due=due)
    assert overdue(run, due + timedelta(seconds=GRACE + 0.001), GRACE, IDLE, instances_due=due)
    own = run.model_copy(update={"due_at": due + timedelta(days=1)})  # the run's own deadline comes first
    assert not overdue(own, due + timedelta(seconds=GRACE + 1), GRACE, IDLE, instances_due=due)


@given(st.floats(0, 10_000), st.floats(0, 10_000), st.floats(0, 100))
@settings(max_examples=200, deadline=None)
def test_an_instance_deadline_is_judged_like_the_run_s_own(due_after: float, now_after: float, grace: float) -> None:
    base = running_step(make_flow())
    due = base.updated_at + timedelta(seconds=due_after)
    now = base.updated_at + timedelta(seconds=now_after)
    by_instances = overdue(base.model_copy(update={"due_at": None}), now, grace, IDLE, instances_due=due)
    assert by_instances == overdue(base.model_copy(update={"due_at": due}), now, grace, IDLE)


def test_a_pending_run_is_due_at_its_planned_start_then_at_its_resent_start() -> None:
    flow = make_flow()
    run = make_run(flow)
    run.trigger = run.trigger.model_copy(update={"kind": "blob", "blob": {"url": "u", "settle_seconds": 60}})
    assert planned_start(run) == pending_due(run) == T0 + timedelta(seconds=60)
    assert not overdue(run, T0 + timedelta(seconds=60 + GRACE), GRACE, IDLE)  # still settling, then grace
    assert overdue(run, T0 + timedelta(seconds=61 + GRACE), GRACE, IDLE)
    resent = run.model_copy(update={"due_at": resent_due(planned_start(run), at(100))})
    assert resent.due_at == at(140) and pending_due(resent) == at(140)


@settings(max_examples=200, deadline=None)
@given(
    first=st.floats(min_value=0, max_value=1e5),
    waits=st.lists(st.floats(min_value=GRACE, max_value=1e5), min_size=1, max_size=6),
)
def test_resent_starts_are_spaced_ever_wider(first: float, waits: list[float]) -> None:
    """Each re-send's deadline is at least as far from the send as the whole wait before it."""
    planned = T0 + timedelta(seconds=first)
    now, gaps = planned, []
    for wait in waits:
        now = now + timedelta(seconds=wait)
        due = resent_due(planned, now)
        assert due - now == now - planned
        gaps.append((due - now).total_seconds())
        now = due
    assert gaps == sorted(gaps)


def test_time_past_a_deadline_is_stall_time_not_the_steps() -> None:
    flow = make_flow(timeout_seconds=60, poll={"initial_seconds": 5, "multiplier": 1, "max_seconds": 5})
    run = running_step(flow, now=at(0))  # launched at 0, tick 1 due at 5
    late = the_tick(run, "extract")
    d = apply(run, flow, Incoming(late), at(305))  # the host was down for five minutes
    assert d.changed and of(d, Launch) == [] and d.run.steps[0].stalled_seconds == 300
    # the poll: 305 s since the attempt began, 300 of them stalled: not timed out
    polled = apply(d.run, flow, Polled("extract", 1, StepStatus("running")), at(305))
    assert polled.run.steps[0].state is StepState.RUNNING and of(polled, Cancel) == []
    # a redelivery of the same late tick does not count the stall twice
    again = apply(d.run, flow, Incoming(late, redelivered=True), at(306))
    assert again.run.steps[0].stalled_seconds == 300
    # the step's own time still runs out: 61 s of its own
    out = apply(polled.run, flow, Polled("extract", 1, StepStatus("running")), at(305 + 62))
    assert out.run.steps[0].state is not StepState.RUNNING and of(out, Cancel) == [Cancel("extract", "job-1")]
    assert out.run.steps[0].history[-1]["stalled_seconds"] == 300


def test_a_tick_on_time_is_not_a_stall() -> None:
    flow = make_flow(poll={"initial_seconds": 5, "multiplier": 1, "max_seconds": 5})
    run = running_step(flow, now=at(0))
    d = apply(run, flow, Incoming(the_tick(run, "extract")), at(5 + STALL_TOLERANCE_SECONDS))
    assert not d.changed and d.run.steps[0].stalled_seconds == 0


def test_a_nudge_reissues_what_the_run_waits_on_and_saves_its_new_deadline() -> None:
    flow = make_flow(poll={"initial_seconds": 5, "multiplier": 1, "max_seconds": 5})
    run = running_step(flow, now=at(0))  # tick 1 due at 5; it was lost
    d = apply(run, flow, Incoming(start(run), redelivered=True), at(50))  # the sweep's redelivered-style start
    # a new tick, so a new message id: a broker that remembers the lost tick's id would drop a re-send
    (resent,) = of(d, Send)
    assert (
        d.changed
        and resent.message.tick == 2
        and resent.message.with_id().message_id != the_tick(run, "extract").with_id().message_id
    )
    assert d.run.due_at == at(55) and d.run.steps[0].stalled_seconds == 45
    assert not overdue(d.run, at(80), GRACE, IDLE)  # not nudged again before the re-sent tick is overdue
    late = apply(d.run, flow, Incoming(the_tick(run, "extract")), at(51))  # the lost one turns up after all
    assert not late.changed and not of(late, Send)  # stale: only the re-sent tick polls


def test_a_retryable_launch_failure_launches_the_same_key_again_until_the_timeout() -> None:
    flow = make_flow(timeout_seconds=100, retries={"count": 0}, poll={"initial_seconds": 2, "multiplier": 2})
    run = make_run(flow)
    launching = apply(run, flow, Incoming(start(run)), at(0)).run
    d = apply(launching, flow, LaunchFailed("extract", 1, "503 Server Busy", True), at(1))
    step = d.run.steps[0]
    assert (step.state, step.attempt, step.key) == (StepState.LAUNCHING, 1, "run1-extract-1")
    assert [(c.message.tick, c.delay_seconds) for c in of(d, Send)] == [(1, 2.0)]
    assert "step.launch_retrying" in emitted(d) and d.run.status is RunStatus.RUNNING
    again = apply(d.run, flow, Incoming(the_tick(d.run, "extract")), at(3))
    assert of(again, Launch) == [Launch("extract", 1, "run1-extract-1")]  # the same key: it reattaches
    second = apply(d.run, flow, LaunchFailed("extract", 1, "timeout", True), at(4))
    assert [c.delay_seconds for c in of(second, Send)] == [4.0]  # backing off
    late = apply(d.run, flow, LaunchFailed("extract", 1, "503 Server Busy", True), at(101))
    assert late.run.status is RunStatus.FAILED and "503" in (late.run.error or "")  # bounded by the timeout


def test_work_a_backend_ran_again_after_a_host_loss_is_in_the_attempts_history() -> None:
    flow = make_flow()
    run = running_step(flow)
    d = apply(run, flow, Polled("extract", 1, StepStatus("running", reruns=2)), at(5))
    step = d.run.steps[0]
    assert step.host_loss_reruns == 2 and "step.rerun_after_host_loss" in emitted(d)
    assert [h["outcome"] for h in step.history] == [HOST_LOSS_RERUN] and step.history[0]["reruns"] == 2
    same = apply(d.run, flow, Polled("extract", 1, StepStatus("running", reruns=2)), at(10))
    assert len(same.run.steps[0].history) == 1  # seen once
    done = apply(same.run, flow, Polled("extract", 1, StepStatus("succeeded", reruns=3)), at(15)).run.steps[0]
    assert [h["outcome"] for h in done.history] == [HOST_LOSS_RERUN, HOST_LOSS_RERUN, "succeeded"]
    assert done.history[-1]["host_loss_reruns"] == 3


@settings(max_examples=100, deadline=None)
@given(delays=st.lists(st.floats(min_value=0, max_value=600), min_size=1, max_size=8))
def test_stall_time_is_never_more_than_the_time_that_passed(delays: list[float]) -> None:
    """However late each tick arrives, the stall noted never exceeds the wall time since the launch,
    and a run whose ticks are all on time notes none."""
    flow = make_flow(timeout_seconds=1e9, poll={"initial_seconds": 1, "multiplier": 1, "max_seconds": 1})
    run: Run = running_step(flow, now=at(0))
    now = at(0)
    for extra in delays:
        assert run.due_at is not None
        now = max(now, run.due_at) + timedelta(seconds=extra)
        ticked = apply(run, flow, Incoming(the_tick(run, "extract")), now).run
        run = apply(ticked, flow, Polled("extract", 1, StepStatus("running")), now).run
        step = run.steps[0]
        assert 0 <= step.stalled_seconds <= (now - at(0)).total_seconds()
    if all(d <= STALL_TOLERANCE_SECONDS for d in delays):
        assert run.steps[0].stalled_seconds == 0
