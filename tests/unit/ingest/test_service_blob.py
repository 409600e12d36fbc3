"""Blob triggers: one run per blob version, filters, empty blobs, manifests, settle delay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from shared.engine.model import RunStatus, run_id_for
from shared.errors import ValidationError
from shared.ingest.eventgrid import BlobEvent, parse_delivery
from shared.telemetry.trace import parse as parse_traceparent
from tests.unit.ingest.helpers import FixedClock, consume_starts, event_bytes, flows, load_event, service, starts

NOTIFY = {"aeg-event-type": "Notification"}
BASE = "http://127.0.0.1:10000/devstoreaccount1"


def blob(name: str, *, container: str = "landing", etag: str = '"0x1"', size: int = 10) -> BlobEvent:
    return BlobEvent(
        url=f"{BASE}/{container}/{quote(name)}",
        container=container,
        name=name,
        etag=etag,
        size=size,
        content_type="text/csv",
        event_id=f"id-{name}-{etag}",
        event_time=datetime(2024, 6, 1, tzinfo=UTC),
        api="PutBlob",
    )


def test_recorded_delivery_three_times_makes_one_run_and_one_start() -> None:
    svc, store, queue, tel = service(flows(sales=[{"kind": "blob", "container": "landing", "suffix": ".csv"}]))
    body = event_bytes("blob_created_eventgrid.json")
    outcomes = [svc.ingest_eventgrid(body, NOTIFY)]
    consume_starts(store)
    outcomes += [svc.ingest_eventgrid(body, NOTIFY) for _ in range(2)]
    statuses = [o.results[0].status for o in outcomes]
    assert statuses == ["created", "duplicate", "duplicate"]
    assert len(store.rows) == 1 and store.creates == 1
    run_id = outcomes[0].results[0].run_id
    assert starts(queue) == [run_id]
    msg = queue.sent[0][0]
    assert msg.message_id == run_id and msg.flow == "sales"
    run = store.get(run_id)
    assert run.status is RunStatus.RUNNING and [s.name for s in run.steps] == ["work"]  # consumed
    assert run.trigger.kind == "blob" and run.trigger.blob is not None
    assert run.trigger.blob["name"] == "sales/2024-06-01/part-0001.csv" and run.trigger.blob["size"] == 524288
    assert parse_traceparent(run.traceparent) is not None and msg.traceparent == run.traceparent
    created = [e for e in tel.events if e[0] == "run.created"]
    assert len(created) == 1 and created[0][1] == run.traceparent and created[0][2] == run_id
    assert tel.names().count("trigger.received") == 3


def test_cloudevents_and_eventgrid_delivery_of_one_blob_are_one_run() -> None:
    svc, store, queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    svc.ingest_eventgrid(event_bytes("blob_created_eventgrid.json"), NOTIFY)
    consume_starts(store)
    svc.ingest_eventgrid(event_bytes("blob_created_cloudevents.json"), {})
    assert len(store.rows) == 1 and len(starts(queue)) == 1


def test_a_duplicate_for_a_run_still_pending_sends_its_start_again() -> None:
    """The call that created the run may have died before its send: the retry sends it."""
    svc, store, queue, tel = service(flows(sales=[{"kind": "blob", "container": "landing", "settle_seconds": 30}]))
    clock = svc.clock
    assert isinstance(clock, FixedClock)
    first = svc.ingest_blob_events([blob("a.csv")])[0]
    clock.now += timedelta(seconds=12)
    again = svc.ingest_blob_events([blob("a.csv")])[0]
    assert (again.status, again.run_id, again.created) == ("duplicate", first.run_id, False)
    assert "still pending" in again.reason
    assert starts(queue) == [first.run_id, first.run_id]  # message id = run id: one on Service Bus
    assert [delay for _, delay in queue.sent] == [30.0, 18.0]  # the rest of its settle time
    assert tel.names().count("run.start_resent") == 1
    consume_starts(store)
    svc.ingest_blob_events([blob("a.csv")])
    assert len(starts(queue)) == 2  # past pending: nothing more


def test_run_id_is_per_blob_version() -> None:
    svc, _store, queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    r1 = svc.ingest_blob_events([blob("a.csv", etag='"0x1"')])[0]
    r2 = svc.ingest_blob_events([blob("a.csv", etag='"0x2"')])[0]
    consume_starts(_store)
    r3 = svc.ingest_blob_events([blob("a.csv", etag="0x2")])[0]  # same version, unquoted eTag
    assert r1.status == r2.status == "created" and r1.run_id != r2.run_id
    assert r3.status == "duplicate" and r3.run_id == r2.run_id
    assert r1.run_id == run_id_for("sales", f"{BASE}/landing/a.csv", "0x1")
    assert len(starts(queue)) == 2


def test_same_event_twice_in_one_batch() -> None:
    svc, _store, queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    ev = blob("a.csv")
    results = svc.ingest_blob_events([ev, ev, ev])
    assert [r.status for r in results] == ["created", "duplicate", "duplicate"]
    assert len(starts(queue)) == 1


def test_prefix_suffix_and_container_filters() -> None:
    svc, _store, queue, _ = service(
        flows(
            csvs=[{"kind": "blob", "container": "landing", "prefix": "sales/", "suffix": ".csv"}],
            anything=[{"kind": "blob", "container": "landing"}],
        )
    )
    res = svc.ingest_blob_events([blob("sales/x.csv")])
    assert sorted(r.flow for r in res if r.created) == ["anything", "csvs"]
    res = svc.ingest_blob_events(
        [blob("sales/x.json"), blob("other/x.csv"), blob("sales/y.csv", container="elsewhere")]
    )
    assert [r.flow for r in res if r.created] == ["anything", "anything"]
    assert len(starts(queue)) == 4


def test_zero_length_ignored_when_ignore_empty() -> None:
    svc, store, queue, _ = service(
        flows(
            strict=[{"kind": "blob", "container": "landing"}],
            lenient=[{"kind": "blob", "container": "landing", "ignore_empty": False}],
        )
    )
    res = {r.flow: r for r in svc.ingest_blob_events([blob("empty.csv", size=0)])}
    assert res["strict"].status == "ignored" and "empty" in res["strict"].reason and res["strict"].run_id == ""
    assert res["lenient"].status == "created"
    assert len(store.rows) == 1 and len(starts(queue)) == 1


def test_manifest_waits_then_starts_one_run_for_the_folder() -> None:
    svc, store, queue, _ = service(
        flows(
            drop=[
                {"kind": "blob", "container": "landing", "prefix": "drops/", "suffix": ".csv", "manifest": "_SUCCESS"}
            ]
        )
    )
    waiting = svc.ingest_blob_events([blob("drops/2024-06-01/a.csv"), blob("drops/2024-06-01/b.csv")])
    assert [r.status for r in waiting] == ["ignored", "ignored"]
    assert all(r.reason == "waiting for manifest _SUCCESS" for r in waiting)
    assert store.rows == {} and queue.sent == []
    # The manifest is usually empty: it still starts the run (ignore_empty does not apply to it).
    manifest = blob("drops/2024-06-01/_SUCCESS", size=0)
    for _ in range(3):
        svc.ingest_blob_events([manifest])
        consume_starts(store)
    assert len(store.rows) == 1 and len(starts(queue)) == 1
    run = store.get(starts(queue)[0])
    assert run.trigger.blob is not None
    assert run.trigger.blob["url"] == f"{BASE}/landing/drops/2024-06-01/_SUCCESS"
    assert run.trigger.blob["folder"] == "drops/2024-06-01/"
    assert run.trigger.blob["folder_url"] == f"{BASE}/landing/drops/2024-06-01/"
    # Blobs matching neither the suffix nor the manifest are not this flow's business.
    assert svc.ingest_blob_events([blob("drops/2024-06-01/readme.txt")]) == []


def test_manifest_in_a_folder_with_special_characters() -> None:
    svc, store, _queue, _ = service(flows(drop=[{"kind": "blob", "container": "landing", "manifest": "_SUCCESS"}]))
    res = svc.ingest_blob_events([blob("été 2024; $(x)/_SUCCESS", size=0)])
    run = store.get(res[0].run_id)
    assert run.trigger.blob is not None and run.trigger.blob["folder"] == "été 2024; $(x)/"
    assert run.trigger.blob["folder_url"] == f"{BASE}/landing/{quote('été 2024; $(x)')}/"


def test_settle_seconds_delays_the_start_and_the_sweeper_respects_it() -> None:
    svc, store, queue, _ = service(flows(slow=[{"kind": "blob", "container": "landing", "settle_seconds": 90}]))
    res = svc.ingest_blob_events([blob("a.csv")])
    assert res[0].created
    msg, delay = queue.sent[0]
    assert msg.kind == "start" and delay == 90.0
    assert store.get(res[0].run_id).trigger.blob["settle_seconds"] == 90  # type: ignore[index]


def test_raw_event_dicts_are_validated_then_ingested() -> None:
    svc, _store, _queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    raw = load_event("blob_created_eventgrid.json")
    deleted = dict(raw[0], eventType="Microsoft.Storage.BlobDeleted")
    res = svc.ingest_blob_events([*raw, deleted])
    assert [r.status for r in res] == ["created"]
    broken = json.loads(json.dumps(raw))
    del broken[0]["data"]["url"]
    with pytest.raises(ValidationError) as e:
        svc.ingest_blob_events(broken)
    assert e.value.field == "[0].data.url"


def test_invalid_delivery_enqueues_nothing() -> None:
    svc, store, queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    good = load_event("blob_created_eventgrid.json")[0]
    bad = json.loads(json.dumps(good))
    bad["data"]["contentLength"] = "big"
    with pytest.raises(ValidationError) as e:
        svc.ingest_eventgrid(json.dumps([good, bad]), NOTIFY)
    assert e.value.field == "[1].data.contentLength"
    assert store.rows == {} and queue.sent == []


def test_validation_delivery_creates_nothing() -> None:
    svc, store, queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    out = svc.ingest_eventgrid(
        event_bytes("subscription_validation_eventgrid.json"), {"aeg-event-type": "SubscriptionValidation"}
    )
    assert out.validation == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert out.results == [] and store.rows == {} and queue.sent == []


def test_send_failure_leaves_the_run_pending_for_the_sweeper() -> None:
    svc, store, queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))

    def boom(*_a: object, **_k: object) -> None:
        raise ConnectionError("queue down")

    queue.send = boom  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        svc.ingest_blob_events([blob("a.csv")])
    (run_id,) = store.rows
    assert store.get(run_id).status is RunStatus.PENDING


def test_delivery_parse_matches_service_input() -> None:
    svc, _store, _queue, _ = service(flows(sales=[{"kind": "blob", "container": "landing"}]))
    d = parse_delivery(event_bytes("blob_created_eventgrid.json"), NOTIFY, account=svc.blob_account)
    assert svc.ingest_blob_events(d.events)[0].created
