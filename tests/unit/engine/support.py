"""Builders shared by the engine tests: flows, runs and a harness draining a MemoryQueue."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.engine.executor import Executor
from shared.engine.model import Message, Run, StepRun, TriggerContext
from shared.flows.model import Flow, FlowsFile
from tests.fakes import MemoryInstanceStore, MemoryQueue, MemoryRunStore, ScriptedBackend

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TRACEPARENT = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"


def make_flow(
    names: tuple[str, ...] = ("extract", "train", "score"),
    *,
    retries: dict[str, Any] | None = None,
    timeout_seconds: float = 3600.0,
    poll: dict[str, Any] | None = None,
    max_concurrent_runs: int | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> Flow:
    steps = []
    for name in names:
        step: dict[str, Any] = {
            "name": name,
            "kind": "databricks",
            "params": (params or {}).get(name, {"python_file": f"jobs/{name}.py"}),
            "timeout_seconds": timeout_seconds,
        }
        if retries is not None:
            step["retries"] = retries
        if poll is not None:
            step["poll"] = poll
        steps.append(step)
    doc: dict[str, Any] = {"triggers": [{"kind": "manual"}], "steps": steps}
    if max_concurrent_runs is not None:
        doc["policies"] = {"max_concurrent_runs": max_concurrent_runs}
    return Flow.model_validate(doc)


def make_run(flow: Flow, run_id: str = "run1", *, flow_name: str = "demo", created: datetime = T0) -> Run:
    return Run(
        run_id=run_id,
        flow=flow_name,
        trigger=TriggerContext(kind="manual", params={"n": 3}, source="test"),
        steps=[StepRun(name=s.name, kind=s.kind) for s in flow.steps],
        created_at=created,
        updated_at=created,
        traceparent=TRACEPARENT,
    )


def start(run: Run) -> Message:
    return Message(kind="start", run_id=run.run_id, flow=run.flow, traceparent=run.traceparent).with_id()


class Harness:
    """Store + queue + scripted backend + executor, with the executor's clock on the queue's clock."""

    def __init__(self, flow: Flow, *, flow_name: str = "demo", backend: ScriptedBackend | None = None) -> None:
        self.flow = flow
        self.flow_name = flow_name
        self.store = MemoryRunStore()
        self.queue = MemoryQueue()
        self.instances = MemoryInstanceStore()
        self.backend = backend or ScriptedBackend()
        self.executor = Executor(
            self.store,
            self.queue,
            FlowsFile(flows={flow_name: flow}),
            lambda kind: self.backend,
            clock=self.now,
            instances=self.instances,
        )

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.queue.now)

    def create(self, run_id: str = "run1", *, created: datetime = T0) -> Run:
        run = make_run(self.flow, run_id, flow_name=self.flow_name, created=created)
        assert self.store.create_if_absent(run)
        self.queue.send(start(run))
        return run

    def deliver_one(self) -> None:
        """Deliver the next visible message (advancing the clock to it if none is visible yet)."""
        got = self.queue.receive(max_messages=1)
        if not got:
            self.queue.advance(self.queue.next_visible_in() or 0.0)
            return
        self.executor.handle(got[0].message, delivery_count=got[0].dequeue_count)
        self.queue.complete(got[0])

    def until(self, done: Callable[[], bool], max_rounds: int = 500) -> None:
        """Deliver messages one by one until ``done()``."""
        for _ in range(max_rounds):
            if done():
                return
            self.deliver_one()
        raise AssertionError("the condition never held")

    def drain(self, max_rounds: int = 500) -> int:
        """Deliver every message (advancing the clock to the next scheduled one) until the queue is empty."""
        rounds = 0
        while self.queue.items:
            rounds += 1
            assert rounds <= max_rounds, "queue did not drain"
            got = self.queue.receive(max_messages=1)
            if not got:
                wait = self.queue.next_visible_in()
                assert wait is not None
                self.queue.advance(wait)
                continue
            received = got[0]
            self.executor.handle(received.message, delivery_count=received.dequeue_count)
            self.queue.complete(received)
        return rounds


def make_dag(*steps: dict[str, Any], policies: dict[str, Any] | None = None, poll_seconds: float = 1.0) -> Flow:
    """A flow from short step dicts (``name`` plus the DAG keys); every step is a databricks job."""
    out = []
    for spec in steps:
        step: dict[str, Any] = {
            "kind": "databricks",
            "params": {"python_file": f"jobs/{spec['name']}.py"},
            "poll": {"initial_seconds": poll_seconds, "multiplier": 1.0},
            **spec,
        }
        out.append(step)
    doc: dict[str, Any] = {"triggers": [{"kind": "manual"}], "steps": out}
    if policies:
        doc["policies"] = policies
    return Flow.model_validate(doc)
