"""What ``decide`` asks the executor to do: small frozen values, no behaviour.

The executor performs them in order, after it has saved the run that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.engine.model import FanOut, Message, StepState


@dataclass(frozen=True)
class Launch:
    """Launch (or reattach to) the job of ``step``'s ``attempt`` under idempotency ``key``.

    ``index``: the instance of a for_each step (its params see ``${item}`` and ``${index}``).
    """

    step: str
    attempt: int
    key: str
    index: int | None = None


@dataclass(frozen=True)
class Poll:
    """Ask the backend how the launched job ``remote_id`` is doing."""

    step: str
    attempt: int
    remote_id: str
    index: int | None = None


@dataclass(frozen=True)
class Cancel:
    """Stop the remote job (best effort; errors are logged, not raised)."""

    step: str
    remote_id: str
    index: int | None = None


@dataclass(frozen=True)
class Resolve:
    """Load the outputs of the for_each steps ``sources`` (lists, in item order), which ``step``'s
    for_each list reads; answered by a ``Resolved`` observation."""

    step: str
    epoch: int
    sources: tuple[str, ...]


@dataclass(frozen=True)
class CreateFanOut:
    """Store ``items`` and then the new ``fanout`` row (replacing the step's earlier one only if it
    is unchanged: ``fanout.etag``); answered by ``FanOutCreated`` or, after a lost race, ``Recheck``."""

    fanout: FanOut
    items: list[Any]


@dataclass(frozen=True)
class LoadInstances:
    """Load instance rows of ``step``'s fan-out ``epoch`` in these states from index ``start``;
    answered by ``InstancesLoaded``."""

    step: str
    epoch: int
    states: tuple[StepState, ...]
    start: int = 0
    limit: int = 90


@dataclass(frozen=True)
class FollowUp:
    """Decide again on fresh state (``Recheck``): the other half of the run has work to do."""


@dataclass(frozen=True)
class Send:
    """Put ``message`` on the queue after ``delay_seconds`` (ticks, retry backoff)."""

    message: Message
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class StartQueued:
    """A concurrency slot of ``flow`` was freed: send a start to its oldest queued run."""

    flow: str


@dataclass(frozen=True)
class Emit:
    """A telemetry event in the run's trace (run.started, step.launched, ...)."""

    name: str
    attributes: dict[str, Any] = field(default_factory=dict)


Command = Launch | Poll | Cancel | Send | StartQueued | Emit | Resolve | CreateFanOut | LoadInstances | FollowUp

__all__ = [
    "Cancel",
    "Command",
    "CreateFanOut",
    "Emit",
    "FollowUp",
    "Launch",
    "LoadInstances",
    "Poll",
    "Resolve",
    "Send",
    "StartQueued",
]
