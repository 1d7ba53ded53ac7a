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


def test_a_window_hovering_at_the_limit_does_not_flap_the_alarm(monkeypatch, caplog):
    """Raised over the limit, cleared only under CLEAR_FRACTION of it: one line each way."""
    import logging

    from edge import drift

    monitor = DriftMonitor(np.zeros(100), window=2)
    limit = monitor.limit
    script = iter([1.01, 0.99, 1.01, 0.99, 0.85, 1.01, 0.7, 0.99, 0.85])
    monkeypatch.setattr(drift, "ks_statistic", lambda a, b: next(script) * limit)
    with caplog.at_level(logging.INFO, logger="edge.drift"):
        states = [monitor.add("cam0", 0.0) is not None and "cam0" in monitor.alarmed for _ in range(10)]
    assert states == [False, True, True, True, True, True, True, False, False, False]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("drift alarm: camera cam0") and "cleared" in lines[1]


def test_the_drift_bench_runs_a_real_package_on_its_good_images(tiny_model, synth_root):
    """`python -m benchmarks.drift`: the package's own calibration scores as the reference, its
    FP32 graph scoring the good test images and the same images under +20% gain."""
    from benchmarks.drift import bench_drift

    out = bench_drift(tiny_model, synth_root / "bracket", windows=3)
    assert out["reference_scores"] >= 2 and out["good_images"] == 4 and out["good_windows"] == 3
    assert 0.0 <= out["false_alarm_rate"] <= 1.0 and out["ks_limit"] > 0
    alarm = out["gain_1.2_alarm_after_frames"]
    assert alarm in (None, WINDOW)  # a verdict comes only with the first full window


def test_a_gain_drift_through_the_daemon_raises_the_alarm_within_one_window(tiny_model, synth_root, tmp_path):
    """The whole path: a package calibrated on the camera's good images, a daemon process, one
    window of those images (quiet) and one window of them under +20% gain (the alarm). A camera
    whose gained frames are all master parts raises none: they are not the line's products."""
    import shutil
    import urllib.request

    import cv2

    from edge.dashboard.probe import read_metrics
    from edge.protocol import frame_message
    from edge.transport import free_loopback_port
    from tests.conftest import run_vqad
    from tests.edge_helpers import Camera, DaemonProcess, Subscriber

    package = tmp_path / "model"
    shutil.copytree(tiny_model, package)
    # 60 more good parts from the same line (the same generator, another seed): with 60
    # reference scores the test's critical value (0.29) is within a +20% gain's reach.
    line = tmp_path / "line"
    run_vqad("synth", line, "--categories", "bracket", "--seed", "11", "--size", "64", "--n-train", "60",
             "--n-test-good", "1", "--n-per-defect", "1")  # fmt: skip
    goods_dir = line / "bracket" / "train" / "good"
    run_vqad("calibrate", package, goods_dir)  # the reference: these images' scores
    goods = [cv2.imread(str(p)) for p in sorted(goods_dir.glob("*.png"))]
    port = free_loopback_port()
    masters = ("--set", "edge.master_good_parts=[OK-*]")
    with DaemonProcess(package, "--metrics-port", str(port), "--threshold", "1e9", *masters) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            for camera, gain, part_id in (("steady", 1.0, None), ("gained", 1.2, None), ("masters", 1.2, "OK-1")):
                for i in range(WINDOW):
                    image = np.clip(goods[i % len(goods)].astype(np.float32) * gain, 0, 255).astype(np.uint8)
                    cam.send(frame_message(camera, i, image, "raw", part_id=part_id))
            assert len(sub.collect(3 * WINDOW, timeout=180)) == 3 * WINDOW
        finally:
            sub.close()
            cam.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            drift = read_metrics(response.read().decode())["drift"]
    assert drift["steady"]["alarm"] is False and drift["gained"]["alarm"] is True, drift
    assert "masters" not in drift, drift  # its window never filled
    assert "drift" in daemon.log_text().lower() and "gained" in daemon.log_text()


def _gauge_cameras(metrics: DaemonMetrics) -> set[str]:
    return {s.labels["camera"] for m in metrics.drift_ks.collect() for s in m.samples}


def test_a_camera_dropped_for_newer_ones_takes_its_alarm_and_gauges_with_it():
    """A sender that names every part as a camera must not grow the metrics endpoint for months:
    the monitor keeps a bounded set of cameras, and their gauges go when they do."""
    metrics = DaemonMetrics()
    monitor = DriftMonitor(np.zeros(100), metrics, window=20)
    monitor.scores.capacity = 2
    for camera in ("a", "b"):
        for _ in range(20):
            monitor.add(camera, 5.0)  # far above every calibration score: an alarm
    assert monitor.alarmed == {"a", "b"} and _gauge_cameras(metrics) == {"a", "b"}
    monitor.add("c", 0.0)  # a third camera: "a", set longest ago, goes
    assert monitor.alarmed == {"b"} and _gauge_cameras(metrics) == {"b"}
    assert [s.labels["camera"] for m in metrics.drift_alarm.collect() for s in m.samples] == ["b"]
    for _ in range(19):
        monitor.add("c", 0.0)
    assert _gauge_cameras(metrics) == {"b", "c"} and monitor.alarmed == {"b"}


def test_a_camera_dropped_for_newer_ones_takes_its_frame_counts_with_it():
    """vqad_camera_frames is bounded as the drift gauges are: one series per camera and verdict
    for the cameras seen most recently."""
    metrics = DaemonMetrics()
    metrics._counted_cameras.capacity = 2
    for camera, health in (("a", "fit"), ("a", "unfit"), ("b", "fit"), ("a", "fit")):
        metrics.count_camera_frame(camera, health)
    counts = {tuple(s.labels.values()): s.value for m in metrics.camera_frames.collect() for s in m.samples
              if s.name.endswith("_total")}  # fmt: skip
    assert counts == {("a", "fit"): 2, ("a", "unfit"): 1, ("b", "fit"): 1}
    metrics.count_camera_frame("c", "unchecked")  # "b", seen longest ago, goes; "a" was seen since
    cameras = {s.labels["camera"] for m in metrics.camera_frames.collect() for s in m.samples}
    assert cameras == {"a", "c"}


def test_a_new_model_clears_the_old_ones_drift_gauges(tmp_path):
    """After a reload the windows start again; an alarm raised against the old model's scores
    must not stay on the endpoint (and in the alerts) until the new window fills."""
    from types import SimpleNamespace

    from edge.daemon import Daemon
    from edge.settings import EdgeConfig

    daemon = Daemon(tmp_path, EdgeConfig())

    def serving(drift):
        return SimpleNamespace(
            scoring=SimpleNamespace(threshold=1.0, model={"name": "m", "sha256": "ab" * 32}),
            package=SimpleNamespace(created_ns=None, sha256="ab" * 32),
            backends=[],
            drift=drift,
            close=lambda: None,
        )

    old = serving(DriftMonitor(np.zeros(100), daemon.metrics, window=20))
    daemon.swap(old)
    for _ in range(20):
        old.drift.add("cam0", 5.0)
    assert _gauge_cameras(daemon.metrics) == {"cam0"} and old.drift.alarmed == {"cam0"}
    daemon.swap(serving(old.drift))  # a new threshold: the same model, the same windows
    assert _gauge_cameras(daemon.metrics) == {"cam0"}
    daemon.swap(serving(DriftMonitor(np.zeros(100), daemon.metrics, window=20)))
    assert _gauge_cameras(daemon.metrics) == set()


def test_a_reload_of_the_same_calibration_keeps_the_windows_and_a_new_one_starts_them_again(
    tiny_model, synth_root, tmp_path
):
    """SIGHUP or `vqad ctl reload` on an unchanged package: a camera's standing alarm stays
    (no second log line, no window of 200 frames unwatched), and so does the health gate. The
    same package recalibrated on other good images has another reference: its windows start again."""
    import shutil

    from edge.control import Control
    from edge.daemon import Daemon
    from edge.serving import load_serving
    from edge.settings import EdgeConfig
    from tests.conftest import run_vqad

    package = tmp_path / "model"
    shutil.copytree(tiny_model, package)
    daemon = Daemon(package, EdgeConfig())
    daemon.swap(load_serving(package, daemon.cfg, daemon.metrics))
    control = Control(daemon, "")
    monitor = daemon.serving.drift
    for _ in range(WINDOW):
        monitor.add("cam0", 1e6)
    assert monitor.alarmed == {"cam0"} and _gauge_cameras(daemon.metrics) == {"cam0"}

    gate = daemon.serving.health
    assert control.handle({"command": "reload", "by": "test"})["ok"]
    assert daemon.serving.drift is monitor and monitor.alarmed == {"cam0"}
    assert daemon.serving.health is gate  # a frozen camera's count of repeats goes on
    assert _gauge_cameras(daemon.metrics) == {"cam0"}

    run_vqad("calibrate", package, synth_root / "bracket" / "test" / "good")
    assert control.handle({"command": "reload", "by": "test"})["ok"]
    assert daemon.serving.drift is not monitor and daemon.serving.drift.alarmed == set()
    assert _gauge_cameras(daemon.metrics) == set()
    daemon.serving.close()
