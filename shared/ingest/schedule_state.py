"""When each flow schedule was first seen, so that its first fire is the next one after that.

A schedule is a flow's ``schedule`` trigger: the flow, its cron and its time zone (changing
either makes a new schedule, first seen anew). ``IngestService.fire_schedules`` starts a fire
only when it is later than the schedule's first sight: a host started on a fresh data home
at 21:42 does not start the nightly 02:30 job for a fire 19 hours in the past, and
``catch_up`` never reaches back before it.

Azure Functions keeps a status blob per timer function (``azure-webjobs-hosts/timers/...``,
``Last``/``Next``); Conveyor runs every flow schedule from one timer, so it keeps its own: one
small JSON blob per schedule in the ``conveyor-state`` container of the data account
(Azurite locally), written once with ``If-None-Match: *``. The first writer wins and every
other instance (a second Functions worker, a restarted host) reads what it wrote. The value
never changes, so each instance caches it after the first read.

:class:`MemoryScheduleState` keeps the same record in one process (tests, embedded use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.errors import ConflictError, NotFoundError

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore

log = logging.getLogger("conveyor.ingest")

STATE_CONTAINER = "conveyor-state"


@dataclass(frozen=True)
class ScheduleKey:
    flow: str
    cron: str
    timezone: str

    @property
    def blob_name(self) -> str:
        digest = hashlib.sha256(f"{self.cron}\0{self.timezone}".encode()).hexdigest()[:16]
        return f"schedules/{self.flow}/{digest}.json"


class ScheduleState(ABC):
    """First sight of each schedule; ``first_seen`` records it on the first call."""

    def __init__(self) -> None:
        self._known: dict[ScheduleKey, datetime] = {}
        self._lock = threading.Lock()

    def first_seen(self, key: ScheduleKey, since: Callable[[], datetime]) -> datetime:
        """When ``key`` was first seen; when never, record ``since()`` (called only then)."""
        with self._lock:
            known = self._known.get(key)
        if known is None:
            known = self._read(key)
            if known is None:
                wanted = since().astimezone(UTC)
                known = wanted if self._create(key, wanted) else self._read(key) or wanted
                if known == wanted:
                    log.info("schedule %r (%s) of flow %s first seen at %s", key.cron, key.timezone, key.flow, wanted)
            with self._lock:
                self._known[key] = known
        return known

    @abstractmethod
    def _read(self, key: ScheduleKey) -> datetime | None: ...

    @abstractmethod
    def _create(self, key: ScheduleKey, when: datetime) -> bool:
        """Record ``when`` unless a record exists; True when this call wrote it."""


class MemoryScheduleState(ScheduleState):
    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[ScheduleKey, datetime] = {}

    def _read(self, key: ScheduleKey) -> datetime | None:
        return self._rows.get(key)

    def _create(self, key: ScheduleKey, when: datetime) -> bool:
        with self._lock:
            if key in self._rows:
                return False
            self._rows[key] = when
            return True


class BlobScheduleState(ScheduleState):
    """One blob per schedule; ``blobs`` may be a callable so the adapter is built on first use."""

    def __init__(self, blobs: BlobStore | Callable[[], BlobStore], container: str = STATE_CONTAINER) -> None:
        super().__init__()
        self._blobs = blobs
        self.container = container

    @property
    def blobs(self) -> BlobStore:
        from shared.blobs.base import BlobStore

        if not isinstance(self._blobs, BlobStore):
            self._blobs = self._blobs()
        return self._blobs

    def _read(self, key: ScheduleKey) -> datetime | None:
        try:
            doc = json.loads(self.blobs.download(self.container, key.blob_name))
            return datetime.fromisoformat(str(doc["first_seen"])).astimezone(UTC)
        except NotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:  # a damaged record: say so, start from now
            log.warning("schedule state %s/%s unreadable (%s); treating it as new", self.container, key.blob_name, exc)
            return None

    def _create(self, key: ScheduleKey, when: datetime) -> bool:
        doc = {"flow": key.flow, "cron": key.cron, "timezone": key.timezone, "first_seen": when.isoformat()}
        try:
            self.blobs.upload(self.container, key.blob_name, json.dumps(doc).encode("utf-8"), overwrite=False)
        except ConflictError:
            return False  # another instance wrote it first
        return True
