"""TableRunStore.create_many on Azurite: a redelivered drop, a partial overlap, a connection reset.

The bulk path must say exactly which runs this call created, without falling back to one
create per entity when a transaction is refused because some ids already exist, and survive
a keep-alive connection the server closed under a ``$batch`` POST.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError

from shared.engine.model import Run
from shared.settings import Settings
from shared.store.table import TableRunStore, partition_for
from shared.telemetry.trace import new_traceparent
from tests.functional.storage.test_table_store import make_run


@pytest.fixture
def store(storage_settings: Settings) -> TableRunStore:
    return TableRunStore.from_settings(storage_settings)


def runs(n: int, prefix: str = "run") -> list[Run]:
    out = []
    for i in range(n):
        r = make_run(f"{prefix}-{i:04d}", minutes=i)
        r.traceparent = new_traceparent()
        out.append(r)
    return out


def count_calls(store: TableRunStore, name: str) -> list[int]:
    """Counts calls of the store's table client method ``name`` (still calling it)."""
    calls = [0]
    real: Callable[..., Any] = getattr(store._client, name)

    def counted(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        return real(*a, **k)

    setattr(store._client, name, counted)
    return calls


def test_a_redelivered_drop_is_refused_in_bulk_not_one_by_one(store: TableRunStore) -> None:
    first = runs(300)
    assert store.create_many(first) == [True] * 300
    singles = count_calls(store, "create_entity")
    queries = count_calls(store, "query_entities")
    again = runs(300)  # same ids, other traceparents: another delivery of the same drop
    assert store.create_many(again) == [False] * 300
    assert singles[0] == 0
    partitions = len({partition_for(r.run_id) for r in again})
    assert queries[0] <= partitions * 3  # at most 22 ids per partition here: 2 queries of 14 each
    assert all(r.etag is None for r in again)
    assert store.get("run-0007").traceparent == first[7].traceparent


def test_a_partial_overlap_creates_exactly_the_new_ones(store: TableRunStore) -> None:
    old = runs(200)
    assert store.create_many(old[::3]) == [True] * len(old[::3])
    singles = count_calls(store, "create_entity")
    mixed = runs(200)
    results = store.create_many(mixed)
    assert results == [i % 3 != 0 for i in range(200)]
    assert singles[0] == 0
    for i in (1, 2, 199):  # the new ones carry the stored ETag: a save with it succeeds
        assert mixed[i].etag == store.get(mixed[i].run_id).etag
        assert store.save(mixed[i]).version == 1
    assert store.get(mixed[3].run_id).traceparent == old[3].traceparent


def reset_error() -> ServiceResponseError:
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as inner:
        return ServiceResponseError("Connection aborted.", error=inner)


def break_first_posts(store: TableRunStore, *, after_sending: bool, times: int = 1) -> list[int]:
    """The next ``times`` $batch POSTs fail with a reset, before or after reaching the server."""
    inner = store._transactions._pipeline  # type: ignore[union-attr]  # the bulk-create PipelineClient
    real = inner.send_request
    broken = [0]

    def send_request(request: Any, **kw: Any) -> Any:
        if broken[0] < times and request.url.endswith("/$batch"):
            broken[0] += 1
            if after_sending:
                real(request, **kw).read()
            raise reset_error()
        return real(request, **kw)

    inner.send_request = send_request  # type: ignore[method-assign]
    return broken


@pytest.mark.parametrize("after_sending", [False, True])
def test_a_reset_batch_post_is_retried_once(store: TableRunStore, after_sending: bool) -> None:
    batch = [r for r in runs(120) if partition_for(r.run_id) == partition_for("run-0000")][:20]
    assert len(batch) >= 2
    broken = break_first_posts(store, after_sending=after_sending)
    assert store.create_many(batch) == [True] * len(batch)  # ours, whether the first POST landed or not
    assert broken[0] == 1
    for r in batch:
        assert r.etag == store.get(r.run_id).etag
    other = [r.model_copy(update={"traceparent": new_traceparent()}) for r in batch]
    break_first_posts(store, after_sending=False)
    assert store.create_many(other) == [False] * len(batch)  # someone else's now: not ours


def test_a_second_reset_is_an_error_the_caller_retries(store: TableRunStore) -> None:
    from shared.errors import RetryableError

    batch = [r for r in runs(120) if partition_for(r.run_id) == partition_for("run-0000")][:5]
    break_first_posts(store, after_sending=False, times=2)
    with pytest.raises(RetryableError):
        store.create_many(batch)
    assert store.create_many(batch) == [True] * len(batch)


def test_bulk_creates_are_signed_with_an_account_sas_from_the_key(storage_settings: Settings) -> None:
    """The bulk path (shared.store.table_batch) authenticates with a SAS made from the account
    key (public SDK API): with the right key the transaction lands; with a wrong key of the same
    account Azurite refuses it, and the refusal is our AuthError, not a bare SDK error."""
    from shared.errors import AuthError

    store = TableRunStore.from_settings(storage_settings)
    assert store._transactions is not None
    batch = [r for r in runs(60, "sas") if partition_for(r.run_id) == partition_for("sas-0000")][:3]
    assert store.create_many(batch) == [True] * len(batch)
    wrong = storage_settings.connection_string.replace(
        storage_settings.connection_string.split("AccountKey=")[1].split(";")[0], "d3Jvbmcta2V5LXdyb25nLWtleQ=="
    )
    other = TableRunStore(wrong, store.table_name)
    with pytest.raises(AuthError):
        other._submit_creates([other.to_entity(r) for r in runs(2, "sasx")])
