"""Issue 6, observation 4: JSON the decoders did not catch answered 500 -- now a 400 naming it.

Through the socket of a running host, on every route that takes a body: 10,000-level nesting,
a 5,000-digit integer, ``1e400``, a lone surrogate (in params, in a blob name), ``NaN`` and
``Infinity``. Each must be a JSON 4xx whose message says what is wrong, and nothing may be
created or enqueued. ``Authorization: Basic <not base64>`` on the DevOps hook is a 401.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.security.conftest import DEVOPS_PASSWORD, DEVOPS_USER, SocketHost
from tests.security.wire import exchange, is_json_error, request

BLOB = "http://127.0.0.1:10000/devstoreaccount1/landing/a.csv"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def eventgrid_event(name: str) -> str:
    return json.dumps(
        [
            {
                "id": "e1",
                "eventType": "Microsoft.Storage.BlobCreated",
                "subject": f"/blobServices/default/containers/landing/blobs/{name}",
                "eventTime": "2024-05-01T12:00:00Z",
                "dataVersion": "",
                "data": {"url": BLOB.replace("a.csv", name), "eTag": "0x1", "contentLength": 10, "api": "PutBlob"},
            }
        ]
    )


DEEP = "[" * 10_000 + "]" * 10_000
BAD_BODIES = {
    "deep": ('{"params": {"x": ' + DEEP + "}}", "nested deeper"),
    "long-int": ('{"params": {"x": ' + "9" * 5000 + "}}", "longer than"),
    "huge-float": ('{"params": {"x": 1e400}}', "out of range"),
    "surrogate": ('{"params": {"x": "\\ud800"}}', "surrogate"),
    "nan": ('{"params": {"x": NaN}}', "NaN"),
    "infinity": ('{"params": {"x": -Infinity}}', "Infinity"),
    "not-utf8": (b'{"params": {"x": "\xff"}}', "UTF-8"),
}

ROUTES = {
    "manual": ("/api/flows/nightly/runs", {}),
    "rerun": ("/api/runs/nope/rerun", {}),
    "cancel": ("/api/runs/nope/cancel", {}),
    "eventgrid": ("/api/events/blob", {"aeg-event-type": "Notification"}),
    "runtime-eventgrid": ("/runtime/webhooks/EventGrid?functionName=blob_created", {"aeg-event-type": "Notification"}),
    "devops": ("/api/hooks/azure-devops", {"Authorization": basic(DEVOPS_USER, DEVOPS_PASSWORD)}),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_json_outside_the_limits_is_a_400_that_names_it(
    socket_host: SocketHost, nothing_created: None, route: str, case: str
) -> None:
    path, headers = ROUTES[route]
    body, expected = BAD_BODIES[case]
    raw_body = body if isinstance(body, bytes) else body.encode()
    raw = request(
        "POST", path, socket_host.port, body=raw_body, headers={"Content-Type": "application/json", **headers}
    )
    reply = exchange(socket_host.port, raw)
    assert reply.status == 400 and is_json_error(reply), reply.raw[:400]
    error = reply.json()["error"]
    assert expected in error["message"] and error["field"] == "body", error


@pytest.mark.parametrize("name", ["\\ud800.csv", "a\\udfff.csv"])
@pytest.mark.parametrize("route", ["eventgrid", "runtime-eventgrid"])
def test_lone_surrogate_in_a_blob_name_is_refused(
    socket_host: SocketHost, nothing_created: None, name: str, route: str
) -> None:
    path, headers = ROUTES[route]
    body = eventgrid_event("NAME").replace("NAME", name).encode()
    raw = request("POST", path, socket_host.port, body=body, headers={"Content-Type": "application/json", **headers})
    reply = exchange(socket_host.port, raw)
    assert reply.status == 400 and "surrogate" in reply.json()["error"]["message"], reply.raw[:400]


def test_body_over_the_json_limit_is_a_413(socket_host: SocketHost, nothing_created: None) -> None:
    body = b'{"params": {"x": "' + b"a" * (1024 * 1024) + b'"}}'
    raw = request(
        "POST", "/api/flows/nightly/runs", socket_host.port, body=body, headers={"Content-Type": "application/json"}
    )
    reply = exchange(socket_host.port, raw)
    assert reply.status == 413 and is_json_error(reply), reply.raw[:400]


@pytest.mark.parametrize(
    "authorization",
    ["Basic é", "Basic !!!!", "Basic " + "ü" * 40, "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Basic"],
)
def test_devops_basic_auth_that_is_not_base64_is_a_401(
    socket_host: SocketHost, nothing_created: None, authorization: str
) -> None:
    raw = request(
        "POST",
        "/api/hooks/azure-devops",
        socket_host.port,
        body=b"{}",
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )
    reply = exchange(socket_host.port, raw)
    assert reply.status == 401 and is_json_error(reply), reply.raw[:400]


def test_devops_credentials_are_checked_before_the_body(socket_host: SocketHost, nothing_created: None) -> None:
    body = ('{"x": ' + DEEP + "}").encode()
    raw = request(
        "POST", "/api/hooks/azure-devops", socket_host.port, body=body, headers={"Content-Type": "application/json"}
    )
    assert exchange(socket_host.port, raw).status == 401


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_queue_bodies_go_through_the_same_decoder(case: str) -> None:
    from shared.engine.executor import parse_message
    from shared.errors import ValidationError

    body, expected = BAD_BODIES[case]
    with pytest.raises(ValidationError, match=expected) as err:
        parse_message(body if isinstance(body, bytes) else body.encode())
    assert err.value.field == "body"
