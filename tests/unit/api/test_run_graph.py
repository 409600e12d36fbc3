"""GET /api/runs/{id} carries the graph a console draws (needs edges, skipped steps, instance
summaries); GET /api/runs/{id}/steps/{step}/instances pages a fan-out's instances."""

from __future__ import annotations

from pathlib import Path

from shared.api.handlers import Api
from shared.backends.base import StepStatus
from shared.flows.model import FlowsFile
from shared.settings import Settings
from shared.wiring import Services
from tests.unit.api.test_handlers import call
from tests.unit.engine.support import Harness, make_dag

FLOW = make_dag(
    {"name": "etl"},
    {"name": "train", "for_each": [f"s{i}" for i in range(7)], "max_parallel": 2},
    {"name": "quality", "needs": ["etl"], "if": "${steps.etl.outputs.result} == 'no'"},
    {"name": "notify", "needs": ["train", "quality"], "run_if": "always"},
)


def api_over(h: Harness, tmp_path: Path) -> Api:
    services = Services(
        Settings(home=tmp_path, root=tmp_path),
        store=h.store,
        queue=h.queue,
        flows=FlowsFile(flows={"demo": FLOW}),
        instances=h.instances,
        telemetry=None,
    )
    return Api(services)


def test_the_run_document_draws_the_graph_and_pages_instances(tmp_path: Path) -> None:
    h = Harness(FLOW)
    h.backend.polls = 3
    h.backend.instance_outcomes[("train", 1, 1)] = StepStatus("succeeded", outputs={"model": "m1"})
    h.create()
    api = api_over(h, tmp_path)

    def some_done() -> bool:
        heads = h.instances.fanouts("run1")
        return "train" in heads and heads["train"].counts.get("succeeded", 0) >= 2

    h.until(some_done)
    doc = call(api, "GET", "/api/runs/run1").json()
    graph = doc["graph"]
    assert {"from": "etl", "to": "train"} in graph["edges"] and {"from": "quality", "to": "notify"} in graph["edges"]
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["quality"]["state"] == "skipped" and nodes["quality"]["skip"] == "condition"
    train = nodes["train"]["instances"]
    assert train["total"] == 7 and train["max_parallel"] == 2 and train["url"] == "/api/runs/run1/steps/train/instances"
    assert train["summary"].startswith(f"{train['counts']['succeeded']}/7 succeeded")
    assert (
        train["counts"]["pending"]
        + train["counts"]["succeeded"]
        + train["counts"].get("running", 0)
        + train["counts"].get("launching", 0)
        == 7
    )

    page = call(api, "GET", train["url"], limit="3").json()
    assert [i["index"] for i in page["instances"]] == [0, 1, 2]
    assert (
        page["instances"][1]["item"] == "s1" and page["next"] == "/api/runs/run1/steps/train/instances?start=3&limit=3"
    )
    rest = call(api, "GET", train["url"], start="3", limit="10").json()
    assert [i["index"] for i in rest["instances"]] == [3, 4, 5, 6] and rest["next"] is None
    assert "pending" in {i["state"] for i in rest["instances"]}
    waiting = call(api, "GET", train["url"], state="pending").json()["instances"]
    assert waiting and all(i["state"] == "pending" and i["attempt"] == 0 for i in waiting)

    h.drain()
    final = call(api, "GET", "/api/runs/run1").json()
    train = {n["name"]: n for n in final["graph"]["nodes"]}["train"]["instances"]
    assert train["summary"] == "7/7 succeeded" and final["status"] == "succeeded"
    done = call(api, "GET", train["url"], state="succeeded", limit="1000").json()
    assert len(done["instances"]) == 7 and done["instances"][1]["outputs"] == {"model": "m1"}


def test_instance_paging_rejects_bad_input_with_the_field(tmp_path: Path) -> None:
    h = Harness(FLOW)
    h.create()
    api = api_over(h, tmp_path)
    assert call(api, "GET", "/api/runs/run1/steps/nope/instances").status == 404
    bad = call(api, "GET", "/api/runs/run1/steps/train/instances", state="sleeping")
    assert bad.status == 400 and bad.json()["error"]["field"] == "state"
    assert call(api, "GET", "/api/runs/run1/steps/train/instances", start="-1").json()["error"]["field"] == "start"
    # a step that has not fanned out yet answers an empty page
    empty = call(api, "GET", "/api/runs/run1/steps/train/instances").json()
    assert empty["instances"] == [] and empty["summary"] == "not started"
