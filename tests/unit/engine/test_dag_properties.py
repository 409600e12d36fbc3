"""Property tests of DAG runs: random graphs with fan-outs, under duplicated, reordered and
redelivered messages and crashes (the chaos harness of test_properties, with the instance
store crashing too).

Whatever happened: no job is created twice for a (step, instance, attempt); no step or
instance starts before what it needs is done; a step after a fan-out starts only once every
instance is done (fan-in, once); never more than ``max_parallel`` instances are active;
skipped steps never launch; and the run ends the way the backend's script says (exactly,
step by step, under ``on_failure: continue``; its status under ``fail_fast``, where timing
decides which running branches a failure cancels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.backends.base import LaunchRequest, LaunchResult, StepStatus
from shared.engine.decide import (
    Event,
    FanOutCreated,
    FanOuts,
    Incoming,
    Launched,
    LaunchFailed,
    Polled,
    PollFailed,
    Recheck,
    decide,
)
from shared.engine.fanout import FanOutWrite
from shared.engine.model import FanOut, InstanceRun, Message, RunStatus, StepState, idempotency_key
from shared.engine.scheduling import topological
from shared.flows.model import Flow
from tests.fakes import MemoryInstanceStore, ScriptedBackend
from tests.unit.engine.support import T0, make_dag, make_run
from tests.unit.engine.test_properties import Chaos, Crash, chaos_harness, run_chaos


class CrashingInstances(MemoryInstanceStore):
    def __init__(self, chaos: Chaos) -> None:
        super().__init__()
        self.chaos = chaos

    def save(self, fanout: FanOut, instances: Any = ()) -> Any:
        if self.chaos.roll("crash before fan-out save", 8):
            raise Crash("before fan-out save")
        saved = super().save(fanout, instances)
        if self.chaos.roll("crash after fan-out save", 5):
            raise Crash("after fan-out save: commands lost")
        return saved

    def save_instances(self, run_id: str, instances: Any) -> Any:
        if self.chaos.roll("crash before instance save", 10):
            raise Crash("before instance save")
        return super().save_instances(run_id, instances)


@dataclass
class DagChecker(ScriptedBackend):
    """Asserts, at each new job, that the state on record allows it."""

    store: Any = None
    instances: Any = None
    flow: Any = None
    jobs_of: dict[tuple[str, int | None, int], str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)  # the executor would swallow an AssertionError

    def launch(self, request: LaunchRequest) -> LaunchResult:
        if request.key not in self.jobs:
            unit = (request.step, request.index, request.attempt)
            try:
                assert unit not in self.jobs_of, f"a second job for {unit}"
                self._check(request)
            except AssertionError as exc:
                self.violations.append(str(exc))
                raise
            self.jobs_of[unit] = request.key
        return super().launch(request)

    def _check(self, request: LaunchRequest) -> None:
        run = self.store.get(request.run_id)
        step = run.step(request.step)
        spec = self.flow.step(request.step)
        assert request.key == idempotency_key(run.run_id, request.step, request.attempt, request.index)
        heads = self.instances.fanouts(run.run_id)
        for need in self.flow.graph().needs[request.step]:
            other = run.step(need)
            never = (  # never reached: fail_fast stopped the run after a failure
                other.state is StepState.PENDING
                and self.flow.policies.on_failure == "fail_fast"
                and any(s.state is StepState.FAILED for s in run.steps)
            )
            assert other.state.terminal or never, f"{request.step} started before {need} ended"
            if spec.run_if == "all_succeeded":
                assert other.ok, f"{request.step} started although {need} did not succeed"
            if other.fanout is not None and other.fanout.total:
                head = heads[need]
                assert head.settled or head.stopping, f"fan-in of {need} before its instances ended"
        if request.index is None:
            assert step.state is StepState.LAUNCHING and step.key == request.key
            return
        assert step.state is StepState.RUNNING and step.fanout is not None
        head = heads[request.step]
        row = self.instances.instance(run.run_id, request.step, head.epoch, request.index)
        assert row is not None and row.state is StepState.LAUNCHING and row.key == request.key
        rows = self.instances.instances(run.run_id, request.step, head.epoch, limit=10_000)
        active = sum(1 for r in rows if r.state.active)
        assert active == head.active
        assert active <= (spec.max_parallel or head.total), "max_parallel exceeded"


@st.composite
def dags(draw: st.DrawFn) -> tuple[Flow, dict[tuple[str, int | None], int]]:
    """A random flow (2-5 steps, some fanning out) and each unit's leading failures."""
    n = draw(st.integers(2, 5))
    names = [f"s{i}" for i in range(n)]
    steps: list[dict[str, Any]] = []
    fails: dict[tuple[str, int | None], int] = {}
    for i, name in enumerate(names):
        step: dict[str, Any] = {"name": name, "retries": {"count": draw(st.integers(0, 1)), "backoff_seconds": 1}}
        if i and draw(st.booleans()):
            step["needs"] = sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=2)))
        elif not i or draw(st.booleans()):
            step["needs"] = [] if draw(st.booleans()) else step.get("needs")
        if step.get("needs") is None:
            step.pop("needs", None)
        items = draw(st.integers(0, 5)) if draw(st.integers(0, 2)) == 0 else None
        if items is not None:
            step["for_each"] = list(range(items))
            cap = draw(st.sampled_from([None, 1, 2]))
            if cap is not None:
                step["max_parallel"] = cap
        cond = draw(st.sampled_from([None, None, "true", "false", "${trigger.params.n} >= 3"]))
        if cond is not None:
            step["if"] = cond
        step["run_if"] = draw(st.sampled_from(["all_succeeded", "all_succeeded", "always", "any_failed"]))
        units = list(range(items)) if items is not None else [None]
        for u in units:
            fails[(name, u)] = draw(st.sampled_from([0, 0, 0, 1, 3]))
        steps.append(step)
    policy = draw(st.sampled_from(["continue", "fail_fast"]))
    return make_dag(*steps, policies={"on_failure": policy}), fails


def expected(flow: Flow, fails: dict[tuple[str, int | None], int]) -> dict[str, tuple[str, str | None]]:
    """The oracle: each step's end state under on_failure: continue."""
    out: dict[str, tuple[str, str | None]] = {}

    def ok(name: str) -> bool:
        state, skip = out[name]
        return state == "succeeded" or (state == "skipped" and skip in ("condition", "no_failure"))

    graph = flow.graph()
    for name in topological(flow):
        spec = flow.step(name)
        bad = any(not ok(n) for n in graph.needs[name])
        if spec.run_if == "all_succeeded" and bad:
            out[name] = ("skipped", "upstream")
            continue
        if spec.run_if == "any_failed" and not bad:
            out[name] = ("skipped", "no_failure")
            continue
        if spec.if_ is not None and spec.if_ == "false":
            out[name] = ("skipped", "condition")
            continue
        units = list(range(len(spec.for_each))) if isinstance(spec.for_each, list) else [None]
        failed = any(fails[(name, u)] > spec.retries.count for u in units)
        out[name] = ("failed" if failed else "succeeded", None)
    return out


def script(backend: ScriptedBackend, fails: dict[tuple[str, int | None], int]) -> None:
    for (name, index), count in fails.items():
        for attempt in range(1, count + 1):
            status = StepStatus("failed", error=f"scripted {attempt}", retryable=True)
            if index is None:
                backend.outcomes[(name, attempt)] = status
            else:
                backend.instance_outcomes[(name, index, attempt)] = status


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), dag=dags(), polls=st.integers(0, 2), budget=st.integers(0, 150))
def test_random_dags_under_chaos(
    data: st.DataObject, dag: tuple[Flow, dict[tuple[str, int | None], int]], polls: int, budget: int
) -> None:
    flow, fails = dag
    h, chaos = chaos_harness(data, flow)
    h.instances = CrashingInstances(chaos)
    backend = DagChecker(store=h.store, instances=h.instances, flow=flow)
    backend.polls = polls
    script(backend, fails)
    h.backend = backend
    h.executor.instances = h.instances
    chaos.calm = True
    h.create()
    chaos.calm = False
    run_chaos(h, chaos, data, budget, max_rounds=6000)

    chaos.calm = True
    assert backend.violations == []
    run = h.store.get("run1")
    assert run.status.terminal
    states = {s.name: (s.state.value, s.skip) for s in run.steps}
    want = expected(flow, fails)
    if flow.policies.on_failure == "continue":
        assert states == want, (states, want)
    want_failed = any(state == "failed" for state, _ in want.values())
    assert run.status is (RunStatus.FAILED if want_failed else RunStatus.SUCCEEDED), (run.error, states, want)
    for name, (state, _) in states.items():  # skipped steps never launched; nothing is left running
        launched = [k for (step, _, _), k in backend.jobs_of.items() if step == name]
        if state == "skipped":
            assert not launched, f"skipped step {name} launched"
        assert state not in ("launching", "running", "retry_wait")
        if state == "pending":  # never reached: only when fail_fast stopped the run
            assert flow.policies.on_failure == "fail_fast" and run.status is RunStatus.FAILED
            assert not [k for (step, _, _), k in backend.jobs_of.items() if step == name]
    for step, head in h.instances.fanouts("run1").items():
        assert head.active == 0, f"instances of {step} left active"
        rows = h.instances.instances("run1", step, head.epoch, limit=10_000)
        assert sum(1 for r in rows if r.state.active) == 0
        if states[step][0] == "succeeded":
            assert len(rows) == head.total and all(r.state is StepState.SUCCEEDED for r in rows)
    # each job's remote end was cancelled or finished (no orphans running)
    for key, job in backend.jobs.items():
        assert job.cancelled or job.polls_left == 0 or not _active_on_record(h, job.request), key


def _active_on_record(h: Any, request: LaunchRequest) -> bool:
    run = h.store.get(request.run_id)
    if request.index is None:
        return run.step(request.step).state.active
    head = h.instances.fanouts(request.run_id)[request.step]
    row = h.instances.instance(request.run_id, request.step, head.epoch, request.index)
    return row is not None and row.state.active and row.key == request.key


# ---------------------------------------------------------------- decide alone, with fan-outs


FAN_FLOW = make_dag(
    {"name": "a", "needs": []},
    {"name": "f", "needs": ["a"], "for_each": [1, 2, 3, 4], "max_parallel": 2, "retries": {"count": 1}},
    {"name": "z", "needs": ["f"], "run_if": "always"},
)


def fan_events() -> st.SearchStrategy[Event]:
    names = st.sampled_from(["a", "f", "z", "ghost"])
    index = st.none() | st.integers(0, 4)
    attempts = st.integers(0, 3)
    msg = st.builds(
        Message,
        kind=st.sampled_from(["start", "tick", "cancel", "rerun", "fanout"]),
        run_id=st.just("run1"),
        flow=st.just("demo"),
        step=names,
        attempt=attempts,
        tick=st.integers(0, 4) | st.none(),
        index=index,
    )
    status = st.builds(
        StepStatus,
        state=st.sampled_from(["running", "succeeded", "failed", "cancelled"]),
        outputs=st.just({"v": 1}),
        retryable=st.booleans(),
    )
    res = st.builds(LaunchResult, remote_id=st.just("job"))
    return st.one_of(
        st.builds(Incoming, message=msg, redelivered=st.booleans()),
        st.builds(Launched, step=names, attempt=attempts, result=res, index=index),
        st.builds(LaunchFailed, step=names, attempt=attempts, error=st.just("x"), retryable=st.booleans(), index=index),
        st.builds(Polled, step=names, attempt=attempts, status=status, index=index),
        st.builds(PollFailed, step=names, attempt=attempts, error=st.just("x"), retryable=st.booleans(), index=index),
        st.builds(FanOutCreated, step=st.just("f"), epoch=st.integers(0, 2)),
        st.just(Recheck()),
    )


def _apply_write(heads: dict[str, FanOut], rows: dict[tuple[str, int], InstanceRun], w: FanOutWrite) -> None:
    if w.fanout is not None:
        heads[w.step] = w.fanout.model_copy(deep=True)
    for r in w.instances:
        rows[(r.name, r.index)] = r.model_copy(deep=True)


@settings(max_examples=150, deadline=None)
@given(evs=st.lists(st.tuples(fan_events(), st.integers(0, 300)), max_size=40))
def test_decide_with_fan_outs_is_pure_and_keeps_its_invariants(evs: list[tuple[Event, int]]) -> None:
    flow = FAN_FLOW
    run = make_run(flow)
    heads: dict[str, FanOut] = {}
    rows: dict[tuple[str, int], InstanceRun] = {}
    for event, secs in evs:
        now = T0 + timedelta(seconds=secs)
        fan = FanOuts(heads, rows)
        before = (run.model_dump(mode="json"), {k: v.model_dump() for k, v in heads.items()})
        first = decide(run, flow, event, now, fan)
        second = decide(run, flow, event, now, fan)
        assert (run.model_dump(mode="json"), {k: v.model_dump() for k, v in heads.items()}) == before
        assert first.run == second.run and first.commands == second.commands and first.fanout == second.fanout
        assert not (first.changed and first.fanout is not None), "a decision writes the run or one fan-out"
        # a CreateFanOut from the run's side becomes a head (what the executor would do)
        for cmd in first.commands:
            if type(cmd).__name__ == "CreateFanOut":
                heads[cmd.fanout.step] = cmd.fanout.model_copy(update={"etag": "e"})  # type: ignore[attr-defined]
        if first.fanout is not None:
            _apply_write(heads, rows, first.fanout)
            head = heads[first.fanout.step]
            active = sum(1 for (s, _), r in rows.items() if s == head.step and r.state.active and r.epoch == head.epoch)
            assert active == head.active and active <= 2, "max_parallel"
            assert head.next <= head.total
        if first.changed:
            run = first.run
        for cmd in first.commands:
            if type(cmd).__name__ == "Launch" and getattr(cmd, "index", None) is None:
                assert run.step(cmd.step).state is StepState.LAUNCHING  # type: ignore[attr-defined]
        if run.status.terminal:
            assert not any(s.state.active for s in run.steps)
