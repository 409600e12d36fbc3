"""StorageQueueWorkQueue against a real Azurite: delays, poison, dead letter, complete."""

from __future__ import annotations

import time

import pytest

from shared.engine.model import Message
from shared.errors import ValidationError
from shared.queue.base import Received
from shared.queue.storage_queue import StorageQueueWorkQueue
from shared.settings import Settings


@pytest.fixture
def queue(storage_settings: Settings) -> StorageQueueWorkQueue:
    return StorageQueueWorkQueue.from_settings(storage_settings.with_overrides(max_delivery_count=2))


def receive_until(queue: StorageQueueWorkQueue, count: int, timeout: float = 5.0, vt: float = 30) -> list[Received]:
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += queue.receive(max_messages=count - len(got), visibility_timeout=vt)
        if len(got) < count:
            time.sleep(0.1)
    return got


def test_send_receive_complete(queue: StorageQueueWorkQueue) -> None:
    queue.send(Message(kind="start", run_id="r1", flow="demo", traceparent="00-abc-def-01"))
    [got] = queue.receive()
    assert got.message.run_id == "r1"
    assert got.message.traceparent == "00-abc-def-01"
    assert got.message.message_id == "r1"  # filled by with_id()
    assert got.dequeue_count == 1
    queue.complete(got)
    queue.complete(got)  # completing twice is harmless
    assert queue.depth() == 0
    assert queue.receive() == []


def test_delay_hides_the_message_until_due(queue: StorageQueueWorkQueue) -> None:
    sent_at = time.monotonic()
    queue.send(Message(kind="tick", run_id="r1", step="a", attempt=1, tick=3), delay_seconds=1.2)
    assert queue.receive() == []
    [got] = receive_until(queue, 1, timeout=6)
    assert time.monotonic() - sent_at >= 1.0
    assert (got.message.kind, got.message.tick) == ("tick", 3)


def test_unfinished_message_returns_after_visibility_timeout_then_goes_to_poison(queue: StorageQueueWorkQueue) -> None:
    queue.send(Message(kind="start", run_id="r1"))
    first = queue.receive(visibility_timeout=1)
    assert [r.dequeue_count for r in first] == [1]
    second = receive_until(queue, 1, vt=1)
    assert [r.dequeue_count for r in second] == [2]
    time.sleep(1.1)
    # third delivery exceeds max_delivery_count=2: moved aside, not returned
    assert receive_until(queue, 1, timeout=1.5, vt=1) == []
    [entry] = queue.peek_poison()
    assert entry["reason"] == "MaxDeliveryCountExceeded"
    assert entry["message"]["run_id"] == "r1"
    assert entry["dequeue_count"] == 3
    assert queue.depth() == 0


def test_dead_letter_moves_the_message_with_reason(queue: StorageQueueWorkQueue) -> None:
    queue.send(Message(kind="rerun", run_id="r9", from_step="train"))
    [got] = queue.receive()
    queue.dead_letter(got, "UnknownFlow", "flow 'x' is not in flows.yaml")
    [entry] = queue.peek_poison()
    assert entry["reason"] == "UnknownFlow"
    assert entry["description"] == "flow 'x' is not in flows.yaml"
    assert Message.model_validate(entry["message"]).from_step == "train"
    assert queue.receive() == []
    assert queue.depth() == 0


@pytest.mark.parametrize("body", ["not json", '{"kind": "explode", "run_id": "r1"}', '{"run_id": "r1"}'])
def test_malformed_message_goes_to_poison(queue: StorageQueueWorkQueue, body: str) -> None:
    queue.send(Message(kind="start", run_id="good"))  # creates the queue; a valid one beside it
    queue._client.send_message(body)
    got = queue.receive(max_messages=10)  # both are visible: one returned, one moved aside
    assert [r.message.run_id for r in got] == ["good"]
    [entry] = queue.peek_poison()
    assert entry["reason"] == "InvalidMessage"
    assert entry["description"]
    assert entry["message"] == body or isinstance(entry["message"], dict)


def test_receive_respects_max_messages_and_send_many(queue: StorageQueueWorkQueue) -> None:
    queue.send_many([Message(kind="start", run_id=f"r{i}") for i in range(12)])
    assert queue.depth() == 12
    first = queue.receive(max_messages=5)
    assert len(first) == 5
    rest = receive_until(queue, 7)
    assert sorted(r.message.run_id for r in first + rest) == sorted(f"r{i}" for i in range(12))


def test_invalid_queue_name_is_refused(storage_settings: Settings) -> None:
    with pytest.raises(ValidationError) as info:
        StorageQueueWorkQueue(storage_settings.connection_string, "Bad_Name")
    assert info.value.field == "CONVEYOR_QUEUE_NAME"
