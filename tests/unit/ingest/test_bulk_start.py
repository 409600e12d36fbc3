"""Bulk starts: many runs created by one call travel as ``start_batch`` messages.

The ingest side (one message per up to MAX_START_BATCH runs of a flow and delay) and, end to
end with the executor over the same in-memory store and queue, that every run starts exactly
once -- also when the batch message is delivered twice or its fan-out crashes half-way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.engine.executor import Executor, parse_message
from shared.engine.model import MAX_START_BATCH, Message, RunStatus, start_batch_id
from shared.ingest.service import BULK_START_MIN
from shared.ingest.sweeper import sweep_pending
from shared.queue.base import Received
from tests.fakes import MemoryQueue, ScriptedBackend
from tests.unit.ingest.helpers import FixedClock, RecordingTelemetry, consume_starts, flows, service, starts
from tests.unit.ingest.test_service_blob import blob

SALES = [{"kind": "blob", "container": "landing", "suffix": ".csv"}]


def blobs(n: int, prefix: str = "part") -> list:  # type: ignore[type-arg]
    return [blob(f"{prefix}-{i:05d}.csv") for i in range(n)]


def kinds(queue: MemoryQueue) -> list[str]:
    return [m.kind for m, _ in queue.sent]


def test_more_than_the_threshold_travel_as_one_batch_with_every_created_run() -> None:
    svc, store, queue, tel = service(flows(sales=SALES))
    results = svc.ingest_blob_events(blobs(40))
    assert all(r.created for r in results)
    assert kinds(queue) == ["start_batch"]
    msg, delay = queue.sent[0]
    assert delay == 0.0 and msg.flow == "sales"
    assert msg.run_ids == [r.run_id for r in results]
    assert msg.run_id == msg.message_id == start_batch_id(msg.run_ids)
    assert sorted(store.rows) == sorted(msg.run_ids)
    assert all(store.get(rid).status is RunStatus.PENDING for rid in msg.run_ids)
    assert tel.names().count("run.created") == 40
    # the queue body is valid for the executor and stays well under the Storage Queue limit
    body = msg.model_dump_json()
    assert parse_message(body) == msg and len(body.encode()) < 64 * 1024 // 2


@pytest.mark.parametrize("n", [1, BULK_START_MIN])
def test_up_to_the_threshold_each_run_gets_its_own_start(n: int) -> None:
    svc, _store, queue, _ = service(flows(sales=SALES))
    results = svc.ingest_blob_events(blobs(n))
    assert kinds(queue) == ["start"] * n
    assert [m.message_id for m, _ in queue.sent] == [r.run_id for r in results]
    assert all(m.run_ids is None and "run_ids" not in m.model_dump_json() for m, _ in queue.sent)


def test_batches_are_per_flow_and_delay_and_cut_at_the_size_limit() -> None:
    two = flows(sales=SALES, slow=[{"kind": "blob", "container": "landing", "settle_seconds": 30}])
    svc, store, queue, _ = service(two)
    n = MAX_START_BATCH + 20
    results = svc.ingest_blob_events(blobs(n))
    assert len(results) == 2 * n and all(r.created for r in results)
    by_flow: dict[str, list[tuple[Message, float]]] = {}
    for m, d in queue.sent:
        assert m.kind == "start_batch"
        by_flow.setdefault(m.flow, []).append((m, d))
    assert {f: [len(m.run_ids or []) for m, _ in ms] for f, ms in by_flow.items()} == {
        "sales": [MAX_START_BATCH, 20],
        "slow": [MAX_START_BATCH, 20],
    }
    assert {d for _, d in by_flow["slow"]} == {30.0} and {d for _, d in by_flow["sales"]} == {0.0}
    asked = starts(queue)
    assert len(asked) == len(set(asked)) == len(store.rows) == 2 * n
    for f in ("sales", "slow"):
        assert all(store.get(rid).flow == f for m, _ in by_flow[f] for rid in m.run_ids or [])


def test_a_redelivered_drop_sends_nothing_again() -> None:
    svc, store, queue, _ = service(flows(sales=SALES))
    events = blobs(30)
    svc.ingest_blob_events(events)
    consume_starts(store)
    again = svc.ingest_blob_events(events[:20] + blobs(3, prefix="new"))
    assert [r.status for r in again] == ["duplicate"] * 20 + ["created"] * 3
    assert kinds(queue) == ["start_batch", "start", "start", "start"]
    assert len(starts(queue)) == len(set(starts(queue))) == len(store.rows) == 33


def test_a_drop_redelivered_while_its_runs_are_pending_sends_their_starts_again_in_batches() -> None:
    svc, store, queue, _ = service(flows(sales=SALES))
    events = blobs(30)
    svc.ingest_blob_events(events)
    again = svc.ingest_blob_events(events[:20])
    assert all(r.status == "duplicate" and "still pending" in r.reason for r in again)
    assert kinds(queue) == ["start_batch", "start_batch"]  # 20 re-sent starts travel together too
    assert starts(queue)[30:] == [r.run_id for r in again] and len(store.rows) == 30


def test_a_batch_that_cannot_be_sent_leaves_its_runs_pending_for_the_sweeper() -> None:
    clock = FixedClock()
    svc, store, queue, _ = service(flows(sales=SALES), clock=clock)

    def down(message: Message, delay_seconds: float = 0.0) -> None:
        raise ConnectionError("queue down")

    real_send = queue.send
    queue.send = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        svc.ingest_blob_events(blobs(20))
    assert len(store.rows) == 20 and all(store.get(r).status is RunStatus.PENDING for r in store.rows)
    queue.send = real_send  # type: ignore[method-assign]
    resent = sweep_pending(store, queue, clock.now + timedelta(minutes=10), 35.0)
    assert sorted(resent) == sorted(store.rows) == sorted(starts(queue))


# ---------------------------------------------------------------- end to end with the executor


class Rig:
    """IngestService and Executor on one store and queue; a scripted backend whose jobs finish at once."""

    def __init__(self) -> None:
        self.svc, self.store, self.queue, _ = service(flows(sales=SALES), clock=FixedClock(datetime.now(UTC)))
        self.backend = ScriptedBackend(polls=0)
        self.telemetry = RecordingTelemetry()
        self.executor = Executor(
            self.store, self.queue, self.svc.flows, lambda kind: self.backend, telemetry=self.telemetry
        )

    def deliver(self, received: Received) -> None:
        self.executor.handle(received.message, delivery_count=received.dequeue_count)
        self.queue.complete(received)

    def drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.queue.items:
                return
            got = self.queue.receive(max_messages=1)
            if not got:
                wait = self.queue.next_visible_in()
                assert wait is not None
                self.queue.advance(wait)
                continue
            self.deliver(got[0])
        raise AssertionError("queue did not drain")

    def started(self) -> list[str]:
        return [rid for name, _tp, rid, _a in self.telemetry.events if name == "run.started" and rid]


def test_a_bulk_start_starts_every_run_exactly_once() -> None:
    rig = Rig()
    created = [r.run_id for r in rig.svc.ingest_blob_events(blobs(25))]
    assert [m.kind for m, _ in rig.queue.sent] == ["start_batch"]
    rig.drain()
    assert sorted(rig.started()) == sorted(created)
    assert len(rig.backend.launches) == 25 and len(set(rig.backend.launches)) == 25
    assert all(rig.store.get(rid).status is RunStatus.SUCCEEDED for rid in created)
    fanned = [m for m, _ in rig.queue.sent if m.kind == "start"]
    assert sorted(m.run_id for m in fanned) == sorted(created)
    assert all(m.message_id == m.run_id and m.flow == "sales" for m in fanned)


def test_a_batch_delivered_again_at_any_point_starts_nothing_twice() -> None:
    rig = Rig()
    created = [r.run_id for r in rig.svc.ingest_blob_events(blobs(20))]
    batch = rig.queue.sent[0][0]
    (first,) = rig.queue.receive(max_messages=1)
    rig.deliver(first)  # fanned out: 20 starts queued
    for got in rig.queue.receive(max_messages=7):  # some runs start (and finish) ...
        rig.deliver(got)
    rig.executor.handle(batch, delivery_count=2)  # ... the batch comes back
    rig.executor.handle_body(batch.model_dump_json(), delivery_count=1)  # and a duplicate copy of it
    rig.drain()
    assert sorted(rig.started()) == sorted(created)  # one run.started per run
    assert len(rig.backend.launches) == len(set(rig.backend.launches)) == 20
    assert all(rig.store.get(rid).status is RunStatus.SUCCEEDED for rid in created)
    assert all(rig.store.get(rid).reruns == 0 for rid in created)


class CrashingQueue(MemoryQueue):
    """Fails every send after the first ``ok`` sends (a worker dying part-way through a fan-out)."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        if self.ok <= 0:
            raise ConnectionError("worker lost its connection")
        self.ok -= 1
        super().send(message, delay_seconds)


def test_a_fan_out_that_crashes_half_way_is_repaired_when_the_batch_comes_back() -> None:
    rig = Rig()
    rig.queue = CrashingQueue(ok=1 + 9)  # the batch itself, then 9 of its 30 starts
    rig.svc.queue = rig.executor.queue = rig.queue
    created = [r.run_id for r in rig.svc.ingest_blob_events(blobs(30))]
    (got,) = rig.queue.receive(max_messages=1, visibility_timeout=60)
    with pytest.raises(ConnectionError):
        rig.executor.handle(got.message, delivery_count=got.dequeue_count)  # not completed
    assert len([m for m, _ in rig.queue.sent if m.kind == "start"]) == 9
    rig.queue.ok = 10**6  # the connection is back
    rig.drain()  # the 9 starts, then the batch again after its visibility timeout (delivery 2)
    assert all(rig.store.get(rid).status is RunStatus.SUCCEEDED for rid in created)
    assert sorted(rig.started()) == sorted(created)
    assert len(rig.backend.launches) == len(set(rig.backend.launches)) == 30
    assert rig.queue.items == []
