"""Schedules: each fire starts exactly once, however often or late the timer calls, and a
schedule's first fire is the next one after it was first seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.engine.model import Run, StepRun, TriggerContext, run_id_for
from shared.errors import ValidationError
from shared.ingest.schedule_state import MemoryScheduleState, ScheduleKey
from shared.ingest.service import IngestService
from tests.unit.ingest.helpers import consume_starts, flows, service, starts

HOURLY = {"kind": "schedule", "cron": "0 0 * * * *"}
NIGHTLY = {"kind": "schedule", "cron": "0 30 2 * * *", "timezone": "Europe/Amsterdam", "catch_up": False}


def at(h: int, m: int = 0, s: int = 0, day: int = 1) -> datetime:
    return datetime(2024, 6, day, h, m, s, tzinfo=UTC)


def test_double_and_late_fires_start_each_fire_once() -> None:
    svc, store, queue, _ = service(flows(hourly=[HOURLY]))
    assert svc.fire_schedules(at(11, 59, 0)) == []  # first seen: the 11:00 fire is before that
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
    svc.fire_schedules(at(12, 30))  # first seen 08:30 EDT
    res = svc.fire_schedules(at(13, 30))  # 09:30 EDT
    run = store.get(res[0].run_id)
    assert run.trigger.schedule is not None and run.trigger.schedule["fire_time"] == "2024-06-01T13:00:00Z"


def test_catch_up_creates_missed_fires_exactly_once() -> None:
    svc, store, queue, _ = service(flows(hourly=[dict(HOURLY, catch_up=True, max_catch_up=24)]))
    svc.fire_schedules(at(8, 59))  # first seen
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
    svc.fire_schedules(at(4, 59))
    svc.fire_schedules(at(5, 0, 5))
    res = svc.fire_schedules(at(12, 0, 5))
    fires = sorted(store.get(r.run_id).trigger.schedule["fire_time"] for r in res)  # type: ignore[index]
    assert fires == ["2024-06-01T10:00:00Z", "2024-06-01T11:00:00Z", "2024-06-01T12:00:00Z"]
    assert len(starts(queue)) == 4


def test_a_new_schedule_waits_for_its_next_fire() -> None:
    # Issue 9: on a fresh data home `up` started nightly-refresh for a fire 19 hours in the past.
    for trig in (dict(HOURLY, catch_up=True), HOURLY):
        svc, _store, queue, tel = service(flows(hourly=[trig]))
        assert svc.fire_schedules(at(12, 0, 5)) == []  # 12:00 came before the schedule was seen
        assert svc.fire_schedules(at(12, 40)) == []
        res = svc.fire_schedules(at(13, 0, 2))
        consume_starts(_store)
        assert [r.status for r in res] == ["created"]
        assert res[0].run_id == run_id_for("hourly", "schedule", "2024-06-01T13:00:00Z")
        assert len(starts(queue)) == 1 and "schedule.missed" not in tel.names()


def test_fresh_home_at_night_does_not_run_last_nights_fire() -> None:
    svc, store, queue, tel = service(flows(nightly=[NIGHTLY]))
    evening = datetime(2024, 6, 1, 21, 42, tzinfo=UTC)  # 23:42 in Amsterdam; 02:30 was 19 hours ago
    assert svc.fire_schedules(evening) == []
    assert svc.fire_schedules(evening + timedelta(hours=2)) == []
    assert queue.sent == [] and store.rows == {} and tel.events == []
    res = svc.fire_schedules(datetime(2024, 6, 2, 0, 30, 1, tzinfo=UTC))  # 02:30:01 CEST
    assert [r.status for r in res] == ["created"]
    assert store.get(res[0].run_id).trigger.schedule["fire_time"] == "2024-06-02T00:30:00Z"  # type: ignore[index]


def test_nothing_is_logged_per_tick_for_a_fire_that_has_its_run() -> None:
    # Issue 9: the scheduler appended a trigger.received line to the run's telemetry every ~2 s.
    svc, store, queue, tel = service(flows(hourly=[HOURLY]))
    calls: list[int] = []
    create_many = store.create_many
    store.create_many = lambda runs: calls.append(len(runs)) or create_many(runs)  # type: ignore[method-assign]
    svc.fire_schedules(at(11, 30))
    svc.fire_schedules(at(12, 0, 1))
    logged = list(tel.events)
    assert [e[0] for e in logged] == ["trigger.received", "run.created"]
    writes = list(calls)
    for sec in range(3, 600, 2):  # the local scheduler ticks every ~2 s
        assert [r.status for r in svc.fire_schedules(at(12, 0) + timedelta(seconds=sec))] == ["duplicate"]
    assert tel.events == logged and calls == writes and len(starts(queue)) == 1
    # another service instance (a second worker) finds the run once, then stays quiet too
    other = IngestService(store, queue, svc.flows, telemetry=tel, schedule_state=svc.schedule_state)
    for sec in (5, 7, 9):
        assert [r.status for r in other.fire_schedules(at(12, 1, sec))] == ["duplicate"]
    assert tel.events == logged and calls == writes


def test_first_sight_is_shared_and_kept() -> None:
    state = MemoryScheduleState()
    fl = flows(hourly=[HOURLY])
    svc, store, queue, _ = service(fl)
    svc.schedule_state = state
    svc.fire_schedules(at(10, 30))  # first seen 10:30
    # a restarted host (new service, same state) keeps the first sight: the 11:00 fire counts
    again = IngestService(store, queue, fl, schedule_state=state)
    res = again.fire_schedules(at(11, 0, 3))
    assert [r.status for r in res] == ["created"]
    assert state.first_seen(ScheduleKey("hourly", "0 0 * * * *", "UTC"), lambda: at(23)) == at(10, 30)


def test_a_changed_cron_is_a_new_schedule() -> None:
    state = MemoryScheduleState()
    svc, _store, queue, _ = service(flows(hourly=[HOURLY]))
    svc.schedule_state = state
    svc.fire_schedules(at(10, 30))
    changed = IngestService(svc.store, queue, flows(hourly=[dict(HOURLY, cron="0 30 * * * *")]), schedule_state=state)
    assert changed.fire_schedules(at(11, 30, 5)) == []  # first seen now; the 11:30 fire was not after it
    assert [r.status for r in changed.fire_schedules(at(12, 30, 5))] == ["created"]


def test_a_home_with_scheduled_runs_but_no_record_keeps_its_history() -> None:
    svc, store, _queue, _tel = service(flows(hourly=[HOURLY]))
    fire = "2024-06-01T09:00:00Z"
    rid = run_id_for("hourly", "schedule", fire)
    trigger = TriggerContext(kind="schedule", schedule={"fire_time": fire, "cron": "0 0 * * * *", "timezone": "UTC"})
    t = at(9, 0, 1)
    store.create_if_absent(
        Run(
            run_id=rid,
            flow="hourly",
            trigger=trigger,
            steps=[StepRun(name="work", kind="batch")],
            created_at=t,
            updated_at=t,
        )
    )
    res = svc.fire_schedules(at(12, 0, 5))  # 10:00 and 11:00 were missed after that run
    assert [r.status for r in res] == ["created", "ignored"]
    assert "2024-06-01T11:00:00Z" in res[1].reason


def test_without_catch_up_a_missed_fire_is_recorded_not_run() -> None:
    svc, store, queue, tel = service(flows(hourly=[HOURLY]))
    svc.fire_schedules(at(8, 59))
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
