"""W3C trace context helpers: the ``traceparent`` that rides on every message and job tag."""

from __future__ import annotations

import re
import secrets

_TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_RUN_TRACE = re.compile(r"[0-9a-f]{32}")


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def traceparent_for(run_id: str) -> str:
    """A traceparent in the trace of run ``run_id``, with a new span id.

    The trace id is the run id itself when that is a valid trace id (32 lowercase hex digits,
    not all zero: every run id Conveyor makes, a sha256 prefix or a uuid4), else a random one.
    So every delivery of one trigger, the one that creates the run and each duplicate, lands
    in the run's single operation (operation_Id = run id) without reading the store.
    """
    if _RUN_TRACE.fullmatch(run_id or "") and run_id != "0" * 32:
        return f"00-{run_id}-{secrets.token_hex(8)}-01"
    return new_traceparent()


def parse(traceparent: str) -> tuple[str, str] | None:
    """(trace_id, span_id) of a valid traceparent, else None."""
    m = _TP.match(traceparent or "")
    if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2)


def trace_id(traceparent: str) -> str | None:
    p = parse(traceparent)
    return p[0] if p else None


def child(traceparent: str) -> str:
    """A new span id in the same trace (or a fresh trace if ``traceparent`` is invalid)."""
    p = parse(traceparent)
    if p is None:
        return new_traceparent()
    return f"00-{p[0]}-{secrets.token_hex(8)}-01"
