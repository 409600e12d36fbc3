"""Schedules: each fire starts exactly once, however often or late the timer calls."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.engine.model import run_id_for
from shared.errors import ValidationError
from tests.unit.ingest.helpers import consume_starts, flows, service, starts

HOURLY = {"kind": "schedule", "cron": "0 0 * * * *"}


def at(h: int, m: int = 0, s: int = 0) -> datetime:
    return datetime(2024, 6, 1, h, m, s, tzinfo=UTC)


def test_double_and_late_fires_start_each_fire_once() -> None:
    svc, store, queue, _ = service(flows(hourly=[HOURLY]))
    first = svc.fire_schedules(at(12, 0, 0))
    consume_starts(store)
    again = svc.fire_schedules(at(12, 0, 0))
    late = svc.fire_schedules(at(12, 45, 10))
    assert [r.status for r in first] == ["created"]
    assert [r.status for r in again + late] == ["duplicate", "duplicate"]
    run_id = first[0].run_id
    assert run_id == run_id_for("hourly", "schedule", "2024-06-01T12:00:00Z")
    assert starts(queue) == [run_id]
    run = store.get(run_id)
    assert run.trigger.kind == "schedule" and run.trigger.schedule is not None
    assert run.trigger.schedule["fire_time"] == "2024-06-01T12:00:00Z"
    assert run.trigger.schedule["timezone"] == "UTC" and run.trigger.schedule["cron"] == "0 0 * * * *"
    nxt = svc.fire_schedules(at(13, 0, 2))
    assert nxt[0].status == "created" and nxt[0].run_id != run_id
    assert len(starts(queue)) == 2


def test_time_zone_fire_time_is_utc() -> None:
    svc, store, _, _ = service(flows(ny=[{"kind": "schedule", "cron": "0 0 9 * * *", "timezone": "America/New_York"}]))
    res = svc.fire_schedules(at(13, 30))  # 09:30 EDT
    run = store.get(res[0].run_id)
    assert run.trigger.schedule is not None and run.trigger.schedule["fire_time"] == "2024-06-01T13:00:00Z"


def test_catch_up_creates_missed_fires_exactly_once() -> None:
    svc, store, queue, _ = service(flows(hourly=[dict(HOURLY, catch_up=True, max_catch_up=24)]))
    svc.fire_schedules(at(9, 0, 5))  # the 09:00 fire ran; then the host was down until 12:00
    res = svc.fire_schedules(at(12, 0, 5))
    consume_starts(store)
    created = sorted(store.get(r.run_id).trigger.schedule["fire_time"] for r in res if r.created)  # type: ignore[index]
    assert created == ["2024-06-01T10:00:00Z", "2024-06-01T11:00:00Z", "2024-06-01T12:00:00Z"]
    caught = [store.get(r.run_id).trigger.schedule["caught_up"] for r in res if r.created]  # type: ignore[index]
    assert sorted(caught) == [False, True, True]
    # The timer fires again (double and late): nothing new.
    for when in (at(12, 0, 5), at(12, 30)):
        assert [r for r in svc.fire_schedules(when) if r.created] == []
    assert len(starts(queue)) == 4 and len(store.rows) == 4


def test_catch_up_is_capped_by_max_catch_up() -> None:
    svc, store, queue, _ = service(flows(hourly=[dict(HOURLY, catch_up=True, max_catch_up=2)]))
    svc.fire_schedules(at(5, 0, 5))
    res = svc.fire_schedules(at(12, 0, 5))
    fires = sorted(store.get(r.run_id).trigger.schedule["fire_time"] for r in res)  # type: ignore[index]
    assert fires == ["2024-06-01T10:00:00Z", "2024-06-01T11:00:00Z", "2024-06-01T12:00:00Z"]
    assert len(starts(queue)) == 4


def test_a_new_flow_does_not_back_fill_or_report_misses() -> None:
    for trig in (dict(HOURLY, catch_up=True), HOURLY):
        svc, _store, queue, tel = service(flows(hourly=[trig]))
        res = svc.fire_schedules(at(12, 0, 5))
        consume_starts(_store)
        assert [r.status for r in res] == ["created"]
        assert svc.fire_schedules(at(12, 10)) == [
            res[0].__class__("hourly", res[0].run_id, False, "duplicate", "run already exists")
        ]
        assert len(starts(queue)) == 1 and "schedule.missed" not in tel.names()


def test_without_catch_up_a_missed_fire_is_recorded_not_run() -> None:
    svc, store, queue, tel = service(flows(hourly=[HOURLY]))
    svc.fire_schedules(at(9, 0, 5))
    svc.fire_schedules(at(10, 0, 5))  # nothing missed here
    assert "schedule.missed" not in tel.names()
    res = svc.fire_schedules(at(12, 0, 5))  # 11:00 was missed
    consume_starts(store)
    assert [r.status for r in res] == ["created", "ignored"]
    missed = res[1]
    assert "2024-06-01T11:00:00Z" in missed.reason and "catch_up" in missed.reason
    assert missed.run_id == run_id_for("hourly", "schedule", "2024-06-01T11:00:00Z")
    assert missed.run_id not in store.rows
    events = [e for e in tel.events if e[0] == "schedule.missed"]
    assert len(events) == 1 and events[0][3]["fire_time"] == "2024-06-01T11:00:00Z"
    # Repeated timer calls for the same due fire do not report the miss again.
    assert [r.status for r in svc.fire_schedules(at(12, 20))] == ["duplicate"]
    assert tel.names().count("schedule.missed") == 1
    assert len(starts(queue)) == 3


def test_schedule_needs_an_aware_now() -> None:
    svc, _store, queue, _ = service(flows(hourly=[HOURLY]))
    with pytest.raises(ValidationError):
        svc.fire_schedules(datetime(2024, 6, 1, 12))
    assert queue.sent == []


def test_flows_without_schedules_fire_nothing() -> None:
    svc, _store, queue, _ = service(flows(manual=[{"kind": "manual"}]))
    assert svc.fire_schedules(at(12)) == [] and queue.sent == []
