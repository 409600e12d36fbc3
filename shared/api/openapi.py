"""The OpenAPI 3.1 document of the HTTP API, built from ``ROUTES`` and one declaration per route.

``openapi_document()`` walks :data:`shared.api.handlers.ROUTES` and looks up each route's
:class:`RouteDoc` in :data:`ROUTE_DOCS` (keyed by ``(method, handler)``); the Functions host's
own endpoints that Conveyor answers locally (the Event Grid runtime webhook, admin status)
come from :data:`HOST_ROUTES`. A route without a declaration is an error (the unit tests build
the document), so a new route slots in by adding its ``RouteDoc`` here. Schemas of stored
things are derived from the pydantic models (``Run`` and what it holds); the response shapes
the handlers build themselves (``run_summary``, ingest results) are written out below.

Served at ``GET /api/openapi.json`` by the local host and the Functions app alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from shared.api.handlers import FLOW_RE, IDEMPOTENCY_KEY_RE, MAX_DEAD_LETTERS, MAX_LIMIT, ROUTES, RUN_ID_RE, STEP_RE

JSON = "application/json"
TITLE = "Conveyor"
VERSION = "1"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}

# Response shapes the handlers build (shared.api.handlers: run_summary, _result_json, _run_ref).
HANDWRITTEN_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": STRING, "message": STRING, "field": nullable(STRING)},
            }
        },
    },
    "RunRef": {
        "type": "object",
        "required": ["run_id", "flow", "status", "status_url"],
        "properties": {"run_id": STRING, "flow": STRING, "status": ref("RunStatus"), "status_url": STRING},
    },
    "RunSummary": {
        "allOf": [ref("RunRef")],
        "type": "object",
        "required": ["trigger", "created_at", "updated_at", "cancel_requested"],
        "properties": {
            "trigger": STRING,
            "source": nullable(STRING),
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": nullable({"type": "string", "format": "date-time"}),
            "ended_at": nullable({"type": "string", "format": "date-time"}),
            "current_step": nullable(STRING),
            "cancel_requested": {"type": "boolean"},
            "error": nullable(STRING),
        },
    },
    "RunGraph": {
        "type": "object",
        "required": ["nodes", "edges"],
        "properties": {
            "nodes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "kind", "state", "needs"],
                    "properties": {
                        "name": STRING,
                        "kind": STRING,
                        "state": STRING,
                        "needs": {"type": "array", "items": STRING},
                        "instances": {"type": ["object", "null"], "description": "a for_each step's summary"},
                    },
                },
            },
            "edges": {
                "type": "array",
                "items": {"type": "object", "required": ["from", "to"], "properties": {"from": STRING, "to": STRING}},
            },
        },
    },
    "DeadLetter": {
        "type": "object",
        "required": ["id", "message_id", "reason", "description", "delivery_count", "replayable", "body"],
        "properties": {
            "id": STRING,
            "message_id": STRING,
            "reason": STRING,
            "description": STRING,
            "delivery_count": {"type": "integer"},
            "run_id": {"type": ["string", "null"]},
            "flow": {"type": ["string", "null"]},
            "kind": {"type": ["string", "null"]},
            "enqueued_at": {"type": ["string", "null"]},
            "dead_lettered_at": {"type": ["string", "null"]},
            "replayable": {"type": "boolean"},
            "body": STRING,
        },
    },
    "DeadLetterList": {
        "type": "object",
        "required": ["dead_letters", "count"],
        "properties": {"dead_letters": {"type": "array", "items": ref("DeadLetter")}, "count": {"type": "integer"}},
    },
    "ReplayReport": {
        "type": "object",
        "required": ["replayed", "kept", "missing"],
        "properties": {
            "replayed": {"type": "array", "items": ref("DeadLetter")},
            "kept": {"type": "array", "items": {"allOf": [ref("DeadLetter")], "required": ["why"]}},
            "missing": {"type": "array", "items": STRING},
        },
    },
    "InstancePage": {
        "type": "object",
        "required": ["run_id", "step", "epoch", "total", "counts", "summary", "start", "limit", "instances", "next"],
        "properties": {
            "run_id": STRING,
            "step": STRING,
            "epoch": {"type": "integer"},
            "total": {"type": ["integer", "null"]},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "summary": STRING,
            "start": {"type": "integer"},
            "limit": {"type": "integer"},
            "instances": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "state", "attempt"],
                    "properties": {"index": {"type": "integer"}, "state": STRING, "attempt": {"type": "integer"}},
                },
            },
            "next": {"type": ["string", "null"], "description": "the URL of the next page"},
        },
    },
    "RunList": {
        "type": "object",
        "required": ["runs", "count"],
        "properties": {"runs": {"type": "array", "items": ref("RunSummary")}, "count": {"type": "integer"}},
    },
    "StartRunRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "params": {"type": "object", "description": "the run's ${trigger.params.*}"},
            "idempotency_key": {"type": "string", "pattern": IDEMPOTENCY_KEY_RE.pattern},
        },
    },
    "StartRunAccepted": {
        "type": "object",
        "required": ["run_id", "flow", "status", "created", "status_url"],
        "properties": {
            "run_id": STRING,
            "flow": STRING,
            "status": STRING,
            "created": {"type": "boolean"},
            "status_url": STRING,
            "reason": STRING,
        },
    },
    "CancelAccepted": {
        "allOf": [ref("RunRef")],
        "type": "object",
        "required": ["cancel_requested"],
        "properties": {"cancel_requested": {"type": "boolean"}},
    },
    "CancelRequest": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "RerunRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"from_step": nullable({"type": "string", "pattern": STEP_RE.pattern})},
    },
    "RerunAccepted": {
        "allOf": [ref("RunRef")],
        "type": "object",
        "required": ["from_step"],
        "properties": {"from_step": nullable(STRING)},
    },
    "IngestResult": {
        "type": "object",
        "required": ["flow", "run_id", "created", "status"],
        "properties": {
            "flow": STRING,
            "run_id": STRING,
            "created": {"type": "boolean"},
            "status": STRING,
            "reason": nullable(STRING),
            "status_url": STRING,
        },
    },
    "IngestAccepted": {
        "type": "object",
        "required": ["runs", "created"],
        "properties": {
            "runs": {"type": "array", "items": ref("IngestResult")},
            "created": {"type": "integer"},
            "ignored": {"description": "events not ingested (count or list with reasons)"},
        },
    },
    "HostDelivery": {
        "type": "object",
        "required": ["function", "events", "runs", "created"],
        "properties": {
            "function": STRING,
            "events": {"type": "integer"},
            "runs": {"type": "array"},
            "created": {"type": "integer"},
        },
    },
    "ValidationResponse": {
        "type": "object",
        "required": ["validationResponse"],
        "properties": {"validationResponse": STRING},
    },
    "EventGridEvent": {
        "type": "object",
        "description": "Event Grid schema event (data.url, data.eTag for Microsoft.Storage.BlobCreated)",
        "required": ["id", "eventType", "subject", "eventTime", "data"],
        "properties": {
            "id": STRING,
            "eventType": STRING,
            "subject": STRING,
            "eventTime": STRING,
            "topic": STRING,
            "dataVersion": STRING,
            "data": {"type": "object"},
        },
    },
    "CloudEvent": {
        "type": "object",
        "description": "CloudEvents 1.0 structured event",
        "required": ["specversion", "id", "type", "source"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": STRING,
            "type": STRING,
            "source": STRING,
            "subject": STRING,
            "time": STRING,
            "data": {"type": "object"},
        },
    },
    "EventGridDelivery": {
        "description": "an array of events (either schema); one object is accepted too",
        "anyOf": [
            {"type": "array", "minItems": 1, "items": {"anyOf": [ref("EventGridEvent"), ref("CloudEvent")]}},
            ref("EventGridEvent"),
            ref("CloudEvent"),
        ],
    },
    "DevOpsNotification": {
        "type": "object",
        "description": "Azure DevOps service hook notification (git.push, build.complete, "
        "ms.vss-release.deployment-completed-event)",
        "required": ["id", "eventType", "resource"],
        "properties": {"id": STRING, "eventType": STRING, "resource": {"type": "object"}},
    },
    "HostStatus": {"type": "object", "required": ["state"], "properties": {"state": STRING}},
    "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
}

ERROR_TEXT = {
    400: "invalid input, named in error.field",
    401: "missing or wrong credentials",
    403: "a cross-site request (foreign Origin)",
    404: "no such flow, run or route",
    405: "method not allowed (see Allow)",
    408: "the body did not arrive in time",
    409: "conflict with the run's state or an earlier request",
    413: "body larger than 1 MiB",
    415: "Content-Type must be application/json",
    431: "too many or too large headers",
    503: "a dependency is unavailable; retry after Retry-After",
}
# Every request can meet these (the host's request policy, the server's limits, a store outage).
COMMON_ERRORS = (400, 405, 408, 413, 431, 503)
WRITE_ERRORS = (403, 415)


@dataclass(frozen=True)
class RouteDoc:
    """What the document says about one route: its input and every answer it gives."""

    summary: str
    responses: dict[int, tuple[str, str | None]]  # status -> (description, schema name or None)
    request: str | None = None  # schema name of the JSON body
    request_required: bool = False
    query: tuple[dict[str, Any], ...] = ()
    headers: tuple[dict[str, Any], ...] = ()
    errors: tuple[int, ...] = ()  # besides COMMON_ERRORS (and WRITE_ERRORS for POST)
    security: tuple[str, ...] = ("functionKey",)
    tags: tuple[str, ...] = ("runs",)
    response_headers: dict[int, dict[str, Any]] = field(default_factory=dict)


def _path_param(name: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}


PATH_PARAMS = {"flow": FLOW_RE.pattern, "run_id": RUN_ID_RE.pattern, "step": STEP_RE.pattern}
LOCATION = {"Location": {"description": "the run's status URL", "schema": STRING}}
EVENTGRID_HEADERS = (
    {
        "name": "aeg-event-type",
        "in": "header",
        "schema": {"type": "string", "enum": ["Notification", "SubscriptionValidation", "Unsubscribe"]},
    },
)

ROUTE_DOCS: dict[tuple[str, str], RouteDoc] = {
    ("POST", "devops_hook"): RouteDoc(
        "Azure DevOps service hook (basic auth or the shared-secret header)",
        {202: ("runs created", "IngestAccepted"), 200: ("nothing new", "IngestAccepted")},
        request="DevOpsNotification",
        request_required=True,
        errors=(401,),
        security=("devopsBasic", "devopsSecret"),
        tags=("triggers",),
    ),
    ("POST", "start_run"): RouteDoc(
        "Start a run of a flow with a manual trigger",
        {202: ("accepted (created, or the earlier run for this idempotency key)", "StartRunAccepted")},
        request="StartRunRequest",
        headers=({"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},),
        errors=(404, 409),
        response_headers={202: LOCATION},
    ),
    ("GET", "list_runs"): RouteDoc(
        "Runs, newest first",
        {200: ("the runs", "RunList")},
        query=(
            {"name": "flow", "in": "query", "schema": {"type": "string", "pattern": FLOW_RE.pattern}},
            {"name": "status", "in": "query", "schema": STRING, "description": "comma-separated statuses"},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
        ),
    ),
    ("GET", "get_run"): RouteDoc(
        "One run: steps, outputs, gate and its graph", {200: ("the run", "RunDocument")}, errors=(404,)
    ),
    ("GET", "list_instances"): RouteDoc(
        "A page of a for_each step's instances, by index",
        {200: ("the page", "InstancePage")},
        query=(
            {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
            {"name": "state", "in": "query", "schema": STRING, "description": "comma-separated states"},
        ),
        errors=(404,),
    ),
    ("POST", "cancel_run"): RouteDoc(
        "Ask a run to cancel",
        {202: ("cancel requested", "CancelAccepted")},
        request="CancelRequest",
        errors=(404, 409),
        response_headers={202: LOCATION},
    ),
    ("POST", "rerun"): RouteDoc(
        "Rerun a finished run from a step (default: its first step that did not succeed)",
        {202: ("rerun accepted", "RerunAccepted")},
        request="RerunRequest",
        errors=(404, 409),
        response_headers={202: LOCATION},
    ),
    ("POST", "eventgrid"): RouteDoc(
        "Event Grid webhook (Event Grid schema or CloudEvents 1.0)",
        {200: ("subscription validation handshake", "ValidationResponse"), 202: ("ingested", "IngestAccepted")},
        request="EventGridDelivery",
        request_required=True,
        headers=EVENTGRID_HEADERS,
        tags=("triggers",),
    ),
    ("OPTIONS", "eventgrid"): RouteDoc(
        "CloudEvents webhook validation (abuse protection): consent by WebHook-Allowed-Origin",
        {200: ("consent given", None)},
        headers=({"name": "WebHook-Request-Origin", "in": "header", "schema": STRING},),
        tags=("triggers",),
        response_headers={200: {"WebHook-Allowed-Origin": {"schema": STRING}}},
    ),
    ("GET", "dead_letters"): RouteDoc(
        "Messages the work queue gave up on (local poison queue / Service Bus dead-letter sub-queue)",
        {200: ("the dead letters", "DeadLetterList")},
        query=(
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DEAD_LETTERS}},
        ),
        tags=("operations",),
    ),
    ("POST", "replay_dead_letters"): RouteDoc(
        "Re-send dead letters (message id intact); each is removed only after its send succeeded",
        {200: ("what was replayed, kept (with why) and not found", "ReplayReport")},
        request="ReplayRequest",
        request_required=True,
        tags=("operations",),
    ),
    ("GET", "openapi"): RouteDoc(
        "This document", {200: ("the OpenAPI document", "OpenApiDocument")}, tags=("meta",), security=()
    ),
}

# The Functions host's own endpoints, answered by the local host the way the Functions host does.
HOST_ROUTES: dict[tuple[str, str], RouteDoc] = {
    ("POST", "/runtime/webhooks/EventGrid"): RouteDoc(
        "Event Grid delivery to the blob_created function (the Functions host's Event Grid extension)",
        {200: ("subscription validation handshake", "ValidationResponse"), 202: ("ingested", "HostDelivery")},
        request="EventGridDelivery",
        request_required=True,
        query=(
            {
                "name": "functionName",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "enum": ["blob_created"]},
            },
        ),
        headers=EVENTGRID_HEADERS,
        errors=(404,),
        security=("systemKey",),
        tags=("host",),
    ),
    ("GET", "/admin/host/status"): RouteDoc(
        "The host's state", {200: ("running", "HostStatus")}, security=("masterKey",), tags=("host",)
    ),
}

SECURITY_SCHEMES = {
    "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key", "description": "Azure only"},
    "systemKey": {"type": "apiKey", "in": "query", "name": "code", "description": "Azure only (eventgrid_extension)"},
    "masterKey": {"type": "apiKey", "in": "header", "name": "x-functions-key", "description": "Azure only"},
    "devopsBasic": {"type": "http", "scheme": "basic"},
    "devopsSecret": {"type": "apiKey", "in": "header", "name": "X-Conveyor-Secret"},
}


def _operation(method: str, pattern: str, doc: RouteDoc, op_id: str) -> dict[str, Any]:
    params = [_path_param(n, PATH_PARAMS[n]) for n in _names(pattern)]
    params += [dict(p) for p in (*doc.query, *doc.headers)]
    responses: dict[str, Any] = {}
    for status, (text, schema) in sorted(doc.responses.items()):
        answer: dict[str, Any] = {"description": text}
        if schema is not None:
            answer["content"] = {JSON: {"schema": ref(schema)}}
        if status in doc.response_headers:
            answer["headers"] = doc.response_headers[status]
        responses[str(status)] = answer
    errors = {*COMMON_ERRORS, *doc.errors, *(WRITE_ERRORS if method == "POST" else ())}
    for status in sorted(errors):
        responses.setdefault(
            str(status), {"description": ERROR_TEXT[status], "content": {JSON: {"schema": ref("Error")}}}
        )
    op: dict[str, Any] = {"operationId": op_id, "summary": doc.summary, "tags": list(doc.tags), "responses": responses}
    if params:
        op["parameters"] = params
    if doc.request is not None:
        op["requestBody"] = {"required": doc.request_required, "content": {JSON: {"schema": ref(doc.request)}}}
    op["security"] = [{name: []} for name in doc.security]
    return op


def _names(pattern: str) -> list[str]:
    out, rest = [], pattern
    while "{" in rest:
        rest = rest.split("{", 1)[1]
        name, rest = rest.split("}", 1)
        out.append(name)
    return out


def _model_schemas() -> dict[str, Any]:
    """``Run`` and what it holds, as pydantic describes its JSON output."""
    from shared.engine.model import Run

    schema = Run.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    schema.pop("title", None)
    document = {  # GET /api/runs/{run_id}: the run plus its URL (run_document)
        **schema,
        "properties": {**schema["properties"], "status_url": STRING, "graph": ref("RunGraph")},
        "required": [*schema.get("required", []), "status_url", "graph"],
    }
    from shared.api.handlers import ReplayBody

    replay = ReplayBody.model_json_schema(ref_template="#/components/schemas/{model}")
    replay.pop("title", None)
    return {**defs, "Run": schema, "RunDocument": document, "ReplayRequest": replay}


@functools.cache
def _document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        doc = ROUTE_DOCS.get((route.method, route.handler))
        if doc is None:
            raise LookupError(f"no RouteDoc for {route.method} {route.pattern} ({route.handler}) in shared.api.openapi")
        op_id = route.handler if route.method != "OPTIONS" else f"{route.handler}_options"
        paths.setdefault(route.pattern, {})[route.method.lower()] = _operation(route.method, route.pattern, doc, op_id)
    for (method, path), doc in HOST_ROUTES.items():
        op_id = path.strip("/").replace("/", "_").lower()
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, doc, op_id)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Conveyor's HTTP API: the same handlers in Azure Functions and under `conveyor up`. "
            "Every error is {error: {code, message, field}}. State-changing requests need "
            "Content-Type application/json (or application/*+json).",
        },
        "paths": paths,
        "components": {"schemas": {**_model_schemas(), **HANDWRITTEN_SCHEMAS}, "securitySchemes": SECURITY_SCHEMES},
    }


def openapi_document() -> dict[str, Any]:
    """The document (built once per process; ROUTES do not change at run time)."""
    return _document()
