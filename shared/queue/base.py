"""The WorkQueue port: start/tick/cancel/rerun messages between the engine's steps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from shared.engine.model import Message


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
