"""shared.api.http: the request/response types and the one error-to-status mapping."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.api.http import (
    Headers,
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    map_error,
)
from shared.errors import (
    AuthError,
    BadRequestError,
    ConcurrencyError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    PermanentError,
    ThrottledError,
    TransientError,
    ValidationError,
)


def error_of(resp: HttpResponse) -> dict:
    body = json.loads(resp.body)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    return body["error"]


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True), st.text(max_size=20)))
def test_headers_lookup_ignores_case(source: dict[str, str]) -> None:
    h = Headers(source)
    # The last spelling of a name wins, as in a dict built case-insensitively.
    expected = {k.lower(): v for k, v in source.items()}
    for name, value in expected.items():
        assert h[name.upper()] == value
        assert h.get(name.swapcase()) == value
        assert name.title() in h
    assert len(h) == len(expected)


def test_headers_repr_never_shows_values() -> None:
    h = Headers({"Authorization": "Basic c2VjcmV0OnZhbHVl"})
    assert "c2VjcmV0" not in repr(h)
    assert "Authorization" in repr(h)


def test_request_normalises_method_headers_and_body() -> None:
    req = HttpRequest("post", "/api/runs", headers={"Content-Type": "application/json"}, body="{}")  # type: ignore[arg-type]
    assert req.method == "POST"
    assert req.headers["content-type"] == "application/json"
    assert req.body == b"{}"


def test_request_json() -> None:
    assert HttpRequest("POST", "/", body=b'{"a": [1, 2]}').json() == {"a": [1, 2]}
    assert HttpRequest("POST", "/", body=b"  ").json() is None
    with pytest.raises(ValidationError) as err:
        HttpRequest("POST", "/", body=b"").json(required=True)
    assert err.value.field == "body"


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b'{"a": 1'])
def test_request_json_malformed_names_body(body: bytes) -> None:
    with pytest.raises(ValidationError) as err:
        HttpRequest("POST", "/", body=body).json()
    assert err.value.field == "body"


def test_request_json_refuses_huge_body() -> None:
    with pytest.raises(ValidationError) as err:
        HttpRequest("POST", "/", body=b"[" + b"1," * 600_000 + b"1]").json()
    assert err.value.field == "body"
    assert "larger" in err.value.message


def test_json_response_shape() -> None:
    resp = json_response(202, {"run_id": "r1"}, {"Location": "/api/runs/r1"})
    assert resp.status == 202
    assert resp.json() == {"run_id": "r1"}
    assert resp.headers["Location"] == "/api/runs/r1"
    assert resp.content_type is not None and resp.content_type.startswith("application/json")


def test_error_response_shape() -> None:
    resp = error_response(400, "validation_error", "must be a string", field="params.x")
    assert resp.status == 400
    assert error_of(resp) == {"code": "validation_error", "message": "must be a string", "field": "params.x"}


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ValidationError("must be an object", field="params"), 400, "validation_error"),
        (AuthError("missing or wrong credentials"), 401, "unauthorized"),
        (NotFoundError("no flow named 'x'"), 404, "not_found"),
        (ConflictError("key reused with other params"), 409, "conflict"),
        (ThrottledError("slow down"), 503, "unavailable"),
        (TransientError("connection reset"), 503, "unavailable"),
        (ConcurrencyError("etag"), 503, "unavailable"),
        (BadRequestError("bad"), 400, "bad_request"),
        (PermanentError("will fail again"), 400, "bad_request"),
        (ConveyorError("unclassified"), 500, "internal_error"),
    ],
)
def test_map_error_status_and_code(exc: Exception, status: int, code: str) -> None:
    resp = map_error(exc)
    assert resp.status == status
    err = error_of(resp)
    assert err["code"] == code


def test_validation_error_names_field() -> None:
    err = error_of(map_error(ValidationError("unknown status 'x'", field="status")))
    assert err["field"] == "status"
    assert err["message"] == "unknown status 'x'"


def test_auth_error_asks_for_basic_auth() -> None:
    resp = map_error(AuthError("missing or wrong credentials", service="devops"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="conveyor"'


def test_retryable_errors_say_when_to_retry() -> None:
    throttled = map_error(ThrottledError("429"))
    transient = map_error(TransientError("reset"))
    assert int(throttled.headers["Retry-After"]) > int(transient.headers["Retry-After"]) > 0
    # The dependency's message is not passed to the caller.
    assert "reset" not in error_of(transient)["message"]


def test_unexpected_exception_is_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    secret_detail = "AccountKey=abc123 at /srv/app/internal.py line 42"
    with caplog.at_level(logging.ERROR, logger="conveyor.api"):
        resp = map_error(KeyError(secret_detail))
    assert resp.status == 500
    assert error_of(resp) == {"code": "internal_error", "message": "internal error", "field": None}
    assert b"abc123" not in resp.body and b"KeyError" not in resp.body
    assert any(r.exc_info for r in caplog.records), "the exception is logged with its traceback"
