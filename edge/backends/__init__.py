"""Inference backends behind one small interface, picked by name.

    backend = create_backend("onnxruntime", package, options)
    maps, scores = backend.infer(frames)   # (N, H, W, C) uint8 -> (N, 1, H, W), (N,) float32

Built-in names: `onnxruntime` (CPU by default; CUDA/TensorRT providers when present) and
`tensorrt` (the engine built by `vqad build-engine`). A `module:Class` name loads a backend
from elsewhere (tests use this to inject faults). Modules are imported only when picked,
so a CPU box never imports tensorrt and a Jetson never needs onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from edge.errors import BackendError
from edge.package import ModelPackage

REGISTRY = {
    "onnxruntime": "edge.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "edge.backends.tensorrt_backend:TensorRTBackend",
}


class Backend(Protocol):
    name: str
    max_batch: int

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, C) uint8, N <= max_batch -> (anomaly_map (N, 1, H, W), score (N,)) float32."""
        ...

    def close(self) -> None: ...


def create_backend(name: str, package: ModelPackage, options: dict[str, Any]) -> Backend:
    """Instantiate backend `name` (a registry name or `module:Class`) for `package`."""
    target = REGISTRY.get(name, name)
    if ":" not in target:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)} or give module:Class")
    module_name, cls_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {name!r} is not available: {exc}") from exc
    return cls(package, options)
