"""A test backend: ONNX Runtime that raises on chosen batches (VQAD_FAIL_BATCHES=2,5).

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
        self.fail_on = {int(b) for b in os.environ.get("VQAD_FAIL_BATCHES", "").split(",") if b}
        self.calls = 0
        self.warmup_calls = None

    def infer(self, frames):
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"injected fault on call {self.calls}")
        return super().infer(frames)
