"""Lifecycle events from a running local host to a real webhook subscriber and the event log.

The host (``conveyor up`` in-process, on the session Azurite) has one webhook subscriber
(``CONVEYOR_EVENTS_WEBHOOKS``) that answers the CloudEvents validation handshake and fails
its first delivery with 503. A run of the retrain flow (Batch, Databricks, Azure ML, register,
deploy: the real local backends) and a run that fails publish the issue's events: both the
subscriber and ``<home>/events/lifecycle.jsonl`` receive each one, with the same ids, the
run id, the flow and the run's trace id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shared.demo import generate_data
from shared.events.log import read_events
from shared.host.runtime import LocalHost
from shared.settings import Settings
from shared.wiring import Services
from tests.conftest import REPO_ROOT, unique_suffix
from tests.e2e.conftest import post
from tests.functional.events.subscriber import Subscriber, running_subscriber


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, state: Callable[[], Any] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out; {state()}")


def types_of(events: list[dict[str, Any]], run_id: str) -> list[str]:
    return [str(e["type"]).removeprefix("conveyor.") for e in events if e["data"]["run_id"] == run_id]


def test_a_host_publishes_each_runs_lifecycle_to_webhooks_and_the_log(
    e2e_settings: Settings, all_triggers_flows: Callable[[str], Path], tmp_path: Path
) -> None:
    csv = generate_data(e2e_settings, tmp_path, rows=120, seed=5, name=f"events-{unique_suffix()}.csv")
    data_url = Services(e2e_settings).blobs.url("landing", csv.name)
    flows_path = all_triggers_flows(data_url)
    doc = yaml.safe_load(flows_path.read_text())
    doc["flows"]["broken"] = {
        "triggers": [{"kind": "manual"}],
        "steps": [
            {"name": "crash", "kind": "batch", "params": {"command": ["sh", "-c", "exit 3"], "inputs": data_url}}
        ],
    }
    flows_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for subscriber in running_subscriber():
        check(e2e_settings, flows_path, csv, subscriber)


def check(e2e_settings: Settings, flows_path: Path, csv: Path, subscriber: Subscriber) -> None:
    subscriber.statuses = [503]  # the first delivery fails: the outbox tries again
    s = e2e_settings.with_overrides(
        flows_file=flows_path, events_webhooks=(subscriber.url(),), website_hostname="conveyor-e2e.local"
    )
    with LocalHost(s, workers=2, watch=False, schedule=False) as host:  # delivery: the events thread
        services = host.services
        assert services is not None
        services.blobs.upload_file("apps", "batch_app/score_file.py", REPO_ROOT / "samples/batch_app/score_file.py")
        services.blobs.upload_file("landing", csv.name, csv)
        status, good = post(f"{host.url}/api/flows/retrain-any/runs", {"params": {}})
        assert status == 202, good
        status, bad = post(f"{host.url}/api/flows/broken/runs", {"params": {}})
        assert status == 202, bad
        ok_run = host.wait_for_run(good["run_id"], timeout=600)
        failed_run = host.wait_for_run(bad["run_id"], timeout=300)
        assert ok_run.status.value == "succeeded", ok_run.error
        assert failed_run.status.value == "failed"
        expected = ["run.started", "model.registered", "gate.decided", "model.deployed", "run.succeeded"]
        wait_for(
            lambda: (
                len(types_of(subscriber.accepted, ok_run.run_id)) >= 5
                and len(types_of(subscriber.accepted, failed_run.run_id)) >= 3
            ),
            state=lambda: [(e["data"]["run_id"][:6], e["type"]) for e in subscriber.posts],
        )
    assert types_of(subscriber.accepted, ok_run.run_id) == expected
    assert types_of(subscriber.accepted, failed_run.run_id) == ["run.started", "step.failed", "run.failed"]
    handshake = {k.lower(): v for k, v in subscriber.handshakes[0].items()}
    assert handshake["webhook-request-origin"] == "conveyor-e2e.local"
    assert len(subscriber.posts) == len(subscriber.accepted) + 1  # the refused first one came again, same id
    assert subscriber.posts[0]["id"] in {e["id"] for e in subscriber.accepted}
    logged = read_events(s.home)
    assert {e["id"] for e in logged} == {e["id"] for e in subscriber.accepted}
    for e in subscriber.accepted:
        run = ok_run if e["data"]["run_id"] == ok_run.run_id else failed_run
        assert e["data"]["flow"] == run.flow and e["data"]["trace_id"] == run.traceparent.split("-")[1]
    deployed = next(e for e in subscriber.accepted if e["type"] == "conveyor.model.deployed")
    assert deployed["data"]["version"] == next(st for st in ok_run.steps if st.kind == "register").outputs["version"]
