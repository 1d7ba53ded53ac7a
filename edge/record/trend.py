"""The picture of `vqad records --daily`: per camera, each day's fail rate of the line's products
as a bar (the tally's `fail_rate`: a shift's master parts are no products), split by what the
fails were (the model's confirmed defects, false rejects and those not reviewed yet, the camera
health gate's unfit frames), with each change of model marked where it began. A quality
engineer's month at a glance: where the rate moved, whether reviews called it defects or false
rejects, and whether a new package came in that day. Drawn with OpenCV, as on the edge box.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from edge.histogram import FONT, TEXT, Colour, dashed_line, fitted
from edge.record.store import model_mark

PANEL_HEIGHT, TITLE_HEIGHT = 210, 54
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 34  # a panel's plot area inside it
MIN_WIDTH, DAY_WIDTH, MAX_DAY_WIDTH = 640, 6, 28  # pixels: the picture, and a day's bar at least / most
# The parts of a day's fails of products (a daily row's `fails` less the master parts', which add
# up to its `products_failed`), bottom up, with their colours (BGR).
PARTS: tuple[tuple[str, str, Colour], ...] = (
    ("defect", "confirmed defects", (50, 50, 220)),
    ("unreviewed", "not reviewed", (40, 150, 240)),
    ("false_reject", "false rejects", (150, 150, 150)),
    ("unfit", "camera unfit", (200, 120, 40)),
)
# The model's own fails of products, by their verdicts: the rest of a day's products' fails are
# the camera health gate's (`unfit` counts a master part's unfit frame too).
VERDICT_PARTS = ("defect", "unreviewed", "false_reject")
MODEL_LINE = (120, 40, 120)
MODEL_LABEL = "another model or inspection mask from this day"


def daily_picture(rows: Sequence[dict[str, Any]], title: str) -> np.ndarray:
    """(H, W, 3) BGR uint8 of Record.daily's `rows`: a panel per camera, a bar per day of the
    period (a day without results is a gap), stacked by PARTS, and a line where a day's model is
    not the day before's, labelled with the new model's sha256's start."""
    days = _days(rows)
    cameras = sorted({r["camera_id"] for r in rows})
    bars = LEFT + RIGHT + len(days) * min(MAX_DAY_WIDTH, max(DAY_WIDTH, 900 // max(len(days), 1)))
    width = max(MIN_WIDTH, bars, _legend(None) + 8)
    image = np.full((TITLE_HEIGHT + PANEL_HEIGHT * max(len(cameras), 1), width, 3), 255, np.uint8)
    cv2.putText(image, fitted(title, 0.55, width - 16), (8, 20), FONT, 0.55, TEXT, 1, cv2.LINE_AA)
    _legend(image)
    for i, camera in enumerate(cameras):
        top = TITLE_HEIGHT + i * PANEL_HEIGHT
        _panel(image[top : top + PANEL_HEIGHT], camera, days, [r for r in rows if r["camera_id"] == camera])
    return image


def _legend(image: np.ndarray | None) -> int:
    """Draw the legend under the title of `image` (None: only measure it). -> its right end."""
    x = 8
    for _, label, colour in PARTS:
        if image is not None:
            cv2.rectangle(image, (x, 32), (x + 10, 42), colour, -1)
            cv2.putText(image, label, (x + 14, 42), FONT, 0.42, TEXT, 1, cv2.LINE_AA)
        x += 24 + cv2.getTextSize(label, FONT, 0.42, 1)[0][0]
    if image is not None:
        cv2.line(image, (x, 37), (x + 12, 37), MODEL_LINE, 2)
        cv2.putText(image, MODEL_LABEL, (x + 16, 42), FONT, 0.42, TEXT, 1, cv2.LINE_AA)
    return x + 16 + cv2.getTextSize(MODEL_LABEL, FONT, 0.42, 1)[0][0]


def _days(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every day from the first row's to the last's (ISO dates), the days without results too."""
    if not rows:
        return []
    first, last = (dt.date.fromisoformat(d) for d in (min(r["day"] for r in rows), max(r["day"] for r in rows)))
    return [(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def _panel(panel: np.ndarray, camera: str, days: list[str], rows: list[dict[str, Any]]) -> None:
    """One camera's bars in `panel` (a view of the picture)."""
    height, width = panel.shape[:2]
    x0, x1, y0, y1 = LEFT, width - RIGHT, TOP, height - BOTTOM
    by_day: dict[str, dict[str, Any]] = {}
    for r in rows:  # a day with two models (or a model and then its mask) has a row of each
        day = by_day.setdefault(r["day"], {"decided": 0, "fail": 0, "models": [], **{k: 0 for k, _, _ in PARTS}})
        day["decided"] += r["products_decided"]
        day["fail"] += r["products_failed"]
        for key in VERDICT_PARTS:
            day[key] += r["fails"][key]
        day["unfit"] += r["products_failed"] - sum(r["fails"][key] for key in VERDICT_PARTS)
        day["models"].append(model_mark(r, digits=8))
    rates = [d["fail"] / d["decided"] for d in by_day.values() if d["decided"]]
    peak = max([0.01, *rates])  # at least 1%: a quiet line's bars are not drawn as tall as a bad day's
    step = (x1 - x0) / max(len(days), 1)
    cv2.putText(panel, fitted(camera, 0.5, width - 8), (8, 18), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    cv2.line(panel, (x0, y1), (x1, y1), TEXT, 1)
    cv2.line(panel, (x0, y0), (x0, y1), TEXT, 1)
    cv2.putText(panel, f"{100 * peak:.3g}%", (4, y0 + 5), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    cv2.putText(panel, "0%", (28, y1 + 4), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    previous: list[str] = []
    label_every = max(1, int(np.ceil(48 / step)))  # an MM-DD label is about 40 pixels wide
    for n, day in enumerate(days):
        left, right = int(x0 + n * step) + 1, int(x0 + (n + 1) * step) - 1
        if n % label_every == 0:
            cv2.putText(panel, day[5:], (left, y1 + 16), FONT, 0.38, TEXT, 1, cv2.LINE_AA)
        d = by_day.get(day)
        if d is None or not d["decided"]:
            continue
        _bar(panel, d, left, max(right, left), y0, y1, peak)
        if previous and d["models"] != previous or len(set(d["models"])) > 1:
            _model_line(panel, left - 1, y0, y1, d["models"][-1])
        previous = d["models"]


def _bar(panel: np.ndarray, d: dict[str, Any], left: int, right: int, y0: int, y1: int, peak: float) -> None:
    """A day's fail rate as a bar, split in proportion to what its fails were found to be."""
    rate = d["fail"] / d["decided"]
    bottom = y1 - 1
    for key, _, colour in PARTS:
        part = rate * d[key] / d["fail"] if d["fail"] else 0.0
        top = bottom - int(round(part / peak * (y1 - y0)))
        if top < bottom:
            cv2.rectangle(panel, (left, top), (right, bottom), colour, -1)
        bottom = top


def _model_line(panel: np.ndarray, x: int, y0: int, y1: int, model: str) -> None:
    """A dashed line where a day brings another model or mask, labelled with the model's sha256's
    start ("+mask" where a mask judged)."""
    dashed_line(panel, x, y0, y1, MODEL_LINE, 2)
    cv2.putText(panel, model, (x + 3, y0 - 4), FONT, 0.38, MODEL_LINE, 1, cv2.LINE_AA)
