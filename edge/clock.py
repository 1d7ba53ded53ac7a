"""This machine's clock, read against times it has already passed, and watched for steps.

A Jetson developer kit keeps no time without its RTC battery: a box on a line without a network
starts at its last shutdown's time, or in 1970, and NTP or a person sets the clock hours or
decades later. The record files each result at this machine's time
(edge.protocol.capture_time_ns), so a clock behind puts a shift's results on days that today's
tally, `vqad records --since` and the dashboard's week do not show, and a step makes the
record's times leap or go back. Neither can be undone afterwards; both are said when they
happen: a log line, the heartbeat's `clock`, the metrics, and a `clock` row among the record's
changes to the daemon (docs/deploy.md, "The box's clock").
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.protocol import CLOCK_TOLERANCE_S

log = logging.getLogger(__name__)

# A clock this far before a time it has passed reads behind. The frame clock's tolerance: a
# record shared by several boxes holds their clocks' spread, and a package made on a workstation
# holds that workstation's.
BEHIND_TOLERANCE_S = CLOCK_TOLERANCE_S
# A step of the wall clock against the monotonic clock this large is said and recorded. NTP
# slews small errors and steps a few seconds at a box's start; under a minute a result's time
# stays within a frame's own tolerance, and an audit has no use for it.
STEP_TOLERANCE_S = 60.0
# The times a box knows it has passed, as the warnings name them.
PACKAGE_MADE, RECORD_NEWEST = "the model package's export", "the record's newest result"


def since_boot_ns() -> int:
    """Nanoseconds since the box booted, suspends counted (CLOCK_BOOTTIME, where there is one):
    a monotonic clock that stops while the box sleeps would read its waking as a step of the
    wall clock."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic_ns()


def iso(ns: int) -> str:
    """'2026-12-06T04:30:00Z': an instant in UTC, to the second."""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float) -> str:
    """A duration in the unit a person reads it in: '45 s', '3.2 h', '20,430 days'."""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


@dataclass(frozen=True)
class ClockStep:
    """The wall clock moved `by_s` seconds (negative: back) against the monotonic clock: it
    would have read `expected_ns` and reads `now_ns`."""

    expected_ns: int
    now_ns: int

    @property
    def by_s(self) -> float:
        return (self.now_ns - self.expected_ns) / 1e9

    def detail(self) -> dict[str, Any]:
        """The step as the record's `clock` change keeps it."""
        return {"stepped_s": round(self.by_s, 3), "from": iso(self.expected_ns), "to": iso(self.now_ns)}


def step_words(detail: dict[str, Any]) -> str:
    """A step (ClockStep.detail, or a `clock` change of the record) in words: 'set forward by
    20,430 days (1970-01-02T09:00:05Z → 2026-12-06T04:30:00Z)'."""
    by_s = float(detail.get("stepped_s") or 0.0)
    way = "forward" if by_s > 0 else "back"
    return f"set {way} by {span(by_s)} ({detail.get('from')} → {detail.get('to')})"


class ClockWatch:
    """Times this machine has passed (`passed`), and the wall clock's offset from a monotonic
    clock (since_boot_ns), which a step of the wall clock moves and nothing else does.
    `check()` is called every second or so from one thread; `behind()` and `status()` from
    any."""

    def __init__(self, wall: Callable[[], int] = time.time_ns, monotonic: Callable[[], int] = since_boot_ns):
        self.wall, self.monotonic = wall, monotonic
        self._offset = wall() - monotonic()
        self._passed: dict[str, int] = {}  # what -> the time (ns) it happened
        self._behind: tuple[str, int] | None = None  # the time the clock reads before, as last said
        self._lock = threading.Lock()

    def passed(self, what: str, ns: int | None) -> None:
        """`what` (a package's making, the record's newest result) happened at `ns`: the clock
        has passed it. None or 0 is no time and is ignored."""
        if ns:
            with self._lock:
                self._passed[what] = max(int(ns), self._passed.get(what, 0))

    def behind(self, now_ns: int | None = None) -> tuple[str, int] | None:
        """The latest time passed that the clock reads more than BEHIND_TOLERANCE_S before, as
        (what, ns); None when the clock reads after every one."""
        now = self.wall() if now_ns is None else now_ns
        with self._lock:
            latest = max(self._passed.items(), key=lambda item: item[1], default=None)
        if latest is None or latest[1] - now <= BEHIND_TOLERANCE_S * 1e9:
            return None
        return latest

    def status(self) -> dict[str, Any] | None:
        """What the heartbeat says of the clock: None while it reads after every time passed;
        else what it reads before, when that was, by how much, and what it reads now."""
        now = self.wall()
        behind = self.behind(now)
        if behind is None:
            return None
        what, ns = behind
        return {"behind": what, "behind_at": iso(ns), "behind_s": round((ns - now) / 1e9, 1), "reads": iso(now)}

    def check(self) -> ClockStep | None:
        """Log a step of the wall clock, and the clock's falling behind a time passed or coming
        back after it, once each. -> the step, when there was one."""
        now, mono = self.wall(), self.monotonic()
        expected, self._offset = mono + self._offset, now - mono
        step = ClockStep(expected, now) if abs(now - expected) > STEP_TOLERANCE_S * 1e9 else None
        if step is not None:
            log.warning("this machine's clock was %s: results recorded before the step keep the clock's time "
                        "then (the record keeps the step among its changes)", step_words(step.detail()))  # fmt: skip
        self._say_behind(now)
        return step

    def _say_behind(self, now: int) -> None:
        behind = self.behind(now)
        if behind == self._behind:
            return
        if behind is not None:
            what, ns = behind
            log.warning(
                "this machine's clock reads %s, %s before %s (%s): one of the two clocks is wrong. If this one is, "
                "the record files results at its time, on days the tally and --since queries of the right days "
                "miss; set it (NTP, or an RTC battery: docs/deploy.md, \"The box's clock\")",
                iso(now), span((ns - now) / 1e9), what, iso(ns),
            )  # fmt: skip
        elif self._behind is not None:
            log.info("this machine's clock reads %s, after %s again", iso(now), self._behind[0])
        self._behind = behind


def clock_against(what: str, ns: int | None) -> dict[str, Any] | None:
    """This machine's clock against one time it has passed (`what`, at `ns`): ClockWatch.status,
    None while it reads after it (or there is no time: None, 0)."""
    watch = ClockWatch()
    watch.passed(what, ns)
    return watch.status()


def package_clock_note(created_ns: int | None, doing: str) -> dict[str, Any] | None:
    """For a command that dates what it writes (`doing`, e.g. "the new threshold's calibration
    time"): a warning when this machine's clock reads before the package's export, and the
    clock's status (clock_against) to keep beside the date; else None."""
    status = clock_against(PACKAGE_MADE, created_ns)
    if status is not None:
        log.warning("this machine's clock reads %s, %s before %s (%s): %s is dated by it. Set the clock "
                    "(docs/deploy.md, \"The box's clock\")", status["reads"], span(status["behind_s"]),
                    PACKAGE_MADE, status["behind_at"], doing)  # fmt: skip
    return status
