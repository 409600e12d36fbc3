"""ServiceBusWorkQueue against a fake of the azure-servicebus client surface.

Service Bus is AMQP 1.0, impractical to fake on the wire, so these tests inject
``FakeServiceBusClient`` (tests/functional/azure/servicebus/fake_sdk.py): a double of
``get_queue_sender`` / ``get_queue_receiver`` that records the REAL
``azure.servicebus.ServiceBusMessage`` objects the adapter builds (so message_id, subject,
application properties and scheduled enqueue times are the SDK's own), fills REAL
``ServiceBusMessageBatch``es, and raises the SDK's own exception classes. Client
construction (identity vs connection string) is checked on the real ``ServiceBusClient``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusReceiveMode
from azure.servicebus import exceptions as sb

import shared.azure_identity
from shared.engine.model import Message
from shared.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.queue.servicebus import ServiceBusWorkQueue, map_servicebus_error, service_bus_message_id
from shared.settings import Settings
from tests.functional.azure.servicebus.fake_sdk import FakeReceivedMessage, FakeServiceBusClient

NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RUN = "3f2a9c0e5b7d4e1f8a6b2c4d9e0f1a2b"


def make_queue(client: FakeServiceBusClient, **kw: Any) -> ServiceBusWorkQueue:
    return ServiceBusWorkQueue(client, "conveyor-work", kw.pop("max_delivery_count", 10), clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def start(run_id: str = RUN) -> Message:
    return Message(kind="start", run_id=run_id, flow="retrain", traceparent=TP)


def tick(n: int = 3) -> Message:
    return Message(kind="tick", run_id=RUN, flow="retrain", step="train", attempt=2, tick=n, traceparent=TP)


# ------------------------------------------------------------------ sending


def test_start_message_is_deduplicated_on_the_run_id_and_carries_the_trace() -> None:
    client = FakeServiceBusClient()
    make_queue(client).send(start())

    (sent,) = client.sender.sent
    assert sent.message_id == RUN
    assert sent.content_type == "application/json"
    assert sent.subject == "start"
    assert sent.application_properties == {"traceparent": TP, "run_id": RUN, "kind": "start"}
    assert sent.scheduled_enqueue_time_utc is None
    body = json.loads(b"".join(sent.body))
    assert Message.model_validate(body) == start().with_id()
    assert client.sender.queue_name == "conveyor-work"


def test_delayed_tick_is_scheduled_and_keyed_by_its_tick() -> None:
    client = FakeServiceBusClient()
    queue = make_queue(client)
    queue.send(tick(3), delay_seconds=12.5)
    queue.send(tick(4), delay_seconds=0)

    first, second = client.sender.sent
    assert first.message_id == f"{RUN}:train:2:3"
    assert first.subject == "tick"
    assert first.scheduled_enqueue_time_utc == NOW + timedelta(seconds=12.5)
    assert first.application_properties is not None and first.application_properties["traceparent"] == TP
    assert second.message_id == f"{RUN}:train:2:4"
    assert second.scheduled_enqueue_time_utc is None


def test_same_start_twice_gets_the_same_message_id_for_duplicate_detection() -> None:
    client = FakeServiceBusClient()
    queue = make_queue(client)
    queue.send(start())
    queue.send(start())
    queue.send(start("another-run"))

    assert [m.message_id for m in client.sender.sent] == [RUN, RUN, "another-run"]


def test_overlong_ids_are_hashed_to_the_service_limit() -> None:
    long_run = "r" * 120
    msg = Message(kind="tick", run_id=long_run, step="s" * 20, attempt=1, tick=1)
    mid = service_bus_message_id(msg)
    assert len(mid) <= 128
    assert mid == service_bus_message_id(msg)  # still deterministic
    assert mid != service_bus_message_id(msg.model_copy(update={"tick": 2}))


def test_one_sender_for_the_instance_shared_by_threads() -> None:
    client = FakeServiceBusClient()
    queue = make_queue(client)
    barrier = threading.Barrier(8)

    def send(i: int) -> None:
        barrier.wait()
        for j in range(5):
            queue.send(start(f"run-{i}-{j}"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(client.senders) == 1
    assert client.sender.overlapping_sends == 0
    expected = sorted(f"run-{i}-{j}" for i in range(8) for j in range(5))
    assert sorted(str(m.message_id) for m in client.sender.sent) == expected


def test_send_many_splits_batches_when_full_and_keeps_order() -> None:
    client = FakeServiceBusClient(batch_bytes=2_000)
    messages = [start(f"run-{i:03d}") for i in range(25)]
    make_queue(client).send_many(messages)

    sender = client.sender
    assert len(sender.sends) > 2  # 25 messages of ~300 bytes cannot fit one 2 kB batch
    assert all(len(batch) >= 1 for batch in sender.sends)
    assert [m.message_id for m in sender.sent] == [f"run-{i:03d}" for i in range(25)]
    assert sender.batches_created == len(sender.sends)
    assert all(m.application_properties and m.application_properties["traceparent"] == TP for m in sender.sent)


def test_send_many_fits_a_small_list_in_one_batch() -> None:
    client = FakeServiceBusClient()
    make_queue(client).send_many([start("a"), start("b"), tick()])

    assert [[m.message_id for m in batch] for batch in client.sender.sends] == [["a", "b", f"{RUN}:train:2:3"]]


def test_a_message_larger_than_a_batch_is_a_bad_request_and_nothing_is_sent() -> None:
    client = FakeServiceBusClient(batch_bytes=400)
    big = Message(kind="start", run_id="big", flow="f" * 600)

    with pytest.raises(BadRequestError) as caught:
        make_queue(client).send_many([big, start("small")])

    assert caught.value.retryable is False
    assert "size limit" in str(caught.value)
    assert client.sender.sends == []


# ------------------------------------------------------------------ errors


BUSY = "The request was terminated because the entity is being throttled. Error code : 50009."
DENIED = "Unauthorized access. 'Send' claim(s) are required to perform this operation."


@pytest.mark.parametrize(
    ("error", "expected", "text"),
    [
        (sb.ServiceBusServerBusyError(message=BUSY), ThrottledError, BUSY),
        (sb.ServiceBusQuotaExceededError(message="The maximum entity size has been reached."), ThrottledError, None),
        (sb.OperationTimeoutError(message="Send operation timed out"), TransientError, "timed out"),
        (sb.ServiceBusConnectionError(message="Connection reset by peer"), TransientError, "reset by peer"),
        (sb.ServiceBusCommunicationError(message="Name or service not known"), TransientError, None),
        (sb.MessageSizeExceededError(message="The message is too large."), BadRequestError, "too large"),
        (sb.ServiceBusAuthenticationError(message="ExpiredToken: The token is expired."), AuthError, "expired"),
        (sb.ServiceBusAuthorizationError(message=DENIED), AuthError, DENIED),
        (
            sb.MessagingEntityNotFoundError(message="The messaging entity 'sb://x/conveyor-work' could not be found."),
            NotFoundError,
            "could not be found",
        ),
    ],
)
def test_send_errors_are_mapped_with_the_service_message(
    error: Exception, expected: type[ConveyorError], text: str | None
) -> None:
    client = FakeServiceBusClient()
    client.send_errors.append(error)

    with pytest.raises(expected) as caught:
        make_queue(client).send(start())

    assert caught.value.retryable is expected.retryable
    assert caught.value.service == "servicebus"
    assert type(error).__name__ in str(caught.value)
    if text:
        assert text in str(caught.value)


def test_lost_lock_and_double_settle_are_mapped() -> None:
    assert isinstance(map_servicebus_error(sb.MessageLockLostError(message="lock expired")), TransientError)
    assert isinstance(map_servicebus_error(sb.MessageAlreadySettled(action="complete")), ConflictError)
    assert map_servicebus_error(sb.ServiceBusError("boom", retryable=True)).retryable is True
    assert map_servicebus_error(sb.ServiceBusError("boom")).retryable is False


def test_a_connection_error_reopens_the_sender_on_the_next_send() -> None:
    client = FakeServiceBusClient()
    queue = make_queue(client)
    client.send_errors.append(sb.ServiceBusConnectionError(message="Connection reset by peer"))

    with pytest.raises(TransientError):
        queue.send(start("a"))
    queue.send(start("b"))

    assert len(client.senders) == 2
    assert client.senders[0].closed is True
    assert [m.message_id for m in client.senders[1].sent] == ["b"]


# ------------------------------------------------------------------ receiving (local consumer)


def body(msg: Message) -> bytes:
    return msg.with_id().model_dump_json().encode()


def test_receive_complete_and_dead_letter_with_reason_and_description() -> None:
    client = FakeServiceBusClient()
    ok = FakeReceivedMessage(body(start("run-a")), delivery_count=0, message_id="run-a")
    again = FakeReceivedMessage(body(tick()), delivery_count=2, message_id="t")
    client.available.extend([ok, again])
    queue = make_queue(client, receive_wait_seconds=0.5)

    got = queue.receive(max_messages=16, visibility_timeout=30)

    (receiver,) = client.receivers
    assert receiver.receive_mode == ServiceBusReceiveMode.PEEK_LOCK
    assert receiver.waits == [0.5]
    assert [(r.message.run_id, r.dequeue_count) for r in got] == [("run-a", 1), (RUN, 3)]
    queue.complete(got[0])
    queue.dead_letter(got[1], "StepFailed", "batch job failed: exit code 2")
    assert receiver.completed == [ok]
    assert receiver.dead_lettered == [(again, "StepFailed", "batch job failed: exit code 2")]
    queue.receive()
    assert len(client.receivers) == 1  # one receiver, reused


def test_malformed_bodies_and_exhausted_deliveries_are_dead_lettered_not_returned() -> None:
    client = FakeServiceBusClient()
    bad_json = FakeReceivedMessage(b"{not json", message_id="x1")
    wrong_shape = FakeReceivedMessage(json.dumps({"kind": "explode", "run_id": "r"}).encode(), message_id="x2")
    exhausted = FakeReceivedMessage(body(start("run-z")), delivery_count=5, message_id="run-z")
    good = FakeReceivedMessage(body(start("run-ok")), delivery_count=4, message_id="run-ok")
    client.available.extend([bad_json, wrong_shape, exhausted, good])

    got = make_queue(client, max_delivery_count=5).receive()

    assert [(r.message.run_id, r.dequeue_count) for r in got] == [("run-ok", 5)]
    dead = client.receivers[0].dead_lettered
    assert [(m.message_id, reason) for m, reason, _ in dead] == [
        ("x1", "InvalidMessage"),
        ("x2", "InvalidMessage"),
        ("run-z", "MaxDeliveryCountExceeded"),
    ]
    assert all(description for _, _, description in dead)
    assert "6" in str(dead[2][2])


def test_completing_twice_is_harmless_and_a_lost_lock_is_retryable() -> None:
    client = FakeServiceBusClient()
    client.available.append(FakeReceivedMessage(body(start("run-a"))))
    queue = make_queue(client)
    (got,) = queue.receive()
    receiver = client.receivers[0]

    receiver.errors.append(sb.MessageAlreadySettled(action="complete"))
    queue.complete(got)  # no error
    receiver.errors.append(sb.MessageLockLostError(message="The lock supplied is invalid."))
    with pytest.raises(TransientError, match="lock supplied is invalid"):
        queue.complete(got)


def test_close_closes_sender_receiver_and_client() -> None:
    client = FakeServiceBusClient()
    queue = make_queue(client)
    queue.send(start())
    queue.receive()
    queue.close()

    assert client.sender.closed and client.receivers[0].closed and client.closed


def test_invalid_queue_name_and_delivery_count_name_their_settings() -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceBusWorkQueue(FakeServiceBusClient(), "bad name!", 10)  # type: ignore[arg-type]
    assert caught.value.field == "CONVEYOR_QUEUE_NAME"
    with pytest.raises(ValidationError) as caught:
        ServiceBusWorkQueue(FakeServiceBusClient(), "conveyor-work", 0)  # type: ignore[arg-type]
    assert caught.value.field == "CONVEYOR_MAX_DELIVERY_COUNT"


# ------------------------------------------------------------------ from_settings


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: object) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("fake", 2_000_000_000)


@pytest.fixture
def issued(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    calls: list[str | None] = []

    def fake_get_credential(settings: Settings, client_id: str | None = None) -> Any:
        calls.append(client_id)
        return FakeCredential()

    monkeypatch.setattr(shared.azure_identity, "get_credential", fake_get_credential)
    return calls


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"CONVEYOR_ROOT": str(tmp_path), "CONVEYOR_MODE": "azure", **env})


CONN = "Endpoint=sb://connns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0c2VjcmV0c2VjcmV0"


def test_identity_based_client_when_the_namespace_is_set(issued: list[str | None], tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        ServiceBusConnection__fullyQualifiedNamespace="sb://conveyorns.servicebus.windows.net/",
        ServiceBusConnection__clientId="2222-uami",
        ServiceBusConnection=CONN,  # identity wins when both are set
        CONVEYOR_QUEUE_NAME="work",
        CONVEYOR_MAX_DELIVERY_COUNT="10",
    )
    queue = ServiceBusWorkQueue.from_settings(s)

    client = queue._client
    assert client.fully_qualified_namespace == "conveyorns.servicebus.windows.net"
    assert isinstance(client._credential, FakeCredential)
    assert issued == ["2222-uami"]
    assert (queue.queue_name, queue.max_delivery_count) == ("work", 10)


def test_connection_string_client_when_no_namespace(issued: list[str | None], tmp_path: Path) -> None:
    queue = ServiceBusWorkQueue.from_settings(settings(tmp_path, ServiceBusConnection=CONN))

    assert queue._client.fully_qualified_namespace == "connns.servicebus.windows.net"
    assert issued == []


def test_constructor_arguments_are_what_from_settings_passes(
    issued: list[str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.servicebus

    captured: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class CapturingClient:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            captured.append(("init", args, kwargs))

        @classmethod
        def from_connection_string(cls, *args: Any, **kwargs: Any) -> CapturingClient:
            captured.append(("from_connection_string", args, kwargs))
            return cls.__new__(cls)

    monkeypatch.setattr(azure.servicebus, "ServiceBusClient", CapturingClient)
    ns = settings(tmp_path, ServiceBusConnection__fullyQualifiedNamespace="conveyorns.servicebus.windows.net")
    ServiceBusWorkQueue.from_settings(ns, client_kwargs={"retry_total": 1})
    ServiceBusWorkQueue.from_settings(settings(tmp_path, ServiceBusConnection=CONN))

    (how, args, kwargs), (how2, args2, kwargs2) = captured
    assert how == "init" and args[0] == "conveyorns.servicebus.windows.net"
    assert isinstance(args[1], FakeCredential) and kwargs == {"retry_total": 1}
    assert how2 == "from_connection_string" and args2 == (CONN,) and kwargs2 == {}


def test_neither_namespace_nor_connection_string_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceBusWorkQueue.from_settings(settings(tmp_path))
    assert caught.value.field == "ServiceBusConnection__fullyQualifiedNamespace"


def test_a_bad_connection_string_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "Endpoint=nonsense;SharedAccessKey=supersecret"
    with pytest.raises(ValidationError) as caught:
        ServiceBusWorkQueue.from_settings(settings(tmp_path, ServiceBusConnection=secret))
    assert caught.value.field == "ServiceBusConnection"
    assert "supersecret" not in str(caught.value)


def test_an_injected_client_is_used_as_is(tmp_path: Path) -> None:
    client = FakeServiceBusClient()
    queue = ServiceBusWorkQueue.from_settings(settings(tmp_path), client=client)  # type: ignore[arg-type]
    queue.send(start())
    assert client.sender.sent[0].message_id == RUN


def test_wiring_picks_service_bus_in_azure_mode(issued: list[str | None], tmp_path: Path) -> None:
    from shared.wiring import Services

    s = settings(tmp_path, ServiceBusConnection__fullyQualifiedNamespace="conveyorns.servicebus.windows.net")
    assert isinstance(Services(s).queue, ServiceBusWorkQueue)
