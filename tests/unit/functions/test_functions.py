"""Every Azure Function called through the v2 programming model, over in-memory services.

Decorated functions are FunctionBuilders; ``.build().get_user_function()`` is the callable the
worker invokes. ``app.get_functions()`` may run once per FunctionApp (it records names), so the
app is indexed once in a module fixture; the functions themselves are built from the blueprints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

import function_app
from functions import blob_events, orchestrator, schedules, webhooks
from shared.api.handlers import ROUTES
from shared.engine.model import Message, Run, RunStatus, StepRun, TriggerContext
from shared.errors import ValidationError
from shared.wiring import set_services
from tests.unit.api.helpers import DEVOPS_PASSWORD, DEVOPS_USER, World, basic, event_bytes, load_event


def user_function(builder: Any) -> Callable[..., Any]:
    return builder.build().get_user_function()


@pytest.fixture(scope="module")
def indexed() -> dict[str, Any]:
    """The app indexed as the worker does: function name -> Function."""
    return {str(f.get_function_name()): f for f in function_app.app.get_functions()}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    set_services(w.services)
    try:
        yield w
    finally:
        set_services(None)


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, **route: str) -> Any:
    headers = {"Content-Type": "application/json", **(headers or {})}  # as every real caller sends
    return func.HttpRequest(
        method, f"http://localhost:7071{path}", headers=headers, params={}, route_params=route, body=body
    )


def json_of(resp: func.HttpResponse) -> Any:
    return json.loads(resp.get_body())


# ---------------------------------------------------------------- indexing


def test_app_indexes_every_function_with_its_trigger(indexed: dict[str, Any]) -> None:
    kinds = {name: fn.get_trigger().get_binding_name() for name, fn in indexed.items()}
    assert kinds == {
        "blob_created": "eventGridTrigger",
        "schedule_tick": "timerTrigger",
        "retention": "timerTrigger",
        "lifecycle_events": "timerTrigger",
        "orchestrator": "serviceBusTrigger",
        **{name: "httpTrigger" for name in ("devops_hook", "start_run", "list_runs", "get_run", "list_instances")},
        **{name: "httpTrigger" for name in ("cancel_run", "rerun", "eventgrid_webhook", "openapi")},
        "console": "httpTrigger",  # the web console (functions/console.py)
        **{name: "httpTrigger" for name in ("dead_letters", "replay_dead_letters")},
    }


def test_http_functions_serve_exactly_the_route_table(indexed: dict[str, Any]) -> None:
    served = set()
    for fn in indexed.values():
        binding = json.loads(fn.get_function_json())["bindings"][0]
        if binding["type"] != "httpTrigger" or binding["route"] == "console/{*path}":
            continue  # the console's pages are not API routes (tests/unit/console/test_routes.py)
        for method in binding["methods"]:
            served.add((method, binding["route"]))
        expected_auth = "ANONYMOUS" if binding["route"] == "hooks/azure-devops" else "FUNCTION"
        assert binding["authLevel"] == expected_auth, binding
    assert served == {(r.method, r.function_route) for r in ROUTES}


def test_bindings_read_app_settings(indexed: dict[str, Any]) -> None:
    timer = json.loads(indexed["schedule_tick"].get_function_json())["bindings"][0]
    assert timer["schedule"] == "%CONVEYOR_SCHEDULE_TICK%" and timer["runOnStartup"] is False
    bus = json.loads(indexed["orchestrator"].get_function_json())["bindings"][0]
    assert bus["queueName"] == "%CONVEYOR_QUEUE_NAME%" and bus["connection"] == "ServiceBusConnection"


# ---------------------------------------------------------------- HTTP


def test_manual_run_accepted(world: World) -> None:
    fn = user_function(webhooks.start_run)
    body = json.dumps({"params": {"n": 1}}).encode()
    resp = fn(http("POST", "/api/flows/train/runs", body, {"Content-Type": "application/json"}, flow="train"))
    assert resp.status_code == 202
    doc = json_of(resp)
    assert doc["status_url"] == f"/api/runs/{doc['run_id']}"
    assert resp.headers["Location"] == doc["status_url"]
    assert resp.mimetype == "application/json"
    assert [m.run_id for m in world.sent("start")] == [doc["run_id"]]


def test_manual_run_unknown_flow_404(world: World) -> None:
    fn = user_function(webhooks.start_run)
    resp = fn(http("POST", "/api/flows/ghost/runs", b"{}", flow="ghost"))
    assert resp.status_code == 404
    assert json_of(resp)["error"]["code"] == "not_found"
    assert world.sent() == [] and world.store.rows == {}


def test_list_and_get_runs(world: World) -> None:
    started = json_of(user_function(webhooks.start_run)(http("POST", "/api/flows/train/runs", flow="train")))
    listed = user_function(webhooks.list_runs)(http("GET", "/api/runs"))
    assert listed.status_code == 200
    assert [r["run_id"] for r in json_of(listed)["runs"]] == [started["run_id"]]
    got = user_function(webhooks.get_run)(http("GET", f"/api/runs/{started['run_id']}", run_id=started["run_id"]))
    assert got.status_code == 200
    assert [s["name"] for s in json_of(got)["steps"]] == ["work", "score"]
    missing = user_function(webhooks.get_run)(http("GET", "/api/runs/abc123", run_id="abc123"))
    assert missing.status_code == 404


def test_list_runs_bad_status_names_field(world: World) -> None:
    req = func.HttpRequest("GET", "http://localhost/api/runs", params={"status": "sideways"}, body=b"")
    resp = user_function(webhooks.list_runs)(req)
    assert resp.status_code == 400
    assert json_of(resp)["error"]["field"] == "status"


def test_cancel_and_rerun_functions(world: World) -> None:
    rid = json_of(user_function(webhooks.start_run)(http("POST", "/api/flows/train/runs", flow="train")))["run_id"]
    resp = user_function(webhooks.cancel_run)(http("POST", f"/api/runs/{rid}/cancel", run_id=rid))
    assert resp.status_code == 202
    assert [m.run_id for m in world.sent("cancel")] == [rid]
    still_running = user_function(webhooks.rerun)(http("POST", f"/api/runs/{rid}/rerun", run_id=rid))
    assert still_running.status_code == 409
    assert world.sent("rerun") == []


def test_eventgrid_webhook_malformed_is_400(world: World) -> None:
    resp = user_function(webhooks.eventgrid_webhook)(
        http("POST", "/api/events/blob", b"[{broken", {"aeg-event-type": "Notification"})
    )
    assert resp.status_code == 400
    assert json_of(resp)["error"]["field"] == "body"
    assert world.sent() == []


def test_eventgrid_webhook_subscription_validation(world: World) -> None:
    code = load_event("subscription_validation_eventgrid.json")[0]["data"]["validationCode"]
    resp = user_function(webhooks.eventgrid_webhook)(
        http(
            "POST",
            "/api/events/blob",
            event_bytes("subscription_validation_eventgrid.json"),
            {"aeg-event-type": "SubscriptionValidation"},
        )
    )
    assert resp.status_code == 200
    assert json_of(resp) == {"validationResponse": code}


def test_eventgrid_webhook_options_handshake(world: World) -> None:
    resp = user_function(webhooks.eventgrid_webhook)(
        http("OPTIONS", "/api/events/blob", headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    )
    assert resp.status_code == 200
    assert resp.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


def test_devops_wrong_credentials_401(world: World) -> None:
    fn = user_function(webhooks.devops_hook)
    body = event_bytes("devops_git_push.json")
    resp = fn(http("POST", "/api/hooks/azure-devops", body, {"Authorization": basic(DEVOPS_USER, "nope")}))
    assert resp.status_code == 401
    assert "WWW-Authenticate" in resp.headers
    assert world.sent() == [] and world.store.rows == {}
    ok = fn(http("POST", "/api/hooks/azure-devops", body, {"Authorization": basic(DEVOPS_USER, DEVOPS_PASSWORD)}))
    assert ok.status_code == 202
    assert len(world.sent("start")) == 1


# ---------------------------------------------------------------- Event Grid trigger


def grid_event(doc: dict[str, Any]) -> func.EventGridEvent:
    return func.EventGridEvent(
        id=doc["id"],
        data=doc["data"],
        topic=doc["topic"],
        subject=doc["subject"],
        event_type=doc["eventType"],
        event_time=datetime(2024, 6, 1, 18, 41, tzinfo=UTC),
        data_version=doc.get("dataVersion", ""),
    )


def test_blob_created_trigger_starts_run_once(world: World) -> None:
    fn = user_function(blob_events.blob_created)
    doc = load_event("blob_created_eventgrid.json")[0]
    fn(grid_event(doc))
    fn(grid_event(doc))  # Event Grid redelivers: no new run (its start again, while it is pending)
    starts = world.sent("start")
    assert len(world.store.rows) == 1 and len({m.message_id for m in starts}) == 1
    run = world.store.get(starts[0].run_id)
    assert run.flow == "train" and run.trigger.blob is not None
    assert run.trigger.blob["url"] == doc["data"]["url"]


def test_blob_created_trigger_ignores_other_events_and_drops_malformed(world: World) -> None:
    fn = user_function(blob_events.blob_created)
    doc = load_event("blob_created_eventgrid.json")[0]
    fn(grid_event({**doc, "eventType": "Microsoft.Storage.BlobDeleted"}))
    fn(grid_event({**doc, "data": {"api": "PutBlob"}}))  # no url/eTag: logged and dropped, not retried
    assert world.sent() == [] and world.store.rows == {}


# ---------------------------------------------------------------- timer


def test_schedule_tick_fires_due_schedule_and_sweeps(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2024, 6, 1, 2, 0, 30, tzinfo=UTC)
    monkeypatch.setattr("shared.clock.utcnow", lambda: now)
    stuck = Run(
        run_id="stuck0001",
        flow="train",
        trigger=TriggerContext(kind="manual"),
        steps=[StepRun(name="work", kind="batch")],
        created_at=now - timedelta(hours=1),
        updated_at=now - timedelta(hours=1),
    )
    world.store.create_if_absent(stuck)
    fn = user_function(schedules.schedule_tick)
    monkeypatch.setattr("shared.clock.utcnow", lambda: now - timedelta(minutes=1))
    fn(TimerRequest(past_due=False))  # 01:59:30: the schedule is first seen; nothing is due after that
    assert [m.flow for m in world.sent("start")] == ["train"]
    monkeypatch.setattr("shared.clock.utcnow", lambda: now)
    fn(TimerRequest(past_due=False))
    starts = [m for m in world.sent("start")]
    nightly = [m for m in starts if m.flow == "nightly"]
    assert len(nightly) == 1
    assert world.store.get(nightly[0].run_id).trigger.schedule["fire_time"] == "2024-06-01T02:00:00Z"  # type: ignore[index]
    assert {m.run_id for m in starts if m.flow == "train"} == {"stuck0001"}
    assert world.blobs.list_blobs("conveyor-state", "schedules/nightly/")  # the record is in the data account
    fn(TimerRequest(past_due=True))  # a second tick in the same minute creates nothing new
    assert len({m.message_id for m in world.sent("start") if m.flow == "nightly"}) == 1
    assert len([r for r in world.store.rows if world.store.get(r).flow == "nightly"]) == 1


def test_schedule_tick_sweeps_even_when_firing_fails(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.ingest.service import IngestService

    calls: list[str] = []

    def broken(self: Any, now: datetime) -> None:
        raise RuntimeError("flows unreadable")

    def sweep(store: Any, queue: Any, now: datetime, grace_seconds: float) -> list[str]:
        calls.append(f"sweep {grace_seconds}")
        return []

    monkeypatch.setattr(IngestService, "fire_schedules", broken)
    monkeypatch.setattr("shared.ingest.sweeper.sweep_pending", sweep)
    with pytest.raises(RuntimeError, match="flows unreadable"):
        user_function(schedules.schedule_tick)(TimerRequest())
    grace = world.settings.visibility_timeout_seconds + world.settings.stall_margin_seconds
    assert calls == [f"sweep {float(grace)}"]


# ---------------------------------------------------------------- Service Bus


def sb_message(body: bytes, delivery_count: int = 1) -> func.ServiceBusMessage:
    """The concrete message the worker hands over (func.ServiceBusMessage is its abstract base)."""
    return ServiceBusMessage(
        body=body, message_id="m-1", delivery_count=delivery_count, application_properties={}, user_properties={}
    )


def test_orchestrator_passes_body_to_executor(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.engine.executor import Executor

    seen: list[tuple[bytes, int, Any]] = []

    class Recorder:
        def __init__(self, services: Any) -> None:
            self.services = services

        def handle_body(self, body: bytes, *, delivery_count: int = 1) -> None:
            seen.append((body, delivery_count, self.services))

    monkeypatch.setattr(Executor, "from_services", classmethod(lambda cls, s: Recorder(s)))
    body = Message(kind="start", run_id="r1", flow="train").with_id().model_dump_json().encode()
    user_function(orchestrator.orchestrator)(sb_message(body, delivery_count=3))
    assert seen == [(body, 3, world.services)]


def test_orchestrator_malformed_message_raises_for_dead_letter(world: World) -> None:
    fn = user_function(orchestrator.orchestrator)
    with pytest.raises(ValidationError):
        fn(sb_message(b'{"kind": "explode", "run_id": 1}'))
    with pytest.raises(ValidationError):
        fn(sb_message(b"not json at all"))


def test_orchestrator_start_advances_the_run(world: World) -> None:
    """The real executor behind the function: a start message moves a pending run on."""
    from tests.fakes import ScriptedBackend

    world.services._backends["batch"] = ScriptedBackend(kind="batch")
    started = json_of(user_function(webhooks.start_run)(http("POST", "/api/flows/train/runs", flow="train")))
    start = world.sent("start")[0]
    user_function(orchestrator.orchestrator)(sb_message(start.model_dump_json().encode()))
    run = world.store.get(started["run_id"])
    assert run.status is not RunStatus.PENDING
    assert run.steps[0].attempt >= 1
