"""A run directory, read back: its configs, model, validation split and threshold."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import from_mapping, to_dict
from edge.errors import CheckpointError, DataError
from edge.health import training_stats
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from train.config import ModelConfig, TrainConfig
from train.data import load_images
from train.pipeline import InspectionModel
from train.scoring import ScorerPlan

log = logging.getLogger(__name__)

THRESHOLD_FILE = "threshold.json"


@dataclass
class Run:
    root: Path
    model: InspectionModel
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    meta: dict[str, Any]

    def split(self) -> dict[str, list[Path]]:
        return read_split(self.root)

    def threshold(self) -> dict[str, Any] | None:
        path = self.root / THRESHOLD_FILE
        return read_json(path) if path.is_file() else None

    def camera_health(self) -> dict[str, Any]:
        """The training images' figures for the line's camera health gate (model.json's
        `camera_health`), each image read once."""
        shapes: list[tuple[int, int]] = []
        images = load_images(self.split()["train"], self.model_cfg.input_format, shapes)
        return training_stats(images, shapes)


def read_split(run_dir: Path) -> dict[str, list[Path]]:
    """RUN_DIR/split.json -> {"train": [Path, ...], "val": [Path, ...]}, as the training drew it."""
    path = run_dir / "split.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: the run's validation split is unknown")
    split = read_json(path)
    try:
        return {part: [Path(p) for p in paths] for part, paths in split.items()}
    except (AttributeError, TypeError) as exc:
        raise DataError(f"{path} is not a split ({{'train': [...], 'val': [...]}}): {exc}") from exc


def read_json(path: Path) -> Any:
    """A run's JSON file; DataError, naming it, when it cannot be read (an edit that broke it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as JSON: {exc}") from exc


def load_run(run_dir: str | Path) -> Run:
    """Load RUN_DIR/checkpoint.pt (weights_only; older formats upgraded) into an eval-mode InspectionModel."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"run directory not found: {root}")
    if not (root / CHECKPOINT_NAME).is_file() and (root / "model.json").is_file():
        meta = read_json(root / "model.json")
        source = meta.get("source") if isinstance(meta, dict) else None
        run = source.get("run") if isinstance(source, dict) else None
        named = f" ({run})" if run else ""
        raise DataError(f"{root} is a model package, not a training run: give the run it was exported from{named}")
    ckpt = load_checkpoint(root / CHECKPOINT_NAME)
    meta = ckpt["meta"]
    model_cfg = from_mapping(ModelConfig, meta["model_config"], "model")
    train_cfg = from_mapping(TrainConfig, meta["train_config"], "train")
    model = InspectionModel(model_cfg, ScorerPlan.from_dict(meta["scoring"]))
    state = ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    return Run(root, model, model_cfg, train_cfg, meta)


def load_weights_from(source: Path, model: InspectionModel, model_cfg: ModelConfig) -> None:
    """Start from `source`'s trained weights (the VQ-VAE, its codebook state and the head);
    the scorer is calibrated afresh at the end, on the new run's images."""
    ckpt = load_checkpoint(source / CHECKPOINT_NAME)
    saved = {k: v for k, v in ckpt["meta"]["model_config"].items() if k != "score"}
    differ = sorted(k for k, v in to_dict(model_cfg).items() if k != "score" and saved.get(k) != v)
    if differ:
        its = ", ".join(f"model.{k}={saved.get(k)}" for k in differ)
        raise CheckpointError(f"--init-from: {source} was trained with another model (it has {its})")
    weights = {k: v for k, v in ckpt["model"].items() if not k.startswith("scorer.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not k.startswith("scorer.") for k in missing):
        raise CheckpointError(f"--init-from: {source}'s weights do not fit this model ({missing or unexpected})")
    log.info("fine-tuning from %s (trained %s steps)", source, ckpt["meta"].get("step"))
