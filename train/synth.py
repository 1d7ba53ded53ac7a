"""`vqad synth`: a deterministic synthetic benchmark in the MVTec AD layout.

Two categories, each written as CAT/train/good, CAT/test/<kind>, CAT/ground_truth/<kind>:
- `weave`: a colour woven texture (random phase and fibre noise in every image);
- `bracket`: a grey, rendered metal part on a dark background, aligned, with small pose
  jitter, a lighting gradient and brushed-metal grain.

Defect kinds: scratch, hole, stain, foreign, missing. Every defect is painted through
an explicit mask, and that mask is the ground truth, so it is exact. Contrasts are low
on purpose: a per-pixel Gaussian model of the good images should not find them easily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.frames import write_image

log = logging.getLogger(__name__)

DEFECT_KINDS = ("scratch", "hole", "stain", "foreign", "missing")
CATEGORIES = ("weave", "bracket")
# A painted defect: (the image with it, float32 H x W x C; where it is, bool H x W).
Defect = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SynthSpec:
    size: int = 256
    n_train: int = 160
    n_test_good: int = 40
    n_per_defect: int = 12


def _blurred_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered white noise, as strong at the frame's edge as inside.
    It is drawn 3 sigma wider on each side and cropped: blurred in the frame alone, the border's
    reflection made it 1.4 times as strong at an edge and twice at a corner, so that every good
    weave was most warped where no defect is painted."""
    pad = int(np.ceil(3 * sigma))
    wide = rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad)).astype(np.float32)
    n = cv2.GaussianBlur(wide, (0, 0), sigma)[pad : pad + shape[0], pad : pad + shape[1]]
    return (n - n.mean()) / (n.std() + 1e-6)


# -- good images ------------------------------------------------------------------------
def weave_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A woven colour texture, float32 (size, size, 3) BGR in [0, 255]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (256.0 / size)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    warp = 3.0 * _blurred_noise(rng, (size, size), 12 * size / 256)
    threads_x = np.sin(2 * np.pi * (xx + warp) / 8.0 + px)
    threads_y = np.sin(2 * np.pi * (yy - warp) / 8.0 + py)
    checker = np.sign(np.sin(np.pi * (xx + warp) / 8.0 + px) * np.sin(np.pi * (yy + warp) / 8.0 + py))
    weave = np.where(checker > 0, threads_x, threads_y)
    fibre = _blurred_noise(rng, (size, size), 0.8 * size / 256)
    shade = 1.0 + 0.04 * _blurred_noise(rng, (size, size), 40 * size / 256)
    lum = (120 + 22 * weave + 9 * fibre) * shade
    tint = np.array([0.80, 0.95, 1.10], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return np.clip(lum[:, :, None] * tint[None, None, :], 0, 255)


def bracket_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey rendered part with pose jitter, float32 (size, size, 1) in [0, 255]."""
    s = size / 256.0
    canvas = np.full((size, size), 28.0, np.float32)
    plate = np.zeros((size, size), np.uint8)
    cv2.rectangle(plate, (int(48 * s), int(64 * s)), (int(208 * s), int(192 * s)), 255, -1)
    cv2.circle(plate, (int(128 * s), int(64 * s)), int(40 * s), 255, -1)
    holes = np.zeros_like(plate)
    for cx, cy in ((80, 160), (176, 160)):
        cv2.circle(holes, (int(cx * s), int(cy * s)), int(12 * s), 255, -1)
    boss = np.zeros_like(plate)
    cv2.circle(boss, (int(128 * s), int(96 * s)), int(26 * s), 255, -1)
    slot = np.zeros_like(plate)
    cv2.rectangle(slot, (int(100 * s), int(168 * s)), (int(156 * s), int(176 * s)), 255, -1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = rng.uniform(0.92, 1.08) * (
        1.0 + rng.uniform(-0.08, 0.08) * (xx - 0.5) + rng.uniform(-0.08, 0.08) * (yy - 0.5)
    )
    grain = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigmaX=6 * s, sigmaY=0.5 * s)
    grain = grain / (grain.std() + 1e-6)
    metal = (150 + 7 * grain) * light
    canvas = np.where(plate > 0, metal, canvas)
    canvas = np.where(boss > 0, metal * 1.12 + 6, canvas)
    canvas = np.where(slot > 0, metal * 0.7, canvas)
    canvas = np.where(holes > 0, 20.0, canvas)
    # Pose jitter: the part is aligned by fixtures, but only to a few pixels and degrees.
    angle = rng.uniform(-2.5, 2.5)
    shift = rng.uniform(-3, 3, 2) * s
    M = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    M[:, 2] += shift
    canvas = cv2.warpAffine(canvas, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.7 * s) + rng.normal(0, 2.0, (size, size)).astype(np.float32)
    return np.clip(canvas, 0, 255)[:, :, None]


def part_region(image: np.ndarray) -> np.ndarray:
    """Where the part is (bright metal), to place defects on it rather than on background."""
    return image[:, :, 0] > 90 if image.shape[2] == 1 else image.mean(axis=2) > 90


# -- defects: each returns (new image, exact mask) ----------------------------------------
def _centre(rng: np.random.Generator, allowed: np.ndarray, margin: int) -> tuple[int, int]:
    size = allowed.shape[0]
    inner = np.zeros_like(allowed)
    inner[margin:-margin, margin:-margin] = allowed[margin:-margin, margin:-margin]
    ys, xs = np.nonzero(inner)
    if len(ys) == 0:
        return size // 2, size // 2
    i = rng.integers(len(ys))
    return int(xs[i]), int(ys[i])


def _blend(image: np.ndarray, mask: np.ndarray, target: np.ndarray, alpha: np.ndarray | float = 1.0) -> np.ndarray:
    m = (mask.astype(np.float32) * alpha)[:, :, None]
    return image * (1 - m) + target * m


def scratch(rng: np.random.Generator, image: np.ndarray, allowed: np.ndarray) -> Defect:
    size = image.shape[0]
    s = size / 256
    mask = np.zeros((size, size), np.uint8)
    x, y = _centre(rng, allowed, int(30 * s))
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(25, 50) * s
    pts = []
    for t in np.linspace(-0.5, 0.5, 8):
        bend = 4 * s * np.sin(3 * t + rng.uniform(0, 1))
        pts.append(
            (
                x + t * length * np.cos(angle) - bend * np.sin(angle),
                y + t * length * np.sin(angle) + bend * np.cos(angle),
            )
        )
    cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, thickness=max(1, int(round(rng.uniform(2.0, 3.0) * s))))
    sign = rng.choice([-1, 1])
    return _blend(image, mask > 0, image + sign * rng.uniform(28, 40)), mask > 0


def hole(rng: np.random.Generator, image: np.ndarray, allowed: np.ndarray) -> Defect:
    size = image.shape[0]
    s = size / 256
    mask = np.zeros((size, size), np.uint8)
    x, y = _centre(rng, allowed, int(20 * s))
    r = max(2, int(rng.uniform(5, 9) * s))
    cv2.circle(mask, (x, y), r, 1, -1)
    yy, xx = np.mgrid[0:size, 0:size]
    depth = 0.4 + 0.6 * np.clip(1 - ((xx - x) ** 2 + (yy - y) ** 2) / (r * r + 1e-6), 0, 1)[:, :, None]
    return _blend(image, mask > 0, image * (1 - 0.35 * depth) - 10 * depth), mask > 0


def stain(rng: np.random.Generator, image: np.ndarray, allowed: np.ndarray) -> Defect:
    size = image.shape[0]
    s = size / 256
    x, y = _centre(rng, allowed, int(30 * s))
    blob = np.zeros((size, size), np.float32)
    axes = (int(rng.uniform(8, 16) * s), int(rng.uniform(6, 12) * s))
    cv2.ellipse(blob, (x, y), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), 3 * s)
    blob = blob / (blob.max() + 1e-6)
    mask = blob > 0.5
    shift = rng.uniform(12, 20) * (np.array([1.0, 0.6, -0.4]) if image.shape[2] == 3 else np.array([1.0]))
    target = image + rng.choice([-1, 1]) * shift[None, None, :].astype(np.float32)
    return _blend(image, np.ones_like(mask), target, blob), mask


def foreign(rng: np.random.Generator, image: np.ndarray, allowed: np.ndarray) -> Defect:
    size = image.shape[0]
    s = size / 256
    x, y = _centre(rng, allowed, int(24 * s))
    mask = np.zeros((size, size), np.uint8)
    pts = np.array(
        [
            [x + rng.uniform(6, 14) * s * np.cos(a), y + rng.uniform(6, 14) * s * np.sin(a)]
            for a in np.sort(rng.uniform(0, 2 * np.pi, 6))
        ],
        np.int32,
    )
    cv2.fillPoly(mask, [pts], 1)
    local = image[mask > 0].mean(axis=0)
    fibres = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.5 * s)
    fibres = fibres / (fibres.std() + 1e-6)
    target = local[None, None, :] + 14 * fibres[:, :, None]
    return _blend(image, mask > 0, target), mask > 0


def missing(
    rng: np.random.Generator, image: np.ndarray, allowed: np.ndarray, background: float | None = None
) -> Defect:
    size = image.shape[0]
    s = size / 256
    x, y = _centre(rng, allowed, int(24 * s))
    mask = np.zeros((size, size), np.uint8)
    w, h = rng.uniform(8, 14, 2) * s
    rect = ((x, y), (w, h), rng.uniform(0, 180))
    cv2.fillPoly(mask, [cv2.boxPoints(rect).astype(np.int32)], 1)
    if background is None:  # a texture: the threads are gone, the backing shows through
        fill = np.full_like(image, 0) + cv2.GaussianBlur(image, (0, 0), 6 * s).reshape(image.shape) * 0.85
    else:  # a part: a chunk broken out, background visible
        fill = np.full_like(image, background) + rng.normal(0, 2.0, image.shape).astype(np.float32)
    return _blend(image, mask > 0, fill), mask > 0


DefectFn = Callable[[np.random.Generator, np.ndarray, np.ndarray], Defect]


def _category(
    name: str,
) -> tuple[Callable[[np.random.Generator, int], np.ndarray], Callable[[np.ndarray], np.ndarray], dict[str, DefectFn]]:
    if name == "weave":
        defects: dict[str, DefectFn] = {
            "scratch": scratch,
            "hole": hole,
            "stain": stain,
            "foreign": foreign,
            "missing": missing,
        }
        return weave_image, lambda img: np.ones(img.shape[:2], bool), defects
    if name == "bracket":
        defects = {
            "scratch": scratch,
            "hole": hole,
            "stain": stain,
            "foreign": foreign,
            "missing": lambda r, i, a: missing(r, i, a, background=28.0),
        }
        return bracket_image, part_region, defects
    raise ValueError(f"unknown synth category {name!r}; known: {', '.join(CATEGORIES)}")


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.clip(image + 0.5, 0, 255).astype(np.uint8))


def synth_category(out: Path, name: str, seed: int, spec: SynthSpec) -> dict[str, int]:
    """Write one category; returns image counts by split/kind."""
    render, allowed_fn, defects = _category(name)
    # One independent stream per (category, split, index), so counts never shift other images.
    base = np.random.SeedSequence([seed, CATEGORIES.index(name) if name in CATEGORIES else 99])
    streams = iter(base.spawn(spec.n_train + spec.n_test_good + len(defects) * spec.n_per_defect))
    root = out / name
    counts = {}
    for i in range(spec.n_train):
        _write(root / "train" / "good" / f"{i:03d}.png", render(np.random.default_rng(next(streams)), spec.size))
    counts["train/good"] = spec.n_train
    for i in range(spec.n_test_good):
        _write(root / "test" / "good" / f"{i:03d}.png", render(np.random.default_rng(next(streams)), spec.size))
    counts["test/good"] = spec.n_test_good
    for kind, fn in defects.items():
        for i in range(spec.n_per_defect):
            rng = np.random.default_rng(next(streams))
            image = render(rng, spec.size)
            defective, mask = fn(rng, image, allowed_fn(image))
            _write(root / "test" / kind / f"{i:03d}.png", defective)
            _write(root / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.float32) * 255)
        counts[f"test/{kind}"] = spec.n_per_defect
    return counts


def synth(
    out: str | Path, seed: int = 0, spec: SynthSpec | None = None, categories: tuple[str, ...] = CATEGORIES
) -> dict[str, dict[str, int]]:
    """Write every category under `out`. Deterministic for a given seed and spec."""
    spec = spec or SynthSpec()
    out = Path(out)
    return {name: synth_category(out, name, seed, spec) for name in categories}
