"""Ingest boundary, through the real socket of a running host: both Event Grid routes.

Blob events whose name or URL Conveyor must not act on (traversal, backslashes, a leading
``/``, control characters, another host/port/scheme/account) are *refused*: answered 2xx so
Event Grid does not retry them forever, listed under ``ignored`` with the reason, logged as a
warning and sent as a ``trigger.refused`` telemetry event -- and no run, nothing enqueued.
A malformed envelope is a 400 naming the field on both routes alike. Hostile JSON is a 400
naming the problem, never a 5xx. A percent-encoded name is decoded once, at the edge.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest

from shared.host.runtime import LocalHost
from shared.telemetry.local import read_trace
from tests.e2e.conftest import DEVOPS_PASSWORD, DEVOPS_USER, basic_auth, post

API = "/api/events/blob"
RUNTIME = "/runtime/webhooks/EventGrid?functionName=blob_created"
ROUTES = [API, RUNTIME]
NOTIFY = {"aeg-event-type": "Notification"}
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBJECT = "/blobServices/default/containers/landing/blobs/"


def grid_event(name: str, url: str, **over: Any) -> dict[str, Any]:
    """An Event Grid schema BlobCreated event for ``name`` whose data.url is ``url``."""
    return {
        "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": SUBJECT + name,
        "eventType": BLOB_CREATED,
        "eventTime": "2024-06-01T18:41:00.9584103Z",
        "id": str(uuid.uuid4()),
        "data": {
            "api": "PutBlob",
            "eTag": '"0x8DC0FFEE"',
            "contentType": "text/csv",
            "contentLength": 12,
            "blobType": "BlockBlob",
            "url": url,
        },
        "dataVersion": "",
        "metadataVersion": "1",
        **over,
    }


def cloud_event(name: str, url: str, **over: Any) -> dict[str, Any]:
    ev = grid_event(name, url)
    return {
        "specversion": "1.0",
        "id": ev["id"],
        "source": ev["topic"],
        "type": BLOB_CREATED,
        "subject": ev["subject"],
        "time": ev["eventTime"],
        "data": ev["data"],
        **over,
    }


def nothing_happened(host: LocalHost) -> None:
    s = host.services
    assert s is not None
    assert s.store.list_runs() == []
    assert s.queue.depth() == 0  # type: ignore[attr-defined]


def refused_events(host: LocalHost) -> list[dict[str, Any]]:
    s = host.services
    assert s is not None
    s.telemetry.flush()
    return [r for r in read_trace(s.settings.home, None) if r["name"] == "trigger.refused"]


# (name in the subject, the URL path after /landing/) -- the URL is what a producer would send
BAD_NAMES = [
    pytest.param("../escape.csv", "../escape.csv", "..", id="dotdot"),
    pytest.param("sales/../../escape.csv", "sales/../../escape.csv", "..", id="dotdot-inner"),
    pytest.param("%2e%2e/escape.csv", "%2e%2e/escape.csv", "..", id="dotdot-percent"),
    pytest.param("%2E%2E%2Fescape.csv", "%2E%2E%2Fescape.csv", "..", id="dotdot-slash-percent"),
    pytest.param("%252e%252e/escape.csv", "%25252e%25252e/escape.csv", "..", id="dotdot-double-percent"),
    pytest.param("..\\..\\escape.csv", "..%5C..%5Cescape.csv", "backslash", id="backslash"),
    pytest.param("sales\\x.csv", "sales%5Cx.csv", "backslash", id="backslash-inner"),
    pytest.param("/etc/passwd.csv", "/etc/passwd.csv", "/", id="leading-slash"),
    pytest.param("a\nb.csv", "a%0Ab.csv", "control", id="newline"),
    pytest.param("a\rX-Injected: 1.csv", "a%0DX-Injected%3A%201.csv", "control", id="carriage-return"),
    pytest.param("a\x00b.csv", "a%00b.csv", "control", id="nul"),
    pytest.param("a\x7fb.csv", "a%7Fb.csv", "control", id="del"),
    pytest.param("a\x1b[31mb.csv", "a%1B%5B31mb.csv", "control", id="escape"),
    pytest.param("a\x85b.csv", "a%C2%85b.csv", "control", id="c1-next-line"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("name", "path", "why"), BAD_NAMES)
def test_refused_blob_names_are_2xx_ignored_and_start_nothing(
    idle_host: LocalHost, account_url: str, route: str, name: str, path: str, why: str, caplog: Any
) -> None:
    event = grid_event(name, f"{account_url}/landing/{path}")
    with caplog.at_level(logging.WARNING, logger="conveyor.ingest"):
        status, doc = post(idle_host.url + route, [event], NOTIFY)
    assert 200 <= status < 300, doc
    assert doc["created"] == 0 and [r for r in doc["runs"] if r.get("created")] == []
    (ignored,) = doc["ignored"]
    assert ignored["id"] == event["id"]
    assert ignored["refused"] is True and why in ignored["reason"], ignored
    nothing_happened(idle_host)
    assert any(event["id"] in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    (tel,) = refused_events(idle_host)
    assert tel["attributes"]["event_id"] == event["id"] and tel["attributes"]["reason"] == ignored["reason"]


def test_refused_cloudevents_too(idle_host: LocalHost, account_url: str) -> None:
    event = cloud_event("a\nb.csv", f"{account_url}/landing/a%0Ab.csv")
    for headers in ({}, {"Content-Type": "application/cloudevents-batch+json"}):
        status, doc = post(idle_host.url + API, [event], headers)
        assert status == 202, doc
        assert [i["id"] for i in doc["ignored"]] == [event["id"]] and doc["ignored"][0]["refused"]
    nothing_happened(idle_host)


FOREIGN = [
    pytest.param("https://evil.example.com/devstoreaccount1/landing/x.csv", id="other-host"),
    pytest.param("http://evil.example.com:{port}/devstoreaccount1/landing/x.csv", id="other-host-same-port"),
    pytest.param("http://127.0.0.1:{other}/devstoreaccount1/landing/x.csv", id="other-port"),
    pytest.param("https://127.0.0.1:{port}/devstoreaccount1/landing/x.csv", id="other-scheme"),
    pytest.param("http://127.0.0.1:{port}/otheraccount/landing/x.csv", id="other-account"),
    pytest.param("http://evil.example.com@127.0.0.1:{port}/devstoreaccount1/landing/x.csv", id="userinfo"),
    pytest.param("http://127.0.0.1:{port}/devstoreaccount1/landing/x.csv?comp=list", id="query"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("url", FOREIGN)
def test_urls_outside_the_configured_account_are_refused(
    idle_host: LocalHost, route: str, url: str, e2e_settings: Any
) -> None:
    port = e2e_settings.azurite_blob_port
    event = grid_event("x.csv", url.format(port=port, other=port + 1))
    status, doc = post(idle_host.url + route, [event], NOTIFY)
    assert 200 <= status < 300, doc
    assert doc["created"] == 0
    (ignored,) = doc["ignored"]
    assert ignored["id"] == event["id"] and ignored["refused"] and "account" in ignored["reason"]
    nothing_happened(idle_host)
    assert len(refused_events(idle_host)) == 1


@pytest.mark.parametrize("route", ROUTES)
def test_valid_events_of_the_same_delivery_still_start(idle_host: LocalHost, account_url: str, route: str) -> None:
    bad = grid_event("../escape.csv", f"{account_url}/landing/../escape.csv")
    foreign = grid_event("x.csv", "https://evil.example.com/devstoreaccount1/landing/x.csv")
    good = grid_event("sales/ok.csv", f"{account_url}/landing/sales/ok.csv")
    status, doc = post(idle_host.url + route, [bad, good, foreign], NOTIFY)
    assert status == 202, doc
    assert doc["created"] == 1
    assert sorted(i["id"] for i in doc["ignored"]) == sorted([bad["id"], foreign["id"]])
    s = idle_host.services
    assert s is not None
    (run,) = s.store.list_runs()
    assert run.trigger.blob is not None and run.trigger.blob["name"] == "sales/ok.csv"
    assert s.queue.depth() == 1  # type: ignore[attr-defined]


MALFORMED = [
    pytest.param(grid_event, lambda e: e.pop("eventType"), "[0].eventType", id="no-eventType"),
    pytest.param(grid_event, lambda e: e.__setitem__("eventType", 5), "[0].eventType", id="int-eventType"),
    pytest.param(grid_event, lambda e: e.__setitem__("eventType", ""), "[0].eventType", id="empty-eventType"),
    pytest.param(grid_event, lambda e: e.pop("id"), "[0].id", id="no-id"),
    pytest.param(grid_event, lambda e: e.__setitem__("id", 7), "[0].id", id="int-id"),
    pytest.param(grid_event, lambda e: e.__setitem__("subject", ["x"]), "[0].subject", id="list-subject"),
    pytest.param(grid_event, lambda e: e.__setitem__("eventTime", "yesterday"), "[0].eventTime", id="bad-time"),
    pytest.param(grid_event, lambda e: e.pop("eventTime"), "[0].eventTime", id="no-time"),
    pytest.param(grid_event, lambda e: e.__setitem__("data", "x"), "[0].data", id="string-data"),
    pytest.param(cloud_event, lambda e: e.__setitem__("specversion", "0.3"), "[0].specversion", id="ce-0.3"),
    pytest.param(cloud_event, lambda e: e.__setitem__("specversion", 1.0), "[0].specversion", id="ce-number"),
    pytest.param(cloud_event, lambda e: e.pop("source"), "[0].source", id="ce-no-source"),
    pytest.param(cloud_event, lambda e: e.__setitem__("type", 5), "[0].type", id="ce-int-type"),
    pytest.param(cloud_event, lambda e: e.__setitem__("time", 5), "[0].time", id="ce-int-time"),
    pytest.param(cloud_event, lambda e: e.__setitem__("time", "2024-06-01"), "[0].time", id="ce-date-only"),
    pytest.param(cloud_event, lambda e: e.__setitem__("Bad-Ext", "x"), "[0]", id="ce-extension-name"),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("build", "mutate", "field"), MALFORMED)
def test_malformed_envelopes_are_400_naming_the_field_on_both_routes(
    idle_host: LocalHost, account_url: str, route: str, build: Any, mutate: Any, field: str
) -> None:
    event = build("x.csv", f"{account_url}/landing/x.csv")
    mutate(event)
    status, doc = post(idle_host.url + route, [event], NOTIFY)
    assert status == 400, doc
    assert doc["error"]["field"] == field, doc
    nothing_happened(idle_host)


@pytest.mark.parametrize("route", ROUTES)
def test_a_percent_encoded_subject_is_recorded_decoded(idle_host: LocalHost, account_url: str, route: str) -> None:
    # The producer percent-encoded the name in the subject too; the blob is "sales/my file;$(x).csv".
    event = grid_event("sales/my%20file%3B%24(x).csv", f"{account_url}/landing/sales/my%20file%3B%24%28x%29.csv")
    status, doc = post(idle_host.url + route, [event], NOTIFY)
    assert status == 202 and doc["created"] == 1, doc
    s = idle_host.services
    assert s is not None
    (run,) = s.store.list_runs()
    assert run.trigger.blob is not None
    assert run.trigger.blob["name"] == "sales/my file;$(x).csv"
    # the one name the steps get is the one the URL addresses
    assert s.blobs.parse_url(run.trigger.blob["url"]) == ("landing", "sales/my file;$(x).csv")


HOSTILE_JSON = [
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "nested", id="deep-nesting"),
    pytest.param(b'[{"id": "1", "data": {"contentLength": ' + b"9" * 5000 + b"}}]", "digits", id="huge-integer"),
    pytest.param(b'[{"id": "1", "data": {"contentLength": NaN}}]', "NaN", id="nan"),
    pytest.param(b'[{"id": "1", "data": {"contentLength": 1e400}}]', "range", id="infinity"),
    pytest.param(
        b'[{"id": "1", "subject": "/blobServices/default/containers/landing/blobs/\\ud800.csv"}]',
        "surrogate",
        id="lone-surrogate-in-name",
    ),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("body", "problem"), HOSTILE_JSON)
def test_hostile_json_is_400_naming_the_problem(idle_host: LocalHost, route: str, body: bytes, problem: str) -> None:
    status, doc = post(idle_host.url + route, body, NOTIFY)
    assert status == 400, doc
    assert problem in doc["error"]["message"], doc
    nothing_happened(idle_host)


@pytest.mark.parametrize(("body", "problem"), HOSTILE_JSON)
def test_hostile_json_on_the_devops_hook_is_400(idle_host: LocalHost, body: bytes, problem: str) -> None:
    auth = {"Authorization": basic_auth(DEVOPS_USER, DEVOPS_PASSWORD)}
    status, doc = post(f"{idle_host.url}/api/hooks/azure-devops", body.replace(b"[", b'{"x":[', 1) + b"}", auth)
    assert status == 400, doc
    assert problem in doc["error"]["message"], doc
    nothing_happened(idle_host)


def test_a_lone_surrogate_in_the_devops_branch_is_400(idle_host: LocalHost) -> None:
    push = {
        "id": "n-1",
        "eventType": "git.push",
        "resource": {"repository": {"name": "r"}, "refUpdates": [{"name": "refs/heads/x", "newObjectId": "abc"}]},
    }
    body = json.dumps(push).replace("refs/heads/x", "refs/heads/\\ud800").encode()
    status, doc = post(
        f"{idle_host.url}/api/hooks/azure-devops", body, {"Authorization": basic_auth(DEVOPS_USER, DEVOPS_PASSWORD)}
    )
    assert status == 400 and "surrogate" in doc["error"]["message"], doc
    nothing_happened(idle_host)
