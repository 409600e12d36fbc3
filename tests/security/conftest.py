"""Fixtures for the security regression suite: a local host on free ports over the session's Azurite.

``e2e_settings`` is the end-to-end suite's (its own queue, runs table, data home, host port);
``idle_host`` runs the real HTTP socket with no queue workers, so whatever a request enqueued
stays on the queue to be counted, and ``account_url`` is the blob endpoint of the configured
storage account (Azurite's dev account on the session's port).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.host.runtime import LocalHost
from shared.settings import AZURITE_ACCOUNT, Settings
from tests.e2e.conftest import e2e_settings

__all__ = ["account_url", "e2e_settings", "idle_host"]

FLOWS = """\
flows:
  nightly:
    triggers:
      - kind: blob
        container: landing
        suffix: .csv
      - kind: azure_devops
        events: [git.push]
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_etl/medallion.py
"""


@pytest.fixture
def idle_host(e2e_settings: Settings, tmp_path: Path) -> Iterator[LocalHost]:
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS, encoding="utf-8")
    host = LocalHost(e2e_settings.with_overrides(flows_file=flows), workers=0, watch=False, schedule=False).start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def account_url(e2e_settings: Settings) -> str:
    s = e2e_settings
    return f"http://{s.azurite_host}:{s.azurite_blob_port}/{AZURITE_ACCOUNT}"
