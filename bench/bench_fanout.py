"""A 1,000-item fan-out/fan-in through the local host, against one step transition in the same run.

The flow: ``before`` → ``fan`` (for_each over N items) → a chain ``c1`` … ``cK`` after it (the
fan-in is ``c1``). Every step is a no-op batch backend (launch returns at once, the first
poll says succeeded), so what is timed is the engine: the LocalHost's queue workers, the
executor, ``decide``, the run and instance tables on Azurite. Ticks are sent without their
backoff delay (bench_transition.NoDelayQueue: the delay is an argument of the same send call)
and the host runs ONE worker, so a fan-out gains nothing from parallel handlers and the
comparison is engine work per item against engine work per step.

* **overhead per item**: the ``fan`` step's wall time / N; **one step transition**: the chain's
  wall time / K (each chain step goes through the same launch → tick → poll → succeed
  transitions an instance does). Goal: per item <= 2x per step.
* **run document size**: the same flow with N = 10 and N = 1,000 items; the run document holds
  no item and no instance (the list is in flows.yaml, the instances in their own rows). Goal:
  the same size (within 1%; counts and times differ by a few digits).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.bench_transition import NoDelayQueue
from bench.common import report, unique
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepStatus
from shared.settings import Settings

GOAL = 2.0
SIZE_GOAL = 1.01
CHAIN = 20


class NoOpBackend(JobBackend):
    """Launch returns at once; the first poll says succeeded (no I/O at all)."""

    kind = "batch"

    def launch(self, request: LaunchRequest) -> LaunchResult:
        return LaunchResult(remote_id=request.key)

    def poll(self, remote_id: str) -> StepStatus:
        return StepStatus("succeeded", outputs={"job": remote_id})

    def cancel(self, remote_id: str) -> None:
        pass


def flows_doc(sizes: tuple[int, ...]) -> dict[str, Any]:
    fast = {"initial_seconds": 0.001, "multiplier": 1.0, "max_seconds": 0.001}
    params = {"command": "true", "inputs": "bench/none"}

    def step(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "kind": "batch", "params": params, "poll": fast, **extra}

    flows: dict[str, Any] = {}
    for n in sizes:
        steps = [step("before"), step("fan", for_each=list(range(n)))]
        steps += [step(f"c{i}") for i in range(1, CHAIN + 1)]
        flows[f"fan{n}"] = {"triggers": [{"kind": "manual"}], "steps": steps}
    return {"version": 1, "flows": flows}


def run_once(host: Any, flow: str, timeout: float) -> Any:
    from shared.host.runtime import wait_for_run
    from shared.ingest.service import IngestService

    assert host.services is not None
    result = IngestService.from_services(host.services).start_manual(flow, {}, idempotency_key=unique("b"))
    run = wait_for_run(host.services.store, result.run_id, timeout=timeout, poll=0.2)
    if run.status.value != "succeeded":
        raise RuntimeError(f"run {run.run_id} of {flow} ended {run.status.value}: {run.error}")
    return run


def seconds(step: Any) -> float:
    return float((step.ended_at - step.started_at).total_seconds())


def main(settings: Settings, n: int = 1_000, small: int = 10, timeout: float = 900.0) -> bool:
    from shared.host.runtime import LocalHost
    from shared.local.azurite import free_port
    from shared.queue.storage_queue import StorageQueueWorkQueue
    from shared.wiring import Services

    with tempfile.TemporaryDirectory(prefix="conveyor-bench-fanout-") as tmp:
        flows_file = Path(tmp) / "flows.yaml"
        flows_file.write_text(yaml.safe_dump(flows_doc((small, n))), encoding="utf-8")
        s = settings.with_overrides(
            home=Path(tmp) / "home",
            flows_file=flows_file,
            host_port=free_port(),
            queue_name=unique("bench-fan-"),
            runs_table=unique("benchfan"),
        )
        services = Services(
            s, queue=NoDelayQueue(StorageQueueWorkQueue.from_settings(s)), backends={"batch": NoOpBackend()}
        )
        with LocalHost(s, services, workers=1, watch=False, schedule=False, start_azurite=False) as host:
            started = time.perf_counter()
            small_run = run_once(host, f"fan{small}", timeout)
            big_run = run_once(host, f"fan{n}", timeout)
            wall = time.perf_counter() - started
            fans = host.services.instances.fanouts(big_run.run_id)  # type: ignore[union-attr]

    fan = big_run.step("fan")
    chain = [big_run.step(f"c{i}") for i in range(1, CHAIN + 1)]
    per_item = seconds(fan) / n
    per_step = float((chain[-1].ended_at - chain[0].started_at).total_seconds()) / CHAIN
    ratio = per_item / per_step
    ok = ratio <= GOAL
    report(
        f"fan-out of {n:,} items",
        f"{per_item * 1e3:.2f} ms/item vs {per_step * 1e3:.2f} ms/step transition = {ratio:.2f}x",
        f"<={GOAL:g}x",
        ok,
    )
    small_doc, big_doc = len(small_run.model_dump_json()), len(big_run.model_dump_json())
    growth = big_doc / small_doc
    size_ok = growth <= SIZE_GOAL
    report(
        "run document size",
        f"{small_doc:,} B with {small} items, {big_doc:,} B with {n:,} = {growth:.3f}x",
        f"<={SIZE_GOAL:g}x",
        size_ok,
    )
    counts = fans["fan"].counts if "fan" in fans else {}
    print(f"  ({wall:.1f}s for both runs; fan-out counts {counts}; fan step {seconds(fan):.1f}s)", flush=True)
    return ok and size_ok


if __name__ == "__main__":
    from bench.common import azurite_settings

    with azurite_settings(in_memory=True) as azurite:
        raise SystemExit(0 if main(azurite) else 1)
