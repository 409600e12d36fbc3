"""Shared fixtures.

``azurite_settings`` (session): ONE Azurite on free ports with its data in a temp dir,
as ``Settings`` pointing at it (nothing read from the process environment).
``storage_settings`` (function): the same Azurite, but a unique queue name, runs table and
home directory per test, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.local.azurite import azurite_on_free_ports
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def unique_suffix() -> str:
    """8 lowercase hex chars: valid in queue names, table names and containers."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def azurite_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    # In memory: nothing to keep after the session; no periodic DB dumps slowing Azurite.
    with azurite_on_free_ports(tmp_path_factory.mktemp("conveyor-home"), REPO_ROOT, in_memory=True) as settings:
        yield settings


@pytest.fixture
def storage_settings(azurite_settings: Settings, tmp_path: Path) -> Settings:
    suffix = unique_suffix()
    return azurite_settings.with_overrides(
        home=tmp_path,
        queue_name=f"conveyor-work-{suffix}",
        runs_table=f"conveyorruns{suffix}",
    )


def cli_environment(settings: Settings, flows_file: Path) -> dict[str, str]:
    """The environment under which the ``conveyor`` CLI uses ``settings`` (this test's storage)."""
    return {
        "CONVEYOR_ROOT": str(settings.root),
        "CONVEYOR_HOME": str(settings.home),
        "CONVEYOR_FLOWS_FILE": str(flows_file),
        "CONVEYOR_AZURITE_BLOB_PORT": str(settings.azurite_blob_port),
        "CONVEYOR_AZURITE_QUEUE_PORT": str(settings.azurite_queue_port),
        "CONVEYOR_AZURITE_TABLE_PORT": str(settings.azurite_table_port),
        "CONVEYOR_QUEUE_NAME": settings.queue_name,
        "CONVEYOR_RUNS_TABLE": settings.runs_table,
        "CONVEYOR_HOST_PORT": str(settings.host_port),
        "CI": "true",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by folder so `-m "not functional"` works without per-file markers."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "functional" in parts:
            item.add_marker(pytest.mark.functional)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        elif "browser" in parts:
            item.add_marker(pytest.mark.browser)
