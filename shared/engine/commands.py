"""What ``decide`` asks the executor to do: small frozen values, no behaviour.

The executor performs them in order, after it has saved the run that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.engine.model import Message


@dataclass(frozen=True)
class Launch:
    """Launch (or reattach to) the job of ``step``'s ``attempt`` under idempotency ``key``."""

    step: str
    attempt: int
    key: str


@dataclass(frozen=True)
class Poll:
    """Ask the backend how the launched job ``remote_id`` is doing."""

    step: str
    attempt: int
    remote_id: str


@dataclass(frozen=True)
class Cancel:
    """Stop the remote job (best effort; errors are logged, not raised)."""

    step: str
    remote_id: str


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


Command = Launch | Poll | Cancel | Send | StartQueued | Emit

__all__ = ["Cancel", "Command", "Emit", "Launch", "Poll", "Send", "StartQueued"]
