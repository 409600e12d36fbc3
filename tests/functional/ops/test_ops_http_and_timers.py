"""The dead-letter HTTP routes and the retention timers on the session Azurite.

Routes through ``Api.dispatch`` (what the local host serves; the Functions blueprint calls the
same methods): the list, a replay by id and by flow, and bad bodies as 400s naming the field.
Retention: the local scheduler purges at each fire of ``CONVEYOR_RETENTION_SCHEDULE`` after
the host started (never for a fire before it), with ``CONVEYOR_RETENTION_DAYS`` and statuses.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.api.handlers import Api
from shared.api.http import HttpRequest, HttpResponse
from shared.engine.model import Message, RunStatus
from shared.host.scheduler import Scheduler
from shared.ops.retention import apply_retention
from shared.wiring import Services
from tests.functional.ops.test_ops_cli import bury, old_run


def call(api: Api, method: str, path: str, body: object = None, **query: str) -> HttpResponse:
    raw = b"" if body is None else json.dumps(body).encode()
    return api.dispatch(HttpRequest(method, path, query=query, headers={"Content-Type": "application/json"}, body=raw))


def test_dead_letter_routes(services: Services) -> None:
    api = Api(services)
    bury(services, Message(kind="start", run_id="r1", flow="nightly"), Message(kind="start", run_id="r2", flow="other"))
    listed = call(api, "GET", "/api/deadletters")
    assert listed.status == 200 and listed.json()["count"] == 2
    entry = next(d for d in listed.json()["dead_letters"] if d["run_id"] == "r1")
    assert entry["reason"] == "UnknownFlow" and entry["replayable"] is True
    assert call(api, "GET", "/api/deadletters", limit="1").json()["count"] == 1
    replay = call(api, "POST", "/api/deadletters/replay", {"ids": [entry["id"]]})
    assert replay.status == 200 and [d["run_id"] for d in replay.json()["replayed"]] == ["r1"]
    assert [r.message.run_id for r in services.queue.receive()] == ["r1"]
    by_flow = call(api, "POST", "/api/deadletters/replay", {"all": True, "flow": "other"})
    assert [d["run_id"] for d in by_flow.json()["replayed"]] == ["r2"]
    missing = call(api, "POST", "/api/deadletters/replay", {"ids": ["gone"]})
    assert missing.status == 200 and missing.json()["missing"] == ["gone"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "ids"),
        ({"ids": ["a"], "all": True}, "ids"),
        ({"ids": "abc"}, "ids"),
        ({"ids": []}, "ids"),
        ({"all": True, "flow": "Not A Flow"}, "flow"),
        ({"all": True, "extra": 1}, "extra"),
        ({"ids": ["bad\nid"]}, "ids"),
        ([1, 2], "body"),
    ],
)
def test_bad_replay_bodies_are_400s_naming_the_field(services: Services, body: object, field: str) -> None:
    resp = call(Api(services), "POST", "/api/deadletters/replay", body)
    assert resp.status == 400, resp.body
    assert resp.json()["error"]["field"] == field


def test_bad_list_limit_is_a_400(services: Services) -> None:
    for limit in ("0", "x", "5001"):
        resp = call(Api(services), "GET", "/api/deadletters", limit=limit)
        assert resp.status == 400 and resp.json()["error"]["field"] == "limit"


def test_the_local_scheduler_purges_at_each_retention_fire_after_start(services: Services) -> None:
    settings = services.settings.with_overrides(retention_days=30, retention_statuses=("succeeded",))
    services.settings = settings
    assert all(
        services.store.create_many(
            [old_run("old-ok", 45, RunStatus.SUCCEEDED), old_run("old-bad", 45, RunStatus.FAILED)]
        )
    )
    started = datetime.now(UTC).replace(hour=4, minute=0, second=0, microsecond=0)  # after today's 03:00 fire
    scheduler = Scheduler(services, clock=lambda: started)
    assert scheduler.retention(started) is None  # the fire before the start is not run
    assert scheduler.retention(started + timedelta(hours=5)) is None  # no fire since
    report = scheduler.retention(started + timedelta(hours=23, minutes=1))  # tomorrow 03:01
    assert report is not None and report.run_ids == ["old-ok"]
    assert scheduler.retention(started + timedelta(hours=23, minutes=5)) is None  # once per fire
    assert sorted(r.run_id for r in services.store.list_runs()) == ["old-bad"]
    services.settings = settings.with_overrides(retention_days=0)
    assert apply_retention(services, datetime.now(UTC)) is None  # 0 = off
