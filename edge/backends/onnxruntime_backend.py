"""ONNX Runtime backend: model.onnx (or model_fp16.onnx) on the CPU provider, or on the CUDA
provider when this onnxruntime build has it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge.errors import BackendError
from edge.package import FP16_FILE, FP32_FILE, ModelPackage

log = logging.getLogger(__name__)

# The sessions this process has said it loaded: the daemon's inference workers each load the
# same graph, and one line says it for all of them (the ready line counts the workers).
_said: set[tuple[str, str, str]] = set()


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, package: ModelPackage, options: dict[str, Any]):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError("onnxruntime is not installed: pip install 'vqad[edge]'") from exc
        precision = options.get("precision", "fp32")
        path = package.verify(FP16_FILE if precision == "fp16" else FP32_FILE)
        self.max_batch = int(options.get("max_batch", 8))
        so = ort.SessionOptions()
        threads = int(options.get("intra_op_threads", 0))
        if threads > 0:
            so.intra_op_num_threads = threads
        if not options.get("intra_op_spinning", True):
            # Idle workers sleep instead of spinning: the daemon shares the CPU with its own
            # I/O threads (and, on a Jetson, with the camera pipeline).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No memory pattern: onnxruntime plans and keeps one block per input shape it has run,
        # so each batch size the batcher first forms, hours into a run, grew the process for
        # good (two workers: 386 MiB after warming batches 1 and 8, 476 once batches 1-8 had
        # run, against 244 MiB without, flat; the same frames/s at batch 8 and at mixed sizes).
        so.enable_mem_pattern = False
        available = ort.get_available_providers()
        # Not onnxruntime's TensorRT provider, which a GPU build offers first: it would build an
        # FP32 engine, uncached, in every worker at every start (minutes on a Jetson). TensorRT is
        # the tensorrt backend's, with its FP16 engine built once and cached (vqad build-engine).
        wanted = options.get("providers") or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:
            raise BackendError(f"onnxruntime could not load {path}: {exc}") from exc
        inp = self.session.get_inputs()[0]
        expected = list(package.input_shape)
        if [d for d in inp.shape[1:]] != expected:
            raise BackendError(f"{path} takes {inp.shape}, but model.json says {expected}")
        self.input_name = inp.name
        self.providers = self.session.get_providers()
        said = (str(path), package.sha256, self.providers[0])
        log.log(logging.DEBUG if said in _said else logging.INFO, "onnxruntime %s on %s (%s)", ort.__version__,
                self.providers[0], path.name)  # fmt: skip
        _said.add(said)

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {self.input_name: np.ascontiguousarray(frames)})
        return maps, scores

    def close(self) -> None:
        self.session = None
