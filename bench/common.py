"""Helpers shared by the benchmarks: timing, medians, a result line."""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.engine.model import Message
from shared.queue.base import Received, WorkQueue
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Median of ``rounds`` alternating measurements of a and b (noise hits both alike)."""
    xs, ys = [], []
    for _ in range(rounds):
        xs.append(a())
        ys.append(b())
    return statistics.median(xs), statistics.median(ys)


def report(name: str, figure: str, goal: str, met: bool) -> str:
    line = f"{name:<22} {figure:<58} goal {goal:<22} {'MET' if met else 'NOT MET'}"
    print(line, flush=True)
    return line


@contextmanager
def azurite_settings(in_memory: bool = False) -> Iterator[Settings]:
    """ONE Azurite on free ports with its data in a temp dir, and Settings pointing at it
    (built directly, like tests/conftest.py: nothing is read from the environment)."""
    from shared.local.azurite import azurite_on_free_ports

    with (
        tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp,
        azurite_on_free_ports(Path(tmp), ROOT, in_memory=in_memory) as settings,
    ):
        yield settings


class NullQueue(WorkQueue):
    """A work queue that drops what it is sent (the benchmarks that measure something else)."""

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        pass

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        return []

    def complete(self, received: Received) -> None:
        pass

    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        pass


def unique(prefix: str) -> str:
    """``prefix`` + 8 hex chars: a fresh queue/table name per benchmark."""
    return prefix + uuid.uuid4().hex[:8]
