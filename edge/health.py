"""The camera health gate: each frame checked cheaply against what the training images looked
like, so that an unfit frame never passes. Sharpness (variance of the Laplacian), exposure (mean
grey level, and the share of clipped pixels), a frozen camera (a frame identical to the camera's
previous one), the frame's shape (a height/width unlike the training images' is squeezed into
the model's input: a rotated camera, or another model's line), and on an aligned part a moved
camera or part (the frame's registration shift against the training images' mean, by
normalised cross-correlation).

`image_stats` measures a frame at the model's input; `training_stats` summarises the training
images for model.json (export writes it, `camera_health`); `HealthGate` holds the limits.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.config import require
from edge.recent import RecentDict

log = logging.getLogger(__name__)

# A pixel at or within this of 0 or 255 is clipped.
CLIP_MARGIN = 2
# The moved check registers a small grey copy of the frame (this many pixels on its long side)
# to the training images' mean: at 48 pixels one step is 2% of the frame, a knocked camera moves
# it by far more, and the search costs about 0.1 ms. Phase correlation was tried first: on a
# smooth part its whitened spectrum is noise, and good images read shifts of 20%.
REFERENCE_SIDE = 48
# The search: the reference's centre, cropped by this share of each side, slides over the frame.
# Larger moves than this read as this.
SEARCH_SHARE = 0.2
# Aligned: the mean image explains at least this share of the training images' variance (each
# image normalised for its lighting); the template term's criterion (train/scoring/template.py).
MIN_ALIGNMENT = 0.5


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


def small_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (h, w) float32, REFERENCE_SIDE on its long side, zero mean and unit
    spread (the frame's lighting divided out)."""
    grey = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    scale = REFERENCE_SIDE / max(h, w)
    small = cv2.resize(grey, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    return (small - small.mean()) / max(float(small.std()), 1e-3)


def registration_shift(reference: np.ndarray, small: np.ndarray) -> float:
    """How far `small` sits from `reference` (both small_grey), as a share of the image's side."""
    h, w = reference.shape
    my, mx = max(1, round(SEARCH_SHARE * h)), max(1, round(SEARCH_SHARE * w))
    fit = cv2.matchTemplate(small, reference[my : h - my, mx : w - mx], cv2.TM_CCOEFF_NORMED)
    _, _, _, (x, y) = cv2.minMaxLoc(fit)
    return float(max(abs(x - mx) / w, abs(y - my) / h))


def training_stats(
    images: Iterable[np.ndarray], camera_shapes: Iterable[tuple[int, int]] | None = None
) -> dict[str, Any]:
    """The training images' range for each figure (the 1st and 99th percentiles), from `images`
    at the model's input and, given their `camera_shapes` (H, W as read), their height/width;
    whether the part is aligned, and then its reference picture and the training images' shifts."""
    images = list(images)
    rows = [image_stats(image) for image in images]
    out: dict[str, Any] = {}
    for key in ("sharpness", "mean", "clipped"):
        values = np.array([r[key] for r in rows])
        out[f"{key}_p1"], out[f"{key}_p99"] = float(np.percentile(values, 1)), float(np.percentile(values, 99))
    aspects = np.array([h / w for h, w in camera_shapes or []])
    if len(aspects):
        out["aspect_p1"], out["aspect_p99"] = float(np.percentile(aspects, 1)), float(np.percentile(aspects, 99))
    out["n_images"] = len(rows)
    smalls = np.stack([small_grey(image) for image in images])
    reference = smalls.mean(axis=0)
    out["alignment"] = round(1.0 - float(((smalls - reference) ** 2).mean()), 4)
    out["aligned"] = out["alignment"] >= MIN_ALIGNMENT
    if out["aligned"]:
        shifts = [registration_shift(reference, small) for small in smalls]
        out["shift_p99"] = float(np.percentile(shifts, 99))
        out["reference"] = np.round(reference, 3).tolist()
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
    # Moved (aligned parts only): a registration shift more than this share of the image's side
    # beyond the training images' 99th percentile. 0 = off.
    max_shift: float = 0.04
    # Shape: a frame's height/width more than this share outside the training images' range. It
    # is squeezed into the model's input as they were not: 0.1 lets a 4:3 sensor stand in for a
    # 5:4 one (6.7%) and stops a camera turned 90 degrees. 0 = off.
    max_aspect_change: float = 0.1

    def __post_init__(self) -> None:
        # A negative margin, or frozen_after 0, would call every frame unfit: every part a fail.
        for name in ("min_sharpness_ratio", "exposure_margin", "clipped_margin", "max_shift", "max_aspect_change"):
            require(getattr(self, name) >= 0, f"edge.health.{name} must be >= 0, got {getattr(self, name)}")
        require(self.frozen_after >= 1, f"edge.health.frozen_after must be >= 1, got {self.frozen_after}")


class HealthGate:
    def __init__(self, stats: dict[str, Any], limits: HealthLimits):
        self.stats, self.limits = stats, limits
        self._last: RecentDict[str, tuple[bytes, int]] = RecentDict()  # camera -> (its last frame's digest, repeats)
        self._shapes_told: RecentDict[tuple[str, tuple[int, int]], bool] = RecentDict()  # (camera, shape) logged
        self.tell_shapes = True  # off where one summary names every unfit image (a calibration)
        self._lock = threading.Lock()
        self.reference = None  # packages exported before the moved check have none
        if stats.get("reference") is not None and limits.max_shift > 0:
            self.reference = np.asarray(stats["reference"], np.float32)

    def check(
        self, camera_id: str, image: np.ndarray, frame_hw: tuple[int, int] | None = None, stream: bool = True
    ) -> dict[str, Any]:
        """{"ok", "reasons", and the figures} for one frame at the model's input; `frame_hw`, its
        (H, W) as the camera sent it, for the shape check. `stream` False: a still image (a
        folder's, where one image may recur), checked for all but a frozen camera."""
        s, lim = self.stats, self.limits
        figures = image_stats(image)
        reasons = []
        if frame_hw is not None and "aspect_p1" in s and lim.max_aspect_change > 0:
            figures["aspect"] = frame_hw[0] / frame_hw[1]
            low, high = s["aspect_p1"] / (1 + lim.max_aspect_change), s["aspect_p99"] * (1 + lim.max_aspect_change)
            if not low <= figures["aspect"] <= high:
                reasons.append("aspect")
                if self.tell_shapes:
                    self._tell_shape(camera_id, frame_hw)
        if figures["sharpness"] < lim.min_sharpness_ratio * s["sharpness_p1"]:
            reasons.append("blurred")
        if not s["mean_p1"] - lim.exposure_margin <= figures["mean"] <= s["mean_p99"] + lim.exposure_margin:
            reasons.append("exposure")
        if figures["clipped"] > s["clipped_p99"] + lim.clipped_margin:
            reasons.append("clipped")
        if self.reference is not None:
            figures["shift"] = registration_shift(self.reference, small_grey(image))
            if figures["shift"] > s["shift_p99"] + lim.max_shift:
                reasons.append("moved")
        if stream and self._frozen(camera_id, image):
            reasons.append("frozen")
        return {"ok": not reasons, "reasons": reasons, **{k: round(v, 5) for k, v in figures.items()}}

    def checks_as(self, other: HealthGate) -> bool:
        """True when `other` checks frames against the same figures and limits: a reload of the
        same package keeps `other`'s count of a frozen camera's repeats and the shapes it told of."""
        return self.limits == other.limits and self.stats == other.stats

    def _frozen(self, camera_id: str, image: np.ndarray) -> bool:
        """Whether `image` is the camera's previous frame again, frozen_after times or more."""
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        with self._lock:
            last, repeats = self._last.get(camera_id, (b"", 0))
            repeats = repeats + 1 if digest == last else 0
            self._last[camera_id] = (digest, repeats)
        return repeats >= self.limits.frozen_after

    def _tell_shape(self, camera_id: str, frame_hw: tuple[int, int]) -> None:
        """One warning per camera and frame shape: every such frame fails, and this says why."""
        key = (camera_id, (int(frame_hw[0]), int(frame_hw[1])))
        with self._lock:
            if key in self._shapes_told:
                return
            self._shapes_told[key] = True
        log.warning(
            "camera %s sends %dx%d (HxW) frames, height/width %.3f; the model's training images were %.3f-%.3f. "
            "They are squeezed into its input and fail as unfit (health reason 'aspect'): a camera turned, "
            "or another line's model? (edge.health.max_aspect_change, 0 = off)",
            camera_id, *key[1], frame_hw[0] / frame_hw[1], self.stats["aspect_p1"], self.stats["aspect_p99"],
        )  # fmt: skip
