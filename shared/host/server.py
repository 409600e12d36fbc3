"""The local Functions host's routes: the same routes, the same handlers (no socket here).

``/api/...`` requests become framework-neutral ``shared.api.http.HttpRequest`` objects and go
to ``Api.dispatch`` exactly as the HTTP blueprints hand them over. Event Grid deliveries arrive
where the Functions host's Event Grid extension listens,
``POST /runtime/webhooks/EventGrid?functionName=<fn>``, and are answered the way it answers:
``aeg-event-type: SubscriptionValidation`` -> 200 ``{"validationResponse": code}``;
``Notification`` -> each event goes to the ingest handler the ``blob_events`` blueprint calls,
then 202; unknown function -> 404; malformed -> 400 with a JSON error body.

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
from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.wiring import Services

log = logging.getLogger("conveyor.host")

# Event Grid-triggered functions (functions/blob_events.py) the local host serves.
EVENTGRID_FUNCTIONS = ("blob_created",)
EVENTGRID_PATH = "/runtime/webhooks/eventgrid"

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
        if event_type == "Unsubscribe":  # answered in JSON like every other delivery (the OpenAPI document)
            return _json_reply(202, {"function": fn, "events": 0, "runs": [], "created": 0})
        if event_type != "Notification":
            return _error(400, f"unknown aeg-event-type {event_type!r}", "aeg-event-type")
        results = self.eventgrid(events, dict(headers))
        runs = [_jsonable(r) for r in (results or [])]
        created = sum(1 for r in runs if isinstance(r, dict) and r.get("created"))
        return _json_reply(202, {"function": fn, "events": len(events), "runs": runs, "created": created})


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
    from shared import safejson

    doc = safejson.loads(body, field="body") if body.strip() else None
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
