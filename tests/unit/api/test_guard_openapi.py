"""shared.api.guard (who may call), the JSON rules of HttpRequest, and the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest

from functions import webhooks
from shared.api import openapi
from shared.api.guard import RequestPolicy, accepts, media_type_refusal
from shared.api.handlers import ROUTES, Api, Route
from shared.api.http import HttpRequest, map_error
from shared.errors import ValidationError
from shared.safejson import BodyTooLargeError
from tests.unit.api.helpers import World


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/cloudevents-batch+json", True),
        ("application/jsonx", False),
        ("text/plain", False),
        ("json", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, ok: bool) -> None:
    assert accepts(("application/json", "+json"), content_type) is ok


def test_media_type_rule_applies_to_state_changing_methods_only() -> None:
    assert media_type_refusal("GET", {}) is None
    refused = media_type_refusal("POST", {"content-type": "text/plain"})
    assert refused is not None and refused.status == 415 and refused.json()["error"]["field"] == "Content-Type"


def test_policy_for_a_loopback_address() -> None:
    policy = RequestPolicy.for_address("127.0.0.1", 7071)
    assert policy.refusal("GET", {"Host": "localhost:7071"}) is None
    assert policy.refusal("POST", {"Host": "127.0.0.1:7071", "Content-Type": "application/json"}) is None
    bad_host = policy.refusal("GET", {"Host": "rebind.example:7071"})
    assert bad_host is not None and (bad_host.status, bad_host.json()["error"]["field"]) == (400, "Host")
    foreign = policy.refusal("POST", {"Host": "127.0.0.1:7071", "Origin": "http://evil.example"})
    assert foreign is not None and foreign.status == 403
    same = {"Host": "127.0.0.1:7071", "Origin": "http://localhost:7071", "Content-Type": "application/json"}
    assert policy.refusal("POST", same) is None
    forms = policy.with_media_types("application/x-www-form-urlencoded")
    form_post = {"Host": "127.0.0.1:7071", "Content-Type": "application/x-www-form-urlencoded"}
    assert forms.refusal("POST", form_post) is None
    many = policy.refusal("GET", {"Host": "127.0.0.1:7071"}, header_lines=[("x", "y")] * 101)
    assert many is not None and many.status == 431


def test_request_json_is_the_strict_decoder_and_parses_once() -> None:
    with pytest.raises(ValidationError, match="NaN"):
        HttpRequest("POST", "/", body=b'{"x": NaN}').json()
    req = HttpRequest("POST", "/", body=b'{"x": 1}')
    assert req.json() is req.json()
    assert map_error(BodyTooLargeError("larger than 1 bytes", field="body")).status == 413


def test_api_refuses_a_non_json_post_before_anything_runs(tmp_path: Path) -> None:
    world = World(tmp_path)
    resp = Api(world.services).dispatch(
        HttpRequest("POST", "/api/flows/train/runs", headers={"Content-Type": "text/plain"}, body=b"{}")
    )
    assert resp.status == 415 and world.sent() == [] and world.store.rows == {}


def test_the_document_covers_every_route_and_its_schemas_resolve() -> None:
    doc = openapi.openapi_document()
    operations = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert operations == {(r.method, r.pattern) for r in ROUTES} | set(openapi.HOST_ROUTES)
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in doc["components"]["schemas"], name
    run_doc = doc["components"]["schemas"]["RunDocument"]
    assert "status_url" in run_doc["properties"] and "steps" in run_doc["properties"]


def test_a_route_without_a_declaration_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openapi, "ROUTES", [*ROUTES, Route("POST", "/api/dlq/replay", "replay")])
    openapi._document.cache_clear()
    try:
        with pytest.raises(LookupError, match="replay"):
            openapi.openapi_document()
    finally:
        openapi._document.cache_clear()


def test_functions_serve_the_document() -> None:
    fn = webhooks.openapi.build().get_user_function()
    resp = fn(func.HttpRequest("GET", "http://localhost:7071/api/openapi.json", headers={}, params={}, body=b""))
    assert resp.status_code == 200 and json.loads(resp.get_body())["openapi"] == "3.1.0"
