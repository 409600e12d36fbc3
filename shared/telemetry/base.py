"""The Telemetry port (facade). Exporters: local JSONL, OpenTelemetry, OpenCensus."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Span:
    name: str
    traceparent: str  # this span's own context (trace id of the run, new span id)
    parent: str  # the caller's traceparent
    run_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"

    def set(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def fail(self, error: str) -> None:
        self.status = "error"
        self.attributes["error"] = error


class Telemetry(ABC):
    @contextmanager
    def span(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> Iterator[Span]:
        """A timed operation inside the run's trace. Exceptions mark it failed and propagate."""
        from shared.telemetry.trace import child

        sp = Span(
            name=name,
            traceparent=child(traceparent),
            parent=traceparent,
            run_id=run_id,
            attributes=dict(attributes or {}),
        )
        self._start(sp)
        try:
            yield sp
        except BaseException as exc:
            sp.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._end(sp)

    @abstractmethod
    def _start(self, span: Span) -> None: ...

    @abstractmethod
    def _end(self, span: Span) -> None: ...

    @abstractmethod
    def event(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        """A point-in-time record (log line / custom event) in the run's trace."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Push buffered telemetry out (exporters batch)."""
