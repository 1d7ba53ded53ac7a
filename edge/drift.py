"""The drift alarm: for each camera, a rolling window of its recent scores compared with the
scores of the good images the threshold was calibrated on, by the two-sample Kolmogorov-Smirnov
statistic (the largest gap between the two empirical distributions: it needs no model of the
scores and sees a shift, a spread or a new tail alike).

The alarm is raised when the statistic exceeds its critical value at ALPHA for the two sample
sizes, c(ALPHA) * sqrt((n + m) / (n m)), and clears under CLEAR_FRACTION of it. A lamp that
ages or a lens that dirties moves the whole distribution; a single bad part does not. Gauges per
camera; a log line when the alarm is raised and when it clears; everything resets when the
model or its calibration (and so its reference) changes, and carries on over a reload of the same.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge.recent import RecentDict

if TYPE_CHECKING:
    from edge.metrics import DaemonMetrics

log = logging.getLogger(__name__)

# The false-alarm level of the test on a window of good parts. c(alpha) = sqrt(-ln(alpha / 2) / 2).
ALPHA = 0.001
WINDOW = 200
# A raised alarm clears when the statistic falls under this share of its limit. A window that
# hovers at the limit would otherwise raise and clear it frame after frame (a log line and a
# red-green flip on the dashboard each time); one frame moves the statistic by at most 1/WINDOW,
# so the gap (about 0.05 at 100 calibration images) is ten frames and more.
CLEAR_FRACTION = 0.8


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)| over the pooled values."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    fa = np.searchsorted(a, values, side="right") / len(a)
    fb = np.searchsorted(b, values, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def critical_value(n: int, m: int, alpha: float = ALPHA) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


class DriftMonitor:
    def __init__(
        self,
        reference: Sequence[float],
        metrics: DaemonMetrics | None = None,
        window: int = WINDOW,
        alpha: float = ALPHA,
    ):
        self.reference = np.asarray(reference, dtype=np.float64)
        self.window, self.metrics = window, metrics
        self.limit = critical_value(len(self.reference), window, alpha)
        # A camera id dropped for newer ones takes its alarm and its gauges with it: a sender that
        # names each part as a camera would otherwise grow the metrics endpoint for months.
        self.scores: RecentDict[str, collections.deque[float]] = RecentDict(on_evict=self._forget)
        self.alarmed: set[str] = set()
        self.lock = threading.Lock()

    def measures_as(self, other: DriftMonitor) -> bool:
        """True when `other` compares the same windows with the same reference scores: a reload
        of the same calibration keeps `other`'s windows and alarms, instead of starting them again."""
        return (self.window, self.limit) == (other.window, other.limit) and np.array_equal(
            self.reference, other.reference
        )

    def _forget(self, camera_id: str, _window: object) -> None:
        self.alarmed.discard(camera_id)
        if self.metrics is not None:
            self.metrics.forget_drift(camera_id)

    def add(self, camera_id: str, score: float) -> float | None:
        """Add a scored frame; -> the KS statistic once the camera's window is full, else None."""
        with self.lock:
            window = self.scores.setdefault(camera_id, collections.deque(maxlen=self.window))
            window.append(score)
            if len(window) < self.window:
                return None
            ks = ks_statistic(self.reference, np.fromiter(window, np.float64))
            was = camera_id in self.alarmed
            alarm = ks > (CLEAR_FRACTION * self.limit if was else self.limit)
            if alarm and not was:
                self.alarmed.add(camera_id)
                log.warning("drift alarm: camera %s's last %d scores differ from the calibration images' "
                            "(KS %.3f > %.3f): check its lighting, lens and position", camera_id, self.window,
                            ks, self.limit)  # fmt: skip
            elif was and not alarm:
                self.alarmed.discard(camera_id)
                log.info("drift alarm cleared: camera %s (KS %.3f)", camera_id, ks)
        if self.metrics is not None:
            self.metrics.drift_ks.labels(camera_id).set(ks)
            self.metrics.drift_alarm.labels(camera_id).set(float(alarm))
        return ks
