"""The HTTP API, framework-neutral: one method per route, HttpRequest in, HttpResponse out.

Azure Functions (functions/webhooks.py) calls the methods one route per function; the local
host calls :meth:`Api.dispatch`, which matches :data:`ROUTES`. Either way the same code
validates the input *before* anything is created or enqueued and maps errors the same way
(:func:`shared.api.http.map_error`).

Routes (all under ``/api``):

======= ============================== =========== ==========================================
method  path                           handler     answer
======= ============================== =========== ==========================================
POST    /api/hooks/azure-devops        devops_hook 202 runs created / 200 nothing new; 401
POST    /api/flows/{flow}/runs         start_run   202 + Location: /api/runs/<id>; 404 flow
GET     /api/runs                      list_runs   200 ?flow=&status=a,b&limit= (1-1000, 50)
GET     /api/runs/{run_id}             get_run     200 the run (steps, outputs, gate, graph); 404
GET     /api/runs/{run_id}/steps/      list_       200 a page of a for_each step's instances
        {step}/instances               instances   ?start=&limit=&state=a,b; 404
POST    /api/runs/{run_id}/cancel      cancel_run  202; 409 when already finished
POST    /api/runs/{run_id}/rerun       rerun       202 body {"from_step": "..."} (optional)
POST    /api/events/blob               eventgrid   Event Grid webhook: 200 handshake or 202
OPTIONS /api/events/blob               eventgrid   CloudEvents abuse-protection handshake
GET     /api/openapi.json              openapi     200 the OpenAPI 3.1 document (shared.api.openapi)
======= ============================== =========== ==========================================

Dead letters (handlers ``dead_letters`` and ``replay_dead_letters``):
``GET /api/deadletters?limit=`` (1-5000, default 100) lists the work queue's dead letters;
``POST /api/deadletters/replay`` with a ``ReplayBody`` (``{"ids": [...]}`` or ``{"all": true}``,
optional ``"flow"``) answers 200 with what was replayed, kept (and why) and not found.
Request bodies of these routes are pydantic models: unknown fields and wrong types are a
400 naming the field.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from shared.api.guard import STATE_CHANGING, media_type_refusal
from shared.api.http import (
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    map_error,
)
from shared.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.engine.model import FanOut, Run
    from shared.flows.model import Flow
    from shared.ingest.service import IngestResult
    from shared.wiring import Services

log = logging.getLogger("conveyor.api")

ROUTE_PREFIX = "/api"
FLOW_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")  # shared.flows.model.NAME_RE
STEP_RE = FLOW_RE
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # visible ASCII, no spaces
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
MAX_DEAD_LETTERS = 5000


class Route(NamedTuple):
    method: str
    pattern: str  # full path with the /api prefix, {name} for a path segment
    handler: str  # Api method name

    @property
    def function_route(self) -> str:
        """The route as Azure Functions declares it (relative to host.json routePrefix "api")."""
        return self.pattern.removeprefix(ROUTE_PREFIX + "/")


ROUTES: list[Route] = [
    Route("POST", "/api/hooks/azure-devops", "devops_hook"),
    Route("POST", "/api/flows/{flow}/runs", "start_run"),
    Route("GET", "/api/runs", "list_runs"),
    Route("GET", "/api/runs/{run_id}", "get_run"),
    Route("GET", "/api/runs/{run_id}/steps/{step}/instances", "list_instances"),
    Route("POST", "/api/runs/{run_id}/cancel", "cancel_run"),
    Route("POST", "/api/runs/{run_id}/rerun", "rerun"),
    Route("POST", "/api/events/blob", "eventgrid"),
    Route("OPTIONS", "/api/events/blob", "eventgrid"),
    Route("GET", "/api/openapi.json", "openapi"),
    Route("GET", "/api/deadletters", "dead_letters"),
    Route("POST", "/api/deadletters/replay", "replay_dead_letters"),
]


class ReplayBody(BaseModel):
    """``POST /api/deadletters/replay``: entry (or message) ids, or ``all``; optionally one flow."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, min_length=1, max_length=1000, description="ids from the list")
    all: bool = Field(default=False, description="replay every dead letter (of flow, if given)")
    flow: str | None = Field(default=None, pattern=FLOW_RE.pattern, description="only messages of this flow")


def parse_body(req: HttpRequest, model: type[BaseModel]) -> Any:
    """The JSON body validated by ``model``; the first problem is a ValidationError naming its field."""
    data = req.json()
    try:
        return model.model_validate({} if data is None else data)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ValidationError(str(err.get("msg", "invalid")), field=where) from None


def _compile(pattern: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{[a-z_]+\})", pattern):
        if part.startswith("{") and part.endswith("}"):
            out.append(f"(?P<{part[1:-1]}>[^/]+)")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE)


_COMPILED = [(route, _compile(route.pattern)) for route in ROUTES]

Handler = Callable[["Api", HttpRequest], HttpResponse]


def _guarded(fn: Handler | None = None, *, parse_body: bool = True) -> Any:
    """Every handler answers: Conveyor errors map to their status, anything else to a bare 500.

    Before the handler runs, a state-changing request must be JSON (415,
    :func:`shared.api.guard.media_type_refusal`) and, with ``parse_body``, its body must pass
    :func:`shared.safejson.loads` (400/413 naming the problem), so no handler -- nor the ingest
    code behind it -- ever meets a body outside the JSON limits. A handler that must check
    credentials before it reads the body (the DevOps hook) passes ``parse_body=False`` and
    calls ``req.json()`` itself after authenticating.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(self: Api, req: HttpRequest) -> HttpResponse:
            try:
                refused = media_type_refusal(req.method, req.headers)
                if refused is not None:
                    return refused
                if parse_body and req.method in STATE_CHANGING:
                    req.json()
                return handler(self, req)
            except Exception as exc:
                resp = map_error(exc)
                log.info("api: %s %s -> %s", req.method, req.path, resp.status)
                return resp

        return wrapper

    return decorate(fn) if fn is not None else decorate


def status_url(run_id: str) -> str:
    return f"{ROUTE_PREFIX}/runs/{run_id}"


class Api:
    """The route handlers. ``services`` defaults to the process-wide ``get_services()``."""

    def __init__(self, services: Services | None = None) -> None:
        self._services = services

    @property
    def services(self) -> Services:
        if self._services is not None:
            return self._services
        from shared.wiring import get_services

        return get_services()

    # ------------------------------------------------------------ dispatch
    def dispatch(self, req: HttpRequest) -> HttpResponse:
        """Route ``req`` by method and path (``/api/...``) to its handler."""
        path = req.path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        allowed: list[str] = []
        for route, rx in _COMPILED:
            m = rx.match(path)
            if m is None:
                continue
            if route.method != req.method:
                allowed.append(route.method)
                continue
            params = {k: unquote(v) for k, v in m.groupdict().items()}
            handler = getattr(self, route.handler)
            return handler(replace(req, route_params={**req.route_params, **params}))
        if allowed:
            return error_response(
                405, "method_not_allowed", f"{req.method} not allowed on {path}", headers={"Allow": ", ".join(allowed)}
            )
        return error_response(404, "not_found", f"no route for {path}")

    # ------------------------------------------------------------ webhooks
    @_guarded(parse_body=False)
    def devops_hook(self, req: HttpRequest) -> HttpResponse:
        """Azure DevOps service hook: credentials first, then the body (JSON limits), then ingest."""
        from shared.ingest.devops import authenticate
        from shared.ingest.service import IngestService

        service = IngestService.from_services(self.services)
        authenticate(req.headers, self.services.settings)
        req.json(required=True)
        results = service.ingest_devops(req.body, req.headers)
        runs = [_result_json(r) for r in results]
        created = sum(1 for r in results if r.created)
        return json_response(202 if created else 200, {"runs": runs, "created": created})

    @_guarded
    def eventgrid(self, req: HttpRequest) -> HttpResponse:
        """Event Grid delivering to an HTTP webhook (Event Grid schema or CloudEvents 1.0)."""
        from shared.ingest import eventgrid as eg

        if req.method == "OPTIONS":
            # CloudEvents abuse protection: consent by echoing the origin (WebHook-Allowed-Origin).
            granted = eg.webhook_validation_response(req.headers)
            if granted is None:
                raise ValidationError("missing or malformed header", field="WebHook-Request-Origin")
            return HttpResponse(status=200, body=b"", headers=dict(granted))
        from shared.ingest.service import IngestService

        outcome = IngestService.from_services(self.services).ingest_eventgrid(req.body, req.headers)
        if outcome.validation_code is not None:
            # Event Grid schema SubscriptionValidation handshake.
            return json_response(200, {"validationResponse": outcome.validation_code})
        runs = [_result_json(r) for r in outcome.results]
        created = sum(1 for r in outcome.results if r.created)
        ignored = [i.as_json() for i in outcome.ignored]  # other event types, and refused events with the reason
        return json_response(202, {"runs": runs, "created": created, "ignored": ignored})

    # ------------------------------------------------------------ the document
    @_guarded
    def openapi(self, req: HttpRequest) -> HttpResponse:
        """The OpenAPI document of every route (built from ROUTES; shared.api.openapi)."""
        from shared.api.openapi import openapi_document

        return json_response(200, openapi_document())

    # ------------------------------------------------------------ runs
    @_guarded
    def start_run(self, req: HttpRequest) -> HttpResponse:
        flow = req.route_params.get("flow", "")
        if not FLOW_RE.match(flow):
            raise NotFoundError(f"flow {flow!r} not found")
        params, key = _start_body(req)
        from shared.ingest.service import IngestService

        result = IngestService.from_services(self.services).start_manual(flow, params, idempotency_key=key)
        url = status_url(result.run_id)
        body = {
            "run_id": result.run_id,
            "flow": result.flow,
            "status": _text(result.status),
            "created": bool(result.created),
            "status_url": url,
        }
        if result.reason:
            body["reason"] = result.reason
        return json_response(202, body, {"Location": url})

    @_guarded
    def list_runs(self, req: HttpRequest) -> HttpResponse:
        from shared.engine.model import RunStatus

        flow = req.query.get("flow") or None
        if flow is not None and not FLOW_RE.match(flow):
            raise ValidationError(f"not a flow name: {flow!r}", field="flow")
        statuses: list[RunStatus] | None = None
        raw_status = req.query.get("status") or ""
        if raw_status.strip():
            statuses = []
            for part in raw_status.split(","):
                try:
                    statuses.append(RunStatus(part.strip().lower()))
                except ValueError:
                    allowed = ", ".join(s.value for s in RunStatus)
                    raise ValidationError(
                        f"unknown status {part.strip()!r}; one of {allowed}", field="status"
                    ) from None
        limit = _limit(req.query.get("limit"))
        runs = self.services.store.list_runs(flow=flow, statuses=statuses, limit=limit)
        return json_response(200, {"runs": [run_summary(r) for r in runs], "count": len(runs)})

    @_guarded
    def get_run(self, req: HttpRequest) -> HttpResponse:
        run = self.services.store.get(_run_id(req))
        flow = self.services.flows.flows.get(run.flow)
        fanouts = self.services.instances.fanouts(run.run_id) if _fans_out(run, flow) else {}
        return json_response(200, run_document(run, flow, fanouts))

    @_guarded
    def list_instances(self, req: HttpRequest) -> HttpResponse:
        """A page of a for_each step's instances, by index; ``state`` filters (``pending``: not begun)."""
        from shared.engine.model import StepState
        from shared.runview import instance_counts, instance_view, instances_url, pending_view, summary_text

        run = self.services.store.get(_run_id(req))
        name = req.route_params.get("step", "")
        step = next((s for s in run.steps if s.name == name), None) if STEP_RE.match(name) else None
        if step is None:
            raise NotFoundError(f"run {run.run_id} has no step {name[:64]!r}")
        start = _nonnegative(req.query.get("start"), "start")
        limit = _limit(req.query.get("limit"))
        wanted: list[StepState] | None = None
        if (req.query.get("state") or "").strip():
            wanted = []
            for part in (req.query.get("state") or "").split(","):
                try:
                    wanted.append(StepState(part.strip().lower()))
                except ValueError:
                    allowed = ", ".join(s.value for s in StepState)
                    raise ValidationError(f"unknown state {part.strip()!r}; one of {allowed}", field="state") from None
        store = self.services.instances
        fanouts = store.fanouts(run.run_id) if step.fanout is not None else {}
        total, counts = instance_counts(step, fanouts)
        body: dict[str, Any] = {
            "run_id": run.run_id,
            "step": step.name,
            "epoch": step.fanout.epoch if step.fanout is not None else 0,
            "total": total,
            "counts": counts,
            "summary": summary_text(total, counts) if step.fanout is not None else "not started",
            "start": start,
            "limit": limit,
            "instances": [],
            "next": None,
        }
        if step.fanout is None or not total:
            return json_response(200, body)
        epoch = step.fanout.epoch
        head = fanouts.get(step.name)
        begun = head.next if head is not None and head.epoch == epoch else total
        rows: dict[int, Any] = {}
        indexes: list[int]
        if wanted is None:
            indexes = list(range(start, min(total, start + limit)))
            rows = {r.index: r for r in store.instances(run.run_id, step.name, epoch, start=start, limit=limit)}
        else:
            states = [s for s in wanted if s is not StepState.PENDING]
            found = (
                store.instances(run.run_id, step.name, epoch, states=states, start=start, limit=limit) if states else []
            )
            rows = {r.index: r for r in found}
            indexes = sorted(rows)
            if StepState.PENDING in wanted:
                indexes += list(range(max(start, begun), total))[: limit - len(indexes)]
        if indexes:
            items = store.items(run.run_id, step.name, epoch, indexes[0], indexes[-1] - indexes[0] + 1)
            item = {indexes[0] + i: v for i, v in enumerate(items)}
            body["instances"] = [
                instance_view(rows[i], item.get(i)) if i in rows else pending_view(i, item.get(i)) for i in indexes
            ]
            if len(indexes) >= limit and indexes[-1] + 1 < total:
                query = f"?start={indexes[-1] + 1}&limit={limit}"
                if wanted is not None:
                    query += "&state=" + ",".join(s.value for s in wanted)
                body["next"] = instances_url(run.run_id, step.name) + query
        return json_response(200, body)

    @_guarded
    def cancel_run(self, req: HttpRequest) -> HttpResponse:
        run_id = _run_id(req)
        _object_body(req, allowed=())
        from shared.engine.control import request_cancel

        s = self.services
        run = request_cancel(s.store, s.queue, run_id)
        body = {**_run_ref(run), "cancel_requested": bool(run.cancel_requested)}
        return json_response(202, body, {"Location": status_url(run.run_id)})

    @_guarded
    def rerun(self, req: HttpRequest) -> HttpResponse:
        run_id = _run_id(req)
        data = _object_body(req, allowed=("from_step",))
        from_step = data.get("from_step")
        if from_step is not None and (not isinstance(from_step, str) or not STEP_RE.match(from_step)):
            raise ValidationError("must be a step name", field="from_step")
        from shared.engine.control import request_rerun

        s = self.services
        run = request_rerun(s.store, s.queue, s.flows, run_id, from_step)
        # from_step null: the engine restarts at the run's first step that did not succeed.
        body = {**_run_ref(run), "from_step": from_step}
        return json_response(202, body, {"Location": status_url(run.run_id)})

    # ------------------------------------------------------------ dead letters
    @_guarded
    def dead_letters(self, req: HttpRequest) -> HttpResponse:
        raw = req.query.get("limit")
        limit = 100
        if raw is not None and raw.strip():
            try:
                limit = int(raw)
            except ValueError:
                raise ValidationError(f"must be an integer, got {raw[:20]!r}", field="limit") from None
            if not 1 <= limit <= MAX_DEAD_LETTERS:
                raise ValidationError(f"must be between 1 and {MAX_DEAD_LETTERS}", field="limit")
        entries = self.services.queue.dead_letters(limit=limit)
        return json_response(200, {"dead_letters": [d.as_json() for d in entries], "count": len(entries)})

    @_guarded
    def replay_dead_letters(self, req: HttpRequest) -> HttpResponse:
        body = parse_body(req, ReplayBody)
        if (body.ids is None) == (not body.all):
            raise ValidationError("give ids or all: true (not both)", field="ids")
        if any(not isinstance(i, str) or not 0 < len(i) <= 200 or not i.isprintable() for i in body.ids or []):
            raise ValidationError("each id must be 1-200 printable characters", field="ids")
        report = self.services.queue.replay_dead_letters(None if body.all else body.ids, flow=body.flow)
        return json_response(200, report.as_json())


# ---------------------------------------------------------------- request parsing


def _run_id(req: HttpRequest) -> str:
    run_id = req.route_params.get("run_id", "")
    if not RUN_ID_RE.match(run_id):
        # Not a shape any run id has: it cannot exist (and never reaches the store).
        raise NotFoundError(f"run {run_id[:64]!r} not found")
    return run_id


def _object_body(req: HttpRequest, allowed: tuple[str, ...]) -> dict[str, Any]:
    data = req.json()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationError("body must be a JSON object", field="body")
    for name in sorted(data):
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "nothing"
            raise ValidationError(f"unknown field; expected {expected}", field=name)
    return data


def _start_body(req: HttpRequest) -> tuple[dict[str, Any], str | None]:
    data = _object_body(req, allowed=("params", "idempotency_key"))
    params = data.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError("must be a JSON object", field="params")
    key = data.get("idempotency_key")
    if key is not None and not isinstance(key, str):
        raise ValidationError("must be a string", field="idempotency_key")  # the service checks the rest
    header_key = req.headers.get("Idempotency-Key")
    if header_key is not None:
        header_key = header_key.strip()
        if not IDEMPOTENCY_KEY_RE.match(header_key):
            raise ValidationError("must be 1-200 visible ASCII characters", field="Idempotency-Key")
        if key is not None and key != header_key:
            raise ValidationError("differs from the Idempotency-Key header", field="idempotency_key")
        key = header_key
    return params, key


def _fans_out(run: Run, flow: Any) -> bool:
    return any(s.fanout is not None for s in run.steps) or (
        flow is not None and any(s.for_each is not None for s in flow.steps)
    )


def _nonnegative(raw: str | None, field: str) -> int:
    if raw is None or raw.strip() == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"must be an integer, got {raw[:20]!r}", field=field) from None
    if not 0 <= value <= 1_000_000:
        raise ValidationError("must be between 0 and 1000000", field=field)
    return value


def _limit(raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"must be an integer, got {raw[:20]!r}", field="limit") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ValidationError(f"must be between 1 and {MAX_LIMIT}", field="limit")
    return value


# ---------------------------------------------------------------- response shapes


def _text(value: Any) -> Any:
    return getattr(value, "value", value)


def _result_json(result: IngestResult) -> dict[str, Any]:
    out = {
        "flow": result.flow,
        "run_id": result.run_id,
        "created": bool(result.created),
        "status": _text(result.status),
        "reason": result.reason or None,
    }
    if result.run_id:
        out["status_url"] = status_url(result.run_id)
    return out


def _run_ref(run: Run) -> dict[str, Any]:
    return {"run_id": run.run_id, "flow": run.flow, "status": run.status.value, "status_url": status_url(run.run_id)}


def run_summary(run: Run) -> dict[str, Any]:
    """One line of ``GET /api/runs``."""
    current = run.current_step()
    return {
        **_run_ref(run),
        "trigger": run.trigger.kind,
        "source": run.trigger.source,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "current_step": None if run.status.terminal or current is None else current.name,
        "cancel_requested": run.cancel_requested,
        "error": run.error,
    }


def run_document(run: Run, flow: Flow | None = None, fanouts: Mapping[str, FanOut] | None = None) -> dict[str, Any]:
    """``GET /api/runs/{id}``: the whole run (steps, outputs, gate), its URL and its graph (steps
    with needs edges, skipped steps, instance summaries and the URL paging each step's instances)."""
    from shared.runview import graph_view

    doc = run.model_dump(mode="json")
    doc["status_url"] = status_url(run.run_id)
    doc["graph"] = graph_view(run, flow, fanouts)
    return doc
