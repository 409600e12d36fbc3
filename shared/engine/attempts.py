"""One attempt's life, shared by a step and an instance of a for_each step (pure helpers).

A unit (a ``StepRun`` or ``InstanceRun``) goes LAUNCHING → RUNNING → SUCCEEDED, or back to
RETRY_WAIT / on to FAILED; these helpers change the unit only. What a change means for the
run (the next steps, the fan-out's counts, the messages to send) is the caller's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.engine.model import StepRun, StepState


def begin(unit: StepRun, attempt: int, key: str, now: datetime) -> None:
    """Start attempt ``attempt`` under idempotency ``key`` (the key is saved before any launch)."""
    unit.attempt = attempt
    unit.key = key
    unit.state = StepState.LAUNCHING
    unit.remote_id = None
    unit.remote_url = None
    unit.started_at = now
    unit.ended_at = None
    unit.polls = 0
    unit.progress = None
    unit.outputs = {}
    unit.error = None
    unit.error_retryable = None
    unit.stalled_seconds = 0.0
    unit.host_loss_reruns = 0


def launched(unit: StepRun, remote_id: str, url: str | None) -> None:
    unit.state = StepState.RUNNING
    unit.remote_id = remote_id
    unit.remote_url = url
    unit.polls = 0
    unit.tick += 1


def timed_out(unit: StepRun, timeout_seconds: float, now: datetime) -> bool:
    """The attempt has run longer than ``timeout_seconds``, not counting the time it spent stalled."""
    if unit.started_at is None:
        return False
    return (now - unit.started_at).total_seconds() - unit.stalled_seconds > timeout_seconds


# A message this much past its due time is a stall (a host loss, a backlog), not the queue's jitter.
STALL_TOLERANCE_SECONDS = 2.0


def note_stall(unit: StepRun, now: datetime) -> bool:
    """The message ``unit`` waited on arrives (or is re-issued) at ``now``: the time past its due
    time, beyond the tolerance, is added to the attempt's stalled time. True when it was late."""
    if unit.due_at is None:
        return False
    late = (now - unit.due_at).total_seconds()
    if late <= STALL_TOLERANCE_SECONDS:
        return False
    unit.stalled_seconds += late
    unit.due_at = now  # accounted up to now: a redelivery of the same message does not count it twice
    return True


def succeed(unit: StepRun, outputs: dict[str, Any], now: datetime) -> None:
    unit.outputs = dict(outputs)
    unit.state = StepState.SUCCEEDED
    unit.ended_at = now
    unit.error = None
    unit.error_retryable = None
    record(unit, "succeeded")


def fail(unit: StepRun, spec: Any, error: str, retryable: bool, now: datetime, *, tried: int) -> bool:
    """The attempt failed: True when another one is due (RETRY_WAIT, tick bumped), else FAILED.

    ``tried``: attempts made so far in this life of the unit (a step's attempt; an instance's
    attempts in this epoch).
    """
    unit.error = error
    unit.error_retryable = retryable
    unit.ended_at = now
    retries = spec.retries
    record(unit, "failed")
    if tried < retries.count + 1 and (retryable or retries.on == "any"):
        unit.state = StepState.RETRY_WAIT
        unit.tick += 1
        return True
    unit.state = StepState.FAILED
    return False


def cancel(unit: StepRun, now: datetime, error: str = "cancelled") -> None:
    unit.state = StepState.CANCELLED
    unit.ended_at = now
    unit.error = error
    record(unit, "cancelled")


def reset(step: StepRun) -> None:
    """Back to PENDING for a rerun; ``attempt``, ``tick``, ``history`` (and a fan-out's epoch) are kept
    so that new keys differ."""
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
    step.skip = None
    if step.fanout is not None:
        step.fanout = step.fanout.model_copy(update={"total": None, "counts": {}})


def record(unit: StepRun, outcome: str) -> None:
    entry: dict[str, Any] = {
        "attempt": unit.attempt,
        "key": unit.key,
        "remote_id": unit.remote_id,
        "outcome": outcome,
        "started_at": unit.started_at.isoformat() if unit.started_at else None,
        "ended_at": unit.ended_at.isoformat() if unit.ended_at else None,
        "error": unit.error,
        "retryable": unit.error_retryable,
    }
    if unit.stalled_seconds:
        entry["stalled_seconds"] = round(unit.stalled_seconds, 3)
    if unit.host_loss_reruns:
        entry["host_loss_reruns"] = unit.host_loss_reruns
    unit.history.append(entry)


HOST_LOSS_RERUN = "re-run after host loss"


def note_reruns(unit: StepRun, reruns: int, now: datetime) -> bool:
    """The backend ran work of this attempt again after a host loss (``StepStatus.reruns``, a
    running count): recorded in the attempt's history as it is seen. True when it grew."""
    if reruns <= unit.host_loss_reruns:
        return False
    unit.history.append(
        {
            "attempt": unit.attempt,
            "key": unit.key,
            "remote_id": unit.remote_id,
            "outcome": HOST_LOSS_RERUN,
            "reruns": reruns - unit.host_loss_reruns,
            "at": now.isoformat(),
        }
    )
    unit.host_loss_reruns = reruns
    return True


def duration(unit: StepRun) -> dict[str, Any]:
    if unit.started_at is None or unit.ended_at is None:
        return {}
    return {"duration_seconds": (unit.ended_at - unit.started_at).total_seconds()}


__all__ = [
    "HOST_LOSS_RERUN",
    "STALL_TOLERANCE_SECONDS",
    "begin",
    "cancel",
    "duration",
    "fail",
    "launched",
    "note_reruns",
    "note_stall",
    "record",
    "reset",
    "succeed",
    "timed_out",
]
