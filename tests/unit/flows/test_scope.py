"""The fields ``${trigger.*}`` may name are the fields ingest really sets, per trigger kind."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from shared.flows.scope import MANIFEST_FIELDS, TRIGGER_FIELDS, TRIGGER_KEYS, reference_problems
from shared.ingest.eventgrid import BlobEvent
from shared.settings import Settings
from tests.unit.ingest.helpers import event_bytes, flows, service

NOTIFY = {"aeg-event-type": "Notification"}


def test_blob_fields_are_what_a_blob_created_event_gives() -> None:
    svc, store, _, _ = service(flows(f=[{"kind": "blob", "container": "landing"}]))
    (result,) = svc.ingest_eventgrid(event_bytes("blob_created_eventgrid.json"), NOTIFY).results
    scope = store.get(result.run_id).trigger.template_scope()
    assert set(scope["blob"]) == set(TRIGGER_FIELDS["blob"])
    assert set(scope) == {"kind", "params", "source", "blob"}


def test_manifest_fields_are_added_for_a_manifest_trigger() -> None:
    svc, store, _, _ = service(flows(f=[{"kind": "blob", "container": "landing", "manifest": "_SUCCESS"}]))
    name = "day1/_SUCCESS"
    event = BlobEvent(
        url=f"http://127.0.0.1:10000/devstoreaccount1/landing/{name}",
        container="landing",
        name=name,
        etag='"0x1"',
        size=0,
        content_type=None,
        event_id="e1",
        event_time=datetime(2024, 6, 1, tzinfo=UTC),
        api="PutBlob",
    )
    (result,) = svc.ingest_blob_events([event])
    scope = store.get(result.run_id).trigger.template_scope()
    assert set(scope["blob"]) == set(TRIGGER_FIELDS["blob"]) | set(MANIFEST_FIELDS)


def test_schedule_fields_are_what_a_fire_gives() -> None:
    svc, store, _, _ = service(flows(f=[{"kind": "schedule", "cron": "0 0 * * * *"}]))
    assert svc.fire_schedules(datetime(2024, 6, 1, 11, 59, 0, tzinfo=UTC)) == []  # first seen: nothing due yet
    (result,) = svc.fire_schedules(datetime(2024, 6, 1, 12, 0, 1, tzinfo=UTC))
    assert set(store.get(result.run_id).trigger.template_scope()["schedule"]) == set(TRIGGER_FIELDS["schedule"])


def test_devops_fields_are_what_a_notification_gives() -> None:
    settings = Settings(devops_username="hook", devops_password="pw")
    auth = {"Authorization": "Basic " + base64.b64encode(b"hook:pw").decode()}
    svc, store, _, _ = service(flows(f=[{"kind": "azure_devops", "events": ["git.push"]}]), settings)
    (result,) = svc.ingest_devops(event_bytes("devops_git_push.json"), auth)
    scope = store.get(result.run_id).trigger.template_scope()
    assert set(scope["devops"]) == set(TRIGGER_FIELDS["azure_devops"])
    assert set(TRIGGER_KEYS.values()) == set(TRIGGER_FIELDS)


def test_reference_problems_name_the_field_and_what_exists() -> None:
    steps = [
        {"name": "a", "kind": "databricks", "params": {"parameters": ["${trigger.blob.nam}", "${trigger.params.x}"]}},
        {"name": "b", "kind": "batch", "params": {"inputs": "${steps.a.outputs.gold}"}, "env": {"X": "${run.idd}"}},
        {"name": "c", "kind": "register", "params": {"model_uri": "${steps.a.outputs.result.gold}"}},
    ]
    problems = reference_problems(steps, [{"kind": "blob", "container": "landing"}])
    assert problems == [
        "steps[0].params.parameters[0]: ${trigger.blob.nam}: trigger.blob has no field 'nam' (known: url, container, "
        "name, etag, size, content_type, event_id, event_time, api, settle_seconds)",
        "steps[0].params.parameters[1]: ${trigger.params.x}: only a manual trigger sets trigger.params, and this flow "
        "has none (its triggers: blob)",
        "steps[1].env.X: ${run.idd}: the run has no field 'idd' (known: id, flow, reruns)",
        "steps[1].params.inputs: ${steps.a.outputs.gold}: a databricks step has no output 'gold' (its outputs: "
        "run_id, result, run_page_url)",
    ]
    assert reference_problems(steps[2:], [{"kind": "manual"}]) == []  # a reference to no earlier step: step_problems'
