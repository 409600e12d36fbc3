"""functions/operations.py through the v2 programming model, over in-memory services.

The dead-letter routes answer what the local host's Api answers; the ``retention`` timer
applies ``CONVEYOR_RETENTION_DAYS`` (0 = off) and its binding reads
``%CONVEYOR_RETENTION_SCHEDULE%``; ``lifecycle_events`` delivers the outbox on the tick.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from functions import operations
from shared.engine.model import Message, Run, RunStatus, StepRun, TriggerContext
from shared.events.publisher import LifecycleEvents
from shared.wiring import set_services
from tests.fakes import MemoryOutbox
from tests.unit.api.helpers import World
from tests.unit.events.test_lifecycle_events import RecordingSink
from tests.unit.functions.test_functions import user_function


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    set_services(w.services)
    try:
        yield w
    finally:
        set_services(None)


def http(method: str, path: str, body: bytes = b"", **params: str) -> Any:
    return func.HttpRequest(
        method,
        f"http://localhost:7071{path}",
        headers={"Content-Type": "application/json"},
        params=params,
        route_params={},
        body=body,
    )


def test_bindings() -> None:
    timer = json.loads(operations.retention.build().get_function_json())["bindings"][0]
    assert timer["schedule"] == "%CONVEYOR_RETENTION_SCHEDULE%" and timer["runOnStartup"] is False
    tick = json.loads(operations.lifecycle_events.build().get_function_json())["bindings"][0]
    assert tick["schedule"] == "%CONVEYOR_SCHEDULE_TICK%"


def test_dead_letter_functions(world: World) -> None:
    world.queue.send(Message(kind="start", run_id="r1", flow="train"))
    [got] = world.queue.receive()
    world.queue.dead_letter(got, "MaxDeliveryCountExceeded", "delivered 6 times")
    listed = user_function(operations.dead_letters)(http("GET", "/api/deadletters"))
    assert listed.status_code == 200
    [entry] = json.loads(listed.get_body())["dead_letters"]
    assert (entry["run_id"], entry["reason"]) == ("r1", "MaxDeliveryCountExceeded")
    body = json.dumps({"ids": [entry["id"]]}).encode()
    replay = user_function(operations.replay_dead_letters)(http("POST", "/api/deadletters/replay", body))
    assert replay.status_code == 200 and json.loads(replay.get_body())["replayed"][0]["run_id"] == "r1"
    assert world.queue.dead == [] and world.sent("start")[-1].message_id == "r1"
    bad = user_function(operations.replay_dead_letters)(http("POST", "/api/deadletters/replay", b'{"nope": 1}'))
    assert bad.status_code == 400 and json.loads(bad.get_body())["error"]["field"] == "nope"


def finished(run_id: str, days: int, status: RunStatus) -> Run:
    at = datetime.now(UTC) - timedelta(days=days)
    return Run(
        run_id=run_id,
        flow="train",
        status=status,
        trigger=TriggerContext(kind="manual"),
        steps=[StepRun(name="work", kind="batch")],
        created_at=at,
        updated_at=at,
    )


def test_retention_timer_applies_the_settings(world: World) -> None:
    for r in (finished("old", 31, RunStatus.SUCCEEDED), finished("new", 1, RunStatus.SUCCEEDED)):
        world.store.create_if_absent(r)
    user_function(operations.retention)(TimerRequest(past_due=False))
    assert sorted(world.store.rows) == ["new"]  # default: 30 days
    world.services.settings = world.settings.with_overrides(retention_days=0)
    world.store.create_if_absent(finished("older", 90, RunStatus.FAILED))
    user_function(operations.retention)(TimerRequest(past_due=False))
    assert sorted(world.store.rows) == ["new", "older"]


def test_lifecycle_events_timer_delivers_the_outbox(world: World) -> None:
    sink = RecordingSink("log")
    outbox = MemoryOutbox()
    world.services.__dict__["events"] = LifecycleEvents(outbox, [sink], background=False)
    outbox.add(
        [{"id": "e1", "type": "conveyor.run.started", "time": "2026-01-01T00:00:00Z", "data": {}}],
        ["log"],
        datetime.now(UTC),
    )
    user_function(operations.lifecycle_events)(TimerRequest(past_due=False))
    assert [e["id"] for e in sink.got] == ["e1"] and outbox.rows == {}
