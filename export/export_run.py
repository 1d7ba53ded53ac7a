"""`vqad export RUN_DIR --out MODEL_DIR`: model.onnx, model_fp16.onnx, model.json.

Everything is written into a staging folder beside MODEL_DIR and moved into place only
after the parity proof passed, so a failed export leaves no half-written package.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.config import to_dict
from edge.durable import require_writable, sync_folders
from edge.errors import PackageError
from edge.package import FORMAT_VERSION, FP16_FILE, FP32_FILE, MODEL_JSON, sha256_file, write_model_json
from export.config import ExportConfig
from export.onnx_graph import INPUT_NAME, OUTPUT_NAMES, export_graph
from export.parity import compare, onnx_outputs

if TYPE_CHECKING:
    from train.config import ModelConfig
    from train.run import Run

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import onnx
    import onnxruntime
    import torch

    return {
        "vqad": version("vqad"),  # the installed distribution's: export does not import the console above it
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def parity_frames(run: Run, per_kind: int) -> tuple[np.ndarray, list[str]]:
    """Every validation image plus `per_kind` test images of each kind (if the data is still there)."""
    from train.data import load_images, load_test_set

    fmt = run.model_cfg.input_format
    val_paths = run.split_images("val", "the parity proof runs on them")
    frames = [load_images(val_paths, fmt)]
    names = [str(p) for p in val_paths]
    data = run.data or Path(run.meta.get("data", ""))
    if per_kind > 0 and (data / "test").is_dir():
        picked: dict[str, int] = {}
        for sample in load_test_set(data, fmt):
            if picked.get(sample.kind, 0) < per_kind:
                picked[sample.kind] = picked.get(sample.kind, 0) + 1
                frames.append(sample.image[None])
                names.append(str(sample.path))
    return np.concatenate(frames), names


def prove_parity(run: Run, staging: Path, threshold: float, cfg: ExportConfig) -> dict[str, Any]:
    """PyTorch vs the FP32 graph vs the FP16 graph on the validation images and a few test
    images per kind: the figures, and whether the config's bounds hold."""
    from train.pipeline import score_frames

    frames, names = parity_frames(run, cfg.parity_test_per_kind)
    log.info("proving parity on %d images: PyTorch, the FP32 graph, the FP16 graph", len(frames))
    _, t_maps, t_scores = score_frames(run.model, frames)
    near_tie = (run.model.code_margins(frames) < cfg.fp32_tie_tolerance).numpy()
    parity = compare(
        (t_maps[:, None], t_scores),
        onnx_outputs(staging / FP32_FILE, frames),
        onnx_outputs(staging / FP16_FILE, frames),
        threshold,
        cfg.fp32_max_error_of_threshold,
        cfg.fp16_max_relative_error,
        cfg.fp16_min_decision_agreement,
        near_tie=near_tie,
    )
    parity["images"] = names
    return parity


def model_json(run: Run, staging: Path, threshold: dict[str, Any], parity: dict[str, Any], cfg: ExportConfig) -> dict:
    """model.json's content: what the package is, how it was made, and what it measured."""
    eval_metrics = run.evaluation() or {}
    m = run.model_cfg
    meta = {
        "format_version": FORMAT_VERSION,
        "name": m.name,
        "version": cfg.version,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": _input_section(m),
        "normalization": {
            "mean": list(m.channel_mean()),
            "std": list(m.channel_std()),
            "formula": "(pixel / 255 - mean) / std",
            "in_graph": True,
        },
        "output": {
            "names": list(OUTPUT_NAMES),
            "anomaly_map": "N x 1 x H x W float32, smoothed",
            "score": "N float32",
            "map_scale": cfg.map_scale_factor * threshold["value"] / 255.0,
        },
        "threshold": threshold,
        "decision": "fail when score >= threshold",
        # The config's choice, what calibration made of it per term (weights, units, plans), and
        # what rebuilt the map after training (vqad calibrate --choose-scale / --fuse-scales).
        "scoring": {"config": to_dict(m.score), **run.model.scorer.describe(), **_rebuilt(run)},
        "metrics": {"training": run.meta.get("metrics", {}), "evaluation": eval_metrics},
        "files": {
            FP32_FILE: sha256_file(staging / FP32_FILE),
            FP16_FILE: sha256_file(staging / FP16_FILE),
        },
        "opset": cfg.opset,
        "exporter": "torch.onnx (TorchScript tracer)",
        "versions": _versions(),
        "parity": parity,
        "source": _source_section(run),
        "model_config": to_dict(m),
        # What the training images looked like, for the daemon's camera health gate (edge/health.py).
        "camera_health": run.camera_health(),
    }
    return meta


def _input_section(m: ModelConfig) -> dict[str, Any]:
    """model.json's "input": the frames the graph takes, and how a camera's frame becomes one."""
    return {
        "name": INPUT_NAME,
        "size": list(m.image_size),  # [height, width]
        "channels": m.channels,
        "color_order": "BGR" if m.channels == 3 else "GRAY",
        "dtype": "uint8",
        "layout": "NHWC",
        "resize": "edge.frames.to_model_input (INTER_AREA when shrinking, linear when enlarging)",
        # How a 16-bit image from the camera becomes these uint8 pixels (edge.frames.to_uint8):
        # the daemon reads a 16-bit frame that does not say its bits as training read the files.
        "pixel_bits": m.pixel_bits,
    }


def _source_section(run: Run) -> dict[str, Any]:
    """model.json's "source": the run and checkpoint the package was exported from."""
    return {
        "run": str(run.root),
        "checkpoint_sha256": run.meta.get("content_sha256"),
        "step": run.meta.get("step"),
        # A fine-tune's lineage: the run its weights started from, that run's weights and step.
        **({"fine_tuned_from": run.meta["fine_tuned_from"]} if run.meta.get("fine_tuned_from") else {}),
        # vqad calibrate leaves these images out: a threshold on them would sit too low. A
        # fine-tuned run's are its source's too: its weights were trained on them.
        "training_images": run.training_fingerprints(),
    }


def _rebuilt(run: Run) -> dict[str, Any]:
    """{"rebuilt": ...} when `vqad calibrate` rebuilt the run's map after training, else {}."""
    rebuilt = {k: run.meta[k] for k in ("scale_choice", "fuse_choice") if k in run.meta}
    return {"rebuilt": rebuilt} if rebuilt else {}


def export_run(
    run_dir: str | Path, out: str | Path, cfg: ExportConfig, force: bool = False, data: str | Path | None = None
) -> dict[str, Any]:
    """Export, prove parity, write the package. Returns model.json's content. `data`: the run's
    category folder where it is now, when it has moved since training."""
    from train.pipeline import half_precision_copy
    from train.run import load_run

    run = load_run(run_dir, data)
    run.require_finished("exported")
    threshold = run.threshold()
    if threshold is None:
        raise PackageError(f"{run.root} has no threshold.json: run `vqad eval {run.root} DATA_CAT --out REPORT` first")
    if run.threshold_is_stale(threshold):
        raise PackageError(
            f"{run.root}'s threshold.json was calibrated for its weights before it was trained further or its map "
            f"rebuilt (checkpoint {threshold['checkpoint_sha256'][:12]}, now {run.meta['content_sha256'][:12]}): run "
            f"`vqad eval {run.root} DATA_CAT --out REPORT` again (then vqad calibrate, if the line's images set it)"
        )
    out = Path(out)
    if (out / MODEL_JSON).exists() and not force:
        raise PackageError(f"{out} already holds a model package; pass --force to replace it")
    require_writable(out, out)  # a file, or a read-only folder: found before the graphs and their proof
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        log.info("exporting FP32 graph (opset %d)", cfg.opset)
        export_graph(run.model, staging / FP32_FILE, cfg.opset)
        log.info("exporting FP16 graph")
        export_graph(half_precision_copy(run.model), staging / FP16_FILE, cfg.opset)
        parity = prove_parity(run, staging, threshold["value"], cfg)
        meta = model_json(run, staging, threshold, parity, cfg)
        write_model_json(staging, meta)
        out.mkdir(parents=True, exist_ok=True)
        for name in (FP32_FILE, FP16_FILE, MODEL_JSON):  # each synced in staging
            (staging / name).replace(out / name)
        sync_folders([out, out.parent])
        stale = out / "engines"
        if stale.is_dir():
            log.info("keeping %s: engines are keyed by the ONNX sha256, stale ones are never loaded", stale)
        return meta
    finally:
        shutil.rmtree(staging, ignore_errors=True)
