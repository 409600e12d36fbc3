"""Schedule first-sight records on a real Azurite: written once, first writer wins, kept."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from shared.blobs.storage import AzureBlobStore
from shared.ingest.schedule_state import BlobScheduleState, ScheduleKey
from shared.settings import Settings
from tests.conftest import unique_suffix

T0 = datetime(2024, 6, 1, 21, 42, tzinfo=UTC)


def test_first_sight_is_written_once_and_read_back(storage_settings: Settings) -> None:
    blobs = AzureBlobStore.from_settings(storage_settings)
    container = f"state-{unique_suffix()}"
    key = ScheduleKey("nightly-refresh", "0 30 2 * * *", "Europe/Amsterdam")
    # many instances racing on the first tick: one record, everyone agrees on it
    states = [BlobScheduleState(blobs, container=container) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        seen = list(pool.map(lambda i: states[i].first_seen(key, lambda: T0 + timedelta(seconds=i)), range(6)))
    assert len(set(seen)) == 1 and T0 <= seen[0] <= T0 + timedelta(seconds=5)
    doc = json.loads(blobs.download(container, key.blob_name))
    assert doc == {"flow": key.flow, "cron": key.cron, "timezone": key.timezone, "first_seen": seen[0].isoformat()}
    # a restarted host (a new instance, built lazily) reads it, never rewrites it
    later = BlobScheduleState(lambda: AzureBlobStore.from_settings(storage_settings), container=container)
    assert later.first_seen(key, lambda: T0 + timedelta(days=3)) == seen[0]
    # another schedule of the same flow is its own record
    other = ScheduleKey("nightly-refresh", "0 0 * * * *", "Europe/Amsterdam")
    assert later.first_seen(other, lambda: T0 + timedelta(days=3)) == T0 + timedelta(days=3)
    assert len(blobs.list_blobs(container, "schedules/nightly-refresh/")) == 2
