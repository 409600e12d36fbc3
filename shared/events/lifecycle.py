"""Which lifecycle CloudEvents a run's state implies (pure: no I/O, no clock).

The engine's telemetry ``Emit`` commands say *when* something happened; this module says
*what* to publish, from the run as it was saved:

* ``conveyor.run.started`` -- the run has ``started_at`` (Emit ``run.started``); time: started_at
* ``conveyor.run.succeeded`` / ``.run.failed`` / ``.run.cancelled`` -- the run finished
  (Emit ``run.finished``); time: ended_at
* ``conveyor.step.failed`` -- a step failed for good, no retry left (Emit ``step.failed``)
* ``conveyor.model.registered`` -- a ``register`` step succeeded (Emit ``step.succeeded``)
* ``conveyor.gate.decided`` -- a ``deploy`` step succeeded with its champion/challenger decision
* ``conveyor.model.deployed`` -- ... and the gate promoted the candidate to the endpoint

(step events: time = the step's ended_at.)

Every event's ``id`` is a hash of (run, type, rerun number, step, attempt), so the same
happening always has the same id: a duplicate delivery (at-least-once) carries the id a
subscriber has already seen. ``source`` is ``/conveyor/flows/<flow>``, ``subject``
``runs/<run>`` (``/steps/<step>``), and the ``traceparent`` extension is the run's trace
(trace id = run id). Untrusted values (errors, blob sources) are data fields, truncated.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from shared.engine.model import Run, StepRun, StepState
from shared.events.base import CloudEventJson
from shared.telemetry.trace import parse

TYPE_PREFIX = "conveyor."
TYPES = (
    "run.started",
    "run.succeeded",
    "run.failed",
    "run.cancelled",
    "step.failed",
    "model.registered",
    "gate.decided",
    "model.deployed",
)
MAX_TEXT = 2000

# Which events each engine Emit name can stand for (the rest of an Emit's events are not lifecycle).
_FOR_EMIT = {
    "run.started": {"run.started"},
    "run.finished": {"run.succeeded", "run.failed", "run.cancelled"},
    "step.failed": {"step.failed"},
    "step.succeeded": {"model.registered", "gate.decided", "model.deployed"},
}


def iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event_id(run: Run, name: str, step: str | None = None, attempt: int | None = None) -> str:
    raw = "\x1f".join([run.run_id, name, str(run.reruns), step or "", "" if attempt is None else str(attempt)])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def _text(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value


def _event(run: Run, name: str, when: datetime, data: dict[str, Any], step: StepRun | None = None) -> CloudEventJson:
    trace = parse(run.traceparent)
    event: CloudEventJson = {
        "specversion": "1.0",
        "id": event_id(run, name, step.name if step else None, step.attempt if step else None),
        "source": f"/conveyor/flows/{run.flow}",
        "type": TYPE_PREFIX + name,
        "subject": f"runs/{run.run_id}" + (f"/steps/{step.name}" if step else ""),
        "time": iso(when),
        "datacontenttype": "application/json",
        "data": {
            "run_id": run.run_id,
            "flow": run.flow,
            "trace_id": trace[0] if trace else None,
            "reruns": run.reruns,
            "trigger": run.trigger.kind,
            "trigger_source": _text(run.trigger.source),
            **{k: _text(v) for k, v in data.items()},
        },
    }
    if trace:
        event["traceparent"] = run.traceparent
    return event


def _model(run: Run) -> dict[str, Any] | None:
    for s in run.steps:
        if s.kind in ("register", "deploy") and s.state is StepState.SUCCEEDED and s.outputs.get("version"):
            return {"name": s.outputs.get("model_name"), "version": s.outputs.get("version")}
    return None


def from_state(run: Run) -> list[CloudEventJson]:
    """Every lifecycle event the run's current state implies, in the order they happened."""
    out: list[CloudEventJson] = []
    if run.started_at is not None:
        out.append(_event(run, "run.started", run.started_at, {"status": "running", "started_at": iso(run.started_at)}))
    for step in run.steps:
        if step.ended_at is None:
            continue
        if step.state is StepState.FAILED:
            out.append(
                _event(
                    run,
                    "step.failed",
                    step.ended_at,
                    {
                        "step": step.name,
                        "kind": step.kind,
                        "attempt": step.attempt,
                        "error": step.error,
                        "retryable": step.error_retryable,
                        "remote_id": step.remote_id,
                    },
                    step,
                )
            )
        elif step.state is StepState.SUCCEEDED and step.kind == "register" and step.outputs.get("version"):
            o = step.outputs
            out.append(
                _event(
                    run,
                    "model.registered",
                    step.ended_at,
                    {
                        "step": step.name,
                        "model_name": o.get("model_name"),
                        "version": o.get("version"),
                        "model_uri": o.get("model_uri"),
                        "metrics": o.get("metrics") or {},
                    },
                    step,
                )
            )
        elif step.state is StepState.SUCCEEDED and step.kind == "deploy" and isinstance(step.outputs.get("gate"), dict):
            o, gate = step.outputs, step.outputs["gate"]
            common = {"step": step.name, "model_name": o.get("model_name"), "version": o.get("version")}
            decision = {k: gate.get(k) for k in ("decision", "reason", "metric", "direction", "candidate", "champion")}
            decision["champion_version"] = gate.get("champion_version")
            out.append(_event(run, "gate.decided", step.ended_at, {**common, **decision}, step))
            if gate.get("decision") == "promoted":
                endpoint = {"endpoint": o.get("endpoint"), "scoring_url": o.get("scoring_url")}
                out.append(_event(run, "model.deployed", step.ended_at, {**common, **endpoint}, step))
    if run.status.terminal and run.ended_at is not None:
        duration = (run.ended_at - run.started_at).total_seconds() if run.started_at else None
        data: dict[str, Any] = {
            "status": run.status.value,
            "error": run.error,
            "started_at": iso(run.started_at) if run.started_at else None,
            "ended_at": iso(run.ended_at),
            "duration_seconds": duration,
            "gate": run.gate,
            "model": _model(run),
        }
        out.append(_event(run, f"run.{run.status.value}", run.ended_at, data))
    return out


def from_emit(run: Run, name: str, attributes: dict[str, Any]) -> list[CloudEventJson]:
    """The lifecycle events an engine ``Emit(name, attributes)`` stands for, on the saved ``run``."""
    kinds = _FOR_EMIT.get(name)
    if not kinds:
        return []
    step = attributes.get("step")
    out = []
    for event in from_state(run):
        kind = event["type"].removeprefix(TYPE_PREFIX)
        if kind not in kinds:
            continue
        if step is not None and name.startswith("step.") and event["data"].get("step") != step:
            continue
        if name == "run.finished" and kind != f"run.{attributes.get('status', run.status.value)}":
            continue
        out.append(event)
    return out


def last_transition(run: Run) -> list[CloudEventJson]:
    """The events of the run's last saved decision (their time is the run's ``updated_at``).

    After a crash between a save and the recording of its events, the redelivered message
    finds the run in exactly that state: these are the events that may have been lost."""
    now = iso(run.updated_at)
    return [e for e in from_state(run) if e["time"] == now]
