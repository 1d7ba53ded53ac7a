"""The model and training configs (frozen, typed, loaded from configs/model.yaml and configs/train.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edge.config import require

ErrorKind = Literal["l2", "ssim", "gms"]
TermName = Literal["head", "errors", "template"]
FillKind = Literal["crop", "texture", "shift", "blur"]  # the blended fills of train/anomalies.py


@dataclass(frozen=True)
class ScoreConfig:
    """What the anomaly map is made of (train/scoring/). How each term is tuned is in code, with
    how it was chosen; what calibration decided per product is saved with the run."""

    # The map's terms, added in this order: "head" (the learned comparison head's defect
    # probability), "errors" (the reconstruction error), "template" (the golden template: the
    # input's band-pass against the good training images', weighted by how aligned they are).
    terms: tuple[TermName, ...] = ("head", "errors", "template")
    # The reconstruction-error kinds of the "errors" term, equally weighted after each is
    # divided by its mean on good validation images: l2, ssim (1 - SSIM), gms (1 - multi-scale
    # gradient-magnitude similarity).
    errors: tuple[ErrorKind, ...] = ("gms",)
    # Pixels at the frame's edge left out of the map and the score (an inspection region of
    # interest). The convolutions' padding leaves the outermost pixels reconstructed worst.
    border: int = 4

    def __post_init__(self) -> None:
        require(len(self.terms) > 0, "score.terms must name at least one of head, errors, template")
        require(len(set(self.terms)) == len(self.terms), "score.terms has duplicates")
        require(len(self.errors) > 0, "score.errors must name at least one of l2, ssim, gms")
        require(len(set(self.errors)) == len(self.errors), "score.errors has duplicates")
        require(self.border >= 0, "score.border must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """The VQ-VAE's shape, its codebook learning, its input and its scoring."""

    name: str = "vqad"
    image_size: int = 128
    channels: int = 3
    width: int = 48
    downsample: int = 4
    res_blocks: int = 2
    codebook_size: int = 256
    code_dim: int = 32
    codebook: Literal["ema", "loss"] = "ema"
    beta: float = 0.25
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_threshold: float = 2.0
    cosine: bool = False
    # 2 = VQ-VAE-2's hierarchy: a top code grid at half the latent resolution that conditions
    # the bottom codes (train.model.TopLevel); 1 = one codebook.
    levels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    # Latent restoration: "position" lets each latent cell take only codes that good training
    # images used within restore_radius cells of it (at least restore_min_count times); an
    # unseen code is replaced by the nearest allowed one before decoding, so the decoder
    # repairs the defect instead of copying it. "none" = plain nearest code.
    restore: Literal["none", "position"] = "none"
    restore_radius: int = 0
    restore_min_count: int = 1
    # The learned comparison head (train/head.py); 0 = no head.
    head_width: int = 16
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def __post_init__(self) -> None:
        require(self.channels in (1, 3), f"model.channels must be 1 or 3, got {self.channels}")
        require(self.downsample in (2, 4, 8, 16), f"model.downsample must be 2, 4, 8 or 16, got {self.downsample}")
        require(
            self.image_size % self.downsample == 0 and self.image_size >= 16,
            f"model.image_size ({self.image_size}) must be >= 16 and divisible by downsample ({self.downsample})",
        )
        require(self.levels in (1, 2), f"model.levels must be 1 or 2, got {self.levels}")
        require(
            self.levels == 1 or (self.image_size // self.downsample) % 2 == 0,
            f"model.levels=2 needs an even latent grid; image_size / downsample = {self.image_size // self.downsample}",
        )
        require(self.width >= 4 and self.code_dim >= 2, "model.width and model.code_dim are too small")
        require(self.codebook_size >= 2, "model.codebook_size must be >= 2")
        require(0.0 < self.ema_decay < 1.0, "model.ema_decay must be in (0, 1)")
        require(self.beta >= 0, "model.beta must be >= 0")
        for name, values in (("mean", self.mean), ("std", self.std)):
            require(len(values) in (1, self.channels), f"model.{name} needs 1 or {self.channels} values")
        require(all(s > 0 for s in self.std), "model.std must be positive")
        require(self.head_width >= 0, "model.head_width must be >= 0")
        require(self.restore_radius >= 0, "model.restore_radius must be >= 0")
        require(self.restore_min_count >= 1, "model.restore_min_count must be >= 1")
        require(
            "head" not in self.score.terms or self.head_width > 0,
            "score.terms names the head, which needs a comparison head (model.head_width > 0)",
        )

    def channel_mean(self) -> tuple[float, ...]:
        return self.mean * self.channels if len(self.mean) == 1 else self.mean

    def channel_std(self) -> tuple[float, ...]:
        return self.std * self.channels if len(self.std) == 1 else self.std


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation, its budget, the validation split and threshold calibration."""

    seed: int = 0
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    steps: int = 4000
    max_minutes: float = 10.0
    warmup_steps: int = 50
    val_fraction: float = 0.15
    ssim_loss_weight: float = 0.5
    # Fraction of each batch that gets synthetic defects painted in (the model learns to repair them).
    anomaly_fraction: float = 0.5
    # Share of the painted images whose defect is a faint, soft-edged discolouration (train/anomalies.py).
    discolour_fraction: float = 0.0
    # Whether the VQ-VAE learns to remove those discolourations (as it removes the blended
    # fills) or to reproduce them, so that only the head learns they are defects.
    discolour_restore: bool = True
    # A painted pixel is labelled a defect only where it moved by at least this share of the
    # range in some channel (0 = the whole painted mask, as DRAEM labels it).
    anomaly_min_change: float = 0.016
    # The blended fills painted anomalies draw from (train/anomalies.py), each equally likely.
    anomaly_fills: tuple[FillKind, ...] = ("crop", "texture", "shift")
    # When the head starts training, as a fraction of the budget: 0 = jointly with the VQ-VAE
    # from the start; > 0 = two-stage (VQ-VAE alone, then the head on the frozen VQ-VAE).
    head_start_fraction: float = 0.0
    # The head's loss (train/head.py HEAD_LOSSES): binary cross-entropy; focal (gamma 2, defect
    # pixels weighted 0.75), which nearly stops pushing a good pixel down once it is below ~0.2:
    # on a texture that left the head at ~0.1 everywhere and its false alarms varying between
    # trainings; the soft Dice over the batch, or BCE + Dice (both measured below BCE).
    head_loss: Literal["bce", "focal", "dice", "bce+dice"] = "bce"
    head_loss_weight: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 250
    target_frr: float = 0.01
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision of the training forward pass: bf16 autocast where the hardware runs it
    # fast (CPUs with AMX or AVX512-BF16, CUDA GPUs with bf16), else fp32. Weights, optimiser,
    # losses, the VQ distance/argmin and the codebook updates stay FP32 either way.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "train.batch_size must be >= 1")
        require(self.lr > 0, "train.lr must be > 0")
        require(self.steps >= 1, "train.steps must be >= 1")
        require(self.max_minutes > 0, "train.max_minutes must be > 0")
        require(0.0 < self.val_fraction < 0.5, "train.val_fraction must be in (0, 0.5)")
        require(0.0 <= self.anomaly_fraction <= 1.0, "train.anomaly_fraction must be in [0, 1]")
        require(0.0 <= self.discolour_fraction <= 1.0, "train.discolour_fraction must be in [0, 1]")
        require(0.0 <= self.anomaly_min_change < 1.0, "train.anomaly_min_change must be in [0, 1)")
        require(len(self.anomaly_fills) > 0, "train.anomaly_fills must name at least one of crop, texture, shift, blur")
        require(len(set(self.anomaly_fills)) == len(self.anomaly_fills), "train.anomaly_fills has duplicates")
        require(0.0 < self.target_frr < 0.5, "train.target_frr must be in (0, 0.5)")
        require(0.0 <= self.head_start_fraction < 1.0, "train.head_start_fraction must be in [0, 1)")
        require(
            self.log_every >= 1 and self.checkpoint_every >= 1,
            "train.log_every/checkpoint_every must be >= 1",
        )
