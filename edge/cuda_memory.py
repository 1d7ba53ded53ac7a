"""CUDA memory and streams through cuda-python (NVIDIA's own binding, `cuda.bindings`).

Why cuda-python and not pycuda: it installs as a wheel on JetPack 6 (aarch64) with
`pip install cuda-python` matching the CUDA major version (12.x on JetPack 6), with no
compiler and no CUDA include paths; pycuda is a source build there. NVIDIA's TensorRT
samples use it too. cuda-python >= 12.6 exposes `cuda.bindings.runtime`; older 12.x
releases only the `cuda.cudart` shim (removed in 13.0), so both are tried.

Every call returns (error, *values); `check` turns a non-zero error into BackendError.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from edge.errors import BackendError


def load_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python 12.0 - 12.5

        return cudart
    except ImportError as exc:
        raise BackendError(
            "cuda-python is not installed: on JetPack 6 run `pip install 'cuda-python>=12.2,<13'` (see docs/deploy.md)"
        ) from exc


def check(cudart: Any, result: Any) -> Any:
    """Unwrap a cuda-python (err, *values) tuple."""
    if isinstance(result, tuple):
        err, *values = result
    else:
        err, values = result, []
    if int(err) != int(cudart.cudaError_t.cudaSuccess):
        _, name = cudart.cudaGetErrorName(err)
        raise BackendError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class PinnedBuffer:
    """Page-locked host memory viewed as a numpy array, plus its device twin."""

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: np.dtype):
        self.cudart = cudart
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.host_ptr = check(cudart, cudart.cudaMallocHost(self.nbytes))
        self.device_ptr = check(cudart, cudart.cudaMalloc(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=self.dtype).reshape(shape)

    def to_device(self, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart, self.cudart.cudaMemcpyAsync(self.device_ptr, self.host_ptr, nbytes, kind, stream))

    def to_host(self, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart, self.cudart.cudaMemcpyAsync(self.host_ptr, self.device_ptr, nbytes, kind, stream))

    def free(self) -> None:
        if self.host_ptr is not None:
            self.host = None  # type: ignore[assignment]
            self.cudart.cudaFreeHost(self.host_ptr)
            self.cudart.cudaFree(self.device_ptr)
            self.host_ptr = self.device_ptr = None


def gpu_identity(cudart: Any, device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of `device`."""
    props = check(cudart, cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"
