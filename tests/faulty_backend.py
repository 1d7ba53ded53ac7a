"""A test backend: ONNX Runtime that raises on any batch holding a "poison" frame (every
pixel equal to VQAD_POISON_VALUE, default 13), takes 0.5 s longer over any batch holding a
"slow" frame (every pixel equal to VQAD_SLOW_VALUE, default 200), and hangs for VQAD_HANG_S
(default 3) seconds over a "hang" frame (VQAD_HANG_VALUE, default 77), as a backend whose
call does not return would, and gives a "nan" frame (VQAD_NAN_VALUE, default 31) a NaN map
and score, as an FP16 overflow would.

Loaded by the daemon through the registry's `module:Class` form:
    vqad serve MODEL --backend tests.faulty_backend:FaultyBackend

While the file VQAD_SLOW_LOAD_FILE names is there, each instance takes VQAD_SLOW_LOAD_S (default
3) seconds to load, as a model on a slow disk or a hung filesystem would.

With VQAD_BREAK_PUBLISHER=1 in its environment, the daemon's publisher raises on its first
result, as a thread with a bug would.
"""

from __future__ import annotations

import os
import time

import numpy as np

from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

if os.environ.get("VQAD_BREAK_PUBLISHER") == "1":
    from edge.publisher import Publisher

    def _broken(self, sock, result):
        raise RuntimeError("injected fault: the publisher broke")

    Publisher.publish = _broken


class FaultyBackend(OnnxRuntimeBackend):
    name = "faulty"

    def __init__(self, package, options):
        slow_load = os.environ.get("VQAD_SLOW_LOAD_FILE")
        if slow_load and os.path.exists(slow_load):
            time.sleep(float(os.environ.get("VQAD_SLOW_LOAD_S", "3")))
        super().__init__(package, options)
        self.poison = int(os.environ.get("VQAD_POISON_VALUE", "13"))
        self.slow = int(os.environ.get("VQAD_SLOW_VALUE", "200"))
        self.hang = int(os.environ.get("VQAD_HANG_VALUE", "77"))
        self.hang_s = float(os.environ.get("VQAD_HANG_S", "3"))
        self.nan = int(os.environ.get("VQAD_NAN_VALUE", "31"))

    def infer(self, frames):
        uniform = frames.reshape(len(frames), -1)
        if (uniform == self.poison).all(axis=1).any():
            raise RuntimeError("injected fault: poison frame in the batch")
        if (uniform == self.slow).all(axis=1).any():
            time.sleep(0.5)
        if (uniform == self.hang).all(axis=1).any():
            time.sleep(self.hang_s)
        maps, scores = super().infer(frames)
        nan = (uniform == self.nan).all(axis=1)
        maps[nan], scores[nan] = np.nan, np.nan
        return maps, scores
