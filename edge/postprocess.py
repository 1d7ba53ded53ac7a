"""From the model's outputs to what a subscriber needs: decision, regions, map bytes.

Pure functions. The decision rule is the one evaluation uses: fail exactly when
score >= threshold. Regions are connected components of the map at the same
threshold (the image score is the map's max, so a failed frame has at least one
region unless every component is smaller than the minimum area).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def decide(score: float, threshold: float) -> str:
    return "fail" if score >= threshold else "pass"


def find_regions(
    anomaly_map: np.ndarray, threshold: float, frame_hw: tuple[int, int], min_area: int
) -> list[dict[str, Any]]:
    """Connected components (8-connected) of map >= threshold, as boxes in frame pixels.

    anomaly_map: (h, w) at the model's resolution; frame_hw: the original frame's (H, W);
    min_area is in map pixels. `area` is reported in frame pixels, `peak` is the map max.
    The component that holds the map's maximum is kept whatever its area: a frame that fails
    by its score always says where (a speck or a near-threshold peak is a pixel or two, and
    an operator shown a reject with no box has nothing to look at).
    """
    binary = (anomaly_map >= threshold).astype(np.uint8)
    if not binary.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    h, w = anomaly_map.shape
    sy, sx = frame_hw[0] / h, frame_hw[1] / w
    peak_label = labels.flat[int(np.argmax(anomaly_map))]
    regions = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < min_area and i != peak_label:
            continue
        peak = float(anomaly_map[labels == i].max())
        regions.append(
            {
                "x": int(np.floor(x * sx)),
                "y": int(np.floor(y * sy)),
                "w": int(np.ceil(bw * sx)),
                "h": int(np.ceil(bh * sy)),
                "area": int(round(area * sx * sy)),
                "peak": round(peak, 6),
            }
        )
    regions.sort(key=lambda r: -r["peak"])
    return regions


def quantize_map(anomaly_map: np.ndarray, scale: float) -> bytes:
    """(h, w) float map -> uint8 bytes with value ~= byte * scale (saturating at 255)."""
    return np.clip(np.rint(anomaly_map / scale), 0, 255).astype(np.uint8).tobytes()
