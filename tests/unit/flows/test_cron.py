"""NCRONTAB parsing and fire-time search (UTC and DST zones)."""

from __future__ import annotations

import itertools
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
        ("0 * * *", "6 fields"),
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


def test_spring_forward_every_15_minutes_has_a_gap_in_wall_time_not_in_utc() -> None:
    c = Cron.parse("0 */15 * * * *")
    fires = c.fires_between(utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 30), "Europe/Amsterdam")
    # UTC keeps its 15-minute rhythm; the local clock jumps from 01:45 to 03:00.
    assert fires == [utc(2024, 3, 31, 0, 45), utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 15), utc(2024, 3, 31, 1, 30)]
    assert [f.astimezone(AMS).strftime("%H:%M") for f in fires] == ["01:45", "03:00", "03:15", "03:30"]


def test_fall_back_interval_fires_both_passes_of_the_repeated_hour() -> None:
    # Europe/Amsterdam 2024-10-27: 03:00 CEST -> 02:00 CET; 02:00-02:59 happens twice, and an
    # interval schedule runs in both passes (Functions' CronSchedule, "Fall Back" scenario 3).
    c = Cron.parse("0 */20 * * * *")
    fires = c.fires_between(utc(2024, 10, 26, 23, 30), utc(2024, 10, 27, 2, 30), "Europe/Amsterdam")
    walls = [f.astimezone(AMS).strftime("%H:%M%z") for f in fires]
    assert walls == [
        "01:40+0200", "02:00+0200", "02:20+0200", "02:40+0200",
        "02:00+0100", "02:20+0100", "02:40+0100", "03:00+0100", "03:20+0100",
    ]  # fmt: skip
    assert all(b - a == timedelta(minutes=20) for a, b in itertools.pairwise(fires))
    # From inside the second pass, the next fire is the next second-pass time.
    assert c.next_after(utc(2024, 10, 27, 1, 10), "Europe/Amsterdam") == utc(2024, 10, 27, 1, 20)
    # ...and the due fire looking back from there is the second-pass 02:00 CET.
    assert c.last_at_or_before(utc(2024, 10, 27, 1, 10), "Europe/Amsterdam") == utc(2024, 10, 27, 1, 0)
    # Inside the first pass, later minutes of the same hour are still ahead.
    assert c.next_after(utc(2024, 10, 27, 0, 5), "Europe/Amsterdam") == utc(2024, 10, 27, 0, 20)
    # At the end of the first pass the second pass comes next, before 03:00.
    assert c.next_after(utc(2024, 10, 27, 0, 50), "Europe/Amsterdam") == utc(2024, 10, 27, 1, 0)


def test_daily_job_in_the_repeated_hour_fires_once() -> None:
    c = Cron.parse("0 30 2 * * *")
    fires = c.fires_between(utc(2024, 10, 26, 12), utc(2024, 10, 28, 12), "Europe/Amsterdam")
    assert fires == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]


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


# ---------------------------------------------------------------- as Azure Functions reads NCRONTAB
#
# The timer-trigger docs (learn.microsoft.com/azure/azure-functions/functions-bindings-timer,
# "NCRONTAB expressions" and "NCRONTAB examples"): six fields {second} {minute} {hour} {day}
# {month} {day-of-week}, and "NCRONTAB expression supports both five field and six field
# format": five fields are {minute} {hour} {day} {month} {day-of-week}, firing at second 0
# (the extension parses them with NCrontab's IncludingSeconds = false).

DOCS_EXAMPLES = [
    # (expression, a start, the next three fires after it)
    (
        "0 */5 * * * *",
        utc(2024, 5, 1, 10, 2),
        [utc(2024, 5, 1, 10, 5), utc(2024, 5, 1, 10, 10), utc(2024, 5, 1, 10, 15)],
    ),
    ("0 0 * * * *", utc(2024, 5, 1, 10, 2), [utc(2024, 5, 1, 11), utc(2024, 5, 1, 12), utc(2024, 5, 1, 13)]),
    ("0 0 */2 * * *", utc(2024, 5, 1, 10, 2), [utc(2024, 5, 1, 12), utc(2024, 5, 1, 14), utc(2024, 5, 1, 16)]),
    ("0 0 9-17 * * *", utc(2024, 5, 1, 16, 2), [utc(2024, 5, 1, 17), utc(2024, 5, 2, 9), utc(2024, 5, 2, 10)]),
    ("0 30 9 * * *", utc(2024, 5, 1, 10), [utc(2024, 5, 2, 9, 30), utc(2024, 5, 3, 9, 30), utc(2024, 5, 4, 9, 30)]),
    # 2024-05-03 is a Friday: the next weekdays are Fri 3, Mon 6, Tue 7
    ("0 30 9 * * 1-5", utc(2024, 5, 3, 0), [utc(2024, 5, 3, 9, 30), utc(2024, 5, 6, 9, 30), utc(2024, 5, 7, 9, 30)]),
    # Mondays in January 2025: 6, 13, 20
    ("0 30 9 * Jan Mon", utc(2024, 5, 1), [utc(2025, 1, 6, 9, 30), utc(2025, 1, 13, 9, 30), utc(2025, 1, 20, 9, 30)]),
    # the "types of values" table
    ("0 5 * * * *", utc(2024, 5, 1, 10, 6), [utc(2024, 5, 1, 11, 5), utc(2024, 5, 1, 12, 5), utc(2024, 5, 1, 13, 5)]),
    ("0 * 5 * * *", utc(2024, 5, 1, 5, 58), [utc(2024, 5, 1, 5, 59), utc(2024, 5, 2, 5, 0), utc(2024, 5, 2, 5, 1)]),
    (
        "5-7 * * * * *",
        utc(2024, 5, 1, 10),
        [utc(2024, 5, 1, 10, 0, 5), utc(2024, 5, 1, 10, 0, 6), utc(2024, 5, 1, 10, 0, 7)],
    ),
    (
        "5,8,10 * * * * *",
        utc(2024, 5, 1, 10),
        [utc(2024, 5, 1, 10, 0, 5), utc(2024, 5, 1, 10, 0, 8), utc(2024, 5, 1, 10, 0, 10)],
    ),
]


def _three(c: Cron, start: datetime, tz: str = "UTC") -> list[datetime]:
    out, t = [], start
    for _ in range(3):
        t = c.next_after(t, tz)
        out.append(t)
    return out


@pytest.mark.parametrize(("expr", "start", "expected"), DOCS_EXAMPLES)
def test_timer_trigger_docs_examples(expr: str, start: datetime, expected: list[datetime]) -> None:
    assert _three(Cron.parse(expr), start) == expected


@pytest.mark.parametrize(("expr", "start", "expected"), [e for e in DOCS_EXAMPLES if e[0].startswith("0 ")])
def test_five_fields_are_the_six_without_seconds(expr: str, start: datetime, expected: list[datetime]) -> None:
    five = expr.split(" ", 1)[1]  # drop the {second} field: the docs' five-field form
    c = Cron.parse(five)
    assert c.seconds == (0,)
    assert _three(c, start) == expected
    assert str(c) == five  # shown as written


def test_five_field_errors_name_the_right_field() -> None:
    with pytest.raises(ValueError, match="minute: 61 is out of range"):
        Cron.parse("61 * * * *")
    with pytest.raises(ValueError, match="day-of-week: 8 is out of range"):
        Cron.parse("0 0 * * 8")
    with pytest.raises(ValueError, match=r"5 fields .* or 6 fields"):
        Cron.parse("0 0 * *")


@pytest.mark.parametrize(
    ("expr", "interval"),
    [
        # Functions' CronSchedule.IsInterval: '*', '-' or '/' in the expanded second/minute/hour fields
        ("0 */5 * * * *", True),
        ("0 0 * * * *", True),
        ("0 0 9-17 * * *", True),
        ("* 0 2 * * *", True),
        ("*/10 0 2 * * *", False),  # seconds expand to 0,10,20,...: no '*', '-' or '/' is left
        ("0 30 2 * * *", False),
        ("0 0 */2 * * *", False),  # expands to 0,2,4,...: a list of points in time
        ("0 0,30 2 * * *", False),
        ("0 0 1,2 * * *", True),  # expands to 1-2
        ("*/5 * * * *", True),  # five fields: minute and hour are checked
        ("30 2 * * *", False),
    ],
)
def test_interval_or_point_in_time_like_functions(expr: str, interval: bool) -> None:
    assert Cron.parse(expr).interval is interval


PT = "America/Los_Angeles"


def test_fall_back_interval_runs_through_the_repeated_hour() -> None:
    # The example in Functions' CronSchedule (Pacific time, 2018-11-04, 02:00 PDT -> 01:00 PST):
    # an every-30-minutes schedule runs 01:00-7, 01:30-7, 01:00-8, 01:30-8, 02:00-8, 02:30-8.
    c = Cron.parse("0 */30 * * * *")
    start = utc(2018, 11, 4, 7, 30)  # 00:30 PDT
    fires = c.fires_between(start, start + timedelta(hours=3), PT)
    got = [f.astimezone(ZoneInfo(PT)).strftime("%H:%M%z") for f in fires]
    assert got == ["01:00-0700", "01:30-0700", "01:00-0800", "01:30-0800", "02:00-0800", "02:30-0800"]
    # the same, five fields
    assert Cron.parse("*/30 * * * *").fires_between(start, start + timedelta(hours=3), PT) == fires
    # stepping one at a time from inside either pass gives the same sequence
    t, walked = start, []
    for _ in range(6):
        t = c.next_after(t, PT)
        walked.append(t)
    assert walked == fires
    # and the due fire looking back from inside the second pass is in the second pass
    assert c.last_at_or_before(utc(2018, 11, 4, 9, 10), PT) == utc(2018, 11, 4, 9, 0)  # 01:00 PST
    assert c.last_at_or_before(utc(2018, 11, 4, 8, 59), PT) == utc(2018, 11, 4, 8, 30)  # 01:30 PDT


def test_fall_back_hourly_fires_every_real_hour() -> None:
    c = Cron.parse("0 0 * * * *")
    start = datetime(2024, 10, 27, 0, 0, tzinfo=AMS) - timedelta(seconds=1)
    end = datetime(2024, 10, 28, 0, 0, tzinfo=AMS) - timedelta(seconds=1)
    fires = c.fires_between(start, end, "Europe/Amsterdam")
    assert len(fires) == 25  # the day has 25 hours and an interval schedule runs in each
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fires))


def test_fall_back_point_in_time_fires_once_on_the_first_pass() -> None:
    # Functions' example: every day at 01:30 Pacific runs on Nov 3 at 01:30-7, on Nov 4 at
    # 01:30-7 (not again at 01:30-8), on Nov 5 at 01:30-8.
    c = Cron.parse("0 30 1 * * *")
    fires = c.fires_between(utc(2018, 11, 3), utc(2018, 11, 6), PT)
    got = [f.astimezone(ZoneInfo(PT)).strftime("%d %H:%M%z") for f in fires]
    assert got == ["03 01:30-0700", "04 01:30-0700", "05 01:30-0800"]
    # a host that starts inside the second pass does not run it again
    assert c.next_after(datetime(2018, 11, 4, 1, 29, fold=1, tzinfo=ZoneInfo(PT)), PT) == utc(2018, 11, 5, 9, 30)


def test_spring_forward_time_that_does_not_exist_runs_an_hour_later() -> None:
    # NCrontab yields 02:30, which does not exist on 2024-03-31 in Amsterdam; .NET gives an
    # invalid local time the standard offset, so Functions runs it at 01:30Z = 03:30 CEST.
    c = Cron.parse("0 30 2 * * *")
    fires = c.fires_between(utc(2024, 3, 29), utc(2024, 4, 2), "Europe/Amsterdam")
    assert [f.astimezone(AMS).strftime("%d %H:%M") for f in fires] == ["29 02:30", "30 02:30", "31 03:30", "01 02:30"]
    assert c.last_at_or_before(utc(2024, 3, 31, 12), "Europe/Amsterdam") == utc(2024, 3, 31, 1, 30)
    assert c.next_after(utc(2024, 3, 31, 1, 5), "Europe/Amsterdam") == utc(2024, 3, 31, 1, 30)  # from 03:05 CEST


@settings(max_examples=60, deadline=None)
@given(
    expr=st.sampled_from(["0 */20 * * * *", "0 0 * * * *", "0 30 2 * * *", "0 15,45 1-3 * * *", "0 0 */2 * * *"]),
    zone=st.sampled_from(["Europe/Amsterdam", PT, "Australia/Lord_Howe", "UTC"]),
    start=st.datetimes(min_value=datetime(2024, 3, 1), max_value=datetime(2024, 11, 30)),
)
def test_next_and_last_agree_around_transitions(expr: str, zone: str, start: datetime) -> None:
    c = Cron.parse(expr)
    t0 = start.replace(tzinfo=UTC)
    fires = c.fires_between(t0, t0 + timedelta(days=2), zone, limit=200)
    assert fires == sorted(set(fires))
    for f in fires:
        assert c.last_at_or_before(f, zone) == f
        assert c.matches(f, zone)
    for a, b in itertools.pairwise(fires):
        assert c.last_at_or_before(b - timedelta(seconds=1), zone) == a
        assert c.next_after(a, zone) == b


# ---------------------------------------------------------------- outside input (issue 6, observation 7)


@pytest.mark.parametrize(
    "expr", ["\u0660 \u0663 * * * *", "0 \uff13 * * * *", "0 */\u0665 * * * *", "0 \u00b2 * * * *", "0 0\u2003* * * *"]
)
def test_non_ascii_digits_and_spaces_are_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="ASCII"):
        Cron.parse(expr)


def test_a_huge_time_zone_name_is_a_short_value_error() -> None:
    for name in ("A/" * 2999 + "A", "A" * 6000):
        with pytest.raises(ValueError) as info:
            Cron.parse("0 0 * * * *").next_after(utc(2024, 1, 1), name)
        assert len(str(info.value)) < 200 and "time zone" in str(info.value)


def _brute_fires(c: Cron, zone: str, start: datetime, minutes: int) -> list[datetime]:
    """Fires in (start, start + minutes] by definition: an instant t fires when some wall time
    that matches the fields has t among its instants (the module docstring's reading)."""
    tz = ZoneInfo(zone)
    offsets = {datetime(2024, m, 1, tzinfo=UTC).astimezone(tz).utcoffset() for m in range(1, 13)}
    out = []
    t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(minutes):
        for off in offsets:
            naive = (t + off).replace(tzinfo=None)
            fields_match = (
                naive.second in c.seconds
                and naive.minute in c.minutes
                and naive.hour in c.hours
                and naive.day in c.days
                and naive.month in c.months
                and (naive.weekday() + 1) % 7 in c.weekdays
            )
            if fields_match and t in c._instants(naive, tz):
                out.append(t)
                break
        t += timedelta(minutes=1)
    return out


@settings(max_examples=80, deadline=None)
@given(
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=5),
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=6) | st.just(set(range(24))),
    zone=st.sampled_from(["Europe/Amsterdam", PT, "Australia/Lord_Howe"]),
    day=st.sampled_from([(2024, 3, 31), (2024, 10, 27), (2024, 3, 10), (2024, 11, 3), (2024, 4, 7), (2024, 10, 6)]),
    shift=st.integers(-600, 600),
)
def test_dst_days_agree_with_the_definition(
    minutes: set[int], hours: set[int], zone: str, day: tuple[int, int, int], shift: int
) -> None:
    expr = f"0 {','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    c = Cron.parse(expr)
    start = datetime(*day, tzinfo=UTC) + timedelta(minutes=shift)
    expected = _brute_fires(c, zone, start, 36 * 60)
    end = start.replace(second=0, microsecond=0) + timedelta(minutes=36 * 60)
    assert c.fires_between(start, end, zone, limit=5000) == expected
    for a, b in itertools.pairwise(expected):
        assert c.last_at_or_before(b - timedelta(seconds=30), zone) == a
