"""TableInstanceStore against a real Azurite: atomic ETag-guarded saves of a FanOut row with its
instance rows, queries in index order, item pages, and a 10,000-item fan-out within the limits."""

from __future__ import annotations

import pytest

from shared.engine.model import FanOut, InstanceRun, StepState
from shared.errors import ConcurrencyError
from shared.settings import Settings
from shared.store.table_instances import TableInstanceStore


@pytest.fixture
def store(storage_settings: Settings) -> TableInstanceStore:
    return TableInstanceStore.from_settings(storage_settings)


def head(run: str = "run1", step: str = "train", total: int = 5) -> FanOut:
    return FanOut(run_id=run, step=step, epoch=1, total=total)


def row(index: int, state: StepState = StepState.LAUNCHING, step: str = "train") -> InstanceRun:
    return InstanceRun(name=step, kind="azureml", index=index, epoch=1, state=state, attempt=1, key=f"k-{index}")


def test_save_inserts_then_guards_every_row_with_its_etag(store: TableInstanceStore) -> None:
    fan, rows = store.save(head(), [row(0), row(1)])
    assert fan.etag and all(r.etag for r in rows)
    assert store.fanouts("run1")["train"].etag == fan.etag
    got = store.instance("run1", "train", 1, 1)
    assert got is not None and got.key == "k-1" and got.etag == rows[1].etag
    # a stale FanOut row: nothing of the transaction is written
    fan2 = fan.model_copy(update={"next": 2})
    saved, _ = store.save(fan2, [])
    stale = fan.model_copy(update={"next": 3})
    moved = rows[0].model_copy(update={"state": StepState.RUNNING})
    with pytest.raises(ConcurrencyError):
        store.save(stale, [moved])
    assert store.instance("run1", "train", 1, 0).state is StepState.LAUNCHING  # type: ignore[union-attr]
    # inserting a row that exists is a lost race too
    with pytest.raises(ConcurrencyError):
        store.save(saved, [row(1)])
    # a row changed by someone else
    _, (r0,) = store.save_instances("run1", [moved])
    with pytest.raises(ConcurrencyError):
        store.save_instances("run1", [moved])
    assert r0.etag != moved.etag and store.instance("run1", "train", 1, 0).state is StepState.RUNNING  # type: ignore[union-attr]


def test_instances_come_in_index_order_by_state_and_page(store: TableInstanceStore) -> None:
    fan = head(total=25)
    for start in range(0, 25, 10):
        fan, _ = store.save(
            fan,
            [row(i, StepState.SUCCEEDED if i % 3 else StepState.RUNNING) for i in range(start, min(25, start + 10))],
        )
    assert store.instance("run1", "train", 1, 99) is None and store.instance("run1", "other", 1, 0) is None
    all_rows = store.instances("run1", "train", 1, limit=100)
    assert [r.index for r in all_rows] == list(range(25))
    running = store.instances("run1", "train", 1, states=[StepState.RUNNING], limit=100)
    assert [r.index for r in running] == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    page = store.instances("run1", "train", 1, states=[StepState.RUNNING, StepState.SUCCEEDED], start=10, limit=4)
    assert [r.index for r in page] == [10, 11, 12, 13]
    assert store.instances("run1", "train", 2) == [] and store.instances("run1", "train", 1, states=[]) == []
    assert store.fanouts("run2") == {}


def test_a_ten_thousand_item_fan_out_fits(store: TableInstanceStore) -> None:
    items = [{"partition": f"store-{i:05d}", "path": f"gold/store={i:05d}/part-0.parquet"} for i in range(10_000)]
    store.put_items("run1", "train", 1, items)
    assert store.items("run1", "train", 1, 0, 3) == items[:3]
    assert store.items("run1", "train", 1, 9_998, 5) == items[9_998:]
    assert store.items("run1", "train", 1, 4_250, 120) == items[4_250:4_370]  # across pages
    store.put_items("run1", "train", 1, items)  # idempotent: the same epoch, the same items
    assert store.items("run1", "train", 1, 9_999, 1) == [items[-1]]
    fan = head(total=10_000).model_copy(update={"next": 10_000, "counts": {"succeeded": 10_000}})
    _, rows = store.save(fan, [row(i, StepState.SUCCEEDED) for i in range(9_910, 10_000)])
    assert len(rows) == 90 and store.fanouts("run1")["train"].total == 10_000
    assert [r.index for r in store.instances("run1", "train", 1, start=9_995)] == list(range(9_995, 10_000))
