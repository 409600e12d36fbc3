"""Storage with CONVEYOR_FAULT_RATE on a real Azurite: the faults enter under the SDK's retries.

Every request of the run store, the work queue and the blob store may be answered 429 or 503,
time out before it is sent, or time out after the service applied it. The SDK retries each
as it would a real one; a call whose retries all fail surfaces as a RetryableError (what the
engine retries). A create or a save the service applied but whose answer was lost is still
this call's own (``create_if_absent`` says True, ``save`` returns it); a send the SDK retried
after the service took it is a duplicate message, which the engine ignores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from shared.blobs.storage import AzureBlobStore
from shared.engine.model import Message, Run, StepRun, TriggerContext
from shared.errors import RetryableError
from shared.faults import KINDS, FaultInjector
from shared.queue.storage_queue import StorageQueueWorkQueue
from shared.settings import Settings
from shared.store.table import TableRunStore
from shared.telemetry.trace import traceparent_for
from tests.conftest import unique_suffix

T = TypeVar("T")
# quick retries for the test (the same number of them as in production: shared.transport)
FAST = {"initial_backoff": 0, "increment_base": 0, "random_jitter_range": 0, "retry_backoff_factor": 0.01}


def retried(call: Callable[[], T], surfaced: list[str]) -> T:
    """What the engine does with a RetryableError: try again (here at once)."""
    for _ in range(20):
        try:
            return call()
        except RetryableError as exc:
            surfaced.append(type(exc).__name__)
    raise AssertionError("20 retryable errors in a row")


def test_storage_works_through_injected_faults(storage_settings: Settings) -> None:
    s = storage_settings.with_overrides(fault_rate=0.3, fault_seed=1234 + int(unique_suffix(), 16) % 1000)
    injector = FaultInjector.from_settings(s)
    assert injector is not None
    store = TableRunStore.from_settings(s, client_kwargs=FAST)
    queue = StorageQueueWorkQueue.from_settings(s, client_kwargs=FAST)
    blobs = AzureBlobStore.from_settings(s, client_kwargs=FAST)
    surfaced: list[str] = []
    now = datetime.now(UTC)
    ids = [f"run{i:03d}" for i in range(30)]
    for rid in ids:
        run = Run(
            run_id=rid,
            flow="f",
            trigger=TriggerContext(kind="manual"),
            steps=[StepRun(name="a", kind="batch")],
            created_at=now,
            updated_at=now,
            traceparent=traceparent_for(rid),
        )
        assert retried(lambda run=run: store.create_if_absent(run), surfaced) is True  # ours, even if retried
        loaded = retried(lambda rid=rid: store.get(rid), surfaced)
        loaded.reruns = 7
        saved = retried(lambda loaded=loaded: store.save(loaded), surfaced)
        assert saved.version == 1 and saved.etag  # one save, even when its first answer was lost
        retried(lambda rid=rid: queue.send(Message(kind="start", run_id=rid)), surfaced)
        retried(lambda rid=rid: blobs.upload("faulty", f"{rid}.txt", rid.encode()), surfaced)
    stored = [retried(lambda rid=rid: store.get(rid), surfaced) for rid in ids]
    assert all(r.reruns == 7 and r.version == 1 for r in stored)
    # A receive whose answer was lost has hidden its messages anyway: they come back after the
    # visibility timeout (2 s here), as they do when a host dies holding them.
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while set(seen) != set(ids) and time.monotonic() < deadline:
        got = retried(lambda: queue.receive(max_messages=32, visibility_timeout=2), surfaced)
        for r in got:
            seen.append(r.message.run_id)
            retried(lambda r=r: queue.complete(r), surfaced)
        if not got:
            time.sleep(0.5)
    assert set(seen) == set(ids)  # every message arrived (a few twice: sends retried after they landed)
    assert all(retried(lambda rid=rid: blobs.download("faulty", f"{rid}.txt"), surfaced) == rid.encode() for rid in ids)
    assert set(injector.counts) == set(KINDS) and sum(injector.counts.values()) > 50
    # The SDKs retried most faults. What reached the caller: a Table create (a POST) that timed
    # out (azure-core retries no POST after its answer was lost), and the rare call whose every try failed.
    assert len(surfaced) < sum(injector.counts.values()) / 4
