"""The pending sweep re-sends start once a pending run's start is overdue: its deadline plus the grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.engine.model import RunStatus, TriggerContext
from shared.ingest.sweeper import sweep_pending
from tests.unit.ingest.helpers import FixedClock, flows, service

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def _run(svc, store, run_id: str, age: float, status: RunStatus = RunStatus.PENDING, settle: int | None = None):  # type: ignore[no-untyped-def]
    flow = svc.flows.flows["f"]
    blob = {"url": "u", "settle_seconds": settle} if settle is not None else None
    trig = TriggerContext(kind="blob" if blob else "manual", blob=blob)
    svc.clock = FixedClock(NOW - timedelta(seconds=age))
    run = svc.new_run("f", flow, trig, run_id)
    run.status = status
    assert store.create_if_absent(run)
    return run


GRACE = 35.0  # the visibility timeout (30) + the margin (5)


def test_resends_only_overdue_pending_runs() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    old = _run(svc, store, "old", 600)
    _run(svc, store, "overdue", 36)
    _run(svc, store, "young", 20)  # its start may still be in a dying handler's hands
    _run(svc, store, "running", 600, RunStatus.RUNNING)
    _run(svc, store, "done", 600, RunStatus.SUCCEEDED)
    _run(svc, store, "settling", 600, settle=900)  # its start is still scheduled in the future
    _run(svc, store, "settled", 1200, settle=300)
    resent = sweep_pending(store, queue, NOW, GRACE)
    assert sorted(resent) == ["old", "overdue", "settled"]
    msgs = {m.run_id: m for m, delay in queue.sent}
    assert set(msgs) == {"old", "overdue", "settled"}
    assert msgs["old"].kind == "start" and msgs["old"].message_id == "old"
    assert msgs["old"].traceparent == old.traceparent and msgs["old"].flow == "f"
    assert all(delay == 0 for _, delay in queue.sent)


def test_a_start_stuck_behind_a_backlog_is_resent_at_growing_intervals() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    _run(svc, store, "r", 40)  # due 40 s ago
    sent_at = []
    for second in range(0, 400):
        if sweep_pending(store, queue, NOW + timedelta(seconds=second), GRACE):
            sent_at.append(second)
    # each re-send waits as long again as the run had waited: 40 s -> +80 s -> +160 s ...
    assert sent_at == [0, 76, 228]
    assert store.get("r").due_at == NOW + timedelta(seconds=228 + 268)


def test_a_run_started_meanwhile_is_not_resent() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    _run(svc, store, "r", 600)
    started = store.get("r")
    started.status = RunStatus.RUNNING
    store.save(started)
    assert sweep_pending(store, queue, NOW, GRACE) == [] and queue.sent == []


def test_nothing_pending_nothing_sent() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    _run(svc, store, "young", 10)
    assert sweep_pending(store, queue, NOW, GRACE) == [] and queue.sent == []


def test_ingest_crash_between_create_and_send_is_recovered() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    svc.clock = FixedClock(NOW - timedelta(seconds=40))
    real_send = queue.send

    def crash(*_a: object, **_k: object) -> None:
        raise RuntimeError("process died")

    queue.send = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        svc.start_manual("f", {}, idempotency_key="k")
    queue.send = real_send  # type: ignore[method-assign]
    assert queue.sent == []
    resent = sweep_pending(store, queue, NOW, GRACE)  # 40 s later, not 5 minutes
    assert len(resent) == 1 and [m.run_id for m, _ in queue.sent] == resent
