"""NCRONTAB parsing and fire-time search (UTC and DST zones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.flows.cron import Cron

AMS = ZoneInfo("Europe/Amsterdam")
NY = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("expr", "attr", "expected"),
    [
        ("* * * * * *", "seconds", tuple(range(60))),
        ("5 * * * * *", "seconds", (5,)),
        ("* 10-13 * * * *", "minutes", (10, 11, 12, 13)),
        ("* * 1,5,23 * * *", "hours", (1, 5, 23)),
        ("*/15 * * * * *", "seconds", (0, 15, 30, 45)),
        ("* 10-30/10 * * * *", "minutes", (10, 20, 30)),
        ("* * 20/2 * * *", "hours", (20, 22)),  # NCrontab: a/n runs from a to the maximum
        ("* * * 1-3,28-31/2 * *", "days", (1, 2, 3, 28, 30)),
        ("* * * * Jan,MAR,dec *", "months", (1, 3, 12)),
        ("* * * * february-April *", "months", (2, 3, 4)),
        ("* * * * * Sun,wed,SAT", "weekdays", (0, 3, 6)),
        ("* * * * * monday-friday", "weekdays", (1, 2, 3, 4, 5)),
        ("* * * * * 7", "weekdays", (0,)),
        ("* * * * * 5-7", "weekdays", (0, 5, 6)),
        ("* * * * * */2", "weekdays", (0, 2, 4, 6)),
    ],
)
def test_parse_field_syntax(expr: str, attr: str, expected: tuple[int, ...]) -> None:
    assert getattr(Cron.parse(expr), attr) == expected


def test_parse_normalises_whitespace_and_str() -> None:
    c = Cron.parse("  0  */5 *   * * *  ")
    assert str(c) == "0 */5 * * * *"
    assert c == Cron.parse("0 */5 * * * *")


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("0 * * * *", "6 fields"),
        ("0 0 * * * * *", "6 fields"),
        ("0 61 * * * *", "minute: 61 is out of range 0-59"),
        ("60 * * * * *", "second: 60 is out of range 0-59"),
        ("0 0 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 0 0 0 * *", "day: 0 is out of range 1-31"),
        ("0 0 0 32 * *", "day: 32 is out of range 1-31"),
        ("0 0 0 * 13 *", "month: 13 is out of range 1-12"),
        ("0 0 0 * * 8", "day-of-week: 8 is out of range 0-7"),
        ("0 0 0 * Foo *", "month: 'Foo' is not a month"),
        ("0 0 0 * * Funday", "day-of-week: 'Funday' is not a day of week"),
        ("0 Jan * * * *", "minute: 'Jan' is not a number"),
        ("*/0 * * * * *", "second: step '0'"),
        ("*/x * * * * *", "second: step 'x'"),
        ("0 30-10 * * * *", "minute: range '30-10' runs backwards"),
        ("0 1,,2 * * * *", "minute: empty item"),
        ("0 0 0 30 2 *", "never fire"),
        ("0 0 0 31 4,6,9,11 *", "never fire"),
    ],
)
def test_parse_errors_name_the_field(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        Cron.parse(expr)
    assert fragment in str(info.value)


def test_feb_29_is_possible() -> None:
    c = Cron.parse("0 0 0 29 2 *")
    assert c.next_after(utc(2023, 1, 1)) == utc(2024, 2, 29)
    assert c.next_after(utc(2024, 2, 29)) == utc(2028, 2, 29)


# ---------------------------------------------------------------- next / between / last (UTC)


def test_next_after_is_strictly_after() -> None:
    c = Cron.parse("0 */5 * * * *")
    assert c.next_after(utc(2024, 5, 1, 10, 0, 0)) == utc(2024, 5, 1, 10, 5)
    assert c.next_after(utc(2024, 5, 1, 9, 59, 59)) == utc(2024, 5, 1, 10, 0)
    assert c.next_after(utc(2024, 5, 1, 9, 59, 59, 999999)) == utc(2024, 5, 1, 10, 0)


def test_next_after_rolls_over_year_and_month_ends() -> None:
    assert Cron.parse("0 0 0 1 Jan *").next_after(utc(2024, 1, 1)) == utc(2025, 1, 1)
    assert Cron.parse("30 59 23 31 * *").next_after(utc(2024, 4, 1)) == utc(2024, 5, 31, 23, 59, 30)
    assert Cron.parse("0 0 12 * * *").next_after(utc(2024, 12, 31, 12)) == utc(2025, 1, 1, 12)


def test_next_after_accepts_any_aware_input_and_returns_utc() -> None:
    c = Cron.parse("0 0 * * * *")
    after = datetime(2024, 6, 1, 10, 30, tzinfo=AMS)  # 08:30Z
    got = c.next_after(after)
    assert got == utc(2024, 6, 1, 9) and got.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Cron.parse("* * * * * *").next_after(datetime(2024, 1, 1))


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Base'"):
        Cron.parse("* * * * * *").next_after(utc(2024, 1, 1), "Mars/Base")


def test_day_and_weekday_must_both_match_like_ncrontab() -> None:
    # 09:00 on the first Monday of each month (NCrontab ANDs day and day-of-week).
    c = Cron.parse("0 0 9 1-7 * Mon")
    fires = c.fires_between(utc(2024, 1, 1), utc(2024, 6, 30))
    assert [f.day for f in fires] == [1, 5, 4, 1, 6, 3]
    assert all(f.weekday() == 0 and f.hour == 9 for f in fires)


def test_weekdays_only() -> None:
    fires = Cron.parse("0 30 7 * * Mon-Fri").fires_between(utc(2024, 3, 1, 8), utc(2024, 3, 11))
    assert [f.day for f in fires] == [4, 5, 6, 7, 8]  # Fri 1 07:30 is before the start; 2-3 is a weekend
    assert Cron.parse("0 30 7 * * Mon-Fri").fires_between(utc(2024, 3, 1), utc(2024, 3, 1, 7, 30)) == [
        utc(2024, 3, 1, 7, 30)
    ]


def test_fires_between_is_open_closed_and_limited() -> None:
    c = Cron.parse("0 0 * * * *")
    fires = c.fires_between(utc(2024, 1, 1, 0), utc(2024, 1, 1, 5))
    assert fires == [utc(2024, 1, 1, h) for h in range(1, 6)]
    assert c.fires_between(utc(2024, 1, 1), utc(2024, 2, 1), limit=3) == [utc(2024, 1, 1, h) for h in (1, 2, 3)]
    assert c.fires_between(utc(2024, 1, 1, 5), utc(2024, 1, 1, 4)) == []


def test_last_at_or_before() -> None:
    c = Cron.parse("0 0 6 * * *")
    assert c.last_at_or_before(utc(2024, 5, 2, 6)) == utc(2024, 5, 2, 6)
    assert c.last_at_or_before(utc(2024, 5, 2, 5, 59, 59)) == utc(2024, 5, 1, 6)
    assert c.last_at_or_before(utc(2024, 5, 2, 6) - timedelta(microseconds=1)) == utc(2024, 5, 1, 6)
    assert c.last_at_or_before(utc(2024, 1, 1, 0)) == utc(2023, 12, 31, 6)
    yearly = Cron.parse("0 0 0 1 Jan *")
    assert yearly.last_at_or_before(utc(2024, 12, 31)) == utc(2024, 1, 1)
    assert yearly.last_at_or_before(utc(2024, 12, 31), lookback=timedelta(days=30)) is None
    assert Cron.parse("0 0 0 29 2 *").last_at_or_before(utc(2027, 1, 1)) is None  # older than 366 days


def test_matches() -> None:
    c = Cron.parse("0 0 9 * * *")
    assert c.matches(utc(2024, 1, 1, 9))
    assert not c.matches(utc(2024, 1, 1, 9, 0, 1))
    assert c.matches(datetime(2024, 7, 1, 9, tzinfo=AMS), "Europe/Amsterdam")
    assert not c.matches(utc(2024, 7, 1, 9), "Europe/Amsterdam")


def test_sparse_schedule_is_found_quickly() -> None:
    # 29 February that is a Monday: 2044 after 2024. Skipping by field keeps this cheap.
    c = Cron.parse("0 0 0 29 Feb Mon")
    assert c.next_after(utc(2024, 3, 1)) == utc(2044, 2, 29)
    assert c.last_at_or_before(utc(2044, 3, 1)) == utc(2044, 2, 29)


# ---------------------------------------------------------------- time zones and DST


def test_new_york_wall_clock_across_dst() -> None:
    c = Cron.parse("0 0 9 * * *")
    winter = c.next_after(utc(2024, 1, 15), "America/New_York")
    summer = c.next_after(utc(2024, 7, 15), "America/New_York")
    assert winter == utc(2024, 1, 15, 14)  # EST = UTC-5
    assert summer == utc(2024, 7, 15, 13)  # EDT = UTC-4
    assert summer.astimezone(NY).hour == 9


def test_spring_forward_skips_nonexistent_times() -> None:
    # Europe/Amsterdam 2024-03-31: 02:00 -> 03:00, so 02:30 does not exist that day.
    c = Cron.parse("0 30 2 * * *")
    fires = c.fires_between(utc(2024, 3, 29), utc(2024, 4, 2), "Europe/Amsterdam")
    local = [f.astimezone(AMS) for f in fires]
    assert [(t.day, t.hour, t.minute) for t in local] == [(29, 2, 30), (30, 2, 30), (1, 2, 30)]
    assert c.next_after(utc(2024, 3, 30, 12), "Europe/Amsterdam") == utc(2024, 4, 1, 0, 30)
    assert c.last_at_or_before(utc(2024, 4, 1), "Europe/Amsterdam") == utc(2024, 3, 30, 1, 30)


def test_spring_forward_every_15_minutes_has_a_gap_in_wall_time_not_in_utc() -> None:
    c = Cron.parse("0 */15 * * * *")
    fires = c.fires_between(utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 30), "Europe/Amsterdam")
    # UTC keeps its 15-minute rhythm; the local clock jumps from 01:45 to 03:00.
    assert fires == [utc(2024, 3, 31, 0, 45), utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 15), utc(2024, 3, 31, 1, 30)]
    assert [f.astimezone(AMS).strftime("%H:%M") for f in fires] == ["01:45", "03:00", "03:15", "03:30"]


def test_fall_back_fires_the_repeated_hour_once() -> None:
    # Europe/Amsterdam 2024-10-27: 03:00 CEST -> 02:00 CET; 02:00-02:59 happens twice.
    c = Cron.parse("0 */20 * * * *")
    fires = c.fires_between(utc(2024, 10, 26, 23, 30), utc(2024, 10, 27, 2, 30), "Europe/Amsterdam")
    walls = [f.astimezone(AMS).strftime("%H:%M") for f in fires]
    assert walls == ["01:40", "02:00", "02:20", "02:40", "03:00", "03:20"]
    assert len(set(walls)) == len(walls)
    # From inside the second pass, the next fire is 03:00 CET, not a second 02:40.
    assert c.next_after(utc(2024, 10, 27, 1, 10), "Europe/Amsterdam") == utc(2024, 10, 27, 2, 0)
    # ...and the due fire looking back from there is the first-pass 02:40 CEST.
    assert c.last_at_or_before(utc(2024, 10, 27, 1, 10), "Europe/Amsterdam") == utc(2024, 10, 27, 0, 40)
    # Inside the first pass, later minutes of the same hour are still ahead.
    assert c.next_after(utc(2024, 10, 27, 0, 5), "Europe/Amsterdam") == utc(2024, 10, 27, 0, 20)


def test_daily_job_in_the_repeated_hour_fires_once() -> None:
    c = Cron.parse("0 30 2 * * *")
    fires = c.fires_between(utc(2024, 10, 26, 12), utc(2024, 10, 28, 12), "Europe/Amsterdam")
    assert fires == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


def test_hourly_over_fall_back_day_counts_wall_hours() -> None:
    c = Cron.parse("0 0 * * * *")
    start = datetime(2024, 10, 27, 0, 0, tzinfo=AMS) - timedelta(seconds=1)
    end = datetime(2024, 10, 28, 0, 0, tzinfo=AMS) - timedelta(seconds=1)
    fires = c.fires_between(start, end, "Europe/Amsterdam")
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=25)  # the day is 25 hours long
    assert len(fires) == 24  # but each wall-clock hour fires once


# ---------------------------------------------------------------- against brute force


def _brute_next(c: Cron, after: datetime, days: int) -> datetime | None:
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(days * 24 * 60):
        if (
            t.minute in c.minutes
            and t.hour in c.hours
            and t.day in c.days
            and t.month in c.months
            and (t.weekday() + 1) % 7 in c.weekdays
        ):
            return t
        t += timedelta(minutes=1)
    return None


@settings(max_examples=40, deadline=None)
@given(
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=4),
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=4),
    weekdays=st.sets(st.integers(0, 6), min_size=1, max_size=3),
    after=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)),
)
def test_next_after_agrees_with_a_minute_scan(
    minutes: set[int], hours: set[int], weekdays: set[int], after: datetime
) -> None:
    expr = f"0 {','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * " + ",".join(
        map(str, sorted(weekdays))
    )
    c = Cron.parse(expr)
    start = after.replace(tzinfo=UTC)
    expected = _brute_next(c, start, days=8)
    got = c.next_after(start)
    assert got == expected
    # last_at_or_before inverts next_after
    assert c.last_at_or_before(got) == got
    before = c.last_at_or_before(got - timedelta(seconds=1))
    assert before is None or before <= start
