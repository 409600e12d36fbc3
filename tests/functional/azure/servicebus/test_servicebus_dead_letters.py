"""ServiceBusWorkQueue's dead letters: list (peek) and replay (re-send, then complete).

Against ``FakeServiceBusClient`` (fake_sdk.py), a double of the azure-servicebus client surface
including the dead-letter sub-queue (AMQP cannot practically be faked on the wire). The copies
the adapter sends are REAL ``ServiceBusMessage`` objects; the checks are the issue's: reason,
description, delivery count and run are listed; a replay keeps the message id, removes the
dead letter only after its send succeeded, and leaves everything it did not replay in place.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from azure.servicebus import exceptions as sb

from shared.engine.model import Message
from shared.queue.servicebus import ServiceBusWorkQueue
from tests.functional.azure.servicebus.fake_sdk import FakeReceivedMessage, FakeServiceBusClient

NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=3)
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def queue(client: FakeServiceBusClient) -> ServiceBusWorkQueue:
    return ServiceBusWorkQueue(client, "conveyor-work", 10, clock=lambda: NOW, receive_wait_seconds=0.0)  # type: ignore[arg-type]


def dead(client: FakeServiceBusClient, run_id: str, flow: str = "retrain", enqueued: datetime = LONG_AGO) -> Message:
    msg = Message(kind="start", run_id=run_id, flow=flow, traceparent=TP).with_id()
    client.dead_letter(
        FakeReceivedMessage(
            raw=msg.model_dump_json().encode(),
            delivery_count=10,
            message_id=msg.message_id,
            enqueued_time_utc=enqueued,
            subject="start",
            application_properties={b"run_id": run_id, b"kind": "start", b"traceparent": TP},
        ),
        "MaxDeliveryCountExceeded",
        "delivered 10 times",
    )
    return msg


def test_list_shows_reason_description_count_and_run_without_locking() -> None:
    client = FakeServiceBusClient()
    first = dead(client, "run-a")
    dead(client, "run-b", flow="other")
    client.dead_letter(FakeReceivedMessage(raw=b"not json", message_id="junk"), "InvalidMessage", "bad body")
    listed = queue(client).dead_letters()
    assert [(d.run_id, d.flow, d.reason) for d in listed] == [
        ("run-a", "retrain", "MaxDeliveryCountExceeded"),
        ("run-b", "other", "MaxDeliveryCountExceeded"),
        (None, None, "InvalidMessage"),
    ]
    assert listed[0].message_id == first.message_id == "run-a" and listed[0].delivery_count == 10
    assert listed[0].description == "delivered 10 times" and listed[0].id == "1"
    assert listed[2].as_json()["replayable"] is False
    assert len(client.dead_letters) == 3 and all(not r.locked for r in client.dead_letter_receivers)
    assert [d.run_id for d in queue(client).dead_letters(limit=1)] == ["run-a"]


def test_replay_by_id_sends_the_original_with_its_message_id_then_completes_it() -> None:
    client = FakeServiceBusClient()
    dead(client, "run-a")
    dead(client, "run-b")
    q = queue(client)
    report = q.replay_dead_letters(["2"])
    assert [d.run_id for d in report.replayed] == ["run-b"] and report.kept == [] and report.missing == []
    [copy] = client.sender.sent
    assert copy.message_id == "run-b" and copy.subject == "start"
    assert Message.model_validate_json(b"".join(copy.body)).run_id == "run-b"
    assert copy.application_properties == {"run_id": "run-b", "kind": "start", "traceparent": TP}
    assert [m.message_id for m in client.dead_letters] == ["run-a"]  # the other one stays
    receiver = client.dead_letter_receivers[-1]
    assert not receiver.locked and receiver.closed  # what was not replayed was abandoned
    assert q.replay_dead_letters(["99"]).missing == ["99"]


def test_replay_all_of_a_flow_and_a_failed_send_keeps_the_dead_letter() -> None:
    client = FakeServiceBusClient()
    dead(client, "run-a")
    dead(client, "run-b", flow="other")
    dead(client, "run-c")
    client.send_errors.append(sb.ServiceBusServerBusyError(message="busy"))
    report = queue(client).replay_dead_letters(None, flow="retrain")
    assert [d.run_id for d in report.replayed] == ["run-c"]
    assert [(d.run_id, why.split(",")[0]) for d, why in report.kept] == [("run-a", "send failed")]
    assert sorted(m.message_id for m in client.dead_letters) == ["run-a", "run-b"]  # kept, and the other flow's
    assert [m.message_id for m in client.sender.sent] == ["run-c"]


def test_a_dead_letter_inside_the_duplicate_window_is_kept_not_lost() -> None:
    client = FakeServiceBusClient()
    dead(client, "fresh", enqueued=NOW - timedelta(minutes=10))
    report = queue(client).replay_dead_letters(None)
    assert report.replayed == [] and "duplicate-detection window" in report.kept[0][1]
    assert client.senders == [] and len(client.dead_letters) == 1


def test_sent_but_not_completed_says_so_and_stays() -> None:
    client = FakeServiceBusClient()
    dead(client, "run-a")
    q = queue(client)
    real = FakeServiceBusClient.get_queue_receiver

    def failing(self: FakeServiceBusClient, *a: object, **k: object) -> object:
        r = real(self, *a, **k)  # type: ignore[arg-type]
        if hasattr(r, "complete_errors"):
            r.complete_errors.append(sb.MessageLockLostError(message="lock lost"))
        return r

    FakeServiceBusClient.get_queue_receiver = failing  # type: ignore[method-assign]
    try:
        report = q.replay_dead_letters(None)
    finally:
        FakeServiceBusClient.get_queue_receiver = real  # type: ignore[method-assign]
    assert report.replayed == [] and report.kept[0][1].startswith("sent, but not removed")
    assert len(client.dead_letters) == 1 and [m.message_id for m in client.sender.sent] == ["run-a"]


def test_a_message_the_adapter_dead_letters_can_be_listed_and_replayed() -> None:
    client = FakeServiceBusClient()
    msg = Message(kind="start", run_id="round-trip", flow="retrain", traceparent=TP).with_id()
    client.available.append(
        FakeReceivedMessage(
            raw=msg.model_dump_json().encode(), delivery_count=12, message_id=msg.message_id, enqueued_time_utc=LONG_AGO
        )
    )
    q = queue(client)
    assert q.receive() == []  # over max_delivery_count: the adapter dead-letters it
    [entry] = q.dead_letters()
    assert entry.reason == "MaxDeliveryCountExceeded" and entry.run_id == "round-trip"
    assert [d.run_id for d in q.replay_dead_letters([entry.id]).replayed] == ["round-trip"]
    assert client.dead_letters == [] and client.sender.sent[0].message_id == "round-trip"
