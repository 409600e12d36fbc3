"""One engine step transition against the raw storage floor, on the same Azurite.

* **transition**: receive one ``tick`` message (StorageQueueWorkQueue), ``Executor.handle``
  it (load the run from TableRunStore, decide, poll an in-process backend that always says
  "running", save the run with its ETag, send the next tick), then complete (delete) the
  message. Each transition leaves exactly one tick on the queue for the next one.
* **raw floor**: what no implementation can avoid: one queue send + receive + delete and
  one table read + ETag-conditional replace, with the raw azure SDK clients and the same
  payload sizes (the tick message body and the run's entity).

Both run alternately in blocks on the same Azurite, in the same process; the figure is the
median transition time over the median floor time. Goal: <= 2x.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import interleaved, report, unique
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepStatus
from shared.engine.model import Message, Run, RunStatus, StepRun, StepState, TriggerContext, idempotency_key
from shared.flows.model import FlowsFile
from shared.queue.base import Received, WorkQueue
from shared.settings import Settings

GOAL = 2.0
FLOW = "bench"
STEP = "score"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class AlwaysRunning(JobBackend):
    """An in-process backend whose job never finishes (no I/O: the poll itself costs nothing)."""

    kind = "batch"

    def launch(self, request: LaunchRequest) -> LaunchResult:
        return LaunchResult(remote_id=request.key)

    def poll(self, remote_id: str) -> StepStatus:
        return StepStatus("running", progress={"done": 412, "total": 1000})

    def cancel(self, remote_id: str) -> None:
        pass


class NoDelayQueue(WorkQueue):
    """Sends with delay 0. The engine schedules the next tick with a backoff delay by design
    (seconds to a minute); the delay is just the ``visibility_timeout`` argument of the same
    send call, so it does not change the call's cost, only when the message becomes
    visible. Without it the benchmark would measure the backoff, not the transition."""

    def __init__(self, inner: WorkQueue) -> None:
        self.inner = inner

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        self.inner.send(message, 0.0)

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        return self.inner.receive(max_messages, visibility_timeout)

    def complete(self, received: Received) -> None:
        self.inner.complete(received)

    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        self.inner.dead_letter(received, reason, description)


def bench_flows() -> FlowsFile:
    step = {
        "name": STEP,
        "kind": "batch",
        "params": {
            "command": "python score.py --input {input} --out {output_dir}",
            "inputs": "${trigger.blob.url}",
            "output_container": "scores",
        },
    }
    return FlowsFile.model_validate(
        {"flows": {FLOW: {"triggers": [{"kind": "blob", "container": "drops", "suffix": ".csv"}], "steps": [step]}}}
    )


def running_run(run_id: str, now: datetime) -> Run:
    """A run whose only step is RUNNING on a remote job (what a tick finds mid-flight)."""
    url = "http://127.0.0.1:10000/devstoreaccount1/drops/2026/01/15/sales-0001.csv"
    trigger = TriggerContext(
        kind="blob",
        blob={
            "url": url,
            "container": "drops",
            "name": "2026/01/15/sales-0001.csv",
            "etag": '"0x8DC1A2B3C4D5E6F"',
            "size": 1843211,
            "content_type": "text/csv",
            "event_id": "831e1650-001e-001b-66ab-eeb76e069631",
            "event_time": "2026-01-15T10:00:00+00:00",
            "api": "PutBlob",
            "settle_seconds": 0,
        },
        source=url,
        received_at=now,
    )
    step = StepRun(
        name=STEP,
        kind="batch",
        state=StepState.RUNNING,
        attempt=1,
        key=idempotency_key(run_id, STEP, 1),
        remote_id=idempotency_key(run_id, STEP, 1),
        started_at=now,
        tick=1,
    )
    return Run(
        run_id=run_id,
        flow=FLOW,
        status=RunStatus.RUNNING,
        trigger=trigger,
        steps=[step],
        created_at=now,
        updated_at=now,
        started_at=now,
        traceparent=TRACEPARENT,
    )


def main(settings: Settings, n: int = 200, block: int = 10, profile_on_miss: bool = True) -> bool:
    from azure.core import MatchConditions
    from azure.data.tables import TableClient, UpdateMode
    from azure.storage.queue import QueueClient

    from shared.engine.decide import tick_message
    from shared.engine.executor import Executor
    from shared.queue.storage_queue import StorageQueueWorkQueue
    from shared.store.table import TableRunStore, partition_for

    s = settings.with_overrides(queue_name=unique("bench-tick-"), runs_table=unique("benchticks"))
    store = TableRunStore.from_settings(s)
    work = StorageQueueWorkQueue.from_settings(s)
    queue = NoDelayQueue(work)
    backend = AlwaysRunning()
    executor = Executor(store, queue, bench_flows(), lambda kind: backend, telemetry=None)

    now = datetime.now(UTC)
    run = running_run("4f1c2a9e0b7d4e3f8a6b5c4d3e2f1a0b", now)
    if not store.create_if_absent(run):
        raise RuntimeError("benchmark run already exists")
    work.send(tick_message(run, run.steps[0]))

    def transitions(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            got = work.receive(max_messages=1, visibility_timeout=60)
            if len(got) != 1:
                raise RuntimeError(f"expected the one tick on the queue, got {len(got)}")
            executor.handle(got[0].message, delivery_count=got[0].dequeue_count)
            work.complete(got[0])
        return (time.perf_counter() - start) / k

    # The raw floor, with the same payload sizes as the transition's.
    body = tick_message(run, run.steps[0]).model_dump_json()
    entity: dict[str, Any] = TableRunStore.to_entity(run.model_copy(update={"run_id": "f" * 32}))
    entity["PartitionKey"] = partition_for(entity["RowKey"])
    raw_q = QueueClient.from_connection_string(s.connection_string, unique("bench-raw-"))
    raw_q.create_queue()
    raw_t = TableClient.from_connection_string(s.connection_string, table_name=unique("benchraw"))
    raw_t.create_table()
    raw_t.create_entity(entity)

    def floors(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            raw_q.send_message(body)
            msg = next(iter(raw_q.receive_messages(max_messages=1, visibility_timeout=60)))
            raw_q.delete_message(msg)
            current = raw_t.get_entity(entity["PartitionKey"], entity["RowKey"])
            raw_t.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        return (time.perf_counter() - start) / k

    transitions(block)  # warm-up: connections, tables, queues
    floors(block)
    t_transition, t_floor = interleaved(lambda: transitions(block), lambda: floors(block), max(1, n // block))
    final = store.get(run.run_id)
    polls = final.steps[0].polls
    ratio = t_transition / t_floor
    ok = ratio <= GOAL
    report(
        "step transition",
        f"{t_transition * 1e3:.2f} ms vs raw floor {t_floor * 1e3:.2f} ms = {ratio:.2f}x ({polls} polls)",
        f"<={GOAL:g}x",
        ok,
    )
    if not ok and profile_on_miss:
        print(profile(transitions, 50))
    return ok


def profile(fn: Any, k: int, top: int = 25) -> str:
    """cProfile ``fn(k)``: where a transition spends its time."""
    prof = cProfile.Profile()
    prof.enable()
    fn(k)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


if __name__ == "__main__":
    from bench.common import azurite_settings

    with azurite_settings() as settings:
        main(settings)
