"""The local telemetry sink: one JSONL file per run, optional one-line console echo.

``<home>/telemetry/<run_id>.jsonl`` holds every span and event of a run, in the order they
ended; records without a run go to ``<home>/telemetry/_host.jsonl``. Each line is::

    {"ts", "type": "span"|"event", "name", "trace_id", "span_id", "parent_span_id",
     "duration_ms", "status", "run_id", "attributes"}

Attributes whose key looks like a credential (secret, password, key, token, connection,
authorization, credential) are
dropped, and string values that look like connection strings or SAS URLs are redacted.
Writing telemetry never breaks the caller: I/O errors are logged once and swallowed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from shared.telemetry.base import Span, Telemetry
from shared.telemetry.trace import parse

log = logging.getLogger("conveyor.telemetry")

HOST_FILE = "_host"
SECRET_KEY_PARTS = ("secret", "password", "key", "token", "connection", "authorization", "credential")
REDACTED = "[redacted]"
_SECRET_VALUE = re.compile(
    r"(AccountKey=|SharedAccessKey=|SharedAccessSignature=|[?&]sig=|Authorization:)", re.IGNORECASE
)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_DEPTH = 6


def _is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(part in low for part in SECRET_KEY_PARTS)


def scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-friendly copy of ``value`` without credential-like keys or values."""
    if depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        return {str(k): scrub(v, depth + 1) for k, v in value.items() if not _is_secret_key(str(k))}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, str):
        return REDACTED if _SECRET_VALUE.search(value) else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return REDACTED if _SECRET_VALUE.search(text) else text


def _file_stem(run_id: str | None) -> str:
    """The file name for a run id: only [A-Za-z0-9_.-], never a path, never hidden."""
    if not run_id:
        return HOST_FILE
    stem = _SAFE_NAME.sub("_", run_id)[:128].lstrip(".")
    return stem or HOST_FILE


def trace_path(home: Path, run_id: str | None) -> Path:
    return Path(home) / "telemetry" / f"{_file_stem(run_id)}.jsonl"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


class LocalTelemetry(Telemetry):
    def __init__(self, home: Path, console: bool = False, stream: TextIO | None = None) -> None:
        self.home = Path(home)
        self.dir = self.home / "telemetry"
        self.console = console
        self._stream = stream
        self._lock = threading.Lock()
        self._started: dict[int, tuple[float, float]] = {}  # id(span) -> (wall, perf)
        self._warned = False

    # ------------------------------------------------------------ Telemetry
    def _start(self, span: Span) -> None:
        with self._lock:
            self._started[id(span)] = (time.time(), time.perf_counter())

    def _end(self, span: Span) -> None:
        end_perf = time.perf_counter()
        with self._lock:
            wall, perf = self._started.pop(id(span), (time.time(), end_perf))
        own = parse(span.traceparent)
        parent = parse(span.parent)
        record = {
            "ts": _iso(wall),
            "type": "span",
            "name": span.name,
            "trace_id": own[0] if own else None,
            "span_id": own[1] if own else None,
            "parent_span_id": parent[1] if parent else None,
            "duration_ms": round((end_perf - perf) * 1000.0, 3),
            "status": span.status,
            "run_id": span.run_id,
            "attributes": scrub(span.attributes),
        }
        self._write(record)

    def event(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        ctx = parse(traceparent)
        record = {
            "ts": _iso(time.time()),
            "type": "event",
            "name": name,
            "trace_id": ctx[0] if ctx else None,
            "span_id": None,  # an event is a point inside the span that emitted it
            "parent_span_id": ctx[1] if ctx else None,
            "duration_ms": None,
            "status": "ok",
            "run_id": run_id,
            "attributes": scrub(attributes or {}),
        }
        self._write(record)

    # ------------------------------------------------------------ output
    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        path = trace_path(self.home, record["run_id"])
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                if not self._warned:
                    self._warned = True
                    log.warning("telemetry: cannot write %s (%s); local telemetry is off", path, exc)
            if self.console:
                self._echo(record)

    def _echo(self, record: dict[str, Any]) -> None:
        stream = self._stream or sys.stderr
        dur = f" {record['duration_ms']:.1f}ms" if record["duration_ms"] is not None else ""
        run = f" run={record['run_id']}" if record["run_id"] else ""
        status = "" if record["status"] == "ok" else f" {record['status'].upper()}"
        with contextlib.suppress(OSError, ValueError):  # closed stream: console echo is best effort
            print(f"[conveyor] {record['type']} {record['name']}{dur}{status}{run}", file=stream, flush=True)


def read_trace(home: Path, run_id: str | None) -> list[dict[str, Any]]:
    """The records of one run (or of the host when ``run_id`` is None), oldest write first.

    A torn last line (a writer killed mid-line) is skipped, not an error.
    """
    path = trace_path(Path(home), run_id)
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            # Sanitised names could collide ("a/b", "a_b"): keep only this run's records.
            if isinstance(rec, dict) and rec.get("run_id") == (run_id or None):
                out.append(rec)
    return out
