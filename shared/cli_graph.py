"""The CLI's pictures of a DAG run: the graph for ``show``, instance-nested ``trace``, fan-out
progress for ``--follow``. Pure rendering over shared.runview; shared.cli calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from shared.runview import graph_view, with_fanout_progress
from shared.terminal import line

if TYPE_CHECKING:
    from rich.console import Console

    from shared.engine.model import FanOut, Run
    from shared.flows.model import Flow
    from shared.store.base import InstanceStore

SKIP_TEXT = {
    "condition": "its if was false",
    "no_failure": "nothing failed (run_if: any_failed)",
    "upstream": "a step it needs did not succeed",
}


def is_plain_chain(run: Run, flow: Flow | None) -> bool:
    """A run whose graph the steps table already shows: a chain, no fan-out, nothing skipped."""
    if any(s.fanout is not None or s.skip is not None for s in run.steps):
        return False
    return flow is None or (flow.graph().is_chain() and all(s.for_each is None and s.if_ is None for s in flow.steps))


def graph_table(view: Mapping[str, Any]) -> Table:
    """One row per step: what it needs, its state (and why it was skipped), its instances."""
    from shared.cli import STATUS_STYLE

    table = Table(show_header=True, header_style="bold", expand=False, title="graph", title_justify="left")
    table.add_column("step")
    table.add_column("needs")
    table.add_column("state")
    table.add_column("instances / condition", overflow="fold")
    for node in view["nodes"]:
        state = Text(node["state"], style=STATUS_STYLE.get(node["state"], ""))
        if node["skip"]:
            state.append(f" ({SKIP_TEXT.get(node['skip'], node['skip'])})", style="dim")
        notes: list[str] = []
        inst = node.get("instances")
        if inst is not None:
            cap = f" (max_parallel {inst['max_parallel']})" if inst.get("max_parallel") else ""
            notes.append(f"{node['name']} {inst['summary']}{cap}")
        if node.get("if") is not None:
            notes.append(f"if {node['if']}")
        if node.get("run_if") not in (None, "all_succeeded"):
            notes.append(f"run_if {node['run_if']}")
        needs = ", ".join(node["needs"]) or "-"
        table.add_row(Text(node["name"]), Text(needs), state, Text("; ".join(notes) or "-"))
    return table


def print_graph(run: Run, flow: Flow | None, fanouts: Mapping[str, FanOut], out: Console) -> None:
    """The graph of a DAG run (nothing for a plain chain: the steps table is its graph)."""
    if is_plain_chain(run, flow):
        return
    out.print(graph_table(graph_view(run, flow, fanouts)))


def instance_trace_tree(records: list[dict[str, Any]], title: str) -> Tree:
    """The run's records with those of each step under the step, and those of a for_each step's
    instances under ``[index]`` (each group nested by parent span as ``trace_tree`` does)."""
    from shared.cli import trace_tree

    loose: list[dict[str, Any]] = []
    steps: dict[str, list[dict[str, Any]]] = {}
    instances: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for rec in records:
        attrs = rec.get("attributes") or {}
        step = attrs.get("step")
        if not isinstance(step, str):
            loose.append(rec)
            continue
        index = attrs.get("index")
        if isinstance(index, int):
            instances.setdefault(step, {}).setdefault(index, []).append(rec)
            steps.setdefault(step, [])
        else:
            steps.setdefault(step, []).append(rec)
    root = trace_tree(loose, title)
    for step, own in steps.items():
        node = trace_tree(own, f"step {step}")
        node.label = line((f"step {step}", "bold"))
        fan = instances.get(step, {})
        if fan:
            node.label = line((f"step {step}", "bold"), (f"  {len(fan)} instances", "dim"))
            for index in sorted(fan):
                node.children.append(trace_tree(fan[index], f"{step}[{index}]"))
        root.children.append(node)
    return root


def fanout_progress(instances: InstanceStore | None) -> Callable[[Run], Run]:
    """For a follower: the run with each fan-out's done/total as its progress (one bar each)."""

    def enrich(run: Run) -> Run:
        if instances is None or not any(s.fanout is not None for s in run.steps):
            return run
        try:
            return with_fanout_progress(run, instances.fanouts(run.run_id))
        except Exception:  # progress is decoration: a storage hiccup must not stop following
            return run

    return enrich


__all__ = ["fanout_progress", "graph_table", "instance_trace_tree", "is_plain_chain", "print_graph"]
