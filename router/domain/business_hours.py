"""Business-time arithmetic for SLA deadlines: a budget counted only inside working hours.

Pure: the start time comes in, the deadline goes out. Durations are measured in UTC (so a DST
change inside a working day counts the real elapsed time), while the working windows are laid
out on the local calendar of the rep's time zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAY_KEYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_DAYS = 3660  # ten years: guards against a calendar with no working time at all


def _clock(text: str) -> tuple[time, int]:
    """'09:30' -> (09:30, 0); '24:00' -> (00:00, 1 day later)."""
    hours, minutes = (int(part) for part in text.split(":"))
    if hours == 24:
        return time(0, minutes), 1
    return time(hours, minutes), 0


def _window(day: datetime, hours: tuple[str, str], zone: ZoneInfo) -> tuple[datetime, datetime]:
    (start, start_shift), (end, end_shift) = _clock(hours[0]), _clock(hours[1])
    date = day.date()
    opens = datetime.combine(date + timedelta(days=start_shift), start, tzinfo=zone)
    closes = datetime.combine(date + timedelta(days=end_shift), end, tzinfo=zone)
    return opens.astimezone(UTC), closes.astimezone(UTC)


def add_business_time(
    start: datetime,
    budget: timedelta,
    working_hours: Mapping[str, tuple[str, str]],
    timezone: str,
) -> datetime:
    """The moment `budget` of working time has passed since `start` (returned in UTC)."""
    if budget <= timedelta(0):
        return start.astimezone(UTC)
    if not any(working_hours.get(day) for day in WEEKDAY_KEYS):
        raise ValueError("working hours are empty: no deadline can be computed")
    zone = ZoneInfo(timezone)
    cursor = start.astimezone(UTC)
    remaining = budget
    local_day = cursor.astimezone(zone).replace(hour=12, minute=0, second=0, microsecond=0)
    for _ in range(_MAX_DAYS):
        hours = working_hours.get(WEEKDAY_KEYS[local_day.weekday()])
        if hours:
            opens, closes = _window(local_day, hours, zone)
            begin = max(cursor, opens)
            if begin < closes:
                available = closes - begin
                if remaining <= available:
                    return begin + remaining
                remaining -= available
                cursor = closes
        local_day = (local_day + timedelta(days=1)).replace(hour=12)
    raise ValueError("no deadline within ten years of working hours")  # pragma: no cover


def business_seconds_between(
    start: datetime, end: datetime, working_hours: Mapping[str, tuple[str, str]], timezone: str
) -> float:
    """Working seconds inside [start, end): for reporting response times in business time."""
    if end <= start:
        return 0.0
    zone = ZoneInfo(timezone)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    total = 0.0
    local_day = start.astimezone(zone).replace(hour=12, minute=0, second=0, microsecond=0)
    while True:
        hours = working_hours.get(WEEKDAY_KEYS[local_day.weekday()])
        if hours:
            opens, closes = _window(local_day, hours, zone)
            if opens >= end:
                return total
            lo, hi = max(opens, start), min(closes, end)
            if hi > lo:
                total += (hi - lo).total_seconds()
        elif local_day.astimezone(UTC) > end + timedelta(days=1):
            return total
        local_day = (local_day + timedelta(days=1)).replace(hour=12)
