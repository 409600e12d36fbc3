"""NCRONTAB schedules, as Azure Functions timer triggers read them.

Six fields: ``{second} {minute} {hour} {day} {month} {day-of-week}``.

Each field is ``*``, a value, a range ``a-b``, a list ``a,b,c`` of any of those, and a step
``*/n``, ``a-b/n`` or ``a/n`` (``a`` up to the field's maximum, as NCrontab reads it).
Months accept ``Jan``..``Dec`` and days of week ``Sun``..``Sat`` (three letters or the full
name, any case). Day of week is 0-6 with 0 = Sunday; 7 is accepted as Sunday too.

Day and day of week: like NCrontab (and unlike Vixie cron), a time matches only when
**both** the day-of-month and the day-of-week fields match. ``0 0 9 1-7 * Mon`` is therefore
"09:00 on the first Monday of the month", not "the 1st-7th and every Monday". With either
field ``*`` this is the same as classic cron.

Time zones: the fields are matched against the wall-clock time of ``tz`` (IANA name, read
with :mod:`zoneinfo`). When the clocks go forward, wall times that do not exist that day
do not fire (a daily 02:30 job skips the spring-forward day). When the clocks go back,
each wall time fires once, at its first occurrence: the repeated hour fires on its first
pass only. Every result is an aware UTC datetime.

Searching skips by field (month, day, hour, minute, second), so finding the next fire of
a yearly schedule costs a handful of steps, not a scan over seconds.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Cron"]

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FULL_MONTHS = tuple(m.lower() for m in calendar.month_name[1:])
_FULL_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")

# name, low, high, names (value of names[i] is low + i)
_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)

# Longest wait we search for a next fire (29 February on a given weekday recurs within
# ~40 years, so 60 covers every expression that can fire at all).
_HORIZON_YEARS = 60
# Safety net for skipping candidates that do not exist or were already passed around a
# DST change (at most one hour of per-second fires).
_MAX_SKIPS = 200_000


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


def _aware(dt: datetime, name: str) -> datetime:
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt


def _value(field: str, token: str, low: int, high: int) -> int:
    t = token.strip().lower()
    if not t:
        raise ValueError(f"{field}: empty value")
    if t.isdigit():
        v = int(t)
        if field == "day-of-week" and v == 7:
            return 0
        top = 7 if field == "day-of-week" else high
        if not low <= v <= top:
            raise ValueError(f"{field}: {v} is out of range {low}-{top}")
        return v
    if field == "month":
        for names in (_MONTH_NAMES, _FULL_MONTHS):
            if t in names:
                return names.index(t) + 1
        raise ValueError(f"{field}: {token!r} is not a month (use 1-12 or Jan..Dec)")
    if field == "day-of-week":
        for names in (_DAY_NAMES, _FULL_DAYS):
            if t in names:
                return names.index(t)
        raise ValueError(f"{field}: {token!r} is not a day of week (use 0-6 with 0=Sunday, or Sun..Sat)")
    raise ValueError(f"{field}: {token!r} is not a number in {low}-{high}")


def _parse_field(field: str, text: str, low: int, high: int) -> tuple[int, ...]:
    values: set[int] = set()
    if not text:
        raise ValueError(f"{field}: empty field")
    for part in text.split(","):
        if not part:
            raise ValueError(f"{field}: empty item in list {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field}: step {step_text!r} in {part!r} must be a positive whole number")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, stop = _value(field, a, low, high), _value(field, b, low, high)
            if field == "day-of-week" and b.strip() == "7":
                stop = 7  # 5-7 means Fri..Sun
            if start > stop:
                raise ValueError(f"{field}: range {base!r} runs backwards ({start} > {stop})")
        else:
            start = _value(field, base, low, high)
            # NCrontab reads "a/n" as a..max stepping n; a single value otherwise.
            stop = high if slash else start
        for v in range(start, stop + 1, step):
            values.add(0 if (field == "day-of-week" and v == 7) else v)
    return tuple(sorted(values))


def _next_in(values: tuple[int, ...], x: int) -> int | None:
    i = bisect_left(values, x)
    return values[i] if i < len(values) else None


def _prev_in(values: tuple[int, ...], x: int) -> int | None:
    i = bisect_right(values, x)
    return values[i - 1] if i > 0 else None


def _dim(y: int, m: int) -> int:
    return calendar.monthrange(y, m)[1]


def _cron_dow(y: int, m: int, d: int) -> int:
    # datetime.weekday(): Monday=0 .. Sunday=6; cron: Sunday=0 .. Saturday=6
    return (calendar.weekday(y, m, d) + 1) % 7


_SECOND = timedelta(seconds=1)


def _fields(t: datetime) -> tuple[int, int, int, int, int, int]:
    return t.year, t.month, t.day, t.hour, t.minute, t.second


@dataclass(frozen=True)
class Cron:
    """A parsed NCRONTAB expression. Build with :meth:`Cron.parse`."""

    expr: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday

    # ------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, expr: str) -> Cron:
        """Parse a 6-field NCRONTAB expression; ``ValueError`` names the offending field."""
        if not isinstance(expr, str):
            raise ValueError(f"cron expression must be a string, got {type(expr).__name__}")
        parts = expr.split()
        if len(parts) != 6:
            raise ValueError(
                f"NCRONTAB needs 6 fields: {{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}; "
                f"got {len(parts)} in {expr!r}"
            )
        parsed = [_parse_field(name, text, low, high) for (name, low, high), text in zip(_FIELDS, parts, strict=True)]
        cron = cls(" ".join(parts), *parsed)
        # A day/month combination that no calendar has never fires: say so now.
        if not any(d <= _dim(2000, m) for m in cron.months for d in cron.days):  # 2000 is a leap year
            raise ValueError(f"day: no month in {parts[4]!r} has day {parts[3]!r}; the schedule would never fire")
        return cron

    def __str__(self) -> str:
        return self.expr

    # ------------------------------------------------------------ matching

    def _day_ok(self, y: int, m: int, d: int) -> bool:
        return d in self.days and _cron_dow(y, m, d) in self.weekdays

    def matches(self, when: datetime, tz: str | tzinfo = "UTC") -> bool:
        """Whether ``when`` (aware) is a fire time in the wall clock of ``tz``."""
        _aware(when, "when")
        w = when.replace(microsecond=0)
        if w != when:
            return False
        return self.last_at_or_before(when, tz, lookback=timedelta(0)) == when.astimezone(UTC)

    # ------------------------------------------------------------ naive searches (wall clock)

    def _next_naive(self, t: datetime, limit_year: int) -> datetime | None:
        """First naive wall time >= ``t`` (second resolution) that matches the fields."""
        y, mo, d, h, mi, s = t.year, t.month, t.day, t.hour, t.minute, t.second
        while y <= limit_year:
            if mo not in self.months:
                nm = _next_in(self.months, mo)
                if nm is None:
                    y, mo = y + 1, self.months[0]
                else:
                    mo = nm
                d, h, mi, s = 1, 0, 0, 0
                continue
            dim = _dim(y, mo)
            nd = _next_in(self.days, d)
            if nd is None or nd > dim:
                y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
                d, h, mi, s = 1, 0, 0, 0
                continue
            if nd != d:
                d, h, mi, s = nd, 0, 0, 0
            if _cron_dow(y, mo, d) not in self.weekdays:
                d, h, mi, s = d + 1, 0, 0, 0  # d > dim is handled above on the next turn
                continue
            nh = _next_in(self.hours, h)
            if nh is None:
                d, h, mi, s = d + 1, 0, 0, 0
                continue
            if nh != h:
                h, mi, s = nh, 0, 0
            nmi = _next_in(self.minutes, mi)
            if nmi is None:
                h, mi, s = h + 1, 0, 0
                if h > 23:
                    d, h = d + 1, 0
                continue
            if nmi != mi:
                mi, s = nmi, 0
            ns = _next_in(self.seconds, s)
            if ns is None:
                mi, s = mi + 1, 0
                if mi > 59:
                    h, mi = h + 1, 0
                    if h > 23:
                        d, h = d + 1, 0
                continue
            return datetime(y, mo, d, h, mi, ns)  # a wall-clock time; the caller applies the zone
        return None

    def _prev_naive(self, t: datetime, floor_year: int) -> datetime | None:
        """Last naive wall time <= ``t`` (second resolution) that matches the fields."""
        y, mo, d, h, mi, s = t.year, t.month, t.day, t.hour, t.minute, t.second
        end = 99  # "last day of the month" marker, clamped below

        def prev_month(y: int, mo: int) -> tuple[int, int]:
            return (y - 1, 12) if mo == 1 else (y, mo - 1)

        while y >= floor_year:
            if mo not in self.months:
                pm = _prev_in(self.months, mo)
                if pm is None:
                    y, mo = y - 1, self.months[-1]
                else:
                    mo = pm
                d, h, mi, s = end, 23, 59, 59
                continue
            d = min(d, _dim(y, mo))
            pd = _prev_in(self.days, d)
            if pd is None:
                y, mo = prev_month(y, mo)
                d, h, mi, s = end, 23, 59, 59
                continue
            if pd != d:
                d, h, mi, s = pd, 23, 59, 59
            # A field with no earlier match moves to the last second of the previous
            # day / hour / minute; datetime arithmetic carries into the units above.
            if _cron_dow(y, mo, d) not in self.weekdays:
                y, mo, d, h, mi, s = _fields(datetime(y, mo, d) - _SECOND)
                continue
            ph = _prev_in(self.hours, h)
            if ph is None:
                y, mo, d, h, mi, s = _fields(datetime(y, mo, d) - _SECOND)
                continue
            if ph != h:
                h, mi, s = ph, 59, 59
            pmi = _prev_in(self.minutes, mi)
            if pmi is None:
                y, mo, d, h, mi, s = _fields(datetime(y, mo, d, h) - _SECOND)
                continue
            if pmi != mi:
                mi, s = pmi, 59
            ps = _prev_in(self.seconds, s)
            if ps is None:
                y, mo, d, h, mi, s = _fields(datetime(y, mo, d, h, mi) - _SECOND)
                continue
            return datetime(y, mo, d, h, mi, ps)
        return None

    # ------------------------------------------------------------ zone-aware searches

    @staticmethod
    def _fire_utc(naive: datetime, zone: tzinfo) -> datetime | None:
        """The UTC instant of a matching wall time: first occurrence; None if it does not exist."""
        local = naive.replace(tzinfo=zone, fold=0)
        utc = local.astimezone(UTC)
        if utc.astimezone(zone).replace(tzinfo=None) != naive:
            return None  # skipped by a spring-forward change
        return utc

    def next_after(self, after: datetime, tz: str | tzinfo = "UTC") -> datetime:
        """The first fire strictly after ``after`` (aware), as an aware UTC datetime."""
        _aware(after, "after")
        zone = _zone(tz)
        after_utc = after.astimezone(UTC)
        wall = after_utc.astimezone(zone).replace(tzinfo=None, microsecond=0)
        candidate = wall + timedelta(seconds=1)
        limit_year = wall.year + _HORIZON_YEARS
        for _ in range(_MAX_SKIPS):
            if candidate.year > limit_year:
                break
            naive = self._next_naive(candidate, limit_year)
            if naive is None:
                break
            fire = self._fire_utc(naive, zone)
            # Skip wall times that do not exist, and those whose first occurrence already
            # passed (``after`` is in the second pass of a repeated hour).
            if fire is not None and fire > after_utc:
                return fire
            candidate = naive + timedelta(seconds=1)
        raise ValueError(f"cron {self.expr!r} has no fire within {_HORIZON_YEARS} years after {after.isoformat()}")

    def fires_between(
        self, start: datetime, end: datetime, tz: str | tzinfo = "UTC", limit: int = 1000
    ) -> list[datetime]:
        """Fires in ``(start, end]`` as aware UTC datetimes, at most ``limit`` of them (the earliest)."""
        _aware(start, "start")
        _aware(end, "end")
        zone = _zone(tz)
        out: list[datetime] = []
        end_utc = end.astimezone(UTC)
        t = start
        while len(out) < limit:
            try:
                t = self.next_after(t, zone)
            except ValueError:
                break
            if t > end_utc:
                break
            out.append(t)
        return out

    def last_at_or_before(
        self, when: datetime, tz: str | tzinfo = "UTC", *, lookback: timedelta = timedelta(days=366)
    ) -> datetime | None:
        """The latest fire at or before ``when`` and no older than ``lookback``; None if none."""
        _aware(when, "when")
        zone = _zone(tz)
        when_utc = when.astimezone(UTC)
        oldest = when_utc - lookback
        local = when_utc.astimezone(zone)
        wall = local.replace(tzinfo=None, microsecond=0)
        # In the second pass of a repeated hour, wall times later than ``wall`` (up to the
        # size of the shift) first occurred before ``when``: start the search above them.
        shift = (local.replace(fold=0).utcoffset() or timedelta(0)) - (local.utcoffset() or timedelta(0))
        candidate = wall + max(shift, timedelta(0))
        floor_year = (oldest.astimezone(zone) - timedelta(days=2)).year
        for _ in range(_MAX_SKIPS):
            naive = self._prev_naive(candidate, floor_year)
            if naive is None:
                return None
            fire = self._fire_utc(naive, zone)
            if fire is not None and fire <= when_utc:
                return fire if fire >= oldest else None
            candidate = naive - timedelta(seconds=1)
        return None
