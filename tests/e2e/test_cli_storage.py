"""The CLI against real storage (the session Azurite), with and without a running host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.cli import app
from shared.host.runtime import LocalHost
from shared.settings import Settings
from tests.conftest import cli_environment

FLOWS = """\
flows:
  nightly:
    triggers:
      - kind: manual
      - kind: blob
        container: landing
        suffix: .csv
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_etl/medallion.py
"""

runner = CliRunner()


@pytest.fixture
def cli_env(e2e_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS, encoding="utf-8")
    s = e2e_settings.with_overrides(flows_file=flows)
    env = cli_environment(s, flows)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return s


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_trigger_runs_show_cancel_without_a_host(cli_env: Settings) -> None:
    code, out = invoke("trigger", "nightly", "-p", "day=3", "--key", "k1", "--json")
    assert code == 0, out
    first = json.loads(out)
    assert first["created"] is True and first["flow"] == "nightly"
    code, out = invoke("trigger", "nightly", "-p", "day=3", "--key", "k1", "--json")
    again = json.loads(out)
    assert again["run_id"] == first["run_id"] and again["created"] is False

    code, out = invoke("runs", "--json")
    assert code == 0, out
    runs = json.loads(out)
    assert [r["run_id"] for r in runs] == [first["run_id"]]

    code, out = invoke("show", first["run_id"][:10], "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["trigger"]["params"] == {"day": 3} and doc["steps"][0]["name"] == "etl"

    code, out = invoke("runs", "--status", "pending,running", "--flow", "nightly")
    assert code == 0 and first["run_id"][:12] in out

    code, out = invoke("cancel", first["run_id"])
    assert code == 0, out
    assert "cancel requested" in out


def test_cli_errors_are_one_line_with_exit_codes(cli_env: Settings, tmp_path: Path) -> None:
    code, out = invoke("trigger", "nope")
    assert code == 2 and "nope" in out and "Traceback" not in out
    code, out = invoke("show", "ffffffffffffffff")
    assert code == 2 and "not found" in out
    code, out = invoke("runs", "--status", "sideways")
    assert code == 2 and "sideways" in out
    code, out = invoke("drop", str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in out
    f = tmp_path / "x.csv"
    f.write_text("a\n1\n")
    code, out = invoke("drop", str(f), "--name", "../escape.csv")
    assert code == 2 and "not a safe blob name" in out


def test_drop_warns_when_nothing_watches(cli_env: Settings, tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("a\n1\n")
    code, out = invoke("drop", str(f), "--container", "nowatch")
    assert code == 0, out
    assert "uploaded" in out and "no flow watches container 'nowatch'" in out


def test_trigger_goes_through_a_running_host(cli_env: Settings) -> None:
    with LocalHost(cli_env, workers=0, watch=False, schedule=False) as host:
        assert host.services is not None
        code, out = invoke("trigger", "nightly", "--key", "via-host", "--json")
        assert code == 0, out
        doc = json.loads(out)
        # the API's answer (it carries the status URL), not the direct ingest result
        assert doc["status_url"] == f"/api/runs/{doc['run_id']}"
        assert host.services.store.get(doc["run_id"]).flow == "nightly"
        code, out = invoke("trigger", "nope")
        assert code == 2 and "nope" in out
