"""shared.api.handlers: every route through Api.dispatch, over in-memory store and queue."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.api.handlers import ROUTES, Api
from shared.api.http import HttpRequest, HttpResponse
from shared.engine.model import RunStatus, StepState
from tests.unit.api.helpers import DEVOPS_PASSWORD, DEVOPS_USER, World, basic, event_bytes, load_event


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.fixture
def api(world: World) -> Api:
    return Api(world.services)


def call(
    api: Api, method: str, path: str, body: object = None, headers: dict[str, str] | None = None, **query: str
) -> HttpResponse:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    # as every real caller does (Event Grid, DevOps, the CLI); test_non_json_post_is_415 drops it
    headers = {"Content-Type": "application/json", **(headers or {})}
    return api.dispatch(HttpRequest(method, path, query=query, headers=headers, body=raw))


def error_field(resp: HttpResponse) -> str | None:
    return resp.json()["error"]["field"]


# ---------------------------------------------------------------- routing


def test_route_table_handlers_exist() -> None:
    for route in ROUTES:
        assert callable(getattr(Api, route.handler)), route
        assert route.pattern.startswith("/api/")
        assert not route.function_route.startswith("/")


def test_unknown_path_is_404_json(api: Api) -> None:
    resp = call(api, "GET", "/api/nothing/here")
    assert resp.status == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_wrong_method_is_405_with_allow(api: Api) -> None:
    resp = call(api, "DELETE", "/api/runs")
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET"


def test_trailing_slash_and_percent_encoding(api: Api, world: World) -> None:
    started = call(api, "POST", "/api/flows/train/runs/")
    assert started.status == 202
    run_id = started.json()["run_id"]
    assert call(api, "GET", f"/api/runs/{run_id}/").status == 200
    # %2F decodes to "/" inside one segment: not a run id shape -> 404, never a path.
    assert call(api, "GET", "/api/runs/..%2F..%2Fetc").status == 404


# ---------------------------------------------------------------- manual runs


def test_start_run_accepted_with_status_url(api: Api, world: World) -> None:
    resp = call(api, "POST", "/api/flows/train/runs", {"params": {"day": "2024-06-01"}})
    assert resp.status == 202
    body = resp.json()
    assert body["flow"] == "train" and body["created"] is True
    assert body["status_url"] == f"/api/runs/{body['run_id']}"
    assert resp.headers["Location"] == body["status_url"]
    starts = world.sent("start")
    assert [m.run_id for m in starts] == [body["run_id"]]
    run = world.store.get(body["run_id"])
    assert run.trigger.kind == "manual" and run.trigger.params == {"day": "2024-06-01"}


def test_start_run_without_body(api: Api, world: World) -> None:
    resp = call(api, "POST", "/api/flows/train/runs")
    assert resp.status == 202
    assert len(world.sent("start")) == 1


def test_start_run_idempotency_key_in_body_or_header(api: Api, world: World) -> None:
    first = call(api, "POST", "/api/flows/train/runs", {"idempotency_key": "job-42"})
    again = call(api, "POST", "/api/flows/train/runs", headers={"idempotency-key": "job-42"})
    assert first.status == again.status == 202
    assert first.json()["run_id"] == again.json()["run_id"]
    assert (first.json()["created"], again.json()["created"]) == (True, False)
    # the retry finds the run still pending: its start goes again, under the same message id
    assert [m.message_id for m in world.sent("start")] == [first.json()["run_id"]] * 2


def test_start_run_key_reused_with_other_params_is_409(api: Api, world: World) -> None:
    call(api, "POST", "/api/flows/train/runs", {"idempotency_key": "k", "params": {"a": 1}})
    resp = call(api, "POST", "/api/flows/train/runs", {"idempotency_key": "k", "params": {"a": 2}})
    assert resp.status == 409
    assert len(world.sent("start")) == 1  # the conflicting request sends nothing


def test_start_run_conflicting_keys_is_400(api: Api, world: World) -> None:
    resp = call(api, "POST", "/api/flows/train/runs", {"idempotency_key": "a"}, headers={"Idempotency-Key": "b"})
    assert resp.status == 400
    assert error_field(resp) == "idempotency_key"
    assert world.sent() == []


@pytest.mark.parametrize("flow", ["nope", "UPPER", "a" * 80, "..", "%20"])
def test_start_run_unknown_flow_is_404_and_enqueues_nothing(api: Api, world: World, flow: str) -> None:
    resp = call(api, "POST", f"/api/flows/{flow}/runs", {"params": {}})
    assert resp.status == 404
    assert world.sent() == [] and world.store.rows == {}


def test_start_run_flow_without_manual_trigger_is_400(api: Api, world: World) -> None:
    resp = call(api, "POST", "/api/flows/nightly/runs")
    assert resp.status == 400
    assert error_field(resp) == "flow"
    assert world.sent() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'"text"', "body"),
        (json.dumps({"params": [1, 2]}).encode(), "params"),
        (json.dumps({"params": "x"}).encode(), "params"),
        (json.dumps({"idempotency_key": 7}).encode(), "idempotency_key"),
        (json.dumps({"idempotency_key": ""}).encode(), "idempotency_key"),
        (json.dumps({"paramz": {}}).encode(), "paramz"),
    ],
)
def test_start_run_bad_body_names_field(api: Api, world: World, body: bytes, field: str) -> None:
    resp = call(api, "POST", "/api/flows/train/runs", body)
    assert resp.status == 400
    assert error_field(resp) == field
    assert world.sent() == [] and world.store.rows == {}


# ---------------------------------------------------------------- list / get


def _start(api: Api, key: str) -> str:
    return call(api, "POST", "/api/flows/train/runs", {"idempotency_key": key}).json()["run_id"]


def test_list_runs_filters_and_limits(api: Api, world: World) -> None:
    ids = [_start(api, f"k{i}") for i in range(3)]
    # Make them distinguishable by age and status.
    for i, rid in enumerate(ids):
        run = world.store.get(rid)
        run.created_at = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
        if i == 0:
            run.status = RunStatus.FAILED
        world.store.save(run)
    resp = call(api, "GET", "/api/runs")
    assert resp.status == 200
    assert [r["run_id"] for r in resp.json()["runs"]] == list(reversed(ids))
    assert resp.json()["count"] == 3
    failed = call(api, "GET", "/api/runs", status="failed").json()["runs"]
    assert [r["run_id"] for r in failed] == [ids[0]]
    assert failed[0]["status"] == "failed" and failed[0]["current_step"] is None
    both = call(api, "GET", "/api/runs", status="pending,FAILED", limit="2").json()
    assert both["count"] == 2
    assert call(api, "GET", "/api/runs", flow="nightly").json()["runs"] == []
    pending = call(api, "GET", "/api/runs", status="pending").json()["runs"][0]
    assert pending["current_step"] == "work" and pending["status_url"] == f"/api/runs/{pending['run_id']}"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "pending,bogus"}, "status"),
        ({"limit": "x"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"flow": "Bad Flow"}, "flow"),
    ],
)
def test_list_runs_bad_query_names_field(api: Api, query: dict[str, str], field: str) -> None:
    resp = api.dispatch(HttpRequest("GET", "/api/runs", query=query))
    assert resp.status == 400
    assert error_field(resp) == field


def test_get_run_has_steps_and_gate(api: Api, world: World) -> None:
    rid = _start(api, "g")
    run = world.store.get(rid)
    run.gate = {"promoted": False, "reason": "r2 0.7 < champion 0.8"}
    run.steps[0].state = StepState.SUCCEEDED
    run.steps[0].outputs = {"uri": "http://x/y"}
    world.store.save(run)
    resp = call(api, "GET", f"/api/runs/{rid}")
    assert resp.status == 200
    doc = resp.json()
    assert doc["run_id"] == rid and doc["flow"] == "train"
    assert [s["name"] for s in doc["steps"]] == ["work", "score"]
    assert doc["steps"][0]["state"] == "succeeded" and doc["steps"][0]["outputs"] == {"uri": "http://x/y"}
    assert doc["gate"] == {"promoted": False, "reason": "r2 0.7 < champion 0.8"}
    assert "etag" not in doc


def test_get_unknown_run_is_404(api: Api) -> None:
    assert call(api, "GET", "/api/runs/0123456789abcdef").status == 404


# ---------------------------------------------------------------- cancel / rerun


def test_cancel_run(api: Api, world: World) -> None:
    rid = _start(api, "c")
    resp = call(api, "POST", f"/api/runs/{rid}/cancel")
    assert resp.status == 202
    assert resp.json()["cancel_requested"] is True
    assert world.store.get(rid).cancel_requested
    assert [m.run_id for m in world.sent("cancel")] == [rid]


def test_cancel_finished_run_is_409(api: Api, world: World) -> None:
    rid = _start(api, "done")
    run = world.store.get(rid)
    run.status = RunStatus.SUCCEEDED
    world.store.save(run)
    assert call(api, "POST", f"/api/runs/{rid}/cancel").status == 409
    assert world.sent("cancel") == []


def test_cancel_refuses_a_body_it_does_not_understand(api: Api, world: World) -> None:
    rid = _start(api, "cb")
    resp = call(api, "POST", f"/api/runs/{rid}/cancel", {"force": True})
    assert resp.status == 400 and error_field(resp) == "force"
    assert world.sent("cancel") == []


def _failed_run(api: Api, world: World) -> str:
    rid = _start(api, "r")
    run = world.store.get(rid)
    run.status = RunStatus.FAILED
    run.steps[0].state = StepState.SUCCEEDED
    run.steps[1].state = StepState.FAILED
    world.store.save(run)
    return rid


def test_rerun_from_step(api: Api, world: World) -> None:
    rid = _failed_run(api, world)
    resp = call(api, "POST", f"/api/runs/{rid}/rerun", {"from_step": "score"})
    assert resp.status == 202
    assert resp.json()["from_step"] == "score"
    assert [(m.run_id, m.from_step) for m in world.sent("rerun")] == [(rid, "score")]


def test_rerun_default_step(api: Api, world: World) -> None:
    rid = _failed_run(api, world)
    assert call(api, "POST", f"/api/runs/{rid}/rerun").status == 202
    assert [m.from_step for m in world.sent("rerun")] == ["score"]


@pytest.mark.parametrize("body", [{"from_step": "nope"}, {"from_step": 3}, {"from_step": "../x"}])
def test_rerun_bad_step_names_field(api: Api, world: World, body: dict) -> None:
    rid = _failed_run(api, world)
    resp = call(api, "POST", f"/api/runs/{rid}/rerun", body)
    assert resp.status == 400 and error_field(resp) == "from_step"
    assert world.sent("rerun") == []


# ---------------------------------------------------------------- Event Grid webhook


def test_eventgrid_subscription_validation(api: Api, world: World) -> None:
    body = event_bytes("subscription_validation_eventgrid.json")
    code = load_event("subscription_validation_eventgrid.json")[0]["data"]["validationCode"]
    resp = call(api, "POST", "/api/events/blob", body, headers={"aeg-event-type": "SubscriptionValidation"})
    assert resp.status == 200
    assert resp.json() == {"validationResponse": code}
    assert world.sent() == []


def test_eventgrid_cloudevents_options_handshake(api: Api) -> None:
    resp = call(api, "OPTIONS", "/api/events/blob", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert resp.status == 200
    assert resp.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    missing = call(api, "OPTIONS", "/api/events/blob")
    assert missing.status == 400 and error_field(missing) == "WebHook-Request-Origin"
    assert "WebHook-Allowed-Origin" not in missing.headers


def test_eventgrid_blob_created_starts_run_once(api: Api, world: World) -> None:
    body = event_bytes("blob_created_eventgrid.json")
    headers = {"aeg-event-type": "Notification"}
    first = call(api, "POST", "/api/events/blob", body, headers=headers)
    again = call(api, "POST", "/api/events/blob", body, headers=headers)
    assert first.status == again.status == 202
    assert first.json()["created"] == 1 and again.json()["created"] == 0
    assert [r["flow"] for r in first.json()["runs"]] == ["train"]
    assert len({m.message_id for m in world.sent("start")}) == 1  # re-sent while pending: one message id


@pytest.mark.parametrize(
    "body", [b"{oops", b"", b"42", json.dumps([{"eventType": "Microsoft.Storage.BlobCreated"}]).encode()]
)
def test_eventgrid_malformed_is_400_json_and_enqueues_nothing(api: Api, world: World, body: bytes) -> None:
    resp = call(api, "POST", "/api/events/blob", body, headers={"aeg-event-type": "Notification"})
    assert resp.status == 400
    err = resp.json()["error"]
    assert err["code"] == "validation_error" and err["field"]
    assert world.sent() == [] and world.store.rows == {}


# ---------------------------------------------------------------- Azure DevOps hook


def _devops(api: Api, auth: str | None) -> HttpResponse:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    return call(api, "POST", "/api/hooks/azure-devops", event_bytes("devops_git_push.json"), headers=headers)


def test_devops_hook_starts_matching_flow_once(api: Api, world: World) -> None:
    first = _devops(api, basic(DEVOPS_USER, DEVOPS_PASSWORD))
    again = _devops(api, basic(DEVOPS_USER, DEVOPS_PASSWORD))
    assert (first.status, again.status) == (202, 200)
    assert [(r["flow"], r["created"]) for r in first.json()["runs"]] == [("train", True)]
    assert [r["status"] for r in again.json()["runs"]] == ["duplicate"]
    assert len({m.message_id for m in world.sent("start")}) == 1  # re-sent while pending: one message id


@pytest.mark.parametrize("auth", [None, basic(DEVOPS_USER, "wrong"), basic("someone", DEVOPS_PASSWORD), "Bearer x"])
def test_devops_hook_wrong_credentials_is_401(api: Api, world: World, auth: str | None) -> None:
    resp = _devops(api, auth)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert DEVOPS_PASSWORD not in resp.body.decode()
    assert world.sent() == [] and world.store.rows == {}


def test_devops_hook_auth_checked_before_body(api: Api, world: World) -> None:
    resp = call(api, "POST", "/api/hooks/azure-devops", b"{not json")
    assert resp.status == 401


def test_devops_hook_malformed_json_is_400(api: Api, world: World) -> None:
    auth = {"Authorization": basic(DEVOPS_USER, DEVOPS_PASSWORD)}
    resp = call(api, "POST", "/api/hooks/azure-devops", b"{not json", headers=auth)
    assert resp.status == 400
    assert resp.json()["error"]["code"] == "validation_error"
    assert world.sent() == []


# ---------------------------------------------------------------- failures inside a handler


def test_store_failure_is_503_or_500_never_a_traceback(api: Api, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.errors import TransientError

    def boom(*a: object, **k: object) -> None:
        raise TransientError("table service timed out at 10.0.0.4")

    monkeypatch.setattr(world.store, "list_runs", boom)
    resp = call(api, "GET", "/api/runs")
    assert resp.status == 503 and "Retry-After" in resp.headers
    assert b"10.0.0.4" not in resp.body

    def bug(*a: object, **k: object) -> None:
        raise ZeroDivisionError("internal detail")

    monkeypatch.setattr(world.store, "get", bug)
    resp = call(api, "GET", "/api/runs/abc")
    assert resp.status == 500
    assert b"internal detail" not in resp.body and b"ZeroDivision" not in resp.body


def test_api_without_services_uses_process_services(world: World) -> None:
    from shared.wiring import set_services

    set_services(world.services)
    try:
        assert call(Api(), "POST", "/api/flows/train/runs").status == 202
        assert len(world.sent("start")) == 1
    finally:
        set_services(None)
