"""The engine's rules, as one pure function.

``decide(run, flow, event, now, fanouts=None) -> Decision`` takes a run, the flow it belongs
to, one event (a queue message or an observation the executor made while performing a
command), the current time and, for flows with for_each steps, what the executor loaded of
their fan-outs; it returns the next run (or the next fan-out rows) and the commands to
perform. It does no I/O, reads no clock, draws no random numbers and never mutates its
arguments, so every rule is unit-testable alone:

* the graph: every step whose needs are done starts (all of them at once), ``run_if`` and
  ``if`` skip steps (shared.engine.scheduling), ``on_failure`` decides what a failure stops;
* a step's attempts: launch, poll with backoff, retry, timeout (shared.engine.attempts);
* fan-outs: for_each instances with their own attempts and keys, ``max_parallel``, fan-in
  once every instance is done (shared.engine.fanout, which this module builds on);
* cancel, rerun (a step and its descendants), ``max_concurrent_runs``.

Safety against duplicated, reordered and redelivered messages:

* a ``tick`` acts only when its (step, attempt, tick) — and index, for an instance — are the
  current values, and every state change that schedules a tick bumps it: a duplicate or
  stale tick does nothing;
* observations (``Launched``, ``Polled``...) act only on the attempt and state they were
  made for;
* a new attempt is only begun from PENDING or RETRY_WAIT, and its idempotency key is saved
  before the launch, so a launch repeated after a crash reattaches to the same remote job;
* a decision changes either the run or one fan-out, never both; the other side catches up
  from state it can read (``Recheck``);
* a message delivered again after a crash (``Incoming.redelivered``) that no longer
  matches the run *resumes* it: it re-issues the side effects the run's current state is
  waiting on (re-launch the same keys, re-send the current ticks, release a queued run),
  which would otherwise have been lost with the crashed handler.

Deadline-based stall recovery: every unit (a step, an instance) records when the message it
waits on is due (``due_at``: its tick's scheduled time; "now" for a launch in flight), and the
run the earliest of its steps' (``Run.due_at``). A run whose deadline has passed by more than the
queue's visibility timeout and a margin lost its message (:func:`overdue`); the sweep then hands
it a redelivered-style start, and ``_resume`` re-issues what it waits on, re-deriving everything
from state. Time a unit spent waiting past a deadline is stall time (a host loss, a backlog), kept
in ``stalled_seconds`` and not counted against the step's timeout. A launch that failed with a
retryable error is tried again under the same key (it reattaches if it did start) after the poll
backoff, until the step's timeout, without using up an attempt; work a backend ran again after a
host loss (``StepStatus.reruns``) is written into the attempt's history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.backends.base import LaunchResult, StepStatus
from shared.engine import attempts, scheduling
from shared.engine.commands import (
    Cancel,
    Command,
    CreateFanOut,
    FollowUp,
    Launch,
    LoadInstances,
    Poll,
    Resolve,
    Send,
    StartQueued,
)
from shared.engine.fanout import ACTIVE, PAGE, FanOutRules, FanOuts, FanOutWrite, run_message
from shared.engine.model import (
    FanOut,
    FanOutRef,
    InstanceRun,
    Message,
    Run,
    RunStatus,
    StepRun,
    StepState,
    idempotency_key,
)
from shared.engine.scope import fanout_refs, template_scope
from shared.flows.model import Flow

# An item is stored in pages of ITEMS_PER_PAGE (shared.store.base) outside the run; this keeps a
# page far below a Table entity's 1 MiB.
MAX_ITEM_CHARS = 8_000

# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Incoming:
    """A queue message with the context the executor looked up for it.

    ``active_runs``: RUNNING runs of the flow other than this one (start/rerun only; drives
    ``max_concurrent_runs``). ``redelivered``: the queue delivered this message before
    (delivery count > 1), i.e. an earlier handler may have crashed after saving.
    """

    message: Message
    active_runs: int = 0
    redelivered: bool = False


@dataclass(frozen=True)
class Launched:
    step: str
    attempt: int
    result: LaunchResult
    index: int | None = None  # the instance of a for_each step


@dataclass(frozen=True)
class LaunchFailed:
    step: str
    attempt: int
    error: str
    retryable: bool
    index: int | None = None


@dataclass(frozen=True)
class Polled:
    step: str
    attempt: int
    status: StepStatus
    index: int | None = None


@dataclass(frozen=True)
class PollFailed:
    step: str
    attempt: int
    error: str
    retryable: bool
    index: int | None = None


@dataclass(frozen=True)
class Resolved:
    """The outputs of the for_each steps a step's for_each list reads (``Resolve``)."""

    step: str
    epoch: int
    values: dict[str, list[Any]]


@dataclass(frozen=True)
class FanOutCreated:
    """``CreateFanOut`` stored the items and the new FanOut row (now among the loaded heads)."""

    step: str
    epoch: int


@dataclass(frozen=True)
class InstancesLoaded:
    """Instance rows ``LoadInstances`` asked for."""

    step: str
    epoch: int
    instances: list[InstanceRun]
    limit: int = PAGE


@dataclass(frozen=True)
class Recheck:
    """Decide from the current state alone (after ``FollowUp`` or a lost race on a fan-out)."""


Event = Incoming | Launched | LaunchFailed | Polled | PollFailed | Resolved | FanOutCreated | InstancesLoaded | Recheck
Observation = Launched | LaunchFailed | Polled | PollFailed | Resolved | FanOutCreated | InstancesLoaded | Recheck


@dataclass
class Decision:
    """The next run, the commands to perform (in order), whether the run must be saved and the
    fan-out rows to save instead (never both)."""

    run: Run
    commands: list[Command] = field(default_factory=list)
    changed: bool = False
    fanout: FanOutWrite | None = None


# ---------------------------------------------------------------- decide


def decide(run: Run, flow: Flow, event: Event, now: datetime, fanouts: FanOuts | None = None) -> Decision:
    """Apply one event to a copy of ``run``; see the module docstring for the guarantees."""
    d = _Decider(run.model_copy(deep=True), flow, now, fanouts)
    d.apply(event)
    if d.write is not None and not d.write.instances and d.write.fanout is None:
        d.write = None
    assert not (d.changed and d.write is not None), "a decision writes the run or one fan-out"
    _stamp_due(d)
    if d.changed:
        d.run.updated_at = now
    followups = [i for i, c in enumerate(d.commands) if isinstance(c, FollowUp)]
    commands = [c for i, c in enumerate(d.commands) if not isinstance(c, FollowUp) or i == followups[-1]]
    return Decision(run=d.run, commands=commands, changed=d.changed, fanout=d.write)


def _stamp_due(d: _Decider) -> None:
    """When what each unit waits on is due, from the messages and launches this decision issues;
    the run's deadline is the earliest of its active plain steps' (fan-out instances keep theirs
    on their rows: a run with only a fan-out active has none, see :func:`overdue`)."""
    steps = {s.name: s for s in d.run.steps} if d.changed else {}  # only what is saved changes
    rows = {(r.name, r.index): r for r in d.write.instances} if d.write is not None else {}
    for c in d.commands:
        if isinstance(c, Send) and c.message.kind == "tick":
            m = c.message
            unit: StepRun | None = steps.get(m.step or "") if m.index is None else rows.get((m.step or "", m.index))
            if unit is not None and (unit.attempt, unit.tick) == (m.attempt, m.tick):
                unit.due_at = d.now + timedelta(seconds=c.delay_seconds)
        elif isinstance(c, Launch):
            unit = steps.get(c.step) if c.index is None else rows.get((c.step, c.index))
            if unit is not None and unit.attempt == c.attempt:
                unit.due_at = d.now
    if not d.changed:
        return
    for step in d.run.steps:
        if not step.state.active or step.fanout is not None:
            step.due_at = None
    run = d.run
    due = [s.due_at for s in run.steps if s.due_at is not None] if run.status is RunStatus.RUNNING else []
    run.due_at = min(due, default=None)


def planned_start(run: Run) -> datetime:
    """When a run's first start is due: ``created_at``, plus a blob trigger's ``settle_seconds``
    (the delay its start was sent with)."""
    settle = 0.0
    if run.trigger.blob:
        try:
            settle = float(run.trigger.blob.get("settle_seconds") or 0)
        except (TypeError, ValueError):
            settle = 0.0
    return run.created_at + timedelta(seconds=max(0.0, settle))


def pending_due(run: Run) -> datetime:
    """When a pending run's start is due: the re-sent start's (``Run.due_at``), else its first's."""
    return run.due_at if run.due_at is not None else planned_start(run)


def overdue(
    run: Run, now: datetime, grace_seconds: float, idle_seconds: float, instances_due: datetime | None = None
) -> bool:
    """Whether ``run`` lost the message it waits on, so the sweep must nudge it.

    A running or pending run is overdue once its deadline (``Run.due_at``; a pending run's
    :func:`pending_due`) lies more than ``grace_seconds`` -- the queue's visibility timeout plus a
    margin: a message taken by a handler that died comes back by then -- in the past. A running
    run without a deadline has only fan-outs active, whose instances keep their deadlines on
    their rows: ``instances_due`` is the earliest of its active instances' (the caller reads the
    rows), and the same rule applies to it. With no instance deadline either (a fan-out between
    instances, waiting for its continuation), the run is overdue after ``idle_seconds`` without a
    save. Others wait for nothing the sweep can give."""
    if run.status is RunStatus.PENDING:
        return (now - pending_due(run)).total_seconds() > grace_seconds
    if run.status is not RunStatus.RUNNING:
        return False
    due = run.due_at if run.due_at is not None else instances_due
    if due is not None:
        return (now - due).total_seconds() > grace_seconds
    return (now - run.updated_at).total_seconds() > idle_seconds


def resent_due(first_due: datetime, now: datetime) -> datetime:
    """The deadline of a start re-sent at ``now`` for a run first due at ``first_due``: as long
    again as it has waited in all, so a run whose start keeps waiting behind a backlog is sent a
    start at geometrically growing intervals, not at every sweep."""
    return now + max(timedelta(0), now - first_due)


def tick_message(run: Run, step: StepRun) -> Message:
    """The one tick message ``step`` currently waits for."""
    return run_message(run, "tick", step.name, step.attempt, step.tick)


def start_message(run: Run) -> Message:
    return Message(kind="start", run_id=run.run_id, flow=run.flow, traceparent=run.traceparent).with_id()


def fan_out_steps(flow: Flow) -> set[str]:
    return {s.name for s in flow.steps if s.for_each is not None}


class _Decider(FanOutRules):
    def __init__(self, run: Run, flow: Flow, now: datetime, fanouts: FanOuts | None) -> None:
        super().__init__(run, flow, now, fanouts)
        self.failed_now = False  # a step failed in this decision (fail_fast stops what follows)

    # -------------------------------------------------------------- dispatch

    def apply(self, event: Event) -> None:
        run = self.run
        rerun = isinstance(event, Incoming) and event.message.kind == "rerun"
        if run.cancel_requested and not run.status.terminal and not rerun:
            # A cancel recorded on the run (by control.request_cancel) wins over anything else;
            # the fan-outs' instances are cancelled by the FollowUp it sends.
            self._cancel()
            if isinstance(event, Launched) and event.index is None:
                self._launched(event)  # a launch that landed meanwhile: stop its job
            return
        if isinstance(event, Incoming):
            self._incoming(event)
        elif isinstance(event, Launched | LaunchFailed | Polled | PollFailed) and event.index is not None:
            self._instance_observation(event)
        elif isinstance(event, Launched):
            self._launched(event)
        elif isinstance(event, LaunchFailed):
            self._launch_failed(event)
        elif isinstance(event, Polled):
            self._polled(event)
        elif isinstance(event, PollFailed):
            self._poll_failed(event)
        elif isinstance(event, Resolved):
            self._resolved(event)
        elif isinstance(event, FanOutCreated):
            self.on_fanout_created(event.step, event.epoch)
        elif isinstance(event, InstancesLoaded):
            self.on_instances_loaded(event.step, event.epoch, event.instances, event.limit)
        elif isinstance(event, Recheck):
            self._recheck()

    def _incoming(self, ev: Incoming) -> None:
        msg = ev.message
        if msg.run_id != self.run.run_id:
            return
        acted = False
        if msg.kind == "start":
            acted = self._start(ev)
        elif msg.kind == "tick" and msg.index is not None:
            acted = self.on_instance_tick(msg)  # an instance of a fan-out no longer live is cancelled
        elif msg.kind == "tick":
            acted = self._tick(msg)
        elif msg.kind == "fanout":
            acted = self.on_fanout_message(msg)
        elif msg.kind == "cancel":
            acted = self._cancel_message(msg)
        elif msg.kind == "rerun":
            acted = self._rerun(ev)
        if not acted and ev.redelivered:
            self._resume()

    def _instance_observation(self, ev: Launched | LaunchFailed | Polled | PollFailed) -> None:
        assert ev.index is not None
        if isinstance(ev, Launched):
            self.on_instance_launched(ev.step, ev.index, ev.attempt, ev.result)
        elif isinstance(ev, LaunchFailed):
            self.on_instance_launch_failed(ev.step, ev.index, ev.attempt, ev.error, ev.retryable)
        elif isinstance(ev, Polled):
            self.on_instance_polled(ev.step, ev.index, ev.attempt, ev.status)
        else:
            self.on_instance_poll_failed(ev.step, ev.index, ev.attempt, ev.error, ev.retryable)

    # -------------------------------------------------------------- messages

    def _start(self, ev: Incoming) -> bool:
        run = self.run
        if run.status in (RunStatus.PENDING, RunStatus.QUEUED):
            limit = self.flow.policies.max_concurrent_runs
            if limit is not None and ev.active_runs >= limit:
                if run.status is RunStatus.PENDING:
                    run.status = RunStatus.QUEUED
                    self.changed = True
                    self._emit("run.queued", active_runs=ev.active_runs, limit=limit)
                return True
            run.status = RunStatus.RUNNING
            run.started_at = run.started_at or self.now
            run.error = None
            self.changed = True
            self._emit("run.started", trigger=run.trigger.kind, reruns=run.reruns)
            self._advance()
            return True
        if run.status is RunStatus.RUNNING:
            if ev.redelivered:
                self._resume()  # the crashed handler may have lost more than launches
                return True
            launching = [s for s in run.steps if s.state is StepState.LAUNCHING and s.key]
            for step in launching:
                # The launch may have crashed before its result was saved: the same key reattaches.
                self.commands.append(Launch(step.name, step.attempt, step.key or ""))
            return bool(launching)
        return False

    def _tick(self, msg: Message) -> bool:
        run = self.run
        if run.status is not RunStatus.RUNNING or msg.step is None:
            return False
        step = _find(run, msg.step)
        if step is None or step.fanout is not None or (msg.attempt, msg.tick) != (step.attempt, step.tick):
            return False
        if step.state.active and attempts.note_stall(step, self.now):
            self.changed = True  # the tick came late: that time is not the step's
        if step.state is StepState.RUNNING and step.remote_id:
            self.commands.append(Poll(step.name, step.attempt, step.remote_id))
            return True
        if step.state is StepState.RETRY_WAIT:
            self._begin_attempt(step)
            return True
        if step.state is StepState.LAUNCHING and step.key:
            self.commands.append(Launch(step.name, step.attempt, step.key))
            return True
        return False

    def _cancel_message(self, msg: Message) -> bool:
        if msg.tick is not None and msg.tick != self.run.reruns:
            return False  # a cancel aimed at an earlier life of the run (before a rerun)
        if self.run.status.terminal:
            return False
        self.run.cancel_requested = True
        self._cancel()
        return True

    def _rerun(self, ev: Incoming) -> bool:
        run, msg = self.run, ev.message
        if not run.status.terminal:
            return False
        if msg.tick is not None and msg.tick != run.reruns:
            return False  # a duplicate of a rerun that already happened
        roots = rerun_roots(run, self.flow, msg.from_step)
        if not roots:
            return False
        graph = self.flow.graph()
        reset = set(roots)
        for root in roots:
            reset |= graph.descendants(root)
        for s in run.steps:
            if s.name in reset:
                attempts.reset(s)
        run.gate = None
        for s in run.steps:
            if s.state is StepState.SUCCEEDED and "gate" in s.outputs:
                run.gate = s.outputs["gate"]
        run.reruns += 1
        run.cancel_requested = False
        run.error = None
        run.ended_at = None
        run.started_at = None
        self.changed = True
        from_step = roots[0]
        limit = self.flow.policies.max_concurrent_runs
        if limit is not None and ev.active_runs >= limit:
            run.status = RunStatus.QUEUED
            self._emit("run.queued", active_runs=ev.active_runs, limit=limit, rerun=True, from_step=from_step)
            return True
        run.status = RunStatus.RUNNING
        run.started_at = self.now
        self._emit("run.started", trigger=run.trigger.kind, reruns=run.reruns, from_step=from_step)
        self._advance()
        return True

    def _resume(self) -> None:
        """Re-issue the side effects the run's current state waits on (crash recovery)."""
        run = self.run
        if run.status.terminal:
            self.commands.append(StartQueued(run.flow))
            if any(h.active for h in self.heads.values()):
                self.commands.append(FollowUp())
            return
        if run.status is not RunStatus.RUNNING:
            return
        for step in run.steps:
            if step.fanout is not None and step.state is StepState.RUNNING:
                self._resume_fanout(step)
                continue
            if not step.state.active:
                continue
            spec = self._spec(step)
            if spec is None:
                return
            if step.due_at is None or step.due_at < self.now:
                # what it waited on is overdue: that time is not the step's, and the deadline of
                # what is re-issued now is saved (else the sweep would come again and again)
                attempts.note_stall(step, self.now)
                if step.state in (StepState.RUNNING, StepState.RETRY_WAIT):
                    # a new tick (a new message id): a broker that remembers the lost one's id
                    # (Service Bus duplicate detection) would drop a re-send; the old is stale now
                    step.tick += 1
                self.changed = True
            if step.state is StepState.LAUNCHING and step.key:
                self.commands.append(Launch(step.name, step.attempt, step.key))
            elif step.state is StepState.RUNNING:
                self.commands.append(Send(tick_message(run, step), spec.poll.delay(step.polls)))
            elif step.state is StepState.RETRY_WAIT:
                self.commands.append(Send(tick_message(run, step), spec.retries.delay(step.attempt)))
        if self.heads or any(s.fanout is not None and s.state is StepState.RUNNING for s in run.steps):
            self.commands.append(FollowUp())  # fan-in, or a fan-out whose creation was lost

    def _resume_fanout(self, step: StepRun) -> None:
        assert step.fanout is not None
        head = self.heads.get(step.name)
        if head is not None and head.epoch == step.fanout.epoch:
            self.commands.append(LoadInstances(step.name, head.epoch, ACTIVE, 0, PAGE))
        # else: not created yet; the FollowUp's Recheck creates it

    # -------------------------------------------------------------- plain steps' observations

    def _current(self, name: str, attempt: int, state: StepState) -> StepRun | None:
        if self.run.status is not RunStatus.RUNNING:
            return None
        step = _find(self.run, name)
        if step is None or step.fanout is not None or step.attempt != attempt or step.state is not state:
            return None
        return step

    def _launched(self, ev: Launched) -> None:
        step = self._current(ev.step, ev.attempt, StepState.LAUNCHING)
        if step is None:
            late = _find(self.run, ev.step)
            if late is not None and late.attempt == ev.attempt and late.state is StepState.CANCELLED:
                # Cancelled while the launch was in flight: stop the job it started.
                if late.remote_id is None:
                    late.remote_id = ev.result.remote_id
                    self.changed = True
                self.commands.append(Cancel(late.name, ev.result.remote_id))
            return
        spec = self._spec(step)
        if spec is None:
            return
        attempts.launched(step, ev.result.remote_id, ev.result.url)
        self.changed = True
        self._emit(
            "step.launched",
            step=step.name,
            attempt=step.attempt,
            job=step.key,
            remote_id=step.remote_id,
            reattached=ev.result.reattached,
        )
        self.commands.append(Send(tick_message(self.run, step), spec.poll.delay(0)))

    def _launch_failed(self, ev: LaunchFailed) -> None:
        step = self._current(ev.step, ev.attempt, StepState.LAUNCHING)
        if step is None:
            return
        spec = self._spec(step)
        if spec is not None and ev.retryable and not attempts.timed_out(step, spec.timeout_seconds, self.now):
            # launch is idempotent on the key: it reattaches if the job did start
            step.polls += 1
            step.tick += 1
            self.changed = True
            delay = spec.poll.delay(step.polls - 1)
            self._emit("step.launch_retrying", step=step.name, attempt=step.attempt, error=ev.error, delay=delay)
            self.commands.append(Send(tick_message(self.run, step), delay))
            return
        self._fail_attempt(step, ev.error, ev.retryable)

    def _polled(self, ev: Polled) -> None:
        step = self._current(ev.step, ev.attempt, StepState.RUNNING)
        if step is None:
            return
        status = ev.status
        if status.progress is not None:
            step.progress = dict(status.progress)
        self.changed = True
        if attempts.note_reruns(step, status.reruns, self.now):
            self._emit("step.rerun_after_host_loss", step=step.name, attempt=step.attempt, reruns=status.reruns)
        if status.state == "running":
            step.polls += 1
            self._next_poll(step)
        elif status.state == "succeeded":
            self._succeed(step, status)
        elif status.state == "failed":
            self._fail_attempt(step, status.error or "the remote job failed", status.retryable)
        else:  # cancelled remotely, not by us (a cancel of ours makes the run terminal first)
            self._fail_attempt(step, status.error or "the remote job was cancelled outside Conveyor", False)

    def _poll_failed(self, ev: PollFailed) -> None:
        step = self._current(ev.step, ev.attempt, StepState.RUNNING)
        if step is None:
            return
        self.changed = True
        if ev.retryable:
            step.polls += 1  # transient: back off, do not burn an attempt
            self._next_poll(step)
            return
        if step.remote_id:
            self.commands.append(Cancel(step.name, step.remote_id))
        self._fail_attempt(step, f"polling failed: {ev.error}", False)

    # -------------------------------------------------------------- plain steps' transitions

    def _next_poll(self, step: StepRun) -> None:
        spec = self._spec(step)
        if spec is None:
            return
        if attempts.timed_out(step, spec.timeout_seconds, self.now):
            if step.remote_id:
                self.commands.append(Cancel(step.name, step.remote_id))
            self._fail_attempt(step, f"timed out after {spec.timeout_seconds:g}s", True)
            return
        step.tick += 1
        self.commands.append(Send(tick_message(self.run, step), spec.poll.delay(step.polls)))

    def _begin_attempt(self, step: StepRun) -> None:
        if self._spec(step) is None:
            return
        attempt = step.attempt + 1
        attempts.begin(step, attempt, idempotency_key(self.run.run_id, step.name, attempt), self.now)
        self.changed = True
        self.commands.append(Launch(step.name, step.attempt, step.key or ""))

    def _succeed(self, step: StepRun, status: StepStatus) -> None:
        attempts.succeed(step, status.outputs, self.now)
        if "gate" in step.outputs:
            self.run.gate = step.outputs["gate"]
        self._emit("step.succeeded", step=step.name, attempt=step.attempt, remote_id=step.remote_id, **_dur(step))
        self._advance()

    def _fail_attempt(self, step: StepRun, error: str, retryable: bool) -> None:
        spec = self._spec(step)
        if spec is None:
            return  # _spec failed the run
        self.changed = True
        if attempts.fail(step, spec, error, retryable, self.now, tried=step.attempt):
            delay = spec.retries.delay(step.attempt)
            self._emit(
                "step.retrying", step=step.name, attempt=step.attempt, error=error, retryable=retryable, delay=delay
            )
            self.commands.append(Send(tick_message(self.run, step), delay))
            return
        self._emit("step.failed", step=step.name, attempt=step.attempt, error=error, retryable=retryable, **_dur(step))
        self._after_failure(step)

    # -------------------------------------------------------------- the graph

    def _advance(self) -> None:
        """Start every step that is ready, skip what must be skipped, or finish the run.

        Starting a step can settle it at once (an empty for_each list, a list that cannot be
        made), which advances the graph again from inside; each pass only touches steps that
        are still pending, so nothing starts twice.
        """
        run = self.run
        names = {s.name for s in self.flow.steps}
        for step in run.steps:
            if step.name not in names and not step.state.terminal:
                self._spec(step)  # a step no longer in the flow fails the run
                return
        for _ in range(len(run.steps) + 1):
            if run.status is not RunStatus.RUNNING:
                return
            plan = scheduling.plan(run, self.flow, template_scope(run, self.flow), failed_now=self.failed_now)
            if not (plan.skip or plan.fail or plan.start):
                break
            for name, reason in plan.skip:
                step = run.step(name)
                step.state = StepState.SKIPPED
                step.skip = reason
                step.ended_at = self.now
                self.changed = True
                self._emit("step.skipped", step=name, reason=reason)
            for name, error in plan.fail:
                step = run.step(name)
                step.state = StepState.FAILED
                step.error = error
                step.started_at = step.ended_at = self.now
                self.changed = True
                self._emit("step.failed", step=name, attempt=step.attempt, error=error, retryable=False)
                self._stop_for_failure(name)
            for name in plan.start:
                step = run.step(name)
                if step.state is not StepState.PENDING or run.status is not RunStatus.RUNNING:
                    continue
                if self.flow.step(name).for_each is not None:
                    self._expand(step)
                else:
                    self._begin_attempt(step)
        # Nothing runs: every step has ended, or (fail_fast) was never reached and never will be.
        if run.status is RunStatus.RUNNING and not any(s.state.active for s in run.steps):
            failed = [s for s in run.steps if s.state is StepState.FAILED]
            if failed:
                first = min(failed, key=lambda s: (s.ended_at or self.now, run.step_index(s.name)))
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                self._finish(RunStatus.FAILED, f"step {first.name} failed: {first.error}{more}")
            else:
                self._finish(RunStatus.SUCCEEDED)

    def _after_failure(self, step: StepRun) -> None:
        """``step`` failed for good: under fail_fast stop what runs; then move the graph on."""
        self._stop_for_failure(step.name)
        self._advance()

    def _stop_for_failure(self, name: str) -> None:
        self.failed_now = True
        if self.flow.policies.on_failure != "fail_fast":
            return
        for other in self.run.steps:
            if other.name == name or not other.state.active:
                continue
            try:
                spec = self.flow.step(other.name)
            except KeyError:
                continue
            if spec.run_if != "all_succeeded":
                continue  # cleanup and failure handlers keep running
            if other.fanout is not None:
                # its instances are cancelled on the fan-out's side; the step ends (cancelled) once
                # they have stopped, so what runs after it never overlaps them
                self.commands.append(FollowUp())
                continue
            if other.state is not StepState.RETRY_WAIT and other.remote_id:
                self.commands.append(Cancel(other.name, other.remote_id))
            attempts.cancel(other, self.now, f"cancelled: step {name} failed (fail_fast)")
            self.changed = True
            self._emit("step.cancelled", step=other.name, reason=f"step {name} failed")

    # -------------------------------------------------------------- fan-outs on the run's side

    def _expand(self, step: StepRun) -> None:
        """A for_each step is ready: a new epoch, then its item list (maybe after ``Resolve``)."""
        epoch = (step.fanout.epoch if step.fanout is not None else 0) + 1
        step.state = StepState.RUNNING
        step.fanout = FanOutRef(epoch=epoch)
        step.started_at = self.now
        step.ended_at = None
        step.error = None
        step.progress = None
        step.outputs = {}
        self.changed = True
        self._emit("step.started", step=step.name, epoch=epoch)
        self._materialize(step, None)

    def _materialize(self, step: StepRun, values: dict[str, list[Any]] | None) -> None:
        spec = self.flow.step(step.name)
        assert step.fanout is not None
        sources = fanout_refs(spec.for_each, fan_out_steps(self.flow))
        if sources and values is None:
            self.commands.append(Resolve(step.name, step.fanout.epoch, tuple(sorted(sources))))
            return
        items, error = self._items(spec, values or {})
        if error is not None:
            self._fail_fanout(step, error)
            return
        assert items is not None
        if step.fanout.total != len(items):
            step.fanout = step.fanout.model_copy(update={"total": len(items)})
            self.changed = True
        if not items:
            self._settle(step, None)
            return
        old = self.heads.get(step.name)
        if old is not None and old.epoch >= step.fanout.epoch:
            return  # already created
        if old is not None and old.active:
            self.commands.append(FollowUp())  # the earlier fan-out's instances are cancelled first
            return
        base = max(step.attempt, old.max_attempt if old is not None else 0)
        fan = FanOut(
            run_id=self.run.run_id,
            step=step.name,
            epoch=step.fanout.epoch,
            total=len(items),
            attempt_base=base,
            max_attempt=base,
            etag=old.etag if old is not None else None,
        )
        self.commands.append(CreateFanOut(fan, items))

    def _items(self, spec: Any, values: dict[str, list[Any]]) -> tuple[list[Any] | None, str | None]:
        from shared.flows.template import TemplateError, render

        scope = template_scope(self.run, self.flow, values)
        try:
            items = render(spec.for_each, scope, field="for_each")
        except TemplateError as exc:
            return None, f"for_each: {exc.message}"
        if not isinstance(items, list):
            kind = "mapping" if isinstance(items, dict) else type(items).__name__
            return None, f"for_each must give a list, got a {kind}"
        limit = self.flow.policies.max_items
        if len(items) > limit:
            return None, f"for_each gives {len(items)} items, more than policies.max_items ({limit})"
        for i, item in enumerate(items):
            size = len(json.dumps(item, default=str))
            if size > MAX_ITEM_CHARS:
                return None, (
                    f"for_each item {i} is {size} characters of JSON, more than {MAX_ITEM_CHARS}: "
                    "keep large data in blobs and pass its URL"
                )
        return items, None

    def _resolved(self, ev: Resolved) -> None:
        step = _find(self.run, ev.step)
        if (
            self.run.status is not RunStatus.RUNNING
            or step is None
            or step.state is not StepState.RUNNING
            or step.fanout is None
            or step.fanout.epoch != ev.epoch
        ):
            return
        self._materialize(step, ev.values)

    def _fail_fanout(self, step: StepRun, error: str) -> None:
        step.state = StepState.FAILED
        step.error = error
        step.ended_at = self.now
        self.changed = True
        self._emit("step.failed", step=step.name, attempt=step.attempt, error=error, retryable=False, **_dur(step))
        self._after_failure(step)

    def _settle(self, step: StepRun, head: FanOut | None) -> None:
        """Fan-in: every instance of the step's fan-out is done (or it failed under fail_fast)."""
        assert step.fanout is not None
        total = head.total if head is not None else 0
        counts = head.summary() if head is not None else {}
        step.fanout = step.fanout.model_copy(update={"counts": counts, "total": total})
        succeeded = counts.get(StepState.SUCCEEDED.value, 0)
        step.progress = {"done": succeeded, "total": total}
        if head is not None:
            step.attempt = max(step.attempt, head.max_attempt)
        step.ended_at = self.now
        self.changed = True
        failed = counts.get(StepState.FAILED.value, 0)
        if head is not None and head.stopping in ("stopped", "cancelled") and not failed:
            attempts.cancel(step, self.now, "cancelled: the run stopped after a failure (fail_fast)")
            self._emit("step.cancelled", step=step.name, counts=counts)
            self._advance()
            return
        if head is not None and (failed or head.stopping == "failed"):
            step.state = StepState.FAILED
            step.error = f"{failed} of {total} instances failed; first: {head.first_error}"
            self._emit("step.failed", step=step.name, error=step.error, counts=counts, **_dur(step))
            self._after_failure(step)
            return
        step.state = StepState.SUCCEEDED
        step.error = None
        self._emit("step.succeeded", step=step.name, instances=total, counts=counts, **_dur(step))
        self._advance()

    def _recheck(self) -> None:
        """Bring each side up to date with the other: fan-in, then a fan-out to stop, create or fill."""
        run = self.run
        if run.status is RunStatus.RUNNING:
            for step in run.steps:
                head = self.heads.get(step.name)
                if step.fanout is None or step.state is not StepState.RUNNING:
                    continue
                if head is not None and head.epoch == step.fanout.epoch and (head.settled or head.stopping == "failed"):
                    self._settle(step, head)
                    if self.changed and any(h.active and not self.live(h) for h in self.heads.values()):
                        self.commands.append(FollowUp())
                    return
        if self.changed:
            return
        if self.stop_fanouts():
            return
        if run.status is not RunStatus.RUNNING:
            return
        live: list[str] = []
        for step in run.steps:
            if step.fanout is None or step.state is not StepState.RUNNING:
                continue
            head = self.heads.get(step.name)
            if (head is None or head.epoch < step.fanout.epoch) and self.run_stopping(step.name):
                attempts.cancel(step, self.now, "cancelled: the run stopped after a failure (fail_fast)")
                self.changed = True
                self._advance()
                return
            if head is None or head.epoch < step.fanout.epoch:
                self._materialize(step, None)  # creation was lost or is under way: idempotent
            elif head.epoch == step.fanout.epoch:
                live.append(step.name)
        if self.changed or self.commands:
            return
        for name in live:  # one fan-out write per decision
            self.begin_more(name)
            if self.write is not None:
                return

    # -------------------------------------------------------------- the run

    def _finish(self, status: RunStatus, error: str | None = None) -> None:
        run = self.run
        run.status = status
        run.ended_at = self.now
        run.error = error
        self.changed = True
        attrs: dict[str, Any] = {"status": status.value}
        if error:
            attrs["error"] = error
        if run.started_at is not None:
            attrs["duration_seconds"] = (self.now - run.started_at).total_seconds()
        if run.gate is not None:
            attrs["gate"] = run.gate
        self._emit("run.finished", **attrs)
        self.commands.append(StartQueued(run.flow))

    def _cancel(self) -> None:
        run = self.run
        held_slot = run.status is RunStatus.RUNNING
        run.cancel_requested = True
        for step in run.steps:
            if step.state.active:
                if step.state is not StepState.RETRY_WAIT and step.remote_id:
                    self.commands.append(Cancel(step.name, step.remote_id))
                attempts.cancel(step, self.now)
        run.status = RunStatus.CANCELLED
        run.ended_at = self.now
        run.error = "cancelled"
        self.changed = True
        self._emit("run.finished", status=RunStatus.CANCELLED.value)
        if held_slot:
            self.commands.append(StartQueued(run.flow))
        if any(h.active for h in self.heads.values()):
            self.commands.append(FollowUp())  # cancel the instances, fan-out by fan-out

    # -------------------------------------------------------------- helpers

    def _spec(self, step: StepRun) -> Any:
        """The flow's definition of ``step``; a step no longer in the flow fails the run."""
        try:
            return self.flow.step(step.name)
        except KeyError:
            if not self.run.status.terminal:
                step.state = StepState.FAILED
                step.error = f"step {step.name} is not in flow {self.run.flow} any more"
                step.ended_at = self.now
                self._finish(RunStatus.FAILED, f"step {step.name} failed: {step.error}")
            return None


def rerun_roots(run: Run, flow: Flow, from_step: str | None) -> list[str]:
    """The steps a rerun restarts at (their descendants restart too): ``from_step``, or every
    step that did not end ok while all it waits for did. Empty when the rerun is not possible
    (an unknown step, or one waiting for a step that did not end ok)."""
    graph = flow.graph()
    steps = {s.name: s for s in run.steps}
    if from_step is not None:
        if from_step not in steps or from_step not in graph.needs:
            return []
        if any(not steps[a].ok for a in graph.ancestors(from_step) if a in steps):
            return []
        return [from_step]
    roots = [
        s.name
        for s in run.steps
        if not s.ok and s.name in graph.needs and all(steps[a].ok for a in graph.ancestors(s.name) if a in steps)
    ]
    return roots


def _find(run: Run, name: str) -> StepRun | None:
    for s in run.steps:
        if s.name == name:
            return s
    return None


_dur = attempts.duration


__all__ = [
    "Decision",
    "Event",
    "FanOutCreated",
    "FanOuts",
    "Incoming",
    "InstancesLoaded",
    "LaunchFailed",
    "Launched",
    "Observation",
    "PollFailed",
    "Polled",
    "Recheck",
    "Resolved",
    "decide",
    "fan_out_steps",
    "overdue",
    "pending_due",
    "planned_start",
    "rerun_roots",
    "resent_due",
    "start_message",
    "tick_message",
]
