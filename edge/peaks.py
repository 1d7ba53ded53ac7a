"""Where the good images' scores come from: each calibration image's map peak, drawn over a
good image. `vqad calibrate` writes it beside a package's threshold, `vqad eval` beside its
report for the validation images.

The threshold is set by the highest good scores. Where they cluster in one place (a frame's
edge, a label, a part's dark slot), that place sets the line's threshold, and every defect
elsewhere that scores under it passes; if no defect can be there, it is the place to leave out
of the decision (`vqad calibrate --ignore X,Y,W,H`), which lowers the threshold for the rest.
Drawn with OpenCV, on the edge box as the calibration runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from edge.errors import DataError, PackageError
from edge.inspection import backdrop
from edge.overlay import draw_ignored, peak_spot

log = logging.getLogger(__name__)

# The highest this many are numbered: the threshold is set among them.
NUMBERED = 5
# Scores under this share of the threshold are drawn green, at it red, yellow between.
GREEN_UNDER = 0.5
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Of the NUMBERED highest, this many within CROWD_RADIUS of one of them (a fraction of the
# frame's side), or within EDGE_BAND of one edge, are said to crowd one place. Five peaks placed
# on the frame at random do so about once in 150 (10^5 draws); KolektorSDD's three highest at
# its top edge (300 steps) did.
CROWDED, CROWD_RADIUS, EDGE_BAND = 3, 0.06, 0.05
PLACE_COLOUR = (255, 255, 0)  # BGR cyan: the place the highest crowd, outlined; no score's colour
MIN_WIDTH = 480  # pixels; a narrower frame is drawn this wide or wider
CAPTION_SCALE, LINE_H = 0.4, 15  # the caption's text, and its lines' pitch in pixels


def peaks_file(root: Path, good_dir: Path, threshold: dict[str, Any]) -> Path | None:
    """ROOT/peaks.png: the `threshold` entry's good images' peaks over the first good image under
    `good_dir`, through the package's mask -> its path; None (and a warning) where it cannot be
    drawn or written: the threshold is saved by then, and stands."""
    path = root / "peaks.png"
    try:
        mask, image = backdrop(root, good_dir)
        drawn = peaks_picture(image, threshold["peaks"], threshold["scores"], threshold["value"],
                              None if mask is None else mask.keep, threshold.get("crowd"))  # fmt: skip
        if not cv2.imwrite(str(path), drawn):
            raise OSError("OpenCV did not write it")
    except (DataError, PackageError, OSError, IndexError, KeyError, ValueError, cv2.error) as exc:
        log.warning("the threshold is saved; where its good images peak could not be drawn to %s: %s", path, exc)
        return None
    return path


class Crowd(NamedTuple):
    """CROWDED or more of the NUMBERED highest good images peaking in one place."""

    count: int
    where: str  # in words: "the frame's top edge", "one place, 96% across and 5% down"
    members: tuple[int, ...]  # which images: indices into the scores
    side: str | None  # the edge they peak along (top, bottom, left, right); None for a place


def crowd(peaks: Sequence[Sequence[float]], scores: Sequence[float]) -> Crowd | None:
    """Whether CROWDED or more of the NUMBERED highest peak in one place: within CROWD_RADIUS of
    one of them, or along one edge of the frame (within EDGE_BAND of it); None when they do not."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")[::-1][:NUMBERED]
    top = np.asarray(peaks, dtype=np.float64).reshape(-1, 2)[order]  # (k, 2): row, column fractions
    if len(top) < CROWDED:
        return None
    edges = {"top": top[:, 0], "bottom": 1 - top[:, 0], "left": top[:, 1], "right": 1 - top[:, 1]}
    along = {side: edges[side] <= EDGE_BAND for side in edges}
    side = max(along, key=lambda s: int(along[s].sum()))
    if along[side].sum() >= CROWDED:
        members = tuple(int(i) for i in order[along[side]])
        return Crowd(len(members), f"the frame's {side} edge", members, side)
    near = np.linalg.norm(top[:, None] - top[None], axis=2) <= CROWD_RADIUS  # (k, k)
    best = int(near.sum(axis=1).argmax())
    if near[best].sum() < CROWDED:
        return None
    row, col = top[near[best]].mean(axis=0)
    members = tuple(int(i) for i in order[near[best]])
    return Crowd(len(members), f"one place, {col:.0%} across and {row:.0%} down", members, None)


def crowd_box(crowded: Crowd, maps: np.ndarray, scores: Sequence[float]) -> tuple[float, float, float, float]:
    """The place a crowd's images score from: (top, left, bottom, right) fractions of the frame
    that hold each member's spot over the highest score of the other good images (`scores`:
    all of them; edge.overlay.peak_spot of its map; `maps`: the members' own, in their order),
    along its whole edge for an edge's crowd, as a line's good parts peak anywhere along it.
    Left out of it, no member scores more around its peak than the others do."""
    level = float(np.delete(np.asarray(scores, dtype=np.float64), crowded.members).max(initial=0.0))
    spots = np.array([peak_spot(amap, level) for amap in maps]).reshape(-1, 4)
    top, left = spots[:, :2].min(axis=0)
    bottom, right = spots[:, 2:].max(axis=0)
    box = {
        "top": (0.0, 0.0, bottom, 1.0),
        "bottom": (top, 0.0, 1.0, 1.0),
        "left": (0.0, 0.0, 1.0, right),
        "right": (0.0, left, 1.0, 1.0),
        None: (top, left, bottom, right),
    }[crowded.side]
    return tuple(float(v) for v in box)  # type: ignore[return-value]


def box_rectangle(box: Sequence[float], frame_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """A (top, left, bottom, right) fraction box -> X,Y,W,H in a frame of `frame_hw` (H, W)
    pixels, whole pixels outward: as `vqad calibrate --ignore` takes it."""
    fh, fw = frame_hw
    x, y = int(np.floor(box[1] * fw)), int(np.floor(box[0] * fh))
    return x, y, max(1, int(np.ceil(box[3] * fw)) - x), max(1, int(np.ceil(box[2] * fh)) - y)


def crowd_words(crowded: Crowd, whose: str = "good images") -> str:
    """crowd()'s finding as `vqad calibrate` and `vqad eval` say it."""
    return (f"{crowded.count} of the {NUMBERED} highest {whose} peak at {crowded.where}: if no defect can be there, "
            "leaving it out (vqad calibrate --ignore X,Y,W,H, in the frame's pixels) lowers the threshold for the "
            "rest of the frame")  # fmt: skip


def left_out_words(found: dict[str, Any], value: float, defects: dict[str, Any] | None = None) -> str:
    """A threshold's `crowd` (edge.recalibrate.crowd_left_out) as `vqad calibrate` says it: where
    the highest good images peak, how to leave it out, and what that would do to the threshold
    `value` and, with the calibration's `defects` check, to the confirmed defects that pass."""
    if "ignore" in found:
        how = " ".join("--ignore " + ",".join(str(v) for v in r) for r in found["ignore"])
    else:
        how = f"--mask {found['mask']}"
    said = f"{found['count']} of the {NUMBERED} highest good images peak at {found['where']}: "
    if found["threshold"] >= value * (1 - 1e-6):
        return said + f"leaving it out ({how}) would not lower the threshold: good images score as high elsewhere"
    said += (f"if no defect can be there, leaving it out ({how}; {found['inspected_share']:.1%} of the frame judged) "
             f"would set the threshold at {found['threshold']:.4g} instead of {value:.4g}")  # fmt: skip
    if defects is not None and "defects_missed" in found:
        said += (f", and let {found['defects_missed']} of {defects['n_images']} confirmed defects pass instead of "
                 f"{defects['missed']}")  # fmt: skip
    return said


def peak_colour(score: float, threshold: float) -> tuple[int, int, int]:
    """BGR: green far under the threshold, through yellow, to red at it or over."""
    t = float(np.clip((score / threshold - GREEN_UNDER) / (1 - GREEN_UNDER), 0.0, 1.0))
    return (0, int(round(200 * min(1.0, 2 * (1 - t)))), int(round(230 * min(1.0, 2 * t))))


def peaks_picture(
    image: np.ndarray,
    peaks: Sequence[Sequence[float]],
    scores: Sequence[float],
    threshold: float,
    keep: np.ndarray | None = None,
    place: dict[str, Any] | None = None,
) -> np.ndarray:
    """`image` (H, W, 3) BGR, a good image at its own size, darkened, with a dot where each good
    image's map peaks (`peaks`: (row, column) fractions of the frame, as edge.recalibrate's
    GraphScorer gives them), coloured by its score against `threshold`, the NUMBERED highest
    ringed and numbered; the inspection mask's left-out parts hatched (`keep`: (h, w) bool at the
    model's size, True where judged); where the highest crowd, the `place` (its `box`, fractions
    of the frame) outlined, and the caption gives its `threshold`. -> (caption + k H, k W, 3)
    uint8, the caption above; k is 1, or the whole factor that makes a frame narrower than
    MIN_WIDTH as wide or wider."""
    if len(peaks) != len(scores):
        raise ValueError(f"{len(peaks)} peaks for {len(scores)} scores")
    factor = -(-MIN_WIDTH // image.shape[1])  # a small frame enlarged, whole pixels, to show its dots and caption
    image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor > 1 else image
    h, w = image.shape[:2]
    picture = (image.astype(np.float32) * 0.6).astype(np.uint8)
    if keep is not None:
        picture = draw_ignored(picture, keep)
    radius = max(3, round(min(h, w) / 90))
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")  # the highest drawn last, on top
    for i in order:
        centre = _pixel(peaks[i], h, w)
        cv2.circle(picture, centre, radius, peak_colour(scores[i], threshold), -1, cv2.LINE_AA)
    for rank, i in enumerate(order[::-1][:NUMBERED], 1):
        _number(picture, _pixel(peaks[i], h, w), radius, rank)
    if place is not None:
        top, left, bottom, right = place["box"]
        corners = (round(left * w), round(top * h)), (round(right * w) - 1, round(bottom * h) - 1)
        cv2.rectangle(picture, *corners, PLACE_COLOUR, 2)
    return np.vstack([_caption(w, len(scores), None if place is None else place["threshold"]), picture])


def _pixel(peak: Sequence[float], h: int, w: int) -> tuple[int, int]:
    """A (row, column) fraction of the frame -> its (x, y) pixel in an h x w picture."""
    return min(w - 1, int(peak[1] * w)), min(h - 1, int(peak[0] * h))


def _number(picture: np.ndarray, centre: tuple[int, int], radius: int, rank: int) -> None:
    """A white ring around the dot, and its rank beside it, outlined to read on any part."""
    cv2.circle(picture, centre, radius + 3, (255, 255, 255), 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(str(rank), FONT, 0.5, 3)
    right = centre[0] + radius + 5 + tw <= picture.shape[1]  # beside the dot where the picture has room
    at = (centre[0] + radius + 5 if right else centre[0] - radius - 5 - tw, max(12, centre[1] + 5))
    cv2.putText(picture, str(rank), at, FONT, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(picture, str(rank), at, FONT, 0.5, (255, 255, 255), 1, cv2.LINE_AA)


def _caption(width: int, n: int, without: float | None = None) -> np.ndarray:
    """The lines above the picture, wrapped at its width: what the dots are, what a cluster of red
    ones means, and the threshold `without` the place outlined."""
    words = (
        f"Where each of the {n} good images scores highest; red: near the threshold; 1-{NUMBERED}: the highest. "
        "A cluster of red where no defect can be is a place to leave out (vqad calibrate --ignore X,Y,W,H)."
        + ("" if without is None else f" Outlined: where they crowd; left out, the threshold would be {without:.4g}.")
    ).split()
    lines = [""]
    for word in words:
        joined = f"{lines[-1]} {word}".strip()
        if lines[-1] and cv2.getTextSize(joined, FONT, CAPTION_SCALE, 1)[0][0] > width - 8:
            lines.append(word)
        else:
            lines[-1] = joined
    band = np.full((LINE_H * len(lines) + 6, width, 3), 255, np.uint8)
    for row, text in enumerate(lines):
        cv2.putText(band, text, (4, LINE_H * (row + 1)), FONT, CAPTION_SCALE, (40, 40, 40), 1, cv2.LINE_AA)
    return band
