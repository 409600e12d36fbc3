"""The console's routes: HttpRequest in, HttpResponse (HTML page, fragment, redirect or asset) out.

Paths are relative to the console's base (``""`` under ``conveyor up``, ``/api/console`` in
the Function App):

======= ============================ ==================================================
GET     /                            runs (``?flow=&status=&trigger=&q=&page=``; ``fragment=live``)
GET     /runs/{run_id}               one run (``fragment=live`` is the polled part)
GET     /runs/{run_id}/cancel        confirm page; POST cancels (same origin + token)
GET     /runs/{run_id}/rerun         confirm page (``?from_step=``); POST reruns (same checks)
GET     /models, /models/{name}      registered models; versions, gate decisions, metric plot
GET     /dead-letters                dead-lettered messages; POST /dead-letters/replay when wired
GET     /static/{file}               CSS, favicon, vendored htmx (allow-listed files only)
======= ============================ ==================================================

Every answer carries the console's security headers (``shared.console.security``). Errors
are HTML pages with the status the API would give (400 naming the field, 403, 404, 409, 503).
In Azure the function key arrives as ``?code=``; every link and form the pages make carries
it on, so browsing works behind function-key auth.
"""

from __future__ import annotations

import functools
import logging
import mimetypes
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode

from shared.api.handlers import RUN_ID_RE
from shared.api.http import HttpRequest, HttpResponse
from shared.console.security import (
    ForbiddenError,
    browser_token,
    check_form_token,
    check_same_origin,
    cookie_header,
    form_token,
    security_headers,
)
from shared.errors import ConflictError, ConveyorError, NotFoundError, RetryableError, ValidationError

if TYPE_CHECKING:
    from jinja2 import Environment

    from shared.console.base import ConsoleSources
    from shared.wiring import Services

log = logging.getLogger("conveyor.console")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
HTML = "text/html; charset=utf-8"
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")  # shared.flows.model.ModelSpec.name
MESSAGE_ID_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
CODE_RE = re.compile(r"^[A-Za-z0-9_\-=/+]{1,256}$")  # a function key carried in ?code=
MAX_FORM = 4096
POLL_ACTIVE, POLL_IDLE = "every 2s", "every 10s"


class Links:
    """Builds the console's URLs under its base, carrying the function key when one came in."""

    def __init__(self, base: str, code: str | None) -> None:
        self.base = base.rstrip("/")
        self.code = code if code and CODE_RE.match(code) else None

    def __call__(self, path: str, *segments: Any, **query: Any) -> str:
        url = self.base + path + "/".join(quote(str(s), safe="") for s in segments)
        params = {k: v for k, v in query.items() if v not in (None, "")}
        if self.code:
            params["code"] = self.code
        return url + ("?" + urlencode(params) if params else "") or "/"

    @property
    def cookie_path(self) -> str:
        return self.base or "/"


class Console:
    """The console's handlers. ``services`` defaults to ``get_services()``; ``sources`` to their defaults."""

    def __init__(
        self,
        services: Services | None = None,
        sources: ConsoleSources | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._services = services
        self._sources = sources
        if clock is None:
            from shared.clock import utcnow

            clock = utcnow
        self.clock = clock

    @property
    def services(self) -> Services:
        if self._services is not None:
            return self._services
        from shared.wiring import get_services

        return get_services()

    @property
    def sources(self) -> ConsoleSources:
        if self._sources is None:
            from shared.console.base import ConsoleSources

            self._sources = ConsoleSources.from_services(self.services)
        return self._sources

    @property
    def env(self) -> Environment:
        return template_environment()

    # ------------------------------------------------------------ entry point
    def handle(self, req: HttpRequest, base: str = "", *, secure: bool = False) -> HttpResponse:
        """Answer one request; ``req.path`` is the full path, ``base`` the console's mount point."""
        path = req.path
        if base and path.lower().startswith(base.lower()):
            path = path[len(base) :]
        path = path or "/"
        links = Links(base, req.query.get("code"))
        page = _Page(self, req, links, secure)
        try:
            return page.route(path)
        except ForbiddenError as exc:
            return page.error(403, "Refused", exc.message)
        except ValidationError as exc:
            where = f"{exc.field}: " if exc.field else ""
            return page.error(400, "Bad request", where + exc.message)
        except NotFoundError as exc:
            return page.error(404, "Not found", exc.message)
        except ConflictError as exc:
            return page.error(409, "Conflict", exc.message)
        except RetryableError as exc:
            log.warning("console: %s %s: %s", req.method, req.path, exc)
            return page.error(503, "Temporarily unavailable", "try again in a few seconds", {"Retry-After": "5"})
        except ConveyorError as exc:
            return page.error(400, "Cannot do that", exc.message)
        except Exception:
            log.exception("console: %s %s failed", req.method, req.path)
            return page.error(500, "Internal error", "the console could not answer; see the host's log")


class _Page:
    """One request being answered: routing, rendering, the CSRF cookie."""

    def __init__(self, console: Console, req: HttpRequest, links: Links, secure: bool) -> None:
        self.console = console
        self.req = req
        self.url = links
        self.secure = secure
        self.token, self.fresh_token = browser_token(req.headers)

    # ------------------------------------------------------------ routing
    def route(self, path: str) -> HttpResponse:
        method = "GET" if self.req.method == "HEAD" else self.req.method
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "static" and method == "GET":
            return self.static("/".join(parts[1:]))
        if not parts:
            return self.only(method, "GET") or self.runs()
        head, rest = parts[0], parts[1:]
        if head == "runs" and len(rest) == 1:
            return self.only(method, "GET") or self.run(rest[0])
        if head == "runs" and len(rest) == 2 and rest[1] in ("cancel", "rerun"):
            if method == "POST":
                return self.act(rest[1], rest[0])
            return self.only(method, "GET", "POST") or self.confirm(rest[1], rest[0])
        if head == "models" and len(rest) <= 1:
            return self.only(method, "GET") or (self.model(rest[0]) if rest else self.models())
        if head == "dead-letters" and not rest:
            return self.only(method, "GET") or self.dead_letters()
        if head == "dead-letters" and rest == ["replay"]:
            return self.only(method, "POST") or self.replay()
        raise NotFoundError(f"no console page at {path[:100]}")

    def only(self, method: str, *allowed: str) -> HttpResponse | None:
        if method in allowed:
            return None
        resp = self.error(405, "Method not allowed", f"{method} is not allowed here")
        resp.headers["Allow"] = ", ".join(allowed)
        return resp

    # ------------------------------------------------------------ rendering
    def headers(self, content_type: str = HTML) -> dict[str, str]:
        out = {"Content-Type": content_type, **security_headers()}
        if content_type == HTML:
            out["Cache-Control"] = "no-store"
            if self.fresh_token:
                out["Set-Cookie"] = cookie_header(self.token, self.url.cookie_path, self.secure)
        return out

    def render(self, template: str, http_status: int = 200, **context: Any) -> HttpResponse:
        html = self.console.env.get_template(template).render(
            url=self.url,
            csrf=lambda action, target: form_token(self.token, action, target),
            nav=context.pop("nav", ""),
            **context,
        )
        return HttpResponse(status=http_status, body=html.encode("utf-8"), headers=self.headers())

    def error(self, status: int, title: str, message: str, extra: dict[str, str] | None = None) -> HttpResponse:
        resp = self.render("error.html", http_status=status, title=title, message=message, status_code=status)
        resp.headers.update(extra or {})
        return resp

    def redirect(self, location: str) -> HttpResponse:
        headers = self.headers()
        headers["Location"] = location
        return HttpResponse(status=303, body=b"", headers=headers)

    @property
    def fragment(self) -> bool:
        return self.req.query.get("fragment") == "live"

    # ------------------------------------------------------------ pages
    def runs(self) -> HttpResponse:
        from shared.console.views import RUNS_SCANNED, parse_runs_query, runs_context

        rq = parse_runs_query(self.req.query)
        services = self.console.services
        runs = services.store.list_runs(limit=RUNS_SCANNED)
        ctx = runs_context(runs, services.flows, rq, self.console.clock())
        live_url = self.url("/", **rq.as_params(), fragment="live")
        template = "_runs_live.html" if self.fragment else "runs.html"
        return self.render(template, nav="runs", live_url=live_url, poll=POLL_ACTIVE, **ctx)

    def _run_id(self, raw: str) -> str:
        if not RUN_ID_RE.match(raw):
            raise NotFoundError(f"run {raw[:64]!r} not found")
        return raw

    def run(self, raw_id: str) -> HttpResponse:
        from shared.console.views import run_context

        run_id = self._run_id(raw_id)
        services = self.console.services
        run = services.store.get(run_id)
        ctx = run_context(run, services.flows, self.console.sources, self.console.clock())
        after = self.req.query.get("after") if self.req.query.get("after") in ("cancel", "rerun") else None
        poll = POLL_ACTIVE if (not ctx["terminal"] or after) else POLL_IDLE
        live_url = self.url("/runs/", run_id, fragment="live", after=after)
        template = "_run_live.html" if self.fragment else "run.html"
        return self.render(template, nav="runs", live_url=live_url, poll=poll, **ctx)

    def confirm(self, action: str, raw_id: str) -> HttpResponse:
        from shared.engine.control import rerun_steps

        run_id = self._run_id(raw_id)
        services = self.console.services
        run = services.store.get(run_id)
        from_step = None
        if action == "cancel":
            if run.status.terminal:
                raise ConflictError(f"run {run_id} already {run.status.value}; there is nothing to cancel")
        else:
            choices = rerun_steps(run, services.flows)
            if not choices:
                raise ConflictError(f"run {run_id} is {run.status.value}; only a finished run can be rerun")
            from_step = self.req.query.get("from_step") or choices[-1]
            if from_step not in choices:
                raise ValidationError(
                    f"not a step this run can rerun from; one of {', '.join(choices)}", field="from_step"
                )
        return self.render("confirm.html", nav="runs", action=action, run=run, from_step=from_step, target=f"{run_id}")

    def form(self) -> dict[str, str]:
        ctype = (self.req.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise ValidationError("expected a form (application/x-www-form-urlencoded)", field="Content-Type")
        if len(self.req.body) > MAX_FORM:
            raise ValidationError(f"form larger than {MAX_FORM} bytes", field="body")
        try:
            raw = parse_qs(self.req.body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValidationError(f"not a form: {exc}", field="body") from exc
        return {k: v[-1] for k, v in raw.items()}

    def act(self, action: str, raw_id: str) -> HttpResponse:
        check_same_origin(self.req.headers)
        run_id = self._run_id(raw_id)
        data = self.form()
        check_form_token(self.req.headers, data.get("csrf"), action, run_id)
        from shared.engine.control import request_cancel, request_rerun

        services = self.console.services
        if action == "cancel":
            request_cancel(services.store, services.queue, run_id)
        else:
            from_step = data.get("from_step") or None
            request_rerun(services.store, services.queue, services.flows, run_id, from_step)
        return self.redirect(self.url("/runs/", run_id, after=action))

    def models(self) -> HttpResponse:
        from shared.console.views import flow_model_names

        services = self.console.services
        names = set(flow_model_names(services.flows))
        note = ""
        try:
            names.update(services.registry.model_names())
        except ConveyorError as exc:
            note = str(exc)
        models = []
        for name in sorted(names):
            try:
                champion = services.registry.champion(name)
            except ConveyorError:
                champion = None
            models.append({"name": name, "champion": champion.version if champion else None})
        return self.render("models.html", nav="models", models=models, note=note)

    def model(self, name: str) -> HttpResponse:
        from shared.console.views import model_context

        if not MODEL_RE.match(name):
            raise NotFoundError(f"model {name[:64]!r} not found")
        services = self.console.services
        ctx = model_context(services.registry, services.flows, name)
        return self.render("model.html", nav="models", **ctx)

    def dead_letters(self) -> HttpResponse:
        sources = self.console.sources
        note = ""
        try:
            letters = sources.dead_letters()
        except ConveyorError as exc:
            letters, note = [], str(exc)
        return self.render(
            "dead_letters.html", nav="dead-letters", letters=letters, note=note, can_replay=sources.replay is not None
        )

    def replay(self) -> HttpResponse:
        check_same_origin(self.req.headers)
        data = self.form()
        message_id = data.get("message_id") or ""
        if not MESSAGE_ID_RE.match(message_id):
            raise ValidationError("must be a message id", field="message_id")
        check_form_token(self.req.headers, data.get("csrf"), "replay", message_id)
        replay = self.console.sources.replay
        if replay is None:
            raise NotFoundError("replaying dead letters is not available here")
        replay(message_id)
        return self.redirect(self.url("/dead-letters"))

    def static(self, name: str) -> HttpResponse:
        path = static_files().get(name)
        if path is None:
            raise NotFoundError(f"no static file {name[:80]!r}")
        ctype = STATIC_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain; charset=utf-8"
        headers = self.headers(ctype)
        headers["Cache-Control"] = "public, max-age=300"
        return HttpResponse(status=200, body=path.read_bytes(), headers=headers)


@functools.cache
def template_environment() -> Environment:
    """One Jinja2 environment per process (templates compile once; a Function App builds a Console per call)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
_static: dict[str, Path] | None = None


def static_files() -> dict[str, Path]:
    """Every file under static/ by its relative name: requests can only name one of these."""
    global _static
    if _static is None:
        _static = {p.relative_to(STATIC).as_posix(): p for p in sorted(STATIC.rglob("*")) if p.is_file()}
    return _static
