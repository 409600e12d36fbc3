"""Azure DevOps hooks and manual starts through the ingest service."""

from __future__ import annotations

import base64
import json

import pytest

from shared.engine.model import run_id_for
from shared.errors import AuthError, ConflictError, NotFoundError, ValidationError
from shared.settings import Settings
from tests.unit.ingest.helpers import consume_starts, event_bytes, flows, load_event, service, starts

SETTINGS = Settings(devops_username="hook", devops_password="pw", devops_secret="tok")
AUTH = {"Authorization": "Basic " + base64.b64encode(b"hook:pw").decode()}


def devops_flows():  # type: ignore[no-untyped-def]
    return flows(
        on_push=[
            {"kind": "azure_devops", "events": ["git.push"], "repository": "fabrikam-fiber-git", "branch": "main"}
        ],
        on_other_branch=[{"kind": "azure_devops", "events": ["git.push"], "branch": "release"}],
        on_build=[{"kind": "azure_devops", "events": ["build.complete"], "result": "Succeeded"}],
        on_failed_build=[{"kind": "azure_devops", "events": ["build.complete"], "result": "failed"}],
        on_release=[{"kind": "azure_devops", "events": ["ms.vss-release.deployment-completed-event"]}],
    )


@pytest.mark.parametrize(
    ("payload", "flow", "expect"),
    [
        (
            "devops_git_push.json",
            "on_push",
            {
                "repository": "Fabrikam-Fiber-Git",
                "branch": "main",
                "commit": "33b55f7cb7e7e245323987634f960cf4a6e6bc74",
            },
        ),
        ("devops_build_complete.json", "on_build", {"repository": "MainRepo", "branch": "main", "result": "succeeded"}),
        (
            "devops_release_deployment_completed.json",
            "on_release",
            {"result": "succeeded", "release": "Release-1", "environment": "Dev"},
        ),
    ],
)
def test_hook_delivered_three_times_starts_one_run(payload: str, flow: str, expect: dict[str, str]) -> None:
    svc, store, queue, _ = service(devops_flows(), SETTINGS)
    body = event_bytes(payload)
    results = [svc.ingest_devops(body, AUTH)]
    consume_starts(store)
    results += [svc.ingest_devops(body, AUTH) for _ in range(2)]
    assert [[(r.flow, r.status) for r in rs] for rs in results] == [
        [(flow, "created")],
        [(flow, "duplicate")],
        [(flow, "duplicate")],
    ]
    event_id = load_event(payload)["id"]
    run_id = results[0][0].run_id
    assert run_id == run_id_for(flow, "devops", event_id)
    assert starts(queue) == [run_id]
    devops = store.get(run_id).trigger.devops
    assert devops is not None and devops["event_id"] == event_id
    assert {k: devops[k] for k in expect} == expect


def test_filters_none_means_any() -> None:
    svc, _store, _queue, _ = service(flows(any_push=[{"kind": "azure_devops", "events": ["git.push"]}]), SETTINGS)
    assert svc.ingest_devops(event_bytes("devops_git_push.json"), AUTH)[0].created


def test_unmatched_hook_creates_nothing() -> None:
    svc, store, queue, tel = service(devops_flows(), SETTINGS)
    doc = load_event("devops_git_push.json")
    doc["resource"]["refUpdates"][0]["name"] = "refs/heads/feature/x"
    doc["resource"]["repository"]["name"] = "Other"
    assert svc.ingest_devops(json.dumps(doc).encode(), AUTH) == []
    assert store.rows == {} and queue.sent == [] and "trigger.unmatched" in tel.names()


def test_header_secret_accepted() -> None:
    svc, _store, _queue, _ = service(devops_flows(), SETTINGS)
    assert svc.ingest_devops(event_bytes("devops_git_push.json"), {"X-Conveyor-Secret": "tok"})[0].created


@pytest.mark.parametrize(
    ("headers", "settings"),
    [
        ({"Authorization": "Basic " + base64.b64encode(b"hook:nope").decode()}, SETTINGS),
        ({"X-Conveyor-Secret": "nope"}, SETTINGS),
        ({}, SETTINGS),
        (AUTH, Settings()),  # nothing configured: secure by default
    ],
)
def test_auth_failure_enqueues_nothing_and_comes_before_parsing(headers: dict[str, str], settings: Settings) -> None:
    svc, store, queue, _ = service(devops_flows(), settings)
    for body in (event_bytes("devops_git_push.json"), b"{not json"):
        with pytest.raises(AuthError):
            svc.ingest_devops(body, headers)
    assert store.rows == {} and queue.sent == []


def test_malformed_hook_enqueues_nothing() -> None:
    svc, store, queue, _ = service(devops_flows(), SETTINGS)
    doc = load_event("devops_git_push.json")
    doc["eventType"] = "workitem.updated"
    with pytest.raises(ValidationError) as e:
        svc.ingest_devops(json.dumps(doc).encode(), AUTH)
    assert e.value.field == "eventType"
    assert store.rows == {} and queue.sent == []


def test_manual_start_with_key_is_idempotent() -> None:
    svc, store, queue, _ = service(flows(train=[{"kind": "manual"}]))
    r1 = svc.start_manual("train", {"alpha": 0.5}, idempotency_key="k-1")
    r2 = svc.start_manual("train", {"alpha": 0.5}, idempotency_key="k-1")  # a retry: still pending
    assert (r1.status, r2.status) == ("created", "duplicate") and r1.run_id == r2.run_id
    assert r1.run_id == run_id_for("train", "manual", "k-1")
    assert starts(queue) == [r1.run_id, r1.run_id]  # a cut first call may never have sent it
    consume_starts(store)
    assert svc.start_manual("train", {"alpha": 0.5}, idempotency_key="k-1").status == "duplicate"
    assert starts(queue) == [r1.run_id, r1.run_id]  # started: nothing more
    run = store.get(r1.run_id)
    assert run.trigger.kind == "manual" and run.trigger.params == {"alpha": 0.5}
    with pytest.raises(ConflictError):
        svc.start_manual("train", {"alpha": 0.9}, idempotency_key="k-1")


def test_manual_start_without_key_is_a_new_run_each_time() -> None:
    svc, _store, queue, _ = service(flows(train=[{"kind": "manual"}]))
    a, b = svc.start_manual("train", {}), svc.start_manual("train", {})
    assert a.created and b.created and a.run_id != b.run_id and len(starts(queue)) == 2


def test_manual_errors() -> None:
    svc, store, queue, _ = service(
        flows(train=[{"kind": "manual"}], blob_only=[{"kind": "blob", "container": "landing"}])
    )
    with pytest.raises(NotFoundError):
        svc.start_manual("nope", {})
    with pytest.raises(ValidationError) as e:
        svc.start_manual("blob_only", {})
    assert e.value.field == "flow" and "manual" in str(e.value)
    with pytest.raises(ValidationError) as e:
        svc.start_manual("train", {"x": object()})
    assert e.value.field == "params"
    with pytest.raises(ValidationError) as e:
        svc.start_manual("train", {"x": "y" * 40_000})
    assert e.value.field == "params"
    for key in ("", "a" * 201, "bad\nkey"):
        with pytest.raises(ValidationError) as e:
            svc.start_manual("train", {}, idempotency_key=key)
        assert e.value.field == "idempotency_key"
    assert store.rows == {} and queue.sent == []
