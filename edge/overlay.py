"""Heat-map overlays: one picture of where a frame is anomalous. Used by `vqad eval`
reports, `vqad watch --save-dir` and the dashboard, so all draw the same thing."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, alpha: float = 0.7) -> np.ndarray:
    """image: (H, W) or (H, W, C) uint8 (C 1, 3 or 4); anomaly_map: (h, w) float, any size.

    The map is scaled so that `vmax` (e.g. twice the threshold) is full red, resized to the
    image and blended over it where it is high: its colour weighs `alpha` from half of `vmax`
    (the threshold) up, and less below, by the square of the level, so that a good image's low
    map leaves the part as the camera saw it and a reject's defect stands out in colour (a
    fixed blend washed every part blue). Returns (H, W, 3) BGR uint8.
    """
    base = as_bgr(image)
    h, w = base.shape[:2]
    m = cv2.resize(anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    level = np.clip(m * np.float32(1.0 / max(vmax, 1e-12)), 0.0, 1.0)  # (H, W) float32, 1 at vmax
    colour = cv2.applyColorMap((level * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    weight = np.minimum(2.0 * level, 1.0)  # 1 at vmax / 2 and above
    weight *= weight
    weight *= alpha
    return cv2.blendLinear(colour, np.ascontiguousarray(base), weight, 1.0 - weight)


def draw_regions(image: np.ndarray, regions: list[dict], colour: tuple[int, int, int] = (0, 0, 255)) -> np.ndarray:
    """Draw region boxes ({'x','y','w','h'}) on a BGR image, in place; returns it. The line is a
    pixel wide up to 512 pixels a side and wider beyond, so that a full-size frame's box still
    shows when a page draws it small."""
    thickness = max(1, round(max(image.shape[:2]) / 512))
    for r in regions:
        corner = (int(r["x"] + r["w"]), int(r["y"] + r["h"]))
        cv2.rectangle(image, (int(r["x"]), int(r["y"])), corner, colour, thickness)
    return image


def map_peak(anomaly_map: np.ndarray) -> tuple[int, int]:
    """(y, x), the pixel of the map's maximum, where the image score comes from. Of equal
    maxima, the one farthest from the edge: the map's unscored margin repeats its nearest scored
    pixel, and that pixel is the peak."""
    h, w = anomaly_map.shape
    ys, xs = np.nonzero(anomaly_map >= anomaly_map.max())
    inward = np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs))
    i = int(np.argmax(inward))
    return int(ys[i]), int(xs[i])


def peak_fraction(anomaly_map: np.ndarray) -> tuple[float, float]:
    """map_peak's pixel centre as fractions of the map's height and width: where in a frame of
    any size the score comes from."""
    y, x = map_peak(anomaly_map)
    return (y + 0.5) / anomaly_map.shape[0], (x + 0.5) / anomaly_map.shape[1]


def peak_spot(anomaly_map: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """The box of the spot around map_peak: the 8-connected part of the map at `level` or more
    that holds it (the peak alone where the peak is under `level`) -> (top, left, bottom, right)
    fractions of the map's height and width, the bottom and right past its last pixel."""
    y, x = map_peak(anomaly_map)
    binary = (anomaly_map >= min(level, float(anomaly_map[y, x]))).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    left, top, w, h = (int(v) for v in stats[labels[y, x], :4])
    mh, mw = anomaly_map.shape
    return top / mh, left / mw, (top + h) / mh, (left + w) / mw


def mark_peak(image: np.ndarray, peak: tuple[int, int], map_shape: tuple[int, int]) -> np.ndarray:
    """Ring the map pixel `peak` ((y, x), map_peak's, of a map of `map_shape`) on a BGR image of
    any size, in place, white with a dark edge so that it shows on any colour; returns it."""
    h, w = image.shape[:2]
    centre = (int((peak[1] + 0.5) * w / map_shape[1]), int((peak[0] + 0.5) * h / map_shape[0]))
    radius = max(4, round(min(h, w) / 24))
    cv2.circle(image, centre, radius, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.circle(image, centre, radius, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def label(image: np.ndarray, text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Write a line of text in the top-left corner, on a dark band, in place; returns it. The
    text grows with the picture, but covers at most about a fifth of a wide strip's height."""
    scale = max(0.35, min(image.shape[1] / 600, image.shape[0] / 150))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, 0), (tw + 6, th + 8), (0, 0, 0), -1)
    cv2.putText(image, text, (3, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return image


# A saved picture is drawn at least this wide, so that its label ("cam0 #1234 0.7736 PASS")
# fits in one legible line: a 128-px map holds two thirds of it at the smallest font.
LABELLED_MIN_WIDTH = 256


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A decoded frame (grey (H, W) or (H, W, 1), BGR, BGRA) as (H, W, 3) BGR, for drawing."""
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR) if image.shape[2] == 4 else image


def draw_ignored(picture: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`picture` (H', W', 3) with the left-out parts darkened and hatched, and outlined: an
    operator reviewing a reject, and the engineer who set the mask, see what was not judged."""
    h, w = picture.shape[:2]
    out_mask = cv2.resize((~keep).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    if not out_mask.any():
        return picture
    out = picture.copy()
    out[out_mask] = (out[out_mask] * 0.45).astype(out.dtype)
    yy, xx = np.mgrid[0:h, 0:w]
    hatch = out_mask & (((xx + yy) // 2) % 8 == 0)
    out[hatch] = (160, 160, 160)
    contours, _ = cv2.findContours(out_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (200, 200, 200), 1)
    return out


def result_picture(
    header: dict[str, Any],
    amap: np.ndarray | None,
    frame_jpeg: bytes | None = None,
    labelled: bool = True,
    frame: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> np.ndarray | None:
    """A published result as a picture: its map over the frame (the map alone when there is no
    frame, the frame alone when there is no map), its regions boxed, and, when `labelled`, a
    label (camera, frame, score, verdict; the picture then at least LABELLED_MIN_WIDTH wide).
    The frame is `frame`, decoded at the camera's own size (an image file scored offline), or
    else the stream's model-size `frame_jpeg`. `keep`: the inspection mask it was judged
    through, True where judged; the rest is hatched under the map, as the record's overlay draws
    it. -> (h, w, 3) BGR at the map's size or larger; None when there is neither frame nor map.
    The dashboard draws it unlabelled: its page writes the label."""
    if frame is not None:
        base = as_bgr(frame)
    else:
        base = cv2.imdecode(np.frombuffer(frame_jpeg, np.uint8), cv2.IMREAD_COLOR) if frame_jpeg else None
    if base is None and amap is None:
        return None
    if base is None:
        base = np.zeros((*amap.shape, 3), np.uint8)
    if keep is not None:
        base = draw_ignored(base, keep)
    picture = base.copy() if amap is None else heatmap_overlay(base, amap, vmax=2 * header["threshold"])
    if labelled and picture.shape[1] < LABELLED_MIN_WIDTH:
        grow = LABELLED_MIN_WIDTH / picture.shape[1]
        picture = cv2.resize(picture, None, fx=grow, fy=grow, interpolation=cv2.INTER_LINEAR)
    fh, fw = header.get("frame_shape") or base.shape[:2]  # regions are in frame pixels; the map is at model size
    sx, sy = picture.shape[1] / fw, picture.shape[0] / fh
    boxes = [
        {"x": r["x"] * sx, "y": r["y"] * sy, "w": r["w"] * sx, "h": r["h"] * sy} for r in header.get("regions") or []
    ]
    draw_regions(picture, boxes)
    if labelled:
        verdict = (header.get("decision") or header["status"]).upper()
        colour = (0, 0, 255) if verdict == "FAIL" else (255, 255, 255)
        label(picture, f"{header['camera_id']} #{header['frame_id']} {header['score']:.4g} {verdict}", colour)
    return picture
