"""The rules of a for_each step's fan-out: its instances, their attempts, ``max_parallel`` (pure).

Part of ``decide`` (shared.engine.decide builds on :class:`FanOutRules`). A fan-out's state is
the ``FanOut`` row (counts, ``next``) and one ``InstanceRun`` row per begun instance, outside
the run document; a decision that changes them returns one :class:`FanOutWrite`, which the
executor saves atomically (one transaction, every row ETag-guarded) *instead of* the run:
no decision writes both, so a lost race on either side loses nothing. The two sides meet
through state both can read: the run's step is RUNNING with the fan-out's ``epoch``; the
fan-out row says when it has settled or failed (then a ``FollowUp`` lets the run's side act:
the step succeeds or fails and the run moves on), and an instance event that finds its
fan-out no longer live (run ended, step cancelled, fail_fast) cancels the instance.

Launching is exactly-once: instances begin only in a FanOut write (``next`` advances with
the rows inserted, which must not exist), and each instance's idempotency key
``run-step_index-attempt`` is saved before its launch. At most ``max_parallel`` instances are
active (launching, running or waiting for a retry); a decision begins at most
``LAUNCH_BATCH`` and, when more could start, sends a ``fanout`` continuation message (only
the current one acts), so no handler does unbounded work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.backends.base import LaunchResult, StepStatus
from shared.engine import attempts
from shared.engine.commands import Cancel, Command, Emit, FollowUp, Launch, LoadInstances, Poll, Send
from shared.engine.model import (
    FanOut,
    InstanceRun,
    Message,
    MessageKind,
    Run,
    RunStatus,
    StepRun,
    StepState,
    idempotency_key,
)
from shared.flows.model import Flow

LAUNCH_BATCH = 16  # instances one decision begins at most
PAGE = 90  # instance rows one decision loads or cancels at most (a transaction holds 100)
ACTIVE = (StepState.LAUNCHING, StepState.RUNNING, StepState.RETRY_WAIT)


@dataclass(frozen=True)
class FanOuts:
    """What the executor loaded of a run's fan-outs for one decision: every FanOut row, by step,
    and the instance rows the event is about, by (step, index)."""

    heads: Mapping[str, FanOut] = field(default_factory=dict)
    instances: Mapping[tuple[str, int], InstanceRun] = field(default_factory=dict)


@dataclass
class FanOutWrite:
    """Save ``fanout`` (None: leave it) and ``instances`` together, each only if unchanged."""

    step: str
    fanout: FanOut | None
    instances: list[InstanceRun] = field(default_factory=list)


def run_message(run: Run, kind: MessageKind, step: str, attempt: int, tick: int, index: int | None = None) -> Message:
    """A ``tick``/``fanout`` message of ``run`` (its id makes duplicates collapse)."""
    return Message(
        kind=kind,
        run_id=run.run_id,
        flow=run.flow,
        step=step,
        attempt=attempt,
        tick=tick,
        index=index,
        traceparent=run.traceparent,
    ).with_id()


def instance_tick(run: Run, inst: InstanceRun) -> Message:
    """The one tick message instance ``inst`` currently waits for."""
    return run_message(run, "tick", inst.name, inst.attempt, inst.tick, inst.index)


def continuation(run: Run, head: FanOut) -> Message:
    """The one ``fanout`` message (begin more instances) the fan-out currently acts on."""
    return run_message(run, "fanout", head.step, head.epoch, head.tick)


class FanOutRules:
    """The decider's fan-out half; the run half (shared.engine.decide) derives from it."""

    run: Run
    flow: Flow
    now: datetime
    commands: list[Command]
    changed: bool

    def __init__(self, run: Run, flow: Flow, now: datetime, fanouts: FanOuts | None) -> None:
        self.run = run
        self.flow = flow
        self.now = now
        self.commands = []
        self.changed = False
        fanouts = fanouts or FanOuts()
        self.heads: dict[str, FanOut] = {k: v.model_copy(deep=True) for k, v in fanouts.heads.items()}
        self.rows: dict[tuple[str, int], InstanceRun] = {
            k: v.model_copy(deep=True) for k, v in fanouts.instances.items()
        }
        self.write: FanOutWrite | None = None

    # -------------------------------------------------------------- shared helpers

    def _emit(self, name: str, **attributes: Any) -> None:
        self.commands.append(Emit(name, {"run_id": self.run.run_id, "flow": self.run.flow, **attributes}))

    def _writing(self, step: str, head: bool = True) -> FanOut:
        """The fan-out row this decision writes (one per decision), marked for saving."""
        fan = self.heads[step]
        if self.write is None:
            self.write = FanOutWrite(step, fan if head else None)
        assert self.write.step == step, "one fan-out write per decision"
        if head:
            self.write.fanout = fan
        return fan

    def _save_row(self, inst: InstanceRun) -> None:
        assert self.write is not None and self.write.step == inst.name
        if all(r is not inst for r in self.write.instances):
            self.write.instances.append(inst)

    def _step_run(self, name: str) -> StepRun | None:
        return next((s for s in self.run.steps if s.name == name), None)

    def run_stopping(self, step: str) -> bool:
        """fail_fast stopped the run after a failure, and ``step`` is not a cleanup/failure handler."""
        from shared.engine import scheduling

        if self.flow.policies.on_failure != "fail_fast":
            return False
        if not (scheduling.stopping(self.run, self.flow) or getattr(self, "failed_now", False)):
            return False
        try:
            return self.flow.step(step).run_if == "all_succeeded"
        except KeyError:
            return True

    def live(self, head: FanOut) -> bool:
        """Whether the fan-out may still begin and keep instances."""
        step = self._step_run(head.step)
        return (
            self.run.status is RunStatus.RUNNING
            and not self.run.cancel_requested
            and step is not None
            and step.state is StepState.RUNNING
            and step.fanout is not None
            and step.fanout.epoch == head.epoch
            and head.stopping is None
            and not self.run_stopping(head.step)
        )

    @staticmethod
    def _move(head: FanOut, old: StepState | None, new: StepState | None) -> None:
        if old is not None:
            head.counts[old.value] = max(0, head.counts.get(old.value, 0) - 1)
        if new is not None:
            head.counts[new.value] = head.counts.get(new.value, 0) + 1

    # -------------------------------------------------------------- beginning instances

    def begin_more(self, step: str) -> None:
        """Begin as many waiting instances as ``max_parallel`` allows (at most LAUNCH_BATCH)."""
        head = self.heads.get(step)
        if head is None or not self.live(head):
            return
        try:
            spec = self.flow.step(step)
        except KeyError:
            return
        limit = spec.max_parallel or head.total
        free = limit - head.active
        k = min(free, head.total - head.next, LAUNCH_BATCH)
        if k <= 0:
            return
        head = self._writing(step)
        attempt = head.attempt_base + 1
        for index in range(head.next, head.next + k):
            inst = InstanceRun(name=step, kind=spec.kind, index=index, epoch=head.epoch)
            attempts.begin(inst, attempt, idempotency_key(self.run.run_id, step, attempt, index), self.now)
            self.rows[(step, index)] = inst
            self._save_row(inst)
            self._move(head, None, StepState.LAUNCHING)
            self.commands.append(Launch(step, attempt, inst.key or "", index))
        head.next += k
        head.max_attempt = max(head.max_attempt, attempt)
        if head.next < head.total and free > k:
            head.tick += 1
            self.commands.append(Send(continuation(self.run, head), 0.0))

    # -------------------------------------------------------------- events

    def on_fanout_message(self, msg: Message) -> bool:
        head = self.heads.get(msg.step or "")
        if head is None or (msg.attempt, msg.tick) != (head.epoch, head.tick) or not self.live(head):
            return False
        self.begin_more(head.step)
        return True

    def on_instance_tick(self, msg: Message) -> bool:
        inst = self._instance(msg.step, msg.index)
        if inst is None or (msg.attempt, msg.tick) != (inst.attempt, inst.tick):
            return False
        head = self.heads[inst.name]
        if not self.live(head):
            if inst.state in ACTIVE:
                self.cancel_instances(head.step, [inst])
                return True
            return False
        if inst.state in ACTIVE and attempts.note_stall(inst, self.now):  # late: that time is not the instance's
            self._writing(inst.name, head=False)
            self._save_row(inst)
        if inst.state is StepState.RUNNING and inst.remote_id:
            self.commands.append(Poll(inst.name, inst.attempt, inst.remote_id, inst.index))
            return True
        if inst.state is StepState.RETRY_WAIT:
            self._writing(inst.name)
            self._begin_next_attempt(head, inst)
            return True
        if inst.state is StepState.LAUNCHING and inst.key:
            self.commands.append(Launch(inst.name, inst.attempt, inst.key, inst.index))
            return True
        return False

    def on_instance_launched(self, step: str, index: int, attempt: int, result: LaunchResult) -> None:
        inst = self._instance(step, index)
        if inst is None or inst.attempt != attempt:
            return
        if inst.state is StepState.CANCELLED:  # cancelled while the launch was in flight
            self.commands.append(Cancel(step, result.remote_id, index))
            return
        if inst.state is not StepState.LAUNCHING:
            return
        head = self.heads[step]
        if not self.live(head):
            inst.remote_id = result.remote_id
            self.cancel_instances(step, [inst])
            return
        head = self._writing(step)
        attempts.launched(inst, result.remote_id, result.url)
        self._move(head, StepState.LAUNCHING, StepState.RUNNING)
        self._save_row(inst)
        spec = self.flow.step(step)
        self._emit(
            "step.launched",
            step=step,
            index=index,
            attempt=attempt,
            job=inst.key,
            remote_id=inst.remote_id,
            reattached=result.reattached,
        )
        self.commands.append(Send(instance_tick(self.run, inst), spec.poll.delay(0)))

    def on_instance_launch_failed(self, step: str, index: int, attempt: int, error: str, retryable: bool) -> None:
        inst = self._current_instance(step, index, attempt, StepState.LAUNCHING)
        if inst is None:
            return
        spec = self.flow.step(step)
        if retryable and not attempts.timed_out(inst, spec.timeout_seconds, self.now):
            self._writing(step, head=False)  # the same key again, later: it reattaches if the job did start
            inst.polls += 1
            inst.tick += 1
            self._save_row(inst)
            self.commands.append(Send(instance_tick(self.run, inst), spec.poll.delay(inst.polls - 1)))
            return
        self._writing(step)
        self._fail_instance(inst, error, retryable)

    def on_instance_polled(self, step: str, index: int, attempt: int, status: StepStatus) -> None:
        inst = self._current_instance(step, index, attempt, StepState.RUNNING)
        if inst is None:
            return
        if status.progress is not None:
            inst.progress = dict(status.progress)
        if attempts.note_reruns(inst, status.reruns, self.now):
            self._writing(step, head=False)
            self._save_row(inst)
        if status.state == "running":
            inst.polls += 1
            self._next_instance_poll(inst)
        elif status.state == "succeeded":
            head = self._writing(step)
            attempts.succeed(inst, status.outputs, self.now)
            self._move(head, StepState.RUNNING, StepState.SUCCEEDED)
            self._save_row(inst)
            self._emit("step.succeeded", step=step, index=index, attempt=attempt, remote_id=inst.remote_id)
            self._after_instance(head)
        elif status.state == "failed":
            self._writing(step)
            self._fail_instance(inst, status.error or "the remote job failed", status.retryable)
        else:
            self._writing(step)
            self._fail_instance(inst, status.error or "the remote job was cancelled outside Conveyor", False)

    def on_instance_poll_failed(self, step: str, index: int, attempt: int, error: str, retryable: bool) -> None:
        inst = self._current_instance(step, index, attempt, StepState.RUNNING)
        if inst is None:
            return
        if retryable:
            inst.polls += 1
            self._next_instance_poll(inst)
            return
        self._writing(step)
        if inst.remote_id:
            self.commands.append(Cancel(step, inst.remote_id, index))
        self._fail_instance(inst, f"polling failed: {error}", False)

    def on_instances_loaded(self, step: str, epoch: int, rows: list[InstanceRun], limit: int) -> None:
        """Rows the executor loaded for a stop (cancel them) or a resume (re-send what they wait on)."""
        head = self.heads.get(step)
        if head is None or head.epoch != epoch:
            return
        for row in rows:
            self.rows[(step, row.index)] = row.model_copy(deep=True)
        mine = [self.rows[(step, r.index)] for r in rows if r.epoch == epoch]
        if not self.live(head):
            self.cancel_instances(step, [r for r in mine if r.state in ACTIVE])
            if self.heads[step].active == 0:
                self.commands.append(FollowUp())  # e.g. a rerun's fan-out waits for this one to stop
        else:
            spec = self.flow.step(step)
            for inst in mine:
                if inst.state in (StepState.RUNNING, StepState.RETRY_WAIT) and (
                    inst.due_at is None or inst.due_at < self.now
                ):  # overdue, as a plain step's in decide._resume: stall time, a new tick, its deadline saved
                    attempts.note_stall(inst, self.now)
                    inst.tick += 1
                    self._writing(step, head=False)
                    self._save_row(inst)
                if inst.state is StepState.LAUNCHING and inst.key:
                    self.commands.append(Launch(step, inst.attempt, inst.key, inst.index))
                elif inst.state is StepState.RUNNING:
                    self.commands.append(Send(instance_tick(self.run, inst), spec.poll.delay(inst.polls)))
                elif inst.state is StepState.RETRY_WAIT:
                    tried = inst.attempt - head.attempt_base
                    self.commands.append(Send(instance_tick(self.run, inst), spec.retries.delay(tried)))
            self.begin_more(step)
        if len(rows) >= limit and rows:
            self.commands.append(LoadInstances(step, epoch, ACTIVE, rows[-1].index + 1, PAGE))

    def on_fanout_created(self, step: str, epoch: int) -> None:
        head = self.heads.get(step)
        if head is not None and head.epoch == epoch:
            self.begin_more(step)

    # -------------------------------------------------------------- stopping

    def cancel_instances(self, step: str, rows: list[InstanceRun]) -> None:
        """Cancel these active instances (their remote jobs too); the fan-out begins nothing new."""
        head = self._writing(step)
        if head.stopping is None:
            head.stopping = "cancelled" if self.run.cancel_requested else "stopped"
        for inst in rows[:PAGE]:
            if inst.state not in ACTIVE:
                continue
            if inst.state is not StepState.RETRY_WAIT and inst.remote_id:
                self.commands.append(Cancel(step, inst.remote_id, inst.index))
            self._move(head, inst.state, StepState.CANCELLED)
            attempts.cancel(inst, self.now)
            self._save_row(inst)

    def stop_fanouts(self) -> bool:
        """Start cancelling the instances of one fan-out that is no longer live (one write per decision)."""
        for head in self.heads.values():
            if head.active == 0 or self.live(head):
                continue
            step = self._step_run(head.step)
            current = step is not None and step.fanout is not None and step.fanout.epoch == head.epoch
            if head.stopping is None:
                fan = self._writing(head.step)
                fan.stopping = "cancelled" if self.run.cancel_requested else ("stopped" if current else "superseded")
            self.commands.append(LoadInstances(head.step, head.epoch, ACTIVE, 0, PAGE))
            return True
        for head in self.heads.values():  # stopped before any instance ran: settle it on the run's side
            if head.stopping is None and head.active == 0 and not self.live(head) and self.run_stopping(head.step):
                step = self._step_run(head.step)
                if step is not None and step.state is StepState.RUNNING and step.fanout is not None:
                    self._writing(head.step).stopping = "stopped"
                    self.commands.append(FollowUp())
                    return True
        return False

    # -------------------------------------------------------------- internals

    def _instance(self, step: str | None, index: int | None) -> InstanceRun | None:
        if step is None or index is None:
            return None
        head = self.heads.get(step)
        inst = self.rows.get((step, index))
        if head is None or inst is None or inst.epoch != head.epoch:
            return None
        return inst

    def _current_instance(self, step: str, index: int, attempt: int, state: StepState) -> InstanceRun | None:
        inst = self._instance(step, index)
        if inst is None or inst.attempt != attempt or inst.state is not state:
            return None
        if not self.live(self.heads[step]):
            self.cancel_instances(step, [inst])
            return None
        return inst

    def _next_instance_poll(self, inst: InstanceRun) -> None:
        spec = self.flow.step(inst.name)
        if attempts.timed_out(inst, spec.timeout_seconds, self.now):
            self._writing(inst.name)
            if inst.remote_id:
                self.commands.append(Cancel(inst.name, inst.remote_id, inst.index))
            self._fail_instance(inst, f"timed out after {spec.timeout_seconds:g}s", True)
            return
        if self.write is None:
            self.write = FanOutWrite(inst.name, None)  # the row alone: the counts did not change
        inst.tick += 1
        self._save_row(inst)
        self.commands.append(Send(instance_tick(self.run, inst), spec.poll.delay(inst.polls)))

    def _begin_next_attempt(self, head: FanOut, inst: InstanceRun) -> None:
        attempt = inst.attempt + 1
        attempts.begin(inst, attempt, idempotency_key(self.run.run_id, inst.name, attempt, inst.index), self.now)
        self._move(head, StepState.RETRY_WAIT, StepState.LAUNCHING)
        head.max_attempt = max(head.max_attempt, attempt)
        self._save_row(inst)
        self.commands.append(Launch(inst.name, attempt, inst.key or "", inst.index))

    def _fail_instance(self, inst: InstanceRun, error: str, retryable: bool) -> None:
        head = self.heads[inst.name]
        spec = self.flow.step(inst.name)
        before = inst.state
        tried = inst.attempt - head.attempt_base
        retry = attempts.fail(inst, spec, error, retryable, self.now, tried=tried)
        self._save_row(inst)
        attrs = {
            "step": inst.name,
            "index": inst.index,
            "attempt": inst.attempt,
            "error": error,
            "retryable": retryable,
        }
        if retry:
            self._move(head, before, StepState.RETRY_WAIT)
            delay = spec.retries.delay(tried)
            self._emit("step.retrying", **attrs, delay=delay)
            self.commands.append(Send(instance_tick(self.run, inst), delay))
            return
        self._move(head, before, StepState.FAILED)
        head.first_error = head.first_error or f"[{inst.index}] {error}"
        self._emit("step.failed", **attrs, **attempts.duration(inst))
        if self.flow.policies.on_failure == "fail_fast":
            head.stopping = "failed"
            self.commands.append(FollowUp())  # the run's side fails the step and stops the rest
            if head.active:
                self.commands.append(LoadInstances(inst.name, head.epoch, ACTIVE, 0, PAGE))
            return
        self._after_instance(head)

    def _after_instance(self, head: FanOut) -> None:
        """An instance ended: fill its slot, or hand over to the run's side when all are done."""
        self.begin_more(head.step)
        if head.settled:
            self.commands.append(FollowUp())


__all__ = ["LAUNCH_BATCH", "PAGE", "FanOutRules", "FanOutWrite", "FanOuts", "continuation", "instance_tick"]
