"""NCRONTAB schedules, as Azure Functions timer triggers read them.

Six fields ``{second} {minute} {hour} {day} {month} {day-of-week}``, or five fields
``{minute} {hour} {day} {month} {day-of-week}`` firing at second 0 (the timer-trigger docs:
"NCRONTAB expression supports both five field and six field format"; the extension parses a
five-field expression with NCrontab's ``IncludingSeconds = false``).

Each field is ``*``, a value, a range ``a-b``, a list ``a,b,c`` of any of those, and a step
``*/n``, ``a-b/n`` or ``a/n`` (``a`` up to the field's maximum, as NCrontab reads it).
Months accept ``Jan``..``Dec`` and days of week ``Sun``..``Sat`` (three letters or the full
name, any case). Day of week is 0-6 with 0 = Sunday; 7 is accepted as Sunday too. Only ASCII
is accepted (``int()`` would read other scripts' digits).

Day and day of week: like NCrontab (and unlike Vixie cron), a time matches only when
**both** the day-of-month and the day-of-week fields match. ``0 0 9 1-7 * Mon`` is therefore
"09:00 on the first Monday of the month", not "the 1st-7th and every Monday". With either
field ``*`` this is the same as classic cron.

Time zones: the fields are matched against the wall-clock time of ``tz`` (IANA name, read
with :mod:`zoneinfo`), the way Functions' ``CronSchedule`` treats daylight saving time:

* **Interval or point in time.** A schedule is an *interval* when its expanded second,
  minute or hour field (minute or hour with five fields) is ``*`` or holds a run of
  consecutive values (``0 */5 * * * *``, ``0 0 9-17 * * *``); otherwise it names *points in
  time* (``0 30 2 * * *``, ``0 0 */2 * * *`` = hours 0,2,4,...). This is
  ``CronSchedule.IsInterval``, which tests the expanded expression NCrontab prints.
* **Fall back** (a wall-clock hour happens twice): an interval schedule runs through both
  passes (every 30 minutes: 01:00-7, 01:30-7, 01:00-8, 01:30-8, 02:00-8 in Pacific time); a
  point-in-time schedule fires once, on the first pass, and a host that starts inside the
  second pass does not run it again.
* **Spring forward** (wall-clock times that do not exist): .NET gives a non-existent local
  time the offset from before the change, so such a fire runs that much later (a daily
  02:30 in Amsterdam runs at 03:30 CEST on the spring-forward day); where that instant is
  also a fire of its own it runs once.

Functions computes one next occurrence at a time from the last one; this module reads the
schedule as the set of instants above, so ``next_after`` and ``last_at_or_before`` agree
wherever they start. Every result is an aware UTC datetime.

Searching skips by field (month, day, hour, minute, second), so finding the next fire of
a yearly schedule costs a handful of steps, not a scan over seconds.
"""

from __future__ import annotations

import calendar
import itertools
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Cron", "zone"]

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


MAX_EXPR_CHARS = 200  # the longest useful expression lists every value of a field or two
MAX_ZONE_CHARS = 64  # IANA names are at most ~32 characters (America/Argentina/ComodRivadavia)
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+){0,3}$")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def zone(tz: str | tzinfo) -> tzinfo:
    """The ``tzinfo`` of an IANA name; ValueError (short, never a traceback) for anything else.

    The name is checked before :mod:`zoneinfo` sees it: a long nested name such as
    ``A/A/A/...`` makes its package-resource lookup recurse until RecursionError.
    """
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str):
        raise ValueError(f"time zone must be a string, got {type(tz).__name__}")
    if len(tz) > MAX_ZONE_CHARS:
        raise ValueError(f"unknown time zone: a name of {len(tz)} characters; IANA names are at most {MAX_ZONE_CHARS}")
    if not _ZONE_NAME.match(tz):
        raise ValueError(f"unknown time zone {_clip(tz)!r}: expected an IANA name such as Europe/Amsterdam")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError, RecursionError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


_zone = zone


def _aware(dt: datetime, name: str) -> datetime:
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt


def _value(field: str, token: str, low: int, high: int) -> int:
    t = token.strip().lower()
    if not t:
        raise ValueError(f"{field}: empty value")
    if t.isascii() and t.isdigit():
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
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
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


def _has_run(values: tuple[int, ...]) -> bool:
    """Whether NCrontab prints this field with ``*`` or a range: two consecutive values."""
    return any(b - a == 1 for a, b in itertools.pairwise(values))


@lru_cache(maxsize=256)
def _offsets(zone: tzinfo, year: int) -> tuple[timedelta, timedelta]:
    """The smallest and largest UTC offset of ``zone`` around ``year`` (sampled twice a month)."""
    seen = set()
    for y in (year - 1, year, year + 1):
        for m in range(1, 13):
            for d in (1, 16):
                seen.add(datetime(y, m, d, 12, tzinfo=UTC).astimezone(zone).utcoffset() or timedelta(0))
    return min(seen), max(seen)


def _offset_at(zone: tzinfo, t: datetime) -> timedelta:
    return t.astimezone(zone).utcoffset() or timedelta(0)


def _steady(zone: tzinfo, t: datetime, span: timedelta) -> bool:
    """No change of UTC offset within ``span`` either side of the instant ``t``."""
    if not span:
        return True
    offset = t.astimezone(zone).utcoffset()
    return (t - span).astimezone(zone).utcoffset() == offset == (t + span).astimezone(zone).utcoffset()


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
    with_seconds: bool = True  # False: written with five fields (second 0)

    # ------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, expr: str) -> Cron:
        """Parse a 5- or 6-field NCRONTAB expression; ``ValueError`` names the offending field."""
        if not isinstance(expr, str):
            raise ValueError(f"cron expression must be a string, got {type(expr).__name__}")
        if len(expr) > MAX_EXPR_CHARS:
            raise ValueError(f"cron expression of {len(expr)} characters; at most {MAX_EXPR_CHARS}")
        bad = next((c for c in expr if not (c.isascii() and (c.isprintable() or c in " \t"))), None)
        if bad is not None:
            raise ValueError(
                f"NCRONTAB takes ASCII only (digits 0-9, names, * / , -): found {bad!r} at position {expr.index(bad)}"
            )
        parts = expr.split()
        if len(parts) not in (5, 6):
            raise ValueError(
                "NCRONTAB needs 5 fields {minute} {hour} {day} {month} {day-of-week} "
                f"or 6 fields {{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}; "
                f"got {len(parts)} in {_clip(expr)!r}"
            )
        with_seconds = len(parts) == 6
        fields = _FIELDS if with_seconds else _FIELDS[1:]
        parsed = [_parse_field(name, text, low, high) for (name, low, high), text in zip(fields, parts, strict=True)]
        if not with_seconds:
            parsed.insert(0, (0,))
        seconds, minutes, hours, days, months, weekdays = parsed
        cron = cls(" ".join(parts), seconds, minutes, hours, days, months, weekdays, with_seconds=with_seconds)
        # A day/month combination that no calendar has never fires: say so now.
        if not any(d <= _dim(2000, m) for m in cron.months for d in cron.days):  # 2000 is a leap year
            raise ValueError(f"day: no month in {parts[-2]!r} has day {parts[-3]!r}; the schedule would never fire")
        return cron

    @property
    def interval(self) -> bool:
        """Functions' ``CronSchedule.IsInterval``: runs through a repeated hour (module docstring)."""
        checked = (self.seconds, self.minutes, self.hours) if self.with_seconds else (self.minutes, self.hours)
        return any(_has_run(values) for values in checked)

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

    def _instants(self, naive: datetime, zone: tzinfo) -> tuple[datetime, ...]:
        """The UTC instants at which the wall time ``naive`` fires (see the module docstring)."""
        first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
        if first == second or first.astimezone(zone).replace(tzinfo=None) != naive:
            # unambiguous, or skipped by spring forward: fold 0 is the offset before the change
            return (first,)
        return (first, second) if self.interval else (first,)

    def next_after(self, after: datetime, tz: str | tzinfo = "UTC") -> datetime:
        """The first fire strictly after ``after`` (aware), as an aware UTC datetime."""
        _aware(after, "after")
        zone = _zone(tz)
        after_utc = after.astimezone(UTC)
        low, high = _offsets(zone, after_utc.year)
        span = high - low
        # Near an offset change, wall times before after's own can still fire later (the
        # second pass of a repeated hour, a skipped time moved forward): start lower then.
        base = after_utc.astimezone(zone) if _steady(zone, after_utc, span) else after_utc + low
        candidate = base.replace(tzinfo=None, microsecond=0) + _SECOND
        limit_year = candidate.year + _HORIZON_YEARS
        best: datetime | None = None
        bound: datetime | None = None  # wall times past it cannot fire before ``best``
        for _ in range(_MAX_SKIPS):
            naive = self._next_naive(candidate, limit_year)
            if naive is None or (bound is not None and naive > bound):
                break
            for fire in self._instants(naive, zone):
                if fire > after_utc and (best is None or fire < best):
                    best = fire
                    # a fire in (after, best] shows the wall time fire + offset, and the
                    # offset there is one of the two at its ends
                    reach = max(_offset_at(zone, after_utc), _offset_at(zone, best))
                    bound = (best + reach).replace(tzinfo=None)
            if best is not None and _steady(zone, best, span):
                break
            candidate = naive + _SECOND
        if best is None:
            raise ValueError(f"cron {self.expr!r} has no fire within {_HORIZON_YEARS} years after {after.isoformat()}")
        return best

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
        low, high = _offsets(zone, when_utc.year)
        span = high - low
        # Near an offset change, wall times after when's own may have fired already (the
        # first pass of a repeated hour seen from the second): start higher then.
        base = when_utc.astimezone(zone) if _steady(zone, when_utc, span) else when_utc + high
        candidate = base.replace(tzinfo=None, microsecond=0)
        floor_year = (oldest + low).year - 1
        best: datetime | None = None
        bound: datetime | None = None  # wall times before it cannot fire after ``best``
        for _ in range(_MAX_SKIPS):
            naive = self._prev_naive(candidate, floor_year)
            if naive is None or (bound is not None and naive < bound):
                break
            for fire in self._instants(naive, zone):
                if fire <= when_utc and (best is None or fire > best):
                    best = fire
                    # a fire in [best, when) shows the wall time fire + offset, or a skipped
                    # time up to one change earlier; the offsets are those at its ends
                    reach = min(_offset_at(zone, when_utc), _offset_at(zone, best)) - span
                    bound = (best + reach).replace(tzinfo=None)
            if best is not None and _steady(zone, best, span):
                break
            candidate = naive - _SECOND
        return best if best is not None and best >= oldest else None
