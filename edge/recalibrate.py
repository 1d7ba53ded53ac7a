"""`vqad calibrate MODEL_DIR GOOD_DIR`: a model package's threshold, recalibrated on new good
images from the line, without retraining and without torch (it runs on the edge box).

The images are scored by the package's own FP32 graph on ONNX Runtime, as the line scores
them. model.json gets the new threshold with its provenance; the old one is kept in
`threshold_history`. The ONNX files, and so their sha256 and the parity proof, are unchanged:
the proof bounds the graphs' maps and scores, which no threshold enters. What a threshold does
change, whether FP16 and FP32 decide alike, is measured again at the new threshold on the
calibration images and written beside it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.clock import package_clock_note
from edge.durable import write_synced
from edge.errors import DataError, PackageError
from edge.frames import InputFormat, batched, find_images, load_images
from edge.health import HealthGate, HealthLimits
from edge.inspection import (
    ASPECT_TOLERANCE,
    InspectionMask,
    MaskRequest,
    border_of,
    check_aspect,
    check_keep,
    keep_from_image,
    keep_from_rectangles,
    load_mask,
    mask_given,
    mask_note,
    mask_png,
    remove_unnamed_masks,
    requested_mask,
    with_mask,
)
from edge.overlay import peak_fraction
from edge.package import FP16_FILE, FP32_FILE, ModelPackage, load_package, sha256_file, write_model_json
from edge.peaks import box_rectangle, crowd, crowd_box
from edge.progress import progress
from edge.threshold import (
    HIGHEST_NAMED,
    MIN_CALIBRATION_IMAGES,
    calibrate_threshold,
    check_against_previous,
    defect_check,
    threshold_at,
)

log = logging.getLogger(__name__)

# A calibration refused (unless forced) when this share of its good images or more would be unfit
# on the line. The gate's limits lie outside the training images' 1st to 99th percentiles, so
# the product the model knows, under its camera and lighting, has few unfit images (none of the
# 30 to 69 good test images of each real development set, nor of the demo's 40 line images);
# another product's or camera's mostly have (all 69 KolektorSDD images for a `vqad synth` model;
# docs/decisions.md), and a threshold over them passes this product's defects.
UNFIT_REFUSED = 0.5

# A training image's fingerprint: the first hex digits of its file's sha256 (64 bits: no two of
# a million images share one by chance). model.json keeps its training images' fingerprints.
FINGERPRINT_HEX = 16


def fingerprints(paths: Sequence[str | Path]) -> list[str]:
    """The fingerprints of the files at `paths` (FINGERPRINT_HEX digits of each one's sha256)."""
    return [sha256_file(p)[:FINGERPRINT_HEX] for p in paths]


def identical_files(paths: Sequence[str | Path], prints: Sequence[str] | None = None) -> list[list[int]]:
    """The indices of `paths` whose files are byte for byte the same, in groups of two or more.
    `prints`: their fingerprints, when already read. Otherwise only files of equal size are read
    (and hashed), so a folder without copies costs a stat per file. A file that cannot be read is
    nobody's copy."""
    if prints:
        by_print: collections.defaultdict[str, list[int]] = collections.defaultdict(list)
        for i, print_ in enumerate(prints):
            by_print[print_].append(i)
        return sorted(g for g in by_print.values() if len(g) > 1)
    by_size: collections.defaultdict[int, list[int]] = collections.defaultdict(list)
    for i, path in enumerate(paths):
        try:
            by_size[Path(path).stat().st_size].append(i)
        except OSError:
            continue
    groups: list[list[int]] = []
    for same_size in (g for g in by_size.values() if len(g) > 1):
        for group in identical_files([paths[i] for i in same_size], fingerprints([paths[i] for i in same_size])):
            groups.append([same_size[i] for i in group])
    return sorted(groups)


def good_frames(
    folder: str | Path, fmt: InputFormat, shapes: list[tuple[int, int]] | None = None
) -> tuple[np.ndarray, list[Path]]:
    """Every image under `folder` at the model's input `fmt` -> ((M, H, W, C) uint8, paths); their
    (H, W) as read are appended to `shapes` when given."""
    why = f"calibrating a threshold needs at least {MIN_CALIBRATION_IMAGES} good images"
    return _frames(find_images(folder), folder, fmt, MIN_CALIBRATION_IMAGES, why, shapes)


def calibration_images(
    folder: str | Path,
    fmt: InputFormat,
    trained_on: Collection[str],
    shapes: list[tuple[int, int]] | None = None,
    defects_dir: str | Path | None = None,
) -> tuple[np.ndarray, list[Path], dict[str, Any]]:
    """good_frames of the images under `folder` that the model did not train on (`trained_on`:
    its training images' fingerprints) -> (frames, paths, the threshold's source: `vqad
    calibrate`, the folder, how many images, how many left out as training images).
    DataError for a folder that holds defects: an MVTec-layout test set, or any of the
    confirmed defects under `defects_dir`."""
    found = find_images(folder)
    prints = fingerprints(found) if trained_on or defects_dir is not None else []  # read once, for both
    refuse_defects_among_good(folder, found, defects_dir, prints)
    unseen = unseen_images(found, trained_on, prints)
    kept = set(unseen)
    paths = distinct_images(unseen, [f for p, f in zip(found, prints, strict=True) if p in kept] if prints else None)
    left_out, copies = len(found) - len(unseen), len(unseen) - len(paths)
    source = {"by": "vqad calibrate", "folder": str(Path(folder).resolve()), "n_images": len(paths)}
    why = f"calibrating a threshold needs at least {MIN_CALIBRATION_IMAGES} good images the model did not train on"
    if left_out:
        source["training_images_left_out"] = left_out
        why += f" ({left_out} more trained it)"
    if copies:
        source["copies_left_out"] = copies
        why += f" ({copies} more {'is a copy of another' if copies == 1 else 'are copies of others'})"
    frames, paths = _frames(paths, folder, fmt, MIN_CALIBRATION_IMAGES, why, shapes)
    return frames, paths, source


def refuse_defects_among_good(
    folder: str | Path, paths: list[Path], defects_dir: str | Path | None, prints: list[str] | None = None
) -> None:
    """DataError when the good images under `folder` hold defects: a threshold is set over the
    good images' highest scores, so one defect among them lifts it until such defects pass.
    Two ways a person gets there: a folder in the MVTec layout (a category, its test/, or
    `vqad records --export-reviewed`'s output) given as the good images, and the confirmed
    defects under `defects_dir` inside the good folder, or copies of them. `prints`: the
    fingerprints of `paths`, when already read."""
    folder = Path(folder)
    laid_out = _defect_folders(folder, paths)
    if laid_out:
        where, kinds = next(iter(laid_out.items()))
        raise DataError(
            f"{where} holds {', '.join(f'{k}/' for k in kinds)}: the MVTec layout's folders of defects. "
            "Calibrate on good images alone (a test set's good/, or a folder of the line's good parts)"
        )
    if defects_dir is None or not paths:
        return
    defects = set(fingerprints(defect_images(defects_dir, say=False)))  # defect_frames says it
    among = [p for p, f in zip(paths, prints or fingerprints(paths), strict=True) if f in defects]
    if among:
        raise DataError(
            f"{len(among)} of {len(paths)} good images under {folder} "
            f"{'is a confirmed defect' if len(among) == 1 else 'are confirmed defects'} under {defects_dir} "
            f"(e.g. {among[0]}): a threshold over them would pass such defects. Give good images only"
        )


def _defect_folders(folder: Path, paths: list[Path]) -> dict[Path, list[str]]:
    """The folders under `folder` laid out as MVTec's test/: {parent: its subfolders other than
    good/}, for a parent that holds good/ beside others, or a test/ beside a train/."""
    children: dict[Path, set[str]] = collections.defaultdict(set)
    for p in paths:
        parts = p.relative_to(folder).parts[:-1]
        for depth in range(len(parts)):
            children[folder.joinpath(*parts[:depth])].add(parts[depth])
    return {
        parent: sorted(kinds - {"good"})
        for parent, kinds in children.items()
        if kinds - {"good"} and ("good" in kinds or (parent.name == "test" and (parent.parent / "train").is_dir()))
    }


def unseen_images(paths: list[Path], trained_on: Collection[str], prints: list[str] | None = None) -> list[Path]:
    """`paths` without the model's training images (by fingerprint). A model scores the images
    it learned from lower than new ones of the same product: a threshold on them sits too low,
    and the line would reject good parts. `prints`: the fingerprints of `paths`, when already read."""
    if not trained_on or not paths:
        return paths
    known = set(trained_on)
    seen = [f in known for f in prints or fingerprints(paths)]
    if any(seen):
        log.warning(
            "%d of %d good images trained the model and %s left out of the calibration (e.g. %s): a model "
            "scores the images it learned from lower than new ones, so a threshold on them would reject good "
            "parts on the line",
            sum(seen), len(paths), "is" if sum(seen) == 1 else "are", paths[seen.index(True)],
        )  # fmt: skip
    return [p for p, trained in zip(paths, seen, strict=True) if not trained]


def distinct_images(paths: list[Path], prints: list[str] | None = None) -> list[Path]:
    """`paths` with one file of each set of equal ones (the first): a good image saved many times
    (a line stopped under the camera) would count as many images, and the false-reject bound
    that their number puts on the threshold would claim more than it knows. `prints`: their
    fingerprints, when already read."""
    copies = identical_files(paths, prints)
    if not copies:
        return paths
    extra = {i for g in copies for i in g[1:]}
    log.warning("%d of %d good images %s of another (e.g. %s and %s): each is calibrated on once",
                len(extra), len(paths), "is a copy" if len(extra) == 1 else "are copies",
                paths[copies[0][0]], paths[copies[0][1]])  # fmt: skip
    return [p for i, p in enumerate(paths) if i not in extra]


def training_fingerprints(meta: dict[str, Any]) -> list[str]:
    """The fingerprints of the images a package's weights were trained on (model.json's
    source.training_images: a fine-tune's source's too); none for a package exported before
    they were kept."""
    return list(meta.get("source", {}).get("training_images", []))


def defect_frames(folder: str | Path, fmt: InputFormat) -> tuple[np.ndarray, list[Path]]:
    """Every confirmed defect image under `folder` at the model's input `fmt` -> (frames, paths).
    Images in a folder named "good" below it are left out, so an MVTec-layout test/ folder
    gives its defects alone."""
    defects = defect_images(folder)
    why = "checking a threshold against defects needs at least 1 defect image (good/ left out)"
    return _frames(defects, folder, fmt, 1, why)


def defect_images(folder: str | Path, say: bool = True) -> list[Path]:
    """The images under `folder`, less those in a folder named "good" below it (logged, unless
    not `say`)."""
    paths = find_images(folder)
    defects = [p for p in paths if "good" not in p.relative_to(folder).parts[:-1]]
    if say and len(defects) < len(paths):
        log.info("%s: %d images under good/ left out of the defects", folder, len(paths) - len(defects))
    return defects


def _frames(
    paths: list[Path], folder: str | Path, fmt: InputFormat, least: int, why: str,
    shapes: list[tuple[int, int]] | None = None,
) -> tuple[np.ndarray, list[Path]]:  # fmt: skip
    """`paths` (found under `folder`) at the model's input, or DataError(why) with fewer than `least`."""
    if len(paths) < least:
        raise DataError(f"{folder}: {why}, found {len(paths)}")
    return load_images(paths, fmt, shapes), paths


def unfit_images(
    stats: dict[str, Any], frames: Iterable[np.ndarray], shapes: list[tuple[int, int]], paths: list[Path]
) -> tuple[list[dict[str, Any]], collections.Counter[str]]:
    """The images the line's camera health gate (its default limits, against `stats`: the
    training images' figures) would call unfit, each with its reasons, and the reasons counted.
    Stills: a folder's repeated image is not a frozen camera."""
    gate = HealthGate(stats, HealthLimits())
    gate.tell_shapes = False  # the callers' one message counts them
    reasons: collections.Counter[str] = collections.Counter()
    unfit = []
    for path, frame, shape in zip(paths, frames, shapes, strict=True):
        found = gate.check("still", frame, shape, stream=False)["reasons"]
        reasons.update(found)
        if found:
            unfit.append({"image": str(path), "reasons": found})
    return unfit, reasons


def health_findings(
    stats: dict[str, Any] | None, frames: np.ndarray, shapes: list[tuple[int, int]], paths: list[Path],
    force: bool = False,
) -> dict[str, Any] | None:  # fmt: skip
    """How the good images fare under the line's camera health gate (its default limits, against
    `stats`: the training images' figures): the ones it would call unfit (blurred, too dark or
    bright, clipped, moved, another shape) are not what the line will score as good. A few are
    logged and calibrated on all the same. UNFIT_REFUSED or more of them is a DataError unless
    `force`: the line fails such frames whatever the threshold, and they are another camera's,
    lighting's or product's, whose scores would lift the threshold over this product's defects.
    None for a model without the gate's figures. A folder's repeated image is not a frozen
    camera: that check is left out."""
    if not stats:
        return None
    unfit, reasons = unfit_images(stats, frames, shapes, paths)
    if unfit:
        what = (
            f"{len(unfit)} of {len(paths)} good images would be unfit on the line "
            f"({', '.join(f'{r} {n}' for r, n in reasons.most_common())}; e.g. {unfit[0]['image']})"
        )
        if len(unfit) >= UNFIT_REFUSED * len(paths) and not force:
            raise DataError(
                f"{what}: the line fails such frames whatever the threshold, and a threshold over their scores "
                "would pass this product's defects. Are they from this product, camera, lens and lighting? For a "
                "changed camera or lighting, train a model on its images; to calibrate on them anyway, --force"
            )
        log.warning("%s: are they from this camera, lens and lighting? The threshold is calibrated on them all "
                    "the same", what)  # fmt: skip
    return {"unfit": len(unfit), "reasons": dict(reasons), "examples": unfit[:HIGHEST_NAMED]}


def check_defects(
    defects_dir: str | Path, fmt: InputFormat, score: Callable[[np.ndarray], np.ndarray], threshold: float,
    previous: float | None, calibration: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """defect_check of the images under `defects_dir`, scored by `score` (frames -> scores);
    `calibration`: the good images' scores, for what other false-reject targets would let pass."""
    frames, paths = defect_frames(defects_dir, fmt)
    source = {"folder": str(Path(defects_dir).resolve()), "n_images": len(paths)}
    return defect_check(score(frames), threshold, source, names=paths, previous=previous, calibration=calibration)


class GraphScorer:
    """The image scores of an ONNX graph on ONNX Runtime's CPU, through the package's inspection
    `mask` as the line scores them: one session, for many calls. After each call, `peaks` says
    where each frame's score came from (edge.overlay.map_peak of its map, as the line draws it):
    (row, column) as fractions of the map's height and width, (N, 2)."""

    def __init__(self, path: Path, batch: int = 8, mask: InspectionMask | None = None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.batch, self.mask = batch, mask
        self.peaks = np.zeros((0, 2))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        batches = progress(batched(frames, self.batch), "scoring", total=-(-len(frames) // self.batch), unit="batch")
        scored = [self._batch(b) for b in batches]
        self.peaks = np.concatenate([peaks for _, peaks in scored])
        return np.concatenate([scores for scores, _ in scored])

    def maps(self, frames: np.ndarray) -> np.ndarray:
        """The maps of a few `frames` through the mask, as the line scores them: (N, h, w)."""
        return np.concatenate([self._run(b)[0][:, 0] for b in batched(frames, self.batch)])

    def _batch(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self._run(frames)
        return scores, np.array([peak_fraction(amap) for amap in maps[:, 0]]).reshape(-1, 2)

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {self.name: np.ascontiguousarray(frames)})
        return self.mask.apply(maps, scores) if self.mask is not None else (maps, scores)


def graph_scores(path: Path, frames: np.ndarray, batch: int = 8, mask: InspectionMask | None = None) -> np.ndarray:
    return GraphScorer(path, batch, mask)(frames)


def mask_rectangles(
    pkg: ModelPackage, request: MaskRequest | None, shapes: Sequence[tuple[int, int]]
) -> list[list[int]] | None:
    """The --ignore rectangles, in the calibration images' pixels, that make the mask a
    calibration asks for (`request`) or keeps (the package's): [] for the whole frame; None where
    no rectangles make it (a mask image, or rectangles of frames of another size)."""
    if request is not None:
        return None if request.image is not None else [list(r) for r in request.rectangles]
    given = pkg.meta.get("inspection")
    if not given:
        return []
    if "rectangles" in given and sorted(set(shapes)) == [tuple(given["frame"])]:
        return [list(r) for r in given["rectangles"]]
    return None


def crowd_left_out(
    pkg: ModelPackage, calibration: tuple[np.ndarray, Sequence[tuple[int, int]]], scorer: GraphScorer,
    rectangles: list[list[int]] | None, threshold: dict[str, Any], defects_dir: str | Path | None,
) -> dict[str, Any] | None:  # fmt: skip
    """What leaving out the place where the calibration's highest good images peak (edge.peaks.
    crowd) would do: the threshold the same rule sets on the same images (`calibration`: frames
    and their (H, W) as read) scored without it by `scorer` (the package's FP32 graph through its
    mask), and with `defects_dir` how many of its defects would then pass. The place holds each
    of those images' spot over the highest score of the rest (crowd_box). How to leave it out, as
    `vqad calibrate` takes it (leave_out_mask): `ignore`, every rectangle of the mask then the
    place's, or `mask`, an image written into the package. None where they do not crowd, or
    leaving the place out would leave too little judged."""
    crowded = crowd(threshold["peaks"], threshold["scores"])
    if crowded is None:
        return None
    frames, shapes = calibration
    box = crowd_box(crowded, scorer.maps(frames[list(crowded.members)]), threshold["scores"])
    try:
        keep, how = leave_out_mask(pkg, box, shapes, scorer.mask, rectangles)
        trial = check_keep(keep, border_of(pkg.meta), f"leaving out {crowded.where}")
    except (DataError, PackageError, OSError) as exc:
        log.warning("what leaving out %s would do is not measured: %s", crowded.where, exc)
        return None
    log.info("the good images scored again without %s, where the highest of them peak", crowded.where)
    without = GraphScorer(pkg.root / FP32_FILE, mask=trial)
    _, value = threshold_at(without(frames), threshold["target_frr"])
    found = {"count": crowded.count, "where": crowded.where, "box": [round(v, 4) for v in box], **how}
    found |= {"inspected_share": trial.inspected_share, "threshold": value}
    if defects_dir is not None:
        defects, _ = defect_frames(defects_dir, pkg.input_format)
        found["defects_missed"] = int((without(defects) < value).sum())
    return found


# The mask image a crowd's place would be left out by, where no --ignore rectangles can say it.
LEAVE_OUT_FILE = "leave_out.png"


def leave_out_mask(
    pkg: ModelPackage, box: Sequence[float], shapes: Sequence[tuple[int, int]], mask: InspectionMask | None,
    rectangles: list[list[int]] | None,
) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """The package's mask with the fraction `box` left out too, as `vqad calibrate` would make it
    -> (keep at the model's size, how: {"ignore": the rectangles} where the images (of `shapes`)
    are of one size and the mask is `rectangles` or none; else {"mask": the path of an image,
    LEAVE_OUT_FILE in the package, at the images' median aspect's size, black where the mask and
    the box leave out}). OSError or PackageError where the image cannot be written."""
    sizes = sorted(set(shapes))
    if len(sizes) == 1 and rectangles is not None:
        ignore = [*rectangles, list(box_rectangle(box, sizes[0]))]
        return keep_from_rectangles([tuple(r) for r in ignore], sizes[0], pkg.image_size), {"ignore": ignore}
    fh, fw = sorted(shapes, key=lambda hw: hw[0] / hw[1])[len(shapes) // 2]  # the median aspect, for the most
    try:
        check_aspect(pkg.root / LEAVE_OUT_FILE, (fh, fw), shapes)
    except DataError:
        raise DataError(f"the good images' aspects differ by more than {ASPECT_TOLERANCE:.0%}: no one --mask image "
                        "fits them all") from None  # fmt: skip
    image = np.full((fh, fw), 255, np.uint8)
    if mask is not None:
        image[cv2.resize(mask.keep.astype(np.uint8), (fw, fh), interpolation=cv2.INTER_NEAREST) == 0] = 0
    x, y, w, h = box_rectangle(box, (fh, fw))
    image[y : y + h, x : x + w] = 0
    path = pkg.root / LEAVE_OUT_FILE
    write_synced(path, mask_png(image > 0))
    return keep_from_image(path, pkg.image_size, shapes), {"mask": str(path.resolve())}


def replaced_mask(pkg: ModelPackage, mask: InspectionMask | None) -> dict[str, Any] | None:
    """The package's inspection mask that `mask` replaces (its sha256, and how it was given:
    edge.inspection.mask_given), None where it had none, or `mask` is the same one or none (the
    whole frame, which the command says in its own words)."""
    before = pkg.meta.get("inspection")
    if not before or mask is None or pkg.files.get(before["file"]) == mask.sha256:
        return None
    return {"mask_sha256": pkg.files.get(before["file"]), **(mask_given(before) or {})}


def parity_at(
    pkg: ModelPackage, frames: np.ndarray, mask: InspectionMask | None, scores: np.ndarray, value: float
) -> dict[str, Any]:
    """Whether the FP16 graph decides as the FP32 graph's `scores` at the threshold `value`, on
    the calibration `frames`: the parity entry of the new threshold, or PackageError under the
    package's bound (the ONNX files are unchanged, so the proof of their maps holds)."""
    fp16 = graph_scores(pkg.root / FP16_FILE, frames, mask=mask) if (pkg.root / FP16_FILE).is_file() else scores
    agreement = float(((fp16 >= value) == (scores >= value)).mean())
    bound = pkg.meta.get("parity", {}).get("fp16_vs_fp32", {}).get("bound_decision_agreement", 0.99)
    if agreement < bound:
        raise PackageError(
            f"at the new threshold {value:.6g} the FP16 and FP32 graphs agree on {agreement:.1%} of "
            f"the calibration images, under the package's bound {bound:.0%}: threshold not changed"
        )
    return {
        "note": "the ONNX files are unchanged, so the parity proof of their maps and scores holds; the "
        "decision agreement below is measured at this threshold on the calibration images",
        "fp16_vs_fp32_decision_agreement": agreement,
    }


def calibrate_package(
    model_dir: str | Path,
    good_dir: str | Path,
    target_frr: float | None = None,
    defects_dir: str | Path | None = None,
    force: bool = False,
    mask_request: MaskRequest | None = None,
) -> dict[str, Any]:
    """Recalibrate MODEL_DIR's threshold on the good images under GOOD_DIR; rewrites model.json
    and returns the new threshold entry. With `defects_dir` (confirmed defect images, such as
    `vqad records --export-reviewed`'s test/), the entry's "defects" says how many would pass.
    With `mask_request`, the package's inspection mask is set (edge.inspection) and the threshold
    calibrated through it; without, the package's mask stays and is calibrated through.
    DataError when most good images would be unfit on the line (health_findings), or the threshold
    would rise RAISED_REFUSED times or more (check_against_previous), unless `force`."""
    pkg = load_package(model_dir)
    shapes: list[tuple[int, int]] = []
    trained_on = training_fingerprints(pkg.meta)
    frames, paths, source = calibration_images(good_dir, pkg.input_format, trained_on, shapes, defects_dir)
    old = pkg.meta["threshold"]
    target = float(target_frr if target_frr is not None else old.get("target_frr", 0.01))
    health = health_findings(pkg.meta.get("camera_health"), frames, shapes, paths, force)
    mask, how = requested_mask(mask_request, pkg, shapes) if mask_request is not None else (load_mask(pkg), None)
    fp32 = GraphScorer(pkg.root / FP32_FILE, mask=mask)  # the good images, then any defects
    scores = fp32(frames)
    threshold = calibrate_threshold(scores, target, source, names=paths)
    # Where each good image's score came from: a cluster of high ones is a place to leave out,
    # where no defect can be (edge.peaks draws them).
    threshold["peaks"] = np.round(fp32.peaks, 4).tolist()
    threshold["against_previous"] = check_against_previous(scores, float(old["value"]), threshold["value"], force)
    threshold["health"] = health
    if clock := package_clock_note(pkg.created_ns, "the new threshold's calibration time"):
        threshold["clock"] = clock  # an audit reads `calibrated` beside the clock that dated it
    threshold["inspection"] = mask_note(mask)
    if mask_request is not None and (replaced := replaced_mask(pkg, mask)) is not None:
        threshold["inspection"]["replaced"] = replaced
    threshold["parity"] = parity_at(pkg, frames, mask, scores, threshold["value"])
    if defects_dir is not None:
        threshold["defects"] = check_defects(
            defects_dir, pkg.input_format, fp32, threshold["value"], old["value"], calibration=scores
        )
    rectangles = mask_rectangles(pkg, mask_request, shapes)
    suggested = pkg.root / LEAVE_OUT_FILE  # a previous calibration's, unless it is the mask given now
    if mask_request is None or mask_request.image is None or mask_request.image.resolve() != suggested.resolve():
        suggested.unlink(missing_ok=True)
    if (left_out := crowd_left_out(pkg, (frames, shapes), fp32, rectangles, threshold, defects_dir)) is not None:
        threshold["crowd"] = left_out
    meta = dict(pkg.meta)
    meta["threshold_history"] = [*meta.get("threshold_history", []), old]
    meta["threshold"] = threshold
    mask_file = with_mask(pkg.root, meta, mask, how) if mask_request is not None else None
    # The map bytes keep their meaning relative to the threshold (255 = the same multiple of it).
    meta["output"] = dict(meta["output"], map_scale=meta["output"]["map_scale"] * threshold["value"] / old["value"])
    write_model_json(pkg.root, meta)
    if mask_request is not None:
        remove_unnamed_masks(pkg.root, mask_file)
    log.info(
        "%s: threshold %.6g -> %.6g on %d good images (%s)",
        pkg.root,
        old["value"],
        threshold["value"],
        len(paths),
        threshold["frr_bound_note"],
    )
    return threshold
