"""Listing runs and the sweeper with 100,000 runs in the table, as a ratio to the raw reads they need.

One runs table of ``n`` runs (created over 100 days, nearly all finished, 30 active: 10
pending, 20 running) on Azurite. Alternately, in the same process:

* ``runs``: ``list_runs(limit=50)``, ``list_runs(statuses=[failed], limit=50)`` and
  ``list_runs(flow=..., limit=50)`` (what ``conveyor runs`` and ``GET /api/runs`` do), against
  its floor: three raw SDK queries of 50 rows on the same table plus the 150 point reads of
  the documents they return (8 in parallel, as the store reads them);
* the sweeper's reads: ``sweep_pending`` plus the running and queued listings of
  ``Executor.resume_stalled``, against three raw queries and the 30 point reads of the
  active runs' documents.

Goal: <= 2x each (the store needs one query per class where the floor has one). Azurite
evaluates *every* query against the whole table (its key ranges are not indexed), so on
this emulator both sides grow with the table; on Azure Table Storage key-range queries do
not. For scale, the same listings on a table of ``floor_n`` runs and the listing as it was
before the index (a scan of every run's keys, then the documents) are printed too.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from bench.common import NullQueue, interleaved, report, unique
from shared.engine.model import Run, RunStatus, StepRun, TriggerContext
from shared.ingest.sweeper import sweep_pending
from shared.settings import Settings
from shared.store.table import TableRunStore, partition_for

GOAL = 2.0
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FLOWS = ("retrain", "nightly", "score", "etl")


def _runs(n: int, prefix: str) -> list[Run]:
    out = []
    span = timedelta(days=100).total_seconds()
    for i in range(n):
        at = NOW - timedelta(seconds=span * (n - i) / n)
        status = RunStatus.FAILED if i % 200 == 7 else RunStatus.SUCCEEDED
        out.append(_run(f"{prefix}{i:07d}", at, status, FLOWS[i % len(FLOWS)]))
    for j in range(30):  # the same active runs in both tables
        status = RunStatus.PENDING if j < 10 else RunStatus.RUNNING
        out.append(_run(f"active{j:03d}", NOW - timedelta(hours=2, minutes=j), status, "retrain"))
    return out


def _run(run_id: str, at: datetime, status: RunStatus, flow: str) -> Run:
    return Run(
        run_id=run_id,
        flow=flow,
        status=status,
        trigger=TriggerContext(kind="blob", blob={"url": f"https://acct/landing/{run_id}.csv"}, source=run_id),
        steps=[StepRun(name="score", kind="batch"), StepRun(name="train", kind="azureml")],
        created_at=at,
        updated_at=at,
        started_at=at,
        ended_at=at + timedelta(minutes=3) if status.terminal else None,
    )


def _fill(store: TableRunStore, runs: list[Run]) -> float:
    start = time.perf_counter()
    for i in range(0, len(runs), 5000):
        created = store.create_many(runs[i : i + 5000])
        assert all(created), "fresh table: every run is new"
    return time.perf_counter() - start


def _listing(store: TableRunStore) -> float:
    start = time.perf_counter()
    assert len(store.list_runs(limit=50)) == 50
    assert store.list_runs(statuses=[RunStatus.FAILED], limit=50)
    assert len(store.list_runs(flow="nightly", limit=50)) == 50
    return time.perf_counter() - start


def _sweeper(store: TableRunStore) -> float:
    start = time.perf_counter()
    resent = sweep_pending(store, NullQueue(), NOW, older_than_seconds=300)
    assert len(resent) == 10, len(resent)
    running = store.list_runs(None, [RunStatus.RUNNING], limit=100)
    queued = store.list_runs(None, [RunStatus.QUEUED], limit=100)
    assert len(running) == 20 and queued == []
    return time.perf_counter() - start


def _point_reads(store: TableRunStore, run_ids: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda rid: store._client.get_entity(partition_for(rid), rid), run_ids))


def _listing_floor(store: TableRunStore, ids: list[str]) -> float:
    """Three queries of 50 rows (any filter: each is a full evaluation on Azurite) + 150 document reads."""
    start = time.perf_counter()
    for flt in ("PartitionKey ge '~d' and PartitionKey lt '~e'", "status eq 'failed'", "flow eq 'nightly'"):
        page = next(iter(store._client.query_entities(flt, select=["RowKey"], results_per_page=50).by_page()))
        assert list(page)
    _point_reads(store, ids[:150])
    return time.perf_counter() - start


def _sweeper_floor(store: TableRunStore, active: list[str]) -> float:
    start = time.perf_counter()
    for status in ("pending", "running", "queued"):
        list(store._client.query_entities(f"status eq '{status}'", select=["RowKey"], results_per_page=100))
    _point_reads(store, active)
    return time.perf_counter() - start


def _before_the_index(store: TableRunStore) -> float:
    """The listing as it was: every run row's keys and created_at, then the newest 50 documents."""
    start = time.perf_counter()
    keys = [
        (str(e.get("created_at")), str(e["RowKey"]))
        for e in store._client.query_entities(
            "PartitionKey lt '~'", select=["PartitionKey", "RowKey", "created_at"], results_per_page=1000
        )
    ]
    keys.sort(reverse=True)
    cutoff = keys[49][0]
    rows = list(store._client.query_entities("PartitionKey lt '~' and created_at ge @c", parameters={"c": cutoff}))
    assert len(rows) >= 50
    return time.perf_counter() - start


def main(settings: Settings, *, n: int = 100_000, floor_n: int = 1_000, rounds: int = 9) -> bool:
    big = TableRunStore.from_settings(settings.with_overrides(runs_table=unique("benchbig")))
    small = TableRunStore.from_settings(settings.with_overrides(runs_table=unique("benchsmall")))
    runs = _runs(n, "b")
    filled = _fill(big, runs)
    _fill(small, _runs(floor_n, "s"))
    print(f"  filled {n:,} runs (+ index rows) in {filled:.0f}s ({n / filled:,.0f} runs/s)", flush=True)
    ids = [r.run_id for r in sorted(runs, key=lambda r: r.created_at, reverse=True)]
    active = [r.run_id for r in runs if not r.status.terminal]
    for store in (big, small):  # warm both (connections, table existence)
        _listing(store)
        _sweeper(store)
    list_t, list_floor = interleaved(lambda: _listing(big), lambda: _listing_floor(big, ids), rounds)
    sweep_t, sweep_floor = interleaved(lambda: _sweeper(big), lambda: _sweeper_floor(big, active), rounds)
    list_small, sweep_small = interleaved(lambda: _listing(small), lambda: _sweeper(small), rounds)
    before = min(_before_the_index(big) for _ in range(2))
    list_ratio, sweep_ratio = list_t / list_floor, sweep_t / sweep_floor
    print(
        f"  {n:,} runs: runs {list_t * 1000:.0f} ms (floor {list_floor * 1000:.0f} ms), sweeper "
        f"{sweep_t * 1000:.0f} ms (floor {sweep_floor * 1000:.0f} ms); before the index one listing took "
        f"{before * 1000:.0f} ms; on {floor_n:,} runs: runs {list_small * 1000:.0f} ms, sweeper "
        f"{sweep_small * 1000:.0f} ms",
        flush=True,
    )
    met = list_ratio <= GOAL and sweep_ratio <= GOAL
    report(
        "runs index",
        f"{n:,} runs: runs {list_ratio:.2f}x, sweeper {sweep_ratio:.2f}x of the raw reads",
        f"<= {GOAL}x each",
        met,
    )
    return met
