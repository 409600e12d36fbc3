"""The JobBackend port: launch a step's remote work, poll it, cancel it.

Every step kind (batch, databricks, azureml, register, deploy) is served by a backend with
this one small surface, so the engine treats them alike. ``launch`` must be idempotent on
``request.key``: a second launch with the same key reattaches to the first job. ``logs``
(for ``conveyor logs``) returns what the backend can show of a job's stdout/stderr.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RemoteState = Literal["running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class LaunchRequest:
    run_id: str
    flow: str
    step: str
    kind: str
    key: str  # idempotency key run-step-attempt
    attempt: int
    params: dict[str, Any]  # rendered (templates resolved) step params
    traceparent: str = ""
    trigger: dict[str, Any] = field(default_factory=dict)  # template scope of the trigger (lineage)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # earlier steps: {name: {outputs, remote_id}}
    model: dict[str, Any] | None = None  # the flow's ModelSpec as a dict (register/deploy)
    # The run's template scope, for params a backend renders itself (a batch command's ${...},
    # filled in one pass with its {placeholders}: shared.flows.argv).
    scope: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the step's env:, rendered (shared.flows.argv.render_env)
    # An instance of a for_each step: its position and item (``key`` is then run-step_index-attempt).
    index: int | None = None
    item: Any = None

    @property
    def unit(self) -> str:
        """``step``, or ``step[index]`` for an instance: how remote jobs are labelled for humans."""
        return self.step if self.index is None else f"{self.step}[{self.index}]"

    def index_tags(self, prefix: str = "conveyor.") -> dict[str, str]:
        """``{prefix}index`` for an instance (empty otherwise): remote metadata/tags."""
        return {} if self.index is None else {f"{prefix}index": str(self.index)}


@dataclass(frozen=True)
class LaunchResult:
    remote_id: str
    url: str | None = None
    reattached: bool = False  # True when the key already had a job


@dataclass(frozen=True)
class StepStatus:
    state: RemoteState
    outputs: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, int] | None = None  # {"done": n, "total": m}
    error: str | None = None
    retryable: bool = False  # meaningful when state == "failed"
    # Work of this job run again because the host running it was lost mid-flight (a process
    # with no exit code to adopt): the engine records it in the attempt's history.
    reruns: int = 0


@dataclass(frozen=True)
class StepLog:
    """One log of a launched job: a task's stdout, the job's stderr, what the service returned.

    ``path`` is a file on this machine (local backends; it can be followed while it grows),
    ``text`` what a remote service answered; with neither, ``note`` says why there is none.
    """

    name: str  # e.g. "task-00000/stdout.txt", "stderr.txt", "train/stdout.txt"
    path: Path | None = None
    text: str | None = None
    note: str = ""


class JobBackend(ABC):
    """Port for one step kind."""

    kind: str = ""

    @abstractmethod
    def launch(self, request: LaunchRequest) -> LaunchResult:
        """Start (or reattach to) the job for ``request.key``. Raise shared.errors on failure."""

    @abstractmethod
    def poll(self, remote_id: str) -> StepStatus:
        """Current state of a launched job."""

    @abstractmethod
    def cancel(self, remote_id: str) -> None:
        """Stop a launched job; a no-op when it has already finished."""

    def logs(self, remote_id: str) -> list[StepLog]:
        """The job's logs, as far as this backend can fetch them (none by default, said so)."""
        return [StepLog(name=self.kind or "job", note=f"the {self.kind or 'job'} backend keeps no logs to fetch")]


def request_to_json(request: LaunchRequest) -> dict[str, Any]:
    """A LaunchRequest as JSON-able data (for a job that runs in another process)."""
    return dataclasses.asdict(request)


def request_from_json(data: dict[str, Any]) -> LaunchRequest:
    """The LaunchRequest ``request_to_json`` wrote (fields it does not know are left out)."""
    known = {f.name for f in dataclasses.fields(LaunchRequest)}
    return LaunchRequest(**{k: v for k, v in data.items() if k in known})
