"""`vqad train`: fit the VQ-VAE on good images under a step and wall-clock budget.

Life of a run directory:
    config.json   model + train config (written once the data checks pass)
    split.json    which good images are train and which are validation
    checkpoint.pt the latest self-describing checkpoint (atomic writes)
    metrics.csv   scalars every `log_every` steps (and TensorBoard events if installed)
Ctrl-C saves a checkpoint before exiting; `--resume` continues from it. Under torchrun
the run is data-parallel (DDP; gloo on CPU, NCCL on GPU) and only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge.config import to_dict
from edge.errors import CheckpointError, DataError
from train.anomalies import paint_anomalies
from train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from train.config import ModelConfig, TrainConfig
from train.data import load_images, load_test_set, split_train_val, train_image_paths
from train.head import head_loss
from train.model import denormalize, normalize, uint8_nhwc_to_float
from train.pipeline import InspectionModel
from train.scoring import SSIM, GoodImages, ScorerPlan

log = logging.getLogger(__name__)

CSV_FIELDS = (
    "step",
    "elapsed_s",
    "loss",
    "recon_l2",
    "recon_ssim",
    "vq_loss",
    "perplexity",
    "used_codes",
    "dead_restarted",
    "lr",
    "images_per_s",
    "val_l2",
    "head_loss",
)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DataError("train.device=cuda but no CUDA device is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device(f"cuda:{local}")
    return torch.device("cpu")


def fast_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls and convolutions run faster than FP32: CUDA GPUs with bf16
    (Ampere and later, Jetson Orin included) and CPUs with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so probed
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of the training forward pass for train.precision, or None for FP32."""
    if precision == "bf16" or (precision == "auto" and fast_bf16(device)):
        return torch.bfloat16
    return None


def lr_at(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% over the budget: whichever of `steps` and
    `max_minutes` runs out first, so a time-limited run still ends with a low learning rate."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    by_steps = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    by_time = elapsed_s / (cfg.max_minutes * 60.0)
    t = min(1.0, max(by_steps, by_time))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


class MetricsLog:
    """metrics.csv (always) and TensorBoard events (when tensorboard is installed)."""

    def __init__(self, run_dir: Path, append: bool):
        self.path = run_dir / "metrics.csv"
        new = not (append and self.path.exists())
        self.fh = open(self.path, "w" if new else "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=CSV_FIELDS)
        if new:
            self.writer.writeheader()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is an optional extra
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        self.fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def load_run_data(category: Path, model_cfg: ModelConfig, train_cfg: TrainConfig):
    """Read and check every image the run will touch before anything is written."""
    paths = train_image_paths(category)
    train_paths, val_paths = split_train_val(paths, train_cfg.val_fraction, train_cfg.seed)
    train_images = load_images(train_paths, model_cfg.image_size, model_cfg.channels)
    val_images = load_images(val_paths, model_cfg.image_size, model_cfg.channels)
    # The test set is checked too (unreadable images, mismatched masks), so eval cannot fail later.
    load_test_set(category, model_cfg.image_size, model_cfg.channels)
    return train_paths, val_paths, train_images, val_images


def _ssim_loss(recon01: torch.Tensor, clean01: torch.Tensor, ssim: SSIM) -> torch.Tensor:
    return 1 - ssim(recon01, clean01).mean()


def train(
    category: str | Path,
    run_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a run. Returns a summary dict; writes the run directory."""
    category, run_dir = Path(category), Path(run_dir)
    device = pick_device(train_cfg.device)
    dist = _setup_distributed(device)
    if train_cfg.num_threads > 0:
        torch.set_num_threads(train_cfg.num_threads)
    torch.manual_seed(train_cfg.seed + dist.rank)
    rng = np.random.default_rng(train_cfg.seed + 1000 * dist.rank)

    start_step, optimizer_state, elapsed_before = 0, None, 0.0
    model = InspectionModel(model_cfg).to(device)
    if resume:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
        meta = ckpt["meta"]
        model_cfg_saved = meta["model_config"]
        if model_cfg_saved != to_dict(model_cfg):
            raise CheckpointError(f"--resume: {run_dir} was trained with a different model config")
        model = InspectionModel(model_cfg, ScorerPlan.from_dict(meta["scoring"])).to(device)
        model.load_state_dict(ckpt["model"])
        start_step, optimizer_state = int(meta["step"]), ckpt["optimizer"]
        elapsed_before = float(meta.get("elapsed_s", 0.0))
        log.info("resuming %s from step %d", run_dir, start_step)
    elif run_dir.exists() and (run_dir / CHECKPOINT_NAME).exists():
        raise DataError(f"{run_dir} already holds a run; use --resume or another --out")

    train_paths, val_paths, train_images, val_images = load_run_data(category, model_cfg, train_cfg)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(
            json.dumps({"model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": str(category)}, indent=2)
        )
        (run_dir / "split.json").write_text(
            json.dumps({"train": [str(p) for p in train_paths], "val": [str(p) for p in val_paths]}, indent=2)
        )

    if model.head is not None and train_cfg.anomaly_fraction <= 0:
        raise DataError("the comparison head learns from synthetic anomalies: set train.anomaly_fraction > 0")
    net: torch.nn.Module = model.vqvae
    head_net: torch.nn.Module | None = model.head
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model.vqvae)
        if model.head is not None:
            head_net = torch.nn.parallel.DistributedDataParallel(model.head)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    mean, std = model_cfg.channel_mean(), model_cfg.channel_std()
    ssim = SSIM(model_cfg.channels).to(device)
    amp_dtype = autocast_dtype(device, train_cfg.precision)
    log.info("training forward pass in %s", "bf16 autocast" if amp_dtype is not None else "fp32")

    def autocast():
        # The quantiser turns autocast off inside itself: distances, argmin and EMA stay FP32.
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    metrics_log = MetricsLog(run_dir, append=resume) if dist.main else None
    budget_s = train_cfg.max_minutes * 60.0
    t0 = time.monotonic()
    step = start_step
    bar = None
    if dist.main and progress:
        from tqdm import tqdm

        bar = tqdm(
            total=train_cfg.steps,
            initial=start_step,
            desc=f"train {category.name}",
            unit="step",
            dynamic_ncols=True,
        )
    last_log_t, last_log_step, dead_total = time.monotonic(), step, 0
    interrupted = False
    summary: dict[str, Any] = {}

    def checkpoint(reason: str) -> None:
        if not dist.main:
            return
        meta = {
            "model_config": to_dict(model_cfg),
            "train_config": to_dict(train_cfg),
            "step": step,
            "elapsed_s": elapsed_before + time.monotonic() - t0,
            "metrics": summary,
            "scoring": model.scorer.plan.to_dict(),
            "reason": reason,
            "data": str(category),
        }
        save_checkpoint(run_dir / CHECKPOINT_NAME, model.state_dict(), meta, opt.state_dict())

    # Ctrl-C only sets a flag; the loop stops at the next step boundary and saves a checkpoint.
    # A KeyboardInterrupt raised mid-step could land inside a lock (tqdm's, a logging handler's)
    # and hang the save. A second Ctrl-C stops at once.
    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True

    previous_sigint = None
    if threading.current_thread() is threading.main_thread():
        previous_sigint = signal.signal(signal.SIGINT, request_stop)
    try:
        model.train()
        while step < train_cfg.steps:
            # [elapsed, stop flag]: every rank uses rank-agnostic time and the same stop step,
            # so lr, the budget and Ctrl-C agree across ranks.
            clock = torch.tensor([time.monotonic() - t0 + elapsed_before, float(stop_requested)], dtype=torch.float64)
            if dist.world > 1:
                torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
            elapsed = float(clock[0])
            if clock[1] > 0:
                raise KeyboardInterrupt
            if elapsed > budget_s:
                log.info("time budget of %.1f min reached at step %d", train_cfg.max_minutes, step)
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, elapsed, train_cfg)
            idx = rng.integers(0, len(train_images), train_cfg.batch_size)
            clean_u8 = train_images[idx]
            clean01 = torch.from_numpy(clean_u8).permute(0, 3, 1, 2).float().div(255).to(device)  # (B, C, H, W)
            inp01, target01, masks = clean01, clean01, None
            if train_cfg.anomaly_fraction > 0:
                corrupted, mask_np, target_np = paint_anomalies(
                    clean_u8,
                    train_images,
                    train_cfg.anomaly_fraction,
                    rng,
                    train_cfg.discolour_fraction,
                    train_cfg.anomaly_min_change,
                    train_cfg.anomaly_fills,
                    train_cfg.discolour_restore,
                    return_targets=True,
                )
                inp01 = torch.from_numpy(corrupted).permute(0, 3, 1, 2).to(device)  # (B, C, H, W)
                if not train_cfg.discolour_restore:
                    target01 = torch.from_numpy(target_np).permute(0, 3, 1, 2).to(device)  # (B, C, H, W)
                masks = torch.from_numpy(mask_np)[:, None].to(device)  # (B, 1, H, W)
            progress = max(step / train_cfg.steps, elapsed / budget_s)
            head_on = model.head is not None and progress >= train_cfg.head_start_fraction
            vqvae_frozen = head_on and train_cfg.head_start_fraction > 0  # two-stage: the VQ-VAE is done
            x = normalize(inp01, mean, std)
            if vqvae_frozen:
                model.vqvae.eval()
                with torch.no_grad(), autocast():
                    recon, stats = model.vqvae(x)
                loss = torch.zeros((), device=device)
            else:
                with autocast():
                    recon, stats = net(x)
            recon01 = denormalize(recon.float(), mean, std)  # losses in FP32
            l2 = F.mse_loss(recon01, target01)
            ssim_l = _ssim_loss(recon01, target01, ssim) if train_cfg.ssim_loss_weight > 0 else torch.zeros(())
            if not vqvae_frozen:
                loss = l2 + train_cfg.ssim_loss_weight * ssim_l + stats["vq_loss"]
            head_l = torch.zeros(())
            if head_on:
                with autocast():
                    logits = head_net(inp01, recon01.detach())
                head_l = head_loss(logits.float(), masks, train_cfg.head_loss)
                loss = loss + train_cfg.head_loss_weight * head_l
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if model_cfg.dead_code_threshold > 0 and not vqvae_frozen:
                dead_total += model.vqvae.expire_dead_codes()
            step += 1
            if bar is not None:
                bar.update(1)
                ppl = float(stats["perplexity"]) if "perplexity" in stats else float("nan")
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    l2=f"{l2.item():.5f}",
                    ppl=f"{ppl:.1f}",
                    head=f"{head_l.item():.4f}",
                )
            if dist.main and (step % train_cfg.log_every == 0 or step == train_cfg.steps):
                now = time.monotonic()
                row = {
                    "step": step,
                    "elapsed_s": round(elapsed_before + now - t0, 2),
                    "loss": loss.item(),
                    "recon_l2": l2.item(),
                    "recon_ssim": ssim_l.item(),
                    "vq_loss": float(stats["vq_loss"].detach()) if "vq_loss" in stats else "",
                    "perplexity": float(stats["perplexity"]) if "perplexity" in stats else "",
                    "used_codes": int(stats["used_codes"]) if "used_codes" in stats else "",
                    # two levels: TensorBoard only, so metrics.csv keeps its columns for --resume
                    **({"top_perplexity": float(stats["top_perplexity"])} if "top_perplexity" in stats else {}),
                    "head_loss": head_l.item(),
                    "dead_restarted": dead_total,
                    "lr": opt.param_groups[0]["lr"],
                    "images_per_s": round(
                        (step - last_log_step) * train_cfg.batch_size * dist.world / max(1e-6, now - last_log_t),
                        2,
                    ),
                }
                if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
                    row["val_l2"] = validation_l2(model, val_images)
                    model.train()
                metrics_log.write(row)
                summary.update(row)
                last_log_t, last_log_step, dead_total = now, step, 0
            if step % train_cfg.checkpoint_every == 0:
                checkpoint("periodic")
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted at step %d: saving a checkpoint (continue with --resume)", step)
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        if bar is not None:
            bar.close()

    model.eval()
    if not interrupted and model_cfg.restore != "none":
        model.calibrate_restoration(train_images)
        log.info(
            "latent restoration: %.1f%% of the good validation images' latent cells are restored",
            100 * restored_share(model, val_images),
        )
    if not interrupted:
        calibrate_scorer(model, train_images, val_images)
    summary.update(
        {
            "step": step,
            "val_l2": validation_l2(model, val_images),
            "interrupted": interrupted,
            "n_train": len(train_images),
            "n_val": len(val_images),
        }
    )
    checkpoint("interrupted" if interrupted else "final")
    if metrics_log is not None:
        metrics_log.close()
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    if interrupted:
        raise KeyboardInterrupt
    return summary


@torch.no_grad()
def validation_l2(model: InspectionModel, val_images: np.ndarray) -> float:
    """Mean squared reconstruction error on the good validation images (an early check)."""
    model.eval()
    total = 0.0
    for i in range(0, len(val_images), 16):
        x01 = uint8_nhwc_to_float(torch.from_numpy(val_images[i : i + 16]))  # no scoring needed here
        total += float(((model.reconstruct(x01) - x01) ** 2).sum())
    return total / val_images.size


@torch.no_grad()
def restored_share(model: InspectionModel, frames: np.ndarray) -> float:
    """The share of latent cells of frames (M, H, W, C) uint8 whose code restoration changes."""
    penalty = model.vqvae.quantizer.code_penalty
    restored = model.codes_of(frames)
    saved = penalty.clone()
    penalty.zero_()
    plain = model.codes_of(frames)
    penalty.copy_(saved)
    return float((restored != plain).float().mean())


@torch.no_grad()
def calibrate_scorer(model: InspectionModel, train_images: np.ndarray, val_images: np.ndarray) -> None:
    """Calibrate every scoring term on the good training and validation images, and log what
    the golden template found."""

    def batches(frames: np.ndarray, size: int = 32):
        for i in range(0, len(frames), size):
            yield uint8_nhwc_to_float(torch.from_numpy(np.ascontiguousarray(frames[i : i + size])))

    val, val_recon = model.reconstruct_frames(val_images)
    plan = model.scorer.calibrate(GoodImages(train=lambda: batches(train_images), val=val, val_recon=val_recon))
    for name, weight, term in plan.terms:
        if name == "template":
            log.info(
                "golden template: alignment %.2f (%s) -> weight %g, registered within %d px, %s, %s",
                term.alignment,
                "aligned" if term.aligned else "not aligned",
                weight,
                term.shift,
                "lighting fitted per image" if term.lighting else "lighting as is",
                "blob filter fitted" if term.blob_sigma > 0 else "no blob filter",
            )
