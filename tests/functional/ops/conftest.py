"""The operator's commands against the session Azurite: the CLI's environment, a flows file, services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.settings import Settings
from shared.wiring import Services
from tests.conftest import cli_environment

FLOWS = """\
flows:
  nightly:
    triggers:
      - kind: manual
      - kind: blob
        container: {container}
        prefix: sales/
        suffix: .csv
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_etl/medallion.py
  other:
    triggers:
      - kind: blob
        container: {container}
        suffix: .csv
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_etl/medallion.py
"""


def container_name(settings: Settings) -> str:
    """A container of this test's own (the session Azurite is shared): from its queue name's suffix."""
    return "landing-" + settings.queue_name.rsplit("-", 1)[-1]


@pytest.fixture
def ops_settings(storage_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for this test's queue/table/home, also set in the environment for the CLI."""
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS.format(container=container_name(storage_settings)), encoding="utf-8")
    s = storage_settings.with_overrides(flows_file=flows)
    env = cli_environment(s, flows)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return s


@pytest.fixture
def services(ops_settings: Settings) -> Iterator[Services]:
    s = Services(ops_settings)
    try:
        yield s
    finally:
        events = s.__dict__.get("events")
        if events is not None:
            events.close()


runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, everything printed)."""
    from shared.cli import app

    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.output
