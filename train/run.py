"""A run directory, read back: its configs, model, validation split and threshold."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import from_mapping, to_dict
from edge.errors import CheckpointError, DataError
from edge.health import training_stats
from edge.recalibrate import fingerprints
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from train.config import ModelConfig, TrainConfig
from train.data import load_images
from train.pipeline import InspectionModel
from train.scoring import ScorerPlan

log = logging.getLogger(__name__)

THRESHOLD_FILE = "threshold.json"
# The latest `vqad eval`'s figures, wherever its report went: what the export puts in model.json.
EVALUATION_FILE = "evaluation.json"
# What training found of its training images, for what comes after it without them: their
# fingerprints (vqad calibrate leaves them out) and their camera health figures (model.json).
TRAINING_IMAGES_FILE = "training_images.json"


@dataclass
class Run:
    root: Path
    model: InspectionModel
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    meta: dict[str, Any]
    data: Path | None = None  # the category folder where it is now, when the user says (read_split)
    _split: dict[str, list[Path]] | None = field(default=None, repr=False)

    def split(self) -> dict[str, list[Path]]:
        if self._split is None:
            self._split = read_split(self.root, self.data)
        return self._split

    def split_images(self, part: str, why: str) -> list[Path]:
        """The paths of the split's `part` ("train" or "val"); DataError when some are gone,
        saying `why` they are read and where the data can be named."""
        paths = self.split()[part]
        gone = [p for p in paths if not p.is_file()]
        if gone:
            where = (
                f"they are not under {self.data} either"
                if self.data is not None
                else "if the data folder has moved, say where its category folder is now (--data CAT)"
            )
            kind = "validation" if part == "val" else "training"
            raise DataError(
                f"{len(gone)} of the run's {len(paths)} {kind} images are gone (e.g. {gone[0]}): {why}; {where}"
            )
        return paths

    def unfinished(self) -> str | None:
        """Why the checkpoint is not a finished training's, or None: one saved on the way
        ("periodic": the process then stopped without a word) or at a Ctrl-C ("interrupted")
        holds weights whose map was never calibrated on the good images, so its units and
        threshold are not the model's. A checkpoint from before the reason was kept is taken as
        finished."""
        reason = self.meta.get("reason", "final")
        if reason == "final":
            return None
        steps = self.train_cfg.steps
        return f"it stopped at step {self.meta.get('step')} of {steps} ({reason}) and its map was never calibrated"

    def require_finished(self, doing: str) -> None:
        """DataError when the run is unfinished (see `unfinished`), saying how to finish it."""
        why = self.unfinished()
        if why:
            raise DataError(
                f"{self.root} cannot be {doing}: {why}. Finish it: vqad train DATA_CAT --out {self.root} --resume "
                "(--steps N ends it sooner)"
            )

    def threshold(self) -> dict[str, Any] | None:
        path = self.root / THRESHOLD_FILE
        return read_json(path) if path.is_file() else None

    def write_threshold(self, threshold: dict[str, Any]) -> None:
        """threshold.json, stamped with the checkpoint it was calibrated for (`checkpoint_sha256`)."""
        threshold["checkpoint_sha256"] = self.meta.get("content_sha256")
        (self.root / THRESHOLD_FILE).write_text(json.dumps(threshold, indent=2) + "\n")

    def write_evaluation(self, metrics: dict[str, Any], report: Path) -> None:
        """evaluation.json: `metrics` (stamped with the checkpoint they measured) and where their
        report is. The report goes where `vqad eval --out` says; the run keeps its figures."""
        figures = {**metrics, "report": str(Path(report).absolute())}
        (self.root / EVALUATION_FILE).write_text(json.dumps(figures, indent=2, allow_nan=False) + "\n")

    def evaluation(self) -> dict[str, Any] | None:
        """The latest evaluation of the weights as they are now (evaluation.json; a run evaluated
        before it, its eval/metrics.json), or None: none, or one of earlier weights (logged)."""
        for path in (self.root / EVALUATION_FILE, self.root / "eval" / "metrics.json"):
            if path.is_file():
                figures = read_json(path)
                if figures.get("checkpoint_sha256") in (None, self.meta.get("content_sha256")):
                    return figures
                log.warning("%s measured the run's weights before they were trained further or their map rebuilt: "
                            "not packaged (vqad eval again first)", path)  # fmt: skip
                return None
        return None

    def threshold_is_stale(self, threshold: dict[str, Any]) -> bool:
        """Whether `threshold` was calibrated for other weights than the checkpoint's now (a
        resume or a rebuilt map since). One written before thresholds were stamped is taken as
        the checkpoint's."""
        stamped = threshold.get("checkpoint_sha256")
        return stamped is not None and stamped != self.meta.get("content_sha256")

    def camera_health(self) -> dict[str, Any]:
        """The training images' figures for the line's camera health gate (model.json's
        `camera_health`): as training found them, or (a run trained before it kept them) its
        training images read again."""
        kept = self._training_images()
        if kept is not None:
            return kept["camera_health"]
        shapes: list[tuple[int, int]] = []
        paths = self.split_images("train", "the camera health gate's figures are read from them")
        images = load_images(paths, self.model_cfg.input_format, shapes)
        return training_stats(images, shapes)

    def training_fingerprints(self) -> list[str]:
        """The fingerprints of the images its weights were trained on (trained_on_by)."""
        return trained_on_by(self.root, self.data)

    def _training_images(self) -> dict[str, Any] | None:
        path = self.root / TRAINING_IMAGES_FILE
        return read_json(path) if path.is_file() else None


def trained_on_by(run_dir: Path, data: Path | None = None) -> list[str]:
    """The fingerprints (edge.recalibrate.fingerprints) of the images RUN_DIR's weights were
    trained on: as training found them (training_images.json: its training images, then those
    its fine-tune's source was trained on), or (a run trained before it kept them) those of its
    split's training files still there (`data`: read_split's)."""
    path = run_dir / TRAINING_IMAGES_FILE
    if path.is_file():
        return list(read_json(path)["fingerprints"])
    return fingerprints([p for p in read_split(run_dir, data)["train"] if p.is_file()])


def write_training_images(
    run_dir: Path,
    prints: list[str],
    images: np.ndarray,
    shapes: list[tuple[int, int]],
    also_trained_on: list[str] | None = None,
) -> None:
    """RUN_DIR/training_images.json: the fingerprints of the images the weights were trained on
    (`prints`, the training images', then those of `also_trained_on` not among them: a
    fine-tune's source's) and the camera health figures of the training images (`images` at the
    model's input, `shapes` as read), so that export and calibration need not read them again,
    nor find them where training did."""
    own = set(prints)
    earlier = [p for p in dict.fromkeys(also_trained_on or ()) if p not in own]
    kept = {"fingerprints": [*prints, *earlier], "camera_health": training_stats(images, shapes)}
    (run_dir / TRAINING_IMAGES_FILE).write_text(json.dumps(kept, indent=2) + "\n")


def read_split(run_dir: Path, data: Path | None = None) -> dict[str, list[Path]]:
    """RUN_DIR/split.json -> {"train": [Path, ...], "val": [Path, ...]}, as the training drew it.
    With `data` (the category folder where it is now), an image gone from where the split names
    it is read from the same place under `data`: a data folder moved, or the run taken to
    another machine."""
    path = run_dir / "split.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: the run's validation split is unknown")
    split = read_json(path)
    try:
        split = {part: [Path(p) for p in paths] for part, paths in split.items()}
    except (AttributeError, TypeError) as exc:
        raise DataError(f"{path} is not a split ({{'train': [...], 'val': [...]}}): {exc}") from exc
    return moved_to(split, Path(data)) if data is not None else split


def moved_to(split: dict[str, list[Path]], data: Path) -> dict[str, list[Path]]:
    """`split` with each image that is gone replaced by its namesake under `data`, at the same
    place relative to the category folder (the one whose train/good/ holds the images), where
    that one is there; logged once."""
    paths = [p for part in split.values() for p in part]
    trained_in = _category_of(paths)
    if trained_in is None:
        return split

    def found(p: Path) -> Path:
        if p.is_file() or not p.is_relative_to(trained_in):
            return p
        there = data / p.relative_to(trained_in)
        return there if there.is_file() else p

    moved = {part: [found(p) for p in part_paths] for part, part_paths in split.items()}
    n = sum(a != b for part in split for a, b in zip(split[part], moved[part], strict=True))
    if n:
        log.info("%d of the run's %d good images are gone from %s: read from %s", n, len(paths), trained_in, data)
    return moved


def _category_of(paths: list[Path]) -> Path | None:
    """The category folder of a split's images: the one that holds train/good/ above the first."""
    folders = paths[0].parents if paths else []
    return next((f.parent.parent for f in folders if f.name == "good" and f.parent.name == "train"), None)


def read_json(path: Path) -> Any:
    """A run's JSON file; DataError, naming it, when it cannot be read (an edit that broke it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as JSON: {exc}") from exc


def check_run_dir(root: Path, why: str = "") -> None:
    """DataError when `root` is not a folder, or is a model package, which holds no weights to
    train or calibrate (it names the run it was exported from), or a data folder, not trained
    yet; `why` leads the message."""
    if not root.is_dir():
        raise DataError(f"{why}run directory not found: {root}")
    if not (root / CHECKPOINT_NAME).is_file() and (root / "train" / "good").is_dir():
        raise DataError(f"{why}{root} is a data folder (train/good), not a training run: train on it first "
                        f"(vqad train {root} --out RUN_DIR)")  # fmt: skip
    if not (root / CHECKPOINT_NAME).is_file() and (root / "model.json").is_file():
        meta = read_json(root / "model.json")
        source = meta.get("source") if isinstance(meta, dict) else None
        run = source.get("run") if isinstance(source, dict) else None
        named = f" ({run})" if run else ""
        raise DataError(f"{why}{root} is a model package, not a training run: give the run it was exported from{named}")


def load_run(run_dir: str | Path, data: str | Path | None = None) -> Run:
    """Load RUN_DIR/checkpoint.pt (weights_only; older formats upgraded) into an eval-mode
    InspectionModel. `data`: the category folder where it is now, when it has moved since
    training (read_split)."""
    root = Path(run_dir).absolute()  # provenance (metrics.json, model.json) names it wherever it is read from
    check_run_dir(root)
    ckpt = load_checkpoint(root / CHECKPOINT_NAME)
    meta = ckpt["meta"]
    model_cfg = from_mapping(ModelConfig, meta["model_config"], "model")
    train_cfg = from_mapping(TrainConfig, meta["train_config"], "train")
    model = InspectionModel(model_cfg, ScorerPlan.from_dict(meta["scoring"]))
    state = ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    return Run(root, model, model_cfg, train_cfg, meta, Path(data) if data is not None else None)


def load_weights_from(source: Path, model: InspectionModel, model_cfg: ModelConfig) -> dict[str, Any]:
    """Start from `source`'s trained weights (the VQ-VAE, its codebook state and the head);
    the scorer is calibrated afresh at the end, on the new run's images. -> the checkpoint meta's
    `fine_tuned_from`: the source run, its weights' content hash and step."""
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
    return {
        "run": str(source.resolve()),
        "checkpoint_sha256": ckpt["meta"].get("content_sha256"),
        "step": ckpt["meta"].get("step"),
    }
