"""Cancel and rerun requests (HTTP API, CLI): validate, then hand the work to the executor.

Neither function touches a backend: each checks the request against the run, records it
where that helps (``cancel_requested``) and sends a message; the executor applies it
through ``decide`` like any other message. The message carries the run's ``reruns`` count
in ``tick`` so that a duplicate delivered after a later rerun does nothing.
"""

from __future__ import annotations

from typing import Any

from shared.engine.model import Message, Run, StepRun
from shared.errors import ConcurrencyError, ConflictError, ValidationError
from shared.flows.model import FlowsFile
from shared.queue.base import WorkQueue
from shared.store.base import RunStore

MAX_SAVE_TRIES = 5


def request_cancel(store: RunStore, queue: WorkQueue, run_id: str) -> Run:
    """Ask for a run to be cancelled; returns the run with ``cancel_requested`` set.

    NotFoundError for an unknown run; ConflictError when it has already finished.
    """
    for _ in range(MAX_SAVE_TRIES):
        run = store.get(run_id)
        if run.status.terminal:
            raise ConflictError(f"run {run_id} already {run.status.value}; there is nothing to cancel", status=409)
        if not run.cancel_requested:
            run.cancel_requested = True
            try:
                run = store.save(run)
            except ConcurrencyError:
                continue
        queue.send(
            Message(
                kind="cancel",
                run_id=run.run_id,
                flow=run.flow,
                tick=run.reruns,
                traceparent=run.traceparent,
                message_id=f"{run.run_id}:cancel:{run.reruns}",
            )
        )
        return run
    raise ConcurrencyError(f"run {run_id} keeps changing; try the cancel again")


def request_rerun(
    store: RunStore, queue: WorkQueue, flows: FlowsFile, run_id: str, from_step: str | None = None
) -> Run:
    """Ask for a finished run to run again from ``from_step`` and the steps after it (default:
    every step that did not succeed whose upstream did).

    The steps ``from_step`` waits for (directly or not) must have succeeded (or been skipped by
    a condition): their outputs are reused, and so are those of every step not after it.
    NotFoundError for an unknown run; ConflictError while the run is still
    pending/queued/running; ValidationError(field="from_step") for a step that is not in the
    run or cannot be a start.
    """
    run = store.get(run_id)
    if not run.status.terminal:
        raise ConflictError(
            f"run {run_id} is {run.status.value}; cancel it or wait for it to finish before a rerun", status=409
        )
    flow = flows.flows.get(run.flow)
    if flow is None:
        raise ValidationError(f"flow {run.flow!r} is no longer in flows.yaml", field="flow")
    names = [s.name for s in run.steps]
    if from_step is None:
        current = run.current_step()
        from_step = current.name if current is not None else names[0]
    if from_step not in names:
        raise ValidationError(f"unknown step {from_step!r}; the run's steps are: {', '.join(names)}", field="from_step")
    flow_names = [s.name for s in flow.steps]
    if from_step not in flow_names:
        raise ValidationError(
            f"step {from_step!r} is no longer in flow {run.flow} (steps: {', '.join(flow_names)})", field="from_step"
        )
    graph = flow.graph()
    blocker = _not_ok_upstream(run, graph, from_step)
    if blocker is not None:
        where = "before" if graph.is_chain() else "upstream of"
        raise ValidationError(
            f"step {blocker.name!r} {where} {from_step!r} has not succeeded ({blocker.state.value}); "
            f"rerun from {blocker.name!r}",
            field="from_step",
        )
    queue.send(
        Message(
            kind="rerun",
            run_id=run.run_id,
            flow=run.flow,
            from_step=from_step,
            tick=run.reruns,
            traceparent=run.traceparent,
            message_id=f"{run.run_id}:rerun:{run.reruns + 1}",
        )
    )
    return run


def rerun_steps(run: Run, flows: FlowsFile) -> list[str]:
    """The steps ``request_rerun`` accepts as ``from_step`` for ``run``, in run order ([] while it runs).

    The console's step picker offers exactly these; tests/unit/engine checks the two agree.
    """
    flow = flows.flows.get(run.flow)
    if not run.status.terminal or flow is None:
        return []
    in_flow = {s.name for s in flow.steps}
    graph = flow.graph()
    return [s.name for s in run.steps if s.name in in_flow and _not_ok_upstream(run, graph, s.name) is None]


def _not_ok_upstream(run: Run, graph: Any, step: str) -> StepRun | None:
    """The first step ``step`` waits for (directly or not) that did not end ok, or None."""
    upstream = graph.ancestors(step)
    return next((s for s in run.steps if s.name in upstream and not s.ok), None)


__all__ = ["request_cancel", "request_rerun", "rerun_steps"]
