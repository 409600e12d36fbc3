"""``rerun_steps`` (the console's step picker) offers exactly the steps ``request_rerun`` accepts."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine.control import request_rerun, rerun_steps
from shared.engine.model import Run, RunStatus, StepRun, StepState, TriggerContext
from shared.errors import ConflictError, ValidationError
from shared.flows.model import FlowsFile
from tests.fakes import MemoryQueue, MemoryRunStore

NAMES = ["a", "b", "c", "d"]


def flows_with(steps: list[str]) -> FlowsFile:
    step = {"kind": "databricks", "params": {"python_file": "x.py"}}
    return FlowsFile.model_validate(
        {"flows": {"f": {"triggers": [{"kind": "manual"}], "steps": [{"name": n, **step} for n in steps]}}}
    )


@settings(max_examples=150, deadline=None)
@given(
    states=st.lists(st.sampled_from(list(StepState)), min_size=1, max_size=4),
    status=st.sampled_from(list(RunStatus)),
    dropped=st.sets(st.sampled_from(NAMES), max_size=2),
)
def test_picker_matches_request_rerun(states: list[StepState], status: RunStatus, dropped: set[str]) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    names = NAMES[: len(states)]
    run = Run(
        run_id="r1",
        flow="f",
        status=status,
        trigger=TriggerContext(kind="manual"),
        steps=[StepRun(name=n, kind="databricks", state=s) for n, s in zip(names, states, strict=True)],
        created_at=now,
        updated_at=now,
    )
    kept = [n for n in names if n not in dropped] or names[:1]
    flows = flows_with(kept)
    store = MemoryRunStore()
    store.create_if_absent(run)
    offered = rerun_steps(run, flows)
    for name in names:
        try:
            request_rerun(store, MemoryQueue(), flows, "r1", name)
            accepted = True
        except (ValidationError, ConflictError):
            accepted = False
        assert accepted == (name in offered), (name, offered, states, status, kept)
