"""SPEC §5 business-hours arithmetic: a budget counted only inside a rep's local working hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from router.domain.business_hours import add_business_time, business_seconds_between
from router.domain.events import Rep

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"

DEFAULT_HOURS: dict[str, tuple[str, str]] = {
    str(day): span for day, span in Rep(rep_id="R").working_hours.items()
}
WITH_SATURDAY = {**DEFAULT_HOURS, "sat": ("10:00", "14:00")}
LATE_FRIDAY = {**DEFAULT_HOURS, "fri": ("18:00", "24:00"), "sat": ("10:00", "14:00")}
SUNDAYS_ONLY = {"sun": ("00:00", "24:00")}
NIGHT_OWL = {"mon": ("20:00", "24:00")}


def local(zone: str, text: str) -> datetime:
    """A wall-clock time in `zone` ('2026-11-23 10:00')."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# (start, budget, working hours, zone, expected deadline); start and deadline are local times
CASES = [
    # ---- default hours, UTC: Mon 2026-11-23 ... Fri 2026-11-27 ----
    pytest.param("2026-11-23 10:00", hours(1), DEFAULT_HOURS, "UTC", "2026-11-23 11:00",
                 id="inside-hours"),
    pytest.param("2026-11-23 16:00", hours(1), DEFAULT_HOURS, "UTC", "2026-11-23 17:00",
                 id="ends-exactly-at-close"),
    pytest.param("2026-11-23 16:30", hours(1), DEFAULT_HOURS, "UTC", "2026-11-24 09:30",
                 id="evening-carries-to-next-morning"),
    pytest.param("2026-11-23 20:00", hours(1), DEFAULT_HOURS, "UTC", "2026-11-24 10:00",
                 id="after-hours-start"),
    pytest.param("2026-11-23 07:00", hours(1), DEFAULT_HOURS, "UTC", "2026-11-23 10:00",
                 id="before-hours-start"),
    pytest.param("2026-11-23 17:00", hours(1), DEFAULT_HOURS, "UTC", "2026-11-24 10:00",
                 id="start-at-close"),
    pytest.param("2026-11-28 12:00", hours(1), DEFAULT_HOURS, "UTC", "2026-11-30 10:00",
                 id="saturday-start"),
    pytest.param("2026-11-29 23:59", hours(1), DEFAULT_HOURS, "UTC", "2026-11-30 10:00",
                 id="sunday-night-start"),
    pytest.param("2026-11-27 16:30", hours(1), DEFAULT_HOURS, "UTC", "2026-11-30 09:30",
                 id="friday-evening-over-weekend"),
    pytest.param("2026-11-23 13:15", timedelta(minutes=5), DEFAULT_HOURS, "UTC",
                 "2026-11-23 13:20", id="minutes-budget"),
    # ---- several days ----
    pytest.param("2026-11-23 09:00", hours(20), DEFAULT_HOURS, "UTC", "2026-11-25 13:00",
                 id="budget-of-two-and-a-half-days"),
    pytest.param("2026-11-27 15:00", hours(12), DEFAULT_HOURS, "UTC", "2026-12-01 11:00",
                 id="budget-over-a-weekend"),
    pytest.param("2026-11-23 09:00", hours(40), DEFAULT_HOURS, "UTC", "2026-11-27 17:00",
                 id="budget-of-a-full-week"),
    pytest.param("2026-11-23 09:00", hours(41), DEFAULT_HOURS, "UTC", "2026-11-30 10:00",
                 id="budget-just-over-a-week"),
    # ---- Berlin: the SPEC example, and the DST weekends ----
    pytest.param("2026-11-20 17:30", hours(1), DEFAULT_HOURS, BERLIN, "2026-11-23 10:00",
                 id="berlin-friday-1730-due-monday-1000"),
    pytest.param("2026-03-27 16:30", hours(1), DEFAULT_HOURS, BERLIN, "2026-03-30 09:30",
                 id="berlin-spring-forward-weekend"),
    pytest.param("2026-10-23 16:30", hours(1), DEFAULT_HOURS, BERLIN, "2026-10-26 09:30",
                 id="berlin-fall-back-weekend"),
    pytest.param("2026-03-27 09:00", hours(16), DEFAULT_HOURS, BERLIN, "2026-03-30 17:00",
                 id="berlin-two-days-across-spring-forward"),
    # ---- New York: DST starts Sun 2026-03-08, ends Sun 2026-11-01 ----
    pytest.param("2026-03-06 16:30", hours(1), DEFAULT_HOURS, NEW_YORK, "2026-03-09 09:30",
                 id="new-york-spring-forward-weekend"),
    pytest.param("2026-10-30 16:30", hours(1), DEFAULT_HOURS, NEW_YORK, "2026-11-02 09:30",
                 id="new-york-fall-back-weekend"),
    pytest.param("2026-11-23 10:30", hours(1), DEFAULT_HOURS, NEW_YORK, "2026-11-23 11:30",
                 id="new-york-inside-hours"),
    # ---- custom hours ----
    pytest.param("2026-11-27 17:30", hours(1), WITH_SATURDAY, BERLIN, "2026-11-28 11:00",
                 id="saturday-hours"),
    pytest.param("2026-11-28 13:30", hours(1), WITH_SATURDAY, BERLIN, "2026-11-30 09:30",
                 id="saturday-then-monday"),
    pytest.param("2026-11-27 23:30", hours(1), LATE_FRIDAY, BERLIN, "2026-11-28 10:30",
                 id="friday-until-2400-then-saturday"),
    pytest.param("2026-11-27 17:00", hours(6), LATE_FRIDAY, BERLIN, "2026-11-28 00:00",
                 id="budget-ends-at-2400"),
    pytest.param("2026-11-23 23:00", hours(2), NIGHT_OWL, "UTC", "2026-11-30 21:00",
                 id="one-evening-a-week"),
    # a Sunday 00:00-24:00 rep: the spring-forward Sunday has 23 real hours, fall-back has 25
    pytest.param("2026-03-29 00:00", hours(23), SUNDAYS_ONLY, BERLIN, "2026-03-30 00:00",
                 id="spring-forward-sunday-holds-23-hours"),
    pytest.param("2026-03-29 00:00", hours(24), SUNDAYS_ONLY, BERLIN, "2026-04-05 01:00",
                 id="spring-forward-sunday-24-hours-spill-to-next-week"),
    pytest.param("2026-10-25 00:00", hours(24), SUNDAYS_ONLY, BERLIN, "2026-10-25 23:00",
                 id="fall-back-sunday-holds-25-hours"),
    pytest.param("2026-03-29 01:00", hours(2), {"sun": ("01:00", "05:00")}, BERLIN,
                 "2026-03-29 04:00", id="window-across-the-jump-counts-real-time"),
]


@pytest.mark.parametrize(("start", "budget", "working_hours", "zone", "expected"), CASES)
def test_add_business_time(start: str, budget: timedelta, working_hours: dict[str, tuple[str, str]],
                           zone: str, expected: str) -> None:
    due = add_business_time(local(zone, start), budget, working_hours, zone)
    assert due == local(zone, expected)
    assert due.utcoffset() == timedelta(0)  # returned in UTC


@pytest.mark.parametrize(("start", "budget", "working_hours", "zone", "expected"), CASES)
def test_business_seconds_between_inverts_the_deadline(
    start: str, budget: timedelta, working_hours: dict[str, tuple[str, str]], zone: str,
    expected: str,
) -> None:
    begin = local(zone, start)
    due = add_business_time(begin, budget, working_hours, zone)
    assert business_seconds_between(begin, due, working_hours, zone) == budget.total_seconds()


def test_spec_example_in_utc() -> None:
    """Friday 17:30 Berlin (CET, UTC+1) is 16:30 UTC; Monday 10:00 Berlin is 09:00 UTC."""
    due = add_business_time(datetime(2026, 11, 20, 16, 30, tzinfo=UTC), hours(1), DEFAULT_HOURS,
                            BERLIN)
    assert due == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "expected_utc"),
    [
        pytest.param("UTC", datetime(2026, 11, 23, 16, 30, tzinfo=UTC), id="utc"),
        pytest.param(BERLIN, datetime(2026, 11, 24, 8, 30, tzinfo=UTC), id="berlin"),
        pytest.param(NEW_YORK, datetime(2026, 11, 23, 16, 30, tzinfo=UTC), id="new-york"),
        pytest.param("Asia/Tokyo", datetime(2026, 11, 24, 1, 0, tzinfo=UTC), id="tokyo"),
    ],
)
def test_same_instant_different_zones(zone: str, expected_utc: datetime) -> None:
    # Mon 15:30 UTC = 16:30 Berlin, 10:30 New York, 00:30 Tuesday Tokyo
    start = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
    assert add_business_time(start, hours(1), DEFAULT_HOURS, zone) == expected_utc


@pytest.mark.parametrize("budget", [timedelta(0), timedelta(minutes=-5)], ids=["zero", "negative"])
def test_no_budget_is_due_at_once(budget: timedelta) -> None:
    start = local(BERLIN, "2026-11-28 12:00")  # a Saturday, outside hours
    assert add_business_time(start, budget, DEFAULT_HOURS, BERLIN) == start


def test_empty_working_hours_are_refused() -> None:
    with pytest.raises(ValueError, match="working hours are empty"):
        add_business_time(local("UTC", "2026-11-23 10:00"), hours(1), {}, "UTC")


@pytest.mark.parametrize(
    ("start", "end", "zone", "working_hours", "expected_hours"),
    [
        pytest.param("2026-11-27 16:00", "2026-11-30 10:00", "UTC", DEFAULT_HOURS, 2,
                     id="over-a-weekend"),
        pytest.param("2026-11-23 10:00", "2026-11-23 10:30", "UTC", DEFAULT_HOURS, 0.5,
                     id="inside-one-window"),
        pytest.param("2026-11-28 08:00", "2026-11-28 20:00", "UTC", DEFAULT_HOURS, 0,
                     id="a-saturday"),
        pytest.param("2026-11-23 18:00", "2026-11-24 08:00", "UTC", DEFAULT_HOURS, 0,
                     id="a-night"),
        pytest.param("2026-03-27 16:00", "2026-03-30 10:00", BERLIN, DEFAULT_HOURS, 2,
                     id="berlin-over-spring-forward"),
        pytest.param("2026-03-29 00:00", "2026-03-30 00:00", BERLIN, SUNDAYS_ONLY, 23,
                     id="spring-forward-sunday"),
        pytest.param("2026-10-25 00:00", "2026-10-26 00:00", BERLIN, SUNDAYS_ONLY, 25,
                     id="fall-back-sunday"),
        pytest.param("2026-11-23 09:00", "2026-12-07 09:00", "UTC", DEFAULT_HOURS, 80,
                     id="two-weeks"),
        pytest.param("2026-11-23 09:00", "2026-11-30 09:00", "UTC", {}, 0,
                     id="no-working-hours"),
    ],
)
def test_business_seconds_between(start: str, end: str, zone: str,
                                  working_hours: dict[str, tuple[str, str]],
                                  expected_hours: float) -> None:
    seconds = business_seconds_between(local(zone, start), local(zone, end), working_hours, zone)
    assert seconds == expected_hours * 3600


def test_business_seconds_between_reversed_is_zero() -> None:
    a, b = local("UTC", "2026-11-23 10:00"), local("UTC", "2026-11-23 12:00")
    assert business_seconds_between(b, a, DEFAULT_HOURS, "UTC") == 0.0
    assert business_seconds_between(a, a, DEFAULT_HOURS, "UTC") == 0.0
