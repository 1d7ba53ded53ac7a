"""The export config (configs/export.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import require


@dataclass(frozen=True)
class ExportConfig:
    # TensorRT 8.6 (JetPack 6.0) parses opset <= 17.
    opset: int = 17
    # Parity is proved on every validation image plus this many test images per kind.
    parity_test_per_kind: int = 2
    # FP32 ONNX vs PyTorch: max abs error allowed on the map and on the score, as a fraction of
    # the threshold. In the map's own units it would depend on the scoring: balanced errors
    # put good images at ~1 per error kind and the threshold near 30, where float32 rounding
    # alone reaches 1e-2 while decisions are 3e-4 of the threshold away from changing.
    fp32_max_error_of_threshold: float = 1e-3
    # A latent cell whose two nearest codes are closer than this (relative to the distances)
    # is a tie at FP32 precision: ONNX Runtime and PyTorch may pick different codes there, which
    # moves the map around that cell. Images holding such a cell are held to the FP16 bounds
    # instead, and counted in the proof.
    fp32_tie_tolerance: float = 1e-5
    # FP16 ONNX vs FP32 ONNX: max over images of ||m16 - m32||_2 / ||m32||_2.
    fp16_max_relative_error: float = 1e-2
    fp16_min_decision_agreement: float = 0.99
    # Published maps are uint8: value = byte * scale, with scale = map_scale_factor * threshold / 255.
    map_scale_factor: float = 2.0
    version: str = "1"

    def __post_init__(self) -> None:
        require(
            7 <= self.opset <= 17,
            f"export.opset must be in 7..17 (TensorRT 8.6 parses <= 17), got {self.opset}",
        )
        require(self.parity_test_per_kind >= 0, "export.parity_test_per_kind must be >= 0")
        require(0 <= self.fp32_tie_tolerance < 1e-2, "export.fp32_tie_tolerance must be in [0, 0.01)")
        require(
            self.fp32_max_error_of_threshold > 0 and self.fp16_max_relative_error > 0, "export tolerances must be > 0"
        )
        require(0 < self.fp16_min_decision_agreement <= 1, "export.fp16_min_decision_agreement must be in (0, 1]")
        require(self.map_scale_factor > 0, "export.map_scale_factor must be > 0")
