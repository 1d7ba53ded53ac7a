"""A test backend: ONNX Runtime that raises on any batch holding a "poison" frame (every
pixel equal to VQAD_POISON_VALUE, default 13).

Loaded by the daemon through the registry's `module:Class` form:
    vqad serve MODEL --backend tests.faulty_backend:FaultyBackend
"""

from __future__ import annotations

import os

from edge.backends.onnxruntime_backend import OnnxRuntimeBackend


class FaultyBackend(OnnxRuntimeBackend):
    name = "faulty"

    def __init__(self, package, options):
        super().__init__(package, options)
        self.poison = int(os.environ.get("VQAD_POISON_VALUE", "13"))

    def infer(self, frames):
        if (frames == self.poison).reshape(len(frames), -1).all(axis=1).any():
            raise RuntimeError("injected fault: poison frame in the batch")
        return super().infer(frames)
