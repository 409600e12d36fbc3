"""The web console in Chromium against a running local host: runs, a run's graph and Gantt, the
failed step's stderr tail, a rerun from that step, live refresh without reloads, and the XSS
cases (a blob named ``<script>alert(1)</script>.csv``, HTML in params and in a step's stderr).

Every test page is offline (``open_page`` aborts and records any request off the host) and may
raise no dialog, page error or CSP violation.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.host.runtime import LocalHost
from shared.local.azurite import free_port
from shared.settings import Settings
from tests.e2e.console_support import FLOW, console_host, console_settings, container_of, start_manual, wait_status

XSS_BLOB = "<script>alert(1)</script>.csv"
XSS_PARAM = "<img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def host(
    chromium: Any, azurite_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalHost, Settings]]:
    """The console-check host (after ``chromium``: without a browser nothing is started)."""
    settings = console_settings(azurite_settings, tmp_path_factory.mktemp("console-browser"))
    with console_host(settings) as h:
        yield h, settings


@pytest.fixture
def pw_expect(chromium: Any) -> Any:
    from playwright.sync_api import expect as pw

    pw.set_options(timeout=30_000)
    return pw


def no_reload_marker(page: Any, value: int) -> None:
    """A value on ``window``: a full reload would lose it (DevTools evaluation, not a page script)."""
    page.evaluate(f"window.__conveyorNoReload = {value}")


def still_same_document(page: Any, value: int) -> bool:
    return bool(page.evaluate("window.__conveyorNoReload") == value)


def test_runs_run_graph_gantt_stderr_rerun_and_xss(
    host: tuple[LocalHost, Settings], open_page: Any, pw_expect: Any, tmp_path: Path
) -> None:
    h, settings = host
    assert h.services is not None
    page, guard = open_page(h.url)

    # the runs page, live: a blob lands and its run appears without a reload
    page.goto(h.url + "/")
    pw_expect(page.locator("h1")).to_have_text("Runs")
    no_reload_marker(page, 1)
    h.services.blobs.upload(container_of(settings), XSS_BLOB, b"region,units\nnorth,3\n")
    row = page.locator("tr.run-row").first
    pw_expect(row).to_be_visible(timeout=90_000)
    blob_run = row.get_attribute("data-run")
    assert blob_run
    pw_expect(row.locator("td.what")).to_contain_text(f"/{XSS_BLOB}")  # as text
    manual_run = start_manual(h, {"note": XSS_PARAM})
    pw_expect(page.locator("tr.run-row")).to_have_count(2, timeout=30_000)
    assert still_same_document(page, 1)
    pw_expect(page.locator(f'tr[data-flow="{FLOW}"]')).to_be_visible()  # counts per status per flow

    # filters: free text on the blob name, trigger kind
    page.fill("input[name=q]", "alert(1)")
    page.click("form.filters button")
    pw_expect(page.locator("tr.run-row")).to_have_count(1)
    pw_expect(page.locator("tr.run-row")).to_have_attribute("data-run", blob_run)
    page.fill("input[name=q]", "")
    page.select_option("select[name=trigger]", "manual")
    page.click("form.filters button")
    pw_expect(page.locator("tr.run-row")).to_have_attribute("data-run", manual_run)
    page.select_option("select[name=trigger]", "")
    page.click("form.filters button")

    # into the blob run: it fails at `flaky` (two attempts), live
    page.locator(f'tr[data-run="{blob_run}"] a.run-link').click()
    pw_expect(page).to_have_url(re.compile(f"/runs/{blob_run}$"))
    no_reload_marker(page, 2)
    pw_expect(page.locator("#run-status")).to_have_text("failed", timeout=120_000)
    assert still_same_document(page, 2)

    graph = page.locator("#graph svg.graph")
    pw_expect(graph.locator('g.node[data-node="fetch"]')).to_have_attribute("data-state", "succeeded")
    pw_expect(graph.locator('g.node[data-node="flaky"]')).to_have_attribute("data-state", "failed")
    gantt = page.locator("#gantt svg.gantt")
    flaky_row = gantt.locator('g.row[data-row="flaky"]')
    pw_expect(flaky_row.locator("rect.attempt-failed")).to_have_count(2)
    pw_expect(flaky_row.locator("rect.retry-wait")).to_have_count(1)
    pw_expect(gantt.locator('g.row[data-row="fetch"] rect.attempt-succeeded')).to_have_count(1)

    # the failed step's stderr tail, read from the local backend's file, HTML shown as text
    tail = page.locator("#step-flaky pre.tail.stderr")
    pw_expect(tail).to_be_visible()
    pw_expect(tail).to_contain_text("marker is missing; failing on purpose")
    pw_expect(tail).to_contain_text("<script>alert(3)</script> <b>bold</b> is text")
    pw_expect(page.locator("#step-flaky pre.step-error")).to_contain_text("exited with code 3")
    pw_expect(page.locator("dd.fact", has_text=XSS_BLOB).first).to_be_visible()
    scripts = page.locator("script")
    pw_expect(scripts).to_have_count(1)
    assert (scripts.get_attribute("src") or "").endswith("/static/vendor/htmx.min.js")
    assert page.locator("b").count() == 0  # no markup from the outside became elements

    shot = tmp_path / "console-run.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # rerun from the failed step: picker, confirmation page, back on the run, live to success
    (settings.home / "marker").write_text("present", encoding="utf-8")
    options = page.locator("#rerun-step option")
    pw_expect(options).to_have_text(["fetch", "flaky"])
    page.select_option("#rerun-step", "flaky")
    page.click("#rerun-button")
    pw_expect(page.locator("h1")).to_contain_text("Rerun run")
    pw_expect(page.locator("#confirm-button")).to_have_text("Yes, rerun from flaky")
    page.click("#confirm-button")
    pw_expect(page).to_have_url(re.compile(f"/runs/{blob_run}\\?after=rerun$"))
    no_reload_marker(page, 3)
    pw_expect(page.locator("#run-status")).to_have_text("succeeded", timeout=120_000)
    assert still_same_document(page, 3)
    pw_expect(graph.locator('g.node[data-node="flaky"]')).to_have_attribute("data-state", "succeeded")
    pw_expect(flaky_row.locator("rect.attempt-succeeded")).to_have_count(1)
    pw_expect(flaky_row.locator("rect.attempt-failed")).to_have_count(2)  # the history stays on the timeline
    run = h.services.store.get(blob_run)
    assert run.reruns == 1 and run.step("fetch").attempt == 1  # fetch kept its outputs

    # the manual run: its params, HTML included, are text
    page.goto(f"{h.url}/runs/{manual_run}")
    pw_expect(page.locator("dd.fact", has_text=XSS_PARAM)).to_be_visible()
    assert page.locator("img").count() == 0
    assert guard.requests and all(u.startswith(h.url) for u in guard.requests)


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin on loopback serving a page whose form posts a rerun to the console."""

    target = ""

    def do_GET(self) -> None:
        page = (
            "<!doctype html><title>win a prize</title>"
            f'<form method="post" action="{self.target}">'
            '<input name="csrf" value="guessed"><input name="from_step" value="flaky">'
            '<button id="go" type="submit">claim</button></form>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_foreign_page_cannot_rerun_or_cancel(
    host: tuple[LocalHost, Settings], open_page: Any, pw_expect: Any
) -> None:
    h, _settings = host
    assert h.services is not None
    run_id = start_manual(h, {})
    run = wait_status(h, run_id, "failed", "succeeded")
    page, guard = open_page(h.url)
    page.goto(f"{h.url}/runs/{run_id}")  # the browser holds the console's cookie now
    port = free_port()
    _Attacker.target = f"{h.url}/runs/{run_id}/rerun"
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Attacker)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        guard.allowed.add(f"http://127.0.0.1:{port}")
        page.goto(f"http://127.0.0.1:{port}/")
        with page.expect_response(_Attacker.target) as answer:
            page.click("#go")
        # the host's request policy refuses the foreign Origin before the console's own checks run
        assert answer.value.status == 403
        pw_expect(page.locator("body")).to_contain_text("cross-site requests are refused")
    finally:
        evil.shutdown()
        evil.server_close()
    after = h.services.store.get(run_id)
    assert after.reruns == run.reruns and after.status == run.status
