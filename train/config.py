"""The model and training configs (frozen, typed, loaded from configs/model.yaml and configs/train.yaml)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from edge.config import require
from edge.errors import ConfigError
from edge.frames import DEFAULT_MAX_FRAME_PIXELS, PIXEL_BITS, InputFormat, as_size, check_pixel_bits

ErrorKind = Literal["l2", "ssim", "gms"]
TermName = Literal["head", "errors", "template", "memory"]


@dataclass(frozen=True)
class ScoreConfig:
    """What the anomaly map is made of (train/scoring/). How each term is tuned is in code, with
    how it was chosen; what calibration decided per product is saved with the run."""

    # The map's terms, added in this order: "head" (the learned comparison head's defect
    # probability), "errors" (the reconstruction error), "template" (the golden template: the
    # input's band-pass against the good training images', weighted by how aligned they are),
    # "memory" (the distance of the head's features to the nearest good training ones; not in
    # the defaults: it gained on two real sets and lost on both synthetic ones, docs/decisions.md).
    terms: tuple[TermName, ...] = ("head", "errors", "template")
    # The reconstruction-error kinds of the "errors" term, equally weighted after each is
    # divided by its mean on good validation images: l2, ssim (1 - SSIM), gms (1 - multi-scale
    # gradient-magnitude similarity).
    errors: tuple[ErrorKind, ...] = ("gms",)
    # Pixels at the frame's edge left out of the map and the score (an inspection region of
    # interest). The convolutions' padding leaves the outermost pixels reconstructed worst.
    border: int = 4
    # The map in units of its peers: divided by the mean score of the frame's nearest good
    # training images (train/scoring/peers.py), so that a rare kind of good image is measured
    # against its own kind.
    peers: bool = True
    # The map's spatial scale: its smoothing and the golden template's bands, as a factor on the
    # tuned constants (which already follow the input's size). Below 1 keeps defects of a pixel
    # or two sharp (a PCB's specks), at the cost of faint broad ones (a commutator's cracks).
    # `vqad calibrate RUN --defects DIR --choose-scale` picks it from confirmed defects.
    scale: float = 1.0
    # Further maps at these factors of `scale`, fused with the first: each in units of its good
    # validation images' 99th-percentile score, the map their maximum. A defect of a pixel or
    # two lights the finer map, a faint broad one the coarser; [] = one map.
    fuse_scales: tuple[float, ...] = (0.7,)

    def __post_init__(self) -> None:
        require(len(self.terms) > 0, "score.terms must name at least one of head, errors, template")
        require(len(set(self.terms)) == len(self.terms), "score.terms has duplicates")
        require(len(self.errors) > 0, "score.errors must name at least one of l2, ssim, gms")
        require(len(set(self.errors)) == len(self.errors), "score.errors has duplicates")
        require(self.border >= 0, "score.border must be >= 0")
        require(0.25 <= self.scale <= 4.0, f"score.scale must be within [0.25, 4], got {self.scale}")
        fuse = list(self.fuse_scales)
        require(
            all(0.25 <= f < 1.0 for f in fuse) and len(set(fuse)) == len(fuse),
            f"score.fuse_scales must be distinct factors within [0.25, 1), got {fuse}",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The VQ-VAE's size, its input and its scoring. How its codebook learns is tuned in code
    (train/model.py)."""

    name: str = "vqad"
    # The model's input, (height, width): N in YAML or on the command line is N x N. Frames of
    # any size are resized to it (edge.frames.to_model_input). "auto" (configs/model.yaml's
    # default) keeps the training images' median aspect ratio with the short side at
    # `short_side` pixels (train.data.auto_image_size); a training resolves it and saves [H, W].
    image_size: tuple[int, ...] | Literal["auto"] = "auto"
    short_side: int = 128
    channels: int = 3
    # The bits a 16-bit image's counts fill: 16 (Mono16), or 12 for a Mono12 camera (values
    # 0..4095), 10 or 14 for others. Such images, on disk or from the line, are read by the top 8
    # of these bits; 8-bit images are unaffected. Saved with the model, so that the daemon reads a
    # 16-bit frame that does not say its bits as training read the camera's files.
    pixel_bits: int = PIXEL_BITS
    # Capacity: the encoder/decoder width, the latent grid's downsampling, residual blocks per
    # stage, the codebook's size and code dimension. Larger is slower on the line.
    width: int = 48
    downsample: int = 4
    res_blocks: int = 2
    codebook_size: int = 256
    code_dim: int = 32
    # 2 = VQ-VAE-2's hierarchy: a top code grid at half the latent resolution that conditions
    # the bottom codes (train.model.TopLevel); 1 = one codebook.
    levels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    # The learned comparison head (train/head.py); 0 = no head.
    head_width: int = 16
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def __post_init__(self) -> None:
        if self.image_size != "auto":
            try:
                object.__setattr__(self, "image_size", as_size(self.image_size))  # N -> (N, N)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model.image_size is N, [H, W] or auto, got {self.image_size!r}") from exc
        require(self.channels in (1, 3), f"model.channels must be 1 or 3, got {self.channels}")
        try:
            check_pixel_bits(self.pixel_bits, "model.pixel_bits")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        require(self.downsample in (2, 4, 8, 16), f"model.downsample must be 2, 4, 8 or 16, got {self.downsample}")
        # Multiples of 16 whatever the downsampling: the scoring pools by 2 and 4 (registration,
        # blob filter) and the map must come back to the same size.
        step = self.size_step()
        if self.image_size == "auto":
            sides = (self.short_side,)
            require(
                self.short_side % step == 0 and self.short_side >= 16,
                f"model.short_side must be >= 16 and a multiple of {step}, got {self.short_side}",
            )
            require(
                self.short_side**2 <= DEFAULT_MAX_FRAME_PIXELS,
                f"model.short_side {self.short_side} is more than the {math.isqrt(DEFAULT_MAX_FRAME_PIXELS)} of the "
                "largest frame the daemon takes",
            )
        else:
            sides = self.image_size
            require(
                all(side % step == 0 and side >= 16 for side in sides),
                f"model.image_size {list(sides)}: each side must be >= 16 and a multiple of {step}",
            )
            require(
                math.prod(sides) <= DEFAULT_MAX_FRAME_PIXELS,
                f"model.image_size {list(sides)} is {math.prod(sides):,} pixels, more than the "
                f"{DEFAULT_MAX_FRAME_PIXELS:,} of the largest frame the daemon takes",
            )
        require(
            2 * self.score.border < min(sides),
            f"score.border {self.score.border} leaves nothing of a {list(sides)} input to score",
        )
        require(self.levels in (1, 2), f"model.levels must be 1 or 2, got {self.levels}")
        require(self.width >= 4 and self.code_dim >= 2, "model.width and model.code_dim are too small")
        require(self.codebook_size >= 2, "model.codebook_size must be >= 2")
        for name, values in (("mean", self.mean), ("std", self.std)):
            require(len(values) in (1, self.channels), f"model.{name} needs 1 or {self.channels} values")
        require(all(s > 0 for s in self.std), "model.std must be positive")
        require(self.head_width >= 0, "model.head_width must be >= 0")
        require(
            "head" not in self.score.terms or self.head_width > 0,
            "score.terms names the head, which needs a comparison head (model.head_width > 0)",
        )

    @property
    def input_format(self) -> InputFormat:
        """How an image becomes the model's input (edge.frames.InputFormat); the image size must be
        resolved ("auto" is, by a training)."""
        if self.image_size == "auto":
            raise ValueError("model.image_size is still auto: a training resolves it from the images")
        return InputFormat(self.image_size, self.channels, self.pixel_bits)

    def size_step(self) -> int:
        """Each side of the input is a multiple of this."""
        return max(16, self.downsample * self.levels)

    def channel_mean(self) -> tuple[float, ...]:
        return self.mean * self.channels if len(self.mean) == 1 else self.mean

    def channel_std(self) -> tuple[float, ...]:
        return self.std * self.channels if len(self.std) == 1 else self.std


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, on what hardware, and the threshold policy. The optimiser, the losses
    and the synthetic defects are tuned in code (train/loop.py, train/anomalies.py)."""

    seed: int = 0
    # 8 images a step: twice the steps of 16 in a CPU's 10 minutes (docs/decisions.md).
    batch_size: int = 8
    # The budget: whichever of `steps` and `max_minutes` runs out first ends the training. The
    # steps set it: every figure in benchmarks/RESULTS.md was measured at about 3,000 steps of
    # 8 images (2,789-3,221 in 10 minutes on the CPU that measured them). A slower machine takes
    # longer for the same model; `max_minutes` is a guard that ends it short, with a warning.
    steps: int = 3000
    max_minutes: float = 60.0
    # The share of the good training images held out to calibrate the threshold (seeded), or
    # more: up to `min_val_images` while training keeps two thirds (train.data.validation_count).
    val_fraction: float = 0.15
    min_val_images: int = 100
    # The threshold: the quantile of the good validation scores that rejects this share of them.
    target_frr: float = 0.01
    log_every: int = 25
    checkpoint_every: int = 250
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision of the training forward pass: bf16 autocast where the hardware runs it
    # fast (CPUs with AMX or AVX512-BF16, CUDA GPUs with bf16), else fp32. Weights, optimiser,
    # losses, the VQ distance/argmin and the codebook updates stay FP32 either way.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        require(0 <= self.seed < 2**32, f"train.seed must be in [0, 2**32), got {self.seed}")
        require(self.batch_size >= 1, "train.batch_size must be >= 1")
        require(self.steps >= 1, "train.steps must be >= 1")
        require(self.max_minutes > 0, "train.max_minutes must be > 0")
        require(0.0 < self.val_fraction < 0.5, "train.val_fraction must be in (0, 0.5)")
        require(self.min_val_images >= 0, "train.min_val_images must be >= 0")
        require(0.0 < self.target_frr < 0.5, "train.target_frr must be in (0, 0.5)")
        require(
            self.log_every >= 1 and self.checkpoint_every >= 1,
            "train.log_every/checkpoint_every must be >= 1",
        )
        require(self.num_threads >= 0, "train.num_threads must be >= 0 (0 = the machine's cores)")
