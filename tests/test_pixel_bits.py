"""A 12-bit camera (Mono12: counts 0..4095 in 16-bit pixels) through the whole chain: training
reads its files by `--pixel-bits 12`, the package says so, and the daemon, `vqad score` and
`vqad calibrate` read its frames as training read its files."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import FrameError
from edge.frames import InputFormat, find_images, read_image
from edge.package import load_package
from edge.protocol import Limits, frame_message, parse_frame
from tests.conftest import ROOT, TINY_MODEL, TINY_TRAIN, run_vqad
from tests.edge_helpers import BLOCKED_LAUNCH, Camera, DaemonProcess, Subscriber
from train.checkpoint import load_checkpoint
from train.data import load_test_set


def mono12(image: np.ndarray, seed: int) -> np.ndarray:
    """An 8-bit image as a 12-bit camera gives it: its value in the top 8 of 12 bits, noise in
    the 4 below (which reading by 12 bits drops)."""
    low = np.random.default_rng(seed).integers(0, 16, image.shape, dtype=np.uint16)
    return (image.astype(np.uint16) << 4) | low


@pytest.fixture(scope="module")
def mono12_root(synth_root, tmp_path_factory) -> Path:
    """The synthetic bracket category, each image saved as a Mono12 camera's 16-bit PNG (masks as they were)."""
    source = synth_root / "bracket"
    root = tmp_path_factory.mktemp("mono12") / "bracket"
    for i, path in enumerate(sorted(source.rglob("*.png"))):
        out = root / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(out), image if "ground_truth" in out.parts else mono12(image, i))
    return root


@pytest.fixture(scope="module")
def mono12_model(mono12_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mono12_run")
    run, model = work / "run", work / "model"
    trained = run_vqad(
        "train", mono12_root, "--out", run, "--steps", "10", "--pixel-bits", "12", *TINY_MODEL, *TINY_TRAIN
    )
    (work / "train.log").write_text(trained.stderr)
    run_vqad("eval", run, mono12_root, "--out", run / "eval", "--no-pictures")
    run_vqad("export", run, "--out", model)
    return model


def test_a_mono12_category_trains_as_its_8_bit_twin_reads(mono12_model, mono12_root, synth_root):
    """The run and the package say 12 bits; the images it read are the 8-bit originals', to the
    pixel, where reading by 16 bits would have made them nearly black."""
    run = mono12_model.parent / "run"
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["model_config"]["pixel_bits"] == 12
    assert load_package(mono12_model).pixel_bits == 12
    assert json.loads((mono12_model / "model.json").read_text())["input"]["pixel_bits"] == 12
    as_12 = np.stack([s.image for s in load_test_set(mono12_root, InputFormat(32, 3, 12))])
    originals = np.stack([s.image for s in load_test_set(synth_root / "bracket", InputFormat(32, 3))])
    assert np.array_equal(as_12, originals)
    assert np.stack([s.image for s in load_test_set(mono12_root, InputFormat(32, 3))]).max() <= 16  # as 16 bits: black
    assert "nearly black" not in (mono12_model.parent / "train.log").read_text()  # read by 12 bits throughout
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["pixel_bits"] == 12
    assert "a 16-bit image read by its low 12 bits" in (run / "eval" / "report.html").read_text()


def test_the_daemon_reads_a_mono12_frame_by_the_models_bits_or_the_frames_own(mono12_model, synth_root):
    """A raw uint16 frame that does not say its bits is read by the package's 12; one that says
    16, with its counts shifted up, is read by 16: both score as the 8-bit image does. Bits
    outside 8..16 are that frame's error, and the daemon goes on."""
    image = cv2.imread(str(find_images(synth_root / "bracket" / "test" / "hole")[0]))
    counts = mono12(image, 7)
    with DaemonProcess(mono12_model) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            cam.send(frame_message("c", 0, image, "raw"))
            cam.send(frame_message("c", 1, counts, "raw"))
            cam.send(frame_message("c", 2, counts << 4, "raw", pixel_bits=16))
            cam.send(frame_message("c", 3, counts, "raw", pixel_bits=20))
            cam.send(frame_message("c", 4, counts, "png"))
            got = {h["frame_id"]: h for h, _ in sub.collect(5)}
        finally:
            sub.close()
            cam.close()
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert [got[i]["status"] for i in (0, 1, 2, 4)] == ["ok"] * 4
    for i in (1, 2, 4):
        assert got[i]["score"] == pytest.approx(got[0]["score"], rel=1e-6)
    assert got[3]["status"] == "error" and "pixel_bits must be an integer from 8 to 16" in got[3]["error"]


def test_vqad_score_and_calibrate_read_mono12_files_by_the_packages_bits(
    mono12_model, mono12_root, line_good, tmp_path
):
    """`vqad score` (the edge box's, without torch) scores the Mono12 files as eval scored them;
    `vqad calibrate` on the line's good parts as Mono12 files sets the threshold that their
    8-bit twins set."""
    run = mono12_model.parent / "run"
    with open(run / "eval" / "scores.csv", newline="") as f:
        expected = {row["path"]: float(row["score"]) for row in csv.DictReader(f)}
    good = mono12_root / "test" / "good"
    proc = subprocess.run([sys.executable, "-c", BLOCKED_LAUNCH, "score", str(mono12_model), str(good),
                           "--format", "json"], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == len(find_images(good))
    for row in rows:
        assert row["score"] == pytest.approx(expected[str(good / Path(row["image"]).name)], rel=1e-4, abs=1e-5)
    line_mono12 = tmp_path / "line"
    line_mono12.mkdir()
    for i, path in enumerate(find_images(line_good)):
        cv2.imwrite(str(line_mono12 / path.name), mono12(cv2.imread(str(path)), i))
    thresholds = []
    for name, good_dir in (("as_8_bit", line_good), ("as_mono12", line_mono12)):
        shutil.copytree(mono12_model, tmp_path / name)
        run_vqad("calibrate", tmp_path / name, good_dir)
        thresholds.append(load_package(tmp_path / name).threshold)
    assert thresholds[1] == pytest.approx(thresholds[0], rel=1e-6)


def test_frames_and_files_say_their_bits_and_counts_above_them_saturate(tmp_path, caplog, monkeypatch):
    """A 16-bit PNG frame is read by the frame's pixel_bits; a count above the bits saturates at
    white, said once; bits that are no integer of 8..16 are refused by name."""
    monkeypatch.setattr("edge.frames._warned_above_bits", False)
    counts = np.array([[0, 2048, 4095, 5000]], np.uint16)
    cv2.imwrite(str(tmp_path / "mono12.png"), counts)
    with caplog.at_level("WARNING", logger="edge.frames"):
        assert read_image(tmp_path / "mono12.png", 12).tolist() == [[0, 128, 255, 255]]
        read_image(tmp_path / "mono12.png", 12)
    assert caplog.text.count("above the 12 bits it is read by") == 1
    png = cv2.imencode(".png", counts)[1].tobytes()
    header = {"v": 1, "camera_id": "c", "frame_id": 1, "ts_ns": 0, "encoding": "png"}
    frame = parse_frame([json.dumps({**header, "pixel_bits": 12}).encode(), png], Limits())
    assert frame.image[:, :, 0].tolist() == [[0, 128, 255, 255]]
    assert parse_frame([json.dumps(header).encode(), png], Limits(), pixel_bits=12).image[0, 1, 0] == 128
    assert parse_frame([json.dumps(header).encode(), png], Limits()).image[0, 1, 0] == 8  # 16 bits by default
    for bad in (7, 17, "12", True, 12.0):
        with pytest.raises(FrameError, match="pixel_bits must be an integer from 8 to 16"):
            parse_frame([json.dumps({**header, "pixel_bits": bad}).encode(), png], Limits())


def test_vqad_camera_reads_a_mono12_folder_by_its_pixel_bits(mono12_root, synth_root):
    """The frames `vqad camera --pixel-bits 12` sends from Mono12 files are their 8-bit twins."""
    from edge.camera import iter_source

    sent = dict(iter_source(str(mono12_root / "test" / "good"), loop=False, pixel_bits=12))
    assert len(sent) == len(find_images(synth_root / "bracket" / "test" / "good"))
    for name, image in sent.items():
        twin = synth_root / "bracket" / Path(name).relative_to(mono12_root)
        assert np.array_equal(image, read_image(twin))


def test_pixel_bits_outside_8_to_16_are_refused_before_anything_runs(tmp_path):
    from edge.errors import ConfigError
    from train.config import ModelConfig

    with pytest.raises(ConfigError, match="model.pixel_bits must be an integer from 8 to 16"):
        ModelConfig(pixel_bits=24)
    proc = run_vqad("train", tmp_path, "--out", tmp_path / "run", "--pixel-bits", "7", check=False)
    assert proc.returncode == 2 and "--pixel-bits must be an integer from 8 to 16" in proc.stderr
    proc = run_vqad("camera", tmp_path, "--to", "ipc:///nowhere", "--pixel-bits", "x", check=False)
    assert proc.returncode == 2 and "--pixel-bits" in proc.stderr
