"""Event Grid / CloudEvents parsing, validation handshakes, the local event builder."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.blobs.account import BlobAccount, name_problem
from shared.blobs.base import BlobInfo
from shared.errors import ValidationError
from shared.ingest.eventgrid import (
    BlobEvent,
    Delivery,
    blob_created_event,
    envelope_of_binding,
    parse_events,
    webhook_validation_response,
)
from shared.ingest.eventgrid import parse_delivery as _parse_delivery
from tests.unit.ingest.helpers import event_bytes, load_event

NOTIFY = {"aeg-event-type": "Notification", "Content-Type": "application/json; charset=utf-8"}
URL = "http://127.0.0.1:10000/devstoreaccount1/landing/sales/2024-06-01/part-0001.csv"
AZURITE = BlobAccount.parse("http://127.0.0.1:10000/devstoreaccount1")


def parse_delivery(
    body: bytes | str, headers: dict[str, str] | None = None, account: BlobAccount = AZURITE
) -> Delivery:
    return _parse_delivery(body, headers, account=account)


def _check_recorded_blob(ev: BlobEvent) -> None:
    assert ev.url == URL
    assert ev.container == "landing"
    assert ev.name == "sales/2024-06-01/part-0001.csv"
    assert ev.etag == '"0x8D4BCC2E4835CD0"'
    assert ev.size == 524288
    assert ev.content_type == "text/csv"
    assert ev.api == "PutBlockList"
    assert ev.event_id == "831e1650-001e-001b-66ab-eeb76e069631"
    assert ev.event_time == datetime(2024, 6, 1, 18, 41, 0, 958410, tzinfo=UTC)


def test_recorded_eventgrid_blob_created() -> None:
    d = parse_delivery(event_bytes("blob_created_eventgrid.json"), NOTIFY)
    assert d.kind == "events" and d.schema == "eventgrid" and d.ignored == []
    assert len(d.events) == 1
    _check_recorded_blob(d.events[0])


def test_recorded_cloudevents_blob_created_array_and_batch_and_structured() -> None:
    body = event_bytes("blob_created_cloudevents.json")
    for headers in ({}, {"content-type": "application/cloudevents-batch+json; charset=utf-8"}):
        d = parse_delivery(body, headers)
        assert d.kind == "events" and d.schema == "cloudevents"
        _check_recorded_blob(d.events[0])
    single = json.dumps(load_event("blob_created_cloudevents.json")[0])
    d = parse_delivery(single, {"Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert d.schema == "cloudevents"
    _check_recorded_blob(d.events[0])


def test_both_schemas_give_the_same_event() -> None:
    a = parse_delivery(event_bytes("blob_created_eventgrid.json"), NOTIFY).events[0]
    b = parse_delivery(event_bytes("blob_created_cloudevents.json"), {}).events[0]
    assert a == b


def test_subscription_validation_handshake() -> None:
    d = parse_delivery(
        event_bytes("subscription_validation_eventgrid.json"), {"aeg-event-type": "SubscriptionValidation"}
    )
    assert d.kind == "validation"
    assert d.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    assert d.validation_url is not None and d.validation_url.startswith("https://rp-eastus2.eventgrid.azure.net:553/")
    assert d.validation_response() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}


def test_validation_header_without_validation_event_is_rejected() -> None:
    with pytest.raises(ValidationError) as e:
        parse_delivery(event_bytes("blob_created_eventgrid.json"), {"aeg-event-type": "SubscriptionValidation"})
    assert e.value.field == "[0].eventType"


def test_validation_event_without_code_names_field() -> None:
    doc = load_event("subscription_validation_eventgrid.json")
    del doc[0]["data"]["validationCode"]
    with pytest.raises(ValidationError) as e:
        parse_delivery(json.dumps(doc), {"aeg-event-type": "SubscriptionValidation"})
    assert e.value.field == "[0].data.validationCode"


def test_cloudevents_webhook_abuse_protection() -> None:
    got = webhook_validation_response({"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert got is not None
    assert got["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert got["WebHook-Allowed-Rate"] == "*"
    assert "POST" in got["Allow"]
    assert webhook_validation_response({"webhook-request-origin": "eventgrid.azure.net"}) == got
    assert webhook_validation_response({}) is None
    assert webhook_validation_response({"WebHook-Request-Origin": "evil.example\r\nX-Injected: 1"}) is None
    assert webhook_validation_response({"WebHook-Request-Origin": "other.example"}, ["eventgrid.azure.net"]) is None
    allowed = webhook_validation_response({"WebHook-Request-Origin": "EventGrid.Azure.net"}, ["eventgrid.azure.net"])
    assert allowed is not None and allowed["WebHook-Allowed-Origin"] == "EventGrid.Azure.net"


def test_other_event_types_are_counted_not_failed() -> None:
    doc = load_event("blob_created_eventgrid.json")
    deleted = copy.deepcopy(doc[0])
    deleted["eventType"] = "Microsoft.Storage.BlobDeleted"
    del deleted["data"]["eTag"]  # BlobDeleted has no eTag: it must not be validated as BlobCreated
    d = parse_delivery(json.dumps([deleted, doc[0]]), NOTIFY)
    assert d.kind == "events" and len(d.events) == 1
    (ignored,) = d.ignored
    assert ignored.event_type == "Microsoft.Storage.BlobDeleted" and not ignored.refused


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e["data"].pop("url"), "[0].data.url"),
        (lambda e: e["data"].pop("eTag"), "[0].data.eTag"),
        (lambda e: e["data"].__setitem__("contentLength", "12"), "[0].data.contentLength"),
        (lambda e: e["data"].__setitem__("contentLength", -1), "[0].data.contentLength"),
        (lambda e: e["data"].pop("contentLength"), "[0].data.contentLength"),
        (lambda e: e.pop("data"), "[0].data"),
        (lambda e: e.pop("eventType"), "[0].eventType"),
        (lambda e: e.pop("id"), "[0].id"),
        (lambda e: e.__setitem__("subject", "/containers/x"), "[0].subject"),
        (lambda e: e.__setitem__("eventTime", "yesterday"), "[0].eventTime"),
        (
            lambda e: e["data"].__setitem__("url", "http://127.0.0.1:10000/devstoreaccount1/other/x.csv"),
            "[0].data.url",
        ),
        (lambda e: e["data"].__setitem__("url", "ftp://host/landing/sales/2024-06-01/part-0001.csv"), "[0].data.url"),
    ],
)
def test_malformed_eventgrid_names_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    doc = load_event("blob_created_eventgrid.json")
    mutate(doc[0])
    with pytest.raises(ValidationError) as e:
        parse_delivery(json.dumps(doc), NOTIFY)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.__setitem__("specversion", "0.3"), "[0].specversion"),
        (lambda e: e.pop("source"), "[0].source"),
        (lambda e: e.pop("type"), "[0].type"),
        (lambda e: e["data"].pop("url"), "[0].data.url"),
        (lambda e: e.__setitem__("time", 5), "[0].time"),
    ],
)
def test_malformed_cloudevents_names_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    doc = load_event("blob_created_cloudevents.json")
    mutate(doc[0])
    with pytest.raises(ValidationError) as e:
        parse_delivery(json.dumps(doc), {"content-type": "application/cloudevents-batch+json"})
    assert e.value.field == field


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"", NOTIFY),
        (b"{not json", NOTIFY),
        (b"\xff\xfe\x00", NOTIFY),
        (b"42", NOTIFY),
        (b'"text"', NOTIFY),
        (b"[1, 2]", NOTIFY),
        (b"{}", {"content-type": "application/cloudevents-batch+json"}),
        (b"[]", {"content-type": "application/cloudevents+json"}),
    ],
)
def test_malformed_bodies(body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as e:
        parse_delivery(body, headers)
    assert e.value.field in ("body", "[0]")


@pytest.mark.parametrize(
    "name",
    ["my file.csv", "données/été 2024.csv", "a;rm -rf ~.csv", "$(reboot)`id`.txt", "100%.csv", "x+y&z=1#frag?.csv"],
)
def test_names_are_plain_data(name: str) -> None:
    doc = load_event("blob_created_eventgrid.json")
    doc[0]["subject"] = f"/blobServices/default/containers/landing/blobs/{name}"
    doc[0]["data"]["url"] = f"http://127.0.0.1:10000/devstoreaccount1/landing/{quote(name)}"
    ev = parse_delivery(json.dumps(doc), NOTIFY).events[0]
    assert ev.container == "landing" and ev.name == name


def test_azure_host_style_url() -> None:
    doc = load_event("blob_created_eventgrid.json")
    doc[0]["data"]["url"] = "https://myaccount.blob.core.windows.net/landing/sales/2024-06-01/part-0001.csv"
    azure = BlobAccount.parse("https://myaccount.blob.core.windows.net")
    ev = parse_delivery(json.dumps(doc), NOTIFY, account=azure).events[0]
    assert ev.container == "landing" and ev.name == "sales/2024-06-01/part-0001.csv"
    # the same event against the local account: another scheme, host and port -> refused
    (refused,) = parse_delivery(json.dumps(doc), NOTIFY).ignored
    assert refused.refused and "account" in refused.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2017-06-26T18:41:00.9584103Z", datetime(2017, 6, 26, 18, 41, 0, 958410, tzinfo=UTC)),
        ("2017-06-26T20:41:00+02:00", datetime(2017, 6, 26, 18, 41, tzinfo=UTC)),
    ],
)
def test_event_times_seven_digits_and_offsets(text: str, expected: datetime) -> None:
    doc = load_event("blob_created_eventgrid.json")
    doc[0]["eventTime"] = text
    assert parse_delivery(json.dumps(doc), NOTIFY).events[0].event_time == expected
    cloud = load_event("blob_created_cloudevents.json")
    cloud[0]["time"] = text
    assert parse_delivery(json.dumps(cloud), {}).events[0].event_time == expected


def test_functions_bindings_become_their_envelopes() -> None:
    ev0 = load_event("blob_created_eventgrid.json")[0]
    grid = SimpleNamespace(
        id=ev0["id"],
        topic=ev0["topic"],
        subject=ev0["subject"],
        event_type=ev0["eventType"],
        event_time=datetime(2024, 6, 1, 18, 41),  # naive from the binding: taken as UTC
        data_version="",
        get_json=lambda: ev0["data"],
    )
    d = parse_events([envelope_of_binding(grid)], account=AZURITE)
    (ev,) = d.events
    assert ev.name == "sales/2024-06-01/part-0001.csv" and ev.size == 524288
    assert ev.event_time == datetime(2024, 6, 1, 18, 41, tzinfo=UTC)
    ce0 = load_event("blob_created_cloudevents.json")[0]
    cloud = SimpleNamespace(
        id=ce0["id"],
        source=ce0["source"],
        type=ce0["type"],
        specversion="1.0",
        subject=ce0["subject"],
        time=datetime(2024, 6, 1, 18, 41, tzinfo=UTC),
        datacontenttype=None,
        dataschema=None,
        extension_attrs={},
        get_json=lambda: ce0["data"],
    )
    assert parse_events([envelope_of_binding(cloud)], account=AZURITE).events == d.events
    deleted = SimpleNamespace(**{**vars(grid), "event_type": "Microsoft.Storage.BlobDeleted"})
    assert parse_events([envelope_of_binding(deleted)], account=AZURITE).events == []
    broken = SimpleNamespace(**{**vars(grid), "get_json": lambda: {"url": ev0["data"]["url"]}})
    with pytest.raises(ValidationError) as e:
        parse_events([envelope_of_binding(broken)], account=AZURITE)
    assert e.value.field == "[0].data.eTag"
    no_id = SimpleNamespace(**{**vars(grid), "id": None})
    with pytest.raises(ValidationError) as e:
        parse_events([envelope_of_binding(no_id)], account=AZURITE)
    assert e.value.field == "[0].id"


def _info(name: str, size: int = 7) -> BlobInfo:
    return BlobInfo(
        container="landing",
        name=name,
        url=f"http://127.0.0.1:10000/devstoreaccount1/landing/{quote(name)}",
        etag='"0x8DC0FFEE"',
        size=size,
        last_modified=datetime(2024, 6, 1, 12, 0, 1, 500000, tzinfo=UTC),
        content_type="text/csv",
    )


def test_blob_created_event_is_a_real_event_grid_event() -> None:
    event = blob_created_event(_info("in/my file.csv"), "devstoreaccount1")
    assert set(event) == {"topic", "subject", "eventType", "eventTime", "id", "data", "dataVersion", "metadataVersion"}
    assert event["eventType"] == "Microsoft.Storage.BlobCreated" and event["metadataVersion"] == "1"
    assert event["topic"].endswith("/providers/Microsoft.Storage/storageAccounts/devstoreaccount1")
    assert event["subject"] == "/blobServices/default/containers/landing/blobs/in/my file.csv"
    data = event["data"]
    assert data["api"] == "PutBlob" and data["blobType"] == "BlockBlob"
    assert {"clientRequestId", "requestId", "eTag", "contentType", "contentLength", "url", "sequencer"} <= set(data)
    assert "batchId" in data["storageDiagnostics"]
    # The same shape the real template has: it round-trips through our own parser.
    d = parse_delivery(json.dumps([event]), NOTIFY)
    ev = d.events[0]
    assert (ev.container, ev.name, ev.size, ev.etag) == ("landing", "in/my file.csv", 7, '"0x8DC0FFEE"')
    assert ev.event_time == datetime(2024, 6, 1, 12, 0, 1, 500000, tzinfo=UTC)
    # Event ids are unique per emission.
    assert blob_created_event(_info("a"), "x")["id"] != blob_created_event(_info("a"), "x")["id"]


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_blob_name_round_trips_or_is_refused(name: str) -> None:
    """Every name Conveyor accepts round-trips exactly; every other one is refused, never a crash."""
    event = blob_created_event(_info(name), "devstoreaccount1")
    d = parse_events([event], account=AZURITE)
    if name_problem(name) is None:
        (ev,) = d.events
        assert ev.name == name and ev.container == "landing"
    else:
        (ignored,) = d.ignored
        assert d.events == [] and ignored.refused and ignored.reason.startswith("blob name ")
