"""CLI fixtures: commands over an in-memory run store instead of Azurite."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import cli
from shared.settings import Settings
from shared.wiring import Services
from tests.fakes import MemoryRunStore


@pytest.fixture
def memory_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MemoryRunStore:
    store = MemoryRunStore()
    services = Services(Settings(home=tmp_path, root=tmp_path, env={}), store=store)

    @contextlib.contextmanager
    def storage(settings: object = None) -> Iterator[Services]:
        yield services

    monkeypatch.setattr(cli, "storage", storage)
    monkeypatch.setattr(cli, "host_running", lambda settings, timeout=1.0: False)
    return store
