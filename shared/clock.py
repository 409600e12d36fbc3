"""The one clock. Pure code takes ``now`` as an argument; shells call ``utcnow()``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)
