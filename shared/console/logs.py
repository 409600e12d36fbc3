"""Step log tails for the run page, read through the backends' own ``JobBackend.logs``.

The same port backs ``conveyor logs``: the local backends return their real stdout/stderr
files under the data home (Batch per task, Databricks the run, Azure ML per pipeline job),
Azure Batch the task files it fetches from the nodes, Databricks each task run's output, and
the Azure ML adapters a note saying where the workspace keeps them. The page shows the tail of
each, parts whose stderr has something first (that is where a failure speaks), at most
``MAX_PARTS`` parts. Register and deploy steps run in-process and have no logs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from shared.backends.commandline import tail_text
from shared.console.base import LogTail

if TYPE_CHECKING:
    from shared.backends.base import JobBackend, StepLog
    from shared.engine.model import StepRun

LOG_KINDS = ("batch", "databricks", "azureml")
STREAMS = ("stderr", "stdout")
TAIL_LINES = 40
TAIL_BYTES = 8000
MAX_PARTS = 8  # Batch tasks / pipeline jobs shown per step (failed ones first)


def _label_and_stream(log: StepLog) -> tuple[str, str]:
    """``task-00007/stderr.txt`` -> ("task-00007", "stderr"); a file at the job's top is "main"."""
    name = PurePosixPath(log.name)
    stream = name.stem if name.stem in STREAMS else "output"
    parent = str(name.parent)
    return ("main" if parent in ("", ".") else parent), stream


def _tail(log: StepLog, lines: int) -> str:
    if log.path is not None:
        return tail_text(log.path, lines=lines, max_bytes=TAIL_BYTES)
    text = (log.text or "")[-TAIL_BYTES:]
    return "\n".join(text.splitlines()[-lines:]).strip()


def step_logs(backend: Callable[[str], JobBackend], step: StepRun, lines: int = TAIL_LINES) -> list[LogTail]:
    """stderr then stdout of each part of the step's current attempt; [] when there is nothing.

    ``backend(kind)`` is the services' backend factory; what it raises (an unknown job, a
    service that cannot be reached) is the caller's to show.
    """
    remote = step.remote_id or step.key
    if step.kind not in LOG_KINDS or not remote:
        return []
    tails: dict[str, dict[str, LogTail]] = {}
    for log in backend(step.kind).logs(remote):
        text = _tail(log, lines)
        if not text:
            continue
        label, stream = _label_and_stream(log)
        where = str(log.path) if log.path is not None else log.name
        tails.setdefault(label, {})[stream] = LogTail(label=label, stream=stream, path=where, text=text)
    parts = sorted(tails.items(), key=lambda item: 0 if "stderr" in item[1] else 1)  # stable: job order kept
    out: list[LogTail] = []
    for _, streams in parts[:MAX_PARTS]:
        out.extend(streams[s] for s in (*STREAMS, "output") if s in streams)
    return out
