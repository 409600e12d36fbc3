"""TableRunStore against a real Azurite: create-once, ETag concurrency, listing, big docs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.engine.model import Run, RunStatus, StepRun, TriggerContext
from shared.errors import ConcurrencyError, NotFoundError, ValidationError
from shared.settings import Settings
from shared.store.table import TableRunStore, partition_for, split_doc

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_run(run_id: str, flow: str = "demo", minutes: int = 0, status: RunStatus = RunStatus.PENDING) -> Run:
    at = T0 + timedelta(minutes=minutes)
    return Run(
        run_id=run_id,
        flow=flow,
        status=status,
        trigger=TriggerContext(kind="manual", params={"n": minutes}),
        steps=[StepRun(name="prep", kind="batch"), StepRun(name="train", kind="azureml")],
        created_at=at,
        updated_at=at,
    )


@pytest.fixture
def store(storage_settings: Settings) -> TableRunStore:
    return TableRunStore.from_settings(storage_settings)


def test_create_get_round_trip(store: TableRunStore) -> None:
    run = make_run("r1")
    assert store.create_if_absent(run) is True
    assert run.etag
    loaded = store.get("r1")
    assert loaded.etag == run.etag
    assert loaded.model_dump() == run.model_dump()


def test_create_if_absent_is_false_the_second_time_and_keeps_the_first(store: TableRunStore) -> None:
    assert store.create_if_absent(make_run("r1", flow="first")) is True
    again = make_run("r1", flow="second")
    assert store.create_if_absent(again) is False
    assert again.etag is None
    assert store.get("r1").flow == "first"


def test_create_once_under_concurrency(store: TableRunStore) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(10)

    def create() -> None:
        barrier.wait()
        results.append(store.create_if_absent(make_run("same-id")))

    threads = [threading.Thread(target=create) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 9 + [True]


def test_get_missing_raises_not_found(store: TableRunStore) -> None:
    with pytest.raises(NotFoundError):
        store.get("nope")


def test_save_bumps_version_and_etag_and_detects_conflicts(store: TableRunStore) -> None:
    store.create_if_absent(make_run("r1"))
    a = store.get("r1")
    b = store.get("r1")
    a.status = RunStatus.RUNNING
    saved = store.save(a)
    assert saved.version == 1
    assert saved.etag and saved.etag != a.etag
    assert store.get("r1").status is RunStatus.RUNNING
    b.status = RunStatus.CANCELLED
    with pytest.raises(ConcurrencyError):
        store.save(b)
    assert store.get("r1").status is RunStatus.RUNNING
    # the saved copy carries the new ETag and can be saved again
    saved.status = RunStatus.SUCCEEDED
    assert store.save(saved).version == 2


def test_save_of_unknown_run_is_not_found(store: TableRunStore) -> None:
    run = make_run("ghost")
    run.etag = "W/\"datetime'2025-01-01T00%3A00%3A00Z'\""
    with pytest.raises(NotFoundError):
        store.save(run)


def test_list_runs_newest_first_with_filters(store: TableRunStore) -> None:
    store.create_if_absent(make_run("a", flow="f1", minutes=1))
    store.create_if_absent(make_run("b", flow="f1", minutes=3, status=RunStatus.RUNNING))
    store.create_if_absent(make_run("c", flow="f2", minutes=2, status=RunStatus.FAILED))
    store.create_if_absent(make_run("d", flow="f1", minutes=4, status=RunStatus.SUCCEEDED))
    assert [r.run_id for r in store.list_runs()] == ["d", "b", "c", "a"]
    assert [r.run_id for r in store.list_runs(flow="f1")] == ["d", "b", "a"]
    assert [r.run_id for r in store.list_runs(statuses=[RunStatus.RUNNING, RunStatus.FAILED])] == ["b", "c"]
    assert [r.run_id for r in store.list_runs(flow="f1", statuses=[RunStatus.PENDING])] == ["a"]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["d", "b"]
    assert store.list_runs(flow="nope") == []
    assert store.list_runs(flow="x' or flow ne 'x") == []  # values are quoted, not spliced
    assert store.list_runs(statuses=[]) == []
    listed = store.list_runs(flow="f2")[0]
    assert listed.etag == store.get("c").etag


def test_list_runs_limit_with_many_equal_timestamps(store: TableRunStore) -> None:
    runs = [make_run(f"same{i:03d}") for i in range(150)] + [make_run("newest", minutes=5)]
    assert all(store.create_many(runs))
    listed = store.list_runs(limit=10)
    assert len(listed) == 10
    assert listed[0].run_id == "newest"


def test_large_document_is_split_and_round_trips(store: TableRunStore) -> None:
    run = make_run("big")
    # ~200k chars including non-BMP characters (2 UTF-16 units each)
    run.steps[0].outputs = {"blob": "x" * 100_000, "emoji": "\U0001f600" * 40_000, "text": "é" * 30_000}
    entity = TableRunStore.to_entity(run)
    assert "doc1" in entity and "doc2" in entity
    assert all(len(v.encode("utf-16-le")) <= 64 * 1024 for k, v in entity.items() if k.startswith("doc"))
    assert store.create_if_absent(run)
    loaded = store.get("big")
    assert loaded.steps[0].outputs == run.steps[0].outputs
    # shrinking on save drops the extra chunks (REPLACE)
    loaded.steps[0].outputs = {"small": 1}
    store.save(loaded)
    again = store.get("big")
    assert again.steps[0].outputs == {"small": 1}
    raw = store._client.get_entity(partition_for("big"), "big")
    assert "doc1" not in raw


def test_split_doc_joins_back() -> None:
    doc = ("a" * 20_000) + ("\U0001f600" * 20_000) + ("b" * 50_000)
    chunks = split_doc(doc)
    assert "".join(chunks) == doc
    assert all(len(c.encode("utf-16-le")) // 2 <= 32_000 for c in chunks)


def test_oversized_document_is_refused(store: TableRunStore) -> None:
    run = make_run("huge")
    run.steps[0].outputs = {"blob": "x" * 600_000}
    with pytest.raises(ValidationError) as info:
        store.create_if_absent(run)
    assert info.value.field == "run"


def test_run_id_with_forbidden_characters_is_refused(store: TableRunStore) -> None:
    with pytest.raises(ValidationError) as info:
        store.create_if_absent(make_run("a/b"))
    assert info.value.field == "run_id"


def test_create_many_reports_which_were_created(store: TableRunStore) -> None:
    assert store.create_if_absent(make_run("existing-1", flow="old"))
    assert store.create_if_absent(make_run("existing-2", flow="old"))
    runs = [make_run(f"new-{i}", minutes=i) for i in range(250)]
    runs.insert(17, make_run("existing-1", flow="new"))
    runs.insert(200, make_run("existing-2", flow="new"))
    runs.append(make_run("new-3", flow="dup"))  # duplicate inside the input: only one wins
    results = store.create_many(runs)
    expected = [not (r.run_id.startswith("existing") or r.flow == "dup") for r in runs]
    assert results == expected
    assert store.get("existing-1").flow == "old"
    assert store.get("new-3").flow == "demo"
    # ETags from the bulk path are the stored ones: a save with them succeeds
    created = runs[0]
    assert created.etag == store.get(created.run_id).etag
    assert store.save(created).version == 1
    assert store.create_many([]) == []


def test_bad_table_name_is_a_validation_error(storage_settings: Settings) -> None:
    with pytest.raises(ValidationError) as info:
        TableRunStore(storage_settings.connection_string, "bad-name")
    assert info.value.field == "CONVEYOR_RUNS_TABLE"
