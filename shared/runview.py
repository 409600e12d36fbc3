"""What the CLI and the HTTP API show of a run's graph (pure: a run, its flow, its FanOut rows).

``graph_view`` gives every step with its ``needs`` edges, state (``skipped`` with why),
``run_if``/``if``, and for a for_each step an instance summary (``18/20 succeeded, 2
running``) with the URL that pages its instances; ``instance_view`` is one instance as the
instances page lists it. A web console draws the graph from ``graph_view`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.engine.model import FanOut, InstanceRun, Run, StepRun, StepState

if TYPE_CHECKING:
    from shared.flows.model import Flow

INSTANCE_ORDER = ("succeeded", "running", "launching", "retry_wait", "failed", "cancelled", "pending")


def instances_url(run_id: str, step: str) -> str:
    return f"/api/runs/{run_id}/steps/{step}/instances"


def instance_counts(step: StepRun, fanouts: Mapping[str, FanOut]) -> tuple[int | None, dict[str, int]]:
    """(total, counts by state incl. ``pending``) of a for_each step's current fan-out."""
    ref = step.fanout
    if ref is None:
        return None, {}
    head = fanouts.get(step.name)
    if head is not None and head.epoch == ref.epoch and not step.state.terminal:
        return head.total, head.summary()
    if ref.counts or ref.total is not None:
        return ref.total, dict(ref.counts)
    return None, {}


def summary_text(total: int | None, counts: Mapping[str, int]) -> str:
    """``18/20 succeeded, 2 running`` (``expanding`` before the item list is known)."""
    if total is None:
        return "expanding"
    if total == 0:
        return "0 items"
    parts = [f"{counts.get('succeeded', 0)}/{total} succeeded"]
    for state in INSTANCE_ORDER[1:]:
        n = counts.get(state, 0)
        if n:
            parts.append(f"{n} {state.replace('_', ' ')}")
    return ", ".join(parts)


def with_fanout_progress(run: Run, fanouts: Mapping[str, FanOut]) -> Run:
    """A copy of ``run`` whose for_each steps carry ``progress`` (done/total) from their FanOut rows,
    so a follower draws one bar per fan-out."""
    out = run.model_copy(deep=True)
    for step in out.steps:
        total, counts = instance_counts(step, fanouts)
        if total:
            done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            step.progress = {"done": done, "total": total}
    return out


def graph_view(run: Run, flow: Flow | None, fanouts: Mapping[str, FanOut] | None = None) -> dict[str, Any]:
    """``{"nodes": [...], "edges": [{"from", "to"}]}`` in the order the steps are written."""
    fanouts = fanouts or {}
    specs = {s.name: s for s in flow.steps} if flow is not None else {}
    needs: Mapping[str, tuple[str, ...]] = flow.graph().needs if flow is not None else {}
    nodes = []
    edges: list[dict[str, str]] = []
    for step in run.steps:
        spec = specs.get(step.name)
        node: dict[str, Any] = {
            "name": step.name,
            "kind": step.kind,
            "state": step.state.value,
            "skip": step.skip,
            "needs": list(needs.get(step.name, ())),
            "run_if": spec.run_if if spec is not None else None,
            "if": spec.if_ if spec is not None else None,
            "attempt": step.attempt,
            "started_at": step.started_at.isoformat() if step.started_at else None,
            "ended_at": step.ended_at.isoformat() if step.ended_at else None,
            "error": step.error,
            "instances": None,
        }
        if (spec is not None and spec.for_each is not None) or step.fanout is not None:
            total, counts = instance_counts(step, fanouts)
            node["instances"] = {
                "epoch": step.fanout.epoch if step.fanout is not None else 0,
                "total": total,
                "counts": counts,
                "summary": summary_text(total, counts) if step.fanout is not None else "not started",
                "max_parallel": spec.max_parallel if spec is not None else None,
                "url": instances_url(run.run_id, step.name),
            }
        nodes.append(node)
        edges.extend({"from": n, "to": step.name} for n in node["needs"])
    return {"nodes": nodes, "edges": edges}


def instance_view(inst: InstanceRun, item: Any = None) -> dict[str, Any]:
    return {
        "index": inst.index,
        "item": item,
        "state": inst.state.value,
        "attempt": inst.attempt,
        "key": inst.key,
        "remote_id": inst.remote_id,
        "started_at": inst.started_at.isoformat() if inst.started_at else None,
        "ended_at": inst.ended_at.isoformat() if inst.ended_at else None,
        "error": inst.error,
        "outputs": inst.outputs,
        "progress": inst.progress,
    }


def pending_view(index: int, item: Any = None) -> dict[str, Any]:
    """An instance that has not begun (no row yet)."""
    return {"index": index, "item": item, "state": StepState.PENDING.value, "attempt": 0}


__all__ = [
    "graph_view",
    "instance_counts",
    "instance_view",
    "instances_url",
    "pending_view",
    "summary_text",
    "with_fanout_progress",
]
