"""Which steps of a run start now, which are skipped and why (pure).

A pending step is decided once every step it needs is done:

* ``run_if: all_succeeded`` (default): it runs when they all ended *ok* (succeeded, or skipped
  by their own condition), and is skipped (``upstream``) when one failed, was cancelled or was
  skipped for that reason;
* ``run_if: always``: it runs, whatever they did;
* ``run_if: any_failed``: it runs when one of them did not end ok, else it is skipped
  (``no_failure``, which counts as ok for the steps after it);
* then its ``if`` is evaluated: false skips it (``condition``, ok for the steps after it); an
  ``if`` that cannot be evaluated fails the step.

While the run is stopping (``on_failure: fail_fast`` after a failure) nothing new starts but
``run_if: always``/``any_failed`` steps: a pending ``all_succeeded`` step stays pending (never
reached, as in a chain before DAGs) and counts as not ok for the steps after it. Steps are
visited in an order where needs come first, so one call settles every skip a failure implies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.engine.model import (
    SKIP_CONDITION,
    SKIP_NO_FAILURE,
    SKIP_UPSTREAM,
    Run,
    StepRun,
    StepState,
)

if TYPE_CHECKING:
    from shared.flows.model import Flow


@dataclass
class Plan:
    start: list[str] = field(default_factory=list)
    skip: list[tuple[str, str]] = field(default_factory=list)  # (step, SKIP_*)
    fail: list[tuple[str, str]] = field(default_factory=list)  # (step, error): its ``if`` could not be evaluated


def topological(flow: Flow) -> list[str]:
    """The flow's steps with every step after the steps it needs; ties keep the file order."""
    graph = flow.graph()
    position = {n: i for i, n in enumerate(graph.order)}
    waiting = {n: {m for m in graph.needs[n] if m in position} for n in graph.order}
    out: list[str] = []
    ready = [n for n in graph.order if not waiting[n]]
    while ready:
        ready.sort(key=position.__getitem__)
        n = ready.pop(0)
        out.append(n)
        for d in graph.dependants.get(n, ()):
            if d in waiting and n in waiting[d]:
                waiting[d].discard(n)
                if not waiting[d]:
                    ready.append(d)
    out.extend(n for n in graph.order if n not in out)  # a cycle (never in a valid flow)
    return out


def outcome(step: StepRun) -> str:
    """``ok``, ``bad`` (failed, cancelled or skipped for it) or ``open`` (not done)."""
    if not step.state.terminal:
        return "open"
    return "ok" if step.ok else "bad"


def stopping(run: Run, flow: Flow) -> bool:
    """fail_fast and a step failed since the run (re)started: nothing new starts but run_if
    always/any_failed steps. (A failure a rerun left in place does not stop the rerun.)"""
    if flow.policies.on_failure != "fail_fast":
        return False
    since = run.started_at
    return any(
        s.state is StepState.FAILED and (since is None or s.ended_at is None or s.ended_at > since) for s in run.steps
    )


def plan(run: Run, flow: Flow, scope: Mapping[str, Any], *, failed_now: bool = False) -> Plan:
    """What to do with the pending steps of ``run`` now (see the module docstring).

    ``failed_now``: a step failed in the decision calling this (its end time may equal the
    run's start time, which ``stopping`` cannot tell from a failure a rerun left in place)."""
    from shared.flows.expr import ExpressionError, is_true

    out = Plan()
    steps = {s.name: s for s in run.steps}
    graph = flow.graph()
    stop = stopping(run, flow) or (failed_now and flow.policies.on_failure == "fail_fast")
    result: dict[str, str] = {}
    for name in topological(flow):
        step = steps.get(name)
        if step is None:  # in the flow but not in this (older) run
            result[name] = "ok"
            continue
        if step.state is not StepState.PENDING:
            result[name] = outcome(step)
            continue
        spec = flow.step(name)
        needs = [result.get(n, "ok") for n in graph.needs[name]]
        if stop and spec.run_if == "all_succeeded":
            result[name] = "bad"  # never reached: fail_fast starts nothing new
            continue
        if "open" in needs:
            result[name] = "open"
            continue
        failed = "bad" in needs
        if spec.run_if == "all_succeeded" and failed:
            out.skip.append((name, SKIP_UPSTREAM))
            result[name] = "bad"
            continue
        if spec.run_if == "any_failed" and not failed:
            out.skip.append((name, SKIP_NO_FAILURE))
            result[name] = "ok"
            continue
        condition = spec.condition()
        if condition is not None:
            try:
                go = is_true(condition, scope)
            except ExpressionError as exc:
                out.fail.append((name, f"if: {exc.message}"))
                result[name] = "bad"
                continue
            if not go:
                out.skip.append((name, SKIP_CONDITION))
                result[name] = "ok"
                continue
        out.start.append(name)
        result[name] = "open"
    return out


__all__ = ["Plan", "outcome", "plan", "stopping", "topological"]
