"""A run directory, read back: its configs, model, validation split and threshold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edge.config import from_mapping
from edge.errors import DataError
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from train.config import ModelConfig, TrainConfig
from train.pipeline import InspectionModel

THRESHOLD_FILE = "threshold.json"


@dataclass
class Run:
    root: Path
    model: InspectionModel
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    meta: dict[str, Any]

    def split(self) -> dict[str, list[str]]:
        path = self.root / "split.json"
        if not path.is_file():
            raise DataError(f"{path} is missing: the run's validation split is unknown")
        return json.loads(path.read_text())

    def threshold(self) -> dict[str, Any] | None:
        path = self.root / THRESHOLD_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir: str | Path) -> Run:
    """Load RUN_DIR/checkpoint.pt (weights_only) into an eval-mode InspectionModel."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"run directory not found: {root}")
    ckpt = load_checkpoint(root / CHECKPOINT_NAME)
    meta = ckpt["meta"]
    saved = dict(meta["model_config"])
    # Runs from before score.balance scored unbalanced errors; runs from before
    # score.head_smoothing_sigma smoothed the head's probability like the error maps; runs from
    # before score.reference_blob_sigma read the template without the blob filter, and those from
    # before score.reference_lighting without the gain plane, in the texture's band.
    score = saved.get("score", {})
    saved["score"] = {
        "balance": False,
        "head_smoothing_sigma": score.get("smoothing_sigma", 2.0),
        "reference_blob_sigma": 0.0,
        "reference_lighting": False,
        "reference_aligned_sigmas": score.get("reference_sigmas", (2.0, 8.0)),
        **score,
    }
    model_cfg = from_mapping(ModelConfig, saved, "model")
    # Runs from before train.head_loss trained the head with the focal loss.
    train_cfg = from_mapping(TrainConfig, {"head_loss": "focal", **meta["train_config"]}, "train")
    model = InspectionModel(model_cfg)
    # Scorer kernels are derived from the config and no longer saved; older checkpoints carry them.
    derived = ("scorer.ssim_kx", "scorer.ssim_ky", "scorer.smooth_kx", "scorer.smooth_ky", "scorer.roi")
    state = {k: v for k, v in ckpt["model"].items() if k not in derived}
    # Checkpoints from before score.balance have no error scales: theirs were all 1.
    state.setdefault("scorer.error_scale", torch.ones(len(model_cfg.score.errors)))
    # Checkpoints from before score.reference have no golden template: it stays off for them.
    for key, value in model.state_dict().items():
        if key.startswith("scorer.ref_"):
            state.setdefault(key, value)
    model.load_state_dict(state)
    model.eval()
    return Run(root, model, model_cfg, train_cfg, meta)
