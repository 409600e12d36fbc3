"""Ages and points in time as operators type them: ``30d``, ``12h``, ``2026-01-31``, ``2026-01-31T08:00Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from shared.errors import ValidationError

_AGE = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str, field: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → a positive timedelta."""
    m = _AGE.match(text or "")
    if m is None:
        raise ValidationError(f"expected an age such as 30d, 12h or 15m, got {text!r}", field=field)
    value = int(m.group(1))
    if value <= 0:
        raise ValidationError("must be more than 0", field=field)
    return timedelta(**{_UNITS[m.group(2).lower()]: value})


def parse_since(text: str, field: str, now: datetime) -> datetime:
    """An age back from ``now`` (``7d``) or an ISO 8601 date/time (UTC when no zone is given)."""
    if _AGE.match(text or ""):
        return now - parse_age(text, field)
    raw = (text or "").strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"expected an ISO date/time (2026-01-31, 2026-01-31T08:00Z) or an age (7d), got {text!r}", field=field
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
