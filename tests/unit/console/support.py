"""Runs and a console over the in-memory World (tests/unit/api/helpers.py) for the console's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from shared.api.http import HttpRequest, HttpResponse
from shared.console.handlers import Console
from shared.engine.model import Run, RunStatus, StepRun, StepState, TriggerContext
from shared.errors import NotFoundError
from shared.registry.base import ModelRegistry, ModelVersion
from tests.unit.api.helpers import World

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
XSS_BLOB = "<script>alert(1)</script>.csv"
XSS_PARAM = "<img src=x onerror=alert(2)>"
XSS_ERROR = "<b>boom</b><script>alert(3)</script>"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def attempt(n: int, outcome: str, start: float, end: float, error: str | None = None) -> dict[str, Any]:
    return {
        "attempt": n,
        "key": f"k-{n}",
        "remote_id": f"k-{n}",
        "outcome": outcome,
        "started_at": at(start).isoformat(),
        "ended_at": at(end).isoformat(),
        "error": error,
        "retryable": None,
    }


def failed_run(run_id: str = "run-failed-1", flow: str = "train", created: float = 0.0) -> Run:
    """A blob run of ``train``: ``work`` succeeded, ``score`` failed twice (a retry) with HTML in its error."""
    return Run(
        run_id=run_id,
        flow=flow,
        status=RunStatus.FAILED,
        trigger=TriggerContext(
            kind="blob",
            blob={"container": "landing", "name": XSS_BLOB, "etag": '"0x8D1"', "url": "http://b/landing/x.csv"},
            source="http://b/landing/x.csv",
        ),
        steps=[
            StepRun(
                name="work",
                kind="batch",
                state=StepState.SUCCEEDED,
                attempt=1,
                key="k-1",
                remote_id="k-1",
                started_at=at(created + 2),
                ended_at=at(created + 10),
                history=[attempt(1, "succeeded", created + 2, created + 10)],
                outputs={"note": XSS_PARAM},
            ),
            StepRun(
                name="score",
                kind="batch",
                state=StepState.FAILED,
                attempt=2,
                key="k-2",
                remote_id="k-2",
                remote_url="https://batch.example/jobs/k-2",
                started_at=at(created + 20),
                ended_at=at(created + 25),
                error=XSS_ERROR,
                error_retryable=False,
                history=[
                    attempt(1, "failed", created + 11, created + 15, "first"),
                    attempt(2, "failed", created + 20, created + 25, XSS_ERROR),
                ],
            ),
        ],
        created_at=at(created),
        updated_at=at(created + 25),
        started_at=at(created + 1),
        ended_at=at(created + 25),
        error=f"step score failed: {XSS_ERROR}",
    )


def running_run(run_id: str = "run-running-1", flow: str = "train", created: float = 100.0) -> Run:
    return Run(
        run_id=run_id,
        flow=flow,
        status=RunStatus.RUNNING,
        trigger=TriggerContext(kind="manual", params={"note": XSS_PARAM}, source="cli"),
        steps=[
            StepRun(
                name="work",
                kind="batch",
                state=StepState.RUNNING,
                attempt=1,
                key="k-1",
                started_at=at(created + 1),
                progress={"done": 3, "total": 8},
            ),
            StepRun(name="score", kind="batch"),
        ],
        created_at=at(created),
        updated_at=at(created + 1),
        started_at=at(created + 1),
    )


class ListingRegistry(ModelRegistry):
    """Versions in a dict, champion/previous as fields: enough for the models pages."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[ModelVersion]] = {}
        self.roles: dict[tuple[str, str], str] = {}  # (name, alias) -> version

    def add(self, name: str, metrics: dict[str, float], **tags: str) -> ModelVersion:
        found = self.by_name.setdefault(name, [])
        mv = ModelVersion(name, str(len(found) + 1), f"mem://{name}/{len(found) + 1}", metrics, dict(tags))
        found.append(mv)
        return mv

    def register(self, name: str, model_uri: str, metrics: dict[str, float], tags: dict[str, str], key: str):
        return self.add(name, metrics, **tags)

    def get(self, name: str, version: str) -> ModelVersion:
        for mv in self.by_name.get(name, []):
            if mv.version == version:
                return mv
        raise NotFoundError(f"{name} v{version}")

    def _alias(self, name: str, alias: str) -> ModelVersion | None:
        v = self.roles.get((name, alias))
        return self.get(name, v) if v else None

    def champion(self, name: str) -> ModelVersion | None:
        return self._alias(name, "champion")

    def previous(self, name: str) -> ModelVersion | None:
        return self._alias(name, "previous")

    def promote(self, name: str, version: str) -> None:
        old = self.roles.get((name, "champion"))
        if old:
            self.roles[(name, "previous")] = old
        self.roles[(name, "champion")] = version

    def record_decision(self, name: str, version: str, decision: dict[str, str]) -> None:
        raise NotImplementedError

    def versions(self, name: str) -> list[ModelVersion]:
        return list(self.by_name.get(name, []))

    def model_names(self) -> list[str]:
        return sorted(self.by_name)


class ConsoleWorld(World):
    """The World plus a Console with a fixed clock; ``get``/``post`` speak HttpRequest."""

    def __init__(self, home: Path, **kwargs: Any) -> None:
        super().__init__(home)
        self.registry = ListingRegistry()
        self.services.__dict__["registry"] = self.registry
        self.console = Console(self.services, clock=lambda: NOW + timedelta(seconds=200), **kwargs)

    def add(self, *runs: Run) -> None:
        for run in runs:
            assert self.store.create_if_absent(run)

    def get(self, url: str, headers: dict[str, str] | None = None, base: str = "") -> HttpResponse:
        parts = urlsplit(url)
        req = HttpRequest("GET", parts.path, query=dict(parse_qsl(parts.query)), headers=headers or {})
        return self.console.handle(req, base)

    def post(self, url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> HttpResponse:
        from urllib.parse import urlencode

        parts = urlsplit(url)
        h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        req = HttpRequest(
            "POST", parts.path, query=dict(parse_qsl(parts.query)), headers=h, body=urlencode(form).encode()
        )
        return self.console.handle(req)


def html(resp: HttpResponse) -> str:
    return resp.body.decode("utf-8")


class PageScan(HTMLParser):
    """What a page would execute or style inline: script elements and their text, on* and style attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script_text = ""
        self.handlers: list[tuple[str, str]] = []
        self.styles: list[str] = []
        self.style_elements = 0
        self.hrefs: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        if tag == "style":
            self.style_elements += 1
        if tag == "form":
            self.forms.append(a)
        if tag == "input":
            self.inputs.append(a)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name))
            if name == "style":
                self.styles.append(tag)
            if name in ("href", "src", "action", "hx-get") and value:
                self.hrefs.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_script_text += data
        else:
            self.text.append(data)


def scan(resp: HttpResponse) -> PageScan:
    p = PageScan()
    p.feed(html(resp))
    return p


def cookie_of(resp: HttpResponse) -> str:
    raw = resp.headers["Set-Cookie"]
    return raw.split(";", 1)[0]
