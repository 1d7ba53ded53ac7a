"""Non-square inputs: a tall part or a line-scan strip keeps its shape through training,
evaluation, export, model.json and the daemon; `--image-size auto` picks it from the data."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge.config import load_config
from edge.errors import BackendError, ConfigError
from edge.frames import InputFormat, parse_size
from edge.package import load_package
from edge.protocol import frame_message
from export.parity import onnx_outputs
from tests.conftest import SHARED_TOOLS, TINY_MODEL, TINY_TRAIN, run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber
from train.checkpoint import load_checkpoint
from train.config import ModelConfig
from train.data import MAX_ASPECT, load_test_set, resolve_image_size
from vqad.commands.common import default_config


@pytest.fixture(scope="module")
def wide_root(synth_root, tmp_path_factory) -> Path:
    """The synthetic bracket category with every image (and mask) doubled side by side: 64x128."""
    root = tmp_path_factory.mktemp("wide") / "bracket"
    for path in (synth_root / "bracket").rglob("*.png"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        out = root / path.relative_to(synth_root / "bracket")
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), np.concatenate([image, image], axis=1))
    return root


@pytest.fixture(scope="module")
def wide_model(wide_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wide_run")
    run, model = work / "run", work / "model"
    run_vqad("train", wide_root, "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN, "--image-size", "32x64")
    run_vqad("eval", run, wide_root, "--out", run / "eval", "--no-pictures")
    run_vqad("export", run, "--out", model)
    return model


def test_sizes_parse_as_n_or_height_x_width():
    assert parse_size("128") == (128, 128) and parse_size("128x320") == (128, 320)
    assert parse_size("64X1024") == (64, 1024)
    for bad in ("", "x", "12x", "0x5", "1x2x3", "big"):
        with pytest.raises(ValueError, match="N or HxW"):
            parse_size(bad)


def test_a_wide_model_trains_exports_and_scores_at_its_own_shape(wide_model, wide_root):
    pkg = load_package(wide_model)
    assert pkg.image_size == (32, 64) and pkg.meta["input"]["size"] == [32, 64]
    metrics = json.loads((wide_model.parent / "run" / "eval" / "metrics.json").read_text())
    assert metrics["image_size"] == [32, 64]
    graph = onnx.load(str(wide_model / "model.onnx")).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [32, 64, 3]  # N x H x W x C
    frames = np.stack([s.image for s in load_test_set(wide_root, InputFormat((32, 64), 3))])
    maps, scores = onnx_outputs(wide_model / "model_fp16.onnx", frames)
    assert maps.shape == (len(frames), 1, 32, 64) and np.isfinite(scores).all()
    assert pkg.meta["parity"]["passed"]
    tool = SHARED_TOOLS / "onnx_trt_check.py"
    if tool.is_file():
        for name in ("model.onnx", "model_fp16.onnx"):
            proc = subprocess.run([sys.executable, str(tool), str(wide_model / name)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_daemon_serves_a_wide_model_frames_of_any_size(wide_model):
    with DaemonProcess(wide_model) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            for i, (h, w) in enumerate(((64, 128), (100, 300), (32, 64))):
                cam.send(frame_message("wide", i, np.full((h, w, 3), 90, np.uint8), "raw"))
            results = sub.collect(3)
        finally:
            sub.close()
            cam.close()
    assert sorted(h["frame_id"] for h, _ in results) == [0, 1, 2]
    for header, amap in results:
        assert header["status"] == "ok" and header["map"]["shape"] == [32, 64] and amap.shape == (32, 64)


def test_image_size_auto_keeps_the_training_images_aspect(wide_root, tmp_path):
    """Images twice as wide as tall, the short side at model.short_side (16): 16 x 32; the run
    records the size it chose, and how far it shrinks the 64 x 128 images (4 camera pixels an
    input pixel)."""
    run = tmp_path / "auto"
    args = ("--steps", "2", *TINY_MODEL, *TINY_TRAIN, "--image-size", "auto", "--set", "model.short_side=16")
    proc = run_vqad("train", wide_root, "--out", run, *args)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["image_size"] == [16, 32]
    assert "image size auto" in proc.stderr and "16x32 (HxW)" in proc.stderr
    assert "median 64x128 (HxW): one input pixel covers 4.0 camera pixels" in proc.stderr
    metrics = load_checkpoint(run / "checkpoint.pt")["meta"]["metrics"]
    assert (metrics["camera_size"], metrics["camera_pixels_per_input_pixel"]) == ([64, 128], 4.0)
    bad = run_vqad("train", wide_root, "--out", tmp_path / "bad", "--image-size", "12x", check=False)
    assert bad.returncode == 2 and "N or HxW" in bad.stderr
    shutil.rmtree(run)


def test_an_input_that_stretches_the_training_images_is_warned_of(caplog):
    """A size given by hand, or kept from the run a fine-tuning starts from, that does not fit the
    images' aspect is warned of; auto's own size, and a strip squeezed to MAX_ASPECT, are not."""
    from train.data import input_scale

    tall, strip = [(1250, 500)] * 3, [(64, 1024)] * 3
    with caplog.at_level(logging.WARNING, logger="train.data"):
        input_scale(tall, (128, 128))
        input_scale(tall, (320, 128))  # auto's: 2.5 for 2.516
        input_scale(strip, (64, 256))  # capped at 1:4 by auto, too
        input_scale([(256, 256)] * 3, (320, 128))  # a square product fine-tuned from a tall one's run
    stretched = [r.getMessage() for r in caplog.records if "stretches" in r.getMessage()]
    assert len(stretched) == 2, stretched
    assert "128x128 (HxW)" in stretched[0] and "median aspect 2.500" in stretched[0]
    assert "320x128 (HxW)" in stretched[1] and "--image-size auto" in stretched[1]


def test_auto_is_the_shipped_default_and_caps_a_strip(tmp_path, caplog):
    """configs/model.yaml ships auto; a line-scan strip (1:10) is squeezed to MAX_ASPECT (1:4),
    and the log says by how much and what keeps its shape."""
    model_cfg = load_config(ModelConfig, default_config("model"))
    assert model_cfg.image_size == "auto" and model_cfg.short_side == 128
    strip = tmp_path / "strip"
    (strip / "train" / "good").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(strip / "train" / "good" / f"{i}.png"), np.full((20, 200, 3), 40 * i, np.uint8))
    with caplog.at_level(logging.INFO, logger="train.data"):
        sized = resolve_image_size(dataclasses.replace(model_cfg, short_side=32), strip)
    assert sized.image_size == (32, 32 * int(MAX_ASPECT))
    assert "10.0 times as long as wide, the input at most 4 times: each is squeezed 2.5 times" in caplog.text
    assert "--image-size HxW keeps their shape" in caplog.text
    assert resolve_image_size(sized, strip) is sized  # a resolved size stays as it is
    with pytest.raises(ConfigError, match="short_side"):
        dataclasses.replace(model_cfg, short_side=40)


def test_an_engine_tensors_element_type_is_read_by_its_name_without_trt_nptype():
    """trt.nptype fails on TensorRT 8.5 with numpy >= 1.24 (np.bool): the backend reads a
    trt.DataType by its name, as a pybind11 enum gives it (`.name`, or 'DataType.HALF'); the
    stand-in runtime has no nptype. A type vqad does not read is a BackendError naming it."""
    import types

    from edge.backends.tensorrt_backend import numpy_dtype

    assert numpy_dtype(types.SimpleNamespace(name="HALF"), "score") == np.float16
    assert numpy_dtype("DataType.FLOAT", "anomaly_map") == np.float32
    assert numpy_dtype(types.SimpleNamespace(name="UINT8"), "frames") == np.uint8
    with pytest.raises(BackendError, match="score is BF16, which vqad does not read"):
        numpy_dtype(types.SimpleNamespace(name="BF16"), "score")


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
@pytest.mark.parametrize("which", ["tiny_model", "wide_model"])
def test_the_tensorrt_backend_returns_the_engines_maps_at_the_models_shape(which, version, request, monkeypatch):
    """The TensorRT backend against a stand-in runtime (tests/fake_tensorrt.py: no TensorRT or
    GPU here) that runs the engine's graph and bounds every device buffer: its maps and scores
    are the graph's, at the model's H x W, for a square model and a wide one, a batch under the
    largest included, on TensorRT 8.6 (JetPack 6.0: model.onnx, FP32 outputs) and 10 (model_fp16.onnx)."""
    from edge.backends import create_backend
    from edge.backends.tensorrt_backend import find_engine
    from edge.engine_cache import onnx_file_for
    from tests import fake_tensorrt

    trt, cudart = fake_tensorrt.install(monkeypatch, version)
    pkg = load_package(request.getfixturevalue(which))
    path, _, settings = find_engine(pkg, 4, 1024, trt, cudart)
    graph = pkg.root / onnx_file_for(settings.mode)
    fake_tensorrt.write_plan(path, graph, max_batch=4)
    try:
        backend = create_backend("tensorrt", pkg, {"max_batch": 4, "workspace_mb": 1024})
        frames = np.random.default_rng(0).integers(0, 256, (4, *pkg.input_shape), dtype=np.uint8)
        h, w = pkg.image_size
        for n in (4, 3):
            maps, scores = backend.infer(frames[:n])
            want_maps, want_scores = onnx_outputs(graph, frames[:n])
            assert maps.shape == (n, 1, h, w) and maps.dtype == np.float32 and scores.shape == (n,)
            np.testing.assert_array_equal(maps, want_maps.astype(np.float32))
            np.testing.assert_array_equal(scores, want_scores.astype(np.float32))
        backend.close()
        # `vqad build-engine`'s check of the engine against ONNX Runtime FP32, within the
        # package's FP16 bounds.
        from export.engine import verify_engine

        figures = verify_engine(pkg.root, 4, 1024)
        assert figures["n_frames"] == 4 and figures["decision_agreement"] == 1.0
        # An engine of another shape in the package's place is refused before it can write past
        # a buffer.
        other = load_package(request.getfixturevalue("wide_model" if which == "tiny_model" else "tiny_model"))
        fake_tensorrt.write_plan(path, other.root / onnx_file_for(settings.mode), max_batch=4)
        with pytest.raises(BackendError, match="built for another package"):
            create_backend("tensorrt", pkg, {"max_batch": 4, "workspace_mb": 1024})
    finally:
        path.unlink()


def test_the_daemon_serves_a_wide_model_on_tensorrt(wide_model):
    """`vqad serve --backend tensorrt`, a real daemon process on the stand-in runtime
    (tests/fake_gpu first on its PYTHONPATH): every frame of a wide model scored as the engine's
    graph scores it, its map at the model's H x W."""
    from edge.backends.tensorrt_backend import find_engine
    from edge.engine_cache import onnx_file_for
    from tests import fake_tensorrt

    pkg = load_package(wide_model)
    trt, cudart = fake_tensorrt.shared()
    path, _, settings = find_engine(pkg, 8, 1024, trt, cudart)  # the config's max_batch and workspace
    graph = pkg.root / onnx_file_for(settings.mode)
    fake_tensorrt.write_plan(path, graph, max_batch=8)
    frames = np.random.default_rng(1).integers(0, 256, (5, *pkg.input_shape), dtype=np.uint8)
    env = {"PYTHONPATH": f"{Path(__file__).parent / 'fake_gpu'}:{Path(__file__).parent.parent}"}
    try:
        with DaemonProcess(wide_model, "--backend", "tensorrt", env=env) as daemon:
            sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
            try:
                for i, frame in enumerate(frames):
                    cam.send(frame_message("wide", i, frame, "raw"))
                results = sorted(sub.collect(5), key=lambda r: r[0]["frame_id"])
            finally:
                sub.close()
                cam.close()
            assert "tensorrt 10.3.0 engine" in daemon.log_text()
    finally:
        path.unlink()
    _, want = onnx_outputs(graph, frames)
    assert [h["status"] for h, _ in results] == ["ok"] * 5
    assert [h["score"] for h, _ in results] == pytest.approx(want.astype(np.float64).tolist(), rel=1e-4)
    assert all(amap.shape == (32, 64) for _, amap in results)
