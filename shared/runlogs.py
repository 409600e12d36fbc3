"""``conveyor logs RUN [STEP] [--follow]``: the stdout/stderr of a run's steps.

What each backend keeps (``JobBackend.logs``):

* local backends: the real files under the data home -- ``batch/<key>/tasks/<task>/stdout.txt``
  and ``stderr.txt`` for every task, ``databricks/<key>/stdout.txt``, ``azureml/<key>/<job>/
  stdout.txt`` for every pipeline job;
* Azure Batch: each task's ``stdout.txt``/``stderr.txt`` from its node (Batch's file API;
  gone with the node); Databricks: each task run's output (its logs, error and trace);
  Azure ML: not fetched -- the note says where the workspace keeps them;
* register and deploy run inside the host: their messages are in ``conveyor trace RUN``.

Without ``--follow`` every log is printed once under a ``==> step  name`` header. With it,
the lines the local files gain are printed as they come (``step/name | line``), new tasks
included, until the run has ended and nothing more arrives; remote logs are printed once
their step has finished. ``--attempt N`` shows an earlier attempt of the step (``show``
lists them). Log content is outside data: it reaches the terminal as text
(shared/terminal.py), control characters escaped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.backends.base import StepLog
from shared.errors import ConveyorError, ValidationError
from shared.terminal import cell, say

if TYPE_CHECKING:
    from rich.console import Console

    from shared.engine.model import Run, StepRun
    from shared.wiring import Services

IN_HOST = ("register", "deploy")
MAX_READ = 1 << 20  # bytes read from one file per poll


@dataclass(frozen=True)
class Target:
    step: str
    kind: str
    attempt: int
    remote_id: str | None
    state: str


def targets(run: Run, step: str | None = None, attempt: int | None = None) -> list[Target]:
    """The jobs to show: ``step``'s (or every step's) current attempt, or its ``attempt``."""
    steps = run.steps
    if step is not None:
        names = [s.name for s in run.steps]
        if step not in names:
            raise ValidationError(f"run {run.run_id} has no step {step!r} (steps: {', '.join(names)})", field="STEP")
        steps = [run.step(step)]
    elif attempt is not None:
        raise ValidationError("--attempt needs a STEP", field="--attempt")
    out = []
    for s in steps:
        if attempt is None or attempt == s.attempt:
            if s.attempt > 0 or s.remote_id:
                out.append(Target(s.name, s.kind, s.attempt, s.remote_id, s.state.value))
            continue
        out.append(_earlier(s, attempt))
    return out


def _earlier(step: StepRun, attempt: int) -> Target:
    for entry in step.history:
        if entry.get("attempt") == attempt:
            remote = entry.get("remote_id")
            return Target(step.name, step.kind, attempt, str(remote) if remote else None, str(entry.get("outcome")))
    tried = sorted({int(e["attempt"]) for e in step.history if isinstance(e.get("attempt"), int)} | {step.attempt})
    raise ValidationError(
        f"step {step.name} has no attempt {attempt} (attempts: {', '.join(map(str, tried))})", field="--attempt"
    )


def fetch(services: Services, target: Target) -> list[StepLog]:
    """The target's logs; what cannot be fetched comes back as a note, not an error."""
    if target.remote_id is None:
        return [StepLog("job", note="not launched yet")]
    if target.kind in IN_HOST:
        return [StepLog(target.kind, note=f"{target.kind} runs inside the host: see `conveyor trace RUN`")]
    try:
        return services.backend(target.kind).logs(target.remote_id)
    except ConveyorError as exc:
        return [StepLog("job", note=f"not available: {exc}")]


def print_logs(out: Console, services: Services, run: Run, step: str | None = None, attempt: int | None = None) -> int:
    """Every log of the chosen jobs, each under a header; returns how many had content."""
    shown = 0
    chosen = targets(run, step, attempt)
    if not chosen:
        what = f"step {step} has" if step else "no step of this run has"
        say(out, (f"{what} not been launched yet" if step else f"{what} been launched yet", "dim"))
    for t in chosen:
        for log in fetch(services, t):
            where = f"  ({log.path})" if log.path is not None else ""
            say(out, ("==> ", "bold"), (f"{t.step}  {log.name}", "bold"), f"  attempt {t.attempt}{where}")
            text = _read(log.path) if log.path is not None else log.text
            if text:
                out.print(cell(text), soft_wrap=True, end="" if text.endswith("\n") else "\n")
                shown += 1
            if log.note or not text:
                say(out, (f"({log.note or 'empty'})", "dim"))
    return shown


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read: {exc.strerror or exc})\n"


class _Tail:
    """What has been printed of each followed file (bytes) and remote log."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, bytes] = {}
        self.done: set[str] = set()

    def file(self, label: str, path: Path, final: bool) -> int:
        start = self.offsets.get(path, 0)
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read(MAX_READ)
        except OSError:
            return 0
        self.offsets[path] = start + len(data)
        data = self.partial.pop(path, b"") + data
        lines = data.split(b"\n")
        rest = lines.pop()  # an unfinished last line waits for its newline (or the end)
        if rest and not final:
            self.partial[path] = rest
        elif rest:
            lines.append(rest)
        for raw in lines:
            say(self.out, (f"{label} | ", "dim"), raw.decode("utf-8", "replace"))
        return len(lines)

    def once(self, label: str, log: StepLog) -> int:
        if label in self.done:
            return 0
        self.done.add(label)
        text = log.text or ""
        for raw in text.splitlines():
            say(self.out, (f"{label} | ", "dim"), raw)
        if log.note:
            say(self.out, (f"{label} | ({log.note})", "dim"))
        return 1


def follow_logs(
    out: Console,
    services: Services,
    run_id: str,
    step: str | None = None,
    attempt: int | None = None,
    *,
    poll: float = 0.5,
    timeout: float | None = None,
) -> Run:
    """Print the chosen jobs' log lines as they are written, until the run ends (see the docstring)."""
    tail = _Tail(out)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = services.store.get(run_id)
        ended = run.status.terminal
        new = 0
        for t in targets(run, step, attempt):
            finished = ended or t.state in ("succeeded", "failed", "cancelled")
            for log in fetch(services, t):
                label = f"{t.step}/{log.name}"
                if log.path is not None:
                    new += tail.file(label, log.path, final=finished)
                elif finished and (log.text or log.note):
                    new += tail.once(label, log)
        if ended and new == 0:
            return run
        if deadline is not None and time.monotonic() >= deadline:
            say(out, (f"stopped following after {timeout:.0f}s; run {run.run_id} is {run.status.value}", "yellow"))
            return run
        time.sleep(poll)
