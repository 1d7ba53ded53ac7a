"""The drift alarm: a two-sample KS test of each camera's recent scores against the calibration
images' scores, raised within one window of a drift and silent on good windows."""

from __future__ import annotations

import numpy as np

from edge.drift import WINDOW, DriftMonitor, critical_value, ks_statistic
from edge.metrics import DaemonMetrics


def test_ks_statistic_and_its_critical_value():
    assert ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 0.0
    assert ks_statistic(np.array([0.0, 0.1]), np.array([5.0, 6.0])) == 1.0
    assert abs(ks_statistic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.5, 4.5])) - 0.75) < 1e-12
    assert abs(critical_value(40, 200) - 1.9495 * np.sqrt(240 / 8000)) < 1e-3  # c(0.001) = 1.9495


def test_a_gain_drift_raises_the_alarm_within_one_window_and_good_windows_stay_quiet():
    rng = np.random.default_rng(0)
    reference = rng.lognormal(0.0, 0.15, 45)  # the calibration images' scores
    metrics = DaemonMetrics()
    monitor = DriftMonitor(reference, metrics)
    good_alarms = 0
    for w in range(50):  # held-out good windows, each on a camera of its own
        for score in rng.lognormal(0.0, 0.15, WINDOW):
            monitor.add(f"good{w}", float(score))
        good_alarms += f"good{w}" in monitor.alarmed
    assert good_alarms <= 2  # the test's false-alarm level is 0.1% per window
    ks = None
    for i, score in enumerate(1.2 * rng.lognormal(0.0, 0.15, WINDOW)):  # +20% gain on every score
        ks = monitor.add("drifted", float(score))
        assert (ks is None) == (i < WINDOW - 1)
    assert "drifted" in monitor.alarmed and ks > monitor.limit
    assert metrics.drift_alarm.labels("drifted")._value.get() == 1.0
