"""The ports of lifecycle events: where events go (``EventSink``) and the durable outbox.

An event is a CloudEvents 1.0 JSON object in structured form (``specversion``, ``id``,
``source``, ``type``, ``subject``, ``time``, ``datacontenttype``, ``data``, and the
``traceparent`` extension), built by :mod:`shared.events.lifecycle`. The ``Outbox`` keeps
each event until every sink has taken it; sinks report per event whether delivery failed
and whether trying again may help.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CloudEventJson = dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """Why one event did not reach one sink; ``retryable`` False drops it for that sink."""

    error: str
    retryable: bool = True


class EventSink(ABC):
    """One destination: the Event Grid topic, one webhook subscriber, the local event log."""

    name: str  # stable across restarts: the outbox remembers which sinks an event still needs

    @abstractmethod
    def deliver(self, events: list[CloudEventJson]) -> dict[str, Failure]:
        """Deliver ``events``; the failures by event id (empty: all delivered). Never raises
        for a delivery problem (an unreachable subscriber is a Failure, not an exception)."""

    def describe(self) -> str:
        """What to print in logs (never a URL's query string: it may carry a signature)."""
        return self.name


@dataclass
class OutboxEntry:
    """An event waiting for delivery: the sinks still to take it, and its retry state."""

    event: CloudEventJson
    pending: list[str]
    attempts: int
    first_at: datetime
    next_at: datetime
    last_error: str = ""
    handle: Any = field(default=None, repr=False)  # the adapter's (e.g. the row's ETag)

    @property
    def id(self) -> str:
        return str(self.event["id"])


class Outbox(ABC):
    """Durable storage of events until delivered (and of which were delivered, for a while)."""

    @abstractmethod
    def add(
        self, events: list[CloudEventJson], sinks: list[str], now: datetime, *, skip_delivered: bool = False
    ) -> list[bool]:
        """Keep each event for ``sinks`` (first attempt due at ``now``) unless it is already
        kept (same id); with ``skip_delivered`` also unless it was delivered already. True
        where this call added it."""

    @abstractmethod
    def due(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """Entries whose next attempt is due, oldest first."""

    @abstractmethod
    def claim(self, entry: OutboxEntry, until: datetime) -> OutboxEntry | None:
        """Lease ``entry`` until ``until`` (no one else delivers it meanwhile); None if another got it."""

    @abstractmethod
    def retry(self, entry: OutboxEntry, pending: list[str], next_at: datetime, error: str) -> None:
        """Keep ``entry`` for ``pending`` sinks, next attempt at ``next_at``."""

    @abstractmethod
    def done(self, entry: OutboxEntry) -> None:
        """Every sink took it (or gave up for good): remember it as delivered, drop the entry."""

    @abstractmethod
    def expire(self, entry: OutboxEntry, error: str) -> None:
        """Stop trying (too old); kept, marked expired, for an operator to see."""

    @abstractmethod
    def purge(self, before: datetime) -> int:
        """Forget delivered and expired events older than ``before``; returns how many."""
