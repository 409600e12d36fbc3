"""`conveyor open` without a run id: the console's URL, in a browser when there is one (no storage needed)."""

from __future__ import annotations

import webbrowser

import pytest
from typer.testing import CliRunner

from shared.cli import app, console_url
from shared.local.azurite import free_port

runner = CliRunner()


def test_console_url_quotes_the_run_id() -> None:
    assert console_url("http://127.0.0.1:7071") == "http://127.0.0.1:7071/"
    assert console_url("http://127.0.0.1:7071", "a/b c") == "http://127.0.0.1:7071/runs/a%2Fb%20c"


def test_open_prints_the_url_when_no_browser_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("CONVEYOR_HOST_PORT", str(port))
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or False)
    result = runner.invoke(app, ["open"])
    assert result.exit_code == 0, result.output
    assert opened == [f"http://127.0.0.1:{port}/"]
    assert f"http://127.0.0.1:{port}/" in result.stdout
    assert "no host is running" in result.stderr


def test_open_says_when_it_opened_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_HOST_PORT", str(free_port()))
    monkeypatch.setattr(webbrowser, "open", lambda url: True)
    assert runner.invoke(app, ["open"]).stdout.startswith("opened http://127.0.0.1:")
    calls: list[str] = []
    monkeypatch.setattr(webbrowser, "open", calls.append)
    assert runner.invoke(app, ["open", "--print"]).exit_code == 0 and calls == []
