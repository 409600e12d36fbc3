"""The demo's console in Chromium: the URL the demo prints shows the run live while it runs, then
the model with its metric plot (issue 8's acceptance, the demo path as `make demo` runs it).

``run_demo`` runs in a thread with a ``linger`` that holds the host up after the run until the
browser checks are done; the browser (Playwright's sync API) stays in the test's thread.
"""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.demo import DemoResult, run_demo
from shared.settings import Settings

DEMO_TIMEOUT = 480.0


def wait_for_host(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/admin/host/status", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the demo's host did not come up at {url} within {timeout:.0f}s")
        time.sleep(0.5)


def test_demo_console_shows_the_run_live_then_the_model(
    own_azurite_settings: Settings, open_page: Any, chromium: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    s = own_azurite_settings
    url = f"http://127.0.0.1:{s.host_port}"
    buf = io.StringIO()
    out: dict[str, Any] = {}
    lingering = threading.Event()
    browser_done = threading.Event()

    def linger(result: DemoResult, console_url: str) -> None:
        out["linger_url"] = console_url
        lingering.set()
        browser_done.wait(timeout=DEMO_TIMEOUT)

    def demo() -> None:
        try:
            out["result"] = run_demo(
                s, fresh=True, timeout=DEMO_TIMEOUT, out=Console(file=buf, width=140), linger=linger
            )
        except BaseException as exc:  # surfaced in the test thread
            out["error"] = exc
            lingering.set()

    thread = threading.Thread(target=demo, name="demo", daemon=True)
    thread.start()
    try:
        wait_for_host(url, timeout=180)
        page, _guard = open_page(url)
        page.goto(url + "/")
        page.evaluate("window.__conveyorNoReload = 1")
        row = page.locator("tr.run-row").first
        expect(row).to_be_visible(timeout=180_000)  # the dropped file's run, without a reload
        run_id = row.get_attribute("data-run")
        assert run_id and page.evaluate("window.__conveyorNoReload") == 1
        row.locator("a.run-link").click()
        expect(page).to_have_url(re.compile(f"/runs/{run_id}$"))
        page.evaluate("window.__conveyorNoReload = 2")
        status = page.locator("#run-status")
        nodes = page.locator("#graph svg.graph g.node")
        expect(nodes).to_have_count(5)
        seen = set()
        deadline = time.monotonic() + DEMO_TIMEOUT
        while time.monotonic() < deadline:  # the states move on in the same document
            seen.add(status.inner_text())
            if "succeeded" in seen or "failed" in seen:
                break
            page.wait_for_timeout(500)
        assert page.evaluate("window.__conveyorNoReload") == 2
        assert "succeeded" in seen, (seen, buf.getvalue()[-3000:])
        assert seen & {"pending", "queued", "running"}, seen  # it was watched while it ran
        for name in ("score", "etl", "train", "register", "deploy"):
            expect(page.locator(f'g.node[data-node="{name}"]')).to_have_attribute("data-state", "succeeded")
        expect(page.locator("#gate")).to_contain_text("promoted")
        expect(page.locator("#gantt svg.gantt rect.attempt-succeeded")).to_have_count(5)
        page.screenshot(path=str(tmp_path / "console-demo-run.png"), full_page=True)  # the README's picture

        assert lingering.wait(timeout=120), buf.getvalue()[-3000:]
        page.locator("ol.chain a", has_text=re.compile(r"sales-forecaster v\d+")).click()
        expect(page.locator("h1")).to_have_text("Model sales-forecaster")
        plot = page.locator("#metric-plot svg.plot")
        expect(plot).to_be_visible()
        expect(plot.locator("g.point.champion")).to_have_count(1)
        expect(page.locator("#champion")).to_have_text(re.compile(r"^v\d+$"))
        expect(page.locator(f'a[href="/runs/{run_id}"]')).to_be_visible()  # the run that produced it
        page.screenshot(path=str(tmp_path / "console-model.png"), full_page=True)
    finally:
        browser_done.set()
        thread.join(timeout=120)
    if "error" in out:
        raise out["error"]
    result: DemoResult = out["result"]
    output = buf.getvalue()
    assert result.ok, f"{result.error}\n{output}"
    assert f"console: {url}/" in output  # the demo prints the console's URL when the host is up
    assert out["linger_url"] == f"{url}/"
