"""LocalTelemetry: JSONL per run, one trace, no secrets, thread-safe; and the factory."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from shared.errors import ValidationError
from shared.settings import Settings
from shared.telemetry.factory import build_telemetry
from shared.telemetry.local import LocalTelemetry, read_trace, scrub, trace_path
from shared.telemetry.trace import new_traceparent, parse

FIELDS = {
    "ts",
    "type",
    "name",
    "trace_id",
    "span_id",
    "parent_span_id",
    "duration_ms",
    "status",
    "run_id",
    "attributes",
}


def test_spans_and_events_form_one_trace(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    root = new_traceparent()
    trace_id, root_span = parse(root)  # type: ignore[misc]
    with tel.span("run", traceparent=root, run_id="r1", attributes={"flow": "train"}) as outer:
        tel.event("step.launched", traceparent=outer.traceparent, run_id="r1", attributes={"step": "work"})
        with tel.span("poll", traceparent=outer.traceparent, run_id="r1") as inner:
            inner.set("progress", 3)
    records = read_trace(tmp_path, "r1")
    assert [(r["type"], r["name"]) for r in records] == [("event", "step.launched"), ("span", "poll"), ("span", "run")]
    assert all(set(r) == FIELDS for r in records)
    assert {r["trace_id"] for r in records} == {trace_id}
    event, poll, run = records
    assert run["parent_span_id"] == root_span
    assert poll["parent_span_id"] == run["span_id"] != root_span
    assert event["parent_span_id"] == run["span_id"] and event["span_id"] is None
    assert poll["attributes"] == {"progress": 3} and run["attributes"] == {"flow": "train"}
    assert run["duration_ms"] >= poll["duration_ms"] >= 0
    assert event["duration_ms"] is None
    assert trace_path(tmp_path, "r1") == tmp_path / "telemetry" / "r1.jsonl"


def test_failed_span_is_recorded_and_error_propagates(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    with pytest.raises(RuntimeError), tel.span("launch", traceparent=new_traceparent(), run_id="r2"):
        raise RuntimeError("backend down")
    (rec,) = read_trace(tmp_path, "r2")
    assert rec["status"] == "error"
    assert rec["attributes"]["error"] == "RuntimeError: backend down"


def test_records_without_run_go_to_host_file(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    tel.event("trigger.unmatched", traceparent=new_traceparent(), attributes={"kind": "blob"})
    assert (tmp_path / "telemetry" / "_host.jsonl").exists()
    assert [r["name"] for r in read_trace(tmp_path, None)] == ["trigger.unmatched"]
    assert read_trace(tmp_path, "never-ran") == []


def test_secrets_never_written(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    attrs = {
        "flow": "train",
        "client_secret": "s3cr3t-1",
        "DEVOPS_PASSWORD": "s3cr3t-2",
        "idempotency_key": "s3cr3t-3",
        "sas_token": "s3cr3t-4",
        "storage_connection": "s3cr3t-5",
        "nested": {"api_key": "s3cr3t-6", "ok": 1, "list": [{"password": "s3cr3t-7"}]},
        "url": "https://acct.blob.core.windows.net/c/b?sv=2024&sig=s3cr3t-8",
        "conn": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=s3cr3t-9",
        "note": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=s3cr3t-10",
    }
    tel.event("e", traceparent=new_traceparent(), run_id="r3", attributes=attrs)
    with tel.span("s", traceparent=new_traceparent(), run_id="r3", attributes=attrs):
        pass
    text = (tmp_path / "telemetry" / "r3.jsonl").read_text()
    assert "s3cr3t" not in text
    rec = read_trace(tmp_path, "r3")[0]
    assert rec["attributes"]["flow"] == "train"
    assert rec["attributes"]["nested"] == {"ok": 1, "list": [{}]}
    assert rec["attributes"]["note"] == "[redacted]"


def test_scrub_makes_values_json_friendly() -> None:
    out = scrub({"p": Path("/x"), "t": (1, 2), "s": {3}})
    assert json.loads(json.dumps(out)) == {"p": "/x", "t": [1, 2], "s": [3]}


@pytest.mark.parametrize("run_id", ["../../etc/passwd", "/abs/path", "a/b", ".hidden", "..", "x" * 400])
def test_run_id_never_escapes_the_telemetry_dir(tmp_path: Path, run_id: str) -> None:
    tel = LocalTelemetry(tmp_path / "home")
    tel.event("e", traceparent=new_traceparent(), run_id=run_id)
    written = list((tmp_path / "home").rglob("*.jsonl"))
    assert len(written) == 1
    assert written[0].parent == tmp_path / "home" / "telemetry"
    assert not written[0].name.startswith(".")
    assert [r["run_id"] for r in read_trace(tmp_path / "home", run_id)] == [run_id]


def test_sanitised_collisions_keep_runs_apart(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    tel.event("one", traceparent=new_traceparent(), run_id="a/b")
    tel.event("two", traceparent=new_traceparent(), run_id="a_b")
    assert [r["name"] for r in read_trace(tmp_path, "a/b")] == ["one"]
    assert [r["name"] for r in read_trace(tmp_path, "a_b")] == ["two"]


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    tp = new_traceparent()
    big = "x" * 5000  # long lines make torn writes visible

    def work(n: int) -> None:
        for i in range(50):
            with tel.span(f"s{n}-{i}", traceparent=tp, run_id="r4", attributes={"pad": big}):
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "telemetry" / "r4.jsonl").read_text().splitlines()
    assert len(lines) == 400
    names = {json.loads(line)["name"] for line in lines}  # every line parses
    assert len(names) == 400


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    tel = LocalTelemetry(tmp_path)
    tel.event("whole", traceparent=new_traceparent(), run_id="r5")
    with (tmp_path / "telemetry" / "r5.jsonl").open("a") as fh:
        fh.write('{"ts": "2024-')
    assert [r["name"] for r in read_trace(tmp_path, "r5")] == ["whole"]


def test_unwritable_home_never_breaks_the_caller(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    tel = LocalTelemetry(blocker)  # <home>/telemetry cannot be created under a file
    with tel.span("s", traceparent=new_traceparent(), run_id="r6"):
        tel.event("e", traceparent=new_traceparent(), run_id="r6")
    assert sum("local telemetry is off" in r.getMessage() for r in caplog.records) == 1


def test_console_echo(tmp_path: Path) -> None:
    out = io.StringIO()
    tel = LocalTelemetry(tmp_path, console=True, stream=out)
    with pytest.raises(ValueError), tel.span("deploy", traceparent=new_traceparent(), run_id="r7"):
        raise ValueError("no")
    line = out.getvalue()
    assert line.startswith("[conveyor] span deploy") and "ERROR" in line and "run=r7" in line


def test_factory_local(tmp_path: Path) -> None:
    tel = build_telemetry(Settings(home=tmp_path))
    assert isinstance(tel, LocalTelemetry) and tel.home == tmp_path


def test_factory_refuses_exporters_it_does_not_have(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        build_telemetry(Settings(home=tmp_path, telemetry_exporter="zipkin"))
    assert err.value.field == "CONVEYOR_TELEMETRY_EXPORTER"
    assert "zipkin" in err.value.message


@pytest.mark.parametrize("exporter", ["opentelemetry", "opencensus"])
def test_factory_app_insights_exporters_need_a_connection_string(tmp_path: Path, exporter: str) -> None:
    """The App Insights exporters exist now (tests/unit/telemetry/test_factory.py); without a connection string
    they are refused, naming the setting."""
    with pytest.raises(ValidationError) as err:
        build_telemetry(Settings(home=tmp_path, telemetry_exporter=exporter))
    assert err.value.field == "APPLICATIONINSIGHTS_CONNECTION_STRING"
