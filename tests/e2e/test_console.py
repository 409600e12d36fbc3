"""The web console on the real socket of a running host: pages, the CSP, and cross-site POSTs refused.

The browser-driven path (clicking, live refresh, XSS in a real DOM) is tests/browser; this
file needs no browser, so it always runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from typer.testing import CliRunner

from shared.cli import app
from shared.console.security import CSP
from shared.host.runtime import LocalHost
from shared.settings import Settings
from tests.e2e.console_support import console_host, console_settings, hidden_fields, http, start_manual, wait_status


@pytest.fixture(scope="module")
def running(
    azurite_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalHost, Settings]]:
    settings = console_settings(azurite_settings, tmp_path_factory.mktemp("console-e2e"))
    with console_host(settings) as host:
        yield host, settings


def test_cancel_and_rerun_refuse_foreign_origins_on_the_real_socket(running: tuple[LocalHost, Settings]) -> None:
    host, settings = running
    run_id = start_manual(host, {"note": "<b>x</b>"})
    wait_status(host, run_id, "failed")
    base = host.url
    status, headers, page = http("GET", f"{base}/runs/{run_id}/rerun?from_step=flaky")
    assert status == 200 and headers["Content-Security-Policy"] == CSP
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    fields = hidden_fields(page)
    assert fields["from_step"] == "flaky" and fields["csrf"]
    form = urlencode(fields).encode()
    url = f"{base}/runs/{run_id}/rerun"
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    same = {**ctype, "Cookie": cookie, "Origin": base}
    for refused in (
        {**same, "Origin": "http://evil.example"},  # a foreign page posting the (stolen) form
        {**same, "Origin": "http://127.0.0.1:1"},  # another port on this machine is another origin
        {**same, "Sec-Fetch-Site": "cross-site"},
        {**ctype, "Cookie": cookie},  # no Origin at all
        {**ctype, "Origin": base},  # no cookie: not this browser's token
    ):
        status, _, body = http("POST", url, form, refused)
        assert status == 403, (refused, status, body[:300])
    time.sleep(1.0)  # a rerun that slipped through would have been picked up by now
    run = host.services.store.get(run_id)
    assert run.status.value == "failed" and run.reruns == 0
    status, _, _ = http("POST", f"{base}/runs/{run_id}/cancel", form, same)  # token of another action
    assert status in (403, 409)

    (settings.home / "marker").write_text("ok", encoding="utf-8")
    status, headers, _ = http("POST", url, form, same)
    assert status == 303 and headers["Location"] == f"/runs/{run_id}?after=rerun"
    run = wait_status(host, run_id, "succeeded")
    assert run.reruns == 1 and run.step("flaky").state.value == "succeeded"


def test_pages_and_assets_on_the_socket_and_conveyor_open(
    running: tuple[LocalHost, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, settings = running
    (settings.home / "marker").unlink(missing_ok=True)
    run_id = start_manual(host, {})
    wait_status(host, run_id, "failed")
    for path in ("/", f"/runs/{run_id}", "/models", "/dead-letters", "/static/console.css"):
        status, headers, body = http("GET", host.url + path)
        assert status == 200, (path, body[:300])
        assert headers["Content-Security-Policy"] == CSP
    status, _, body = http("GET", host.url + f"/runs/{run_id}")
    assert "marker is missing" in body  # the failed step's stderr tail, from the backend's file
    assert "console-step: &lt;script&gt;alert(3)&lt;/script&gt;" in body
    for k, v in {
        "CONVEYOR_ROOT": str(settings.root),
        "CONVEYOR_HOME": str(settings.home),
        "CONVEYOR_FLOWS_FILE": str(settings.flows_file),
        "CONVEYOR_AZURITE_BLOB_PORT": str(settings.azurite_blob_port),
        "CONVEYOR_AZURITE_QUEUE_PORT": str(settings.azurite_queue_port),
        "CONVEYOR_AZURITE_TABLE_PORT": str(settings.azurite_table_port),
        "CONVEYOR_QUEUE_NAME": settings.queue_name,
        "CONVEYOR_RUNS_TABLE": settings.runs_table,
        "CONVEYOR_HOST_PORT": str(host.server.port if host.server else settings.host_port),
    }.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(app, ["open", run_id[:10], "--print"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{host.url}/runs/{run_id}"
