"""Azure DevOps service hooks: authentication and the three payloads."""

from __future__ import annotations

import base64
import json

import pytest

from shared.errors import AuthError, ValidationError
from shared.ingest.devops import authenticate, parse_devops
from shared.settings import Settings
from tests.unit.ingest.helpers import event_bytes, load_event

BASIC = Settings(devops_username="hook", devops_password="s3cr3t:with-colon")
SECRET = Settings(devops_secret="0123456789abcdef")


def basic(user: str, pwd: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pwd}".encode()).decode()}


def test_git_push_payload() -> None:
    ev = parse_devops(event_bytes("devops_git_push.json"))
    assert ev.event_type == "git.push"
    assert ev.event_id == "03c164c2-8912-4d5e-8009-3707d5f83734"
    assert ev.repository == "Fabrikam-Fiber-Git"
    assert ev.branch == "main"
    assert ev.commit == "33b55f7cb7e7e245323987634f960cf4a6e6bc74"
    assert ev.result is None and ev.build_id is None
    assert ev.raw_subset["publisherId"] == "tfs"


def test_build_complete_payload() -> None:
    ev = parse_devops(event_bytes("devops_build_complete.json"))
    assert ev.event_type == "build.complete"
    assert ev.event_id == "4a5d99d6-1c75-4e53-91b9-ee80057d4ce3"
    assert (ev.repository, ev.branch, ev.commit) == ("MainRepo", "main", "6a3c1e0d9b27f4e8c5d2a1b0f9e8d7c6b5a49382")
    assert (ev.build_id, ev.build_number, ev.result) == ("2727068", "20241202.1", "succeeded")


def test_build_complete_legacy_resource_version_1() -> None:
    doc = load_event("devops_build_complete.json")
    res = doc["resource"]
    for k in ("result", "sourceBranch", "sourceVersion", "repository"):
        del res[k]
    res["status"] = "failed"
    res["sourceGetVersion"] = "LG:refs/heads/master:600c52d2d5b655caa111abfd863e5a9bd304bb0e"
    ev = parse_devops(json.dumps(doc))
    assert (ev.branch, ev.commit, ev.result) == ("master", "600c52d2d5b655caa111abfd863e5a9bd304bb0e", "failed")


def test_release_deployment_completed_payload() -> None:
    ev = parse_devops(event_bytes("devops_release_deployment_completed.json"))
    assert ev.event_type == "ms.vss-release.deployment-completed-event"
    assert ev.event_id == "c3e52c57-187a-45c4-abe2-184a48291bad"
    assert (ev.release, ev.environment, ev.result) == ("Release-1", "Dev", "succeeded")


def test_release_with_primary_artifact_maps_repository_branch_commit() -> None:
    doc = load_event("devops_release_deployment_completed.json")
    doc["resource"]["release"] = {
        "name": "Release-9",
        "artifacts": [
            {"alias": "other", "isPrimary": False, "definitionReference": {"branch": {"name": "refs/heads/x"}}},
            {
                "alias": "_ci",
                "isPrimary": True,
                "definitionReference": {
                    "branch": {"id": "refs/heads/main", "name": "refs/heads/main"},
                    "repository": {"id": "r1", "name": "MainRepo"},
                    "sourceVersion": {"id": "abc123", "name": "abc123"},
                    "version": {"id": "77", "name": "20240601.3"},
                },
            },
        ],
    }
    ev = parse_devops(json.dumps(doc))
    assert (ev.repository, ev.branch, ev.commit) == ("MainRepo", "main", "abc123")
    assert (ev.build_id, ev.build_number) == ("77", "20240601.3")


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("eventType",), "workitem.created", "eventType"),
        (("eventType",), None, "eventType"),
        (("id",), None, "id"),
        (("id",), {"x": 1}, "id"),
        (("resource",), None, "resource"),
        (("resource",), [], "resource"),
        (("resource", "refUpdates"), [], "resource.refUpdates"),
        (("resource", "repository"), None, "resource.repository"),
        (("resource", "repository", "name"), None, "resource.repository.name"),
    ],
)
def test_malformed_git_push_names_the_field(path: tuple[str, ...], value: object, field: str) -> None:
    doc = load_event("devops_git_push.json")
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    with pytest.raises(ValidationError) as e:
        parse_devops(json.dumps(doc))
    assert e.value.field == field


def test_malformed_build_and_release() -> None:
    doc = load_event("devops_build_complete.json")
    del doc["resource"]["id"]
    with pytest.raises(ValidationError) as e:
        parse_devops(json.dumps(doc))
    assert e.value.field == "resource.id"
    doc = load_event("devops_release_deployment_completed.json")
    del doc["resource"]["environment"]["status"]
    with pytest.raises(ValidationError) as e:
        parse_devops(json.dumps(doc))
    assert e.value.field == "resource.environment.status"
    for body in (b"", b"[]", b"{oops", b"\xff"):
        with pytest.raises(ValidationError) as e:
            parse_devops(body)
        assert e.value.field == "body"


def test_basic_auth_ok() -> None:
    assert authenticate(basic("hook", "s3cr3t:with-colon"), BASIC) == "basic"
    assert authenticate({"authorization": basic("hook", "s3cr3t:with-colon")["Authorization"]}, BASIC) == "basic"


def test_header_secret_ok_with_custom_header_name() -> None:
    assert authenticate({"X-Conveyor-Secret": "0123456789abcdef"}, SECRET) == "header"
    custom = Settings(devops_secret="abc", devops_secret_header="X-Hook-Token")
    assert authenticate({"x-hook-token": "abc"}, custom) == "header"


@pytest.mark.parametrize(
    ("headers", "settings"),
    [
        (basic("hook", "wrong"), BASIC),
        (basic("other", "s3cr3t:with-colon"), BASIC),
        ({"Authorization": "Basic !!!notbase64"}, BASIC),
        ({"Authorization": "Bearer abc"}, BASIC),
        ({}, BASIC),
        ({"X-Conveyor-Secret": "0123456789abcdeF"}, SECRET),
        ({"X-Other": "0123456789abcdef"}, SECRET),
        ({}, SECRET),
    ],
)
def test_wrong_or_missing_credentials(headers: dict[str, str], settings: Settings) -> None:
    with pytest.raises(AuthError) as e:
        authenticate(headers, settings)
    assert e.value.status == 401
    assert "s3cr3t" not in str(e.value) and "0123456789abcdef" not in str(e.value)


def test_nothing_configured_rejects_and_says_what_to_set() -> None:
    with pytest.raises(AuthError) as e:
        authenticate(basic("hook", "x"), Settings())
    msg = str(e.value)
    assert "CONVEYOR_DEVOPS_USERNAME" in msg and "CONVEYOR_DEVOPS_PASSWORD" in msg and "CONVEYOR_DEVOPS_SECRET" in msg
    with pytest.raises(AuthError):
        authenticate(basic("hook", "x"), Settings(devops_username="hook"))  # half configured
