"""The proof at export: PyTorch, ONNX FP32 and ONNX FP16 agree within stated bounds.

- FP32 ONNX vs PyTorch: max abs error of map and score, bounded as a fraction of the threshold
  (so the bound means the same whatever units the scoring gives the map); decisions identical.
  An image with a latent cell whose two nearest codes tie at FP32 precision (`near_tie`) may
  legitimately get the other code in the other runtime. Such an image, if it misses that
  bound, is held to the FP16 bounds instead (relative map error; score error as that fraction
  of the threshold) and counted as relaxed. Every other image is held to the strict bound.
  A relaxed map far below the threshold (a blank tile: every cell ties) is measured against a
  map at the threshold instead of its own norm, which would make rounding on a near-empty map
  a large relative error.
- FP16 ONNX vs FP32 ONNX: relative map error max_i ||m16_i - m32_i||_2 / ||m32_i||_2,
  and the fraction of identical decisions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import VqadError
from edge.frames import batched


class ParityError(VqadError):
    """An exported graph disagrees with its reference beyond the stated bound."""

    exit_code = 7


def onnx_outputs(path: str | Path, frames: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Run an ONNX graph on ONNX Runtime's CPU provider -> (maps (M,1,H,W), scores (M,))."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = [], []
    for chunk in batched(frames, batch):
        m, s = session.run(None, {"frames": np.ascontiguousarray(chunk)})
        maps.append(m)
        scores.append(s)
    return np.concatenate(maps), np.concatenate(scores)


def relative_map_error(test: np.ndarray, ref: np.ndarray, level: float = 0.0) -> float:
    """max over images of ||test - ref||_2 / max(||ref||_2, the norm of a map at `level` everywhere)."""
    diff = (test - ref).reshape(len(ref), -1)
    norm = np.linalg.norm(ref.reshape(len(ref), -1), axis=1)
    floor = max(level * np.sqrt(diff.shape[1]), 1e-12)
    return float((np.linalg.norm(diff, axis=1) / np.maximum(norm, floor)).max())


def parity_failures(figures: dict[str, Any], threshold: float) -> list[str]:
    """Each bound the figures of `compare` break, in words (each figure sits beside its bound)."""
    a, b = figures["fp32_vs_torch"], figures["fp16_vs_fp32"]
    failures = []
    if max(a["map_max_abs_error"], a["score_max_abs_error"]) > a["bound_max_abs_error"]:
        failures.append(
            f"FP32 ONNX differs from PyTorch by {max(a['map_max_abs_error'], a['score_max_abs_error']):.3g} "
            f"> {a['bound_fraction_of_threshold']:g} x threshold {threshold:.4g}"
        )
    if a["relaxed_map_relative_error"] > b["bound_relative_error"]:
        failures.append(
            f"FP32 ONNX map relative error on images with tied codes {a['relaxed_map_relative_error']:.3g} "
            f"> {b['bound_relative_error']:g}"
        )
    if a["relaxed_score_max_abs_error"] > b["bound_relative_error"] * threshold:
        failures.append(
            f"FP32 ONNX score on images with tied codes differs by {a['relaxed_score_max_abs_error']:.3g} "
            f"> {b['bound_relative_error']:g} x threshold"
        )
    if not a["decisions_identical"]:
        failures.append("FP32 ONNX decisions differ from PyTorch")
    if b["map_relative_error"] > b["bound_relative_error"]:
        failures.append(f"FP16 map relative error {b['map_relative_error']:.3g} > {b['bound_relative_error']:g}")
    if b["decision_agreement"] < b["bound_decision_agreement"]:
        failures.append(f"FP16 decision agreement {b['decision_agreement']:.3f} < {b['bound_decision_agreement']:g}")
    return failures


def compare(
    torch_out: tuple[np.ndarray, np.ndarray],
    fp32_out: tuple[np.ndarray, np.ndarray],
    fp16_out: tuple[np.ndarray, np.ndarray],
    threshold: float,
    fp32_max_error_of_threshold: float,
    fp16_max_relative_error: float,
    fp16_min_agreement: float,
    near_tie: np.ndarray | None = None,
) -> dict[str, Any]:
    """All parity figures, and `passed`; raises ParityError naming the bound that failed.

    near_tie: (M,) bool, the images holding a latent cell whose nearest codes tie (see above).
    """
    (t_map, t_score), (m32, s32), (m16, s16) = torch_out, fp32_out, fp16_out
    d_t, d32, d16 = t_score >= threshold, s32 >= threshold, s16 >= threshold
    tie = np.zeros(len(s32), bool) if near_tie is None else np.asarray(near_tie, bool)
    bound = fp32_max_error_of_threshold * threshold
    worst = np.maximum(np.abs(m32 - t_map).reshape(len(s32), -1).max(axis=1), np.abs(s32 - t_score))  # (M,)
    relaxed = tie & (worst > bound)  # a tie explains the difference: FP16 bounds
    strict = ~relaxed
    figures = {
        "n_images": int(len(s32)),
        "fp32_vs_torch": {
            "map_max_abs_error": float(np.abs(m32 - t_map)[strict].max(initial=0.0)),
            "score_max_abs_error": float(np.abs(s32 - t_score)[strict].max(initial=0.0)),
            "decisions_identical": bool((d_t == d32).all()),
            "bound_max_abs_error": bound,
            "bound_fraction_of_threshold": fp32_max_error_of_threshold,
            "near_tie_images": int(tie.sum()),
            "relaxed_images": int(relaxed.sum()),
            "relaxed_map_relative_error": (
                relative_map_error(m32[relaxed], t_map[relaxed], threshold) if relaxed.any() else 0.0
            ),
            "relaxed_score_max_abs_error": float(np.abs(s32 - t_score)[relaxed].max(initial=0.0)),
        },
        "fp16_vs_fp32": {
            "map_relative_error": relative_map_error(m16, m32),
            "map_max_abs_error": float(np.abs(m16 - m32).max()),
            "score_max_abs_error": float(np.abs(s16 - s32).max()),
            "decision_agreement": float((d16 == d32).mean()),
            "bound_relative_error": fp16_max_relative_error,
            "bound_decision_agreement": fp16_min_agreement,
        },
    }
    failures = parity_failures(figures, threshold)
    figures["passed"] = not failures
    if failures:
        raise ParityError("export parity failed: " + "; ".join(failures))
    return figures
