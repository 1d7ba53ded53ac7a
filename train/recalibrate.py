"""`vqad calibrate RUN_DIR GOOD_DIR`: a trained run's threshold, recalibrated on new good images
from the line without retraining. threshold.json gets the new threshold with its provenance
(the previous one under "previous"); `vqad eval` keeps it and `vqad export` packages it.

With confirmed defects and `--choose-scale`, the run's map is first rebuilt at each of SCALES
(its smoothing and the golden template's bands as a factor on the tuned constants), each
calibrated on the run's own good images as training does and thresholded on GOOD_DIR; the scale
whose threshold lets the fewest of the defects pass is kept in the checkpoint (its config's
`score.scale` and its scoring plan). With `--fuse-scales`, the map is rebuilt with those fused
maps first (a run saved with one map gets the fused map without retraining). Nothing else in
the model changes; a package exported before it keeps the old map until exported again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import DataError
from edge.recalibrate import calibration_images, check_defects, defect_frames, health_findings
from edge.threshold import calibrate_threshold, check_against_previous
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from train.config import ModelConfig
from train.data import load_images
from train.pipeline import build_scorer, calibrate_scorer, score_frames
from train.run import Run, load_run, read_json

log = logging.getLogger(__name__)

# The map scales `--choose-scale` compares, coarsest first (a tie keeps the coarser). On the
# real development sets (3,000-step runs rescored; docs/decisions.md) 0.7 and 0.5 let fewer
# defects pass than 1 at the calibrated threshold on PCBs and fabric, and none did better on a
# commutator's faint cracks; 0.85 and 0.6 fell between their neighbours or tied with one.
SCALES = (1.0, 0.7, 0.5)
# Under this many confirmed defects the choice rests on a defect or two: said in the log.
FEW_DEFECTS = 10


def calibrate_run(
    run_dir: str | Path,
    good_dir: str | Path,
    target_frr: float | None = None,
    defects_dir: str | Path | None = None,
    choose_scale: bool = False,
    fuse_scales: tuple[float, ...] | None = None,
    force: bool = False,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Recalibrate RUN_DIR's threshold on the good images under GOOD_DIR (threshold.json), and
    with `defects_dir` say how many confirmed defect images would pass it. With `choose_scale`
    (needs `defects_dir`) the map's scale is chosen first and saved in the checkpoint; with
    `fuse_scales` (() = one map) the map is rebuilt with those fused maps first and saved.
    DataError when most good images would be unfit on the line (edge.recalibrate.health_findings
    against the run's training images), or the threshold would rise RAISED_REFUSED times or more
    (edge.threshold.check_against_previous), unless `force`. `data`: the run's category folder
    where it is now, when it has moved since training."""
    if choose_scale and defects_dir is None:
        raise DataError("--choose-scale needs confirmed defects to choose by (--defects DIR)")
    run = load_run(run_dir, data)
    run.require_finished("calibrated")
    cfg, fused = _fused_config(run, fuse_scales)
    shapes: list[tuple[int, int]] = []
    frames, paths, source = calibration_images(
        good_dir, cfg.input_format, run.training_fingerprints(), shapes, defects_dir
    )
    health = health_findings(_camera_health(run), frames, shapes, paths, force)
    target = float(target_frr if target_frr is not None else run.train_cfg.target_frr)
    previous = run.threshold()
    choice = None
    if choose_scale:
        choice, scores = choose_map_scale(run, frames, defects_dir, target, cfg)
        choice["good"] = str(Path(good_dir).resolve())
    else:
        if fused is not None:
            rebuild_map(run, cfg, *_good_images(run))
        _, _, scores = score_frames(run.model, frames)
    threshold = calibrate_threshold(scores, target, source, names=paths)
    # A threshold of another map says nothing of this map's scores.
    same_scale = choice is None or choice["chosen"] == choice["before"]
    same_map = same_scale and (fused is None or fused["fuse_scales"] == fused["before"])
    comparable = previous is not None and same_map and not run.threshold_is_stale(previous)
    _add_previous(threshold, previous, scores, comparable, force)  # before anything is saved: it may refuse
    threshold["health"] = health
    _save_map_choices(run, threshold, choice, fused)
    if defects_dir is not None:
        threshold["defects"] = check_defects(
            defects_dir, cfg.input_format, lambda f: score_frames(run.model, f)[2], threshold["value"],
            previous["value"] if comparable else None, calibration=scores,
        )  # fmt: skip
    run.write_threshold(threshold)
    log.info(
        "%s: threshold %.6g on %d good images (%s)",
        run.root,
        threshold["value"],
        len(paths),
        threshold["frr_bound_note"],
    )
    return threshold


def _fused_config(run: Run, fuse_scales: tuple[float, ...] | None) -> tuple[ModelConfig, dict[str, Any] | None]:
    """The run's model config, with `fuse_scales` in place of its own (validated as the config's
    field: ConfigError), and the record of that change; (config, None) when not given."""
    if fuse_scales is None:
        return run.model_cfg, None
    cfg = dataclasses.replace(
        run.model_cfg, score=dataclasses.replace(run.model_cfg.score, fuse_scales=tuple(fuse_scales))
    )
    before, after = list(run.model_cfg.score.fuse_scales), list(cfg.score.fuse_scales)
    return cfg, {"by": "vqad calibrate --fuse-scales", "calibrated": _now(), "before": before, "fuse_scales": after}


def _add_previous(
    threshold: dict[str, Any], previous: dict[str, Any] | None, scores: np.ndarray, comparable: bool, force: bool
) -> None:
    """The previous threshold into the new one's record, and, when it was of the same map, how
    the two compare (check_against_previous: DataError for a rise it refuses, unless `force`)."""
    if previous is None:
        return
    threshold["previous"] = {k: previous.get(k) for k in ("value", "calibrated", "source", "n_val")}
    if comparable:
        threshold["against_previous"] = check_against_previous(
            scores, float(previous["value"]), threshold["value"], force
        )


def _save_map_choices(
    run: Run, threshold: dict[str, Any], choice: dict[str, Any] | None, fused: dict[str, Any] | None
) -> None:
    """A chosen scale or fused maps into the checkpoint (export again), and into the threshold's
    record; nothing when neither was asked for."""
    if choice is None and fused is None:
        return
    scale_choice = None if choice is None else {k: v for k, v in choice.items() if k != "compared"}
    save_scoring(run, {k: v for k, v in (("scale_choice", scale_choice), ("fuse_choice", fused)) if v})
    if choice is not None:
        threshold["scale"] = choice
    if fused is not None:
        threshold["fused"] = fused


def _camera_health(run: Run) -> dict[str, Any] | None:
    """The run's training images' figures for the health gate; None (logged) when a run trained
    before training kept them has lost its images."""
    try:
        return run.camera_health()
    except DataError as exc:
        log.warning("%s: the good images are not checked against the line's camera health gate", exc)
        return None


def choose_map_scale(
    run: Run, good: np.ndarray, defects_dir: str | Path, target_frr: float, cfg: ModelConfig | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """Rebuild the run's map at each of SCALES (under `cfg`'s scoring, default the run's),
    threshold each on `good` (the line's good frames) at `target_frr`, and leave `run.model`
    with the scale whose threshold lets the fewest confirmed defects pass -> (what was compared
    and chosen, the good frames' scores at that scale)."""
    cfg = cfg or run.model_cfg
    defects, _ = defect_frames(defects_dir, cfg.input_format)
    if len(defects) < FEW_DEFECTS:
        log.warning("choosing the map scale on %d confirmed defects: a defect or two decides it", len(defects))
    train_images, val_images = _good_images(run)
    rows, scorers, good_scores = [], {}, {}
    for scale in SCALES:
        rebuild_map(run, _at_scale(cfg, scale), train_images, val_images)
        good_scores[scale] = score_frames(run.model, good)[2]
        value = calibrate_threshold(good_scores[scale], target_frr, {"by": "vqad calibrate"})["value"]
        missed = int((score_frames(run.model, defects)[2] < value).sum())
        rows.append({"scale": scale, "threshold": value, "missed": missed})
        scorers[scale] = run.model.scorer
        log.info("map scale %g: threshold %.4g lets %d of %d defects pass", scale, value, missed, len(defects))
    best = min(rows, key=lambda r: r["missed"])  # the first of a tie: the coarser scale
    run.model.scorer = scorers[best["scale"]]
    run.model.cfg = run.model_cfg = _at_scale(cfg, best["scale"])
    choice = {
        "by": "vqad calibrate --choose-scale",
        "calibrated": _now(),
        "before": cfg.score.scale,
        "chosen": best["scale"],
        "defects": {"folder": str(Path(defects_dir).resolve()), "n_images": len(defects)},
        "target_frr": target_frr,
        "compared": rows,
    }
    return choice, good_scores[best["scale"]]


def rebuild_map(run: Run, cfg: ModelConfig, train_images: np.ndarray, val_images: np.ndarray) -> None:
    """Give `run.model` the map `cfg`'s scoring describes, calibrated on the run's own good
    images as training calibrates it; `run.model_cfg` becomes `cfg`."""
    run.model.scorer = build_scorer(cfg)
    calibrate_scorer(run.model, train_images, val_images)
    run.model.cfg = run.model_cfg = cfg


def _good_images(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The run's own good training and validation images, as its training split them."""
    why = "the map is rebuilt and calibrated on them"
    fmt = run.model_cfg.input_format
    return load_images(run.split_images("train", why), fmt), load_images(run.split_images("val", why), fmt)


def _at_scale(cfg: ModelConfig, scale: float) -> ModelConfig:
    return dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, scale=scale))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def save_scoring(run: Run, record: dict[str, Any]) -> None:
    """Write the run's rebuilt scorer into its checkpoint: the config's score.scale and
    score.fuse_scales, the scoring plan and the scorer's state, and `record` (what rebuilt it)
    in its meta; the weights, step and optimizer state stay as they were."""
    path = run.root / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    meta = dict(ckpt["meta"])
    score = run.model_cfg.score
    changed = {"scale": score.scale, "fuse_scales": list(score.fuse_scales)}
    before = meta["model_config"]["score"]
    meta["model_config"] = dict(meta["model_config"], score=dict(before, **changed))
    meta["scoring"] = run.model.scorer.plan.to_dict()
    meta.update(record)
    digest = save_checkpoint(path, run.model.state_dict(), meta, ckpt.get("optimizer"))
    run.meta = dict(meta, content_sha256=digest)  # the threshold written next is this checkpoint's
    config_record = run.root / "config.json"  # the run's record of its config follows the checkpoint
    if config_record.is_file():
        config = read_json(config_record)
        config["model"]["score"].update(changed)
        config_record.write_text(json.dumps(config, indent=2))
    log.info(
        "%s: map scale %g, fused scales %s, saved in the checkpoint (was %g, %s)",
        run.root, score.scale, changed["fuse_scales"], before["scale"], before.get("fuse_scales", []),
    )  # fmt: skip
