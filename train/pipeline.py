"""The inspection model: VQ-VAE + scorer, from raw uint8 frames to anomaly map and score.

`InspectionModel.forward` is exactly what the exported ONNX graph computes:
uint8 NHWC frames -> [0,1] NCHW -> normalise -> encode -> quantise -> decode ->
denormalise -> scorer. Evaluation calls the same module, so the scores evaluation
reports are the scores the line sees.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from edge.frames import batched
from edge.progress import progress
from train.config import ModelConfig
from train.head import ComparisonHead, half_precision
from train.model import VQVAE, denormalize, normalize, uint8_nhwc_to_float
from train.scoring import AnomalyScorer, GoodImages, ScorerPlan, initial_plan, template_settings

log = logging.getLogger(__name__)


def build_scorer(cfg: ModelConfig, scoring: ScorerPlan | None = None) -> AnomalyScorer:
    """The scorer of a model with this config: its saved plan, or a new one from the config. Its
    template calibrates among the constants at the config's map scale, so a recalibration keeps it."""
    size, score = cfg.image_size, cfg.score
    if scoring is None:
        scoring = initial_plan(
            score.terms, score.errors, score.border, size, score.peers, score.scale, score.fuse_scales
        )
    elif not scoring.finer and scoring.scale != score.scale:
        scoring = dataclasses.replace(scoring, scale=score.scale)  # saved before plans named their scale
    return AnomalyScorer(scoring, cfg.channels, size, template_settings(size, score.scale))


class InspectionModel(nn.Module):
    """scoring: the scorer's saved plan; None = a new run's, from the config."""

    def __init__(self, cfg: ModelConfig, scoring: ScorerPlan | None = None):
        super().__init__()
        if cfg.image_size == "auto":
            raise ConfigError("model.image_size is auto: resolve it from the training images first (train.data)")
        self.cfg = cfg
        self.vqvae = VQVAE(cfg)
        self.scorer = build_scorer(cfg, scoring)
        self.head = ComparisonHead(cfg.channels, cfg.head_width) if cfg.head_width > 0 else None
        # The dtype of the decoder and head convolutions. The encoder, the VQ argmin and the
        # scoring stay FP32: FP16 rounding in the encoder flips nearest codes (measured at export).
        self.compute_dtype = torch.float32

    def latents(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float [0,1] -> the encoder's output before quantisation (N, D, h, w),
        FP32 in every graph: what the codes are chosen from and a frame's peers are found by."""
        x = normalize(x01, self.cfg.channel_mean(), self.cfg.channel_std())
        return self.vqvae.encoder(x.float())

    def reconstruct(self, x01: torch.Tensor, latents: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, H, W) float [0,1] [and its `latents`] -> (N, C, H, W) float32 [0,1]-space
        reconstruction."""
        z = self.latents(x01) if latents is None else latents
        # FP32 through the encoder, a top level and the argmin: they decide the codes.
        z_q, _, _ = self.vqvae.quantize(z)  # (N, D * levels, h, w)
        recon = self.vqvae.decode(z_q.to(self.compute_dtype))
        return denormalize(recon.float(), self.cfg.channel_mean(), self.cfg.channel_std())

    def head_outputs(self, x01: torch.Tensor, recon01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (defect probability (N, 1, H, W) float32, the head's coarsest features (N, 4w, H/4, W/4))."""
        logits, features = self.head(x01, recon01)  # the head casts its encoder half to FP32
        return torch.sigmoid(logits.float()), features.float()

    @torch.no_grad()
    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float [0,1] -> the features the memory term compares (the head's coarsest)."""
        return self.head_outputs(x01, self.reconstruct(x01))[1]

    @torch.no_grad()
    def outputs(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(N, C, H, W) float [0,1] -> (reconstruction, head probability, head features, latents);
        the head's two are None without a head."""
        z = self.latents(x01)
        recon = self.reconstruct(x01, z)
        prob, features = self.head_outputs(x01, recon) if self.head is not None else (None, None)
        return recon, prob, features, z

    @torch.no_grad()
    def reconstruct_frames(self, frames: np.ndarray, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """numpy (M, H, W, C) uint8 -> (inputs, reconstructions), both (M, C, H, W) float32 [0,1], in batches."""

        x01 = uint8_nhwc_to_float(torch.from_numpy(np.ascontiguousarray(frames)))
        recon = torch.cat([self.reconstruct(batch) for batch in batched(x01, batch_size)])
        return x01, recon

    def encode_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, C) uint8 -> (quantised latents (N, D, h, w), codes (N, h, w)), as inference sees them."""
        x = normalize(uint8_nhwc_to_float(frames), self.cfg.channel_mean(), self.cfg.channel_std())
        z_q, codes, _ = self.vqvae.encode(x)
        return z_q, codes

    @torch.no_grad()
    def codes_of(self, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """numpy (M, H, W, C) uint8 -> the codes inference picks, (M, h, w), in batches."""

        return torch.cat(
            [self.encode_frames(torch.from_numpy(np.ascontiguousarray(b)))[1] for b in batched(frames, batch_size)]
        )

    @torch.no_grad()
    def code_margins(self, frames: np.ndarray, batch_size: int = 16) -> torch.Tensor:
        """numpy (M, H, W, C) uint8 -> (M,): per image, the smallest relative margin of the
        nearest code over its latent cells at every level (VectorQuantizer.margins)."""

        seen: list[tuple[nn.Module, torch.Tensor]] = []
        hooks = [
            q.register_forward_pre_hook(lambda q, args: seen.append((q, args[0]))) for q in self.vqvae.quantizers()
        ]
        margins = []
        try:
            for batch in batched(frames, batch_size):
                seen.clear()
                self.encode_frames(torch.from_numpy(np.ascontiguousarray(batch)))
                margins.append(torch.stack([q.margins(z) for q, z in seen]).amin(dim=0))
        finally:
            for hook in hooks:
                hook.remove()
        return torch.cat(margins)

    def score_images(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C, H, W) [0,1] -> (reconstruction, anomaly_map (N, 1, H, W), score (N,))."""
        z = self.latents(x01)
        recon = self.reconstruct(x01, z)
        prob, features = None, None
        if self.scorer.needs_head or self.scorer.needs_features:
            prob, features = self.head_outputs(x01, recon)
        anomaly_map, score = self.scorer(x01.float(), recon, prob, features, z)
        return recon, anomaly_map, score

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: (N, H, W, C) uint8 -> (anomaly_map (N, 1, H, W) float32, score (N,) float32)."""
        _, anomaly_map, score = self.score_images(uint8_nhwc_to_float(frames))
        return anomaly_map, score


def half_precision_copy(model: InspectionModel) -> InspectionModel:
    """A copy whose decoder and head run in FP16; the encoder, codebook, argmin, scorer and the
    head's first layer (train/head.py says why) stay FP32."""
    fp16 = copy.deepcopy(model).eval()
    fp16.vqvae.decoder.half()
    if fp16.head is not None:
        half_precision(fp16.head)
    fp16.compute_dtype = torch.float16
    return fp16


@torch.no_grad()
def score_frames(
    model: InspectionModel, frames: np.ndarray, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy (M, H, W, C) uint8 -> numpy (recon01 (M,C,H,W), maps (M,H,W), scores (M,)), in batches."""

    model.eval()
    recons, maps, scores = [], [], []
    device = next(model.parameters()).device
    batches = batched(frames, batch_size)
    for batch in progress(batches, "scoring", total=-(-len(frames) // batch_size), unit="batch"):
        x01 = uint8_nhwc_to_float(torch.from_numpy(np.ascontiguousarray(batch)).to(device))
        recon, m, s = model.score_images(x01)
        recons.append(recon.cpu().numpy())
        maps.append(m[:, 0].cpu().numpy())
        scores.append(s.cpu().numpy())
    return np.concatenate(recons), np.concatenate(maps), np.concatenate(scores)


@torch.no_grad()
def calibrate_scorer(model: InspectionModel, train_images: np.ndarray, val_images: np.ndarray) -> None:
    """Calibrate every scoring term on the good training and validation images, and log what
    the golden template found."""

    def train_batches():
        for batch in batched(train_images, 32):
            yield uint8_nhwc_to_float(torch.from_numpy(np.ascontiguousarray(batch)))

    val, val_recon = model.reconstruct_frames(val_images)
    val_head = None
    if model.head is not None:
        pairs = zip(batched(val, 32), batched(val_recon, 32), strict=True)
        val_head = torch.cat([model.head_outputs(x, r)[0] for x, r in pairs])
    features = model.features if model.head is not None else None
    good = GoodImages(train_batches, val, val_recon, val_head, features, model.outputs)
    plan = model.scorer.calibrate(good)
    if plan.finer:
        fused = [plan, *plan.finer]
        log.info(
            "maps fused at scales %s, each in units of its good validation images' 99th-percentile score: %s",
            ", ".join(f"{p.scale:g}" for p in fused),
            ", ".join(f"{p.unit:.4g}" for p in fused),
        )
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
