"""The inspection mask: the parts of the frame a package's decision leaves out.

A quality engineer names what is not the product's to judge: a date code or serial number
printed anew on each part, a label, the conveyor beside the part. The graph's map is left as
it is (its parity proof holds); its ignored pixels are zeroed and the score is the map's
maximum over the rest, once, here, for every consumer of the graph: the daemon, `vqad score`
and `vqad calibrate`. The mask and the threshold are set together (`vqad calibrate --ignore`):
a threshold over masked scores means nothing without its mask, and the other way round.

The mask is kept in the package as a PNG at the model's input size (255 inspected, 0 left
out), named by its content (`inspect_mask-<sha>.png`), so that a new one is written beside
the old and model.json switches to it in one replace: a power cut leaves one or the other.
model.json's `inspection` says where it came from; `files` holds its sha256, checked at load.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.backends import Backend
from edge.durable import sync_folders, write_synced
from edge.errors import DataError, PackageError
from edge.frames import find_images, read_image
from edge.overlay import as_bgr, draw_ignored
from edge.package import ModelPackage, load_package
from edge.recent import RecentDict

log = logging.getLogger(__name__)

MASK_PREFIX = "inspect_mask-"

# A mask that leaves less than this share of the scored frame inspected is refused: what is
# left would be a few pixels' verdict on a whole part, and such a mask is a mistake (a
# rectangle given as X,Y,X2,Y2 where X,Y,W,H was meant, a mask image drawn the other way round).
LEAST_INSPECTED = 0.05


@dataclass(frozen=True)
class InspectionMask:
    """keep: (H, W) bool at the model's input size, True where the map is inspected. `border`:
    the map's unscored margin (model.json scoring.border), which shows its nearest scored
    pixel and never adds to the score."""

    keep: np.ndarray
    border: int
    sha256: str

    @cached_property  # computed once: apply() runs on every batch
    def scored(self) -> np.ndarray:
        """(H, W) bool: the pixels the score is the maximum over (kept, inside the margin)."""
        inner = np.zeros_like(self.keep)
        b = self.border
        inner[b : inner.shape[0] - b, b : inner.shape[1] - b] = True
        return self.keep & inner

    @cached_property
    def unscored(self) -> np.ndarray:
        """(H, W) float32: 0 where the score is taken, -inf elsewhere (added to a map, its maximum
        is the scored pixels')."""
        return np.where(self.scored, 0.0, -np.inf).astype(np.float32)

    @cached_property
    def drawn(self) -> np.ndarray:
        """(H, W) float32: 1 where the map is shown, 0 where it is left out. The margin follows
        the scored pixel it repeats."""
        b = self.border
        if b == 0:
            return self.keep.astype(np.float32)
        inner = self.keep[b:-b, b:-b].astype(np.float32)
        return np.pad(inner, b, mode="edge")

    @cached_property  # computed once: each heartbeat carries it
    def png_base64(self) -> str:
        """The mask as the heartbeat carries it (`inspection.mask_png`): its PNG (255 judged, 0
        left out, at the model's input size) in base64."""
        return base64.b64encode(mask_png(self.keep)).decode("ascii")

    @property
    def inspected_share(self) -> float:
        """The share of the scored frame that is inspected."""
        b = self.border
        return float(self.keep[b : self.keep.shape[0] - b, b : self.keep.shape[1] - b].mean())

    def apply(self, maps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's (maps (N, 1, H, W), scores (N,)) -> the same with the ignored pixels
        zeroed and each score the maximum over the inspected ones. A score the graph could not
        give (NaN, infinity: a broken engine) stays as it was, so the frame is still an error."""
        if maps.shape[-2:] != self.keep.shape:
            raise PackageError(f"the inspection mask is {self.keep.shape} but the map is {maps.shape[-2:]}")
        masked = maps * self.drawn  # (N, 1, H, W)
        inspected = (maps[:, 0] + self.unscored).max(axis=(1, 2))  # (N,): a sum, 20x a boolean index's speed
        return masked.astype(maps.dtype, copy=False), np.where(np.isfinite(scores), inspected, scores)


class MaskedBackend:
    """A backend whose maps and scores pass through an inspection mask."""

    def __init__(self, backend: Backend, mask: InspectionMask):
        self.backend, self.mask = backend, mask
        self.name, self.max_batch = backend.name, backend.max_batch

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.mask.apply(*self.backend.infer(frames))

    def close(self) -> None:
        self.backend.close()


def masked(backend: Backend, mask: InspectionMask | None) -> Backend:
    """`backend`, its outputs masked when the package has a mask."""
    return backend if mask is None else MaskedBackend(backend, mask)


# -- the package's mask -------------------------------------------------------------------
def load_mask(pkg: ModelPackage) -> InspectionMask | None:
    """The package's inspection mask (model.json `inspection`), its file checked against its
    sha256; None when the package inspects the whole frame. PackageError when the file is
    missing, altered or of another size than the input."""
    inspection = pkg.meta.get("inspection")
    if not inspection:
        return None
    name = str(inspection.get("file", ""))
    try:
        path = pkg.verify(name)  # as each graph is: listed, there, and its sha256 model.json's
    except PackageError as exc:
        why = f"the inspection mask does not match its sha256 in model.json, or is missing: {exc}"
        raise PackageError(why) from exc
    keep = read_image(path)
    if keep.ndim != 2 or keep.shape != pkg.image_size:
        raise PackageError(f"the inspection mask {path} is {keep.shape}, the model's input {pkg.image_size}")
    return InspectionMask(keep > 0, border_of(pkg.meta), pkg.files[name])


def border_of(meta: dict[str, Any]) -> int:
    """The map's unscored margin, in pixels (model.json scoring.border; 0 where not said)."""
    return int(meta.get("scoring", {}).get("border", 0))


def parse_rectangle(text: str) -> tuple[int, int, int, int]:
    """'X,Y,W,H' (pixels of the frame: left, top, width, height) -> the four ints; ValueError
    with the reason (argparse says it at the flag)."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r}: give X,Y,W,H in the frame's pixels, e.g. 40,10,120,30") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"{text!r}: X and Y from 0, W and H above 0")
    return x, y, w, h


def keep_from_rectangles(
    rectangles: Sequence[tuple[int, int, int, int]], frame_hw: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """(H, W) bool at the model's `size`: False on every model pixel that a rectangle of the
    frame (of `frame_hw`) touches, so nothing of what was named is inspected. DataError for a
    rectangle outside the frame."""
    fh, fw = frame_hw
    keep = np.ones(size, bool)
    for x, y, w, h in rectangles:
        if x >= fw or y >= fh:
            raise DataError(f"--ignore {x},{y},{w},{h} starts outside the {fw}x{fh} (WxH) frames")
        x1, y1 = min(x + w, fw), min(y + h, fh)
        top, bottom = int(np.floor(y * size[0] / fh)), int(np.ceil(y1 * size[0] / fh))
        left, right = int(np.floor(x * size[1] / fw)), int(np.ceil(x1 * size[1] / fw))
        keep[top:bottom, left:right] = False
    return keep


def keep_outside(box: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool at the model's `size`: False on every model pixel that the (top, left, bottom,
    right) fraction `box` of the frame touches."""
    h, w = size
    keep = np.ones((h, w), bool)
    rows = slice(int(np.floor(box[0] * h)), int(np.ceil(box[2] * h)))
    keep[rows, int(np.floor(box[1] * w)) : int(np.ceil(box[3] * w))] = False
    return keep


# A mask image and the frames differ in aspect by more than this: it was drawn on another
# camera's frame, or a crop of one, and would leave out other parts than the ones drawn. 2%
# passes a frame scaled to whole pixels (1280x1024 drawn at 500x400 is 0.0%, at 501x400 0.2%).
ASPECT_TOLERANCE = 0.02


def keep_from_image(path: Path, size: tuple[int, int], frames: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """(H, W) bool at the model's `size` from a mask image of the frame (any size of the same
    aspect; black left out, anything brighter inspected): a model pixel is inspected only where
    all of the image under it is. `frames`: the frames' (H, W); DataError where the image's
    aspect is not theirs."""
    try:
        image = read_image(path)
    except DataError as exc:
        raise DataError(f"--mask {path}: {exc}") from exc
    check_aspect(path, image.shape[:2], frames)
    grey = image if image.ndim == 2 else image.max(axis=2)
    inspected = (grey > 0).astype(np.float32)
    area = cv2.resize(inspected, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return area >= 1.0 - 1e-6


def check_aspect(path: Path, mask_hw: tuple[int, int], frames: Sequence[tuple[int, int]]) -> None:
    """DataError when the mask image at `path`, of (H, W) `mask_hw`, is not of every frame
    size's aspect."""
    mh, mw = mask_hw
    for fh, fw in sorted(set(frames)):
        if abs((mw / mh) / (fw / fh) - 1.0) > ASPECT_TOLERANCE:
            raise DataError(
                f"--mask {path} is {mw}x{mh} (WxH), not of the aspect of the {fw}x{fh} good images: draw the mask "
                "on one of the camera's frames, whole, at its size or scaled"
            )


def check_keep(keep: np.ndarray, border: int, what: str) -> InspectionMask:
    """An InspectionMask of `keep`; DataError when it leaves less than LEAST_INSPECTED of the
    scored frame inspected."""
    mask = InspectionMask(keep, border, mask_digest(keep))
    if mask.inspected_share < LEAST_INSPECTED:
        raise DataError(
            f"{what} leaves {mask.inspected_share:.1%} of the frame inspected (at least {LEAST_INSPECTED:.0%}): "
            "the rectangles are X,Y,W,H, and a mask image is black where the frame is left out"
        )
    return mask


@dataclass(frozen=True)
class MaskRequest:
    """What `vqad calibrate` was asked of the mask: rectangles of the frame to leave out, a mask
    image, or the whole frame inspected again."""

    rectangles: tuple[tuple[int, int, int, int], ...] = ()
    image: Path | None = None
    whole_frame: bool = False

    def __post_init__(self) -> None:
        if sum((bool(self.rectangles), self.image is not None, self.whole_frame)) > 1:
            raise DataError("--ignore, --mask and --inspect-all each set the mask: give one of them")


def requested_mask(
    request: MaskRequest, pkg: ModelPackage, shapes: Sequence[tuple[int, int]]
) -> tuple[InspectionMask | None, dict[str, Any] | None]:
    """The mask `request` asks for on `pkg`, and how it was given (model.json's `inspection`
    less the file); (None, None) for the whole frame. `shapes`: the calibration images' (H, W),
    the frame the rectangles are in: all one size, else a DataError."""
    if request.whole_frame:
        return None, None
    border = border_of(pkg.meta)
    if request.image is not None:
        keep = keep_from_image(request.image, pkg.image_size, shapes)
        return check_keep(keep, border, f"--mask {request.image}"), {"image": str(request.image.resolve())}
    sizes = sorted(set(shapes))
    if len(sizes) != 1:
        named = ", ".join(f"{w}x{h}" for h, w in sizes[:4])
        raise DataError(
            f"the good images are of {len(sizes)} sizes ({named}, WxH): --ignore's pixels are a frame's, so "
            "calibrate on the camera's own frames, or give a --mask image"
        )
    keep = keep_from_rectangles(request.rectangles, sizes[0], pkg.image_size)
    rects = " ".join(f"{x},{y},{w},{h}" for x, y, w, h in request.rectangles)
    how = {"rectangles": [list(r) for r in request.rectangles], "frame": list(sizes[0])}
    return check_keep(keep, border, f"--ignore {rects}"), how


def with_mask(root: Path, meta: dict[str, Any], mask: InspectionMask | None, how: dict[str, Any] | None) -> str | None:
    """model.json's `meta` with `mask` as its inspection mask (its file written into `root`
    first) or none -> the mask file's name (None for none). The caller writes model.json, then
    removes the other mask files (remove_unnamed_masks)."""
    files = {k: v for k, v in meta["files"].items() if not k.startswith(MASK_PREFIX)}
    meta.pop("inspection", None)
    if mask is None:
        meta["files"] = files
        return None
    name = write_mask(root, mask)
    meta["files"] = {**files, name: mask.sha256}
    # How it was given: rectangles and the frame size they are in, or a mask image.
    meta["inspection"] = {"file": name, "inspected_share": mask_note(mask)["inspected_share"], **(how or {})}
    return name


def mask_png(keep: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", np.where(keep, 255, 0).astype(np.uint8))
    if not ok:
        raise PackageError("the inspection mask could not be encoded")
    return png.tobytes()


def mask_digest(keep: np.ndarray) -> str:
    return hashlib.sha256(mask_png(keep)).hexdigest()


def write_mask(root: Path, mask: InspectionMask) -> str:
    """Write `mask` into the package at `root` under its content's name (synced, the folder
    too), before model.json names it -> the file name."""
    name = f"{MASK_PREFIX}{mask.sha256[:16]}.png"
    write_synced(root / name, mask_png(mask.keep))
    sync_folders([root])
    return name


def remove_unnamed_masks(root: Path, named: str | None) -> None:
    """Remove the package's mask files other than `named` (model.json's, after it is replaced)."""
    for path in root.glob(f"{MASK_PREFIX}*.png"):
        if path.name != named:
            path.unlink(missing_ok=True)


def mask_note(mask: InspectionMask | None) -> dict[str, Any]:
    """What a threshold says of the mask it was calibrated through (model.json threshold.inspection)."""
    if mask is None:
        return {"mask_sha256": None, "inspected_share": 1.0}
    return {"mask_sha256": mask.sha256, "inspected_share": round(mask.inspected_share, 4)}


def mask_given(inspection: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a package's inspection mask was given, from model.json's `inspection`: the rectangles
    (X,Y,W,H) and the frame (H, W) they are in, or the mask image's path; None for none. A new
    `--ignore` replaces the mask, so a command that adds a rectangle gives these too."""
    if not inspection:
        return None
    if "rectangles" in inspection:
        return {"rectangles": inspection["rectangles"], "frame": inspection["frame"]}
    return {"image": inspection.get("image")}


def rectangles_words(given: dict[str, Any]) -> str:
    """A mask's rectangles in `--ignore`'s words, with the frame they are in (mask_given's
    {"rectangles", "frame"}): "X,Y,W,H 0,180,256,76 40,10,8,8 of 256x256 (WxH) frames"."""
    rects = " ".join(",".join(str(v) for v in r) for r in given["rectangles"])
    h, w = given["frame"]
    return f"X,Y,W,H {rects} of {w}x{h} (WxH) frames"


def mask_file(meta: dict[str, Any]) -> str | None:
    """The file of a package's inspection mask (model.json; named by its content), None for none."""
    return (meta.get("inspection") or {}).get("file")


def judged_words(note: dict[str, Any] | None) -> str:
    """What of the frame a decision judges, in words, from model.json's `inspection` or a
    mask_note: "the whole frame", or "97.1% of the frame (inspection mask)"."""
    share = (note or {}).get("inspected_share")
    if not note or not (note.get("file") or note.get("mask_sha256")) or not isinstance(share, int | float):
        return "the whole frame"
    return f"{share:.1%} of the frame (inspection mask)"


# The masks a subscriber keeps: one per package a followed daemon served since it started.
MASKS_KEPT = 16


class StreamMasks:
    """A subscriber's inspection masks, learnt from the daemons' heartbeats (`inspection.mask_png`)
    by their sha256, which each streamed result names (`model.mask_sha256`): a picture of the
    result hatches what its decision left out. Thread-safe: a feed learns, pages draw."""

    def __init__(self) -> None:
        self._keeps: RecentDict[str, np.ndarray] = RecentDict(MASKS_KEPT)
        self._lock = threading.Lock()

    def learn(self, heartbeat: dict[str, Any]) -> None:
        """Keep the mask a heartbeat carries (a mask that cannot be read is logged and left out:
        its results are drawn unhatched)."""
        note = heartbeat.get("inspection") or {}
        sha, png = note.get("mask_sha256"), note.get("mask_png")
        if not isinstance(sha, str) or not isinstance(png, str):
            return
        with self._lock:
            if sha in self._keeps:
                return
        try:
            keep = cv2.imdecode(np.frombuffer(base64.b64decode(png, validate=True), np.uint8), cv2.IMREAD_GRAYSCALE)
        except (binascii.Error, cv2.error):
            keep = None
        if keep is None:
            log.warning("a heartbeat's inspection mask %s… is not a PNG: its results are drawn without it", sha[:12])
            keep = np.ones((1, 1), np.uint8)  # asked for once, not at every heartbeat
        with self._lock:
            self._keeps[sha] = keep > 0

    def of(self, header: dict[str, Any]) -> tuple[bool, np.ndarray | None]:
        """A streamed result's mask: (known, keep), keep (H, W) bool (True where judged) or None
        for a result judged on its whole frame; known False while the heartbeat that carries its
        mask has not come."""
        sha = (header.get("model") or {}).get("mask_sha256")
        if not sha:
            return True, None
        with self._lock:
            keep = self._keeps.get(sha)
        return keep is not None, keep


def backdrop(root: Path, good_dir: Path) -> tuple[InspectionMask | None, np.ndarray]:
    """What a calibration's pictures are drawn over: the package's inspection mask (None: the
    whole frame) and the first good image under `good_dir`, BGR at its own size. Raises
    DataError, PackageError, OSError or IndexError (no image) where it cannot."""
    pkg = load_package(root)
    return load_mask(pkg), as_bgr(read_image(find_images(good_dir)[0], pkg.pixel_bits))


def inspection_picture(root: Path, good_dir: Path) -> Path | None:
    """ROOT/inspection.png: the package's mask over the first good image under `good_dir`, at the
    image's own size -> its path; None (and a warning) where it cannot be drawn or written: the
    mask and the threshold are saved by then, and stand."""
    path = root / "inspection.png"
    try:
        mask, picture = backdrop(root, good_dir)
        if mask is None or not cv2.imwrite(str(path), draw_ignored(picture, mask.keep)):
            return None
    except (DataError, PackageError, OSError, IndexError, cv2.error) as exc:
        log.warning("the inspection mask is saved; its picture could not be drawn to %s: %s", path, exc)
        return None
    return path
