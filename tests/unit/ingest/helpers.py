"""Shared builders for the ingest unit tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.flows.model import FlowsFile
from shared.ingest.service import IngestService
from shared.settings import Settings
from shared.telemetry.base import Span, Telemetry
from tests.fakes import MemoryQueue, MemoryRunStore

EVENTS = Path(__file__).resolve().parents[2] / "events"

STEP = {"name": "work", "kind": "batch", "params": {"command": "echo {input}", "inputs": "${trigger.source}"}}


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def event_bytes(name: str) -> bytes:
    return (EVENTS / name).read_bytes()


def flows(**triggers: list[dict[str, Any]]) -> FlowsFile:
    """``flows(name=[trigger, ...])`` -> a FlowsFile whose flows each have one batch step."""
    return FlowsFile.model_validate(
        {"flows": {name: {"triggers": trigs, "steps": [STEP]} for name, trigs in triggers.items()}}
    )


class RecordingTelemetry(Telemetry):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None, dict[str, Any]]] = []

    def _start(self, span: Span) -> None:
        pass

    def _end(self, span: Span) -> None:
        pass

    def event(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        self.events.append((name, traceparent, run_id, dict(attributes or {})))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class FixedClock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2024, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def service(
    flows_file: FlowsFile, settings: Settings | None = None, clock: FixedClock | None = None
) -> tuple[IngestService, MemoryRunStore, MemoryQueue, RecordingTelemetry]:
    store, queue, tel = MemoryRunStore(), MemoryQueue(), RecordingTelemetry()
    svc = IngestService(store, queue, flows_file, settings=settings, telemetry=tel, clock=clock or FixedClock())
    return svc, store, queue, tel


def starts(queue: MemoryQueue) -> list[str]:
    """Run ids asked to start, in order: one per ``start``, every id of a ``start_batch``."""
    out: list[str] = []
    for m, _ in queue.sent:
        if m.kind == "start":
            out.append(m.run_id)
        elif m.kind == "start_batch":
            out.extend(m.run_ids or [])
    return out


def consume_starts(store: MemoryRunStore) -> None:
    """What the executor does with each start: every pending run is running now (a duplicate
    trigger then sends nothing; for a run still pending it sends the start again)."""
    from shared.engine.model import RunStatus

    for run_id in list(store.rows):
        run = store.get(run_id)
        if run.status is RunStatus.PENDING:
            run.status = RunStatus.RUNNING
            store.save(run)
