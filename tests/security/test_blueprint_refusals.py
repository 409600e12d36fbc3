"""The Functions Event Grid trigger (functions/blob_events.py) applies the same checks and refusals.

The Functions runtime decodes the delivery and hands the blueprint one event (a
``func.EventGridEvent``, or a ``func.CloudEvent`` for a CloudEvents subscription). It goes
through the same strict parser as the HTTP routes: a refused name or URL starts nothing and is
logged as a warning with a ``trigger.refused`` telemetry event; the invocation still succeeds
(raising would make Event Grid retry what can never succeed). Here the runtime's decoding is
the binding object built by hand, and the services are the in-memory World of the unit tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from functions import blob_events
from shared.telemetry.local import read_trace
from shared.wiring import set_services
from tests.unit.api.helpers import World, load_event

BASE = "http://127.0.0.1:10000/devstoreaccount1/landing/"
SUBJECT = "/blobServices/default/containers/landing/blobs/"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    set_services(w.services)
    try:
        yield w
    finally:
        set_services(None)


def blob_created() -> Callable[..., Any]:
    return blob_events.blob_created.build().get_user_function()  # type: ignore[attr-defined]


def grid(name: str, url: str, data: dict[str, Any] | None = None) -> func.EventGridEvent:
    doc = load_event("blob_created_eventgrid.json")[0]
    return func.EventGridEvent(
        id=f"ev-{abs(hash(name))}",
        data={**doc["data"], "url": url} if data is None else data,
        topic=doc["topic"],
        subject=SUBJECT + name,
        event_type=doc["eventType"],
        event_time=datetime(2024, 6, 1, 18, 41, tzinfo=UTC),
        data_version="",
    )


def refused(world: World) -> list[dict[str, Any]]:
    world.telemetry.flush()
    return [r for r in read_trace(world.settings.home, None) if r["name"] == "trigger.refused"]


@pytest.mark.parametrize(
    ("name", "url"),
    [
        pytest.param("sales/../../etc/x.csv", BASE + "sales/../../etc/x.csv", id="dotdot"),
        pytest.param("sales/%2e%2e/x.csv", BASE + "sales/%2e%2e/x.csv", id="dotdot-percent"),
        pytest.param("sales/a\\b.csv", BASE + "sales/a%5Cb.csv", id="backslash"),
        pytest.param("sales/a\nb.csv", BASE + "sales/a%0Ab.csv", id="newline"),
        pytest.param("sales/\ud800.csv", BASE + "sales/%ED%A0%80.csv", id="lone-surrogate"),
        pytest.param("sales/x.csv", "https://evil.example.com/devstoreaccount1/landing/sales/x.csv", id="foreign"),
    ],
)
def test_refused_events_start_nothing_and_are_reported(world: World, name: str, url: str, caplog: Any) -> None:
    event = grid(name, url)
    with caplog.at_level(logging.WARNING):
        blob_created()(event)  # returns: Event Grid must not retry it
    assert world.sent() == [] and world.store.rows == {}
    assert any(event.id in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    (tel,) = refused(world)
    assert tel["attributes"]["event_id"] == event.id


def test_malformed_event_is_dropped_with_an_error_not_retried(world: World, caplog: Any) -> None:
    event = grid("sales/x.csv", BASE + "sales/x.csv", data={"eTag": "0x1"})
    with caplog.at_level(logging.ERROR):
        blob_created()(event)
    assert world.sent() == [] and world.store.rows == {}
    assert any("data.url" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_a_cloudevents_binding_starts_its_run(world: World) -> None:
    doc = load_event("blob_created_cloudevents.json")[0]
    event = func.CloudEvent(
        id=doc["id"],
        source=doc["source"],
        type=doc["type"],
        specversion="1.0",
        data=doc["data"],
        time=datetime(2024, 6, 1, 18, 41, tzinfo=UTC),
        subject=doc["subject"],
    )
    blob_created()(event)
    (start,) = world.sent("start")
    run = world.store.get(start.run_id)
    assert run.trigger.blob is not None and run.trigger.blob["name"] == "sales/2024-06-01/part-0001.csv"


def test_a_cloudevents_binding_with_another_specversion_starts_nothing(world: World, caplog: Any) -> None:
    doc = load_event("blob_created_cloudevents.json")[0]
    event = func.CloudEvent(
        id=doc["id"],
        source=doc["source"],
        type=doc["type"],
        specversion="0.3",
        data=doc["data"],
        subject=doc["subject"],
    )
    with caplog.at_level(logging.ERROR):
        blob_created()(event)
    assert world.sent() == [] and world.store.rows == {}
    assert any("specversion" in r.getMessage() for r in caplog.records)
