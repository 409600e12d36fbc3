"""A drop of N Blob Created events ingested into runs, then part of it delivered again.

IngestService on Azurite with the real adapters (TableRunStore + StorageQueueWorkQueue):
N Event Grid schema events for distinct blobs, in deliveries of ``delivery`` events (what
one Event Grid batch POST carries), then the first ``again`` events delivered a second time.
Checked: exactly N runs in the table and N start messages on the queue (no duplicates).

Figures: events/s over the goal (2,000 events/s: the ratio here is against the goal), and
the time per ingested event over one raw single-entity Table insert (same entity size)
measured in the same run, before and after the drop. The time inside the store's
``create_many`` and the queue's ``send`` is measured too, to show where the time goes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from bench.common import NullQueue, report, unique
from shared.engine.model import Message, Run, RunStatus
from shared.errors import RetryableError
from shared.flows.model import FlowsFile
from shared.ingest.service import IngestResult
from shared.queue.base import Received, WorkQueue
from shared.settings import AZURITE_ACCOUNT, Settings
from shared.store.base import RunStore

GOAL_EVENTS_PER_S = 2000.0
MAX_DELIVERY_ATTEMPTS = 3
CONTAINER = "landing"


class TimedStore(RunStore):
    """Delegates to a RunStore, adding up the time spent in it."""

    def __init__(self, inner: RunStore) -> None:
        self.inner = inner
        self.seconds = 0.0

    def _timed(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def create_if_absent(self, run: Run) -> bool:
        return bool(self._timed(self.inner.create_if_absent, run))

    def create_many(self, runs: list[Run]) -> list[bool]:
        return list(self._timed(self.inner.create_many, runs))

    def get(self, run_id: str) -> Run:
        return self.inner.get(run_id)

    def save(self, run: Run) -> Run:
        return self.inner.save(run)

    def list_runs(
        self,
        flow: str | None = None,
        statuses: Iterable[RunStatus] | None = None,
        limit: int = 100,
        *,
        created_before: datetime | None = None,
    ) -> list[Run]:
        return self.inner.list_runs(flow, statuses, limit, created_before=created_before)


class TimedQueue(WorkQueue):
    """Delegates to a WorkQueue, adding up the time spent sending."""

    def __init__(self, inner: WorkQueue) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.sent = 0

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        start = time.perf_counter()
        try:
            self.inner.send(message, delay_seconds)
        finally:
            self.seconds += time.perf_counter() - start
            self.sent += 1

    def send_many(self, messages: list[Message]) -> None:
        start = time.perf_counter()
        try:
            self.inner.send_many(messages)
        finally:
            self.seconds += time.perf_counter() - start
            self.sent += len(messages)

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        return self.inner.receive(max_messages, visibility_timeout)

    def complete(self, received: Received) -> None:
        self.inner.complete(received)

    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        self.inner.dead_letter(received, reason, description)


def ingest_flows() -> FlowsFile:
    step = {
        "name": "score",
        "kind": "batch",
        "params": {"command": "python score.py {input} {output_dir}", "inputs": "${trigger.blob.url}"},
    }
    trigger = {"kind": "blob", "container": CONTAINER, "prefix": "sales/", "suffix": ".csv"}
    return FlowsFile.model_validate({"flows": {"sales": {"triggers": [trigger], "steps": [step]}}})


def blob_events(settings: Settings, n: int) -> list[dict[str, Any]]:
    """N ``Microsoft.Storage.BlobCreated`` events (Event Grid schema) for distinct blobs."""
    topic = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/conveyor-local"
        f"/providers/Microsoft.Storage/storageAccounts/{AZURITE_ACCOUNT}"
    )
    base = f"http://{settings.azurite_host}:{settings.azurite_blob_port}/{AZURITE_ACCOUNT}/{CONTAINER}"
    events = []
    for i in range(n):
        name = f"sales/2026-01-15/store-{i // 100:03d}/part-{i:05d}.csv"
        events.append(
            {
                "topic": topic,
                "subject": f"/blobServices/default/containers/{CONTAINER}/blobs/{name}",
                "eventType": "Microsoft.Storage.BlobCreated",
                "eventTime": f"2026-01-15T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 10_000_000:07d}Z",
                "id": str(uuid.uuid4()),
                "data": {
                    "api": "PutBlockList",
                    "clientRequestId": str(uuid.uuid4()),
                    "requestId": str(uuid.uuid4()),
                    "eTag": f'"0x8DC{i:013X}"',
                    "contentType": "text/csv",
                    "contentLength": 524288 + i,
                    "blobType": "BlockBlob",
                    "url": f"{base}/{name}",
                    "sequencer": f"{i:032d}",
                    "storageDiagnostics": {"batchId": str(uuid.uuid4())},
                },
                "dataVersion": "",
                "metadataVersion": "1",
            }
        )
    return events


def deliveries(events: Sequence[dict[str, Any]], size: int) -> list[Sequence[dict[str, Any]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


def main(
    settings: Settings,
    n: int = 10_000,
    again: int = 2_000,
    delivery: int = 500,
    inserts: int = 100,
    budget_seconds: float = 90.0,
) -> bool:
    """Ingest ``n`` events (stopping early, and saying so, if the drop overruns ``budget_seconds``)."""
    from azure.data.tables import TableClient

    from shared.ingest.service import IngestService
    from shared.queue.storage_queue import StorageQueueWorkQueue
    from shared.store.table import TableRunStore, partition_for

    s = settings.with_overrides(queue_name=unique("bench-ingest-"), runs_table=unique("benchingest"))
    real_store = TableRunStore.from_settings(s)
    real_queue = StorageQueueWorkQueue.from_settings(s)
    store, queue = TimedStore(real_store), TimedQueue(real_queue)
    service = IngestService(store, queue, ingest_flows(), settings=s, telemetry=None)
    events = blob_events(s, n)

    # Raw single inserts: same entity size as an ingested run, into their own table.
    raw = TableClient.from_connection_string(s.connection_string, table_name=unique("benchrawins"))
    raw.create_table()
    probe_service = IngestService(_NullStore(), NullQueue(), ingest_flows(), settings=s)
    probe_service.ingest_blob_events(events[:1])
    template = TableRunStore.to_entity(_NullStore.last)

    def raw_inserts(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            rid = uuid.uuid4().hex
            raw.create_entity({**template, "PartitionKey": partition_for(rid), "RowKey": rid})
        return (time.perf_counter() - start) / k

    real_store.list_runs(limit=1)  # creates the table and the queue outside the timed part
    real_queue.depth()
    raw_inserts(5)  # warm-up
    t_raw_before = raw_inserts(inserts // 2)

    retried: list[str] = []

    def deliver(batch: Sequence[dict[str, Any]]) -> list[IngestResult]:
        """One Event Grid POST; on a retryable error Event Grid delivers the same batch again
        (what the HTTP handler's 5xx answer leads to), so retries are part of the figure."""
        for attempt in range(1, MAX_DELIVERY_ATTEMPTS + 1):
            try:
                return service.ingest_blob_events(batch)
            except RetryableError as exc:
                retried.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                if attempt == MAX_DELIVERY_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    start = time.perf_counter()
    created = done = 0
    for batch in deliveries(events, delivery):
        created += sum(1 for r in deliver(batch) if r.created)
        done += len(batch)
        if time.perf_counter() - start > budget_seconds and done < n:
            print(f"  ingest: stopped after {done} of {n} events: over the {budget_seconds:g}s time budget")
            break
    t_ingest = time.perf_counter() - start
    again = min(again, done)
    t_store, t_send = store.seconds, queue.seconds

    t_raw_after = raw_inserts(inserts - inserts // 2)
    t_raw = (t_raw_before + t_raw_after) / 2

    start = time.perf_counter()
    repeated = [r for batch in deliveries(events[:again], delivery) for r in deliver(batch)]
    t_again = time.perf_counter() - start

    runs_table = TableClient.from_connection_string(s.connection_string, table_name=s.runs_table)
    # run rows only: the time index's rows live in the "~..." partitions (shared.store.time_index)
    rows = sum(1 for _ in runs_table.query_entities("PartitionKey lt '~'", select=["RowKey"], results_per_page=1000))
    depth = real_queue.depth()
    asked = started_run_ids(real_queue)
    dup_created = sum(1 for r in repeated if r.created)
    no_dups = (
        created == done
        and rows == done
        and len(asked) == len(set(asked)) == done
        and dup_created == 0
        and len(repeated) == again
    )

    rate = done / t_ingest
    per_event = t_ingest / done
    ok = rate >= GOAL_EVENTS_PER_S and no_dups and done == n
    print(
        f"  ingest: {done} events in {t_ingest:.2f}s (create_many {t_store:.2f}s, {queue.sent} sends {t_send:.2f}s, "
        f"other {t_ingest - t_store - t_send:.2f}s); {again} redelivered in {t_again:.2f}s "
        f"({again / t_again:.0f} events/s)"
    )
    if retried:
        print(f"  ingest: {len(retried)} deliveries failed with a retryable error and were delivered again:")
        for line in dict.fromkeys(retried):
            print(f"    {line}")
    print(
        f"  ingest: runs in table {rows}, start messages on queue {depth} asking to start {len(asked)} runs "
        f"({len(set(asked))} distinct), created {created}, "
        f"re-created on redelivery {dup_created} -> {'no duplicates' if no_dups else 'DUPLICATES OR LOSSES'}"
    )
    print(
        f"  ingest: per event {per_event * 1e3:.3f} ms vs raw single table insert {t_raw * 1e3:.3f} ms "
        f"= {per_event / t_raw:.2f}x"
    )
    report(
        "blob ingest",
        f"{rate:,.0f} events/s = {rate / GOAL_EVENTS_PER_S:.2f}x goal; dups {'0' if no_dups else 'FOUND'}",
        f">={GOAL_EVENTS_PER_S:,.0f}/s, 0 dups",
        ok,
    )
    return ok


def started_run_ids(queue: WorkQueue) -> list[str]:
    """Every run id the queue's messages ask to start: one per ``start``, each id of a
    ``start_batch`` (which the executor fans out into one start per run). Receives them all
    (they stay hidden for the visibility timeout: nothing consumes this queue)."""
    ids: list[str] = []
    while got := queue.receive(max_messages=32, visibility_timeout=600):
        for r in got:
            m = r.message
            if m.kind == "start_batch":
                ids.extend(m.run_ids or [])
            elif m.kind == "start":
                ids.append(m.run_id)
    return ids


class _NullStore(RunStore):
    """Keeps the last run it was asked to create (to size the raw-insert entity)."""

    last: Run

    def create_if_absent(self, run: Run) -> bool:
        _NullStore.last = run
        return True

    def get(self, run_id: str) -> Run:
        raise NotImplementedError

    def save(self, run: Run) -> Run:
        raise NotImplementedError

    def list_runs(
        self,
        flow: str | None = None,
        statuses: Iterable[RunStatus] | None = None,
        limit: int = 100,
        *,
        created_before: datetime | None = None,
    ) -> list[Run]:
        return []


if __name__ == "__main__":
    from bench.common import azurite_settings

    with azurite_settings(in_memory=True) as settings:
        main(settings)
