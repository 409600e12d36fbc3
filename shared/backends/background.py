"""In-process background work for the backends whose job is a few calls (register, deploy).

``launch`` must return quickly, so such a backend hands its work to :class:`BackgroundWork`
and answers at once; ``poll`` asks how the work for the key is doing. The work is idempotent
on the key (the registry's ``conveyor.key`` tag, the gate decision stored on the version), so
starting it again for the same key after a redelivery reattaches instead of doing it twice.

A host that dies takes its threads with it, and another host (a restarted one, or another
Functions instance that takes the tick) knows nothing of them. The remote id therefore
carries when the work was launched (``<id>@<epoch seconds>``): a poll that finds neither the
work nor its result says ``running`` until ``LOST_AFTER_SECONDS`` have passed since the
launch -- the work may still be going on another instance -- and then that the work was lost
with its host (a retryable failure). Locally, where hosts can be short-lived, the register
and deploy steps run in their own process instead (shared.backends.local_model_steps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Longer than any registration or managed deployment (the Azure ML deployer waits up to 20 minutes).
LOST_AFTER_SECONDS = 1800.0
WORKERS = 4


def stamped(remote_id: str, launched_at: float | None = None) -> str:
    """``remote_id`` with its launch time: ``<remote_id>@<epoch seconds>``."""
    return f"{remote_id}@{int(time.time() if launched_at is None else launched_at)}"


def unstamped(remote_id: str) -> tuple[str, float | None]:
    """(the remote id without its launch time, the launch time or None when it has none)."""
    base, sep, stamp = remote_id.rpartition("@")
    if sep and stamp.isdigit():
        return base, float(stamp)
    return remote_id, None


def lost(launched_at: float | None, now: float | None = None) -> bool:
    """Whether work launched at ``launched_at`` (None: unknown) and found nowhere is lost."""
    if launched_at is None:
        return True
    return (time.time() if now is None else now) - launched_at > LOST_AFTER_SECONDS


class BackgroundWork:
    """One future per key on a small thread pool (threads started lazily, daemon)."""

    def __init__(self, workers: int = WORKERS, name: str = "conveyor-background") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._futures: dict[str, Future[Any]] = {}
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, key: str, remote_id: str, work: Callable[[], Any]) -> tuple[str, bool]:
        """Start ``work`` for ``key`` unless it runs or ran here: (its stamped remote id, reattached)."""
        with self._lock:
            known = self._ids.get(key)
            if known is not None and not _failed(self._futures[key]):
                return known, True
            rid = stamped(remote_id)
            self._ids[key] = rid
            self._futures[key] = self._pool.submit(work)
            return rid, False

    def get(self, key: str) -> Future[Any] | None:
        with self._lock:
            return self._futures.get(key)


def _failed(future: Future[Any]) -> bool:
    return future.done() and future.exception() is not None
