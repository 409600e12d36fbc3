"""The executor reads the run once per message: observations are decided on the copy it just
saved (its ETag still guards the next save), and re-read only after a lost race."""

from __future__ import annotations

from typing import Any

from shared.backends.base import StepStatus
from shared.engine import control
from shared.engine.decide import tick_message
from shared.engine.model import Run, RunStatus, StepState
from tests.fakes import MemoryRunStore, ScriptedBackend
from tests.unit.engine.support import Harness, make_flow


class CountingStore(MemoryRunStore):
    """Counts point reads (``get``), not the ones ``list_runs`` makes internally."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self._listing = False

    def get(self, run_id: str) -> Run:
        if not self._listing:
            self.gets += 1
        return super().get(run_id)

    def list_runs(self, *args: Any, **kwargs: Any) -> list[Run]:
        self._listing = True
        try:
            return super().list_runs(*args, **kwargs)
        finally:
            self._listing = False


def harness(backend: ScriptedBackend | None = None) -> tuple[Harness, CountingStore]:
    h = Harness(make_flow(("a", "b")), backend=backend or ScriptedBackend(polls=5))
    store = CountingStore()
    h.store = h.executor.store = store
    return h, store


def running(h: Harness) -> Run:
    """run1 with step a launched and waiting for its first tick."""
    h.create()
    got = h.queue.receive(max_messages=1)[0]
    h.executor.handle(got.message, delivery_count=1)
    h.queue.complete(got)
    run = h.store.get("run1")
    assert run.status is RunStatus.RUNNING and run.steps[0].state is StepState.RUNNING
    return run


def test_start_and_launch_read_the_run_once() -> None:
    h, store = harness()
    h.create()
    got = h.queue.receive(max_messages=1)[0]
    store.gets = 0
    h.executor.handle(got.message, delivery_count=1)  # start -> Launch -> Launched -> tick
    assert store.gets == 1
    assert store.saves == 2  # LAUNCHING (key on record) before the launch, then RUNNING


def test_a_tick_reads_once_and_saves_the_poll() -> None:
    h, store = harness()
    run = running(h)
    store.gets, store.saves = 0, 0
    h.executor.handle(tick_message(run, run.steps[0]), delivery_count=1)  # tick -> Poll -> Polled
    assert store.gets == 1 and store.saves == 1
    assert store.get("run1").steps[0].polls == 1


class CancelWhilePolling(ScriptedBackend):
    """Someone asks for a cancel while the executor is polling (between its read and its save)."""

    def __init__(self, h: Harness) -> None:
        super().__init__(polls=5)
        self.h = h
        self.armed = False

    def poll(self, remote_id: str) -> StepStatus:
        if self.armed:
            self.armed = False
            control.request_cancel(self.h.store, self.h.queue, "run1")
        return super().poll(remote_id)


def test_a_run_changed_meanwhile_is_read_again_and_decided_afresh() -> None:
    h, store = harness()
    backend = CancelWhilePolling(h)
    h.backend = backend
    run = running(h)
    backend.armed = True
    store.gets = 0
    h.executor.handle(tick_message(run, run.steps[0]), delivery_count=1)
    assert store.gets == 3  # the tick's read, the canceller's read, the re-read after the lost race
    after = store.get("run1")
    assert after.status is RunStatus.CANCELLED and after.steps[0].state is StepState.CANCELLED
    assert backend.jobs[after.steps[0].key or ""].cancelled
