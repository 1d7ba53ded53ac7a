"""The picture of a calibration: the good images' scores, and confirmed defects' when there are
any, against the new threshold and the one it replaces. `vqad calibrate` writes it beside the
threshold. Drawn with OpenCV, so that a model package is calibrated on the edge box without
a plotting library."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

WIDTH, HEIGHT = 720, 400
# The plot area inside the picture: room for the title and legend above, the axis below.
LEFT, RIGHT, TOP, BOTTOM = 50, 20, 95, 50
BINS = 40
SPAN = 3.0  # the axis reaches this many times the highest good score or threshold
Colour = tuple[int, int, int]  # BGR
GOOD, DEFECT = (60, 160, 60), (50, 50, 220)  # BGR
THRESHOLD, PREVIOUS, TEXT = (0, 0, 0), (150, 150, 150), (40, 40, 40)
CHOICE = (150, 100, 40)  # BGR: the other --target-frr choices' thresholds, dashed
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Labels closer than LABEL_GAP pixels are drawn LABEL_ROW pixels apart (a row of 0.42-scale text
# is 9 pixels high; the legend's second line ends above the higher row).
LABEL_GAP, LABEL_ROW = 6, 14


def score_histogram(
    good: Sequence[float],
    threshold: float,
    previous: float | None = None,
    defects: Sequence[float] | None = None,
    title: str = "",
    good_label: str = "good",
    defect_label: str = "confirmed defects",
    choices: Sequence[dict[str, float]] = (),
) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) BGR uint8: a histogram of the good scores (green) and the defects'
    (red), the threshold (a black line) and the previous one (grey), with what falls on the
    wrong side of the threshold in the legend (a frame fails at score >= threshold).
    `choices`: edge.threshold.target_frr_trade's entries; each target whose threshold is not
    this one is a dashed line labelled with its target, where a quality engineer sees which
    defects it would catch and which good images it would reject."""
    good = np.asarray(good, np.float64)
    bad = np.asarray(defects if defects is not None else [], np.float64)
    lines = [threshold] + ([previous] if previous is not None else [])
    lo = min(0.0, float(np.min(np.r_[good, bad])))
    # The axis ends at SPAN times the furthest of the good scores and the thresholds: the
    # decision is made near them, and a defect scoring 10 times the threshold would squeeze it
    # into a corner. Scores beyond fall into the last bin, and its tick says so.
    near = float(np.max(np.r_[good, lines]))
    hi = max(min(float(np.max(np.r_[good, bad, lines])), SPAN * near) * 1.05, lo + 1e-9)
    clipped = bool((bad > hi).any())
    edges = np.linspace(lo, hi, BINS + 1)
    counts = [np.histogram(np.minimum(v, hi), edges)[0] for v in (good, bad)]
    # The y axis is set by the bins in range; a fuller last bin of clipped scores is cut at the
    # top and says its count.
    top = max(int(max(c[: -1 if clipped else None].max(initial=0) for c in counts)), 1)
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    x_of = _axis(image, lo, hi, top, clipped)
    for values, colour in zip(counts, (GOOD, DEFECT), strict=True):
        _bars(image, edges, values, top, colour, x_of)
    # Each line's label on the side away from the other line, a row higher where they would meet.
    previous_right = previous is not None and previous > threshold
    labelled: list[tuple[int, int]] = []
    if previous is not None:
        _vertical(image, x_of(previous), PREVIOUS, f"previous {previous:.4g}", previous_right, labelled)
    _vertical(image, x_of(threshold), THRESHOLD, f"threshold {threshold:.4g}", not previous_right, labelled)
    drawn = _choices(image, choices, threshold, x_of)
    failed = int((good >= threshold).sum())
    legend = [(f"{good_label}: {good.size}, {failed} at or over the threshold (rejected)", GOOD)]
    if bad.size:
        legend.append((f"{defect_label}: {bad.size}, {int((bad < threshold).sum())} under it (passed)", DEFECT))
    width = WIDTH - LEFT - 4
    cv2.putText(image, fitted(title, 0.55, width), (LEFT, 22), FONT, 0.55, TEXT, 1, cv2.LINE_AA)
    for i, (text, colour) in enumerate(legend):
        cv2.putText(image, fitted(text, 0.45, width), (LEFT, 44 + 18 * i), FONT, 0.45, colour, 1, cv2.LINE_AA)
    if drawn:
        said = f"dashed: --target-frr {', '.join(drawn)}"  # beside "image score", under the axis
        (tw, _), _ = cv2.getTextSize(said, FONT, 0.4, 1)
        cv2.putText(image, said, (WIDTH - RIGHT - tw, HEIGHT - 12), FONT, 0.4, CHOICE, 1, cv2.LINE_AA)
    return image


def _choices(
    image: np.ndarray, choices: Sequence[dict[str, float]], threshold: float, x_of: Callable[[float], int]
) -> list[str]:
    """The other targets' thresholds as dashed lines, each labelled inside the plot's top, left
    of its line (a higher target's threshold is lower: the label stays off the threshold's line),
    in the first row where it meets no label drawn before; targets of one threshold share a line
    ("3%, 5%"), and one equal to `threshold` (the fused maps often give 1% and 2% one) is not
    drawn again. -> the targets drawn, as "2%", the lowest first."""
    lines = _choice_lines(choices, threshold)
    labelled: list[tuple[int, int, int]] = []  # (left, right, row) of each label drawn
    for value, targets in sorted(lines, reverse=True):
        x, text = x_of(value), ", ".join(targets)
        dashed_line(image, x, TOP, HEIGHT - BOTTOM, CHOICE, 1)
        (tw, _), _ = cv2.getTextSize(text, FONT, 0.38, 1)
        left = max(x - 3 - tw, LEFT + 2)
        taken = {row for start, end, row in labelled if _meet((left, left + tw), (start, end))}
        row = min(set(range(len(labelled) + 1)) - taken)
        labelled.append((left, left + tw, row))
        cv2.putText(image, text, (left, TOP + 12 + 12 * row), FONT, 0.38, CHOICE, 1, cv2.LINE_AA)
    return [target for _, targets in lines for target in targets]


def _choice_lines(choices: Sequence[dict[str, float]], threshold: float) -> list[tuple[float, list[str]]]:
    """The other targets' thresholds, each with its targets ("2%"), the lowest target first; a
    target whose threshold is `threshold` is left out."""
    same = lambda a, b: abs(a - b) <= 1e-9 * max(1.0, abs(b))  # noqa: E731
    lines: list[tuple[float, list[str]]] = []
    for choice in sorted(choices, key=lambda c: c["target_frr"]):
        if same(choice["threshold"], threshold):
            continue
        target = f"{100 * choice['target_frr']:g}%"
        line = next((line for line in lines if same(choice["threshold"], line[0])), None)
        if line is None:
            lines.append((choice["threshold"], [target]))
        else:
            line[1].append(target)
    return lines


def dashed_line(image: np.ndarray, x: int, y0: int, y1: int, colour: Colour, thickness: int) -> None:
    """A vertical line at x from y0 to y1, in dashes of 4 pixels every 8."""
    for y in range(y0, y1, 8):
        cv2.line(image, (x, y), (x, min(y + 4, y1)), colour, thickness)


def _meet(label: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two labels' (left, right) pixel spans come closer than LABEL_GAP."""
    return label[0] < other[1] + LABEL_GAP and other[0] < label[1] + LABEL_GAP


def fitted(text: str, scale: float, width: int) -> str:
    """`text` as it fits in `width` pixels at `scale`: when it is too long, its middle (a long
    folder's path, mostly) is given up for "...", so that its start and its end, which say what
    the figure is of, both show."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):  # the characters of `text` kept beside "..."
        head = (keep + 1) // 2
        shown = text[:head] + "..." + text[len(text) - (keep - head) :]
        if cv2.getTextSize(shown, FONT, scale, 1)[0][0] <= width:
            return shown
    return "..."


def _axis(image: np.ndarray, lo: float, hi: float, top: int, clipped: bool):
    """The axes, five score ticks (the last "≥" when higher scores fall into the last bin) and
    the count at the top; -> score -> x pixel."""
    x0, x1, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM
    cv2.line(image, (x0, y1), (x1, y1), TEXT, 1)
    cv2.line(image, (x0, TOP), (x0, y1), TEXT, 1)

    def x_of(score: float) -> int:
        return int(round(x0 + (score - lo) / (hi - lo) * (x1 - x0)))

    ticks = np.linspace(lo, hi, 5)
    for tick in ticks:
        x = x_of(float(tick))
        cv2.line(image, (x, y1), (x, y1 + 4), TEXT, 1)
        text = f"{tick:.3g}" + (" and more" if clipped and tick == ticks[-1] else "")
        (tw, _), _ = cv2.getTextSize(text, FONT, 0.4, 1)
        cv2.putText(image, text, (min(x - 12, WIDTH - tw - 2), y1 + 18), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    cv2.putText(image, "image score", (WIDTH // 2 - 40, HEIGHT - 12), FONT, 0.45, TEXT, 1, cv2.LINE_AA)
    cv2.putText(image, str(top), (8, TOP + 5), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    cv2.putText(image, "0", (30, y1 + 4), FONT, 0.4, TEXT, 1, cv2.LINE_AA)
    return x_of


def _bars(
    image: np.ndarray, edges: np.ndarray, counts: np.ndarray, top: int, colour: Colour, x_of: Callable[[float], int]
) -> None:
    """One bar per non-empty bin, blended so that good and defect bars show through each other."""
    layer = image.copy()
    y1 = HEIGHT - BOTTOM
    cut = []  # (x, count) of bars taller than the axis
    for left, right, n in zip(edges[:-1], edges[1:], counts, strict=True):
        if n:
            y = int(round(y1 - min(n, top) / top * (y1 - TOP)))
            cv2.rectangle(layer, (x_of(left), y), (max(x_of(right) - 1, x_of(left)), y1 - 1), colour, -1)
            if n > top:
                cut.append((x_of(left), int(n)))
    cv2.addWeighted(layer, 0.6, image, 0.4, 0, dst=image)
    for x, n in cut:
        (tw, _), _ = cv2.getTextSize(str(n), FONT, 0.4, 1)
        cv2.putText(image, str(n), (min(x, WIDTH - tw - 2), TOP - 4), FONT, 0.4, colour, 1, cv2.LINE_AA)


def _vertical(
    image: np.ndarray, x: int, colour: Colour, text: str, right: bool, labelled: list[tuple[int, int]]
) -> None:
    """A full-height line at x, labelled above the plot on the side away from the other line
    (or the side there is room on); a row higher when the label would meet one of `labelled`
    (the labels drawn before, as (left, right) pixel spans), which it joins. Two thresholds near
    the picture's right edge put both labels on the left, one over the other."""
    cv2.line(image, (x, TOP - 4), (x, HEIGHT - BOTTOM), colour, 2)  # under the labels: none crosses one
    (tw, _), _ = cv2.getTextSize(text, FONT, 0.42, 1)
    if right and x + 5 + tw > WIDTH - 2:
        right = False
    elif not right and x - 5 - tw < 2:
        right = True
    left = x + 5 if right else x - 5 - tw
    meets = any(_meet((left, left + tw), span) for span in labelled)
    labelled.append((left, left + tw))
    cv2.putText(image, text, (left, TOP - 8 - LABEL_ROW * meets), FONT, 0.42, colour, 1, cv2.LINE_AA)
