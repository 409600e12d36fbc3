"""The local Functions host's routes: the same routes, the same handlers (no socket here).

``/api/...`` requests become framework-neutral ``shared.api.http.HttpRequest`` objects and go
to ``Api.dispatch`` exactly as the HTTP blueprints hand them over. Event Grid deliveries arrive
where the Functions host's Event Grid extension listens,
``POST /runtime/webhooks/EventGrid?functionName=<fn>``, and are answered the way it answers:
``aeg-event-type: SubscriptionValidation`` -> 200 ``{"validationResponse": code}``;
``Notification`` -> the delivery goes to the same strict parser and ingest call as
``POST /api/events/blob`` (refused events listed under ``ignored``), then 202; ``Unsubscribe``
-> 202 (JSON); unknown function -> 404; malformed -> 400 with a JSON error body.

The socket, the server and the checks made before a request gets here (Host, Origin,
content type, body size and deadline) are in :mod:`shared.host.asgi`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from shared.api.http import HttpRequest, HttpResponse, error_response, json_response, map_error

if TYPE_CHECKING:
    from shared.wiring import Services

log = logging.getLogger("conveyor.host")

# Event Grid-triggered functions (functions/blob_events.py) the local host serves.
EVENTGRID_FUNCTIONS = ("blob_created",)
EVENTGRID_PATH = "/runtime/webhooks/eventgrid"

# (status, body, headers) -- what every route returns to the request handler.
Reply = tuple[int, bytes, dict[str, str]]
# Called with the body and headers of one delivery; returns its shared.ingest.service.EventGridOutcome.
EventGridSink = Callable[[bytes, Mapping[str, str]], Any]


def _reply(resp: HttpResponse) -> Reply:
    return int(resp.status), bytes(resp.body or b""), dict(resp.headers or {})


def _json_reply(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return _reply(json_response(status, payload, headers))


def _error(status: int, message: str, field: str | None = None) -> Reply:
    code = {400: "validation_error", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(status, "error")
    return _reply(error_response(status, code, message, field))


def _not_allowed(method: str, path: str, allow: str) -> Reply:
    return _reply(
        error_response(405, "method_not_allowed", f"{method} not allowed on {path}", headers={"Allow": allow})
    )


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
                    return _not_allowed(method, path, "GET, HEAD")
                return _json_reply(200, {"state": "Running"})
            if low == EVENTGRID_PATH:
                if method != "POST":
                    return _not_allowed(method, path, "POST")
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
        if event_type == "Unsubscribe":  # answered in JSON like every other delivery (the OpenAPI document)
            return _json_reply(202, {"function": fn, "events": 0, "runs": [], "created": 0, "ignored": []})
        if event_type not in ("SubscriptionValidation", "Notification"):
            return _error(400, f"unknown aeg-event-type {event_type[:40]!r}", "aeg-event-type")
        outcome = self.eventgrid(body, dict(headers))
        if outcome.validation_code is not None:
            return _json_reply(200, {"validationResponse": outcome.validation_code})
        runs = [_jsonable(r) for r in outcome.results]
        created = sum(1 for r in outcome.results if r.created)
        ignored = [i.as_json() for i in outcome.ignored]
        doc = {"function": fn, "events": outcome.events, "runs": runs, "created": created, "ignored": ignored}
        return _json_reply(202, doc)


def _console_path(path: str) -> bool:
    from shared.console.paths import is_console_path

    return is_console_path(path)


def functions_blob_created(services: Services | None) -> EventGridSink:
    """What the Functions host does with a delivery for ``blob_created``: ``IngestService.ingest_eventgrid``.

    The same strict parser and the same refusals as ``POST /api/events/blob`` and the
    blueprint (which gets the events one by one). Unlike the blueprint, which logs and drops a
    malformed event, the local host rejects the whole delivery with a 400 naming the field
    *before* ingesting any of it, so a bad event is visible and nothing is enqueued; a refused
    event (bad name, foreign URL) is listed under ``ignored`` while the others start.
    """

    def sink(body: bytes, headers: Mapping[str, str]) -> Any:
        from shared.ingest.service import IngestService
        from shared.wiring import get_services

        return IngestService.from_services(services or get_services()).ingest_eventgrid(body, headers)

    return sink


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
