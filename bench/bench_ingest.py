"""A drop of N Blob Created events ingested into runs, against the same writes done the plain way.

IngestService on Azurite with the real adapters (TableRunStore + StorageQueueWorkQueue): N
Event Grid schema events for distinct blobs, in deliveries of ``delivery`` events (what one
Event Grid batch POST carries), then the first ``again`` events delivered a second time.
Checked: exactly N runs in the table, every run asked to start, none created twice.

The floor, measured in the same run on the same Azurite: the same N run entities (the very
entities ingest writes, so the same size) written with the public ``azure-data-tables``
``TableClient.submit_transaction``, 100 creates per transaction in one partition, the
transactions of each delivery on the same number of threads as ``create_many``, plus the same
queue sends (the same bodies, one after the other as ingest sends them). The figure is the
floor's time over ingest's (a throughput ratio; goal >= 0.8x), the median of interleaved
rounds. What ingest adds on top: parsing and checking each event, planning its run, the
runs' time-index rows (shared.store.time_index), and the existence checks of a create-once.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
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

GOAL = 0.8  # ingest's throughput at least this share of the floor's
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


def floor_writes(settings: Settings, entities: list[list[dict[str, Any]]], bodies: list[list[str]]) -> float:
    """The plain way, timed: per delivery, its entities in transactions of 100 per partition with
    the public ``submit_transaction`` on min(8, transactions) threads, then its queue sends."""
    from azure.data.tables import TableClient
    from azure.storage.queue import QueueClient

    from shared.transport import transport_kwargs

    table = TableClient.from_connection_string(
        settings.connection_string, table_name=unique("benchfloor"), **transport_kwargs()
    )
    table.create_table()
    queue = QueueClient.from_connection_string(settings.connection_string, unique("bench-floor-"), **transport_kwargs())
    queue.create_queue()
    start = time.perf_counter()
    for batch, sends in zip(entities, bodies, strict=True):
        by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in batch:
            by_partition[e["PartitionKey"]].append(e)
        chunks = [rows[i : i + 100] for rows in by_partition.values() for i in range(0, len(rows), 100)]
        with ThreadPoolExecutor(max_workers=min(8, len(chunks))) as pool:
            list(pool.map(lambda c: table.submit_transaction([("create", e) for e in c]), chunks))
        for body in sends:
            queue.send_message(body, time_to_live=-1)
    return time.perf_counter() - start


def main(
    settings: Settings,
    n: int = 10_000,
    again: int = 2_000,
    delivery: int = 500,
    rounds: int = 2,
    budget_seconds: float = 120.0,
) -> bool:
    """Ingest ``n`` events ``rounds`` times (each into a fresh table and queue), each round next to a
    floor round; then redeliver the first ``again`` events of the last round."""
    from azure.data.tables import TableClient

    from shared.ingest.service import IngestService
    from shared.queue.storage_queue import StorageQueueWorkQueue
    from shared.store.table import TableRunStore

    events = blob_events(settings, n)
    # What ingest writes and sends, captured once (untimed): the floor writes exactly that.
    capture_store, capture_queue = _NullStore(), CaptureQueue()
    probe = IngestService(capture_store, capture_queue, ingest_flows(), settings=settings)
    entities, bodies = [], []
    for batch in deliveries(events, delivery):
        capture_store.runs.clear()
        capture_queue.bodies.clear()
        probe.ingest_blob_events(batch)
        entities.append([TableRunStore.to_entity(r) for r in capture_store.runs])
        bodies.append(list(capture_queue.bodies))

    retried: list[str] = []
    times: dict[str, list[float]] = {"ingest": [], "floor": []}
    last: dict[str, Any] = {}
    for _ in range(rounds):
        times["floor"].append(floor_writes(settings, entities, bodies))
        s = settings.with_overrides(queue_name=unique("bench-ingest-"), runs_table=unique("benchingest"))
        real_store, real_queue = TableRunStore.from_settings(s), StorageQueueWorkQueue.from_settings(s)
        store, queue = TimedStore(real_store), TimedQueue(real_queue)
        service = IngestService(store, queue, ingest_flows(), settings=s, telemetry=None)
        real_store.list_runs(limit=1)  # creates the table and the queue outside the timed part
        real_queue.depth()

        def deliver(batch: Sequence[dict[str, Any]], service: IngestService = service) -> list[IngestResult]:
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
        times["ingest"].append(time.perf_counter() - start)
        last = {"s": s, "store": store, "queue": queue, "real_queue": real_queue, "deliver": deliver}
        last.update(created=created, done=done)

    s, store, queue, real_queue, deliver = last["s"], last["store"], last["queue"], last["real_queue"], last["deliver"]
    created, done = last["created"], last["done"]
    t_ingest = times["ingest"][-1]
    t_store, t_send = store.seconds, queue.seconds
    again = min(again, done)
    start = time.perf_counter()
    repeated = [r for batch in deliveries(events[:again], delivery) for r in deliver(batch)]
    t_again = time.perf_counter() - start

    runs_table = TableClient.from_connection_string(s.connection_string, table_name=s.runs_table)
    # run rows only: the time index's rows live in the "~..." partitions (shared.store.time_index)
    rows = sum(1 for _ in runs_table.query_entities("PartitionKey lt '~'", select=["RowKey"], results_per_page=1000))
    depth = real_queue.depth()
    asked = started_run_ids(real_queue)
    dup_created = sum(1 for r in repeated if r.created)
    resent = len(asked) - len(set(asked))
    no_dups = created == done and rows == done and len(set(asked)) == done and dup_created == 0
    no_dups = no_dups and len(repeated) == again

    pairs = list(zip(times["floor"], times["ingest"], strict=True))
    ratio = statistics.median(f / i for f, i in pairs)
    ok = ratio >= GOAL and no_dups and done == n
    rounds_text = ", ".join(f"{f:.2f}/{i:.2f}" for f, i in pairs)
    print(f"  ingest: rounds floor/ingest seconds: {rounds_text}")
    print(
        f"  ingest: last round {done} events in {t_ingest:.2f}s = {done / t_ingest:,.0f} events/s (create_many "
        f"{t_store:.2f}s, {queue.sent} sends {t_send:.2f}s, other {t_ingest - t_store - t_send:.2f}s); "
        f"{again} redelivered in {t_again:.2f}s ({again / t_again:.0f} events/s)"
    )
    if retried:
        print(f"  ingest: {len(retried)} deliveries failed with a retryable error and were delivered again:")
        for line in dict.fromkeys(retried):
            print(f"    {line}")
    print(
        f"  ingest: runs in table {rows}, start messages on queue {depth} asking to start {len(set(asked))} runs, "
        f"created {created}, re-created on redelivery {dup_created}, starts re-sent for runs still pending "
        f"{resent} -> {'no duplicates' if no_dups else 'DUPLICATES OR LOSSES'}"
    )
    report(
        "blob ingest",
        f"{n} events: floor {statistics.median(times['floor']):.2f}s vs ingest "
        f"{statistics.median(times['ingest']):.2f}s = {ratio:.2f}x of the floor; dups {'0' if no_dups else 'FOUND'}",
        f">={GOAL}x, 0 dups",
        ok,
    )
    return ok


class CaptureQueue(NullQueue):
    """Keeps the bodies it is sent, as the Storage Queue adapter would send them."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        self.bodies.append(message.with_id().model_dump_json())


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
    """Keeps the runs it was asked to create (what the floor then writes)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def create_if_absent(self, run: Run) -> bool:
        self.runs.append(run)
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
