"""The ONNX Runtime backend over months: its memory does not grow with each new batch size; and
what it says as the daemon's workers load it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import psutil

from edge.backends import onnxruntime_backend
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

MAX_BATCH = 8


def test_new_batch_sizes_do_not_grow_the_process(tmp_path):
    """onnxruntime's memory patterns keep a block for every input shape it has run: each batch
    size the batcher first formed late in a run grew the daemon for good (the soak's RSS step).
    An untrained 128-pixel model grew 42 MiB with them, under 1 MiB without."""
    from export.config import ExportConfig
    from export.onnx_graph import export_graph
    from train.config import ModelConfig
    from train.pipeline import InspectionModel

    cfg = ModelConfig(image_size=128, width=8, code_dim=8, codebook_size=32, res_blocks=1)
    path = export_graph(InspectionModel(cfg), tmp_path / "model.onnx", ExportConfig().opset)
    package = SimpleNamespace(verify=lambda name: path, input_shape=(128, 128, 3), sha256="untrained")
    backend = OnnxRuntimeBackend(package, {"max_batch": MAX_BATCH, "intra_op_threads": 1})
    frames = np.random.default_rng(0).integers(0, 255, (MAX_BATCH, 128, 128, 3), dtype=np.uint8)
    for n in (1, MAX_BATCH) * 3:  # the daemon's warm-up sizes, each run more than once
        backend.infer(frames[:n])
    process = psutil.Process()
    warmed = process.memory_info().rss
    for n in [n for n in range(2, MAX_BATCH) for _ in range(3)]:
        maps, scores = backend.infer(frames[:n])
        assert maps.shape == (n, 1, 128, 128) and scores.shape == (n,)
    grown_mib = (process.memory_info().rss - warmed) / 2**20
    assert grown_mib < 8, f"the process grew {grown_mib:.1f} MiB running batch sizes 2-{MAX_BATCH - 1}"


def test_onnxruntimes_tensorrt_provider_is_not_asked_for(tiny_model, monkeypatch):
    """A GPU build of onnxruntime offers its TensorRT provider first; it would build an FP32
    engine, uncached, in each worker at every start. The backend asks for CUDA, then the CPU."""
    import onnxruntime as ort

    from edge.package import load_package

    asked = []
    real = ort.InferenceSession

    def session(path, sess_options=None, providers=None):
        asked.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu_build)
    monkeypatch.setattr(ort, "InferenceSession", session)
    OnnxRuntimeBackend(load_package(tiny_model), {"max_batch": MAX_BATCH}).close()
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]


def test_the_workers_sessions_of_one_package_are_said_once(tiny_model, caplog, monkeypatch):
    """The daemon's inference workers each load the package's graph: one line says it (the
    ready line counts the workers), and a graph of another precision has its own."""
    from edge.package import load_package

    package = load_package(tiny_model)
    monkeypatch.setattr(onnxruntime_backend, "_said", set())  # as in a new process: this one loaded others
    with caplog.at_level(logging.DEBUG, logger="edge.backends.onnxruntime_backend"):
        for precision in ("fp32", "fp32", "fp16"):
            OnnxRuntimeBackend(package, {"max_batch": MAX_BATCH, "precision": precision}).close()
    said = [(r.levelno, r.getMessage().split(" (")[-1]) for r in caplog.records]
    assert said == [(logging.INFO, "model.onnx)"), (logging.DEBUG, "model.onnx)"), (logging.INFO, "model_fp16.onnx)")]
