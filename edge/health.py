"""The camera health gate: each frame checked cheaply against what the training images looked
like, so that an unfit frame never passes. Sharpness (variance of the Laplacian), exposure (mean
grey level, and the share of clipped pixels), a frozen camera (a frame identical to the camera's
previous one).

`image_stats` measures a frame at the model's input; `training_stats` summarises the training
images for model.json (export writes it, `camera_health`); `HealthGate` holds the limits.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# A pixel at or within this of 0 or 255 is clipped.
CLIP_MARGIN = 2


def image_stats(image: np.ndarray) -> dict[str, float]:
    """(H, W, C) uint8 at the model's input -> sharpness, mean (0-1) and clipped share."""
    grey = image if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    grey = grey[:, :, 0]
    clipped = float(((grey <= CLIP_MARGIN) | (grey >= 255 - CLIP_MARGIN)).mean())
    return {
        "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        "mean": float(grey.mean()) / 255.0,
        "clipped": clipped,
    }


def training_stats(images: Iterable[np.ndarray]) -> dict[str, float]:
    """The training images' range for each figure: the 1st and 99th percentiles."""
    rows = [image_stats(image) for image in images]
    out: dict[str, float] = {}
    for key in ("sharpness", "mean", "clipped"):
        values = np.array([r[key] for r in rows])
        out[f"{key}_p1"], out[f"{key}_p99"] = float(np.percentile(values, 1)), float(np.percentile(values, 99))
    out["n_images"] = len(rows)
    return out


@dataclass(frozen=True)
class HealthLimits:
    """How far a frame may stray from the training images (edge.health in configs/edge.yaml)."""

    enabled: bool = True
    # Blurred: sharpness under this share of the training images' 1st percentile.
    min_sharpness_ratio: float = 0.5
    # Exposure: mean grey level further than this (0-1) outside the training images' 1st-99th.
    exposure_margin: float = 0.15
    # Clipped: more than this share of pixels at 0 or 255 beyond the training images' 99th percentile.
    clipped_margin: float = 0.05
    # Frozen: this many consecutive frames of a camera identical to its previous one.
    frozen_after: int = 1


class HealthGate:
    def __init__(self, stats: dict[str, float], limits: HealthLimits):
        self.stats, self.limits = stats, limits
        self._last: dict[str, tuple[bytes, int]] = {}  # camera -> (digest of its last frame, repeats)
        self._lock = threading.Lock()

    def check(self, camera_id: str, image: np.ndarray) -> dict[str, Any]:
        """{"ok", "reasons", and the figures} for one frame at the model's input."""
        s, lim = self.stats, self.limits
        figures = image_stats(image)
        reasons = []
        if figures["sharpness"] < lim.min_sharpness_ratio * s["sharpness_p1"]:
            reasons.append("blurred")
        if not s["mean_p1"] - lim.exposure_margin <= figures["mean"] <= s["mean_p99"] + lim.exposure_margin:
            reasons.append("exposure")
        if figures["clipped"] > s["clipped_p99"] + lim.clipped_margin:
            reasons.append("clipped")
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        with self._lock:
            last, repeats = self._last.get(camera_id, (b"", 0))
            repeats = repeats + 1 if digest == last else 0
            self._last[camera_id] = (digest, repeats)
        if repeats >= lim.frozen_after:
            reasons.append("frozen")
        return {"ok": not reasons, "reasons": reasons, **{k: round(v, 5) for k, v in figures.items()}}
