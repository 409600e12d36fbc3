"""The fault injector: its rate, its kinds, its errors at the backend port, its settings."""

from __future__ import annotations

import pytest

from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepStatus
from shared.errors import ThrottledError, TransientError, ValidationError
from shared.faults import KINDS, FaultInjector, FaultyBackend
from shared.settings import Settings


def test_the_rate_and_every_kind_of_fault() -> None:
    injector = FaultInjector(0.2, seed=3)
    drawn = [injector.draw("x") for _ in range(20_000)]
    faults = [d for d in drawn if d is not None]
    assert 0.18 < len(faults) / len(drawn) < 0.22
    assert set(faults) == set(KINDS) and sum(injector.counts.values()) == len(faults)
    again = FaultInjector(0.2, seed=3)
    assert [again.draw("x") for _ in range(1000)] == drawn[:1000]  # a seed repeats the sequence


@pytest.mark.parametrize("rate", [-0.1, 1.0, 2.0])
def test_a_rate_outside_0_to_1_is_refused(rate: float) -> None:
    with pytest.raises(ValidationError) as err:
        FaultInjector(rate)
    assert err.value.field == "CONVEYOR_FAULT_RATE"


def test_settings() -> None:
    off = Settings.from_env({})
    assert off.fault_rate == 0 and FaultInjector.from_settings(off) is None
    on = Settings.from_env({"CONVEYOR_FAULT_RATE": "0.25", "CONVEYOR_FAULT_SEED": "9"})
    assert (on.fault_rate, on.fault_seed) == (0.25, 9)
    injector = FaultInjector.from_settings(on)
    assert injector is not None and injector is FaultInjector.from_settings(on)  # one per process
    for bad in ("lots", "nan", "inf"):
        with pytest.raises(ValidationError) as err:
            Settings.from_env({"CONVEYOR_FAULT_RATE": bad})
        assert err.value.field == "CONVEYOR_FAULT_RATE"


class Recording(JobBackend):
    kind = "batch"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def launch(self, request: LaunchRequest) -> LaunchResult:
        self.calls.append("launch")
        return LaunchResult(remote_id=request.key)

    def poll(self, remote_id: str) -> StepStatus:
        self.calls.append("poll")
        return StepStatus("running")

    def cancel(self, remote_id: str) -> None:
        self.calls.append("cancel")


class Scripted(FaultInjector):
    def __init__(self, kinds: list[str | None]) -> None:
        super().__init__(0.5)
        self.kinds = kinds

    def draw(self, where: str) -> str | None:
        return self.kinds.pop(0)


def test_backend_faults_are_the_errors_an_adapter_raises() -> None:
    inner = Recording()
    backend = FaultyBackend(inner, Scripted(["throttled", "unavailable", "timeout", "timeout-after", None]))
    request = LaunchRequest("r", "f", "s", "batch", "r-s-1", 1, {})
    with pytest.raises(ThrottledError) as throttled:
        backend.launch(request)
    assert throttled.value.status == 429 and throttled.value.retryable
    with pytest.raises(TransientError) as busy:
        backend.poll("r-s-1")
    assert busy.value.status == 503
    with pytest.raises(TransientError):
        backend.poll("r-s-1")
    assert inner.calls == []  # nothing reached the backend yet
    with pytest.raises(TransientError):
        backend.launch(request)  # timeout-after: the launch went through, its answer was lost
    assert inner.calls == ["launch"]
    assert backend.poll("r-s-1").state == "running" and backend.kind == "batch"
