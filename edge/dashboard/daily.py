"""`DailyTally`: the record's daily tally as the page asks for it, every minute, from every open
page, against a record that grows by a row per frame for months.

A week at 30 frames/s is 18 million results. Counting them all for each ask would keep a core
of the edge box busy beside the line's inference. Closed days change only when
`record_keep_days` expires their rows, or when a frame arrives late with an old time stamp. So
their counts are taken once, and again every CLOSED_DAYS_REFRESH_S or when a new day starts. Today's
counts and the reviews are counted at each ask. The answer is shared by every page for
FRESH_S, and dropped when the page posts a review.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge.recent import RecentDict
from edge.record import Record
from edge.record.days import ProductionDays
from edge.record.store import DayKey, daily_rows

# The page asks every 60 s: an answer this old is as good as a new one, and five pages cost one.
FRESH_S = 20.0
# Expiry runs every 10 minutes in the daemon; closed days' counts lag it by at most this.
CLOSED_DAYS_REFRESH_S = 900.0
# Distinct (camera, period) asks held: a page asks for all cameras and for each of its cameras.
PERIODS_KEPT = 64


class DailyTally:
    """Record.daily's rows in `days` for a camera (or all) since a day's start; thread-safe,
    and one computation at a time (the pages that ask meanwhile get its answer)."""

    def __init__(self, days: ProductionDays) -> None:
        self.days = days
        self._closed: RecentDict[tuple[str | None, int], tuple[float, int, dict[DayKey, dict[str, int]]]] = RecentDict(
            PERIODS_KEPT
        )
        self._answers: RecentDict[tuple[str | None, int], tuple[float, list[dict[str, Any]]]] = RecentDict(PERIODS_KEPT)
        self._lock = threading.Lock()

    def rows(self, record: Record, camera: str | None, since_ns: int) -> list[dict[str, Any]]:
        """What Record.daily(camera, since_ns, days=self.days) gives, from counts at most
        FRESH_S old (closed days' decisions: CLOSED_DAYS_REFRESH_S)."""
        key = (camera, since_ns)
        with self._lock:
            now = time.monotonic()
            held = self._answers.get(key)
            if held is not None and now - held[0] < FRESH_S:
                return held[1]
            today = self.days.start_ns(self.days.today())
            decided = {
                **self._closed_days(record, key, today, now),
                **record.daily_decisions(camera, today, days=self.days),
            }
            rows = daily_rows(decided, record.daily_verdicts(camera, since_ns, days=self.days))
            self._answers[key] = (now, rows)
            return rows

    def forget_answers(self) -> None:
        """A review was added: the next ask counts the reviews again (closed days' decisions stay)."""
        with self._lock:
            self._answers.clear()

    def _closed_days(
        self, record: Record, key: tuple[str | None, int], today: int, now: float
    ) -> dict[DayKey, dict[str, int]]:
        camera, since_ns = key
        if since_ns >= today:
            return {}
        held = self._closed.get(key)
        if held is None or held[1] != today or now - held[0] >= CLOSED_DAYS_REFRESH_S:
            held = (now, today, record.daily_decisions(camera, since_ns, today - 1, self.days))
            self._closed[key] = held
        return held[2]
