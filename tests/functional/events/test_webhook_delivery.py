"""Webhook subscribers against a real local subscriber server, through the Table outbox on Azurite.

The handshake comes first and nothing is posted without the grant; a subscriber failing
(503s, refusing connections) gets the same event again (same id) until it takes it; a
permanent refusal drops the event for that subscriber only; query strings are never logged.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.events.base import Failure
from shared.events.log import EventLogSink, read_events
from shared.events.outbox_table import TableOutbox
from shared.events.publisher import LifecycleEvents
from shared.events.webhooks import WebhookSink, redacted
from shared.local.azurite import free_port
from shared.settings import Settings
from tests.functional.events.subscriber import Subscriber

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def event(n: int = 1) -> dict:
    return {
        "specversion": "1.0",
        "id": f"{n:032x}",
        "source": "/conveyor/flows/demo",
        "type": "conveyor.run.succeeded",
        "subject": "runs/r1",
        "time": "2026-03-01T09:00:00.000000Z",
        "datacontenttype": "application/json",
        "data": {"run_id": "r1", "flow": "demo", "trace_id": "ab" * 16},
    }


def test_handshake_then_structured_post(subscriber: Subscriber) -> None:
    sink = WebhookSink(subscriber.url(), origin="conveyor.test")
    assert sink.deliver([event(1), event(2)]) == {}
    assert [h["Webhook-Request-Origin"] for h in subscriber.handshakes] == ["conveyor.test"]
    assert [e["id"] for e in subscriber.accepted] == [event(1)["id"], event(2)["id"]]
    assert subscriber.content_types[0].startswith("application/cloudevents+json")
    sink.deliver([event(3)])
    assert len(subscriber.handshakes) == 1  # the grant is remembered


def test_no_grant_no_post(subscriber: Subscriber) -> None:
    subscriber.grant = False
    failures = WebhookSink(subscriber.url(), origin="conveyor.test").deliver([event()])
    assert failures[event()["id"]].retryable and "did not grant" in failures[event()["id"]].error
    assert subscriber.posts == []


def test_refusals_and_an_unreachable_subscriber(subscriber: Subscriber) -> None:
    sink = WebhookSink(subscriber.url() + "?sig=SECRET", origin="conveyor.test")
    subscriber.statuses = [503, 400, 410]
    out = sink.deliver([event(1), event(2), event(3)])
    assert out[event(1)["id"]].retryable is True
    assert out[event(2)["id"]].retryable is False and out[event(3)["id"]].retryable is False
    assert "SECRET" not in sink.describe() and "SECRET" not in out[event(1)["id"]].error
    assert redacted("https://user:pw@h.example/x?sig=1") == "https://h.example/x"
    sink.deliver([event(4)])  # 410 forgot the grant: asked again
    assert len(subscriber.handshakes) == 2
    down = WebhookSink(f"http://127.0.0.1:{free_port()}/hook", origin="conveyor.test")
    failure = down.deliver([event(1)])[event(1)["id"]]
    assert isinstance(failure, Failure) and failure.retryable


def test_through_the_outbox_a_failing_subscriber_gets_the_same_event_until_it_takes_it(
    subscriber: Subscriber, storage_settings: Settings
) -> None:
    clock = [T0]
    outbox = TableOutbox.from_settings(storage_settings)
    hook = WebhookSink(subscriber.url(), origin="conveyor.test")
    log = EventLogSink(storage_settings.home)
    events = LifecycleEvents(outbox, [hook, log], clock=lambda: clock[0], background=False)
    subscriber.statuses = [503, 503]
    outbox.add([event(7)], [hook.name, log.name], T0)
    assert outbox.add([event(7)], [hook.name, log.name], T0) == [False]  # kept once per id
    first = events.deliver_due()
    assert first.retrying == 1 and [e["id"] for e in read_events(storage_settings.home)] == [event(7)["id"]]
    for seconds in (1, 2):
        clock[0] += timedelta(seconds=seconds)
        events.deliver_due()
    assert [p["id"] for p in subscriber.posts] == [event(7)["id"]] * 3  # the same id each time
    assert [e["id"] for e in subscriber.accepted] == [event(7)["id"]]
    assert len(read_events(storage_settings.home)) == 1  # the log took it the first time, once
    assert outbox.due(clock[0] + timedelta(hours=1)) == []
    assert outbox.add([event(7)], [hook.name], T0, skip_delivered=True) == [False]  # a re-derived copy: delivered


@pytest.mark.parametrize("url", ["ftp://x/y", "not a url", "http:///path"])
def test_bad_webhook_urls_are_refused_naming_the_setting(url: str) -> None:
    from shared.errors import ValidationError

    with pytest.raises(ValidationError) as err:
        WebhookSink(url, origin="o")
    assert err.value.field == "CONVEYOR_EVENTS_WEBHOOKS"
