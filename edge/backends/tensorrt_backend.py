"""TensorRT backend: runs the engine built by `vqad build-engine` on its own CUDA stream.

Uses only the tensor-name API common to TensorRT 8.6-11 (num_io_tensors, get_tensor_name,
get_tensor_mode, get_tensor_dtype, get_tensor_shape, get_tensor_profile_shape, set_input_shape,
set_tensor_address, execute_async_v3). Output dtypes are read from the engine, never
assumed. Host buffers are pinned and copies are asynchronous on a dedicated stream; the
daemon's receiver thread preprocesses the next batch while this one runs (the CUDA calls
release the GIL).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.cuda_memory import PinnedBuffer, check, gpu_identity, load_cudart
from edge.engine_cache import EngineSettings, build_mode, engine_key, engine_path, onnx_file_for
from edge.errors import BackendError
from edge.package import ModelPackage

log = logging.getLogger(__name__)

MISSING_TRT = (
    "TensorRT is not installed. On a Jetson it comes with JetPack: "
    "`sudo apt install python3-libnvinfer` (JetPack 6) and a venv made with --system-site-packages; "
    "see docs/deploy.md. On a CPU, use --backend onnxruntime."
)


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendError saying how to get it (never an ImportError)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(MISSING_TRT) from exc
    return trt


# TensorRT's element types, by their enum names, as numpy's. Not trt.nptype: on TensorRT 8.5
# with numpy >= 1.24 it fails on np.bool (NVIDIA/TensorRT#2557), and a name some release lacks
# (INT64 before 10) is only a string here.
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def numpy_dtype(trt_dtype: Any, tensor: str) -> np.dtype:
    """The numpy dtype of an engine tensor's trt.DataType; BackendError for one vqad does not read."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in _NUMPY_DTYPES:
        raise BackendError(f"the engine's {tensor} is {name}, which vqad does not read: rebuild it (vqad build-engine)")
    return np.dtype(_NUMPY_DTYPES[name])


def find_engine(
    package: ModelPackage, max_batch: int, workspace_mb: int, trt: Any, cudart: Any
) -> tuple[Path, str, EngineSettings]:
    """-> (path, key, settings) of the engine this GPU and TensorRT need for `package`."""
    settings = EngineSettings(max_batch, workspace_mb, build_mode(trt.__version__))
    gpu, cc = gpu_identity(cudart)
    onnx_name = onnx_file_for(settings.mode)
    key = engine_key(package.files[onnx_name], trt.__version__, gpu, cc, settings)
    return engine_path(package, key), key, settings


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, package: ModelPackage, options: dict[str, Any]):
        trt = self.trt = import_tensorrt()
        cudart = self.cudart = load_cudart()
        self.max_batch = int(options.get("max_batch", 8))
        path, _, _ = find_engine(package, self.max_batch, int(options.get("workspace_mb", 1024)), trt, cudart)
        if not path.is_file():
            raise BackendError(
                f"no TensorRT engine for this GPU/TensorRT/settings at {path}: "
                f"run `vqad build-engine {package.root} --max-batch {self.max_batch}` first"
            )
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"{path} could not be deserialized (built by another TensorRT or GPU?): "
                f"delete it and run `vqad build-engine {package.root}`"
            )
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        if self.inputs != ["frames"] or set(self.outputs) != {"anomaly_map", "score"}:
            raise BackendError(f"{path} has I/O {self.inputs} -> {self.outputs}, not frames -> anomaly_map, score")
        _, _, profile_max = self.engine.get_tensor_profile_shape("frames", 0)
        self.max_batch = min(self.max_batch, int(profile_max[0]))
        self.frame_shape = package.input_shape
        # One frame's worth of each tensor: the map is H x W like the frame (a tall part or a
        # line-scan strip is not square). The engine's own shapes must agree: each buffer is
        # sized from these, and an engine that wrote more would write past it on the device.
        self.per_frame = {"frames": self.frame_shape, "anomaly_map": (1, *package.image_size), "score": ()}
        for name in self.per_frame:
            if tuple(self.engine.get_tensor_shape(name))[1:] != self.per_frame[name]:
                raise BackendError(
                    f"{path}'s {name} is {tuple(self.engine.get_tensor_shape(name))} for a batch, the package's "
                    f"{self.per_frame[name]} a frame: built for another package? Delete it and run "
                    f"`vqad build-engine {package.root}`"
                )
        self.context = self.engine.create_execution_context()
        self.buffers: dict[str, PinnedBuffer] = {}
        self.stream = None
        try:  # what is allocated is freed if the rest cannot be (a GPU out of memory)
            self.stream = check(cudart, cudart.cudaStreamCreate())
            for name in self.per_frame:
                dtype = numpy_dtype(self.engine.get_tensor_dtype(name), name)
                self.buffers[name] = PinnedBuffer(cudart, (self.max_batch, *self.per_frame[name]), dtype)
                self.context.set_tensor_address(name, int(self.buffers[name].device_ptr))
        except BaseException:
            self.close()
            raise
        log.info("tensorrt %s engine %s (max batch %d)", trt.__version__, path.name, self.max_batch)

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(frames)
        if n > self.max_batch:
            raise BackendError(f"batch of {n} exceeds the engine's max batch {self.max_batch}")
        if frames.shape[1:] != self.frame_shape:
            raise BackendError(f"frames {frames.shape[1:]} do not match the engine input {self.frame_shape}")
        cudart, inp = self.cudart, self.buffers["frames"]
        inp.host[:n] = frames
        inp.to_device(n * int(np.prod(self.frame_shape)) * inp.dtype.itemsize, self.stream)
        if not self.context.set_input_shape("frames", (n, *self.frame_shape)):
            raise BackendError(f"the engine refused a batch of {n} frames of {self.frame_shape}")
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT execute_async_v3 failed")
        for name in self.outputs:
            buf = self.buffers[name]
            buf.to_host(n * int(np.prod(self.per_frame[name])) * buf.dtype.itemsize, self.stream)
        check(cudart, cudart.cudaStreamSynchronize(self.stream))
        maps = self.buffers["anomaly_map"].host[:n].astype(np.float32, copy=True)
        scores = self.buffers["score"].host[:n].astype(np.float32, copy=True)
        return maps, scores

    def close(self) -> None:
        """Free the buffers and the stream, and let the engine go now, not when the backend is
        collected: its execution context's device memory is a Jetson's shared memory, and the
        daemon gives the freed heap back right after a reload (edge.serving.return_freed_heap)."""
        for buf in self.buffers.values():
            buf.free()
        self.buffers.clear()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = None  # a context before its engine, an engine before its runtime
        self.engine = None
        self.runtime = None
