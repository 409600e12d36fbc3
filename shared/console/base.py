"""What the console reads, as small replaceable functions (the console's port).

The pages never reach into a backend, a queue or a log directory themselves: they call the
functions of :class:`ConsoleSources`. ``ConsoleSources.from_services`` wires the defaults — the
run's graph (needs edges, fan-out instances from the instance rows), the backends' logs
(``JobBackend.logs``, as ``conveyor logs`` reads them), the local telemetry JSONL, the queue's
dead letters and their replay (``WorkQueue.dead_letters`` / ``replay_dead_letters``) — and a caller swaps any of them:

* ``graph(run) -> list[GraphNode]``: nodes with ``needs`` edges and fan-out instances (the run's
  graph as ``shared.runview.graph_view`` gives it; a chain: each step needs the one before),
* ``logs(run, step) -> list[LogTail]``: stdout/stderr tails of a step's current attempt,
* ``trace(run_id) -> list[dict]``: span and event records (``shared.telemetry.local`` shape),
* ``dead_letters() -> list[DeadLetter]`` and ``replay(message_id)``; the replay button is shown
  only when ``replay`` is set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.engine.model import Run, StepRun
    from shared.wiring import Services

# State names in the order a summary lists them (anything else comes after, alphabetically).
STATE_ORDER = ("succeeded", "running", "launching", "retry_wait", "pending", "queued", "failed", "cancelled")


@dataclass(frozen=True)
class Instance:
    """One member of a fan-out (a Batch task, a DAG step instance)."""

    id: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class GraphNode:
    id: str
    label: str
    state: str
    needs: tuple[str, ...] = ()
    kind: str = ""
    detail: str = ""  # one short line under the label (progress, attempt)
    instances: tuple[Instance, ...] = ()  # a fan-out's instances (the first page of a large one)
    counted: str = ""  # the fan-out's summary over all its instances, when ``instances`` is a page

    @property
    def summary(self) -> str:
        """``18/20 succeeded, 2 running`` for a fan-out; '' without instances."""
        return self.counted or instance_summary(self.instances)


def instance_summary(instances: tuple[Instance, ...] | list[Instance]) -> str:
    if not instances:
        return ""
    counts = Counter(i.state for i in instances)
    rank = {s: n for n, s in enumerate(STATE_ORDER)}
    states = sorted(counts, key=lambda s: (rank.get(s, len(rank)), s))
    done = counts.get("succeeded", 0)
    parts = [f"{done}/{len(instances)} succeeded"]
    parts += [f"{counts[s]} {s.replace('_', ' ')}" for s in states if s != "succeeded"]
    return ", ".join(parts)


@dataclass(frozen=True)
class LogTail:
    label: str  # what produced it: "task 0", "main", a pipeline job's name
    stream: str  # "stderr" | "stdout"
    path: str  # where the text came from (shown, never linked)
    text: str


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    reason: str
    description: str
    run_id: str | None
    kind: str | None  # the message kind (start, tick, ...)
    dead_lettered_at: str | None
    delivery_count: int | None
    body: str  # the message, as JSON text


GraphSource = Callable[["Run"], list[GraphNode]]
LogSource = Callable[["Run", "StepRun"], list[LogTail]]
TraceSource = Callable[[str], list[dict[str, Any]]]
DeadLetterSource = Callable[[], list[DeadLetter]]
DeadLetterReplay = Callable[[str], Any]


@dataclass
class ConsoleSources:
    graph: GraphSource
    logs: LogSource
    trace: TraceSource
    dead_letters: DeadLetterSource
    replay: DeadLetterReplay | None = None
    trace_note: str = ""  # shown when ``trace`` has nothing (where the trace lives instead)

    @classmethod
    def from_services(cls, services: Services) -> ConsoleSources:
        from shared.console.deadletters import queue_dead_letters, queue_replay
        from shared.console.graph import dag_graph
        from shared.console.logs import step_logs
        from shared.telemetry.factory import exporter_name

        settings = services.settings
        home = Path(settings.home)
        local_trace = exporter_name(settings) == "local"

        def logs(run: Run, step: StepRun) -> list[LogTail]:
            return step_logs(services.backend, step)

        def trace(run_id: str) -> list[dict[str, Any]]:
            if not local_trace:
                return []
            from shared.telemetry.local import read_trace

            return read_trace(home, run_id)

        note = "" if local_trace else "This run's trace is in Application Insights: operation_Id = the run id."
        return cls(
            graph=dag_graph(services),
            logs=logs,
            trace=trace,
            dead_letters=lambda: queue_dead_letters(services.queue),
            replay=queue_replay(services.queue),
            trace_note=note,
        )
