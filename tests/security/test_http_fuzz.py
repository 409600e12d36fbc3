"""Hypothesis fuzz over every HTTP route of the local host and the scoring endpoint, through the socket.

Requests are generated as bytes a hostile client could send -- any method, route parameters
of any characters, content types, origins, credentials, bodies that are random bytes, JSON
with NaN/huge numbers/surrogates/deep nesting, or the right shape with hostile values -- and
every answer must hold to the contract:

- the server answers (no hang, no dropped connection), never with a 5xx;
- a 4xx is JSON ``{"error": {"message": ...}}`` that says what is wrong;
- a refused request created nothing: no run in the store, nothing on the queue.

``CONVEYOR_FUZZ_EXAMPLES`` sets the examples per test (default 25 in ``make test``; a few
thousand for a real hunt: ``CONVEYOR_FUZZ_EXAMPLES=3000 .venv/bin/python -m pytest
tests/security/test_http_fuzz.py``). With the variable unset the run is derandomized.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.api.handlers import ROUTES
from tests.security.conftest import DEVOPS_PASSWORD, DEVOPS_USER, ScoringServer, SocketHost
from tests.security.wire import Reply, exchange, is_json_error, request

EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES") or 25)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("CONVEYOR_FUZZ_EXAMPLES"),
    database=None,
)

# ---------------------------------------------------------------- strategies

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", "post", "get"])
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/cloudevents-batch+json; charset=utf-8",
        "application/cloudevents+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "json",
        None,
    ]
)
ORIGINS = st.sampled_from([None, None, "http://evil.example", "null", "http://127.0.0.1:1", "file://"])


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "", "\ud800", "../../etc", "$(touch X)"]),
    )


JSON_VALUES = st.recursive(
    scalars(),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def dumps(value: Any) -> bytes:
    """JSON text as a careless or hostile client writes it: NaN/Infinity and lone surrogates kept."""
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


POISON = st.sampled_from(
    [
        b"[" * 5000 + b"]" * 5000,
        b"9" * 5000,
        b'"\\ud800"',
        b"NaN",
        b"-Infinity",
        b"1e400",
        b'"\xff\xfe"',
        b"\xef\xbb\xbf{}",
        b"",
    ]
)


@st.composite
def bodies(draw: st.DrawFn, shape: st.SearchStrategy[Any] | None = None) -> bytes:
    kind = draw(
        st.sampled_from(["shape", "json", "poison", "bytes"] if shape is not None else ["json", "poison", "bytes"])
    )
    if kind == "shape":
        assert shape is not None
        return dumps(draw(shape))
    if kind == "json":
        return dumps(draw(JSON_VALUES))
    if kind == "poison":
        wrap = draw(st.sampled_from([b"%s", b'{"params": {"x": %s}}', b'[{"data": %s}]', b'{"rows": [{"store": %s}]}']))
        return wrap % draw(POISON)
    return draw(st.binary(max_size=200))


def path_value() -> st.SearchStrategy[str]:
    """A route parameter as a client might put it in the path (percent-encoded when it must be)."""
    return st.one_of(
        st.sampled_from(["nightly", "nope", "a" * 300, "..", "%2e%2e", "x%00y", "%ff", "NIGHTLY"]),
        st.text(max_size=20).map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
    )


def fill(pattern: str, values: st.DrawFn) -> str:
    out = pattern
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        out = out[:start] + values(path_value()) + out[end + 1 :]
    return out


ROUTE_PATTERNS = sorted({r.pattern for r in ROUTES} | {"/runtime/webhooks/EventGrid", "/admin/host/status", "/x"})
AUTH = st.sampled_from(
    [
        None,
        "Basic " + base64.b64encode(f"{DEVOPS_USER}:{DEVOPS_PASSWORD}".encode()).decode(),
        "Basic é",
        "Basic !!!",
        "Bearer x",
        "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    ]
)
START_BODY = st.fixed_dictionaries(
    {}, optional={"params": JSON_VALUES, "idempotency_key": scalars(), "from_step": scalars(), "extra": scalars()}
)
EVENT = st.fixed_dictionaries(
    {
        "id": scalars(),
        "eventType": st.sampled_from(["Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobDeleted"]) | scalars(),
        "subject": st.sampled_from(
            [
                "/blobServices/default/containers/landing/blobs/a.csv",
                "/blobServices/default/containers/landing/blobs/../x.csv",
                "/blobServices/default/containers/landing/blobs/\ud800.csv",
            ]
        )
        | scalars(),
        "eventTime": st.sampled_from(["2024-05-01T12:00:00Z", "yesterday"]) | scalars(),
        "data": st.fixed_dictionaries(
            {},
            optional={
                "url": st.sampled_from(["http://127.0.0.1:1/devstoreaccount1/landing/a.csv", "x"]) | scalars(),
                "eTag": scalars(),
                "contentLength": scalars(),
            },
        )
        | JSON_VALUES,
    },
    optional={"specversion": st.sampled_from(["1.0", "0.3"]) | scalars(), "type": scalars(), "source": scalars()},
)
DEVOPS = st.fixed_dictionaries(
    {"id": scalars(), "eventType": st.sampled_from(["git.push", "build.complete"]) | scalars()},
    optional={"resource": JSON_VALUES, "message": JSON_VALUES},
)


# ---------------------------------------------------------------- the contract


def check(reply: Reply, method: str) -> None:
    assert not reply.hung, "the server did not answer"
    assert reply.status is not None, f"connection closed without an answer: {reply.raw[:200]!r}"
    assert reply.status < 500, reply.raw[:500]
    if reply.status >= 400 and method.upper() != "HEAD":
        assert is_json_error(reply), reply.raw[:500]


def send_to_host(host: SocketHost, method: str, path: str, headers: dict[str, str | None], body: bytes) -> Reply:
    before = host.counts()
    raw = request(method, path, host.port, body=body, headers={k: v for k, v in headers.items() if v is not None})
    reply = exchange(host.port, raw)
    check(reply, method)
    if reply.status is not None and reply.status >= 400:
        assert host.counts() == before, f"refused with {reply.status} but created something: {reply.raw[:300]!r}"
    return reply


@FUZZ
@given(data=st.data())
def test_any_request_to_any_route(socket_host: SocketHost, data: st.DataObject) -> None:
    pattern = data.draw(st.sampled_from(ROUTE_PATTERNS))
    path = fill(pattern, data.draw)
    if data.draw(st.booleans()):
        path += "?" + data.draw(
            st.sampled_from(["functionName=blob_created", "functionName=x", "flow=nightly&status=x", "limit=0"])
        )
    headers = {
        "Content-Type": data.draw(CONTENT_TYPES),
        "Origin": data.draw(ORIGINS),
        "aeg-event-type": data.draw(st.sampled_from([None, "Notification", "SubscriptionValidation", "Bogus"])),
        "Authorization": data.draw(AUTH),
        "Idempotency-Key": data.draw(st.none() | HEADER_TEXT),
        "WebHook-Request-Origin": data.draw(st.none() | HEADER_TEXT),
    }
    send_to_host(socket_host, data.draw(METHODS), path, headers, data.draw(bodies()))


@FUZZ
@given(
    flow=st.sampled_from(["nightly", "nightly", "ghost"]),
    route=st.sampled_from(["runs", "cancel", "rerun"]),
    body=bodies(START_BODY),
    key=st.none() | HEADER_TEXT,
)
def test_run_routes_with_hostile_bodies(
    socket_host: SocketHost, flow: str, route: str, body: bytes, key: str | None
) -> None:
    path = {"runs": f"/api/flows/{flow}/runs", "cancel": "/api/runs/nope/cancel", "rerun": "/api/runs/nope/rerun"}
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    reply = send_to_host(socket_host, "POST", path[route], headers, body)
    if route != "runs" or flow == "ghost":
        assert reply.status is not None and reply.status >= 400  # nothing to start or change


@FUZZ
@given(
    route=st.sampled_from(["/api/events/blob", "/runtime/webhooks/EventGrid?functionName=blob_created"]),
    kind=st.sampled_from(["Notification", "SubscriptionValidation"]),
    body=bodies(st.lists(EVENT, min_size=1, max_size=3) | EVENT),
)
def test_event_grid_routes_with_hostile_events(socket_host: SocketHost, route: str, kind: str, body: bytes) -> None:
    send_to_host(socket_host, "POST", route, {"Content-Type": "application/json", "aeg-event-type": kind}, body)


@FUZZ
@given(body=bodies(DEVOPS), auth=AUTH)
def test_devops_hook_with_hostile_payloads(socket_host: SocketHost, body: bytes, auth: str | None) -> None:
    headers = {"Content-Type": "application/json", "Authorization": auth}
    send_to_host(socket_host, "POST", "/api/hooks/azure-devops", headers, body)


# ---------------------------------------------------------------- the scoring endpoint

CELL = scalars() | st.lists(scalars(), max_size=2)
COLUMNS = st.sampled_from(["store", "promo", "price"]) | st.text(max_size=8)
RECORD = st.dictionaries(COLUMNS, CELL, max_size=4) | st.fixed_dictionaries(
    {"store": CELL, "promo": CELL, "price": CELL}
)
SCORING = st.one_of(
    st.fixed_dictionaries({"rows": st.lists(RECORD, max_size=3) | JSON_VALUES}),
    st.fixed_dictionaries({"dataframe_records": st.lists(RECORD, max_size=3) | JSON_VALUES}),
    st.fixed_dictionaries({"instances": st.lists(RECORD, max_size=3)}),
    st.fixed_dictionaries({"inputs": st.dictionaries(COLUMNS, st.lists(CELL, max_size=3), max_size=4) | JSON_VALUES}),
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {"columns": st.lists(COLUMNS, max_size=4) | JSON_VALUES, "data": st.lists(st.lists(CELL, max_size=4))},
                optional={"index": JSON_VALUES, "orient": scalars()},
            )
            | JSON_VALUES
        },
        optional={"params": JSON_VALUES},
    ),
    st.lists(RECORD, max_size=3),
    st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3),
)


@FUZZ
@given(
    method=METHODS,
    path=st.sampled_from(
        [
            "/endpoints/sales/score",
            "/endpoints/stores/score",
            "/endpoints/sales",
            "/health",
            "/endpoints/nope/score",
            "/",
        ]
    ),
    content_type=CONTENT_TYPES,
    origin=ORIGINS,
    body=bodies(SCORING),
)
def test_scoring_endpoint_with_hostile_requests(
    scoring_server: ScoringServer, method: str, path: str, content_type: str | None, origin: str | None, body: bytes
) -> None:
    headers = {k: v for k, v in {"Content-Type": content_type, "Origin": origin}.items() if v is not None}
    reply = exchange(scoring_server.port, request(method, path, scoring_server.port, body=body, headers=headers))
    check(reply, method)


def post_json(server: ScoringServer, path: str, body: Any) -> Any:
    """POST ``body`` as JSON to ``path`` of the scoring server; the reply, checked like every reply."""
    raw = request("POST", path, server.port, body=dumps(body), headers={"Content-Type": "application/json"})
    reply = exchange(server.port, raw)
    check(reply, "POST")
    return reply


@FUZZ
@given(body=SCORING)
def test_scoring_bodies_are_scored_or_refused_by_name(scoring_server: ScoringServer, body: Any) -> None:
    reply = post_json(scoring_server, scoring_server.score_path, body)
    if reply.status == 200:
        assert isinstance(reply.json()["predictions"], list)
    else:
        assert reply.status == 400 and reply.json()["error"]["field"], reply.raw[:400]


@FUZZ
@given(body=SCORING)
def test_routed_scoring_bodies_are_routed_or_refused_by_name(scoring_server: ScoringServer, body: Any) -> None:
    """A routed endpoint (partitions 1 and 2 by store): rows answered by their partition, or a 4xx naming a field."""
    reply = post_json(scoring_server, scoring_server.routed_score_path, body)
    if reply.status == 200:
        doc = reply.json()
        assert len(doc["predictions"]) == len(doc["partitions"]) and set(doc["partitions"]) <= {"1", "2"}
        assert set(doc["models"]) == set(doc["partitions"])
    else:
        assert reply.status in (400, 404) and reply.json()["error"]["field"], reply.raw[:400]
        if reply.status == 404:
            assert reply.json()["error"]["code"] == "unknown_partition"
