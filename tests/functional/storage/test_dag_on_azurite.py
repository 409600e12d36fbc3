"""A DAG with a fan-out through the executor on real Azurite tables (run store + instance store):
branches overlap, max_parallel holds, the fan-in sees every instance's outputs in item order,
and the run document stays small."""

from __future__ import annotations

import json

from shared.engine.model import RunStatus, StepState
from shared.settings import Settings
from shared.store.table import TableRunStore
from shared.store.table_instances import TableInstanceStore
from tests.unit.engine.support import Harness, make_dag


def test_diamond_with_a_fan_out_on_azurite(storage_settings: Settings) -> None:
    flow = make_dag(
        {"name": "etl"},
        {
            "name": "train",
            "needs": ["etl"],
            "for_each": [f"p{i}" for i in range(12)],
            "max_parallel": 3,
            "params": {"python_file": "t.py", "parameters": ["${item}"]},
        },
        {"name": "quality", "needs": ["etl"]},
        {
            "name": "register",
            "needs": ["train", "quality"],
            "params": {"python_file": "r.py", "parameters": ["${steps.train.outputs}"]},
        },
    )
    h = Harness(flow)
    h.store = TableRunStore.from_settings(storage_settings)  # type: ignore[assignment]
    h.instances = TableInstanceStore.from_settings(storage_settings)  # type: ignore[assignment]
    h.executor.store, h.executor.instances = h.store, h.instances
    peak = 0
    real_launch = h.backend.launch

    def launch(request):  # type: ignore[no-untyped-def]
        nonlocal peak
        if request.index is not None:
            fan = h.instances.fanouts(request.run_id)["train"]
            peak = max(peak, fan.active)
        return real_launch(request)

    h.backend.launch = launch  # type: ignore[method-assign]
    h.backend.polls = 1
    h.create()
    h.drain(max_rounds=3000)
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED, run.error
    train, quality = run.step("train"), run.step("quality")
    assert train.started_at < quality.ended_at and quality.started_at < train.ended_at  # type: ignore[operator]
    assert 1 <= peak <= 3
    (register,) = [j.request for j in h.backend.jobs.values() if j.request.step == "register"]
    assert [o["item"] for o in json.loads(register.params["parameters"][0])] == [f"p{i}" for i in range(12)]
    rows = h.instances.instances("run1", "train", 1, limit=100)
    assert len(rows) == 12 and all(r.state is StepState.SUCCEEDED for r in rows)
    assert len(run.model_dump_json()) < 6000
