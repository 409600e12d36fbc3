"""Both Application Insights exporters against a fake ingestion endpoint on loopback.

The fake is Application Insights' ingestion ("Breeze") API as both SDKs speak it:
``POST {IngestionEndpoint}/v2.1/track`` (``/v2/track`` accepted too) with a JSON array of
envelopes, plain or gzip'd (``Content-Encoding: gzip``), answered with the service's
``{"itemsReceived", "itemsAccepted", "errors"}`` body. The connection string points the
real exporters (azure-monitor-opentelemetry-exporter, opencensus-ext-azure) at it:
``InstrumentationKey=00000000-...;IngestionEndpoint=http://127.0.0.1:<port>/``.

One run's telemetry is simulated as the engine emits it (trigger request with a child
span, launch + poll spans for two steps, step/registration/deployment events, one failed
poll), flushed on demand (the exporters' own batching intervals are set to a minute, so
only ``flush()`` can have sent anything), and every decoded envelope is checked: operation
id = the run's trace id, custom dimensions, parent/child ids, no secrets.

The SDKs' self-telemetry (statsbeat, customer sdkstats, the OneSettings control plane and
the ``_OTELRESOURCE_`` metric) is switched off through their documented environment
variables, so the only envelopes are Conveyor's.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shared.telemetry.base import Telemetry
from shared.telemetry.opencensus_exporter import OpenCensusAppInsights
from shared.telemetry.opentelemetry_exporter import OpenTelemetryAppInsights
from shared.telemetry.trace import new_traceparent, parse

IKEY = "00000000-0000-0000-0000-000000000000"
RUN_ID = "retrain-7f3a9c"
FLOW = "retrain"
SECRET = "s3cr3t-value"

SDK_SELF_TELEMETRY_OFF = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "APPLICATIONINSIGHTS_OPENTELEMETRY_RESOURCE_METRIC_DISABLED": "true",
}


class FakeIngestion:
    """Collects the envelopes POSTed to /v2.1/track and /v2/track; answers like the service."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.envelopes: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self._lock = threading.Lock()
        for path in ("/v2.1/track", "/v2/track"):
            server.expect_request(path, method="POST").respond_with_handler(self._track)

    @property
    def connection_string(self) -> str:
        return f"InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{self.server.port}/"

    def _track(self, request: Request) -> Response:
        raw = request.get_data()
        gzipped = request.headers.get("Content-Encoding", "").lower() == "gzip"
        body = gzip.decompress(raw) if gzipped else raw
        items = json.loads(body)
        with self._lock:
            self.requests.append(
                {"path": request.path, "gzip": gzipped, "raw": body.decode("utf-8"), "count": len(items)}
            )
            if self.status == 200:
                self.envelopes.extend(items)
        if self.status != 200:
            return Response(json.dumps({"itemsReceived": len(items), "itemsAccepted": 0, "errors": []}), self.status)
        answer = {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}
        return Response(json.dumps(answer), 200, content_type="application/json")

    def of(self, base_type: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e["data"]["baseType"] == base_type]


@pytest.fixture
def ingestion(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIngestion]:
    for name, value in SDK_SELF_TELEMETRY_OFF.items():
        monkeypatch.setenv(name, value)
    for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"):
        monkeypatch.delenv(name, raising=False)
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield FakeIngestion(server)
    finally:
        server.clear()
        if server.is_running():
            server.stop()


def build_otel(connection_string: str) -> OpenTelemetryAppInsights:
    return OpenTelemetryAppInsights(
        connection_string,
        exporter_options={"disable_offline_storage": True, "timeout": 5.0, "retry_total": 0},
        schedule_delay_millis=60_000,  # nothing leaves before flush()
        flush_timeout_millis=10_000,
    )


def build_opencensus(connection_string: str) -> OpenCensusAppInsights:
    return OpenCensusAppInsights(
        connection_string,
        exporter_options={"enable_local_storage": False, "timeout": 5.0, "export_interval": 60.0, "grace_period": 2.0},
        flush_timeout=10.0,
    )


BUILDERS: dict[str, Callable[[str], Any]] = {"opentelemetry": build_otel, "opencensus": build_opencensus}


@pytest.fixture(params=sorted(BUILDERS))
def exporter_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def simulate_run(tel: Telemetry, run_tp: str) -> dict[str, str]:
    """One run's telemetry as the ingest service and the engine emit it; returns the span ids used."""
    ids: dict[str, str] = {}
    with tel.span(
        "trigger.blob",
        traceparent=run_tp,
        run_id=RUN_ID,
        attributes={"flow": FLOW, "blob": "raw/2024/06/01/data.csv", "sas_token": SECRET},
    ) as trigger:
        ids["trigger"] = parse(trigger.traceparent)[1]  # type: ignore[index]
        with tel.span(
            "ingest.create_run", traceparent=trigger.traceparent, run_id=RUN_ID, attributes={"flow": FLOW}
        ) as child:
            ids["child"] = parse(child.traceparent)[1]  # type: ignore[index]
            child.set("created", True)
        tel.event(
            "run.started",
            traceparent=trigger.traceparent,
            run_id=RUN_ID,
            attributes={"run_id": RUN_ID, "flow": FLOW, "trigger": "blob", "reruns": 0},
        )
    for step, kind in (("prepare", "batch"), ("train", "databricks")):
        base = {"run_id": RUN_ID, "flow": FLOW, "step": step, "attempt": 1}
        with tel.span(
            "step.launch",
            traceparent=run_tp,
            run_id=RUN_ID,
            attributes={**base, "job": f"{RUN_ID}-{step}-1", "kind": kind},
        ) as launch:
            ids[f"{step}.launch"] = parse(launch.traceparent)[1]  # type: ignore[index]
            launch.set("remote_id", f"remote-{step}")
        with tel.span(
            "step.poll", traceparent=run_tp, run_id=RUN_ID, attributes={**base, "remote_id": f"remote-{step}"}
        ) as poll:
            ids[f"{step}.poll"] = parse(poll.traceparent)[1]  # type: ignore[index]
            poll.set("state", "succeeded")
            poll.set("outputs", {"rows": 1200, "uri": "abfss://lake/silver/part-0.parquet"})
        tel.event(
            "step.succeeded", traceparent=run_tp, run_id=RUN_ID, attributes={**base, "remote_id": f"remote-{step}"}
        )
    with (
        pytest.raises(RuntimeError),
        tel.span(
            "step.poll",
            traceparent=run_tp,
            run_id=RUN_ID,
            attributes={"run_id": RUN_ID, "flow": FLOW, "step": "train", "attempt": 2},
        ) as failed,
    ):
        ids["failed.poll"] = parse(failed.traceparent)[1]  # type: ignore[index]
        raise RuntimeError("cluster terminated")
    tel.event(
        "model.registered",
        traceparent=run_tp,
        run_id=RUN_ID,
        attributes={
            "run_id": RUN_ID,
            "flow": FLOW,
            "step": "register",
            "model": "churn",
            "version": "3",
            "client_secret": SECRET,
        },
    )
    tel.event(
        "model.deployed",
        traceparent=run_tp,
        run_id=RUN_ID,
        attributes={"run_id": RUN_ID, "flow": FLOW, "step": "deploy", "decision": "promoted", "metric": {"auc": 0.91}},
    )
    return ids


def props(envelope: dict[str, Any]) -> dict[str, str]:
    return dict(envelope["data"]["baseData"].get("properties") or {})


def parent_span(envelope: dict[str, Any]) -> str:
    """``ai.operation.parentId`` as a bare span id (OpenCensus logs use the legacy ``|trace.span.`` form)."""
    value = envelope["tags"]["ai.operation.parentId"]
    return value.strip("|.").split(".")[-1]


def test_one_run_is_one_operation(ingestion: FakeIngestion, exporter_kind: str) -> None:
    tel = BUILDERS[exporter_kind](ingestion.connection_string)
    run_tp = new_traceparent()
    trace_id, root_span = parse(run_tp)  # type: ignore[misc]
    try:
        ids = simulate_run(tel, run_tp)
        time.sleep(0.2)
        assert ingestion.envelopes == [], "the exporters batch: nothing is sent before flush()"
        tel.flush()
    finally:
        tel.close()

    envelopes = ingestion.envelopes
    kinds = sorted(e["data"]["baseType"] for e in envelopes)
    assert kinds == ["EventData"] * 5 + ["RemoteDependencyData"] * 6 + ["RequestData"]
    assert {r["path"] for r in ingestion.requests} == {"/v2.1/track"}
    for env in envelopes:
        assert env["iKey"] == IKEY
        assert env["tags"]["ai.cloud.role"] == "conveyor"
        assert env["tags"]["ai.operation.id"] == trace_id, env
        assert props(env)["run_id"] == RUN_ID, env
        assert props(env)["flow"] == FLOW, env
    raw = "".join(r["raw"] for r in ingestion.requests)
    assert SECRET not in raw and "sas_token" not in raw and "client_secret" not in raw

    # The trigger is a request; its id is the span id base.span handed to its children.
    (request,) = ingestion.of("RequestData")
    assert request["data"]["baseData"]["id"] == ids["trigger"]
    assert request["data"]["baseData"]["name"] == "trigger.blob"
    assert request["data"]["baseData"]["success"] is True
    assert parent_span(request) == root_span
    assert props(request)["blob"] == "raw/2024/06/01/data.csv"

    deps = {d["data"]["baseData"]["id"]: d for d in ingestion.of("RemoteDependencyData")}
    assert set(deps) == {
        ids[k] for k in ("child", "prepare.launch", "prepare.poll", "train.launch", "train.poll", "failed.poll")
    }
    # The child chains to the request; the step spans hang off the run's own traceparent.
    assert parent_span(deps[ids["child"]]) == ids["trigger"]
    assert props(deps[ids["child"]])["created"] == "true"
    for step in ("prepare", "train"):
        launch, poll = deps[ids[f"{step}.launch"]], deps[ids[f"{step}.poll"]]
        assert parent_span(launch) == parent_span(poll) == root_span
        assert launch["data"]["baseData"]["name"] == "step.launch" and poll["data"]["baseData"]["name"] == "step.poll"
        assert props(launch)["step"] == props(poll)["step"] == step
        assert props(launch)["remote_id"] == f"remote-{step}"  # set during the span
        assert props(launch)["attempt"] == "1"
        assert json.loads(props(poll)["outputs"]) == {"rows": 1200, "uri": "abfss://lake/silver/part-0.parquet"}
    failed = deps[ids["failed.poll"]]
    assert props(failed)["error"] == "RuntimeError: cluster terminated"
    if exporter_kind == "opentelemetry":
        assert failed["data"]["baseData"]["success"] is False
        assert all(d["data"]["baseData"]["type"] == "InProc" for d in deps.values())
    else:  # opencensus marks every in-process dependency successful; the error dimension tells
        assert all(d["data"]["baseData"]["type"] == "INPROC" for d in deps.values())

    events = {e["data"]["baseData"]["name"]: e for e in ingestion.of("EventData")}
    assert sorted(events) == ["model.deployed", "model.registered", "run.started", "step.succeeded"]
    steps = sorted(props(e).get("step", "") for e in ingestion.of("EventData"))
    assert steps == ["", "deploy", "prepare", "register", "train"]
    assert parent_span(events["run.started"]) == ids["trigger"]
    assert parent_span(events["model.registered"]) == parent_span(events["model.deployed"]) == root_span
    assert props(events["model.registered"])["version"] == "3"
    assert json.loads(props(events["model.deployed"])["metric"]) == {"auc": 0.91}


def test_ingestion_failures_never_reach_the_engine(
    ingestion: FakeIngestion, exporter_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """503 from ingestion (no offline storage, no retries): telemetry is dropped and logged, never raised."""
    ingestion.status = 503
    tel = BUILDERS[exporter_kind](ingestion.connection_string)
    run_tp = new_traceparent()
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING), tel.span("step.launch", traceparent=run_tp, run_id=RUN_ID) as sp:
            sp.set("step", "prepare")
        tel.event("step.failed", traceparent=run_tp, run_id=RUN_ID, attributes={"step": "prepare"})
        tel.flush()
    finally:
        tel.close()
    assert time.monotonic() - started < 30
    assert sum(r["count"] for r in ingestion.requests) >= 2  # both records reached the endpoint
    assert ingestion.envelopes == []


def test_unreachable_endpoint_is_not_an_error(monkeypatch: pytest.MonkeyPatch, exporter_kind: str) -> None:
    for name, value in SDK_SELF_TELEMETRY_OFF.items():
        monkeypatch.setenv(name, value)
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    port = server.port
    server.stop()  # nothing listens there any more
    tel = BUILDERS[exporter_kind](f"InstrumentationKey={IKEY};IngestionEndpoint=http://127.0.0.1:{port}/")
    try:
        with tel.span("trigger.manual", traceparent=new_traceparent(), run_id=RUN_ID):
            pass
        tel.event("run.started", traceparent=new_traceparent(), run_id=RUN_ID)
        tel.flush()
    finally:
        tel.close()


class Exploding:
    """Stands in for an SDK exporter whose every call fails."""

    _queue = None
    _worker = None

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"sdk broke in {name}")


def test_sdk_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tel = OpenCensusAppInsights(trace_exporter=Exploding(), event_handler=Exploding())
    with caplog.at_level(logging.WARNING, logger="conveyor.telemetry"):
        with tel.span("step.poll", traceparent=new_traceparent(), run_id=RUN_ID):
            pass
        tel.event("step.failed", traceparent=new_traceparent(), run_id=RUN_ID)
        tel.event("step.failed", traceparent=new_traceparent(), run_id=RUN_ID)
        tel.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert any("span end failed" in m and "sdk broke in export" in m for m in messages), messages
    assert sum("event failed" in m for m in messages) == 1, "a repeated failure is logged loudly once"
