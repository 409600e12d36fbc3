"""EventGridTopicSink with the real EventGridPublisherClient against a loopback fake of the publish API.

The SDK does the HTTP (token, api-version, batch content type) over HTTPS on 127.0.0.1; the
fake answers as the service does. Covers: the CloudEvents arrive as sent (id, type, subject,
traceparent extension, data); a passing 503 is absorbed by the SDK's own retry policy; what
the SDK gives up on (401: a role assignment not effective yet) is retried by the outbox; a
batch refused with 400 is split so only the bad event is dropped; the endpoint is validated.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared.errors import ValidationError
from shared.events.eventgrid_topic import EventGridTopicSink
from shared.events.outbox_table import TableOutbox
from shared.events.publisher import LifecycleEvents
from shared.settings import Settings
from tests.functional.azure.eventgrid.fake_topic import FakeTopic
from tests.functional.azure.storage.conftest import FakeCredential, TlsServer

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def topic(topic_server: TlsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeTopic, str]]:
    fake = FakeTopic()
    topic_server.server.expect_request("/api/events", method="POST").respond_with_handler(fake.handle)
    # the SDK's default transport trusts the loopback certificate through requests' own setting
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", topic_server.ca_file)
    yield fake, f"{topic_server.url}/api/events"


def sink(endpoint: str, credential: FakeCredential | None = None) -> EventGridTopicSink:
    settings = Settings(events_topic_endpoint=endpoint)
    return EventGridTopicSink.from_settings(settings, credential=credential or FakeCredential())


def event(n: int, **extra: object) -> dict:
    return {
        "specversion": "1.0",
        "id": f"{n:032x}",
        "source": "/conveyor/flows/retrain",
        "type": "conveyor.model.deployed",
        "subject": f"runs/r{n}/steps/deploy",
        "time": "2026-03-01T09:00:00.000000Z",
        "datacontenttype": "application/json",
        "traceparent": TP,
        "data": {"run_id": f"r{n}", "flow": "retrain", "trace_id": TP.split("-")[1], "version": "3"},
        **extra,
    }


def test_events_arrive_as_cloudevents_with_the_apps_identity(topic: tuple[FakeTopic, str]) -> None:
    fake, endpoint = topic
    credential = FakeCredential()
    assert sink(endpoint, credential).deliver([event(1), event(2)]) == {}
    assert fake.requests == 1  # one batch
    assert credential.scopes == [("https://eventgrid.azure.net/.default",)]
    first = fake.received[0]
    assert (first["id"], first["type"], first["subject"]) == (
        event(1)["id"],
        "conveyor.model.deployed",
        "runs/r1/steps/deploy",
    )
    assert first["specversion"] == "1.0" and first["source"] == "/conveyor/flows/retrain"
    assert first["traceparent"] == TP and first["data"]["version"] == "3"
    assert first["time"].startswith("2026-03-01T09:00:00")


def test_busy_and_unauthorised_are_retried_a_bad_event_alone_is_dropped(topic: tuple[FakeTopic, str]) -> None:
    fake, endpoint = topic
    s = sink(endpoint)
    fake.fail_next = [503]
    assert s.deliver([event(1)]) == {}  # the SDK's retry policy sent it again at once
    assert fake.requests == 2 and len(fake.received) == 1
    fake.received.clear()
    fake.refuse_ids = {event(2)["id"]}
    split = s.deliver([event(1), event(2), event(3)])
    assert list(split) == [event(2)["id"]] and split[event(2)["id"]].retryable is False
    assert [e["id"] for e in fake.received] == [event(1)["id"], event(3)["id"]]
    nobody = EventGridTopicSink.from_settings(
        Settings(events_topic_endpoint=endpoint), credential=FakeCredential("wrong")
    )
    assert nobody.deliver([event(4)])[event(4)["id"]].retryable  # a role assignment may be on its way


def test_through_the_outbox_on_azurite(topic: tuple[FakeTopic, str], storage_settings: Settings) -> None:
    fake, endpoint = topic
    outbox = TableOutbox.from_settings(storage_settings)
    events = LifecycleEvents(outbox, [sink(endpoint)], background=False)
    fake.unauthorised_next = 1
    outbox.add([event(5), event(6)], ["eventgrid"], datetime.now(UTC))
    assert events.deliver_due().retrying == 2
    assert fake.received == []
    events.clock = lambda: datetime.now(UTC).replace(year=2100)
    assert events.deliver_due().delivered == 2
    assert sorted(e["id"] for e in fake.received) == [event(5)["id"], event(6)["id"]]


@pytest.mark.parametrize("endpoint", ["http://topic.westeurope-1.eventgrid.azure.net/api/events", "topic", ""])
def test_the_endpoint_must_be_https(endpoint: str) -> None:
    with pytest.raises(ValidationError) as err:
        sink(endpoint)
    assert err.value.field == "CONVEYOR_EVENTS_TOPIC_ENDPOINT"
