"""The runs table's time index on Azurite: listing and purging read index rows, not the table.

Covers: every create writes its index row (before the run); a status change moves it;
listing is newest first across both classes; a stale or orphan index row is repaired when read;
runs written before the index are indexed once by the next store; purge deletes only finished
runs in the time range, leaves reruns alone, and refuses active statuses.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.engine.model import RunStatus
from shared.errors import ValidationError
from shared.settings import Settings
from shared.store.table import TableRunStore, partition_for
from shared.store.time_index import ACTIVE, DONE, MARKER_PARTITION, MARKER_ROW, index_key
from tests.functional.storage.test_table_store import T0, make_run


@pytest.fixture
def store(storage_settings: Settings) -> TableRunStore:
    return TableRunStore.from_settings(storage_settings)


def index_rows(store: TableRunStore) -> list[dict[str, Any]]:
    return list(store._client.query_entities("PartitionKey ge '~a' and PartitionKey lt '~e'"))


def keys(store: TableRunStore) -> list[tuple[str, str]]:
    return [(r["PartitionKey"], r["RowKey"]) for r in index_rows(store)]


def test_each_run_has_one_index_row_that_follows_its_status(store: TableRunStore) -> None:
    run = make_run("r1", minutes=3)
    assert store.create_if_absent(run)
    rows = index_rows(store)
    assert keys(store) == [index_key("r1", run.created_at, ACTIVE)]
    assert rows[0]["PartitionKey"] == "~a" + str(99_999_999 - 20250101) and rows[0]["status"] == "pending"
    run.status = RunStatus.RUNNING
    run = store.save(run)
    assert [r["status"] for r in index_rows(store)] == ["running"]
    assert keys(store) == [index_key("r1", run.created_at, ACTIVE)]
    run.status = RunStatus.SUCCEEDED
    run = store.save(run)
    assert keys(store) == [index_key("r1", run.created_at, DONE)]
    run.steps[0].outputs = {"x": 1}  # same status: no index write
    upserts = count(store, "upsert_entity")
    store.save(run)
    assert upserts[0] == 0


def count(store: TableRunStore, name: str) -> list[int]:
    calls = [0]
    real = getattr(store._client, name)

    def counted(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return real(*a, **k)

    setattr(store._client, name, counted)
    return calls


def test_a_store_that_did_not_load_the_run_still_moves_its_index_row(storage_settings: Settings) -> None:
    first, second = TableRunStore.from_settings(storage_settings), TableRunStore.from_settings(storage_settings)
    run = make_run("r2")
    first.create_if_absent(run)
    run.status = RunStatus.FAILED
    second.save(run)  # never saw the run: reads its stored status first
    assert keys(first) == [index_key("r2", run.created_at, DONE)]
    assert [r.run_id for r in first.list_runs(statuses=[RunStatus.FAILED])] == ["r2"]
    assert first.list_runs(statuses=[RunStatus.PENDING]) == []


def test_listing_merges_classes_and_partitions_newest_first_and_before_a_time(store: TableRunStore) -> None:
    runs = [
        make_run(f"run{i:02d}", minutes=i, status=RunStatus.SUCCEEDED if i % 3 else RunStatus.RUNNING)
        for i in range(40)
    ]
    assert all(store.create_many(runs))
    runs.append(make_run("next-day", minutes=24 * 60 + 5, status=RunStatus.SUCCEEDED))  # another day's partition
    assert store.create_if_absent(runs[-1])
    assert [r.run_id for r in store.list_runs(limit=5)] == ["next-day", "run39", "run38", "run37", "run36"]
    before = store.list_runs(limit=3, created_before=T0 + timedelta(minutes=10))
    assert [r.run_id for r in before] == ["run09", "run08", "run07"]
    running = store.list_runs(statuses=[RunStatus.RUNNING], limit=100)
    assert [r.run_id for r in running] == [f"run{i:02d}" for i in range(39, -1, -1) if i % 3 == 0]


def test_a_stale_index_row_is_repaired_when_read(store: TableRunStore) -> None:
    run = make_run("stale", status=RunStatus.RUNNING)
    store.create_if_absent(run)
    run.status = RunStatus.SUCCEEDED
    # a crash between the run's save and its index update: simulate by saving behind the index's back
    entity = store.to_entity(run.model_copy(update={"version": run.version + 1}))
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    store._client.update_entity(
        entity, mode=UpdateMode.REPLACE, etag=run.etag, match_condition=MatchConditions.IfNotModified
    )
    assert store.list_runs(statuses=[RunStatus.SUCCEEDED]) == []  # the index still says running
    assert store.list_runs(statuses=[RunStatus.RUNNING]) == []  # read, checked against the run, repaired
    assert [r.run_id for r in store.list_runs(statuses=[RunStatus.SUCCEEDED])] == ["stale"]
    assert keys(store) == [index_key("stale", run.created_at, DONE)]
    # an index row whose run is gone is dropped when read
    store._client.delete_entity(partition_for("stale"), "stale")
    assert store.list_runs() == []
    assert index_rows(store) == []


def test_runs_written_before_the_index_are_indexed_once(storage_settings: Settings) -> None:
    old = TableRunStore.from_settings(storage_settings)
    old.list_runs()  # creates the table (and its marker)
    old._client.delete_entity(MARKER_PARTITION, MARKER_ROW)  # as if the table predates the index
    legacy = [make_run(f"old{i}", minutes=i, status=RunStatus.SUCCEEDED) for i in range(5)]
    for r in legacy:  # the pre-index layout: only the run row
        old._client.create_entity(old.to_entity(r))
    assert index_rows(old) == []
    new = TableRunStore.from_settings(storage_settings)
    assert [r.run_id for r in new.list_runs()] == ["old4", "old3", "old2", "old1", "old0"]
    assert len(index_rows(new)) == 5
    assert new._index.built()
    upserts = count(new, "upsert_entity")
    TableRunStore.from_settings(storage_settings).list_runs()  # built: nothing to do the next time
    assert upserts[0] == 0


def test_purge_deletes_finished_runs_before_the_cutoff_only(store: TableRunStore) -> None:
    runs = [
        make_run("old-ok", minutes=0, status=RunStatus.SUCCEEDED),
        make_run("old-bad", minutes=1, status=RunStatus.FAILED),
    ]
    runs += [
        make_run("old-active", minutes=2, status=RunStatus.RUNNING),
        make_run("new-ok", minutes=60, status=RunStatus.SUCCEEDED),
    ]
    assert all(store.create_many(runs))
    cutoff = T0 + timedelta(minutes=30)
    dry = store.purge(cutoff, [RunStatus.SUCCEEDED, RunStatus.FAILED], dry_run=True)
    assert dry.matched == 2 and dry.deleted == 0 and sorted(dry.run_ids) == ["old-bad", "old-ok"]
    assert len(store.list_runs()) == 4
    only_ok = store.purge(cutoff, [RunStatus.SUCCEEDED])
    assert only_ok.deleted == 1 and only_ok.run_ids == ["old-ok"]
    assert sorted(r.run_id for r in store.list_runs()) == ["new-ok", "old-active", "old-bad"]
    assert {r["run_id"] for r in index_rows(store)} == {"new-ok", "old-active", "old-bad"}
    with pytest.raises(ValidationError) as err:
        store.purge(cutoff, [RunStatus.RUNNING])
    assert err.value.field == "status"


def test_a_duplicate_creates_index_row_is_not_the_runs(store: TableRunStore) -> None:
    first = make_run("dup", minutes=1, status=RunStatus.SUCCEEDED)
    assert store.create_if_absent(first)
    again = make_run("dup", minutes=9, status=RunStatus.SUCCEEDED)  # a redelivered trigger, later
    assert store.create_if_absent(again) is False
    assert len(index_rows(store)) == 2  # the second index row was written before the create was refused
    assert [(r.run_id, r.created_at) for r in store.list_runs()] == [("dup", first.created_at)]
    assert keys(store) == [index_key("dup", first.created_at, DONE)]  # the stray row is gone
    assert all(
        store.create_many(
            [make_run(f"b{i}", minutes=i) for i in range(3)] + [make_run("dup", minutes=30, status=RunStatus.SUCCEEDED)]
        )[:3]
    )
    report = store.purge(T0 + timedelta(days=1), [RunStatus.SUCCEEDED])
    assert report.run_ids == ["dup"] and report.skipped == 1  # the stray row of the bulk duplicate: not a run
    assert sorted(r["run_id"] for r in index_rows(store)) == ["b0", "b1", "b2"]


def test_purge_leaves_a_run_that_was_rerun_since_the_index_said_finished(storage_settings: Settings) -> None:
    store, other = TableRunStore.from_settings(storage_settings), TableRunStore.from_settings(storage_settings)
    run = make_run("rerun-me", status=RunStatus.FAILED)
    store.create_if_absent(run)
    # another store reruns it, but its index move is lost (a crash): the index still says failed
    run.status = RunStatus.RUNNING
    entity = other.to_entity(run.model_copy(update={"version": run.version + 1}))
    from azure.data.tables import UpdateMode

    other._client.update_entity(entity, mode=UpdateMode.REPLACE)
    report = store.purge(T0 + timedelta(days=1), [RunStatus.FAILED])
    assert report.matched == 1 and report.deleted == 0 and report.skipped == 1
    assert store.get("rerun-me").status is RunStatus.RUNNING
