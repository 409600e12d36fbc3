"""The local host's parts with in-memory doubles: routes, watcher, workers, scheduler, waiting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shared.api.http import HttpRequest, json_response
from shared.blobs.base import BlobInfo, BlobStore, StrPath
from shared.engine.model import Message, Run, RunStatus, StepRun, TriggerContext
from shared.errors import NotFoundError, TransientError, ValidationError
from shared.flows.model import FlowsFile
from shared.host.runtime import RunWaitTimeout, wait_for_run
from shared.host.scheduler import Scheduler
from shared.host.server import HostApp, functions_blob_created
from shared.host.watcher import BlobWatcher, watched_containers
from shared.host.worker import QueueWorkers
from shared.ingest.service import EventGridOutcome, IngestResult
from shared.queue.base import Received
from shared.settings import Settings
from tests.fakes import MemoryQueue, MemoryRunStore
from tests.unit.ingest.helpers import STEP

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------- HostApp routes


class FakeApi:
    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []

    def dispatch(self, req: HttpRequest) -> Any:
        self.requests.append(req)
        return json_response(201, {"path": req.path, "query": req.query})


def app_with(sink_calls: list[Any]) -> tuple[HostApp, FakeApi]:
    """A HostApp whose Event Grid sink records (body, headers) and reports one created run."""
    api = FakeApi()

    def sink(body: bytes, headers: Any) -> EventGridOutcome:
        sink_calls.append(body)
        return EventGridOutcome(results=[IngestResult("f", "r1", True, "created")], events=1)

    return HostApp(None, api=api, eventgrid=sink), api


def ingest_services() -> SimpleNamespace:
    """Just what IngestService.from_services reads, over the in-memory store and queue."""
    flows = FlowsFile.model_validate(
        {"flows": {"f": {"triggers": [{"kind": "blob", "container": "landing"}], "steps": [STEP]}}}
    )
    return SimpleNamespace(
        store=MemoryRunStore(), queue=MemoryQueue(), flows=flows, settings=Settings(env={}), telemetry=None
    )


def ingest_app() -> tuple[HostApp, SimpleNamespace]:
    """A HostApp whose sink is the real one (``functions_blob_created``) over in-memory services."""
    services = ingest_services()
    return HostApp(None, api=FakeApi(), eventgrid=functions_blob_created(services)), services  # type: ignore[arg-type]


def blob_event(name: str = "a.csv", **over: Any) -> dict[str, Any]:
    return {
        "id": f"e-{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/landing/blobs/{name}",
        "eventTime": "2024-05-01T12:00:00Z",
        "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "data": {
            "url": f"http://127.0.0.1:10000/devstoreaccount1/landing/{name}",
            "eTag": "0x1",
            "contentLength": 3,
            "api": "PutBlob",
            "blobType": "BlockBlob",
        },
        **over,
    }


EG = "/runtime/webhooks/EventGrid?functionName=blob_created"


def test_status_route() -> None:
    app, _ = app_with([])
    status, body, _ = app.handle("GET", "/admin/host/status", {}, b"")
    assert status == 200 and json.loads(body) == {"state": "Running"}


def test_api_requests_go_to_dispatch_with_query_and_body() -> None:
    app, api = app_with([])
    status, _body, headers = app.handle("POST", "/api/flows/x/runs?a=1", {"X-H": "v"}, b'{"k": 1}')
    assert status == 201
    req = api.requests[0]
    assert (req.method, req.path, req.query, req.body) == ("POST", "/api/flows/x/runs", {"a": "1"}, b'{"k": 1}')
    assert req.headers["x-h"] == "v"
    assert headers["Content-Type"].startswith("application/json")


def test_unknown_path_is_404_json() -> None:
    app, _ = app_with([])
    status, body, _ = app.handle("GET", "/nope", {}, b"")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_eventgrid_subscription_validation_handshake() -> None:
    app, services = ingest_app()
    body = (Path(__file__).parents[2] / "events/subscription_validation_eventgrid.json").read_bytes()
    status, out, _ = app.handle("POST", EG, {"aeg-event-type": "SubscriptionValidation"}, body)
    assert status == 200 and json.loads(out) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert services.store.rows == {} and services.queue.sent == []


def test_eventgrid_notification_goes_to_sink() -> None:
    calls: list[Any] = []
    app, _ = app_with(calls)
    body = json.dumps([blob_event()]).encode()
    status, out, _ = app.handle("POST", EG, {"Aeg-Event-Type": "Notification"}, body)
    assert status == 202
    assert calls == [body]
    doc = json.loads(out)
    assert doc["created"] == 1 and doc["events"] == 1 and doc["ignored"] == [] and doc["function"] == "blob_created"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/runtime/webhooks/EventGrid?functionName=nope", {"aeg-event-type": "Notification"}, 404),
        ("/runtime/webhooks/EventGrid", {"aeg-event-type": "Notification"}, 400),
        (EG, {}, 400),
        (EG, {"aeg-event-type": "Bogus"}, 400),
    ],
)
def test_eventgrid_host_rejections_never_reach_the_sink(path: str, headers: dict[str, str], status: int) -> None:
    calls: list[Any] = []
    app, _ = app_with(calls)
    got, out, _hdrs = app.handle("POST", path, headers, json.dumps([blob_event()]).encode())
    assert got == status
    assert "error" in json.loads(out)
    assert calls == []


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        ({"aeg-event-type": "Notification"}, b"{not json", "body"),
        ({"aeg-event-type": "Notification"}, b"[]", "body"),
        ({"aeg-event-type": "Notification"}, b"[1, 2]", "[0]"),
        ({"aeg-event-type": "Notification"}, b"[{}]", "[0].id"),
        ({"aeg-event-type": "SubscriptionValidation"}, b'[{"data": {}}]', "[0].id"),
        ({"aeg-event-type": "Notification"}, json.dumps([blob_event(), blob_event(data={})]).encode(), "[1].data.url"),
    ],
)
def test_eventgrid_malformed_deliveries_are_400_and_ingest_nothing(
    headers: dict[str, str], body: bytes, field: str
) -> None:
    app, services = ingest_app()
    got, out, _hdrs = app.handle("POST", EG, headers, body)
    assert got == 400
    assert json.loads(out)["error"]["field"] == field
    assert services.store.rows == {} and services.queue.sent == []


def test_sink_errors_map_like_the_api() -> None:
    def sink(body: Any, headers: Any) -> Any:
        raise ValidationError("bad url", field="[0].data.url")

    app = HostApp(None, api=FakeApi(), eventgrid=sink)
    status, out, _ = app.handle("POST", EG, {"aeg-event-type": "Notification"}, json.dumps([blob_event()]).encode())
    assert status == 400 and json.loads(out)["error"]["field"] == "[0].data.url"


def test_functions_sink_ingests_valid_events_and_lists_the_rest() -> None:
    app, services = ingest_app()
    deleted = blob_event("b.csv", eventType="Microsoft.Storage.BlobDeleted")
    refused = blob_event("../c.csv")
    body = json.dumps([blob_event(), deleted, refused]).encode()
    status, out, _ = app.handle("POST", EG, {"aeg-event-type": "Notification"}, body)
    assert status == 202
    doc = json.loads(out)
    assert doc["events"] == 3 and doc["created"] == 1
    assert [(i["id"], i["refused"]) for i in doc["ignored"]] == [("e-b.csv", False), ("e-../c.csv", True)]
    assert len(services.store.rows) == 1 and len(services.queue.sent) == 1


# ---------------------------------------------------------------- watcher


class MemoryBlobs(BlobStore):
    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], BlobInfo] = {}
        self.n = 0

    def put(self, container: str, name: str) -> BlobInfo:
        self.n += 1
        info = BlobInfo(
            container,
            name,
            f"http://127.0.0.1:1/devstoreaccount1/{container}/{name}",
            f"0x{self.n:X}",
            10,
            T0 + timedelta(seconds=self.n),
        )
        self.blobs[(container, name)] = info
        return info

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        if container == "missing":
            raise NotFoundError("no container")
        return [i for (c, n), i in sorted(self.blobs.items()) if c == container and n.startswith(prefix)]

    def upload(self, container: str, name: str, data: bytes, overwrite: bool = True) -> BlobInfo:
        return self.put(container, name)

    def upload_file(self, container: str, name: str, path: StrPath) -> BlobInfo:
        return self.put(container, name)

    def download(self, container: str, name: str) -> bytes:
        return b""

    def download_to(self, container: str, name: str, path: StrPath) -> None:
        pass

    def info(self, container: str, name: str) -> BlobInfo | None:
        return self.blobs.get((container, name))

    def url(self, container: str, name: str) -> str:
        return f"http://127.0.0.1:1/devstoreaccount1/{container}/{name}"

    def parse_url(self, url: str) -> tuple[str, str]:
        raise NotImplementedError


def make_watcher(tmp_path: Path, blobs: MemoryBlobs, sent: list[Any], fail: list[bool] | None = None) -> BlobWatcher:
    def deliver(url: str, events: list[dict[str, Any]]) -> int:
        if fail and fail[0]:
            raise TransientError("host down")
        sent.append((url, events))
        return 202

    settings = Settings(home=tmp_path, root=tmp_path, flows_file=tmp_path / "flows.yaml")
    return BlobWatcher(settings, blobs, "http://127.0.0.1:7071/", containers=["landing", "missing"], deliver=deliver)


def test_watcher_emits_blobcreated_for_new_and_changed_blobs_only(tmp_path: Path) -> None:
    blobs, sent = MemoryBlobs(), []
    w = make_watcher(tmp_path, blobs, sent)
    blobs.put("landing", "a.csv")
    blobs.put("apps", "ignored.py")  # not a watched container
    assert len(w.scan_once()) == 1
    url, events = sent[0]
    assert url == "http://127.0.0.1:7071/runtime/webhooks/EventGrid?functionName=blob_created"
    ev = events[0]
    assert ev["eventType"] == "Microsoft.Storage.BlobCreated"
    assert ev["subject"].endswith("/containers/landing/blobs/a.csv")
    assert ev["data"]["eTag"] == blobs.blobs[("landing", "a.csv")].etag
    assert w.scan_once() == []  # nothing new
    blobs.put("landing", "a.csv")  # overwritten: new eTag
    assert len(w.scan_once()) == 1
    assert len(sent) == 2


def test_watcher_remembers_across_restarts(tmp_path: Path) -> None:
    blobs, sent = MemoryBlobs(), []
    blobs.put("landing", "a.csv")
    make_watcher(tmp_path, blobs, sent).scan_once()
    assert json.loads((tmp_path / "watcher.json").read_text())["seen"]
    again = make_watcher(tmp_path, blobs, sent)
    assert again.scan_once() == []
    assert len(sent) == 1


def test_watcher_retries_a_failed_delivery_next_pass(tmp_path: Path) -> None:
    blobs, sent = MemoryBlobs(), []
    fail = [True]
    w = make_watcher(tmp_path, blobs, sent, fail)
    blobs.put("landing", "a.csv")
    assert w.scan_once() == []
    fail[0] = False
    assert len(w.scan_once()) == 1
    assert len(sent) == 1


def test_watched_containers_from_flows() -> None:
    from shared.flows.loader import load_flows_text

    flows = load_flows_text(
        """
flows:
  a:
    triggers: [{kind: blob, container: landing}, {kind: manual}]
    steps: [{name: s, kind: databricks, params: {python_file: x.py}}]
  b:
    triggers: [{kind: blob, container: drops}, {kind: blob, container: landing, suffix: .csv}]
    steps: [{name: s, kind: databricks, params: {python_file: x.py}}]
"""
    )
    assert watched_containers(flows) == ["drops", "landing"]


# ---------------------------------------------------------------- workers


def start(run_id: str = "r1") -> Message:
    return Message(kind="start", run_id=run_id, flow="f")


def test_worker_completes_handled_messages() -> None:
    q = MemoryQueue()
    q.send(start("r1"))
    q.send(start("r2"))
    seen: list[tuple[str, int]] = []
    w = QueueWorkers(q, lambda m, delivery_count=1: seen.append((m.run_id, delivery_count)), batch=8)
    assert w.process_available() == 2
    assert seen == [("r1", 1), ("r2", 1)]
    assert q.items == [] and w.handled == 2


def test_worker_leaves_failed_messages_for_redelivery() -> None:
    q = MemoryQueue()
    q.send(start())
    calls: list[int] = []

    def handle(m: Message, delivery_count: int = 1) -> None:
        calls.append(delivery_count)
        if delivery_count < 2:
            raise TransientError("storage busy")

    w = QueueWorkers(q, handle, visibility_timeout=30)
    w.process_available()
    assert len(q.items) == 1 and w.failed == 1  # still there, invisible for 30s
    assert w.process_available() == 0
    q.advance(31)
    w.process_available()
    assert calls == [1, 2] and q.items == []


def test_worker_dead_letters_invalid_and_over_delivered_messages() -> None:
    q = MemoryQueue()
    q.send(start("bad"))

    def handle(m: Message, delivery_count: int = 1) -> None:
        raise ValidationError("no such step", field="step")

    w = QueueWorkers(q, handle)
    w.process_available()
    assert q.items == [] and q.dead[0][1] == "InvalidMessage"

    q.send(start("flaky"))
    w2 = QueueWorkers(
        q,
        lambda m, delivery_count=1: (_ for _ in ()).throw(TransientError("x")),
        visibility_timeout=1,
        max_delivery_count=2,
    )
    for _ in range(3):
        w2.process_available()
        q.advance(2)
    assert [d[1] for d in q.dead] == ["InvalidMessage", "MaxDeliveryCountExceeded"]


class CountingQueue(MemoryQueue):
    """Counts handler failures on the message (as the Storage Queue adapter does), not deliveries."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[str, int] = {}
        self.errors: list[str] = []

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        got = super().receive(max_messages, visibility_timeout)
        return [Received(r.message, r.dequeue_count, r.handle, self.failures.get(r.message.run_id, 0)) for r in got]

    def abandon(self, received: Received, error: str) -> None:
        self.failures[received.message.run_id] = received.failures + 1
        self.errors.append(error)
        received.handle.visible_at = self.now + 1


def test_worker_counts_handler_failures_not_deliveries_lost_to_a_dead_host() -> None:
    q = CountingQueue()
    q.send(start("r1"))
    outcomes: list[str] = []
    w = QueueWorkers(q, lambda m, delivery_count=1: outcomes.append("ok"), visibility_timeout=1, max_delivery_count=2)
    for _ in range(4):  # taken four times by hosts that died before finishing: not failures
        assert len(q.receive(visibility_timeout=1)) == 1
        q.advance(2)
    w.process_available()
    assert outcomes == ["ok"] and q.items == [] and q.dead == []

    q.send(start("r2"))
    failing = QueueWorkers(
        q,
        lambda m, delivery_count=1: (_ for _ in ()).throw(TransientError("store busy")),
        max_delivery_count=2,
    )
    for _ in range(3):
        failing.process_available()
        q.advance(2)
    assert q.failures["r2"] == 2 and q.errors == ["TransientError: store busy"] * 2
    assert [(m.run_id, reason) for m, reason, _ in q.dead] == [("r2", "MaxDeliveryCountExceeded")]


def test_worker_threads_start_and_stop() -> None:
    q = MemoryQueue()
    done: list[str] = []
    w = QueueWorkers(q, lambda m, delivery_count=1: done.append(m.run_id), count=2, idle_min=0.01, idle_max=0.02)
    w.start()
    q.send(start("t1"))
    import time

    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    w.stop()
    assert done == ["t1"]


# ---------------------------------------------------------------- scheduler


def test_scheduler_fires_every_tick_and_sweeps_periodically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fired: list[datetime] = []
    swept: list[tuple[datetime, float]] = []

    class Ingest:
        def fire_schedules(self, now: datetime) -> list[Any]:
            fired.append(now)
            return []

    def fake_sweep(services: Any, now: datetime) -> list[str]:
        swept.append((now, services.settings.visibility_timeout_seconds + services.settings.stall_margin_seconds))
        return []

    monkeypatch.setattr("shared.ingest.sweeper.sweep", fake_sweep)

    class Svc:
        settings = Settings(home=tmp_path, visibility_timeout_seconds=40, stall_margin_seconds=2)
        store = MemoryRunStore()
        queue = MemoryQueue()

    sch = Scheduler(Svc(), ingest=Ingest(), sweep_every=30)  # type: ignore[arg-type]
    for s in (0, 10, 31, 40):
        sch.tick(T0 + timedelta(seconds=s))
    assert fired == [T0 + timedelta(seconds=s) for s in (0, 10, 31, 40)]
    assert swept == [(T0, 42), (T0 + timedelta(seconds=31), 42)]
    assert Scheduler(Svc()).sweep_every == Svc.settings.sweep_interval_seconds == 10  # type: ignore[arg-type]


def test_scheduler_survives_a_failing_fire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    swept: list[Any] = []
    monkeypatch.setattr("shared.ingest.sweeper.sweep", lambda *a, **k: swept.append(a) or [])

    class Ingest:
        def fire_schedules(self, now: datetime) -> list[Any]:
            raise TransientError("table down")

    class Svc:
        settings = Settings(home=tmp_path)
        store = MemoryRunStore()
        queue = MemoryQueue()

    Scheduler(Svc(), ingest=Ingest()).tick(T0)  # type: ignore[arg-type]
    assert len(swept) == 1


# ---------------------------------------------------------------- waiting


def make_run(run_id: str, status: RunStatus, flow: str = "f", created: datetime = T0) -> Run:
    return Run(
        run_id=run_id,
        flow=flow,
        status=status,
        trigger=TriggerContext(kind="manual"),
        steps=[StepRun(name="s", kind="batch")],
        created_at=created,
        updated_at=created,
    )


def test_wait_for_run_by_id_reports_progress_until_terminal() -> None:
    store = MemoryRunStore()
    store.create_if_absent(make_run("r1", RunStatus.RUNNING))
    seen: list[str] = []

    def progress(run: Run) -> None:
        seen.append(run.status.value)
        if len(seen) == 2:
            cur = store.get("r1")
            store.save(replace_status(cur, RunStatus.SUCCEEDED))

    run = wait_for_run(store, "r1", timeout=5, on_progress=progress, poll=0.01)
    assert run.status is RunStatus.SUCCEEDED
    assert seen[:2] == ["running", "running"] and seen[-1] == "succeeded"


def replace_status(run: Run, status: RunStatus) -> Run:
    return run.model_copy(update={"status": status})


def test_wait_for_run_by_predicate_follows_the_newest_match() -> None:
    store = MemoryRunStore()
    store.create_if_absent(make_run("old", RunStatus.SUCCEEDED, flow="g"))
    store.create_if_absent(make_run("new", RunStatus.FAILED, flow="g", created=T0 + timedelta(minutes=1)))
    store.create_if_absent(make_run("other", RunStatus.SUCCEEDED, flow="h", created=T0 + timedelta(minutes=2)))
    run = wait_for_run(store, lambda r: r.flow == "g", timeout=1, poll=0.01)
    assert run.run_id == "new"


def test_wait_for_run_times_out_with_the_last_status() -> None:
    store = MemoryRunStore()
    store.create_if_absent(make_run("r1", RunStatus.RUNNING))
    with pytest.raises(RunWaitTimeout, match="last status running"):
        wait_for_run(store, "r1", timeout=0.05, poll=0.01)
    with pytest.raises(RunWaitTimeout, match="never appeared"):
        wait_for_run(store, "absent", timeout=0.05, poll=0.01)
