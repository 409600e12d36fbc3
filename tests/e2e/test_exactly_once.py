"""(b) Every trigger delivered three times: one run, one launch per step.

The host runs on the session Azurite with its own queue/table/home. The same Event Grid
event is POSTed three times to the host's Event Grid webhook; a manual start is sent three
times with one idempotency key; one Azure DevOps notification is delivered three times; the
scheduler fires three times at the same instant. Then the backends' state directories under
the home hold exactly one job per (run, step) key, and the registry one version per run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.demo import generate_data
from shared.engine.model import Run
from shared.errors import NotFoundError
from shared.host.runtime import LocalHost
from shared.host.scheduler import Scheduler
from shared.host.watcher import account_name
from shared.ingest.eventgrid import blob_created_event
from shared.settings import Settings
from shared.wiring import Services
from tests.conftest import REPO_ROOT, unique_suffix
from tests.e2e.conftest import DEVOPS_PASSWORD, DEVOPS_USER, basic_auth, get, post

STEP_DIRS = {"batch": "batch", "databricks": "databricks", "azureml": "azureml"}


def test_each_trigger_three_times_starts_one_run_and_one_launch_per_step(
    e2e_settings: Settings, all_triggers_flows: Callable[[str], Path], tmp_path: Path
) -> None:
    csv = generate_data(e2e_settings, tmp_path, rows=120, seed=3, name=f"e2e-{unique_suffix()}.csv")
    blobs = Services(e2e_settings).blobs
    s = e2e_settings.with_overrides(flows_file=all_triggers_flows(blobs.url("landing", csv.name)))
    with LocalHost(s, workers=2, watch=False, schedule=False) as host:
        services = host.services
        assert services is not None
        url = host.url
        # the data the flows need (the batch app is a project file the host stages itself)
        info = services.blobs.upload_file("landing", csv.name, csv)

        run_ids: dict[str, set[str]] = {}

        # Event Grid: the same event (same id) delivered three times
        event = blob_created_event(info, account_name(s))
        eg = f"{url}/runtime/webhooks/EventGrid?functionName=blob_created"
        ids = set()
        for _ in range(3):
            status, doc = post(eg, [event], {"aeg-event-type": "Notification"})
            assert status == 202, doc
            ids.update(r["run_id"] for r in doc["runs"])
        run_ids["blob"] = ids

        # manual: one idempotency key, three calls
        ids = set()
        for _ in range(3):
            status, doc = post(
                f"{url}/api/flows/retrain-any/runs", {"params": {"why": "e2e"}, "idempotency_key": "k-1"}
            )
            assert status == 202, doc
            ids.add(doc["run_id"])
        run_ids["manual"] = ids

        # Azure DevOps: one notification (same id) delivered three times
        push = json.loads((REPO_ROOT / "tests/events/devops_git_push.json").read_text())
        auth = {"Authorization": basic_auth(DEVOPS_USER, DEVOPS_PASSWORD)}
        ids = set()
        for _ in range(3):
            status, doc = post(f"{url}/api/hooks/azure-devops", push, auth)
            assert status in (200, 202), doc
            ids.update(r["run_id"] for r in doc["runs"] if r.get("run_id"))
        run_ids["devops"] = ids

        # schedule: the scheduler fires three times at the same instant (the schedule was
        # first seen an hour before, so the hour's fire is after its first sight)
        now = datetime.now(UTC)
        sched = Scheduler(services)
        assert sched.fire(now - timedelta(hours=1)) == []
        ids = set()
        for _ in range(3):
            ids.update(r.run_id for r in sched.fire(now))
        run_ids["schedule"] = ids

        assert {k: len(v) for k, v in run_ids.items()} == {"blob": 1, "manual": 1, "devops": 1, "schedule": 1}
        all_ids = set().union(*run_ids.values())
        assert len(all_ids) == 4

        runs: list[Run] = [host.wait_for_run(rid, timeout=600) for rid in sorted(all_ids)]
        for run in runs:
            assert run.status.value == "succeeded", (run.run_id, run.trigger.kind, run.error)
        status, doc = get(f"{url}/api/runs")
        assert status == 200 and doc["count"] == 4

    # one job directory per launched key, per backend, and nothing else
    for run in runs:
        for step in run.steps:
            assert step.attempt == 1, (run.run_id, step.name, step.attempt)
    for kind, folder in STEP_DIRS.items():
        keys = {st.key for r in runs for st in r.steps if st.kind == kind}
        if not keys:
            continue
        dirs = {p.name for p in (s.home / folder).iterdir() if p.is_dir()}
        assert dirs == keys, (kind, dirs, keys)
    # the registry holds one version per run (a duplicate registration would add a fifth)
    versions = {
        (st.outputs["model_name"], str(st.outputs["version"])) for r in runs for st in r.steps if st.kind == "register"
    }
    assert len(versions) == 4
    name = next(iter(versions))[0]
    registry = services.registry
    for _, v in versions:
        assert registry.get(name, v).version == v
    with pytest.raises(NotFoundError):
        registry.get(name, str(max(int(v) for _, v in versions) + 1))
