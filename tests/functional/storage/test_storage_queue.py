"""StorageQueueWorkQueue against a real Azurite: delays, poison, dead letter, complete."""

from __future__ import annotations

import time

import pytest

from shared.engine.model import Message
from shared.errors import ValidationError
from shared.queue.base import Received
from shared.queue.storage_queue import LOST_DELIVERY_FACTOR, StorageQueueWorkQueue
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


def test_deliveries_lost_to_a_dead_host_are_not_failures(queue: StorageQueueWorkQueue) -> None:
    queue.send(Message(kind="start", run_id="r1"))
    for n in (1, 2, 3):  # taken and never finished, as by a host killed mid-message
        [got] = receive_until(queue, 1, vt=1)
        assert (got.dequeue_count, got.failures) == (n, 0)
    assert queue.peek_poison() == []  # past max_delivery_count=2 deliveries, yet nothing failed


def test_handler_failures_are_counted_then_poisoned_with_the_last_error(queue: StorageQueueWorkQueue) -> None:
    queue.send(Message(kind="tick", run_id="r1", step="a", attempt=1, tick=2))
    [first] = queue.receive()
    queue.abandon(first, "TransientError: table busy")
    [second] = receive_until(queue, 1, timeout=4)  # back after a 1 s backoff, not the visibility timeout
    assert (second.failures, second.message.tick, second.message.message_id) == (1, 2, "r1:a:1:2")
    queue.abandon(second, "TransientError: still busy")
    assert receive_until(queue, 1, timeout=4) == []  # failed max_delivery_count=2 times: moved aside
    [entry] = queue.peek_poison()
    assert entry["reason"] == "MaxDeliveryCountExceeded"
    assert "failed 2 times" in entry["description"] and "still busy" in entry["description"]
    assert Message.model_validate(entry["message"]).tick == 2  # the message itself, without the count
    assert queue.depth() == 0


def test_a_message_whose_handler_never_finishes_is_poisoned_at_last(storage_settings: Settings) -> None:
    queue = StorageQueueWorkQueue.from_settings(storage_settings.with_overrides(max_delivery_count=1))
    queue.send(Message(kind="start", run_id="r1"))
    for _ in range(LOST_DELIVERY_FACTOR):
        assert len(receive_until(queue, 1, vt=1)) == 1
    assert receive_until(queue, 1, timeout=1.5, vt=1) == []
    [entry] = queue.peek_poison()
    assert entry["reason"] == "MaxDeliveryCountExceeded" and "host died" in entry["description"]
    assert entry["dequeue_count"] == LOST_DELIVERY_FACTOR + 1


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
