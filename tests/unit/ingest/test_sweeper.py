"""The sweeper re-sends start only for runs left pending too long."""

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


def test_resends_only_old_pending_runs() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    old = _run(svc, store, "old", 600)
    _run(svc, store, "young", 60)
    _run(svc, store, "running", 600, RunStatus.RUNNING)
    _run(svc, store, "done", 600, RunStatus.SUCCEEDED)
    _run(svc, store, "settling", 600, settle=900)  # its start is still scheduled in the future
    _run(svc, store, "settled", 1200, settle=300)
    resent = sweep_pending(store, queue, NOW, older_than_seconds=300)
    assert sorted(resent) == ["old", "settled"]
    msgs = {m.run_id: m for m, delay in queue.sent}
    assert set(msgs) == {"old", "settled"}
    assert msgs["old"].kind == "start" and msgs["old"].message_id == "old"
    assert msgs["old"].traceparent == old.traceparent and msgs["old"].flow == "f"
    assert all(delay == 0 for _, delay in queue.sent)


def test_nothing_pending_nothing_sent() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    _run(svc, store, "young", 10)
    assert sweep_pending(store, queue, NOW, older_than_seconds=300) == [] and queue.sent == []


def test_ingest_crash_between_create_and_send_is_recovered() -> None:
    svc, store, queue, _ = service(flows(f=[{"kind": "manual"}]))
    svc.clock = FixedClock(NOW - timedelta(minutes=10))
    real_send = queue.send

    def crash(*_a: object, **_k: object) -> None:
        raise RuntimeError("process died")

    queue.send = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        svc.start_manual("f", {}, idempotency_key="k")
    queue.send = real_send  # type: ignore[method-assign]
    assert queue.sent == []
    resent = sweep_pending(store, queue, NOW, older_than_seconds=300)
    assert len(resent) == 1 and [m.run_id for m, _ in queue.sent] == resent
