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


def test_the_drift_bench_runs_a_real_package_on_its_good_images(tiny_model, synth_root):
    """`python -m benchmarks.drift`: the package's own calibration scores as the reference, its
    FP32 graph scoring the good test images and the same images under +20% gain."""
    from benchmarks.drift import bench_drift

    out = bench_drift(tiny_model, synth_root / "bracket", windows=3)
    assert out["reference_scores"] >= 2 and out["good_images"] == 4 and out["good_windows"] == 3
    assert 0.0 <= out["false_alarm_rate"] <= 1.0 and out["ks_limit"] > 0
    alarm = out["gain_1.2_alarm_after_frames"]
    assert alarm in (None, WINDOW)  # a verdict comes only with the first full window
