"""`vqad calibrate RUN_DIR GOOD_DIR`: a trained run's threshold, recalibrated on new good images
from the line without retraining. threshold.json gets the new threshold with its provenance
(the previous one under "previous"); `vqad eval` keeps it and `vqad export` packages it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge.recalibrate import check_defects, good_frames
from edge.threshold import calibrate_threshold
from train.pipeline import score_frames
from train.run import THRESHOLD_FILE, load_run

log = logging.getLogger(__name__)


def calibrate_run(
    run_dir: str | Path, good_dir: str | Path, target_frr: float | None = None, defects_dir: str | Path | None = None
) -> dict[str, Any]:
    """Recalibrate RUN_DIR's threshold on the good images under GOOD_DIR (threshold.json), and
    with `defects_dir` say how many confirmed defect images would pass it."""
    run = load_run(run_dir)
    frames, paths = good_frames(good_dir, run.model_cfg.image_size, run.model_cfg.channels)
    _, _, scores = score_frames(run.model, frames)
    target = float(target_frr if target_frr is not None else run.train_cfg.target_frr)
    source = {"by": "vqad calibrate", "folder": str(Path(good_dir).resolve()), "n_images": len(paths)}
    threshold = calibrate_threshold(scores, target, source, names=paths)
    previous = run.threshold()
    if previous is not None:
        threshold["previous"] = {k: previous.get(k) for k in ("value", "calibrated", "source", "n_val")}
    if defects_dir is not None:
        cfg = run.model_cfg
        threshold["defects"] = check_defects(
            defects_dir, cfg.image_size, cfg.channels, lambda f: score_frames(run.model, f)[2], threshold["value"],
            previous["value"] if previous is not None else None,
        )  # fmt: skip
    (run.root / THRESHOLD_FILE).write_text(json.dumps(threshold, indent=2) + "\n")
    log.info(
        "%s: threshold %.6g on %d good images (%s)",
        run.root,
        threshold["value"],
        len(paths),
        threshold["frr_bound_note"],
    )
    return threshold
