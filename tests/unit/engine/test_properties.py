"""Property tests: the engine under duplicated, reordered and redelivered messages and crashes.

The chaos harness delivers any visible message (not only the oldest), duplicates some,
"loses" some completions (the queue redelivers them) and makes the executor crash around
its saves and sends: before a save (nothing stored), after a save (the run is stored but
its commands are lost) and before a send. Once the chaos budget is spent it delivers
calmly until the queue is empty. Whatever happened, no job may be launched twice for an
attempt, no step may be launched before the steps ahead of it succeeded, and the run must
end the way the backend's script says.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.backends.base import LaunchRequest, LaunchResult, StepStatus
from shared.engine.commands import Launch
from shared.engine.decide import Event, Incoming, Launched, LaunchFailed, Polled, PollFailed, decide
from shared.engine.model import Message, Run, RunStatus, StepState, idempotency_key
from shared.flows.model import Flow
from tests.fakes import MemoryQueue, MemoryRunStore, ScriptedBackend
from tests.unit.engine.support import T0, Harness, make_flow, make_run

VISIBILITY = 30.0
STEPS = ("extract", "train", "score")


class Crash(Exception):
    """The worker process died here."""


class Chaos:
    """Hypothesis-driven fault decisions; quiet once ``calm`` is set."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.calm = False

    def roll(self, label: str, one_in: int) -> bool:
        if self.calm:
            return False
        # shrinks towards 0, i.e. towards no fault
        return self.data.draw(st.integers(0, one_in - 1), label=label) == one_in - 1


class CrashingStore(MemoryRunStore):
    def __init__(self, chaos: Chaos) -> None:
        super().__init__()
        self.chaos = chaos

    def save(self, run: Run) -> Run:
        if self.chaos.roll("crash before save", 8):
            raise Crash("before save")
        saved = super().save(run)
        if self.chaos.roll("crash after save", 5):
            raise Crash("after save: commands lost")
        return saved


class CrashingQueue(MemoryQueue):
    def __init__(self, chaos: Chaos) -> None:
        super().__init__()
        self.chaos = chaos

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        if self.chaos.roll("crash before send", 8):
            raise Crash("before send")
        super().send(message, delay_seconds)

    def inject(self, message: Message, delay: float) -> None:
        """A duplicate the broker made (never crashes)."""
        MemoryQueue.send(self, message.model_copy(update={"message_id": ""}), delay)


class CheckingBackend(ScriptedBackend):
    """Asserts, at each *new* job, that the run on record allows it."""

    store: Any = None

    def launch(self, request: LaunchRequest) -> LaunchResult:
        if request.key not in self.jobs:
            run = self.store.get(request.run_id)
            step = run.step(request.step)
            assert step.state is StepState.LAUNCHING, f"new job for a {step.state} step"
            assert step.key == request.key == idempotency_key(run.run_id, request.step, request.attempt)
            assert step.attempt == request.attempt
            idx = run.step_index(request.step)
            assert all(s.state is StepState.SUCCEEDED for s in run.steps[:idx]), "a step was skipped"
            assert all(s.state is StepState.PENDING for s in run.steps[idx + 1 :]), "a later step ran early"
            for earlier in run.steps[:idx]:  # outputs of earlier steps are what the job sees
                assert request.steps[earlier.name]["outputs"] == earlier.outputs
        return super().launch(request)


def chaos_harness(data: st.DataObject, flow: Flow) -> tuple[Harness, Chaos]:
    chaos = Chaos(data)
    h = Harness(flow)
    h.store = CrashingStore(chaos)
    h.queue = CrashingQueue(chaos)
    backend = CheckingBackend()
    backend.store = h.store
    h.backend = backend
    h.executor.store, h.executor.queue = h.store, h.queue
    return h, chaos


def run_chaos(h: Harness, chaos: Chaos, data: st.DataObject, budget: int, max_rounds: int = 3000) -> None:
    q = h.queue
    assert isinstance(q, CrashingQueue)
    rounds = 0
    while q.items:
        rounds += 1
        assert rounds < max_rounds, "the engine did not settle"
        if rounds > budget:
            chaos.calm = True
        visible = sorted((i for i in q.items if i.visible_at <= q.now), key=lambda i: (i.visible_at, i.seq))
        if not visible:
            q.advance(q.next_visible_in() or 0.0)
            continue
        pick = 0 if chaos.calm else data.draw(st.integers(0, len(visible) - 1), label="deliver")
        item = visible[pick]
        item.dequeues += 1
        item.visible_at = q.now + VISIBILITY
        if chaos.roll("duplicate", 6):
            q.inject(item.message, data.draw(st.sampled_from([0.0, 1.0, 45.0]), label="dup delay"))
        try:
            h.executor.handle(item.message, delivery_count=item.dequeues)
        except Crash:
            continue  # never completed: redelivered after the visibility timeout
        if chaos.roll("completion lost", 8):
            continue
        if item in q.items:
            q.items.remove(item)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    data=st.data(),
    fail_first=st.sets(st.sampled_from(STEPS)),
    polls=st.integers(0, 3),
    budget=st.integers(0, 120),
)
def test_chaos_never_double_launches_or_skips_and_finishes(
    data: st.DataObject, fail_first: set[str], polls: int, budget: int
) -> None:
    flow = make_flow(STEPS, retries={"count": 2, "backoff_seconds": 1})
    h, chaos = chaos_harness(data, flow)
    h.backend.polls = polls
    for name in fail_first:
        h.backend.outcomes[(name, 1)] = StepStatus("failed", error="flaky", retryable=True)
    chaos.calm = True
    h.create()  # the trigger side is not under test here
    chaos.calm = False
    run_chaos(h, chaos, data, budget)

    chaos.calm = True
    run = h.store.get("run1")
    assert run.status is RunStatus.SUCCEEDED, run.error
    expected = []
    for name in STEPS:
        expected.append(idempotency_key("run1", name, 1))
        if name in fail_first:
            expected.append(idempotency_key("run1", name, 2))
    assert h.backend.launches == expected  # one job per (step, attempt), in step order
    assert [s.outputs for s in run.steps] == [{"result": f"{n}-{2 if n in fail_first else 1}"} for n in STEPS]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), budget=st.integers(0, 150))
def test_chaos_respects_max_concurrent_runs_and_finishes_every_run(data: st.DataObject, budget: int) -> None:
    flow = make_flow(("a", "b"), max_concurrent_runs=1)
    h, chaos = chaos_harness(data, flow)
    running: list[int] = []
    store = h.store
    real_save = store.save

    def save(run: Run) -> Run:
        saved = real_save(run)
        running.append(sum(1 for r in store.list_runs("demo", [RunStatus.RUNNING])))
        return saved

    store.save = save  # type: ignore[method-assign]
    chaos.calm = True
    for i in range(3):
        h.create(f"run{i}", created=T0 + timedelta(seconds=i))
    chaos.calm = False
    run_chaos(h, chaos, data, budget)
    chaos.calm = True
    assert [h.store.get(f"run{i}").status for i in range(3)] == [RunStatus.SUCCEEDED] * 3
    assert max(running) <= 1
    assert sorted(h.backend.launches) == sorted(f"run{i}-{s}-1" for i in range(3) for s in ("a", "b"))


# ---------------------------------------------------------------- decide alone


def events(flow: Flow) -> st.SearchStrategy[Event]:
    names = st.sampled_from([s.name for s in flow.steps] + ["ghost"])
    attempts = st.integers(0, 4)
    msg = st.builds(
        Message,
        kind=st.sampled_from(["start", "tick", "cancel", "rerun"]),
        run_id=st.just("run1"),
        flow=st.just("demo"),
        step=names,
        attempt=attempts,
        tick=st.integers(0, 6) | st.none(),
        from_step=names | st.none(),
    )
    status = st.builds(
        StepStatus,
        state=st.sampled_from(["running", "succeeded", "failed", "cancelled"]),
        outputs=st.dictionaries(st.sampled_from(["uri", "gate", "n"]), st.integers(0, 9), max_size=2),
        error=st.none() | st.just("boom"),
        retryable=st.booleans(),
    )
    return st.one_of(
        st.builds(Incoming, message=msg, active_runs=st.integers(0, 2), redelivered=st.booleans()),
        st.builds(Launched, step=names, attempt=attempts, result=st.builds(LaunchResult, remote_id=st.just("job"))),
        st.builds(LaunchFailed, step=names, attempt=attempts, error=st.just("x"), retryable=st.booleans()),
        st.builds(Polled, step=names, attempt=attempts, status=status),
        st.builds(PollFailed, step=names, attempt=attempts, error=st.just("x"), retryable=st.booleans()),
    )


DECIDE_FLOW = make_flow(
    ("a", "b", "c"), retries={"count": 1, "on": "retryable"}, timeout_seconds=100, max_concurrent_runs=1
)


@settings(max_examples=150, deadline=None)
@given(
    evs=st.lists(st.tuples(events(DECIDE_FLOW), st.integers(0, 300)), max_size=40),
)
def test_decide_is_pure_deterministic_and_launches_only_in_order(evs: list[tuple[Event, int]]) -> None:
    flow = DECIDE_FLOW
    run = make_run(flow)
    run.etag = "etag-1"
    for event, secs in evs:
        now = T0 + timedelta(seconds=secs)
        before = run.model_dump(mode="json")
        first = decide(run, flow, event, now)
        second = decide(run, flow, event, now)
        assert run.model_dump(mode="json") == before and run.etag == "etag-1", "decide mutated its input"
        assert first.run == second.run and first.commands == second.commands and first.changed == second.changed
        assert first.run is not run
        if not first.changed:
            assert first.run.model_dump(mode="json") == before
        for cmd in first.commands:
            if isinstance(cmd, Launch):
                step = first.run.step(cmd.step)
                assert step.state is StepState.LAUNCHING and step.key == cmd.key and step.attempt == cmd.attempt
                assert cmd.key == idempotency_key("run1", cmd.step, cmd.attempt)
                idx = first.run.step_index(cmd.step)
                assert all(s.state is StepState.SUCCEEDED for s in first.run.steps[:idx])
                assert first.run.status is RunStatus.RUNNING
        # at most one step is in flight at a time
        active = [s for s in first.run.steps if s.state in (StepState.LAUNCHING, StepState.RUNNING)]
        assert len(active) <= 1
        if first.run.status.terminal:
            assert not active
        run = first.run
