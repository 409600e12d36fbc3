"""A bounded chaos test: ``conveyor up`` SIGKILLed with its process group at random points of a
4-step flow (databricks, batch, register, deploy) while runs are in flight, then left alone.

The harness is ``bench.chaos`` (``make chaos`` runs it with 40 runs and 100 kills, then with
injected faults); here it runs small enough for ``make test``. It asserts every run succeeds,
no step needed a second launch key, one model version per run, no finished work ran again, and
the runs drain after the last kill within a bound derived from the settings (visibility
timeout + stall margin + sweep interval) and the flow (twice one undisturbed run, measured first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Config, run_experiment
from shared.settings import Settings

pytestmark = pytest.mark.functional


def test_kills_at_random_points_lose_nothing_and_redo_nothing(azurite_settings: Settings, tmp_path: Path) -> None:
    cfg = Config(runs=3, kills=6, min_life=0.5, max_life=4.0, seed=11, drain_timeout=300)
    report = run_experiment("bounded", cfg, azurite_settings, tmp_path)
    print("\n".join(report.lines()))
    assert report.kills == 6 and report.lives == 7
    assert report.problems() == []
    assert report.succeeded == report.runs == 3 and report.registrations == 3
    assert report.drain_seconds is not None and report.drain_seconds <= report.bound_seconds
