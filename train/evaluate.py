"""`vqad eval`: calibrate the threshold on good validation images, then measure the
test set honestly (the test set tunes nothing) and draw the report pictures.

REPORT_DIR/
    report.html          all of it on one page, the figures at the threshold first
    metrics.json         image_auroc, pixel_auroc, aupro, f1_max, threshold, n_images, ...
    histogram.png, roc.png, codebook.png, curves.png
    images/<kind>_<name>.png   original | reconstruction | heat-map overlay | ground truth
    images/calibration_<rank>_<stem>.png  the same for the good images the threshold names as its
                         highest: the validation split's, or those `vqad calibrate` used
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edge.durable import require_writable
from edge.errors import DataError
from edge.frames import write_image
from edge.histogram import score_histogram
from edge.inspection import check_keep, keep_outside
from edge.overlay import as_bgr, heatmap_overlay, label, map_peak, mark_peak, peak_fraction
from edge.peaks import NUMBERED, Crowd, crowd, crowd_box, crowd_words, peaks_picture
from edge.progress import progress
from edge.recalibrate import UNFIT_REFUSED, unfit_images
from edge.spreadsheet import SpreadsheetCsv
from edge.threshold import calibrate_threshold, target_frr_trade, threshold_at
from train import plots
from train.data import TestSample, category_hint, has_test_set, load_images, load_test_set, without_copies_of
from train.metrics import aupro, f1_max, figure, image_auroc, percent, pixel_auroc, roc_points
from train.pipeline import score_frames
from train.report_page import PANELS, PEAKS_PICTURE, calibration_panel_path, panel_path, write_report_page
from train.run import Run, load_run

log = logging.getLogger(__name__)


def miss_rate_at_frr(labels: np.ndarray, scores: np.ndarray, frr: float) -> float | None:
    """The share of defects that pass at the threshold that rejects `frr` of the test good
    images (their (1 - frr) quantile; a defect fails at or above it): what the line would miss
    if the threshold were set for that false-reject rate on these very images."""
    good, defects = scores[labels == 0], scores[labels == 1]
    if len(good) == 0 or len(defects) == 0:
        return None
    cut = float(np.quantile(good, 1.0 - frr, method="higher"))
    return float((defects <= cut).mean())


def _threshold(run: Run, val_scores: np.ndarray, val_paths: list[str]) -> dict[str, Any]:
    """The run's threshold: one set by `vqad calibrate` on good images from the line is kept;
    otherwise it is calibrated on the validation split and written to threshold.json."""
    saved = run.threshold()
    if saved is not None and saved.get("source", {}).get("by") == "vqad calibrate":
        folder = saved["source"].get("folder")
        if not run.threshold_is_stale(saved):
            log.info("keeping the threshold vqad calibrate set on %s", folder)
            return saved
        log.warning(
            "the threshold vqad calibrate set on %s was for the run's weights before it was trained further or its "
            "map rebuilt: calibrated again on the validation split; run vqad calibrate on the line's images again",
            folder,
        )
    source = {"by": "vqad eval", "images": "the run's validation split (split.json)", "run": str(run.root)}
    threshold = calibrate_threshold(val_scores, run.train_cfg.target_frr, source, names=val_paths)
    run.write_threshold(threshold)
    return threshold


@torch.no_grad()
def codebook_counts(run: Run, images: np.ndarray) -> np.ndarray:
    """How often each code is chosen over `images` (M, H, W, C) uint8."""
    codes = run.model.codes_of(images)
    return np.bincount(codes.flatten().numpy(), minlength=run.model_cfg.codebook_size).astype(np.int64)


# A panel's input is enlarged (by whole pixels) until one side reaches this: a 128-pixel input
# is drawn at 256, a tall 320 x 128 one as is, a 64 x 1024 strip as is.
PANEL_SIDE = 256


def _panel(
    image: np.ndarray,
    recon01: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None,
    score: float,
    threshold: float,
    truth_caption: str | None = None,
) -> np.ndarray:
    """original | reconstruction | heat-map overlay | ground-truth contour: one row, or one column
    for a strip more than twice as wide as it is high. The overlay and the ground truth ring the
    map's peak, where the score comes from: on a defect that passes, whether the model looked at
    it at all (the overlay's colour starts near the threshold)."""
    bgr = image if image.shape[2] == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    recon = np.clip(recon01.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
    recon = recon if recon.shape[2] == 3 else cv2.cvtColor(recon, cv2.COLOR_GRAY2BGR)
    overlay = heatmap_overlay(bgr, amap, vmax=2 * threshold if threshold > 0 else float(amap.max()))
    truth = bgr.copy()
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(truth, contours, -1, (0, 255, 0), 1)
    decision = "FAIL" if score >= threshold else "pass"
    h, w = image.shape[:2]
    scale = max(1, min(PANEL_SIDE // h, PANEL_SIDE // w))  # a small input enlarged, pixels kept sharp
    tiles = [
        cv2.resize(t, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) for t in (bgr, recon, overlay, truth)
    ]
    if amap.max() > amap.min():  # a flat map has no peak to show
        peak = map_peak(amap)
        for tile in tiles[2:]:
            mark_peak(tile, peak, amap.shape)
    captions = [
        "input",
        "reconstruction",
        f"{score:#.4g} {decision}",
        truth_caption or ("ground truth" if mask is not None else "no mask"),
    ]
    colours = [(255, 255, 255), (255, 255, 255), (0, 0, 255) if decision == "FAIL" else (0, 255, 0), (255, 255, 255)]
    tiles = [label(t, c, colour) for t, c, colour in zip(tiles, captions, colours, strict=True)]
    return np.vstack(tiles) if w > 2 * h else np.hstack(tiles)  # a strip (a line scan) stacks its tiles


def evaluate(run_dir: str | Path, category: str | Path, out: str | Path, pictures: bool = True) -> dict[str, Any]:
    """Calibrate and store the threshold, score the test set, write metrics.json and pictures.
    DataError when `category` is not a folder (a mistyped path would calibrate and measure nothing)."""
    if not Path(category).is_dir():
        raise DataError(f"no such folder: {category} (DATA_CAT: the category folder the run was trained on)")
    run = load_run(run_dir, category)
    if run.unfinished():
        log.warning("%s: %s; its figures are not the finished model's, and vqad export refuses it. Finish it: "
                    "vqad train %s --out %s --resume", run.root, run.unfinished(), category, run.root)  # fmt: skip
    out = Path(out)
    require_writable(out, out)  # found before the images are scored, not after
    test, own = _test_set(run, category)
    unfit = _unfit_test_images(run, test, category)
    val_paths = run.split_images("val", "the threshold is calibrated on them")
    val_images = load_images(val_paths, run.model_cfg.input_format)

    val_recons, val_maps, val_scores = score_frames(run.model, val_images)
    threshold = _threshold(run, val_scores, val_paths)
    val_peaks = [peak_fraction(amap) for amap in val_maps]  # where each one's score comes from

    recons, maps, scores = _score_test(run, test)
    metrics = _test_metrics(run, test, maps, scores, threshold)
    metrics["n_left_out_copies"] = len(own)  # good test images that are the run's own
    metrics["left_out_copies"] = own[:COPIES_NAMED]
    metrics["good_test_unfit"] = unfit  # the camera health gate's verdict on the good test images
    labels = np.array([s.label for s in test], dtype=int)
    _crowd_figures(run, metrics, threshold, (val_maps, val_peaks, val_scores), maps, labels)
    # The trade --target-frr makes, each threshold set on the validation images as this one is.
    metrics["target_frr_choices"] = target_frr_trade(val_scores, scores[labels == 0], scores[labels == 1])
    out.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a figure that cannot be computed is null (None), and a NaN is a bug.
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    run.write_evaluation(metrics, out)
    _write_scores_csv(out / "scores.csv", test, scores, scores >= threshold["value"])
    if pictures and test:
        _pictures(run, out, test, recons, maps, scores, threshold["value"], labels, val_images,
                  metrics["target_frr_choices"])  # fmt: skip
    if pictures:
        val = _by_path(val_paths, val_images, val_recons, val_maps, val_scores)
        _calibration_pictures(run, out, threshold, val)
        if len(val_images):  # as vqad calibrate draws a package's
            picture = peaks_picture(as_bgr(val_images[0]), val_peaks, val_scores, threshold["value"],
                                    place=metrics["good_peaks_left_out"])  # fmt: skip
            write_image(out / PEAKS_PICTURE, picture)
    title = f"{run.root.name} on {Path(category).name}"
    page = write_report_page(out, metrics, test, scores, title, pictures)
    _log_figures(metrics, page)
    return metrics


def _crowd_figures(
    run: Run, metrics: dict[str, Any], threshold: dict[str, Any], val: tuple[np.ndarray, list, np.ndarray],
    maps: np.ndarray, labels: np.ndarray,
) -> None:  # fmt: skip
    """metrics' `good_peaks_crowd`: where the highest validation images (`val`: maps, peaks,
    scores) peak in one place, in words, or None; and `good_peaks_left_out`: what leaving that
    place out would do to the test images (`maps`, `labels`; left_out_of_run), said with it,
    where the threshold is the validation images' own."""
    crowded = crowd(val[1], val[2])
    metrics["good_peaks_crowd"] = None if crowded is None else crowd_words(crowded, "good validation images")
    metrics["good_peaks_left_out"] = None
    if crowded is None or threshold["source"].get("by") != "vqad eval":
        return
    found = left_out_of_run(run, crowded, val[0], val[2], maps, labels)
    if found is not None:
        metrics["good_peaks_left_out"] = found
        metrics["good_peaks_crowd"] = left_out_of_run_words(crowded, found, metrics)


def left_out_of_run(
    run: Run, crowded: Crowd, val_maps: np.ndarray, val_scores: np.ndarray, maps: np.ndarray, labels: np.ndarray
) -> dict[str, Any] | None:
    """What leaving out the place where the highest validation images crowd would do, as `vqad
    calibrate` measures it on a package (edge.recalibrate.crowd_left_out): the threshold the
    validation images would set without it, and the test images' (`maps`, `labels`) false
    rejects and misses at it. None where it would leave too little of the frame judged."""
    box = crowd_box(crowded, val_maps[list(crowded.members)], val_scores)
    keep = keep_outside(box, tuple(run.model_cfg.image_size))
    try:
        mask = check_keep(keep, run.model_cfg.score.border, f"leaving out {crowded.where}")
    except DataError:
        return None

    def scores_without(m: np.ndarray) -> np.ndarray:
        return mask.apply(m[:, None], np.zeros(len(m)))[1]

    _, value = threshold_at(scores_without(val_maps), run.train_cfg.target_frr)
    fails = scores_without(maps) >= value
    good, defects = fails[labels == 0], fails[labels == 1]
    return {
        "box": [round(v, 4) for v in box],
        "inspected_share": mask.inspected_share,
        "threshold": value,
        "false_reject_rate": float(good.mean()) if good.size else None,
        "miss_rate": float((~defects).mean()) if defects.size else None,
    }


def left_out_of_run_words(crowded: Crowd, found: dict[str, Any], metrics: dict[str, Any]) -> str:
    """left_out_of_run's figures as `vqad eval` says them, beside the figures at the threshold."""
    top, left, bottom, right = found["box"]
    said = f"{crowded.count} of the {NUMBERED} highest good validation images peak at {crowded.where}: "
    place = f"the frame from {left:.0%} to {right:.0%} across and {top:.0%} to {bottom:.0%} down"
    if found["threshold"] >= metrics["threshold"] * (1 - 1e-6):
        return said + f"leaving out {place} would not lower the threshold: good images score as high elsewhere"
    said += (f"if no defect can be there, leaving out {place} ({found['inspected_share']:.1%} judged; once "
             f"exported, vqad calibrate MODEL_DIR GOOD_DIR names the flags) would set the threshold at "
             f"{found['threshold']:.4g} instead of {metrics['threshold']:.4g}")  # fmt: skip
    if found["false_reject_rate"] is not None and found["miss_rate"] is not None and metrics["miss_rate"] is not None:
        said += (f", and on the test images reject {percent(found['false_reject_rate'])} of the good and let "
                 f"{percent(found['miss_rate'])} of the defects pass, instead of "
                 f"{percent(metrics['false_reject_rate'])} and {percent(metrics['miss_rate'])}")  # fmt: skip
    return said


# metrics.json names this many of the good test images the camera health gate calls unfit.
UNFIT_NAMED = 5


def _unfit_test_images(run: Run, test: list[TestSample], category: str | Path) -> dict[str, Any] | None:
    """How many good test images the line's camera health gate would call unfit, and why (None
    for a run without the gate's figures); a warning when half or more: they are another
    product's, camera's or lighting's than the run's training images (a category mistyped), and
    the figures would measure that, not the model."""
    good = [s for s in test if s.label == 0]
    try:
        stats = run.camera_health()
    except DataError as exc:  # a run trained before the figures were kept, its images gone
        log.info("the test images are not checked against the camera health gate: %s", exc)
        return None
    images = [s.image for s in good]
    unfit, reasons = unfit_images(stats, images, [image.shape[:2] for image in images], [s.path for s in good])
    found = {"unfit": len(unfit), "of": len(good), "reasons": dict(reasons), "examples": unfit[:UNFIT_NAMED]}
    if good and len(unfit) >= UNFIT_REFUSED * len(good):
        log.warning(
            "%d of %d good test images under %s would be unfit on the line (%s; e.g. %s): are they this run's "
            "product, camera and lighting? Its figures on them measure another one",
            len(unfit), len(good), category, ", ".join(f"{r} {n}" for r, n in reasons.most_common()),
            unfit[0]["image"],
        )  # fmt: skip
    return found


def _test_set(run: Run, category: str | Path) -> tuple[list[TestSample], list[str]]:
    """The category's test images (none without a test/ folder), less the good ones that are
    copies of the run's own images -> (the test set, those copies' paths)."""
    split = run.split()
    test = load_test_set(category, run.model_cfg.input_format) if has_test_set(category) else []
    test, own = without_copies_of(test, split["train"] + split["val"], set(run.training_fingerprints()))
    if not test:
        log.warning(
            "no test images in %s: the threshold is calibrated, nothing is measured%s",
            category,
            category_hint(category),
        )
    return test, own


def _log_figures(metrics: dict[str, Any], page: Path) -> None:
    log.info(
        "eval: image AUROC %s, pixel AUROC %s, AUPRO %s; at the threshold: false rejects %s, misses %s",
        figure(metrics["image_auroc"]),
        figure(metrics["pixel_auroc"]),
        figure(metrics["aupro"]),
        percent(metrics["false_reject_rate"]),
        percent(metrics["miss_rate"]),
    )
    log.info("eval: the report on one page: %s", page)


# metrics.json names this many of the good test images left out as copies, and counts them all.
COPIES_NAMED = 5


def _test_metrics(
    run: Run, test: list[TestSample], maps: np.ndarray, scores: np.ndarray, threshold: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json: AUROCs, AUPRO and F1-max over the test set; the rates at the calibrated
    threshold (the misses by kind too) and at 1% and 5% false rejects; what the figures were
    measured on."""
    size = run.model_cfg.image_size
    labels = np.array([s.label for s in test], dtype=int)
    with_mask = np.array([s.mask is not None for s in test], dtype=bool)
    masks = np.array([s.mask if s.mask is not None else np.zeros(size, bool) for s in test], bool).reshape(maps.shape)
    f1, f1_threshold = f1_max(labels, scores)
    decisions = scores >= threshold["value"]
    per_kind_auroc, per_kind_misses = _per_kind(test, labels, scores, decisions)
    return {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks[with_mask], maps[with_mask]),
        "aupro": aupro(masks[with_mask], maps[with_mask], fpr_limit=0.3),
        "f1_max": f1,
        "f1_max_threshold": f1_threshold,
        "threshold": threshold["value"],
        "threshold_calibration": threshold,
        "n_images": int(len(test)),
        "n_good": int((labels == 0).sum()),
        "n_defect": int((labels == 1).sum()),
        "n_without_mask": int((~with_mask).sum()),
        "false_reject_rate": float(decisions[labels == 0].mean()) if (labels == 0).any() else None,
        "miss_rate": float((~decisions[labels == 1]).mean()) if (labels == 1).any() else None,
        "miss_rate_at_1pct_frr": miss_rate_at_frr(labels, scores, 0.01),
        "miss_rate_at_5pct_frr": miss_rate_at_frr(labels, scores, 0.05),
        "threshold_margin_over_val_max": threshold.get("margin_over_max"),
        "frr_upper_bound_95": threshold.get("frr_upper_bound_95"),
        "defect_peaks": defect_peaks(test, maps, decisions),
        "per_kind_image_auroc": per_kind_auroc,
        "per_kind_misses": per_kind_misses,
        **_measured_on(run),
    }


def _measured_on(run: Run) -> dict[str, Any]:
    """What metrics.json's figures were measured on: the input, the map's scale, the run."""
    return {
        "image_size": list(run.model_cfg.image_size),
        "pixel_bits": run.model_cfg.pixel_bits,
        "score_scale": run.model_cfg.score.scale,
        "score_fuse_scales": list(run.model_cfg.score.fuse_scales),
        "run": str(run.root),
        "step": run.meta.get("step"),
        "checkpoint_sha256": run.meta.get("content_sha256"),
        "fine_tuned_from": run.meta.get("fine_tuned_from"),  # None: trained from scratch
        "unfinished": run.unfinished(),  # None: the training ran to its end
    }


def _per_kind(
    test: list[TestSample], labels: np.ndarray, scores: np.ndarray, decisions: np.ndarray
) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
    """Each kind of defect's image AUROC against the good images, and how many of it pass the
    threshold: which kinds the line would let through."""
    aurocs, misses = {}, {}
    for kind in sorted({s.kind for s in test} - {"good"}):
        sel = np.array([s.kind in ("good", kind) for s in test])
        aurocs[kind] = image_auroc(labels[sel], scores[sel])
        passed = ~decisions[np.array([s.kind == kind for s in test])]
        misses[kind] = {"passed": int(passed.sum()), "of": len(passed), "rate": float(passed.mean())}
    return aurocs, misses


# A defect's map peaks on it within this many map pixels of its mask: the map is smoothed (the
# head's by a sigma of 1 px, the errors' over a few pixels) and a crack's mask is a pixel or two
# wide at the model's size, so a peak just beside a thin defect is still the defect's.
PEAK_ON_DEFECT_PX = 2


def defect_peaks(test: list[TestSample], maps: np.ndarray, decisions: np.ndarray) -> dict[str, Any]:
    """Where each defect's map peaks (map_peak: the pixel its score comes from), counted by
    whether the defect passes the threshold or is caught: `on_defect` (within PEAK_ON_DEFECT_PX
    of its mask) or `elsewhere`. A defect that passes with its peak on it is a threshold
    question; elsewhere, one the model does not see. A caught defect whose peak is elsewhere was
    rejected for something else. Defects without a mask are counted apart (`without_mask`)."""
    near = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * PEAK_ON_DEFECT_PX + 1,) * 2)
    counts: dict[str, Any] = {
        "passed": {"on_defect": 0, "elsewhere": 0},
        "caught": {"on_defect": 0, "elsewhere": 0},
        "without_mask": 0,
        "within_px": PEAK_ON_DEFECT_PX,
    }
    for sample, amap, fails in zip(test, maps, decisions, strict=True):
        if sample.label != 1:
            continue
        if sample.mask is None:
            counts["without_mask"] += 1
            continue
        y, x = map_peak(amap)
        on_defect = cv2.dilate(sample.mask.astype(np.uint8), near)[y, x] > 0
        counts["caught" if fails else "passed"]["on_defect" if on_defect else "elsewhere"] += 1
    return counts


def _write_scores_csv(path: Path, test: list[TestSample], scores: np.ndarray, decisions: np.ndarray) -> None:
    """One row per test image: its path, kind, label, score and decision at the threshold."""
    with path.open("w", newline="") as f:
        table = SpreadsheetCsv(f, ("path", "kind", "label", "score", "decision"))
        for s, sc, d in zip(test, scores, decisions, strict=True):
            table.row((str(s.path), s.kind, s.label, float(f"{sc:.6g}"), "fail" if d else "pass"))


def _score_test(run: Run, test: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """score_frames on the test images -> (recons, maps, scores); empty arrays for no images."""
    if test:
        return score_frames(run.model, np.stack([s.image for s in test]))
    size = run.model_cfg.image_size
    return np.zeros((0, *size, run.model_cfg.channels), np.uint8), np.zeros((0, *size), np.float32), np.zeros(0)


def _pictures(
    run: Run,
    out: Path,
    test: list[TestSample],
    recons: np.ndarray,
    maps: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    labels: np.ndarray,
    val_images: np.ndarray,
    choices: list[dict[str, Any]],
) -> None:
    img_dir = out / PANELS
    img_dir.mkdir(exist_ok=True)
    panels = zip(test, recons, maps, scores, strict=True)
    for s, recon, amap, score in progress(panels, f"drawing {img_dir}", total=len(test)):
        write_image(out / panel_path(s), _panel(s.image, recon, amap, s.mask, float(score), threshold))
    histogram = score_histogram(
        scores[labels == 0], threshold, defects=scores[labels == 1], title=f"{run.root.name}: the test set",
        good_label="good test images", defect_label="defect test images", choices=choices,
    )  # fmt: skip
    write_image(out / "histogram.png", histogram)
    if labels.min() != labels.max():
        fpr, tpr = roc_points(labels, scores)
        plots.roc_plot(out / "roc.png", fpr, tpr, image_auroc(labels, scores))
    counts = codebook_counts(run, val_images)
    plots.codebook_plot(out / "codebook.png", counts, run.model.vqvae.quantizer.embed.detach().numpy())
    plots.curves_plot(run.root / "metrics.csv", out / "curves.png")


def _calibration_pictures(run: Run, out: Path, threshold: dict[str, Any], val: dict[str, tuple]) -> None:
    """Panels of the good images the threshold names (`highest_images`): the ones that set it.
    They are validation images (`val`: path -> image, reconstruction, map, score), or the line's
    images when `vqad calibrate` set the threshold, read again and scored; one no longer on disk
    is skipped with a warning."""
    named = [str(entry["image"]) for entry in threshold.get("highest_images") or []]
    on_disk = [name for name in named if name not in val and Path(name).is_file()]
    for name in sorted(set(named) - set(val) - set(on_disk)):
        log.warning("calibration image %s is not on disk: no panel", name)
    if on_disk:
        images = load_images([Path(n) for n in on_disk], run.model_cfg.input_format)
        recons, maps, scores = score_frames(run.model, images)
        val = {**val, **_by_path(on_disk, images, recons, maps, scores)}
    (out / PANELS).mkdir(exist_ok=True)  # a category without a test set draws these alone
    for rank, name in enumerate(named, start=1):
        if name in val:
            image, recon, amap, score = val[name]
            panel = _panel(image, recon, amap, None, float(score), threshold["value"], "good (calibration)")
            write_image(out / calibration_panel_path(rank, name), panel)


def _by_path(paths: list, *columns: np.ndarray) -> dict[str, tuple]:
    """{str(path): (column_0[i], column_1[i], ...)} for the i-th path."""
    return {str(p): row for p, row in zip(paths, zip(*columns, strict=True), strict=True)}
