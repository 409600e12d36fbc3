"""The step graph: nodes with ``needs`` edges, laid out in columns and drawn as SVG.

``dag_graph(services)`` is the console's source: the run's graph as ``shared.runview`` gives it
(needs edges, skipped steps, fan-out summaries) with each fan-out's first instances;
``chain_graph(run)`` needs no storage (each step needs the one before). Layout: a node's column
is one more than the furthest of its needs (longest path; unknown needs are ignored and a cycle
cannot loop), rows keep input order. Fan-out nodes show their instance summary; the page lists
the instances below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from markupsafe import Markup

from shared.console.base import GraphNode, Instance
from shared.console.svg import clip, el, join, svg

if TYPE_CHECKING:
    from shared.engine.model import Run
    from shared.wiring import Services

NODE_W, NODE_H = 176.0, 54.0
GAP_X, GAP_Y, PAD = 56.0, 18.0, 12.0


INSTANCES_SHOWN = 500  # a fan-out's instances listed on the run page (the summary counts all)


def dag_graph(services: Services) -> Callable[[Run], list[GraphNode]]:
    """The graph source of the console: ``shared.runview.graph_view`` (needs edges, skipped
    steps, fan-out summaries) with the first instances of each fan-out from the instance rows."""
    from shared.runview import graph_view

    def graph(run: Run) -> list[GraphNode]:
        flow = services.flows.flows.get(run.flow)
        store = services.instances
        fanouts = store.fanouts(run.run_id) if any(s.fanout is not None for s in run.steps) else {}
        view = graph_view(run, flow, fanouts)
        nodes: list[GraphNode] = []
        for node, step in zip(view["nodes"], run.steps, strict=True):
            detail = [f"attempt {step.attempt}"] if step.attempt > 1 else []
            if step.skip:
                detail.append(f"skipped: {step.skip}")
            elif step.progress and step.progress.get("total") and step.fanout is None:
                detail.append(f"{step.progress.get('done', 0)}/{step.progress['total']} done")
            instances: tuple[Instance, ...] = ()
            counted = ""
            info = node.get("instances")
            if info is not None and step.fanout is not None:
                counted = str(info.get("summary") or "")
                rows = store.instances(run.run_id, step.name, step.fanout.epoch, limit=INSTANCES_SHOWN)
                instances = tuple(
                    Instance(f"{step.name}[{r.index}]", r.state.value, f"attempt {r.attempt}" if r.attempt > 1 else "")
                    for r in rows
                )
                shown = len(instances)
                total = info.get("total") or 0
                if shown < min(total, INSTANCES_SHOWN):  # not begun yet: no row
                    instances += tuple(
                        Instance(f"{step.name}[{i}]", "pending") for i in range(shown, min(total, INSTANCES_SHOWN))
                    )
            nodes.append(
                GraphNode(
                    id=step.name,
                    label=step.name,
                    state=step.state.value,
                    needs=tuple(node["needs"]),
                    kind=step.kind,
                    detail=" · ".join(detail),
                    instances=instances,
                    counted=counted,
                )
            )
        return nodes

    return graph


def chain_graph(run: Run) -> list[GraphNode]:
    nodes: list[GraphNode] = []
    previous: str | None = None
    for step in run.steps:
        detail = [f"attempt {step.attempt}"] if step.attempt > 1 else []
        if step.progress and step.progress.get("total"):
            detail.append(f"{step.progress.get('done', 0)}/{step.progress['total']} done")
        nodes.append(
            GraphNode(
                id=step.name,
                label=step.name,
                state=step.state.value,
                needs=(previous,) if previous else (),
                kind=step.kind,
                detail=" · ".join(detail),
            )
        )
        previous = step.name
    return nodes


def columns(nodes: list[GraphNode]) -> dict[str, tuple[int, int]]:
    """``{node id: (column, row)}``: column = longest chain of needs before it."""
    by_id = {n.id: n for n in nodes}
    rank: dict[str, int] = {}

    def rank_of(node_id: str, seen: frozenset[str]) -> int:
        if node_id in rank:
            return rank[node_id]
        node = by_id[node_id]
        needs = [d for d in node.needs if d in by_id and d not in seen and d != node_id]
        value = 1 + max((rank_of(d, seen | {node_id}) for d in needs), default=-1)
        rank[node_id] = value
        return value

    placed: dict[str, tuple[int, int]] = {}
    rows: dict[int, int] = {}
    for n in nodes:
        col = rank_of(n.id, frozenset())
        placed[n.id] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return placed


def graph_svg(nodes: list[GraphNode]) -> Markup:
    if not nodes:
        return Markup("")
    at = columns(nodes)
    n_cols = 1 + max(c for c, _ in at.values())
    n_rows = 1 + max(r for _, r in at.values())
    width = 2 * PAD + n_cols * NODE_W + (n_cols - 1) * GAP_X
    height = 2 * PAD + n_rows * NODE_H + (n_rows - 1) * GAP_Y

    def box(node_id: str) -> tuple[float, float]:
        col, row = at[node_id]
        return PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y)

    edges = []
    for n in nodes:
        x2, y2 = box(n.id)
        for need in n.needs:
            if need not in at or need == n.id:
                continue
            x1, y1 = box(need)
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            mid = (sx + ex) / 2
            d = f"M{sx:.1f},{sy:.1f} C{mid:.1f},{sy:.1f} {mid:.1f},{ey:.1f} {ex - 4:.1f},{ey:.1f}"
            edges.append(el("path", {"class": "edge", "d": d, "marker-end": "url(#arrow)"}))
    marker = el(
        "defs",
        None,
        el(
            "marker",
            {
                "id": "arrow",
                "viewBox": "0 0 8 8",
                "refX": "7",
                "refY": "4",
                "markerWidth": "7",
                "markerHeight": "7",
                "orient": "auto",
            },
            el("path", {"class": "arrow", "d": "M0,0 L8,4 L0,8 z"}),
        ),
    )
    boxes = []
    for n in nodes:
        x, y = box(n.id)
        second = n.summary or " · ".join(p for p in (n.state.replace("_", " "), n.detail) if p)
        tip = (
            f"{n.label} ({n.kind})  {n.state}"
            + (f"\n{n.detail}" if n.detail else "")
            + (f"\n{n.summary}" if n.summary else "")
        )
        boxes.append(
            el(
                "g",
                {"class": f"node state-{_token(n.state)}", "data-node": n.id, "data-state": n.state},
                el("title", None, tip),
                el("rect", {"x": x, "y": y, "width": NODE_W, "height": NODE_H, "rx": "8"}),
                el("text", {"class": "label", "x": x + 10, "y": y + 22}, clip(n.label, 22)),
                el("text", {"class": "sub", "x": x + 10, "y": y + 40}, clip(second, 28)),
            )
        )
    return svg(width, height, "step graph", "graph", marker, join(edges), join(boxes))


def _token(state: str) -> str:
    """A state as a CSS class word (anything odd becomes ``other``)."""
    return state if state.replace("_", "").isalnum() else "other"
