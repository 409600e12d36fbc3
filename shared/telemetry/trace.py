"""W3C trace context helpers: the ``traceparent`` that rides on every message and job tag."""

from __future__ import annotations

import re
import secrets

_TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


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
