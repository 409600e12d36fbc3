"""What ``${...}`` can see: the template scope of a run, built purely from the run's values.

Params (rendered by the executor at launch), ``for_each`` lists and ``if`` conditions
(evaluated by ``decide``) all read this one scope. A for_each step's outputs are not in the
run document: they are the list of its instances' outputs, in item order, which the executor
loads when something references them and hands in as ``fanout_outputs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.engine.model import Run, StepState

if TYPE_CHECKING:
    from shared.flows.model import Flow


def earlier_steps(run: Run) -> dict[str, dict[str, Any]]:
    """``{name: {"outputs", "remote_id", "state"}}`` of the run's succeeded steps."""
    return {
        s.name: {"outputs": dict(s.outputs), "remote_id": s.remote_id, "state": s.state.value}
        for s in run.steps
        if s.state is StepState.SUCCEEDED
    }


def template_scope(
    run: Run,
    flow: Flow,
    fanout_outputs: Mapping[str, list[Any]] | None = None,
    *,
    item: Any = None,
    index: int | None = None,
) -> dict[str, Any]:
    """The scope of ``${...}`` (see shared.flows.template); ``item``/``index`` for an instance."""
    steps = earlier_steps(run)
    for name, outputs in (fanout_outputs or {}).items():
        if name in steps:
            steps[name]["outputs"] = list(outputs)
    scope: dict[str, Any] = {
        "trigger": run.trigger.template_scope(),
        "steps": steps,
        "run": {"id": run.run_id, "flow": run.flow, "reruns": run.reruns, "trigger_kind": run.trigger.kind},
        "flow": {"name": run.flow, "model": flow.model.model_dump() if flow.model is not None else None},
    }
    if index is not None:
        scope["item"] = item
        scope["index"] = index
    return scope


def fanout_refs(value: Any, fan_out_steps: set[str]) -> set[str]:
    """The for_each steps whose outputs ``value`` (params, a for_each list) references."""
    from shared.flows.template import TemplateError, references

    try:
        refs = references(value)
    except TemplateError:
        return set()
    out: set[str] = set()
    for ref in refs:
        parts = ref.split(".")
        if len(parts) >= 3 and parts[0] == "steps" and parts[1] in fan_out_steps and parts[2] == "outputs":
            out.add(parts[1])
    return out


__all__ = ["earlier_steps", "fanout_refs", "template_scope"]
