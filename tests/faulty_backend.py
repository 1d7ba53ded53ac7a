"""A test backend: ONNX Runtime that raises on any batch holding a "poison" frame (every
pixel equal to VQAD_POISON_VALUE, default 13), and takes 0.5 s longer over any batch
holding a "slow" frame (every pixel equal to VQAD_SLOW_VALUE, default 200).

Loaded by the daemon through the registry's `module:Class` form:
    vqad serve MODEL --backend tests.faulty_backend:FaultyBackend
"""

from __future__ import annotations

import os
import time

from edge.backends.onnxruntime_backend import OnnxRuntimeBackend


class FaultyBackend(OnnxRuntimeBackend):
    name = "faulty"

    def __init__(self, package, options):
        super().__init__(package, options)
        self.poison = int(os.environ.get("VQAD_POISON_VALUE", "13"))
        self.slow = int(os.environ.get("VQAD_SLOW_VALUE", "200"))

    def infer(self, frames):
        uniform = frames.reshape(len(frames), -1)
        if (uniform == self.poison).all(axis=1).any():
            raise RuntimeError("injected fault: poison frame in the batch")
        if (uniform == self.slow).all(axis=1).any():
            time.sleep(0.5)
        return super().infer(frames)
