"""The local Functions host's HTTP front: the same routes, the same handlers.

``/api/...`` requests become framework-neutral ``shared.api.http.HttpRequest`` objects and go
to ``Api.dispatch`` exactly as the HTTP blueprints hand them over. Event Grid deliveries arrive
where the Functions host's Event Grid extension listens,
``POST /runtime/webhooks/EventGrid?functionName=<fn>``, and are answered the way it answers:
``aeg-event-type: SubscriptionValidation`` -> 200 ``{"validationResponse": code}``;
``Notification`` -> each event goes to the ingest handler the ``blob_events`` blueprint calls,
then 202; unknown function -> 404; malformed -> 400 with a JSON error body.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from shared.api.http import HttpRequest, HttpResponse, error_response, json_response, map_error
from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.wiring import Services

log = logging.getLogger("conveyor.host")

# Event Grid-triggered functions (functions/blob_events.py) the local host serves.
EVENTGRID_FUNCTIONS = ("blob_created",)
EVENTGRID_PATH = "/runtime/webhooks/eventgrid"
MAX_BODY = 16 * 1024 * 1024

# (status, body, headers) -- what every route returns to the request handler.
Reply = tuple[int, bytes, dict[str, str]]
# Called with the parsed events of one Notification delivery and the request headers.
EventGridSink = Callable[[list[dict[str, Any]], Mapping[str, str]], Any]


def _reply(resp: HttpResponse) -> Reply:
    return int(resp.status), bytes(resp.body or b""), dict(resp.headers or {})


def _json_reply(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return _reply(json_response(status, payload, headers))


def _error(status: int, message: str, field: str | None = None) -> Reply:
    code = {400: "validation_error", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(status, "error")
    return _reply(error_response(status, code, message, field))


class HostApp:
    """Routes of the local host, independent of the socket server (unit-testable).

    ``api`` defaults to ``shared.api.handlers.Api(services)``; ``eventgrid`` defaults to the
    ingest service's blob-event handler. Both are built lazily on first request.
    """

    def __init__(
        self,
        services: Services | None = None,
        *,
        api: Any = None,
        eventgrid: EventGridSink | None = None,
        functions: tuple[str, ...] = EVENTGRID_FUNCTIONS,
    ) -> None:
        self.services = services
        self._api = api
        self._eventgrid = eventgrid
        self.functions = functions
        self._lock = threading.Lock()
        self._console: Any = None

    # ------------------------------------------------------------ lazily built handlers
    @property
    def api(self) -> Any:
        with self._lock:
            if self._api is None:
                from shared.api.handlers import Api

                self._api = Api(self.services)
            return self._api

    @property
    def eventgrid(self) -> EventGridSink:
        with self._lock:
            if self._eventgrid is None:
                self._eventgrid = functions_blob_created(self.services)
            return self._eventgrid

    @property
    def console(self) -> Any:
        """The web console (``shared.console``), built on first request."""
        with self._lock:
            if self._console is None:
                from shared.console.handlers import Console

                self._console = Console(self.services)
            return self._console

    # ------------------------------------------------------------ routing
    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        parts = urlsplit(raw_path)
        path = parts.path or "/"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        low = path.lower().rstrip("/")
        try:
            if low == "/admin/host/status":
                if method not in ("GET", "HEAD"):
                    return _error(405, f"{method} not allowed on {path}")
                return _json_reply(200, {"state": "Running"})
            if low == EVENTGRID_PATH:
                if method != "POST":
                    return _error(405, f"{method} not allowed on {path}")
                return self._eventgrid_delivery(query, headers, body)
            if low == "/api" or low.startswith("/api/"):
                return self._api_call(method, path, query, headers, body)
            if _console_path(path):  # the web console: HTML pages and its static assets
                req = HttpRequest(method=method, path=path, query=query, headers=dict(headers), body=body)
                return _reply(self.console.handle(req))
            return _error(404, f"no route for {path}")
        except Exception as exc:  # the one error mapping the HTTP blueprints use too
            return _reply(map_error(exc))

    def _api_call(
        self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], body: bytes
    ) -> Reply:
        req = HttpRequest(method=method, path=path, route_params={}, query=query, headers=dict(headers), body=body)
        resp = self.api.dispatch(req)
        out = resp.body
        if isinstance(out, str):
            out = out.encode("utf-8")
        elif out is None:
            out = b""
        elif not isinstance(out, bytes | bytearray):
            out = json.dumps(out, default=str).encode("utf-8")
        resp_headers = {str(k): str(v) for k, v in dict(resp.headers or {}).items()}
        resp_headers.setdefault("Content-Type", "application/json")
        return int(resp.status), bytes(out), resp_headers

    def _eventgrid_delivery(self, query: dict[str, str], headers: Mapping[str, str], body: bytes) -> Reply:
        fn = query.get("functionName") or query.get("functionname") or ""
        if not fn:
            return _error(400, "missing query parameter functionName", "functionName")
        if fn not in self.functions:
            return _error(404, f"no Event Grid function named {fn!r}", "functionName")
        lower = {k.lower(): v for k, v in headers.items()}
        event_type = (lower.get("aeg-event-type") or "").strip()
        if not event_type:
            return _error(400, "missing header aeg-event-type", "aeg-event-type")
        events = _parse_events(body)
        if event_type == "SubscriptionValidation":
            data = events[0].get("data") if events else None
            code = data.get("validationCode") if isinstance(data, dict) else None
            if not code:
                return _error(400, "subscription validation event without data.validationCode", "data.validationCode")
            return _json_reply(200, {"validationResponse": code})
        if event_type == "Unsubscribe":
            return 202, b"", {}
        if event_type != "Notification":
            return _error(400, f"unknown aeg-event-type {event_type!r}", "aeg-event-type")
        results = self.eventgrid(events, dict(headers))
        runs = [_jsonable(r) for r in (results or [])]
        created = sum(1 for r in runs if isinstance(r, dict) and r.get("created"))
        return _json_reply(202, {"function": fn, "events": len(events), "runs": runs, "created": created})


def _console_path(path: str) -> bool:
    from shared.console.handlers import is_console_path

    return is_console_path(path)


def functions_blob_created(services: Services | None) -> EventGridSink:
    """What the Functions host does with a Notification for ``blob_created``.

    Each event is bound the way ``func.EventGridEvent`` binds it (id, eventType, subject,
    data, eventTime, topic; CloudEvents: id, type, subject, data, time, source) and converted by
    ``blob_event_from_functions`` -- the blueprint's own call -- then all go to
    ``IngestService.ingest_blob_events``. Unlike the blueprint, which logs and drops a
    malformed event, the local host rejects the whole delivery with a 400 naming the field
    *before* ingesting any of it, so a bad event is visible and nothing is enqueued.
    """
    from shared.ingest.eventgrid import blob_event_from_functions

    def sink(events: list[dict[str, Any]], headers: Mapping[str, str]) -> Any:
        from shared.ingest.service import IngestService
        from shared.wiring import get_services

        blob_events = []
        for i, ev in enumerate(events):
            cloud = "specversion" in ev
            try:
                be = blob_event_from_functions(
                    str(ev.get("id") or ""),
                    str(ev.get("type" if cloud else "eventType") or ""),
                    str(ev.get("subject") or ""),
                    ev.get("data"),
                    ev.get("time" if cloud else "eventTime"),
                    ev.get("source" if cloud else "topic"),
                )
            except ValidationError as exc:
                where = f"[{i}].{exc.field}" if exc.field else f"[{i}]"
                raise ValidationError(exc.message, field=where) from exc
            if be is not None:
                blob_events.append(be)
        if not blob_events:
            return []
        return IngestService.from_services(services or get_services()).ingest_blob_events(blob_events)

    return sink


def _parse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of one delivery: a JSON array of objects (a single object is accepted too)."""
    if len(body) > MAX_BODY:
        raise ValidationError(f"delivery larger than {MAX_BODY} bytes", field="body")
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"body is not valid JSON: {exc}", field="body") from exc
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not doc:
        raise ValidationError("expected a non-empty JSON array of events", field="body")
    for i, ev in enumerate(doc):
        if not isinstance(ev, dict):
            raise ValidationError("each event must be a JSON object", field=f"body[{i}]")
    return doc


def _jsonable(value: Any) -> Any:
    """Best-effort JSON view of a handler's result (pydantic models, dataclasses, lists)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            status, body, headers = _error(413, f"request body larger than {MAX_BODY} bytes")
            self.close_connection = True
        else:
            raw = self.rfile.read(length) if length > 0 else b""
            headers_in = {k: v for k, v in self.headers.items()}
            status, body, headers = self.server.app.handle(self.command, self.path, headers_in, raw)
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: HostApp) -> None:
        self.app = app
        super().__init__(address, _Handler)


class HostServer:
    """A ThreadingHTTPServer on ``host:port`` serving ``HostApp`` from a daemon thread."""

    def __init__(self, app: HostApp, *, host: str = "127.0.0.1", port: int = 7071) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HostServer:
        if self._server is not None:
            return self
        try:
            self._server = _Server((self.host, self.port), self.app)
        except OSError as exc:
            from shared.errors import PermanentError

            raise PermanentError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "is another `conveyor up` running? set CONVEYOR_HOST_PORT to use another port",
                service="host",
            ) from exc
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="conveyor-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
