"""The engine's rules, as one pure function.

``decide(run, flow, event, now) -> Decision`` takes a run, the flow it belongs to, one event
(a queue message or an observation the executor made while performing a command) and the
current time, and returns the next run and the commands to perform. It does no I/O, reads
no clock, draws no random numbers and never mutates its arguments, so every rule (next
step, retry, timeout, fail, finish, cancel, rerun, concurrency) is unit-testable alone.

Safety against duplicated, reordered and redelivered messages:

* a ``tick`` acts only when its (step, attempt, tick) are the step's current values, and
  every state change that schedules a tick bumps ``step.tick``: a duplicate or stale tick
  does nothing;
* observations (``Launched``, ``Polled``...) act only on the attempt and state they were
  made for;
* a new attempt is only begun from PENDING or RETRY_WAIT, and its idempotency key is saved
  before the launch, so a launch repeated after a crash reattaches to the same remote job;
* a message delivered again after a crash (``Incoming.redelivered``) that no longer
  matches the run *resumes* it: it re-issues the side effect the run's current state is
  waiting on (re-launch the same key, re-send the current tick, release a queued run),
  which would otherwise have been lost with the crashed handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.backends.base import LaunchResult, StepStatus
from shared.engine.commands import Cancel, Command, Emit, Launch, Poll, Send, StartQueued
from shared.engine.model import Message, Run, RunStatus, StepRun, StepState, idempotency_key
from shared.flows.model import Flow

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


@dataclass(frozen=True)
class LaunchFailed:
    step: str
    attempt: int
    error: str
    retryable: bool


@dataclass(frozen=True)
class Polled:
    step: str
    attempt: int
    status: StepStatus


@dataclass(frozen=True)
class PollFailed:
    step: str
    attempt: int
    error: str
    retryable: bool


Event = Incoming | Launched | LaunchFailed | Polled | PollFailed
Observation = Launched | LaunchFailed | Polled | PollFailed


@dataclass
class Decision:
    """The next run, the commands to perform (in order) and whether the run must be saved."""

    run: Run
    commands: list[Command] = field(default_factory=list)
    changed: bool = False


# ---------------------------------------------------------------- decide


def decide(run: Run, flow: Flow, event: Event, now: datetime) -> Decision:
    """Apply one event to a copy of ``run``; see the module docstring for the guarantees."""
    d = _Decider(run.model_copy(deep=True), flow, now)
    d.apply(event)
    if d.changed:
        d.run.updated_at = now
    return Decision(run=d.run, commands=d.commands, changed=d.changed)


def tick_message(run: Run, step: StepRun) -> Message:
    """The one tick message ``step`` currently waits for."""
    return Message(
        kind="tick",
        run_id=run.run_id,
        flow=run.flow,
        step=step.name,
        attempt=step.attempt,
        tick=step.tick,
        traceparent=run.traceparent,
    ).with_id()


def start_message(run: Run) -> Message:
    return Message(kind="start", run_id=run.run_id, flow=run.flow, traceparent=run.traceparent).with_id()


class _Decider:
    def __init__(self, run: Run, flow: Flow, now: datetime) -> None:
        self.run = run
        self.flow = flow
        self.now = now
        self.commands: list[Command] = []
        self.changed = False

    # -------------------------------------------------------------- dispatch

    def apply(self, event: Event) -> None:
        run = self.run
        rerun = isinstance(event, Incoming) and event.message.kind == "rerun"
        if run.cancel_requested and not run.status.terminal and not rerun:
            # A cancel recorded on the run (by control.request_cancel) wins over anything else.
            self._cancel()
        if isinstance(event, Incoming):
            self._incoming(event)
        elif isinstance(event, Launched):
            self._launched(event)
        elif isinstance(event, LaunchFailed):
            self._launch_failed(event)
        elif isinstance(event, Polled):
            self._polled(event)
        elif isinstance(event, PollFailed):
            self._poll_failed(event)

    def _incoming(self, ev: Incoming) -> None:
        msg = ev.message
        if msg.run_id != self.run.run_id:
            return
        acted = False
        if msg.kind == "start":
            acted = self._start(ev)
        elif msg.kind == "tick":
            acted = self._tick(msg)
        elif msg.kind == "cancel":
            acted = self._cancel_message(msg)
        elif msg.kind == "rerun":
            acted = self._rerun(ev)
        if not acted and ev.redelivered:
            self._resume()

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
            step = run.current_step()
            if step is not None and step.state is StepState.LAUNCHING and step.key:
                # The launch may have crashed before its result was saved: the same key reattaches.
                self.commands.append(Launch(step.name, step.attempt, step.key))
                return True
        return False

    def _tick(self, msg: Message) -> bool:
        run = self.run
        if run.status is not RunStatus.RUNNING or msg.step is None:
            return False
        step = _find(run, msg.step)
        if step is None or (msg.attempt, msg.tick) != (step.attempt, step.tick):
            return False
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
        from_step = msg.from_step
        if from_step is None:
            cur = run.current_step()
            from_step = cur.name if cur is not None else (run.steps[0].name if run.steps else None)
        if from_step is None:
            return False
        idx = next((i for i, s in enumerate(run.steps) if s.name == from_step), None)
        if idx is None or any(s.state is not StepState.SUCCEEDED for s in run.steps[:idx]):
            return False
        for s in run.steps[idx:]:
            _reset(s)
        run.gate = None
        for s in run.steps[:idx]:
            if "gate" in s.outputs:
                run.gate = s.outputs["gate"]
        run.reruns += 1
        run.cancel_requested = False
        run.error = None
        run.ended_at = None
        run.started_at = None
        self.changed = True
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
        """Re-issue the side effect the run's current state waits on (crash recovery)."""
        run = self.run
        if run.status.terminal:
            self.commands.append(StartQueued(run.flow))
            return
        if run.status is not RunStatus.RUNNING:
            return
        step = run.current_step()
        if step is None:
            return
        spec = self._spec(step)
        if step.state is StepState.LAUNCHING and step.key:
            self.commands.append(Launch(step.name, step.attempt, step.key))
        elif step.state is StepState.RUNNING and spec is not None:
            self.commands.append(Send(tick_message(run, step), spec.poll.delay(step.polls)))
        elif step.state is StepState.RETRY_WAIT and spec is not None:
            self.commands.append(Send(tick_message(run, step), spec.retries.delay(step.attempt)))

    # -------------------------------------------------------------- observations

    def _current(self, name: str, attempt: int, state: StepState) -> StepRun | None:
        if self.run.status is not RunStatus.RUNNING:
            return None
        step = _find(self.run, name)
        if step is None or step.attempt != attempt or step.state is not state:
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
        step.state = StepState.RUNNING
        step.remote_id = ev.result.remote_id
        step.remote_url = ev.result.url
        step.polls = 0
        step.tick += 1
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
        if step is not None:
            self._fail_attempt(step, ev.error, ev.retryable)

    def _polled(self, ev: Polled) -> None:
        step = self._current(ev.step, ev.attempt, StepState.RUNNING)
        if step is None:
            return
        status = ev.status
        if status.progress is not None:
            step.progress = dict(status.progress)
        self.changed = True
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

    # -------------------------------------------------------------- transitions

    def _next_poll(self, step: StepRun) -> None:
        spec = self._spec(step)
        if spec is None:
            return
        if step.started_at is not None and (self.now - step.started_at).total_seconds() > spec.timeout_seconds:
            if step.remote_id:
                self.commands.append(Cancel(step.name, step.remote_id))
            self._fail_attempt(step, f"timed out after {spec.timeout_seconds:g}s", True)
            return
        step.tick += 1
        self.commands.append(Send(tick_message(self.run, step), spec.poll.delay(step.polls)))

    def _advance(self) -> None:
        """Start the first step that has not succeeded, or finish the run."""
        step = self.run.current_step()
        if step is None:
            self._finish(RunStatus.SUCCEEDED)
            return
        self._begin_attempt(step)

    def _begin_attempt(self, step: StepRun) -> None:
        if self._spec(step) is None:
            return
        step.attempt += 1
        step.key = idempotency_key(self.run.run_id, step.name, step.attempt)
        step.state = StepState.LAUNCHING
        step.remote_id = None
        step.remote_url = None
        step.started_at = self.now
        step.ended_at = None
        step.polls = 0
        step.progress = None
        step.outputs = {}
        step.error = None
        step.error_retryable = None
        self.changed = True
        self.commands.append(Launch(step.name, step.attempt, step.key))

    def _succeed(self, step: StepRun, status: StepStatus) -> None:
        step.outputs = dict(status.outputs)
        step.state = StepState.SUCCEEDED
        step.ended_at = self.now
        step.error = None
        step.error_retryable = None
        _record(step, "succeeded")
        if "gate" in step.outputs:
            self.run.gate = step.outputs["gate"]
        self._emit("step.succeeded", step=step.name, attempt=step.attempt, remote_id=step.remote_id, **_dur(step))
        self._advance()

    def _fail_attempt(self, step: StepRun, error: str, retryable: bool) -> None:
        spec = self._spec(step)
        if spec is None:
            return  # _spec failed the run
        step.error = error
        step.error_retryable = retryable
        step.ended_at = self.now
        self.changed = True
        retries = spec.retries
        if step.attempt < retries.count + 1 and (retryable or retries.on == "any"):
            _record(step, "failed")
            step.state = StepState.RETRY_WAIT
            step.tick += 1
            delay = retries.delay(step.attempt)
            self._emit(
                "step.retrying", step=step.name, attempt=step.attempt, error=error, retryable=retryable, delay=delay
            )
            self.commands.append(Send(tick_message(self.run, step), delay))
            return
        _record(step, "failed")
        step.state = StepState.FAILED
        self._emit("step.failed", step=step.name, attempt=step.attempt, error=error, retryable=retryable, **_dur(step))
        self._finish(RunStatus.FAILED, f"step {step.name} failed: {error}")

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
            if step.state in (StepState.LAUNCHING, StepState.RUNNING, StepState.RETRY_WAIT):
                if step.state is not StepState.RETRY_WAIT and step.remote_id:
                    self.commands.append(Cancel(step.name, step.remote_id))
                step.state = StepState.CANCELLED
                step.ended_at = self.now
                step.error = "cancelled"
                _record(step, "cancelled")
        run.status = RunStatus.CANCELLED
        run.ended_at = self.now
        run.error = "cancelled"
        self.changed = True
        self._emit("run.finished", status=RunStatus.CANCELLED.value)
        if held_slot:
            self.commands.append(StartQueued(run.flow))

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

    def _emit(self, name: str, **attributes: Any) -> None:
        self.commands.append(Emit(name, {"run_id": self.run.run_id, "flow": self.run.flow, **attributes}))


def _find(run: Run, name: str) -> StepRun | None:
    for s in run.steps:
        if s.name == name:
            return s
    return None


def _reset(step: StepRun) -> None:
    """Back to PENDING for a rerun; ``attempt``, ``tick`` and ``history`` are kept so new keys differ."""
    step.state = StepState.PENDING
    step.key = None
    step.remote_id = None
    step.remote_url = None
    step.started_at = None
    step.ended_at = None
    step.polls = 0
    step.outputs = {}
    step.progress = None
    step.error = None
    step.error_retryable = None


def _record(step: StepRun, outcome: str) -> None:
    step.history.append(
        {
            "attempt": step.attempt,
            "key": step.key,
            "remote_id": step.remote_id,
            "outcome": outcome,
            "started_at": step.started_at.isoformat() if step.started_at else None,
            "ended_at": step.ended_at.isoformat() if step.ended_at else None,
            "error": step.error,
            "retryable": step.error_retryable,
        }
    )


def _dur(step: StepRun) -> dict[str, Any]:
    if step.started_at is None or step.ended_at is None:
        return {}
    return {"duration_seconds": (step.ended_at - step.started_at).total_seconds()}


__all__ = [
    "Decision",
    "Event",
    "Incoming",
    "LaunchFailed",
    "Launched",
    "Observation",
    "PollFailed",
    "Polled",
    "decide",
    "start_message",
    "tick_message",
]
