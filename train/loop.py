"""`vqad train`: fit the VQ-VAE on good images under a step and wall-clock budget.

Life of a run directory:
    config.json   model + train config (written once the data checks pass; each --resume
                  appends the train config it continued under to `resumes`)
    split.json    which good images are train and which are validation (absolute paths)
    training_images.json  the fingerprints of the images the weights were trained on (a
                  fine-tune's source's too) and the training images' camera health
                  figures, for export and calibration without them
    checkpoint.pt the latest self-describing checkpoint (atomic writes)
    metrics.csv   scalars every `log_every` steps (and TensorBoard events if installed)
    train.lock    held by the training writing the run (one at a time)

`train()` is a short sequence: set up (device, model, data, optimiser), the steps (each paints
synthetic defects, reconstructs, and updates the VQ-VAE and the head), logging and periodic
checkpoints, then calibration of the scorer on good images and the final checkpoint.
Ctrl-C saves a checkpoint before exiting; `--resume` continues from it. Under torchrun
the run is data-parallel (DDP; gloo on CPU, NCCL on GPU) and only rank 0 writes.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from edge.config import from_mapping, to_dict
from edge.errors import CheckpointError, ConfigError, DataError
from edge.frames import batched
from edge.recalibrate import fingerprints
from edge.state import LockHeldError, hold_lock
from edge.threshold import ENOUGH_CALIBRATION_IMAGES, WIDE_FRR_BOUND, frr_upper_bound
from train.anomalies import paint_anomalies, paste_repair, pick_for_repair, repair_ranks
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from train.config import ModelConfig, TrainConfig
from train.data import (
    camera_shapes,
    has_test_set,
    input_scale,
    load_images,
    load_test_set,
    resolve_image_size,
    split_train_val,
    train_image_paths,
    warn_mixed_colour,
)
from train.device import Dist, autocast_dtype, pick_device, setup_distributed
from train.head import head_loss
from train.model import denormalize, normalize, uint8_nhwc_to_float
from train.pipeline import InspectionModel, calibrate_scorer
from train.run import (
    TRAINING_IMAGES_FILE,
    load_weights_from,
    read_json,
    read_split,
    trained_on_by,
    write_training_images,
)
from train.runlog import MetricsLog
from train.scoring import SSIM, ScorerPlan

log = logging.getLogger(__name__)

# The optimisation, tuned on `vqad synth` within the 10-minute CPU budget (docs/decisions.md):
# AdamW at 2e-3 without weight decay, 50 warm-up steps, the reconstruction loss L2 + 0.5 x
# (1 - SSIM), and the head's BCE at weight 1.
LR = 2e-3
WEIGHT_DECAY = 0.0
WARMUP_STEPS = 50
SSIM_LOSS_WEIGHT = 0.5
HEAD_LOSS_WEIGHT = 1.0
# Each step trains on random crops of at most this many pixels per side: an input larger than it
# (a tall part at its own aspect ratio) costs no steps, and the fully convolutional networks
# score the whole input. KolektorSDD at 320 x 128 on 128 x 128 crops read 0.800 image AUROC
# (median of 3 seeds) against 0.740 squeezed into 128 x 128 (docs/decisions.md); a square
# input of 128 draws the same random numbers as before crops.
TRAIN_CROP = 128
# After this many steps the pace is known: the log says how long the steps will take, or warns
# that `max_minutes` ends the training first.
PACE_AFTER_STEPS = 20
# Without a terminal, the bar's figures as a log line this often (seconds).
PROGRESS_LINE_S = 60.0


def lr_at(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% over the budget: whichever of `steps` and
    `max_minutes` runs out first, so a time-limited run still ends with a low learning rate.
    The warm-up is WARMUP_STEPS, or a tenth of a shorter run."""
    warmup = min(WARMUP_STEPS, max(1, cfg.steps // 10))
    if step < warmup:
        return LR * (step + 1) / warmup
    by_steps = (step - warmup) / max(1, cfg.steps - warmup)
    by_time = elapsed_s / (cfg.max_minutes * 60.0)
    t = min(1.0, max(by_steps, by_time))
    return LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


class RunData(NamedTuple):
    """The good images a training run holds: its split, read, and its training images' fingerprints."""

    train_paths: list[Path]
    val_paths: list[Path]
    train_images: np.ndarray  # (N, H, W, C) uint8 at the model's input
    val_images: np.ndarray
    train_shapes: list[tuple[int, int]]  # each training image's (H, W) as read
    train_prints: list[str]  # edge.recalibrate.fingerprints of train_paths


def _warn_if_few_held_out(n: int) -> None:
    """Said before training, not after it: a threshold from n held-out images cannot bound the
    line's false rejects under WIDE_FRR_BOUND, whatever the model learns."""
    if n < ENOUGH_CALIBRATION_IMAGES:
        log.warning(
            "only %d good images are held out: the threshold vqad eval calibrates on them bounds new good parts' "
            "false rejects at %.0f%% at best (%d images bring it under %.0f%%): add good images to train/good, "
            "or run vqad calibrate on the line's good parts before it decides",
            n, 100 * frr_upper_bound(n, 0), ENOUGH_CALIBRATION_IMAGES, 100 * WIDE_FRR_BOUND,
        )  # fmt: skip


def load_run_data(
    category: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path | None = None,
    trained_on: Collection[str] = (),
) -> RunData:
    """Read and check every image the run will touch before anything is written. A resumed run
    (`run_dir`) keeps the split it saved, whatever the folder or the config holds now. A new one
    holds none of `trained_on` out (fingerprints of the images that the weights a fine-tune
    starts from were trained on: they score as learned, not as a new part)."""
    if run_dir is not None:
        split = read_split(run_dir, category)
        train_paths, val_paths = split["train"], split["val"]
        _warn_if_split_policy_changed(run_dir, train_cfg)
        _check_split_against_folder(category, [*train_paths, *val_paths])
        train_prints = fingerprints(train_paths)
    else:
        paths = train_image_paths(category)
        prints = dict(zip(paths, fingerprints(paths), strict=True))
        train_paths, val_paths = split_train_val(
            paths, train_cfg.val_fraction, train_cfg.seed, train_cfg.min_val_images, list(prints.values()), trained_on
        )
        train_prints = [prints[p] for p in train_paths]
    log.info(
        "%d good images: %d to train on, %d held out to calibrate the threshold",
        len(train_paths) + len(val_paths), len(train_paths), len(val_paths),
    )  # fmt: skip
    _warn_if_few_held_out(len(val_paths))
    # One read of both, so that an error names every unreadable image of the folder at once.
    shapes: list[tuple[int, int]] = []
    greys: list[bool] = []
    images = load_images([*train_paths, *val_paths], model_cfg.input_format, shapes, greys)
    warn_mixed_colour(greys, [*train_paths, *val_paths], model_cfg.input_format.channels)
    train_images, val_images = images[: len(train_paths)], images[len(train_paths) :]
    # The test set is checked too (unreadable images, mismatched masks), so eval cannot fail later.
    if has_test_set(category):
        load_test_set(category, model_cfg.input_format)
    else:
        log.info("no test folder in %s: vqad eval will calibrate the threshold and measure nothing", category)
    return RunData(train_paths, val_paths, train_images, val_images, shapes[: len(train_paths)], train_prints)


# The train config keys that draw the split: a resume under other values keeps the saved split.
SPLIT_KEYS = ("seed", "val_fraction", "min_val_images")


def _check_split_against_folder(category: Path, split: list[Path]) -> None:
    """A resume keeps its split (split.json). DataError when images it names are gone from
    their folder (a clean-up that left the run unresumable: every one is needed); a warning
    naming the good images added since, which the resumed run does not train on."""
    gone = [p for p in split if not p.is_file()]
    if gone:
        raise DataError(
            f"the run's split (split.json) names {len(gone)} good image(s) that are gone (e.g. {gone[0]}): a resume "
            "keeps its split; put them back, or train a new run (--init-from RUN starts it from this one's weights)"
        )
    named = {p.resolve() for p in split}
    added = [p for p in train_image_paths(category) if p.resolve() not in named]
    if added:
        log.warning(
            "%d good image(s) in %s are not in the run's split (e.g. %s) and are left out: a resume keeps its split; a "
            "new run trains on them (--init-from RUN starts it from this one's weights)",
            len(added), Path(category) / "train" / "good", added[0].name,
        )  # fmt: skip


def _warn_if_split_policy_changed(run_dir: Path, train_cfg: TrainConfig) -> None:
    config = run_dir / "config.json"
    saved = read_json(config).get("train", {}) if config.is_file() else {}
    changed = [k for k in SPLIT_KEYS if k in saved and saved[k] != getattr(train_cfg, k)]
    if changed:
        log.warning("--resume keeps the run's saved split; train.%s changed and does not redraw it", "/".join(changed))


@dataclass
class Session:
    """What one training holds between its steps."""

    category: Path
    run_dir: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    device: torch.device
    dist: Dist
    rng: np.random.Generator
    model: InspectionModel
    net: torch.nn.Module  # the VQ-VAE, wrapped for DDP when distributed
    head_net: torch.nn.Module | None
    opt: torch.optim.Optimizer
    ssim: SSIM
    amp_dtype: torch.dtype | None
    train_images: np.ndarray
    val_images: np.ndarray
    step: int = 0
    start_step: int = 0  # the step this process started from (> 0 on --resume)
    elapsed_before: float = 0.0
    t0: float = field(default_factory=time.monotonic)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics_log: MetricsLog | None = None
    bar: Any = None
    progress_lines: bool = False  # no terminal (a log file, systemd, CI): a line a minute instead of a bar
    progress_at: float = 0.0  # monotonic time of the last such line
    dead_total: int = 0
    fine_tuned_from: dict[str, Any] | None = None  # load_weights_from's: the run the weights started from
    last_log: tuple[float, int] = (0.0, 0)  # (monotonic time, step) of the last log row

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    def autocast(self) -> torch.autocast:
        # The quantiser turns autocast off inside itself: distances, argmin and EMA stay FP32.
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=enabled)


def train(
    category: str | Path,
    run_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run; `init_from` fine-tunes: a new run that starts from another
    run's weights (the same model config). Returns a summary dict; writes the run directory."""
    with holding_run_dir(Path(run_dir)):
        s = set_up(Path(category), Path(run_dir), model_cfg, train_cfg, resume, progress, init_from)
        interrupted = run_steps(s)
        return finish(s, interrupted)


# The lock a training holds on its run directory (edge.state.hold_lock).
TRAIN_LOCK = "train.lock"


@contextmanager
def holding_run_dir(run_dir: Path) -> Iterator[None]:
    """One training at a time in RUN_DIR: a second one (a command started again in another
    terminal, a --resume of a training still running) would write the same checkpoint, split and
    metrics. ConfigError naming the holder. Only the first process of a distributed run locks.
    A folder made here that nothing else was written to is removed again (bad data stops a
    training before anything is written)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file: a run is a folder (one that is not there yet, or a run's)")
    made = not run_dir.exists()
    try:
        lock = hold_lock(run_dir / TRAIN_LOCK, "training")
    except LockHeldError as held:
        raise ConfigError(
            f"{run_dir} is being trained by another vqad train ({held.holder}): let it end, or stop it (Ctrl-C saves a "
            "checkpoint) and go on with --resume"
        ) from None
    try:
        yield
    finally:
        if lock is not None:
            lock.close()
        if made and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [TRAIN_LOCK]:
            shutil.rmtree(run_dir, ignore_errors=True)


def set_up(
    category: Path,
    run_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool,
    progress: bool,
    init_from: str | Path | None = None,
) -> Session:
    """Device and seeds, the model (resumed from its checkpoint), the data (every image read
    and checked before anything is written), the run directory's files and the optimiser."""
    shapes = camera_shapes(category, pixel_bits=model_cfg.pixel_bits)  # once: the size auto picks, the scale logged
    model_cfg = resolve_image_size(model_cfg, category, shapes)
    device = pick_device(train_cfg.device)
    dist = setup_distributed(device)
    if train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    torch.manual_seed(train_cfg.seed + dist.rank)
    rng = np.random.default_rng(train_cfg.seed + 1000 * dist.rank)
    model, start_step, optimizer_state, elapsed_before, tuned_from = _model(run_dir, model_cfg, resume)
    tuned_from, trained_on = _lineage(run_dir, init_from, resume, model, model_cfg, tuned_from)
    model = model.to(device)
    data = load_run_data(category, model_cfg, train_cfg, run_dir if resume else None, set(trained_on))
    if dist.main:
        _write_run_record(run_dir, category, model_cfg, train_cfg, data, trained_on, start_step if resume else None)
    net, head_net = _per_rank(model, dist.world)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    if dist.main:
        check_room_for_checkpoints(run_dir, model)
    amp_dtype = autocast_dtype(device, train_cfg.precision)
    log.info("training forward pass in %s", "bf16 autocast" if amp_dtype is not None else "fp32")
    s = Session(
        category, run_dir, model_cfg, train_cfg, device, dist, rng, model, net, head_net, opt,
        SSIM(model_cfg.channels).to(device), amp_dtype, data.train_images, data.val_images,
        step=start_step, start_step=start_step, elapsed_before=elapsed_before, fine_tuned_from=tuned_from,
    )  # fmt: skip
    s.last_log = (time.monotonic(), start_step)
    if dist.main:
        s.summary.update(input_scale(shapes, model_cfg.image_size))
        s.metrics_log = MetricsLog(run_dir, append=resume)
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            s.bar = tqdm(total=train_cfg.steps, initial=start_step, desc=f"train {category.name}", unit="step")
        else:
            # A bar redraws itself with carriage returns: in a log it is one line of megabytes.
            s.progress_lines, s.progress_at = progress, time.monotonic()
    return s


# Room a run's disk keeps beyond its checkpoints: the metrics, the plots, eval's pictures.
RUN_MARGIN_BYTES = 16 * 2**20


def check_room_for_checkpoints(run_dir: Path, model: torch.nn.Module) -> None:
    """OSError (ENOSPC, exit 7) when the run's disk cannot hold two checkpoints (each one is
    written beside the one it replaces): found at the start, not at the first save, which
    would lose every step before it. A checkpoint is the state dict (weights and buffers) and
    AdamW's two moments of each trained weight: about 8.3 MiB for the shipped model."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    need, free = 2 * (state + moments) + RUN_MARGIN_BYTES, shutil.disk_usage(run_dir).free
    if free < need:
        raise OSError(errno.ENOSPC, f"its disk has {free / 2**20:.1f} MiB free, and the training needs about "
                      f"{need / 2**20:.1f} MiB for its checkpoints: free some, or train into another folder (--out)",
                      str(run_dir))  # fmt: skip


def _lineage(
    run_dir: Path,
    init_from: str | Path | None,
    resume: bool,
    model: InspectionModel,
    model_cfg: ModelConfig,
    tuned_from: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """A fine-tune's source loaded into `model` (or, on a resume, checked against the run's own)
    -> (the run it was fine-tuned from or None, the images its weights were already trained on:
    the source's, and on a resume those training_images.json names, the source's among them)."""
    trained_on: list[str] = []
    if init_from is not None and resume:
        _check_resumed_fine_tune(run_dir, Path(init_from), tuned_from)
    elif init_from is not None:
        tuned_from = load_weights_from(Path(init_from), model, model_cfg)
        trained_on = trained_on_by(Path(init_from))
    if resume and (run_dir / TRAINING_IMAGES_FILE).is_file():
        trained_on = trained_on_by(run_dir)
    return tuned_from, trained_on


def _write_run_record(
    run_dir: Path,
    category: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: RunData,
    trained_on: list[str],
    resumed_at: int | None,
) -> None:
    """The run folder's files: a new run's config and split, or a resumed run's record of the
    resume and its split where the images are now; then the training images' fingerprints."""
    if resumed_at is not None:
        _record_resume(run_dir, category, model_cfg, train_cfg, resumed_at)
        _write_split(run_dir, data.train_paths, data.val_paths)  # the same images, where they are now
    else:
        _write_run_files(run_dir, category, model_cfg, train_cfg, data.train_paths, data.val_paths)
    write_training_images(run_dir, data.train_prints, data.train_images, data.train_shapes, trained_on)


def _per_rank(model: InspectionModel, world: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The VQ-VAE and the head as each rank trains them: wrapped in DistributedDataParallel
    when more than one process trains."""
    if world <= 1:
        return model.vqvae, model.head
    head = torch.nn.parallel.DistributedDataParallel(model.head) if model.head is not None else None
    return torch.nn.parallel.DistributedDataParallel(model.vqvae), head


def _model(
    run_dir: Path, model_cfg: ModelConfig, resume: bool
) -> tuple[InspectionModel, int, Any, float, dict[str, Any] | None]:
    """A new model, or the run's, resumed: (model, step, optimiser state, elapsed seconds, the
    run it was fine-tuned from or None)."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if not resume:
        if checkpoint.exists():
            raise DataError(f"{run_dir} already holds a run; use --resume or another --out")
        return InspectionModel(model_cfg), 0, None, 0.0, None
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    # Read through the config class, so that keys added since the run was saved take their defaults.
    changed = _changed_keys(to_dict(from_mapping(ModelConfig, meta["model_config"], "model")), to_dict(model_cfg))
    if changed:
        saved = ", ".join(f"model.{k}={v}" for k, v in changed.items())
        raise CheckpointError(f"--resume: {run_dir} was trained with a different model config (it has {saved})")
    model = InspectionModel(model_cfg, ScorerPlan.from_dict(meta["scoring"]))
    model.load_state_dict(ckpt["model"])
    log.info("resuming %s from step %d", run_dir, int(meta["step"]))
    return model, int(meta["step"]), ckpt["optimizer"], float(meta.get("elapsed_s", 0.0)), meta.get("fine_tuned_from")


def _check_resumed_fine_tune(run_dir: Path, init_from: Path, tuned_from: dict[str, Any] | None) -> None:
    """--resume with --init-from (a fine-tune's command given again after a stop): the run goes on
    from its own checkpoint, whose weights --init-from's would replace. Allowed when the run was
    fine-tuned from that run, which is logged; ConfigError otherwise."""
    if tuned_from is not None and Path(tuned_from["run"]) == init_from.resolve():
        log.info("%s was fine-tuned from %s: --resume goes on from its own checkpoint", run_dir, init_from)
        return
    was = f"it was fine-tuned from {tuned_from['run']}" if tuned_from else "it is not a fine-tune of it"
    raise ConfigError(
        f"--resume goes on from {run_dir}'s own checkpoint, and --init-from {init_from} would replace its "
        f"weights: {was}. Leave out --init-from, or fine-tune into a new --out"
    )


def _changed_keys(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: saved value} where `saved` differs from `current`, nested dicts walked."""
    changed: dict[str, Any] = {}
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.update(_changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            changed[prefix + key] = a
    return changed


def _record_resume(
    run_dir: Path, category: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, start_step: int
) -> None:
    """A resume keeps config.json's first train config (the one that drew split.json) and
    appends the train config it continues under, with the step it continues from."""
    path = run_dir / "config.json"
    config = read_json(path) if path.is_file() else _run_config(category, model_cfg, train_cfg)
    config.setdefault("resumes", []).append({"from_step": start_step, "train": to_dict(train_cfg)})
    path.write_text(json.dumps(config, indent=2))


def _run_config(category: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    return {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": str(category.resolve())}


def _write_run_files(
    run_dir: Path,
    category: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_paths: list[str],
    val_paths: list[str],
) -> None:
    """config.json and split.json; the split's paths absolute, so that the run reads its images
    from any working directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(_run_config(category, model_cfg, train_cfg), indent=2))
    _write_split(run_dir, train_paths, val_paths)


def _write_split(run_dir: Path, train_paths: list[Path], val_paths: list[Path]) -> None:
    split = {"train": [str(p.resolve()) for p in train_paths], "val": [str(p.resolve()) for p in val_paths]}
    (run_dir / "split.json").write_text(json.dumps(split, indent=2))


@contextmanager
def stop_on_ctrl_c() -> Iterator[list[bool]]:
    """Ctrl-C, or SIGTERM (`kill`, a job scheduler's or a container's stop), only sets a flag
    (yielded as a one-item list); the loop stops at the next step boundary and saves a
    checkpoint. A KeyboardInterrupt raised mid-step could land inside a lock (tqdm's, a logging
    handler's) and hang the save. A second signal stops at once."""
    flag = [False]

    def request_stop(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_steps(s: Session) -> bool:
    """Train until the step or time budget runs out; True if Ctrl-C stopped it."""
    budget_s = s.train_cfg.max_minutes * 60.0
    interrupted = False
    with stop_on_ctrl_c() as stop:
        try:
            s.model.train()
            while s.step < s.train_cfg.steps:
                elapsed = _agreed_clock(s, stop[0])
                if elapsed > budget_s:
                    log.info(
                        "time budget of %.1f min reached at step %d of %d", s.train_cfg.max_minutes, s.step,
                        s.train_cfg.steps,
                    )  # fmt: skip
                    break
                losses = train_step(s, elapsed)
                s.step += 1
                if s.step == s.start_step + PACE_AFTER_STEPS and s.dist.main:
                    log_pace(s)
                _log_step(s, losses)
                if s.step % s.train_cfg.checkpoint_every == 0:
                    save(s, "periodic")
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted at step %d: saving a checkpoint (continue with --resume)", s.step)
        finally:
            if s.bar is not None:
                s.bar.close()
    return interrupted


def duration_text(seconds: float) -> str:
    """A time left as a person reads it: "15 min", or "40 s" under a minute and a half (a short
    training's "0 min" read as done)."""
    return f"{seconds / 60.0:.0f} min" if seconds >= 90 else f"{max(0.0, seconds):.0f} s"


def log_pace(s: Session) -> None:
    """How long the remaining steps will take at the pace so far; a warning when `max_minutes`
    will end the training first, and near which step."""
    cfg, done = s.train_cfg, s.step - s.start_step
    per_step = (s.elapsed() - s.elapsed_before) / max(1, done)
    left_s = cfg.max_minutes * 60.0 - s.elapsed()
    need_s = (cfg.steps - s.step) * per_step
    if need_s <= left_s:
        log.info("%.2f s a step: about %s for the %d steps left", per_step, duration_text(need_s), cfg.steps - s.step)
        return
    log.warning(
        "%.2f s a step: the %g-minute budget (train.max_minutes) ends this training near step %d of %d; "
        "raise --max-minutes to train every step",
        per_step, cfg.max_minutes, s.step + int(left_s / per_step), cfg.steps,
    )  # fmt: skip


def _agreed_clock(s: Session, stop_requested: bool) -> float:
    """The elapsed seconds every rank agrees on (the largest), and KeyboardInterrupt when any
    rank was asked to stop: lr, the budget and Ctrl-C agree across ranks."""
    clock = torch.tensor([s.elapsed(), float(stop_requested)], dtype=torch.float64)
    if s.dist.world > 1:
        torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
    if clock[1] > 0:
        raise KeyboardInterrupt
    return float(clock[0])


def train_step(s: Session, elapsed: float) -> dict[str, Any]:
    """One optimisation step on a batch with synthetic defects painted in: the VQ-VAE learns to
    reconstruct the clean image, the head to find the painted defects. -> losses and VQ stats."""
    for group in s.opt.param_groups:
        group["lr"] = lr_at(s.step, elapsed, s.train_cfg)
    picked = s.train_images[s.rng.integers(0, len(s.train_images), s.train_cfg.batch_size)]
    clean_u8 = random_crops(picked, s.rng)  # (B, h, w, C), h, w <= TRAIN_CROP
    clean01 = torch.from_numpy(clean_u8).permute(0, 3, 1, 2).float().div(255).to(s.device)  # (B, C, H, W)
    corrupted, mask_np = paint_anomalies(clean_u8, s.train_images, s.rng)
    for_head = corrupt_in_code_space(s, clean_u8, corrupted, mask_np).to(s.device)  # (B,) bool
    inp01 = torch.from_numpy(corrupted).permute(0, 3, 1, 2).to(s.device)  # (B, C, H, W)
    masks = torch.from_numpy(mask_np)[:, None].to(s.device)  # (B, 1, H, W)
    mean, std = s.model_cfg.channel_mean(), s.model_cfg.channel_std()
    with s.autocast():
        recon, stats = s.net(normalize(inp01, mean, std))
    recon01 = denormalize(recon.float(), mean, std)  # losses in FP32
    l2 = F.mse_loss(recon01, clean01)
    ssim_l = 1 - s.ssim(recon01, clean01).mean()
    loss = l2 + SSIM_LOSS_WEIGHT * ssim_l + stats["vq_loss"]
    head_l = torch.zeros(())
    if s.head_net is not None:
        with s.autocast():
            logits, _ = s.head_net(inp01, recon01.detach())
        # A batch of code-space repairs alone gives the head nothing to learn, yet its graph
        # stays in the loss: each rank of a distributed training reduces every gradient.
        head_l = head_loss(logits.float()[for_head], masks[for_head]) if for_head.any() else logits.sum() * 0.0
        loss = loss + HEAD_LOSS_WEIGHT * head_l
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    s.opt.step()
    s.dead_total += s.model.vqvae.expire_dead_codes()
    return {"loss": loss, "l2": l2, "ssim": ssim_l, "head": head_l, "stats": stats}


@torch.no_grad()
def corrupt_in_code_space(s: Session, clean_u8: np.ndarray, corrupted: np.ndarray, masks: np.ndarray) -> torch.Tensor:
    """Corrupt a share of the unpainted crops in `corrupted` (B, H, W, C) in place, in the VQ-VAE's
    code space (train/anomalies.py, REPAIR_SHARE): the VQ-VAE's repair target. -> (B,) bool, the
    crops the head learns from: all but those this moved visibly, whose labels say nothing.
    A one-level model with its codebook initialised only; otherwise nothing changes."""
    for_head = torch.ones(len(clean_u8), dtype=torch.bool)
    vqvae = s.model.vqvae
    if vqvae.top is not None or not bool(vqvae.quantizer.initted):
        return for_head
    chosen = pick_for_repair(masks, s.rng)
    if not len(chosen):
        return for_head
    mean, std = s.model_cfg.channel_mean(), s.model_cfg.channel_std()
    x01 = torch.from_numpy(clean_u8[chosen]).permute(0, 3, 1, 2).float().div(255).to(s.device)  # (n, C, H, W)
    height, width = clean_u8.shape[1:3]
    grid = (height // s.model_cfg.downsample, width // s.model_cfg.downsample)
    ranks = np.stack([repair_ranks((height, width), grid, vqvae.quantizer.K, s.rng) for _ in chosen])  # (n, h, w)
    decoded = denormalize(vqvae.decode_ranked(normalize(x01, mean, std), torch.from_numpy(ranks)), mean, std)
    decoded_np = decoded.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, C)
    for j, i in enumerate(chosen):
        corrupted[i], moved = paste_repair(clean_u8[i], decoded_np[j], ranks[j])
        for_head[i] = not moved
    return for_head


def random_crops(images: np.ndarray, rng: np.random.Generator, crop: int | None = None) -> np.ndarray:
    """(B, H, W, C) -> (B, min(H, crop), min(W, crop), C), each image cropped at a random place
    (`crop` defaults to TRAIN_CROP). Images that fit are returned as they are and draw nothing
    from `rng`, so a square input of TRAIN_CROP draws the same random numbers as without crops."""
    crop = crop or TRAIN_CROP
    n, h, w = images.shape[:3]
    ch, cw = min(h, crop), min(w, crop)
    if (ch, cw) == (h, w):
        return images
    ys, xs = rng.integers(0, h - ch + 1, n), rng.integers(0, w - cw + 1, n)
    return np.stack([image[y : y + ch, x : x + cw] for image, y, x in zip(images, ys, xs, strict=True)])


def _progress_line(s: Session, losses: dict[str, Any]) -> None:
    """The bar's figures as a log line: step, share, pace, time left (to the steps' end, or to
    the time budget's when that comes first), losses."""
    now = time.monotonic()
    pace = (s.step - s.start_step) / max(1e-6, now - s.t0)
    left_min, until = time_left_min(s.train_cfg, s.step, pace, s.elapsed())
    log.info(
        "train %s: step %d of %d (%.0f%%), %.2f steps/s, about %s left%s; loss %.4f, l2 %.5f, head %.4f",
        s.category.name, s.step, s.train_cfg.steps, 100 * s.step / s.train_cfg.steps, pace,
        duration_text(60.0 * left_min), until,
        losses["loss"].item(), losses["l2"].item(), losses["head"].item(),
    )  # fmt: skip
    s.progress_at = now


def time_left_min(cfg: TrainConfig, step: int, pace: float, elapsed_s: float) -> tuple[float, str]:
    """The minutes the training has left at `pace` (steps/s), and "" when its steps end it, or
    " (train.max_minutes ends it)" when the time budget comes first."""
    by_steps = (cfg.steps - step) / max(1e-6, pace) / 60
    by_time = max(0.0, cfg.max_minutes - elapsed_s / 60)
    return (by_steps, "") if by_steps <= by_time else (by_time, " (train.max_minutes ends it)")


def _log_step(s: Session, losses: dict[str, Any]) -> None:
    """The progress bar every step; a metrics.csv row every log_every steps (with the
    validation L2 at checkpoints)."""
    stats = losses["stats"]
    if s.bar is not None:
        s.bar.update(1)
        ppl = float(stats["perplexity"]) if "perplexity" in stats else float("nan")
        s.bar.set_postfix(
            loss=f"{losses['loss'].item():.4f}", l2=f"{losses['l2'].item():.5f}", ppl=f"{ppl:.1f}",
            head=f"{losses['head'].item():.4f}",
        )  # fmt: skip
    elif s.progress_lines and time.monotonic() - s.progress_at >= PROGRESS_LINE_S:
        _progress_line(s, losses)
    cfg = s.train_cfg
    if not s.dist.main or not (s.step % cfg.log_every == 0 or s.step == cfg.steps):
        return
    now = time.monotonic()
    last_t, last_step = s.last_log
    row = {
        "step": s.step,
        "elapsed_s": round(s.elapsed(), 2),
        "loss": losses["loss"].item(),
        "recon_l2": losses["l2"].item(),
        "recon_ssim": losses["ssim"].item(),
        "vq_loss": float(stats["vq_loss"].detach()),
        "perplexity": float(stats["perplexity"]),
        "used_codes": int(stats["used_codes"]),
        # two levels: TensorBoard only, so metrics.csv keeps its columns for --resume
        **({"top_perplexity": float(stats["top_perplexity"])} if "top_perplexity" in stats else {}),
        "head_loss": losses["head"].item(),
        "dead_restarted": s.dead_total,
        "lr": s.opt.param_groups[0]["lr"],
        "images_per_s": round((s.step - last_step) * cfg.batch_size * s.dist.world / max(1e-6, now - last_t), 2),
    }
    if s.step % cfg.checkpoint_every == 0 or s.step == cfg.steps:
        row["val_l2"] = validation_l2(s.model, s.val_images)
        s.model.train()
    s.metrics_log.write(row)
    s.summary.update(row)
    s.last_log, s.dead_total = (now, s.step), 0


def save(s: Session, reason: str) -> None:
    """The run's checkpoint: weights, configs, the scorer's plan, step, time and metrics (rank 0)."""
    if not s.dist.main:
        return
    meta = {
        "model_config": to_dict(s.model_cfg),
        "train_config": to_dict(s.train_cfg),
        "step": s.step,
        "elapsed_s": s.elapsed(),
        "metrics": s.summary,
        "scoring": s.model.scorer.plan.to_dict(),
        "reason": reason,
        "data": str(s.category.resolve()),
        **({"fine_tuned_from": s.fine_tuned_from} if s.fine_tuned_from else {}),
    }
    save_checkpoint(s.run_dir / CHECKPOINT_NAME, s.model.state_dict(), meta, s.opt.state_dict())


def finish(s: Session, interrupted: bool) -> dict[str, Any]:
    """Calibrate the scorer on good images (unless interrupted), save the final checkpoint."""
    s.model.eval()
    if not interrupted:
        calibrate_scorer(s.model, s.train_images, s.val_images)
    s.summary.update(
        {
            "step": s.step,
            "val_l2": validation_l2(s.model, s.val_images),
            "interrupted": interrupted,
            "ended_by": "interrupted" if interrupted else "steps" if s.step >= s.train_cfg.steps else "max_minutes",
            "n_train": len(s.train_images),
            "n_val": len(s.val_images),
        }
    )
    save(s, "interrupted" if interrupted else "final")
    if s.metrics_log is not None:
        s.metrics_log.close()
    if s.dist.world > 1:
        torch.distributed.destroy_process_group()
    if interrupted:
        raise KeyboardInterrupt
    return s.summary


@torch.no_grad()
def validation_l2(model: InspectionModel, val_images: np.ndarray) -> float:
    """Mean squared reconstruction error on the good validation images (an early check)."""
    model.eval()
    total = 0.0
    for batch in batched(val_images, 16):
        x01 = uint8_nhwc_to_float(torch.from_numpy(batch))  # no scoring needed here
        total += float(((model.reconstruct(x01) - x01) ** 2).sum())
    return total / val_images.size
