"""A fake of the azure-servicebus client surface ServiceBusWorkQueue uses.

Service Bus speaks AMQP 1.0, which is impractical to fake on loopback, so the tests inject
this double of ``ServiceBusClient`` (``get_queue_sender`` / ``get_queue_receiver``) instead.
What crosses the boundary is real SDK material: the adapter builds real
``azure.servicebus.ServiceBusMessage`` objects, batches are real ``ServiceBusMessageBatch``es
(the SDK's own size accounting decides when one is full), and errors are the SDK's own
exception classes with the messages the service sends.

The dead-letter sub-queue is faked too: ``get_queue_receiver(..., sub_queue=DEAD_LETTER)``
returns a receiver over ``FakeServiceBusClient.dead_letters`` with the broker's semantics the
adapter relies on: ``peek_messages`` from a sequence number (nothing locked), PEEK_LOCK
``receive_messages`` (a locked message is not handed out again until it is abandoned),
``complete_message`` (removes it) and ``abandon_message`` (unlocks it). Dead-lettering a
message from the main queue moves it there with its reason and description, as the broker does.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch


class RecordingBatch(ServiceBusMessageBatch):
    """A real batch that also remembers the ServiceBusMessage objects added to it."""

    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.added.append(message)


class FakeSender:
    def __init__(self, queue_name: str, batch_bytes: int, errors: list[BaseException]) -> None:
        self.queue_name = queue_name
        self.batch_bytes = batch_bytes
        self.errors = errors  # raised by the next send_messages calls, in order
        self.sends: list[list[ServiceBusMessage]] = []  # one entry per send_messages call
        self.batches_created = 0
        self.closed = False
        self._in_send = threading.Lock()
        self.overlapping_sends = 0

    def send_messages(self, message: ServiceBusMessage | RecordingBatch, *, timeout: float | None = None) -> None:
        if not self._in_send.acquire(blocking=False):
            self.overlapping_sends += 1  # the SDK sender is not thread-safe: this must stay 0
            self._in_send.acquire()
        try:
            if self.errors:
                raise self.errors.pop(0)
            if isinstance(message, RecordingBatch):
                self.sends.append(list(message.added))
            else:
                assert isinstance(message, ServiceBusMessage)
                self.sends.append([message])
        finally:
            self._in_send.release()

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> RecordingBatch:
        self.batches_created += 1
        return RecordingBatch(max_size_in_bytes or self.batch_bytes)

    @property
    def sent(self) -> list[ServiceBusMessage]:
        return [m for batch in self.sends for m in batch]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeReceivedMessage:
    """The fields of ServiceBusReceivedMessage the adapter reads (body is a generator of bytes)."""

    raw: bytes
    delivery_count: int = 0  # the AMQP header value: 0 on the first delivery
    message_id: str = ""
    sequence_number: int = 0
    enqueued_time_utc: datetime | None = None
    content_type: str | None = "application/json"
    subject: str | None = None
    application_properties: dict[bytes, Any] = field(default_factory=dict)  # received keys are bytes
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None

    @property
    def body(self) -> Iterator[bytes]:
        yield self.raw


@dataclass
class FakeReceiver:
    queue_name: str
    receive_mode: Any
    available: list[FakeReceivedMessage] = field(default_factory=list)
    dead_letter_queue: list[FakeReceivedMessage] = field(default_factory=list)
    completed: list[FakeReceivedMessage] = field(default_factory=list)
    dead_lettered: list[tuple[FakeReceivedMessage, str | None, str | None]] = field(default_factory=list)
    waits: list[float | None] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    closed: bool = False

    def receive_messages(self, max_message_count: int | None = 1, max_wait_time: float | None = None) -> list[Any]:
        self.waits.append(max_wait_time)
        if self.errors:
            raise self.errors.pop(0)
        n = max_message_count or 1
        taken, self.available = self.available[:n], self.available[n:]
        return list(taken)

    def complete_message(self, message: FakeReceivedMessage) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.completed.append(message)

    def dead_letter_message(
        self, message: FakeReceivedMessage, reason: str | None = None, error_description: str | None = None
    ) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.dead_lettered.append((message, reason, error_description))
        message.dead_letter_reason = reason
        message.dead_letter_error_description = error_description
        message.delivery_count += 1
        if not message.sequence_number:
            message.sequence_number = max((m.sequence_number for m in self.dead_letter_queue), default=0) + 1
        self.dead_letter_queue.append(message)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDeadLetterReceiver:
    """The dead-letter sub-queue: peek from a sequence number; PEEK_LOCK receive, complete, abandon."""

    messages: list[FakeReceivedMessage]
    receive_mode: Any
    locked: set[int] = field(default_factory=set)
    completed: list[FakeReceivedMessage] = field(default_factory=list)
    abandoned: list[FakeReceivedMessage] = field(default_factory=list)
    complete_errors: list[BaseException] = field(default_factory=list)
    closed: bool = False

    def peek_messages(self, max_message_count: int = 1, *, sequence_number: int = 0, **kwargs: Any) -> list[Any]:
        ordered = sorted(self.messages, key=lambda m: m.sequence_number)
        return [m for m in ordered if m.sequence_number >= sequence_number][:max_message_count]

    def receive_messages(self, max_message_count: int | None = 1, max_wait_time: float | None = None) -> list[Any]:
        free = [
            m for m in sorted(self.messages, key=lambda m: m.sequence_number) if m.sequence_number not in self.locked
        ]
        taken = free[: max_message_count or 1]
        self.locked.update(m.sequence_number for m in taken)
        return taken

    def complete_message(self, message: FakeReceivedMessage) -> None:
        assert message.sequence_number in self.locked, "completing a message this receiver did not lock"
        if self.complete_errors:
            raise self.complete_errors.pop(0)
        self.locked.discard(message.sequence_number)
        self.messages.remove(message)
        self.completed.append(message)

    def abandon_message(self, message: FakeReceivedMessage) -> None:
        assert message.sequence_number in self.locked, "abandoning a message this receiver did not lock"
        self.locked.discard(message.sequence_number)
        self.abandoned.append(message)

    def close(self) -> None:
        self.closed = True


class FakeServiceBusClient:
    def __init__(self, batch_bytes: int = 262_144) -> None:
        self.batch_bytes = batch_bytes
        self.senders: list[FakeSender] = []
        self.receivers: list[FakeReceiver] = []
        self.send_errors: list[BaseException] = []
        self.available: list[FakeReceivedMessage] = []
        self.dead_letters: list[FakeReceivedMessage] = []  # the queue's dead-letter sub-queue
        self.dead_letter_receivers: list[FakeDeadLetterReceiver] = []
        self._sequence = itertools.count(1)
        self.closed = False

    def dead_letter(self, message: FakeReceivedMessage, reason: str, description: str) -> FakeReceivedMessage:
        """Put ``message`` straight into the dead-letter sub-queue (as the broker does after MaxDeliveryCount)."""
        message.sequence_number = message.sequence_number or next(self._sequence)
        message.dead_letter_reason = reason
        message.dead_letter_error_description = description
        self.dead_letters.append(message)
        return message

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> FakeSender:
        sender = FakeSender(queue_name, self.batch_bytes, self.send_errors)
        self.senders.append(sender)
        return sender

    def get_queue_receiver(
        self, queue_name: str, *, receive_mode: Any = None, sub_queue: Any = None, **kwargs: Any
    ) -> Any:
        from azure.servicebus import ServiceBusSubQueue

        if sub_queue is not None:
            assert ServiceBusSubQueue(sub_queue) is ServiceBusSubQueue.DEAD_LETTER
            dlq = FakeDeadLetterReceiver(self.dead_letters, receive_mode)
            self.dead_letter_receivers.append(dlq)
            return dlq
        receiver = FakeReceiver(queue_name, receive_mode, available=self.available, dead_letter_queue=self.dead_letters)
        self.receivers.append(receiver)
        return receiver

    @property
    def sender(self) -> FakeSender:
        assert len(self.senders) == 1, f"expected one sender, got {len(self.senders)}"
        return self.senders[0]

    def close(self) -> None:
        self.closed = True
