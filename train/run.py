"""A run directory, read back: its configs, model, validation split and threshold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import from_mapping
from edge.errors import DataError
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from train.config import ModelConfig, TrainConfig
from train.pipeline import InspectionModel
from train.scoring import ScorerPlan

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
    """Load RUN_DIR/checkpoint.pt (weights_only; older formats upgraded) into an eval-mode InspectionModel."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"run directory not found: {root}")
    ckpt = load_checkpoint(root / CHECKPOINT_NAME)
    meta = ckpt["meta"]
    model_cfg = from_mapping(ModelConfig, meta["model_config"], "model")
    train_cfg = from_mapping(TrainConfig, meta["train_config"], "train")
    model = InspectionModel(model_cfg, ScorerPlan.from_dict(meta["scoring"]))
    state = ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    return Run(root, model, model_cfg, train_cfg, meta)
