"""The camera health gate's limits, measured: per category, the share of good test images the
gate flags (each one a false reject on the line), and the share of unfit frames it catches.
The training images' figures come from train/good, as export computes them; the unfit frames
are the good test images blurred, darkened, over-exposed and moved.

    python -m benchmarks.health DATA_DIR [DATA_DIR ...] [--image-size N|HxW|auto] [--channels C]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import input_size
from edge.frames import find_images, read_image, to_model_input
from edge.health import HealthGate, HealthLimits, training_stats


def _blurred(image: np.ndarray) -> np.ndarray:
    """A lens out of focus: a Gaussian of 1.5% of the frame's short side."""
    sigma = 0.015 * min(image.shape[:2])
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _darkened(image: np.ndarray) -> np.ndarray:
    """A lamp at 40% of its light."""
    return (image.astype(np.float32) * 0.4).astype(np.uint8)


def _overexposed(image: np.ndarray) -> np.ndarray:
    """An exposure 2.5 times too long."""
    return np.clip(image.astype(np.float32) * 2.5, 0, 255).astype(np.uint8)


def _moved(image: np.ndarray) -> np.ndarray:
    """A knocked camera: the picture moved by 10% of its side."""
    h, w = image.shape[:2]
    m = np.float32([[1, 0, 0.1 * w], [0, 1, 0.1 * h]])
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


UNFIT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blurred": _blurred,
    "darkened": _darkened,
    "overexposed": _overexposed,
    "moved": _moved,
}


def _load(folder: Path, size: int | Sequence[int], channels: int) -> list[np.ndarray]:
    return [to_model_input(read_image(p), size, channels) for p in find_images(folder)]


def measure_category(
    root: Path, size: int | Sequence[int], channels: int, limits: HealthLimits | None = None
) -> dict[str, Any]:
    """How often the gate flags good test images, and catches each kind of unfit frame."""
    limits = limits or HealthLimits()
    stats = training_stats(_load(root / "train" / "good", size, channels))
    goods = [to_model_input(read_image(p), size, channels) for p in find_images(root / "test" / "good")]
    # Each frame from its own camera: the frozen check sees no repeat.
    gate = HealthGate(stats, limits)
    verdicts = [gate.check(f"good{i}", g) for i, g in enumerate(goods)]
    out: dict[str, Any] = {
        "aligned": stats["aligned"],
        "alignment": stats["alignment"],
        "good_images": len(goods),
        "good_flagged": sum(not v["ok"] for v in verdicts) / len(goods),
        "good_reasons": sorted({reason for v in verdicts for reason in v["reasons"]}),
        "good_closest": _closest(verdicts, stats),
    }
    for name, spoil in UNFIT.items():
        caught = [
            bool(gate.check(f"{name}{i}", to_model_input(spoil(read_image(p)), size, channels))["reasons"])
            for i, p in enumerate(find_images(root / "test" / "good"))
        ]
        out[f"{name}_caught"] = sum(caught) / len(caught)
    gate.check("frozen", goods[0])
    out["frozen_caught"] = float("frozen" in gate.check("frozen", goods[0])["reasons"])
    return out


def _closest(verdicts: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, float | None]:
    """How near the good test images come to each limit, in the limit's own terms: the lowest
    sharpness over the training 1st percentile (blurred under 0.5), the furthest mean grey level
    outside the training range (exposure over 0.15), the most clipped share over the training
    99th percentile (clipped over 0.05), the largest shift over the training 99th (moved over 0.04)."""
    sharp = min(v["sharpness"] / max(stats["sharpness_p1"], 1e-9) for v in verdicts)
    outside = max(max(stats["mean_p1"] - v["mean"], v["mean"] - stats["mean_p99"], 0.0) for v in verdicts)
    clipped = max(v["clipped"] - stats["clipped_p99"] for v in verdicts)
    shift = max(v["shift"] - stats["shift_p99"] for v in verdicts) if "shift" in verdicts[0] else None
    return {"sharpness_ratio": sharp, "exposure": outside, "clipped": clipped, "shift": shift}


def bench_health(roots: list[Path], image_size: str = "auto", channels: int = 3) -> dict[str, Any]:
    """Each root at the input size `vqad train --image-size IMAGE_SIZE` gives it."""
    return {root.name: measure_category(root, input_size(root, image_size), channels) for root in roots}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", type=Path, nargs="+", metavar="DATA_DIR")
    ap.add_argument("--image-size", default="auto", help="N, HxW or auto (configs/model.yaml)")
    ap.add_argument("--channels", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(bench_health(args.roots, args.image_size, args.channels), indent=2))
