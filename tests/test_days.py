"""The line's days (edge.record.days): a zone's calendar, summer time included, from a shift's start."""

from __future__ import annotations

import datetime as dt

import pytest

from edge.record.days import QUARTER_NS, ProductionDays, local_zone

HOUR_NS = 3600 * 10**9


def _utc_ns(*when: int) -> int:
    return int(dt.datetime(*when, tzinfo=dt.timezone.utc).timestamp()) * 10**9


def test_a_day_runs_from_its_local_start_to_the_next_and_summer_time_makes_it_23_or_25_hours():
    days = ProductionDays.parse("Europe/Berlin", "06:00")
    # 2026-03-29: the clocks go from 02:00 to 03:00; 2026-10-25: from 03:00 back to 02:00.
    assert days.start_ns(dt.date(2026, 3, 28)) == _utc_ns(2026, 3, 28, 5)  # 06:00 CET
    assert days.start_ns(dt.date(2026, 3, 29)) == _utc_ns(2026, 3, 29, 4)  # 06:00 CEST
    lengths = [(days.start_ns(d + dt.timedelta(days=1)) - days.start_ns(d)) / HOUR_NS
               for d in (dt.date(2026, 3, 28), dt.date(2026, 6, 1), dt.date(2026, 10, 24))]  # fmt: skip
    assert lengths == [23, 24, 25]
    start = days.start_ns(dt.date(2026, 3, 29))
    assert (days.day_of(start - 1), days.day_of(start)) == (dt.date(2026, 3, 28), dt.date(2026, 3, 29))
    assert days.day_of(_utc_ns(2026, 3, 28, 4, 59)) == dt.date(2026, 3, 27)  # 05:59 local: the night shift's day


@pytest.mark.parametrize(
    ("zone", "starts"),
    [
        ("Europe/Berlin", "02:30"),
        ("America/New_York", "00:00"),
        ("Asia/Kathmandu", "05:45"),
        ("Australia/Lord_Howe", "01:45"),
    ],
)
def test_every_quarter_hour_falls_in_one_day_and_days_follow_each_other(zone, starts):
    """Around each summer time change of 2026 (a start inside the hour repeated or skipped, a
    half-hour change at Lord Howe), day_of and start_ns agree quarter hour by quarter hour."""
    days = ProductionDays.parse(zone, starts)
    changes = {"Europe/Berlin": [(3, 28), (10, 24)], "America/New_York": [(3, 7), (10, 31)],
               "Asia/Kathmandu": [(6, 1)], "Australia/Lord_Howe": [(4, 4), (10, 3)]}[zone]  # fmt: skip
    for month, day in changes:
        first = days.start_ns(dt.date(2026, month, day))
        assert first % QUARTER_NS == 0 and days.day_of(first) == dt.date(2026, month, day)
        previous = dt.date(2026, month, day)
        for t in range(first, days.start_ns(dt.date(2026, month, day) + dt.timedelta(days=3)), QUARTER_NS):
            day_now = days.day_of(t)
            assert days.day_of_quarter(t // QUARTER_NS) == day_now
            if day_now != previous:
                assert day_now == previous + dt.timedelta(days=1) and days.start_ns(day_now) == t
                assert days.period_ns(previous) == (days.start_ns(previous), t - 1)  # a day's instants
                previous = day_now
        assert previous == dt.date(2026, month, day) + dt.timedelta(days=2)


def test_the_machines_zone_is_tz_else_etc_localtime_else_utc(monkeypatch, tmp_path):
    monkeypatch.setenv("TZ", "America/Chicago")
    assert local_zone()[1] == "America/Chicago"
    monkeypatch.setenv("TZ", "Not/AZone")
    assert local_zone()[1] == "UTC"
    monkeypatch.delenv("TZ")
    monkeypatch.setattr("edge.record.days.LOCALTIME", tmp_path / "none")
    assert local_zone() == (dt.timezone.utc, "UTC")
    assert ProductionDays.parse().describe() == "UTC"
    for bad, why in (("Europe/Nowhere", "unknown time zone"), ("../../etc/passwd", "unknown time zone")):
        with pytest.raises(ValueError, match=why):
            ProductionDays.parse(bad)
    for bad in ("24:00", "06:07", "six", "06:00:30"):
        with pytest.raises(ValueError, match="day_starts"):
            ProductionDays.parse("UTC", bad)
