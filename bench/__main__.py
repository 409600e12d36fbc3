"""Run the benchmarks: ``python -m bench [--only NAME] [--quick]`` (``make bench``).

Each benchmark measures its figure as a ratio within one run (both sides interleaved in the
same process), prints one result line with MET / NOT MET, and returns whether its goal was
met. The ones that need storage share ONE Azurite started here on free ports, with its data
(in memory) in a temp dir; it is stopped at the end. The output, followed by a summary, is
also written to bench/results/latest.txt. Exit status 0 only when every goal was met.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from bench.common import ROOT
from shared.settings import Settings

NAMES = ("cold_start", "batch", "transition", "ingest", "fanout", "runs_index")
NEEDS_AZURITE = ("transition", "ingest", "fanout", "runs_index")
RESULTS = ROOT / "bench" / "results" / "latest.txt"


class _Tee(io.TextIOBase):
    """Writes to the console and keeps a copy for the results file."""

    def __init__(self, console: TextIO) -> None:
        self.console = console
        self.copy = io.StringIO()

    def write(self, s: str) -> int:
        self.console.write(s)
        self.copy.write(s)
        return len(s)

    def flush(self) -> None:
        self.console.flush()


def _plan(quick: bool) -> dict[str, Callable[[Settings | None], bool]]:
    from bench import bench_batch, bench_cold_start, bench_fanout, bench_ingest, bench_runs_index, bench_transition

    def need(settings: Settings | None) -> Settings:
        assert settings is not None, "this benchmark needs Azurite"
        return settings

    if quick:
        return {
            "cold_start": lambda _s: bench_cold_start.main(rounds=3),
            "batch": lambda _s: bench_batch.main(tasks=200, rounds=2),
            "transition": lambda s: bench_transition.main(need(s), n=60, block=10),
            "ingest": lambda s: bench_ingest.main(need(s), n=2_000, again=400, rounds=1, budget_seconds=60),
            "fanout": lambda s: bench_fanout.main(need(s), n=200),
            "runs_index": lambda s: bench_runs_index.main(need(s), n=10_000, floor_n=500, rounds=5),
        }
    return {
        "cold_start": lambda _s: bench_cold_start.main(rounds=5),
        "batch": lambda _s: bench_batch.main(tasks=1_000, rounds=5),
        "transition": lambda s: bench_transition.main(need(s), n=200, block=10),
        "ingest": lambda s: bench_ingest.main(need(s), n=10_000, again=2_000, rounds=3, budget_seconds=120),
        "fanout": lambda s: bench_fanout.main(need(s), n=1_000),
        "runs_index": lambda s: bench_runs_index.main(need(s), n=100_000, floor_n=1_000, rounds=9),
    }


def _run_one(name: str, fn: Callable[[Settings | None], bool], settings: Settings | None) -> tuple[str, float]:
    print(f"--- {name}", flush=True)
    start = time.perf_counter()
    try:
        outcome = "MET" if fn(settings) else "NOT MET"
    except Exception:
        traceback.print_exc(file=sys.stdout)
        outcome = "ERROR"
    return outcome, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this benchmark (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the figures)")
    args = parser.parse_args(argv)
    names = [n for n in NAMES if not args.only or n in args.only]
    plan = _plan(args.quick)

    tee = _Tee(sys.stdout)
    outcomes: dict[str, tuple[str, float]] = {}
    with contextlib.redirect_stdout(tee):  # type: ignore[type-var]
        print(
            f"Conveyor benchmarks {'(quick) ' if args.quick else ''}{datetime.now(UTC):%Y-%m-%d %H:%M:%SZ} "
            f"python {platform.python_version()} on {platform.machine()}, {_cpus()} CPUs, load {_load()}"
        )
        for name in [n for n in names if n not in NEEDS_AZURITE]:
            outcomes[name] = _run_one(name, plan[name], None)
        storage = [n for n in names if n in NEEDS_AZURITE]
        if storage:
            from bench.common import azurite_settings

            try:
                with azurite_settings(in_memory=True) as settings:
                    for name in storage:
                        outcomes[name] = _run_one(name, plan[name], settings)
            except Exception:  # Azurite did not start: the storage benchmarks are errors
                traceback.print_exc(file=sys.stdout)
                for name in storage:
                    outcomes.setdefault(name, ("ERROR", 0.0))
        print("=== summary")
        for name in names:
            outcome, seconds = outcomes[name]
            print(f"{name:<12} {outcome:<8} ({seconds:.0f}s)")
        met = sum(1 for o, _ in outcomes.values() if o == "MET")
        print(f"{met} of {len(names)} goals met; load after {_load()}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(tee.copy.getvalue(), encoding="utf-8")
    print(f"(written to {RESULTS.relative_to(ROOT)})")
    return 0 if met == len(names) else 1


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def _load() -> str:
    import os

    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
