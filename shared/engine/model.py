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

    @property
    def terminal(self) -> bool:
        return self in (StepState.SUCCEEDED, StepState.FAILED, StepState.CANCELLED)


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
        """The first step that is not succeeded (the one the run is on)."""
        for s in self.steps:
            if s.state is not StepState.SUCCEEDED:
                return s
        return None


MessageKind = Literal["start", "tick", "cancel", "rerun", "start_batch"]

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
    step: str | None = None  # tick: which step
    attempt: int | None = None  # tick: which attempt of the step
    tick: int | None = None  # tick: sequence number (only the current one acts)
    from_step: str | None = None  # rerun: restart here
    traceparent: str = ""
    message_id: str = ""
    # start_batch: the runs to start. The executor fans it out into one ``start`` per run
    # (message id = run id); ``run_id`` is then ``batch-<hash of the ids>``, never a run's id.
    # Left out of the JSON when unset, so other messages read the same as before.
    run_ids: list[str] | None = Field(default=None, exclude_if=lambda v: v is None)

    def with_id(self) -> Message:
        """Fill ``message_id`` deterministically so duplicates collapse on Service Bus."""
        if self.message_id:
            return self
        if self.kind == "start":
            mid = self.run_id
        elif self.kind == "start_batch":
            mid = start_batch_id(self.run_ids or [])
        elif self.kind == "tick":
            mid = f"{self.run_id}:{self.step}:{self.attempt}:{self.tick}"
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


def idempotency_key(run_id: str, step: str, attempt: int) -> str:
    """``run-step-attempt``: Batch job id, Databricks idempotency_token, AML job name.

    Kept to [a-z0-9-] and ≤64 characters (Batch job ids allow 64; Databricks tokens 64).
    """
    safe_step = "".join(c if c.isalnum() else "-" for c in step.lower())[:20]
    return f"{run_id[:32]}-{safe_step}-{attempt}"[:64]
