"""`ProductionDays`: the days the record's daily tally counts by, in the line's own time.

A line's day is its local calendar day, or the span from its first shift's start (06:00, say) to
the next. The record keeps UTC instants; the tally counts them in quarter hours and adds the
quarter hours up into the line's days. Every time zone's offset from UTC is a whole number of
quarter hours (Nepal's +05:45, Chatham's +12:45), so a quarter hour never spans two days, and
a day that summer time makes 23 or 25 hours long is counted as it was lived.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger(__name__)

QUARTER_NS = 15 * 60 * 10**9
ONE_DAY = dt.timedelta(days=1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
LOCALTIME = Path("/etc/localtime")


@dataclass(frozen=True)
class ProductionDays:
    """Days in `zone`, each from `starts` (a whole quarter hour) to the next day's `starts`; a
    day is named by the date it starts on. `name` is the zone's name, as shown on the page."""

    zone: dt.tzinfo = dt.timezone.utc
    starts: dt.time = dt.time(0, 0)
    name: str = "UTC"
    _day_of_quarter: dict[int, dt.date] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, timezone: str = "", day_starts: str = "00:00") -> ProductionDays:
        """From a config's text: `timezone` an IANA name (Europe/Berlin) or "" for this
        machine's zone; `day_starts` HH:MM, a whole quarter hour. Raises ValueError."""
        zone, name = zone_named(timezone) if timezone else local_zone()
        return cls(zone, parse_day_start(day_starts), name)

    def day_of(self, ts_ns: int) -> dt.date:
        """The day the instant `ts_ns` (ns since the epoch) falls in: the D with start_ns(D) <=
        ts_ns < start_ns(D + 1). The local clock gives it but for a start inside the hour that
        summer time repeats or skips, which the bounds settle."""
        local = (_EPOCH + dt.timedelta(microseconds=ts_ns // 1000)).astimezone(self.zone)
        day = (local.replace(tzinfo=None) - dt.timedelta(hours=self.starts.hour, minutes=self.starts.minute)).date()
        if ts_ns < self.start_ns(day):
            return day - ONE_DAY
        if ts_ns >= self.start_ns(day + ONE_DAY):
            return day + ONE_DAY
        return day

    def day_of_quarter(self, quarter: int) -> dt.date:
        """The day of the quarter hour number `quarter` (ns since the epoch // QUARTER_NS);
        remembered, as a tally asks for the same few thousand again and again."""
        day = self._day_of_quarter.get(quarter)
        if day is None:
            if len(self._day_of_quarter) > 100_000:  # a year of quarter hours
                self._day_of_quarter.clear()
            day = self._day_of_quarter[quarter] = self.day_of(quarter * QUARTER_NS)
        return day

    def start_ns(self, day: dt.date) -> int:
        """The instant `day` starts, in ns since the epoch. A start in the hour that summer time
        repeats is its first pass; one in the hour it skips is read in the offset before the
        change (zoneinfo's fold=0), as a clock not yet set forward would read it."""
        local = dt.datetime.combine(day, self.starts, tzinfo=self.zone)
        return int((local - _EPOCH).total_seconds()) * 10**9

    def period_ns(self, day: dt.date) -> tuple[int, int]:
        """The first and the last ns of `day`: the instants day_of gives it."""
        return self.start_ns(day), self.start_ns(day + ONE_DAY) - 1

    def today(self, now_ns: int | None = None) -> dt.date:
        """The day now (or at `now_ns`) falls in."""
        return self.day_of(time.time_ns() if now_ns is None else now_ns)

    def named(self) -> dict[str, str]:
        """How `/api/daily` and `vqad records --daily --format json` name these days."""
        return {"timezone": self.name, "day_starts": f"{self.starts:%H:%M}"}

    def describe(self) -> str:
        """How the page and the tables name these days: 'Europe/Berlin, from 06:00'."""
        return self.name if self.starts == dt.time(0, 0) else f"{self.name}, from {self.starts:%H:%M}"


# The record's own days, for a program that names none: UTC calendar days.
UTC_DAYS = ProductionDays()


def zone_named(name: str) -> tuple[dt.tzinfo, str]:
    """The IANA time zone `name` -> (zone, name). Raises ValueError for an unknown one."""
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: an IANA name such as Europe/Berlin or UTC") from exc


def local_zone() -> tuple[dt.tzinfo, str]:
    """This machine's time zone, as `date` shows it: $TZ, else /etc/localtime, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return zone_named(name)
        except ValueError:
            log.warning("TZ=%s is no time zone this machine knows: the days are counted in UTC", name)
            return dt.timezone.utc, "UTC"
    try:
        with LOCALTIME.open("rb") as f:
            zone = ZoneInfo.from_file(f)
    except (OSError, ValueError):
        return dt.timezone.utc, "UTC"
    target = str(LOCALTIME.resolve())
    return zone, target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else "local time"


def parse_day_start(text: str) -> dt.time:
    """'HH:MM', a whole quarter hour -> time. Raises ValueError."""
    try:
        start = dt.time.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"day_starts must be HH:MM, got {text!r}") from exc
    if start.minute % 15 or start.second or start.microsecond:
        raise ValueError(f"day_starts must be a whole quarter hour (06:00, 05:45), got {text!r}")
    return start
