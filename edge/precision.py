"""Which layers of the graph run in FP16: one rule for the FP16 ONNX graph (made on the training
side, train/head.py's `half_precision`) and for the TensorRT 8.6 engine that pins the others to
FP32 (export/engine.py, run on the device). Torch-free, so that `vqad build-engine` runs where
only the daemon's packages are installed.
"""

from __future__ import annotations

# The comparison head's layers that stay FP32 in the FP16 graph: its encoder half, whose coarsest
# features the memory term measures distances between (FP16 rounding moved those distances by
# over 1% of the map; train/head.py).
HEAD_FP32_LAYERS = ("enc1", "enc2", "enc3")

# Layers allowed to run in FP16 on TensorRT 8.6: the decoder and the comparison head but for its
# encoder half. The encoder stays FP32 like the VQ argmin it feeds (FP16 there flips codes): as
# in model_fp16.onnx.
FP16_LAYER_PREFIXES = ("/decoder/", "/head/")
FP32_LAYER_PREFIXES = tuple(f"/head/{name}/" for name in HEAD_FP32_LAYERS)


def runs_in_fp16(layer_name: str) -> bool:
    """Whether the layer of this ONNX name may run in FP16 (else TensorRT 8.6 pins it to FP32)."""
    return layer_name.startswith(FP16_LAYER_PREFIXES) and not layer_name.startswith(FP32_LAYER_PREFIXES)
