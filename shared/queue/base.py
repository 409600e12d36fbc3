"""The WorkQueue port: start/tick/cancel/rerun messages between the engine's steps.

Messages that could not be handled end in the queue's dead-letter queue (Service Bus's own
sub-queue; the Storage Queue adapter's ``<queue>-poison``). ``dead_letters`` lists them and
``replay_dead_letters`` re-sends the original message (its message id intact, so duplicate
detection still holds), removing an entry only after its send succeeded.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.engine.model import Message
from shared.errors import PermanentError


@dataclass
class Received:
    """A message taken from the queue; ``handle`` is adapter-specific (receipt, lock token).

    ``dequeue_count`` counts deliveries (this one included); ``failures`` counts the handler
    failures before this delivery (``abandon``), where the queue can tell them from deliveries
    lost to a host that died while handling (Storage Queue); elsewhere it is every earlier
    delivery (Service Bus counts deliveries only).
    """

    message: Message
    dequeue_count: int
    handle: Any
    failures: int = -1  # -1: the queue cannot tell (then dequeue_count - 1)

    def __post_init__(self) -> None:
        if self.failures < 0:
            self.failures = max(0, self.dequeue_count - 1)


@dataclass
class DeadLetter:
    """One dead-lettered message: why, how often it was delivered, and the run it belongs to."""

    id: str  # the dead-letter entry's id in its queue (what ``replay`` takes)
    message_id: str  # the original message id (duplicate-detection key)
    reason: str
    description: str
    delivery_count: int
    body: str  # the original body as text
    enqueued_at: datetime | None = None  # when the original was first enqueued (Service Bus)
    dead_lettered_at: datetime | None = None
    message: Message | None = None  # None: the body is not a Conveyor message (cannot be replayed)

    @property
    def run_id(self) -> str | None:
        return self.message.run_id if self.message is not None else None

    @property
    def flow(self) -> str | None:
        return (self.message.flow or None) if self.message is not None else None

    @property
    def kind(self) -> str | None:
        return self.message.kind if self.message is not None else None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "reason": self.reason,
            "description": self.description,
            "delivery_count": self.delivery_count,
            "run_id": self.run_id,
            "flow": self.flow,
            "kind": self.kind,
            "enqueued_at": self.enqueued_at.isoformat() if self.enqueued_at else None,
            "dead_lettered_at": self.dead_lettered_at.isoformat() if self.dead_lettered_at else None,
            "replayable": self.message is not None,
            "body": self.body[:2000],
        }


@dataclass
class ReplayReport:
    """What ``replay_dead_letters`` did: re-sent (and removed), kept with a reason, ids not found."""

    replayed: list[DeadLetter] = field(default_factory=list)
    kept: list[tuple[DeadLetter, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "replayed": [d.as_json() for d in self.replayed],
            "kept": [{**d.as_json(), "why": why} for d, why in self.kept],
            "missing": list(self.missing),
        }


def parse_dead_body(text: str) -> Message | None:
    """The Conveyor message in a dead-lettered body, or None when it is not one."""
    try:
        data = json.loads(text)
        return Message.model_validate(data) if isinstance(data, dict) else None
    except ValueError:  # JSON or pydantic validation
        return None


def wanted(entry: DeadLetter, ids: Collection[str] | None, flow: str | None) -> bool:
    """Whether a replay of ``ids`` (None: all) in ``flow`` (None: any) selects ``entry``."""
    if ids is not None and entry.id not in ids and entry.message_id not in ids:
        return False
    return flow is None or entry.flow == flow


class WorkQueue(ABC):
    @abstractmethod
    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        """Enqueue; ``delay_seconds`` > 0 schedules delivery (ticks, retry backoff)."""

    @abstractmethod
    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        """Take up to ``max_messages`` visible messages (local consumer; Functions does this in Azure)."""

    @abstractmethod
    def complete(self, received: Received) -> None:
        """Remove a processed message."""

    @abstractmethod
    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        """Move a message that cannot be processed aside, with why."""

    def send_many(self, messages: list[Message]) -> None:
        for m in messages:
            self.send(m)

    def abandon(self, received: Received, error: str) -> None:  # noqa: B027 - optional for adapters
        """The handler failed with ``error``: count the failure where the queue can, and let the
        message come back. The default does nothing: it comes back after its visibility timeout
        (lock duration) and the queue counts the delivery."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead-lettered messages, oldest first, left where they are."""
        raise PermanentError(f"{type(self).__name__} keeps no dead-letter queue")

    def replay_dead_letters(self, ids: Collection[str] | None = None, flow: str | None = None) -> ReplayReport:
        """Re-send the dead-lettered messages ``ids`` (entry or message ids; None: all), only
        those of ``flow`` if given; each entry is removed only after its send succeeded."""
        raise PermanentError(f"{type(self).__name__} keeps no dead-letter queue")
