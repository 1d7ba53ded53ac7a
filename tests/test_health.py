"""The camera health gate: blurred, darkened, clipped, frozen and moved frames never pass; the
good test images of `vqad synth` pass it. Limits from configs/edge.yaml, figures from model.json."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.frames import InputFormat
from edge.health import HealthGate, HealthLimits, training_stats
from edge.package import load_package
from edge.protocol import frame_message
from edge.recent import CAMERAS_KEPT, RecentDict
from tests.edge_helpers import Camera, DaemonProcess, Subscriber
from train.data import load_images, load_test_set


def _gate(synth_root, category: str) -> tuple[HealthGate, list[np.ndarray]]:
    train = load_images(sorted((synth_root / category / "train" / "good").glob("*.png")), InputFormat(32, 3))
    goods = [s.image for s in load_test_set(synth_root / category, InputFormat(32, 3)) if s.label == 0]
    return HealthGate(training_stats(train), HealthLimits()), goods


def test_good_test_images_pass_and_unfit_frames_do_not(synth_root):
    for category in ("bracket", "weave"):
        gate, goods = _gate(synth_root, category)
        verdicts = [gate.check(f"good-{i}", image) for i, image in enumerate(goods)]
        assert all(v["ok"] for v in verdicts), (category, verdicts)
        image = goods[0]
        blurred = cv2.GaussianBlur(image, (0, 0), 2.0)
        dark = (image * 0.3).astype(np.uint8)
        bright = np.clip(image.astype(np.int32) + 140, 0, 255).astype(np.uint8)
        assert "blurred" in gate.check("b", blurred)["reasons"], category
        assert "exposure" in gate.check("d", dark)["reasons"], category
        assert {"exposure", "clipped"} & set(gate.check("c", bright)["reasons"]), category
        assert gate.check("f", image)["ok"] and gate.check("f", image)["reasons"] == ["frozen"]  # the same again
        assert gate.check("f", image, stream=False)["ok"]  # a folder's still image may recur
        moved = [gate.check(f"m-{i}", _moved(g)) for i, g in enumerate(goods)]
        if category == "bracket":  # a fixtured part: its position is known
            assert gate.stats["aligned"] and all("moved" in v["reasons"] for v in moved), moved
        else:  # a texture has no position: the check is off, and says so in model.json
            assert not gate.stats["aligned"] and "reference" not in gate.stats and gate.reference is None


def test_a_frame_shaped_unlike_the_training_images_is_unfit():
    images = [np.full((32, 32, 3), 128, np.uint8)] * 4
    shapes = [(1250, 500), (1240, 500), (1260, 500), (1250, 510)]  # tall parts, as read
    stats = training_stats(images, shapes)
    assert 1250 / 510 <= stats["aspect_p1"] < 2.46 and 2.51 < stats["aspect_p99"] <= 2.52  # interpolated percentiles
    gate = HealthGate(stats, HealthLimits())
    assert "aspect" not in gate.check("a", images[0], (1300, 500))["reasons"]  # 2.6: within 10%
    assert gate.check("b", images[0], (500, 1250))["reasons"] == ["aspect"]  # the camera turned 90 degrees
    assert gate.check("c", images[0], (1024, 1280))["aspect"] == pytest.approx(0.8)
    assert "aspect" not in HealthGate(stats, HealthLimits(max_aspect_change=0)).check("d", images[0], (500, 1250))
    assert "aspect_p1" not in training_stats(images)  # a package without the figures: no check
    assert gate.check("e", images[0])["ok"]  # no frame shape given: no check


def _moved(image: np.ndarray, share: float = 0.1) -> np.ndarray:
    """A knocked camera: the picture moved by `share` of its side."""
    h, w = image.shape[:2]
    m = np.float32([[1, 0, share * w], [0, 1, share * h]])
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE).reshape(image.shape)


def test_the_daemon_fails_an_unfit_frame_with_its_reasons(tiny_model, synth_root):
    assert load_package(tiny_model).meta["camera_health"]["n_images"] > 0
    good = cv2.imread(str(sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[0]))
    with DaemonProcess(tiny_model, "--threshold", "1e9") as daemon:  # nothing fails on its score
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            cam.send(frame_message("h", 0, good, "raw"))
            cam.send(frame_message("h", 1, cv2.GaussianBlur(good, (0, 0), 4.0), "raw"))
            cam.send(frame_message("h", 2, (good * 0.2).astype(np.uint8), "raw"))
            cam.send(frame_message("h", 3, _moved(good), "raw"))
            h, w = good.shape[:2]
            wide = cv2.resize(good, (w * 3 // 2, h))  # the square part, seen by a 3:2 camera
            cam.send(frame_message("h", 4, wide, "raw"))
            cam.send(frame_message("h", 5, cv2.resize(good, (w * 21 // 20, h)), "raw"))  # 5% wider: fit
            cam.send(frame_message("h", 6, cv2.flip(wide, 1), "raw"))
            results = {h["frame_id"]: h for h, _ in sub.collect(7)}
        finally:
            sub.close()
            cam.close()
        told = daemon.log_text().count(f"camera h sends {h}x{w * 3 // 2} (HxW) frames")
    assert results[0]["decision"] == "pass" and results[0]["health"]["ok"]
    assert results[5]["health"]["ok"] and results[5]["health"]["aspect"] == pytest.approx(20 / 21, abs=0.02)
    for frame_id, reason in ((1, "blurred"), (2, "exposure"), (3, "moved"), (4, "aspect"), (6, "aspect")):
        h = results[frame_id]
        assert h["status"] == "ok" and h["decision"] == "fail", h
        assert h["health"]["ok"] is False and reason in h["health"]["reasons"], h["health"]
    assert told == 1  # one line per camera and shape, however many frames


def test_the_health_bench_measures_the_limits_on_a_category(synth_root):
    """`python -m benchmarks.health`: good test images flagged, unfit ones caught, per category."""
    from benchmarks.health import UNFIT, measure_category

    out = measure_category(synth_root / "bracket", 64, 3)  # the frames at their own size
    assert out["aligned"] and out["good_images"] == 4 and out["good_flagged"] == 0.0
    for kind in (*UNFIT, "frozen"):
        assert out[f"{kind}_caught"] == 1.0, (kind, out)
    closest = out["good_closest"]
    assert closest["sharpness_ratio"] > 0.5 and closest["exposure"] < 0.15 and closest["shift"] < 0.04


def test_per_camera_state_is_bounded_and_keeps_the_most_recent():
    state = RecentDict(3)
    for key in "abcd":
        state[key] = key
    state.setdefault("b", "?")  # read and kept: the most recent now
    state["e"] = "e"
    assert list(state) == ["d", "b", "e"] and state["b"] == "b"
    gate = HealthGate(training_stats([np.full((8, 8, 3), 128, np.uint8)] * 2), HealthLimits())
    for i in range(CAMERAS_KEPT + 10):
        gate.check(f"SN-{i}", np.full((8, 8, 3), i % 200, np.uint8))
    assert len(gate._last) == CAMERAS_KEPT
