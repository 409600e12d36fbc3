"""The console in a real browser: Playwright (sync API) driving Debian's Chromium, offline.

``chromium`` (session): the browser at ``CONVEYOR_CHROMIUM`` (default /usr/bin/chromium), no
sandbox, no GPU, no background networking. Never ``playwright install``: its download is not
reachable and not needed. Without a browser (or without the playwright package) every test
here is SKIPPED with the reason, and the run's summary says so in capitals; with
``CONVEYOR_REQUIRE_BROWSER=1`` (CI's .ci/run sets it) the same situation is a FAILURE.

``open_page(host_url)``: a fresh context and page on which every request not to the console's
own origin is aborted and recorded; console errors (a CSP violation among them), page errors and
dialogs (``alert`` from an injected script) are recorded. At the end of the test none of them
may have happened (``page_guard.assert_clean()``, called by the fixture's teardown).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import free_ports, own_azurite_settings  # noqa: F401 - fixture reused by the demo test

CHROMIUM = Path(os.environ.get("CONVEYOR_CHROMIUM") or "/usr/bin/chromium")
REQUIRE = os.environ.get("CONVEYOR_REQUIRE_BROWSER", "").strip() == "1"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]
_skipped: list[str] = []


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"browser tests are required (CONVEYOR_REQUIRE_BROWSER=1) but {reason}", pytrace=False)
    _skipped.append(reason)
    pytest.skip(f"browser tests skipped: {reason}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped:
        terminalreporter.write_line(
            f"BROWSER TESTS SKIPPED: {_skipped[0]}. Install it (apt-get install chromium) or set "
            "CONVEYOR_REQUIRE_BROWSER=1 to make this a failure.",
            yellow=True,
            bold=True,
        )


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (make install)")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        except Exception as exc:  # a broken install: say what Chromium said
            unavailable(f"Chromium at {CHROMIUM} did not start: {str(exc).splitlines()[0]}")
        yield browser
        browser.close()


@dataclass
class PageGuard:
    origin: str
    allowed: set[str] = field(default_factory=set)  # extra origins a test serves itself
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        self.requests.append(url)
        if origin == self.origin or origin in self.allowed:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def assert_clean(self) -> None:
        assert self.blocked == [], f"requests off the host were attempted: {self.blocked}"
        assert self.dialogs == [], f"dialogs fired (injected script ran?): {self.dialogs}"
        assert self.page_errors == [], f"page errors: {self.page_errors}"
        csp = [m for m in self.console_errors if "Content Security Policy" in m]
        assert csp == [], f"CSP violations: {csp}"


@pytest.fixture
def open_page(chromium: Any) -> Iterator[Callable[[str], tuple[Any, PageGuard]]]:
    contexts: list[tuple[Any, PageGuard]] = []

    def make(host_url: str) -> tuple[Any, PageGuard]:
        guard = PageGuard(origin=host_url.rstrip("/"))
        context = chromium.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        context.route("**/*", guard.route)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("console", lambda m: guard.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: guard.page_errors.append(str(e)))

        def on_dialog(d: Any) -> None:
            guard.dialogs.append(f"{d.type}: {d.message}")
            d.dismiss()

        page.on("dialog", on_dialog)
        contexts.append((context, guard))
        return page, guard

    yield make
    for context, guard in contexts:
        context.close()
        guard.assert_clean()
