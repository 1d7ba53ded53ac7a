"""Heat-map overlays: one picture of where a frame is anomalous. Used by `vqad eval`
reports and by `vqad watch --save-dir`, so both draw the same thing."""

from __future__ import annotations

import cv2
import numpy as np


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """image: (H, W, C) uint8 (C 1 or 3); anomaly_map: (h, w) float, any size.

    The map is scaled so that `vmax` (e.g. twice the threshold) is full red, resized to the
    image and blended over it. Returns (H, W, 3) BGR uint8.
    """
    base = (
        image
        if image.ndim == 3 and image.shape[2] == 3
        else cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    )
    h, w = base.shape[:2]
    m = cv2.resize(anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    scaled = np.clip(m / max(vmax, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)
    return cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)


def draw_regions(image: np.ndarray, regions: list[dict], colour: tuple[int, int, int] = (0, 0, 255)) -> np.ndarray:
    """Draw region boxes ({'x','y','w','h'}) on a BGR image, in place; returns it."""
    for r in regions:
        cv2.rectangle(image, (int(r["x"]), int(r["y"])), (int(r["x"] + r["w"]), int(r["y"] + r["h"])), colour, 1)
    return image


def label(image: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Write a line of text in the top-left corner, on a dark band, in place; returns it."""
    scale = max(0.35, image.shape[1] / 600)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, 0), (tw + 6, th + 8), (0, 0, 0), -1)
    cv2.putText(image, text, (3, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return image
