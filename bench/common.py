"""Helpers shared by the benchmarks: timing, medians, a result line."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

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
