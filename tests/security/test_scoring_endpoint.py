"""The local scoring endpoint: its HTTP layer (issue 6, obs. 5) and MLflow's scoring protocol (issue 9).

Through the socket of the real server process (the one ``LocalScoringDeployer`` starts) serving
a small scikit-learn model saved as MLflow saves it. The server used to hang on a negative
Content-Length, answer 500 for ``10**400``, ``"NaN"`` and deep nesting, and echo exception
text; now each is a JSON 4xx naming the field. Every payload of MLflow's protocol gives the
same predictions as MLflow's own scoring server (``mlflow.pyfunc.scoring_server``, served on
loopback for the comparison), so one client works against both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import FEATURES, ScoringServer
from tests.security.wire import chunked, exchange, is_json_error, request

JSON = {"Content-Type": "application/json"}
ROWS = [{"store": 2, "promo": 1, "price": 3.2}, {"store": 5, "promo": 0, "price": 1.5}]
COLUMNS = ["store", "promo", "price"]


def score(server: ScoringServer, body: bytes | Any, headers: dict[str, str] | None = None) -> Any:
    raw_body = body if isinstance(body, bytes) else json.dumps(body).encode()
    raw = request("POST", server.score_path, server.port, body=raw_body, headers={**JSON, **(headers or {})})
    return exchange(server.port, raw)


def payloads(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The same rows in every format the endpoint accepts."""
    return {
        "dataframe_split": {"dataframe_split": {"columns": COLUMNS, "data": [[r[c] for c in COLUMNS] for r in rows]}},
        "dataframe_split+index": {
            "dataframe_split": {
                "index": list(range(len(rows))),
                "columns": COLUMNS,
                "data": [[r[c] for c in COLUMNS] for r in rows],
            }
        },
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "inputs-columns": {"inputs": {c: [r[c] for r in rows] for c in COLUMNS}},
        "params": {"dataframe_records": rows, "params": {}},
        "rows": {"rows": rows},
        "bare-list": rows,
    }


# ---------------------------------------------------------------- the protocol


def test_every_format_scores_the_same_rows(scoring_server: ScoringServer) -> None:
    answers = {}
    for name, body in payloads(ROWS).items():
        reply = score(scoring_server, body)
        assert reply.status == 200, (name, reply.raw)
        doc = reply.json()
        assert doc["model"] == "tiny" and doc["version"] == "1"
        answers[name] = doc["predictions"]
    first = answers["rows"]
    assert len(first) == 2 and first[0] != first[1]
    assert all(p == pytest.approx(first) for p in answers.values()), answers


@pytest.fixture(scope="module")
def mlflow_server(tiny_model: Path) -> Iterator[int]:
    """MLflow's own scoring server for the same model, on loopback (the reference for the protocol)."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    from shared.web.server import ServerThread, bind

    app = scoring_server.init(mlflow.pyfunc.load_model(str(tiny_model)))
    server = ServerThread(app, bind("127.0.0.1", 0), name="mlflow-reference").start()
    try:
        yield server.port
    finally:
        server.stop()


def test_mlflow_clients_get_the_same_predictions_as_from_mlflow(
    scoring_server: ScoringServer, mlflow_server: int
) -> None:
    for name, body in payloads(ROWS).items():
        if name in ("rows", "bare-list"):
            continue  # Conveyor's own formats
        raw = request("POST", "/invocations", mlflow_server, body=json.dumps(body).encode(), headers=JSON)
        reference = exchange(mlflow_server, raw)
        assert reference.status == 200, (name, reference.raw)
        ours = score(scoring_server, body)
        assert ours.json()["predictions"] == pytest.approx(reference.json()["predictions"]), name


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataframe_records": ROWS, "instances": ROWS}, "body"),
        ({}, "body"),
        ({"input_data": ROWS}, "input_data"),
        ({"dataframe_records": ROWS, "params": [1]}, "params"),
        ({"dataframe_records": {"store": 1}}, "dataframe_records"),
        ({"dataframe_records": []}, "dataframe_records"),
        ({"dataframe_records": [1]}, "dataframe_records[0]"),
        ({"dataframe_split": [[1, 2, 3]]}, "dataframe_split"),
        ({"dataframe_split": {"data": [[1, 0, 2.0]]}}, "dataframe_split.columns"),
        ({"dataframe_split": {"columns": COLUMNS, "data": [[1, 0, 2.0], [1, 0]]}}, "dataframe_split.data[1]"),
        ({"dataframe_split": {"columns": ["store", "promo"], "data": [[1, 0]]}}, "dataframe_split.columns"),
        ({"dataframe_split": {"columns": COLUMNS, "data": [[1, 0, "x"]]}}, "dataframe_split.data[0][2]"),
        ({"dataframe_split": {"columns": COLUMNS, "data": [[1, 0, 2]], "orient": "x"}}, "dataframe_split.orient"),
        ({"inputs": {"store": [1, 2], "promo": [0], "price": [1.0, 2.0]}}, "inputs"),
        ({"inputs": {"store": [1], "promo": [0]}}, "inputs.price"),
        ({"rows": [{"store": 1, "promo": 0}]}, "rows[0].price"),
        ({"rows": [{"store": 1, "promo": 0, "price": "cheap"}]}, "rows[0].price"),
        ({"rows": [{"store": 1.5, "promo": 0, "price": 1.0}]}, "rows[0].store"),
        ({"rows": [{"store": 2**70, "promo": 0, "price": 1.0}]}, "rows[0].store"),
        ({"rows": [{"store": 1, "promo": True, "price": 1.0}]}, "rows[0].promo"),
        ({"rows": [{"store": 1, "promo": 0, "price": "NaN"}]}, "rows[0].price"),
        ({"rows": [{"store": 1, "promo": 0, "price": "-Infinity"}]}, "rows[0].price"),
        ({"rows": [{"store": 1, "promo": 0, "price": "1e400"}]}, "rows[0].price"),
        ({"rows": [{"store": 1, "promo": 0, "price": {"a": 1}}]}, "rows[0].price"),
        ({"instances": [{"store": 1, "promo": 0, "price": [1]}]}, "instances[0].price"),
        ("just a string", "body"),
    ],
)
def test_bad_scoring_bodies_name_the_field(scoring_server: ScoringServer, body: Any, field: str) -> None:
    reply = score(scoring_server, body)
    assert reply.status == 400 and is_json_error(reply), reply.raw
    assert reply.json()["error"]["field"] == field, reply.json()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"rows": [{"store": 1, "promo": 0, "price": ' + b"1" + b"0" * 400 + b"}]}", "longer than"),
        (b'{"rows": [{"store": 1, "promo": 0, "price": NaN}]}', "NaN"),
        (b'{"rows": [{"store": 1, "promo": 0, "price": 1e400}]}', "out of range"),
        (b'{"rows": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested deeper"),
        (b'{"rows": [{"store": "\\ud800"}]}', "surrogate"),
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
    ],
)
def test_json_outside_the_limits_is_a_400(scoring_server: ScoringServer, raw: bytes, expected: str) -> None:
    reply = score(scoring_server, raw)
    assert reply.status == 400 and is_json_error(reply), reply.raw[:300]
    assert expected in reply.json()["error"]["message"]


def test_errors_never_echo_exception_text(scoring_server: ScoringServer) -> None:
    for body in ({"rows": [{"store": 1, "promo": 0, "price": {"x": 1}}]}, b"{not json", {"rows": "x"}):
        reply = score(scoring_server, body)
        text = reply.body.decode()
        assert reply.status == 400
        for leak in ("Traceback", "Error:", "Exception", 'File "', "pandas", "sklearn", "mlflow"):
            assert leak not in text, text


def test_unknown_endpoint_is_a_404(scoring_server: ScoringServer) -> None:
    raw = request("POST", "/endpoints/nope/score", scoring_server.port, body=json.dumps(ROWS).encode(), headers=JSON)
    reply = exchange(scoring_server.port, raw)
    assert reply.status == 404 and is_json_error(reply)


# ---------------------------------------------------------------- the HTTP layer


@pytest.mark.parametrize("value", ["-1", "abc", "-0"])
def test_bad_content_length_is_a_400_not_a_hang(scoring_server: ScoringServer, value: str) -> None:
    raw = request(
        "POST", scoring_server.score_path, scoring_server.port, body=b"{}", headers={**JSON, "Content-Length": value}
    )
    reply = exchange(scoring_server.port, raw)
    assert not reply.hung and reply.status == 400, reply.raw


def test_short_body_times_out(scoring_server: ScoringServer) -> None:
    raw = request(
        "POST", scoring_server.score_path, scoring_server.port, body=b"{", headers={**JSON, "Content-Length": "50"}
    )
    reply = exchange(scoring_server.port, raw)
    assert not reply.hung and reply.status in (None, 408), reply.raw


def test_chunked_body_is_scored(scoring_server: ScoringServer) -> None:
    raw = request(
        "POST",
        scoring_server.score_path,
        scoring_server.port,
        body=chunked(json.dumps({"dataframe_records": ROWS}).encode()),
        headers={**JSON, "Transfer-Encoding": "chunked"},
    )
    reply = exchange(scoring_server.port, raw)
    assert reply.status == 200 and len(reply.json()["predictions"]) == 2, reply.raw


@pytest.mark.parametrize(
    ("headers", "host_header", "status", "field"),
    [
        ({"Content-Type": "text/plain"}, None, 415, "Content-Type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, None, 415, "Content-Type"),
        ({**JSON, "Origin": "http://evil.example"}, None, 403, "Origin"),
        (JSON, "evil.example", 400, "Host"),
    ],
)
def test_cross_site_and_rebinding_requests_are_refused(
    scoring_server: ScoringServer, headers: dict[str, str], host_header: str | None, status: int, field: str
) -> None:
    raw = request(
        "POST",
        scoring_server.score_path,
        scoring_server.port,
        body=json.dumps(ROWS).encode(),
        headers=headers,
        host_header=host_header,
    )
    reply = exchange(scoring_server.port, raw)
    assert reply.status == status and reply.json()["error"]["field"] == field, reply.raw


@pytest.mark.parametrize(("method", "path"), [("GET", "/endpoints/sales/score"), ("BREW", "/health"), ("OPTIONS", "/")])
def test_every_method_is_answered_in_json(scoring_server: ScoringServer, method: str, path: str) -> None:
    reply = exchange(scoring_server.port, request(method, path, scoring_server.port))
    assert reply.status in (404, 405) and is_json_error(reply), reply.raw


def test_health_and_describe(scoring_server: ScoringServer) -> None:
    health = exchange(scoring_server.port, request("GET", "/health", scoring_server.port))
    assert health.status == 200 and health.json()["status"] == "ok"
    described = exchange(scoring_server.port, request("GET", "/endpoints/sales", scoring_server.port)).json()
    assert described["loaded"]["version"] == "1"
    assert set(FEATURES) == {"store", "promo", "price"}
