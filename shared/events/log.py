"""The local event log: every lifecycle event, one JSON line each, in ``<home>/events/lifecycle.jsonl``.

A sink like the others (it receives each event through the outbox, at least once: a line may
repeat with the same ``id``). Appends are serialised by a lock and written whole, so a
reader (``tail -f``, a test) never sees half a line.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from shared.events.base import CloudEventJson, EventSink, Failure

FILE = Path("events") / "lifecycle.jsonl"


class EventLogSink(EventSink):
    name = "log"

    def __init__(self, home: Path) -> None:
        self.path = home / FILE
        self._lock = threading.Lock()

    def deliver(self, events: list[CloudEventJson]) -> dict[str, Failure]:
        text = "".join(json.dumps(e, separators=(",", ":"), default=str) + "\n" for e in events)
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(text)
        except OSError as exc:
            return {str(e["id"]): Failure(f"event log {self.path}: {exc}") for e in events}
        return {}

    def describe(self) -> str:
        return f"log {self.path}"


def read_events(home: Path) -> list[CloudEventJson]:
    """The events in the local log, in the order they were written."""
    path = home / FILE
    if not path.is_file():
        return []
    out: list[CloudEventJson] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
