"""The MVTec AD layout for one category, read and checked before any training starts.

    CAT/train/good/*                      defect-free training images
    CAT/test/<kind>/*                     test images; `good` is one kind
    CAT/ground_truth/<kind>/<stem>_mask.png   (or <stem>.png, or a folder <stem>/ of masks)

Images (PNG, JPEG, BMP; colour or grey; any size) go through edge.frames.to_model_input,
the same function the daemon uses. Masks are resized with nearest neighbour.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import DataError
from edge.frames import (
    IMAGE_KINDS,
    PIXEL_BITS,
    InputFormat,
    Size,
    find_images,
    is_hidden,
    is_image,
    list_images,
    load_images,
    named_few,
    read_image,
    resize_mask,
    unreadable_message,
)
from edge.recalibrate import fingerprints, identical_files
from edge.threshold import MIN_CALIBRATION_IMAGES
from train.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestSample:
    path: Path
    kind: str
    name: str  # the image's path under its kind's folder, without suffix: `001`, `day1/001`
    image: np.ndarray  # (H, W, C) uint8 at the model input size
    mask: np.ndarray | None  # (H, W) bool, None for a defect image with no mask
    label: int  # 0 good, 1 defect


# The folders a category needs, as the error for a missing one shows them.
LAYOUT = "CATEGORY/train/good/ (defect-free images), and for eval CATEGORY/test/good/, CATEGORY/test/<defect kind>/"


def _require_dir(path: Path, what: str, category: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"missing {what} folder: {path} (a category's layout: {LAYOUT}){category_hint(category)}")
    return path


def category_hint(category: str | Path) -> str:
    """A hint when CATEGORY was given as one of its own folders (`bracket/train/good` for
    `bracket`), the commonest slip with this layout, as the folder of categories (`data` for
    `data/bracket`, as `vqad synth` writes them), or as a training run or a model package (the
    arguments mixed up); "" when none is so."""
    run, package = (Path(category) / "checkpoint.pt").is_file(), (Path(category) / "model.json").is_file()
    if run or package:
        what = "a training run" if run else "a model package"
        return f"; {category} is {what}, not a data folder: CATEGORY comes first (vqad train CATEGORY --out RUN_DIR)"
    for above in list(Path(category).resolve().parents)[:2]:
        if (above / "train" / "good").is_dir():
            return f"; did you mean {above}?"
    try:
        inside = sorted(sub for sub in Path(category).iterdir() if (sub / "train" / "good").is_dir())
    except OSError:  # not a folder, or not readable: the error above says what is missing
        return ""
    if not inside:
        return ""
    more = f" (or one of {len(inside) - 3} more)" if len(inside) > 3 else ""
    return f"; it holds categories: did you mean {' or '.join(map(str, inside[:3]))}{more}?"


def train_image_paths(category: str | Path) -> list[Path]:
    """Sorted image paths under CAT/train/good, its subfolders too (a line's good images kept by
    day or by batch), as `vqad calibrate` reads its folder; DataError when the folder is missing
    or holds none."""
    folder = _require_dir(Path(category) / "train" / "good", "training", Path(category))
    paths = find_images(folder)
    if not paths:
        raise DataError(f"no images ({IMAGE_KINDS}) in {folder}")
    return paths


# Training keeps at least this share of the good images: the held-out set grows towards
# train.min_val_images only while it does. A 10-minute CPU training (about 1,450 steps of 16)
# shows each of 170-200 images 100-120 times: image AUROC on three real sets and two synth
# categories moved within the seeds' spread against the 15% split (docs/decisions.md).
MIN_TRAIN_SHARE = 2 / 3
# The golden template measures each pixel's spread over the training images: two at least.
MIN_TRAIN_IMAGES = 2


def validation_count(n_images: int, val_fraction: float, min_val_images: int = 0) -> int:
    """How many of `n_images` good images to hold out for calibration: `val_fraction` of them
    (at least the MIN_CALIBRATION_IMAGES a threshold needs, and never more than leave training
    its MIN_TRAIN_IMAGES), or more, up to `min_val_images`, while training keeps MIN_TRAIN_SHARE."""
    by_fraction = max(MIN_CALIBRATION_IMAGES, int(round(val_fraction * n_images)))
    by_fraction = min(by_fraction, max(MIN_CALIBRATION_IMAGES, n_images - MIN_TRAIN_IMAGES))
    room = n_images - math.ceil(MIN_TRAIN_SHARE * n_images)
    return max(by_fraction, min(min_val_images, room))


def split_train_val(
    paths: list[Path],
    val_fraction: float,
    seed: int,
    min_val_images: int = 0,
    prints: Sequence[str] | None = None,
    trained_on: Collection[str] = (),
) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded random validation set of the good images: `validation_count` of the
    different ones. Copies of one image (equal files: a part saved twice, a folder copied twice,
    a camera's blank frame) are trained on, not held out: a held-out copy of a training image
    scores as the model learned it, not as a new part, and says nothing of the threshold. Only
    when too few images have no copy are whole sets of copies held out. So are the images whose
    fingerprint is in `trained_on`: those that the weights a fine-tune starts from were trained
    on (`prints`: the fingerprints of `paths`, when already read). Without copies or such images
    the split is the plain seeded one."""
    if len(paths) < MIN_TRAIN_IMAGES + MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"need at least {MIN_TRAIN_IMAGES + MIN_CALIBRATION_IMAGES} good training images: "
            f"{MIN_TRAIN_IMAGES} to train on (the golden template's spread) and {MIN_CALIBRATION_IMAGES} "
            f"held out to calibrate the threshold; got {len(paths)}"
        )
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(paths))]
    if trained_on and prints is None:
        prints = fingerprints(paths)
    copies = identical_files(paths, prints)
    different = len(paths) - sum(len(g) - 1 for g in copies)
    if different < MIN_TRAIN_IMAGES + MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"the {len(paths)} good training images hold {different} different ones: too few to train on "
            f"{MIN_TRAIN_IMAGES} and hold out {MIN_CALIBRATION_IMAGES} others"
        )
    if copies:
        log.warning(
            "%d of %d good training images %s of another (e.g. %s and %s): copies are trained on, "
            "not held out to calibrate the threshold",
            len(paths) - different, len(paths), "is a copy" if len(paths) - different == 1 else "are copies",
            paths[copies[0][0]], paths[copies[0][1]],
        )  # fmt: skip
    n_val = validation_count(different, val_fraction, min_val_images)
    group_of = {i: g for g in copies for i in g}
    seen = {i for i, p in enumerate(prints or ()) if p in trained_on}
    held = [i for i in order if i not in group_of and i not in seen][:n_val]
    for i in order:  # too few without a copy: whole sets of copies, while training keeps its minimum
        group = group_of.get(i, [])
        fits = len(paths) - len(held) - len(group) >= MIN_TRAIN_IMAGES and not seen.intersection(group)
        if len(held) < n_val and group and i == group[0] and fits:
            held += group
    if seen:
        held = _held_out_of_seen(held, n_val, [i for i in order if i in seen and i not in group_of], len(paths))
    val = sorted(paths[i] for i in held)
    train = sorted(set(paths) - set(val))
    return train, val


def _held_out_of_seen(held: list[int], n_val: int, seen: list[int], n_paths: int) -> list[int]:
    """`held`, the images held out that the source weights of a fine-tune were not trained on,
    topped up from `seen` (those they were, in the seeded order) only to the
    MIN_CALIBRATION_IMAGES a threshold needs; each shortfall logged."""
    if len(held) >= n_val:
        log.info("%d of %d good images were trained on by the weights the fine-tune starts from: not held out",
                 len(seen), n_paths)  # fmt: skip
        return held
    short = max(0, MIN_CALIBRATION_IMAGES - len(held))
    log.warning(
        "the weights the fine-tune starts from were trained on all but %d of the %d good images: %d held out to "
        "calibrate the threshold, not %d%s; recalibrate on the line's good images (vqad calibrate)",
        len(held), n_paths, len(held) + short, n_val,
        f", {short} of them trained on, which score lower than a new part" if short else "",
    )  # fmt: skip
    return held + seen[:short]


def mask_files(folder: Path, image_names: Collection[str] = ()) -> dict[str, list[Path]]:
    """The masks in one `ground_truth/<kind>` folder, by the name of the test image they belong
    to (TestSample.name), in the three layouts public sets use: `<stem>_mask.png` (MVTec AD),
    `<stem>.png` (VisA, BTAD) and a folder `<stem>/` of masks whose union is the defect (MVTec
    LOCO). Any image suffix. A subfolder that `image_names` have images under (`day1/` for
    `day1/001`) holds masks by the same layouts. Empty when the folder is missing."""
    if not folder.is_dir():
        return {}
    found: dict[str, list[Path]] = {}
    _find_masks(folder, "", frozenset(image_names), found)
    plain = {name: paths for name, paths in found.items() if paths and not name.endswith("_mask")}
    # `<stem>_mask` wins over `<stem>`: a set holding both spellings is read as MVTec AD.
    return plain | {
        name.removesuffix("_mask"): paths for name, paths in found.items() if name.endswith("_mask") and paths
    }


def _find_masks(folder: Path, prefix: str, image_names: frozenset[str], found: dict[str, list[Path]]) -> None:
    """Add the masks in `folder` (named `prefix` + each file's stem) to `found`; a subfolder is
    searched the same way when some image name lies under it, else it is one image's masks."""
    for path in sorted(folder.iterdir()):
        if is_hidden(path.name):
            continue
        if path.is_dir() and any(name.startswith(f"{prefix}{path.name}/") for name in image_names):
            _find_masks(path, f"{prefix}{path.name}/", image_names, found)
        elif path.is_dir():
            found.setdefault(prefix + path.name, []).extend(list_images(path))
        elif is_image(path):
            found.setdefault(prefix + path.stem, []).append(path)


def read_mask(paths: list[Path], image_path: Path, image_shape: tuple[int, ...], size: Size) -> np.ndarray:
    """The union of a test image's mask files, at the model's size: a pixel of a lossless mask
    is a defect when it is not 0 (0/255 masks and 0/1/2 label maps alike); of a JPEG mask, when
    it is over half the mask's brightest, as its compression leaves faint values around every
    edge. DataError names a mask file that is unreadable or not the image's size."""
    union = np.zeros(image_shape[:2], dtype=bool)
    for path in paths:
        raw_mask = read_image(path)
        if raw_mask.shape[:2] != image_shape[:2]:
            raise DataError(
                f"mask {path} is {raw_mask.shape[1]}x{raw_mask.shape[0]} but its image "
                f"{image_path} is {image_shape[1]}x{image_shape[0]}"
            )
        grey = raw_mask.max(axis=2) if raw_mask.ndim == 3 else raw_mask
        lossy = path.suffix.lower() in (".jpg", ".jpeg")
        union |= grey > (grey.max() // 2 if lossy else 0)
    return resize_mask(union.astype(np.uint8), size)


# A set with image labels only has no mask for any defect: the first few are named, the rest counted.
MISSING_MASKS_NAMED = 3


def has_test_set(category: str | Path) -> bool:
    """Whether the category has a `test` folder: a new product may have good images only, and
    its model is trained and calibrated before the line has shown it a defect."""
    return (Path(category) / "test").is_dir()


def load_test_set(category: str | Path, fmt: InputFormat) -> list[TestSample]:
    """Every test image with its label and mask at the model's input `fmt`, checked. DataError
    names the bad file."""
    category, size = Path(category), fmt.size
    test_dir = _require_dir(category / "test", "test", category)
    kinds = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not is_hidden(p.name))
    if not kinds:
        raise DataError(f"no <kind> folders in {test_dir}")
    samples: list[TestSample] = []
    missing_masks = 0
    listed, masks_of = _test_images(category, kinds)
    shapes: list[tuple[int, int]] = []  # each image's (H, W) as read: its mask's must match
    images = load_images([path for _, path, _ in listed], fmt, shapes)
    for (kind, path, name), image, shape in zip(listed, images, shapes, strict=True):
        masks = masks_of.get(kind, {})
        label = 0 if kind == "good" else 1
        mask = np.zeros(size, dtype=bool) if not label else None
        if label and name in masks:
            mask = read_mask(masks[name], path, shape, size)
        elif label:
            missing_masks += 1
            if missing_masks <= MISSING_MASKS_NAMED:
                log.warning("no mask for %s: counted as fully anomalous, left out of pixel metrics", path)
        samples.append(TestSample(path, kind, name, image, mask, label))
    if not samples:
        raise DataError(f"no test images under {test_dir}")
    if missing_masks:
        log.warning("%d defect image(s) without a mask in %s", missing_masks, category)
    _warn_unmatched_masks(category / "ground_truth", [(s.kind, s.name) for s in samples], masks_of)
    return samples


def _test_images(
    category: Path, kinds: list[str]
) -> tuple[list[tuple[str, Path, str]], dict[str, dict[str, list[Path]]]]:
    """Each test image's (kind, path, name), and each defect kind's masks by image name. A kind's
    images in subfolders (kept by day or by batch) are read, as train/good's are."""
    listed = [
        (kind, path, _name_under(category / "test" / kind, path))
        for kind in kinds
        for path in find_images(category / "test" / kind)
    ]
    masks_of = {
        kind: mask_files(category / "ground_truth" / kind, [name for k, _, name in listed if k == kind])
        for kind in kinds
        if kind != "good"
    }
    return listed, masks_of


def _name_under(folder: Path, path: Path) -> str:
    """`path`'s name under `folder`, without its suffix: TestSample.name."""
    return path.relative_to(folder).with_suffix("").as_posix()


def _warn_unmatched_masks(
    ground_truth: Path, named: list[tuple[str, str]], masks_of: dict[str, dict[str, list[Path]]]
) -> None:
    """A warning naming masks that belong to no test image: a spelling the loader does not read
    (`000_gt.png`), or a kind folder named apart from its images' (`Hole` for `test/hole`).
    Their defects would count as unmasked, and the pixel figures would leave them out.
    `named`: each test image's (kind, name); `masks_of`: the test kinds' masks, as
    load_test_set read them; other kinds' are read here."""
    if not ground_truth.is_dir():
        return
    held = set(named)
    kinds = sorted(p.name for p in ground_truth.iterdir() if p.is_dir() and not is_hidden(p.name))
    unmatched = [
        paths[0]
        for kind in kinds
        for name, paths in (masks_of[kind] if kind in masks_of else mask_files(ground_truth / kind)).items()
        if (kind, name) not in held
    ]
    if unmatched:
        log.warning(
            "%d mask(s) under %s belong to no test image (e.g. %s): a mask is named <stem>_mask.png, <stem>.png or "
            "<stem>/ after its image, in the folder of its image's kind (and subfolder)",
            len(unmatched), ground_truth, unmatched[0],
        )  # fmt: skip


def without_copies_of(
    test: list[TestSample], own: Sequence[str | Path], learned: Collection[str] = ()
) -> tuple[list[TestSample], list[str]]:
    """The test set without its good images that are copies of the model's `own` good images
    (its training and validation images) or whose fingerprint is in `learned` (the images its
    weights were trained on: a fine-tune's source's too), and the paths of those left out. The
    model learned them, or they set its threshold: scored as test images they would count as new
    good parts that pass. A defect that is a copy of one of `own` stays, with a warning: the
    training folder holds a defect."""
    paths = [str(p) for p in own] + [str(s.path) for s in test]
    copied = {i - len(own) for g in identical_files(paths) if g[0] < len(own) for i in g if i >= len(own)}
    if learned:
        copied |= {i for i, p in enumerate(fingerprints([s.path for s in test])) if p in learned}
    defects = [str(test[i].path) for i in sorted(copied) if test[i].label]
    if defects:
        log.warning("%d defect test %s of the run's good training images (e.g. %s): its train/good folder "
                    "holds a defect", len(defects), "image is a copy" if len(defects) == 1 else "images are copies",
                    defects[0])  # fmt: skip
    left_out = [str(test[i].path) for i in sorted(copied) if not test[i].label]
    if left_out:
        one = len(left_out) == 1
        log.warning("%d good test %s of the images the run's weights were trained on or its threshold was set on, "
                    "and %s left out of the figures (e.g. %s)", len(left_out),
                    "image is a copy" if one else "images are copies", "is" if one else "are", left_out[0])  # fmt: skip
    return [s for i, s in enumerate(test) if i not in copied or s.label], left_out


# An aspect ratio this far from the training images' median is another camera's or crop's: the
# daemon's default camera check (edge.health.max_aspect_change) finds a frame this far off unfit.
OTHER_ASPECT = 0.1
# A size (the square root of the pixel count) this far from the median's, at the same aspect, is
# another camera's resolution or lens: its parts reach the input at another scale. A quarter
# leaves one camera's spread (KolektorSDD's 1,235-1,285 rows) and a 1.5x crop apart.
OTHER_SIZE = 0.25

# image_size auto: the long side is at most this many times the short side. A strip longer than
# that (a line scan) is squeezed to it: the input's pixel count, and the line's frame rate,
# stay within MAX_ASPECT x short_side^2.
MAX_ASPECT = 4.0


def auto_image_size(shapes: list[tuple[int, int]], short_side: int, step: int = 16) -> Size:
    """(H, W) in the training images' median aspect ratio, the short side `short_side` pixels and
    the long side rounded to a multiple of `step` (up to MAX_ASPECT times the short side): a tall
    part or a line-scan strip keeps its shape instead of being squeezed into a square, so its
    thin cracks and scratches keep their rows. `shapes`: the training images' (camera_shapes)."""
    aspect, fitted = _fitted_aspect(shapes)
    stretch = max(fitted, 1 / fitted)
    long_side = max(short_side, round(short_side * stretch / step) * step)
    size = (long_side, short_side) if aspect >= 1 else (short_side, long_side)
    log.info(
        "image size auto: median aspect (height / width) %.3f of %d training images read (at most %d, evenly "
        "spaced) -> %dx%d (HxW)",
        aspect, len(shapes), SHAPES_READ, *size,
    )  # fmt: skip
    if stretch < max(aspect, 1 / aspect) / STRETCHED:
        log.info(
            "image size auto: the images are %.1f times as long as wide, the input at most %g times: each is "
            "squeezed %.1f times along its length (--image-size HxW keeps their shape, at its pixel count's compute)",
            max(aspect, 1 / aspect), MAX_ASPECT, max(aspect, 1 / aspect) / stretch,
        )  # fmt: skip
    return size


def _fitted_aspect(shapes: list[tuple[int, int]]) -> tuple[float, float]:
    """(the training images' median aspect, height / width; the input's aspect that `auto` fits
    to it: the same, within MAX_ASPECT either way)."""
    aspect = float(np.median([h / w for h, w in shapes]))
    return aspect, min(MAX_ASPECT, max(aspect, 1 / MAX_ASPECT))


# The training images whose shapes are read for `auto`'s aspect and the shape warnings: their
# median is what counts, and 64 evenly spaced images find it without reading every header.
SHAPES_READ = 64


def camera_shapes(
    category: str | Path, sample: int = SHAPES_READ, pixel_bits: int = PIXEL_BITS
) -> list[tuple[int, int]]:
    """(H, W) of up to `sample` training images, evenly spaced over the sorted list."""
    return image_shapes(train_image_paths(category), sample, pixel_bits)


def image_shapes(paths: list[Path], sample: int = SHAPES_READ, pixel_bits: int = PIXEL_BITS) -> list[tuple[int, int]]:
    """(H, W) of up to `sample` of `paths` as read (a 16-bit image by `pixel_bits`, which says
    nothing of its shape but keeps its warnings true), evenly spaced over the list. Unreadable
    ones are left out: reading the images (load_images) names them all at once. DataError when
    none of the sample can be read."""
    sampled = paths[:: max(1, len(paths) // sample)][:sample]
    shapes, unreadable = [], []
    for path in sampled:
        try:
            shapes.append(read_image(path, pixel_bits).shape[:2])
        except DataError as exc:
            unreadable.append(str(exc))
    if unreadable and not shapes:
        raise DataError(unreadable_message(unreadable, len(sampled)))
    return shapes


def input_scale(shapes: list[tuple[int, int]], size: Size) -> dict[str, Any]:
    """How far the input shrinks the camera's images: their median (H, W) and the camera pixels
    one input pixel covers (the larger of the two sides' ratios). A defect under about two input
    pixels across is what the resizing may erase, so this says which defects the model can see
    at `size`; `model.short_side` sets it. `shapes`: the training images' (camera_shapes).
    Logged by every training and kept in its metrics."""
    sides = np.array(shapes)  # (M, 2)
    camera = [int(np.median(sides[:, 0])), int(np.median(sides[:, 1]))]
    per_pixel = max(camera[0] / size[0], camera[1] / size[1])
    log.info(
        "input %dx%d from training images of median %dx%d (HxW): one input pixel covers %.1f camera pixels "
        "a side, so a defect under about %.2g camera pixels across is one or two input pixels (model.short_side "
        "sets the resolution; the line's compute grows with its square)",
        *size, *camera, per_pixel, 2 * per_pixel,
    )  # fmt: skip
    _warn_mixed_shapes(shapes)
    _warn_stretched(shapes, size)
    _warn_magnified(camera, size)
    return {"camera_size": camera, "camera_pixels_per_input_pixel": round(per_pixel, 3)}


# An input whose aspect ratio is this far from the one `auto` would give the training images:
# well past the rounding of its long side to a multiple of 16 (KolektorSDD's 2.516 -> 2.5).
STRETCHED = 1.25


def _warn_stretched(shapes: list[tuple[int, int]], size: Size) -> None:
    """A warning when the input stretches the training images: a size given by hand, or kept
    from the run a fine-tuning starts from (--init-from) when these images have another shape.
    A strip past MAX_ASPECT is squeezed by `auto` too, and is not warned of."""
    median, fitted = _fitted_aspect(shapes)  # auto_image_size's aspect, before its rounding
    if max(size[0] / size[1] / fitted, fitted * size[1] / size[0]) > STRETCHED:
        log.warning(
            "the input %dx%d (HxW) stretches these training images (median aspect %.3f, height / width, against "
            "its %.3f): thin defects lose rows. A new training with --image-size auto fits the input to them; a "
            "fine-tuning (--init-from) keeps its run's input, made for that product's images",
            *size, median, size[0] / size[1],
        )  # fmt: skip


def _warn_magnified(camera: list[int], size: Size) -> None:
    """A warning when the input is larger than the camera's images on both sides: the resizing
    adds pixels and no detail, and the line pays for each one."""
    magnified = min(size[0] / camera[0], size[1] / camera[1])
    if magnified > 1:
        log.warning(
            "the input %dx%d (HxW) magnifies the training images (median %dx%d) %.1f times: it adds no detail, "
            "and the line's compute grows with its pixel count. --image-size auto takes model.short_side pixels "
            "on the short side",
            *size, *camera, magnified,
        )  # fmt: skip


# The warning of grey and colour images names this many of the fewer kind.
NAMED_MIXED = 3


def warn_mixed_colour(greys: list[bool], paths: Sequence[Path], channels: int) -> None:
    """A warning when the good images are some grey (one channel, or three equal ones) and some
    colour: a mono and a colour camera's images in one folder, which the shapes alone do not
    show. Each becomes the model's `channels`, and the exported camera check takes both kinds'
    figures as normal. It names a few of the fewer kind, `paths` being the images of `greys`."""
    n_grey = sum(greys)
    if not 0 < n_grey < len(greys):
        return
    fewer_grey = 2 * n_grey < len(greys)
    fewer = [str(p) for p, grey in zip(paths, greys, strict=True) if grey == fewer_grey]
    log.warning(
        "%d of %d good images read are grey (one channel, or three equal ones) and %d colour: two cameras' images "
        "in one folder? The %s ones: %s. Each is made the model's %s input (model.channels: %d). One camera's "
        "images train one model.",
        n_grey, len(greys), len(greys) - n_grey, "grey" if fewer_grey else "colour", named_few(fewer, NAMED_MIXED),
        "grey" if channels == 1 else "colour", channels,
    )  # fmt: skip


def _warn_mixed_shapes(shapes: list[tuple[int, int]]) -> None:
    """A warning when some training images have another aspect ratio than most: two cameras'
    images in one folder, or crops of several sizes. Each is resized to the one input, so those
    are stretched, and the exported camera check takes their spread as normal. A few pixels'
    spread (KolektorSDD's heights of 1,235-1,285) is one camera's."""
    aspects = np.array([h / w for h, w in shapes])
    median = float(np.median(aspects))
    off = [shape for shape, aspect in zip(shapes, aspects, strict=True) if abs(aspect / median - 1) > OTHER_ASPECT]
    if off:
        log.warning(
            "%d of %d training images read have another aspect ratio than the median (%.3f, height / width): %s; "
            "each is resized to the one input, so they are stretched. One camera's images train one model.",
            len(off), len(shapes), median, _listed(off),
        )  # fmt: skip
    sizes = np.sqrt([h * w for h, w in shapes])
    median_size = float(np.median(sizes))
    other = [shape for shape, size, aspect in zip(shapes, sizes, aspects, strict=True)
             if abs(size / median_size - 1) > OTHER_SIZE and abs(aspect / median - 1) <= OTHER_ASPECT]  # fmt: skip
    if other:
        log.warning(
            "%d of %d training images read are another size than most (their median %.0f pixels a side, as a "
            "square): %s; each is resized to the one input, so their parts reach it at another scale. One "
            "camera's images train one model.",
            len(other), len(shapes), median_size, _listed(other),
        )  # fmt: skip


def _listed(shapes: list[tuple[int, int]]) -> str:
    """The three commonest of `shapes`, with their counts: "1024x1024 (2), ..."."""
    return ", ".join(f"{h}x{w} ({n})" for (h, w), n in Counter(map(tuple, shapes)).most_common(3))


def resolve_image_size(
    model_cfg: ModelConfig, category: str | Path, shapes: list[tuple[int, int]] | None = None
) -> ModelConfig:
    """`model_cfg` with image_size "auto" replaced by the training images' [H, W]; else as is.
    `shapes`: the training images' (camera_shapes), read here when not given."""
    if model_cfg.image_size != "auto":
        return model_cfg
    shapes = shapes or camera_shapes(category, pixel_bits=model_cfg.pixel_bits)
    size = auto_image_size(shapes, model_cfg.short_side, model_cfg.size_step())
    return dataclasses.replace(model_cfg, image_size=size)
