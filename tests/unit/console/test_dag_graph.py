"""The console's graph source over a real DAG run: needs edges, skipped steps, fan-out instances."""

from __future__ import annotations

from types import SimpleNamespace

from shared.console.graph import dag_graph, graph_svg
from shared.flows.model import FlowsFile
from tests.unit.engine.support import Harness, make_dag

FLOW = make_dag(
    {"name": "etl"},
    {"name": "train", "for_each": list(range(20)), "max_parallel": 4},
    {"name": "quality", "needs": ["etl"], "if": "${steps.etl.outputs.result} == 'never'"},
    {"name": "notify", "needs": ["train", "quality"], "run_if": "always"},
)


def test_the_run_page_graph_is_the_dag_with_each_fan_out_s_instances() -> None:
    h = Harness(FLOW)
    h.create()
    h.drain()
    run = h.store.get("run1")
    services = SimpleNamespace(flows=FlowsFile(flows={"demo": FLOW}), instances=h.instances)
    nodes = {n.id: n for n in dag_graph(services)(run)}  # type: ignore[arg-type]
    assert nodes["notify"].needs == ("train", "quality") and nodes["train"].needs == ("etl",)
    assert nodes["quality"].state == "skipped" and "skipped" in nodes["quality"].detail
    train = nodes["train"]
    assert train.summary == "20/20 succeeded" and len(train.instances) == 20
    assert [i.id for i in train.instances[:2]] == ["train[0]", "train[1]"]
    assert {i.state for i in train.instances} == {"succeeded"}
    svg = str(graph_svg(list(nodes.values())))
    assert "state-skipped" in svg and "20/20 succeeded" in svg
