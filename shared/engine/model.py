"""Runs, steps, trigger contexts and the messages that move them.

These cross every boundary (queue, table, HTTP, CLI), so they are pydantic models with
JSON round-trips. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RunStatus(StrEnum):
    PENDING = "pending"  # created; start message sent (or about to be)
    QUEUED = "queued"  # waiting for a concurrency slot (max_concurrent_runs)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepState(StrEnum):
    PENDING = "pending"  # not reached yet
    LAUNCHING = "launching"  # idempotency key recorded; launch in flight
    RUNNING = "running"  # launched; polled by ticks
    RETRY_WAIT = "retry_wait"  # failed an attempt; next attempt scheduled
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # never ran: its ``if`` was false, or ``run_if`` ruled it out (see StepRun.skip)

    @property
    def terminal(self) -> bool:
        return self in (StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED)

    @property
    def active(self) -> bool:
        """Launched or about to be (holds a slot)."""
        return self in (StepState.LAUNCHING, StepState.RUNNING, StepState.RETRY_WAIT)


# Why a step was skipped. The first two count as done for the steps that need it (they run);
# the last counts as a failure upstream (``run_if: all_succeeded`` steps after it are skipped).
SKIP_CONDITION = "condition"  # its ``if`` was false
SKIP_NO_FAILURE = "no_failure"  # run_if: any_failed, and nothing it needs failed
SKIP_UPSTREAM = "upstream"  # run_if: all_succeeded, and a step it needs failed, was cancelled or skipped so
OK_SKIPS = (SKIP_CONDITION, SKIP_NO_FAILURE)


class TriggerContext(BaseModel):
    """What started a run. Rendered into step params as ``${trigger.*}``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["blob", "schedule", "azure_devops", "manual"]
    # blob: {url, container, name, etag, size, content_type, event_id, event_time}
    blob: dict[str, Any] | None = None
    # schedule: {fire_time (ISO), timezone, cron}
    schedule: dict[str, Any] | None = None
    # azure_devops: {event_type, event_id, repository, branch, commit, build_id, result, ...}
    devops: dict[str, Any] | None = None
    # manual: caller-supplied parameters
    params: dict[str, Any] = Field(default_factory=dict)
    source: str = Field(default="", description="human-readable origin, e.g. blob URL or caller")
    received_at: datetime | None = None

    def template_scope(self) -> dict[str, Any]:
        scope: dict[str, Any] = {"kind": self.kind, "params": self.params, "source": self.source}
        if self.blob is not None:
            scope["blob"] = self.blob
        if self.schedule is not None:
            scope["schedule"] = self.schedule
        if self.devops is not None:
            scope["devops"] = self.devops
        return scope


class StepRun(BaseModel):
    """One step of one run: its state, attempts and outputs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    state: StepState = StepState.PENDING
    attempt: int = 0  # attempts started; the idempotency key uses it
    key: str | None = None  # run-step-attempt: the remote job's idempotency key
    remote_id: str | None = None  # the backend's id for the launched job
    remote_url: str | None = None
    started_at: datetime | None = None  # first launch of the current attempt
    ended_at: datetime | None = None
    tick: int = 0  # sequence of the only tick message this step will act on
    polls: int = 0  # polls in the current attempt (drives backoff)
    outputs: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, int] | None = None  # {"done": n, "total": m}
    error: str | None = None
    error_retryable: bool | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)  # finished attempts
    # Left out of the JSON when unset, so chain runs read the same as before.
    skip: str | None = Field(default=None, exclude_if=lambda v: v is None)  # SKIP_*: why it was skipped
    fanout: FanOutRef | None = Field(default=None, exclude_if=lambda v: v is None)  # for_each steps
    # Stall recovery (shared.engine.attempts): when the message this unit waits on is due (its
    # tick's scheduled time; "now" for a launch in flight), the time the current attempt spent
    # waiting past such deadlines (a host loss, a backlog: not the job's time, so not counted
    # against the step's timeout), and the work its backend ran again after a host loss.
    due_at: datetime | None = Field(default=None, exclude_if=lambda v: v is None)
    stalled_seconds: float = Field(default=0.0, exclude_if=lambda v: not v)
    host_loss_reruns: int = Field(default=0, exclude_if=lambda v: not v)

    @property
    def ok(self) -> bool:
        """Done in a way the steps that need it accept: succeeded, or skipped by a condition."""
        return self.state is StepState.SUCCEEDED or (self.state is StepState.SKIPPED and self.skip in OK_SKIPS)


class FanOutRef(BaseModel):
    """On the run document, a for_each step's current fan-out; its live state is the FanOut row.

    ``epoch`` counts the step's (re)starts: instance rows are per epoch, so a rerun begins afresh.
    ``total`` is None until the for_each list is known. ``counts`` is the instances' states as the
    step settled (while it runs, read the FanOut row).
    """

    model_config = ConfigDict(extra="forbid")

    epoch: int = 0
    total: int | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class InstanceRun(StepRun):
    """One instance of a for_each step: a StepRun of its own (attempts, key, outputs...), stored
    outside the run document (shared.store.base.InstanceStore), one row per (step, epoch, index).

    ``attempt`` is global across the step's epochs (``FanOut.attempt_base`` + attempts in this
    epoch), so a rerun's instance never reuses an earlier job's idempotency key.
    """

    index: int
    epoch: int
    etag: str | None = Field(default=None, exclude=True)


class FanOut(BaseModel):
    """The live state of one for_each step's fan-out: one row per (run, step), ETag-guarded.

    Every instance transition that changes these counts is saved together with the instance
    row in one transaction, so launching is exactly-once and ``max_parallel`` holds under races.
    Instances ``[0, next)`` have begun; ``[next, total)`` wait. ``stopping`` (fail_fast, cancel,
    the step no longer current) means nothing new begins.
    """

    model_config = ConfigDict(extra="forbid")

    run_id: str
    step: str
    epoch: int
    total: int
    next: int = 0
    counts: dict[str, int] = Field(default_factory=dict)  # instance state -> how many
    attempt_base: int = 0  # attempts of earlier epochs (keys stay unique across reruns)
    max_attempt: int = 0  # the highest attempt any instance of this fan-out began
    stopping: str | None = None
    tick: int = 0  # sequence of the only ``fanout`` continuation message that acts
    first_error: str | None = None
    etag: str | None = Field(default=None, exclude=True)

    def count(self, *states: StepState) -> int:
        return sum(self.counts.get(s.value, 0) for s in states)

    @property
    def active(self) -> int:
        return self.count(StepState.LAUNCHING, StepState.RUNNING, StepState.RETRY_WAIT)

    @property
    def settled(self) -> bool:
        """Nothing runs and nothing more will begin."""
        return self.active == 0 and (self.next >= self.total or self.stopping is not None)

    def summary(self) -> dict[str, int]:
        """Counts by state including the instances that wait (``pending``)."""
        out = {k: v for k, v in self.counts.items() if v}
        waiting = self.total - self.next
        if waiting:
            out["pending"] = waiting
        return out


StepRun.model_rebuild()


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    flow: str
    status: RunStatus = RunStatus.PENDING
    trigger: TriggerContext
    steps: list[StepRun]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    traceparent: str = ""
    cancel_requested: bool = False
    reruns: int = 0
    gate: dict[str, Any] | None = None  # champion/challenger decision of the deploy step
    error: str | None = None
    version: int = 0  # bumped on every save (for humans; concurrency uses etag)
    # When the next message this run waits on is due (the earliest of its steps' ``due_at``; a
    # pending run's re-sent start): the stall sweep nudges the run once this, plus the queue's
    # visibility timeout and a margin, has passed (shared.engine.decide.overdue).
    due_at: datetime | None = Field(default=None, exclude_if=lambda v: v is None)
    etag: str | None = Field(default=None, exclude=True)  # store ETag of the loaded copy

    def step(self, name: str) -> StepRun:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def step_index(self, name: str) -> int:
        for i, s in enumerate(self.steps):
            if s.name == name:
                return i
        raise KeyError(name)

    def current_step(self) -> StepRun | None:
        """The first step that is not done (succeeded, or skipped by a condition): the one the run is on."""
        for s in self.steps:
            if not s.ok:
                return s
        return None


MessageKind = Literal["start", "tick", "cancel", "rerun", "start_batch", "fanout"]

# A ``start_batch`` message carries at most this many run ids, in at most this many characters
# of ids: its JSON stays far below the Storage Queue (64 KiB) and Service Bus (256 KiB) limits.
MAX_START_BATCH = 500
MAX_START_BATCH_CHARS = 40_000


class Message(BaseModel):
    """A work item on the queue. ``message_id`` is the duplicate-detection key."""

    model_config = ConfigDict(extra="forbid")

    kind: MessageKind
    run_id: str
    flow: str = ""
    step: str | None = None  # tick/fanout: which step
    attempt: int | None = None  # tick: which attempt of the step; fanout: which epoch
    tick: int | None = None  # tick/fanout: sequence number (only the current one acts)
    from_step: str | None = None  # rerun: restart here
    traceparent: str = ""
    message_id: str = ""
    # start_batch: the runs to start. The executor fans it out into one ``start`` per run
    # (message id = run id); ``run_id`` is then ``batch-<hash of the ids>``, never a run's id.
    # Left out of the JSON when unset, so other messages read the same as before.
    run_ids: list[str] | None = Field(default=None, exclude_if=lambda v: v is None)
    # tick: the instance of a for_each step it is for (None: a step's own tick). ``fanout``: a
    # for_each step's continuation (begin more instances). Left out of the JSON when unset.
    index: int | None = Field(default=None, exclude_if=lambda v: v is None)

    def with_id(self) -> Message:
        """Fill ``message_id`` deterministically so duplicates collapse on Service Bus."""
        if self.message_id:
            return self
        if self.kind == "start":
            mid = self.run_id
        elif self.kind == "start_batch":
            mid = start_batch_id(self.run_ids or [])
        elif self.kind == "tick" and self.index is not None:
            mid = f"{self.run_id}:{self.step}.{self.index}:{self.attempt}:{self.tick}"
        elif self.kind == "tick":
            mid = f"{self.run_id}:{self.step}:{self.attempt}:{self.tick}"
        elif self.kind == "fanout":
            mid = f"{self.run_id}:{self.step}:fanout:{self.attempt}:{self.tick}"
        else:
            raw = f"{self.run_id}:{self.kind}:{self.from_step or ''}"
            mid = hashlib.sha256(raw.encode()).hexdigest()[:32]
        return self.model_copy(update={"message_id": mid})


def start_batch_id(run_ids: list[str]) -> str:
    """``batch-`` + a hash of the ids: the ``run_id`` and ``message_id`` of a ``start_batch``."""
    return "batch-" + hashlib.sha256("\x1f".join(run_ids).encode("utf-8")).hexdigest()[:32]


def start_batch_message(run_ids: list[str], flow: str = "", traceparent: str = "") -> Message:
    """One queue message asking to start many runs (see ``Message.run_ids``)."""
    if not run_ids or len(run_ids) > MAX_START_BATCH:
        raise ValueError(f"a start_batch carries 1-{MAX_START_BATCH} run ids, not {len(run_ids)}")
    ids = list(run_ids)
    return Message(
        kind="start_batch", run_id=start_batch_id(ids), flow=flow, traceparent=traceparent, run_ids=ids
    ).with_id()


def run_id_for(*parts: str) -> str:
    """Deterministic run id from the parts that identify one unit of work.

    blob: (flow, url, etag); schedule: (flow, fire time); webhook: (flow, event id).
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:32]


def idempotency_key(run_id: str, step: str, attempt: int, index: int | None = None) -> str:
    """``run-step-attempt``, or ``run-step_index-attempt`` for an instance of a for_each step:
    the Batch job id, Databricks idempotency_token, Azure ML job name, registry/gate key.

    Kept to [a-z0-9_-] and ≤64 characters (Batch job ids allow 64 of [A-Za-z0-9_-]; Databricks
    tokens 64; Azure ML names 255 of [A-Za-z0-9_-]): the issue's ``step[index]`` is written
    ``step_index`` because no remote id accepts brackets. ``_`` appears only there (the step name's
    other characters become ``-``), so step ``a`` instance 1 and a step named ``a-1`` never meet.
    32 + 1 + 20 + 1 + 5 (index < 100,000 = the largest max_items) + 1 + 3 (attempt) = 63.
    """
    safe_step = "".join(c if c.isalnum() else "-" for c in step.lower())[:20]
    if index is None:
        return f"{run_id[:32]}-{safe_step}-{attempt}"[:64]
    if index < 0:
        raise ValueError(f"an instance index is never negative, got {index}")
    return f"{run_id[:32]}-{safe_step}_{index}-{attempt}"
