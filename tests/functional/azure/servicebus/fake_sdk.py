"""A fake of the azure-servicebus client surface ServiceBusWorkQueue uses.

Service Bus speaks AMQP 1.0, which is impractical to fake on loopback, so the tests inject
this double of ``ServiceBusClient`` (``get_queue_sender`` / ``get_queue_receiver``) instead.
What crosses the boundary is real SDK material: the adapter builds real
``azure.servicebus.ServiceBusMessage`` objects, batches are real ``ServiceBusMessageBatch``es
(the SDK's own size accounting decides when one is full), and errors are the SDK's own
exception classes with the messages the service sends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
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

    @property
    def body(self) -> Iterator[bytes]:
        yield self.raw


@dataclass
class FakeReceiver:
    queue_name: str
    receive_mode: Any
    available: list[FakeReceivedMessage] = field(default_factory=list)
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

    def close(self) -> None:
        self.closed = True


class FakeServiceBusClient:
    def __init__(self, batch_bytes: int = 262_144) -> None:
        self.batch_bytes = batch_bytes
        self.senders: list[FakeSender] = []
        self.receivers: list[FakeReceiver] = []
        self.send_errors: list[BaseException] = []
        self.available: list[FakeReceivedMessage] = []
        self.closed = False

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> FakeSender:
        sender = FakeSender(queue_name, self.batch_bytes, self.send_errors)
        self.senders.append(sender)
        return sender

    def get_queue_receiver(self, queue_name: str, *, receive_mode: Any = None, **kwargs: Any) -> FakeReceiver:
        receiver = FakeReceiver(queue_name, receive_mode, available=self.available)
        self.receivers.append(receiver)
        return receiver

    @property
    def sender(self) -> FakeSender:
        assert len(self.senders) == 1, f"expected one sender, got {len(self.senders)}"
        return self.senders[0]

    def close(self) -> None:
        self.closed = True
