"""The reconstruction-error term: how far the reconstruction is from the input, pixel by pixel."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from edge.frames import batched
from train.scoring.base import GoodImages, Term, TermInputs, computed_once, peak_quantile, plan_to_dict
from train.scoring.filters import SSIM, GaussianBlur, gms_map, roi_mask


@dataclass(frozen=True)
class ErrorPlan:
    """kinds: any of l2, ssim (1 - SSIM) and gms (1 - multi-scale gradient-magnitude similarity);
    weights: their weights; scales: 1 / each kind's mean on the good validation images, so that
    the kinds count as their weights say (L2 is ~1e-3, 1 - SSIM ~0.2); sigma: the Gaussian
    smoothing of the weighted sum, in pixels at the model's input size; gain: 1 / the good
    validation images' 99th-percentile peak of the smoothed sum (1 in runs from before it)."""

    kinds: tuple[str, ...] = ("gms",)
    weights: tuple[float, ...] = (1.0,)
    scales: tuple[float, ...] = (1.0,)
    sigma: float = 2.0
    gain: float = 1.0

    def __post_init__(self) -> None:
        if not self.kinds or not set(self.kinds) <= {"l2", "ssim", "gms"} or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"error kinds must be distinct names among l2, ssim, gms, got {list(self.kinds)}")
        if not len(self.kinds) == len(self.weights) == len(self.scales):
            raise ValueError("an error plan needs one weight and one scale per kind")


class ReconstructionErrors(Term):
    """map = smooth(sum_k weight_k * scale_k * error_k(x, recon)); 1 = the good validation
    images' mean error."""

    name = "errors"
    Plan = ErrorPlan

    def __init__(self, plan: ErrorPlan, channels: int, size: tuple[int, int], border: int):
        super().__init__(plan)
        self.ssim = SSIM(channels)
        self.blur = GaussianBlur(plan.sigma)
        self.register_buffer("roi", roi_mask(size[0], size[1], border), persistent=False)

    def raw(self, x: torch.Tensor, recon: torch.Tensor) -> list[torch.Tensor]:
        """Each kind's unweighted, unscaled map (N, 1, H, W)."""
        x, recon = x.float(), recon.float()
        maps = []
        for kind in self.plan.kinds:
            if kind == "l2":
                maps.append((x - recon).pow(2).mean(dim=1, keepdim=True))
            elif kind == "ssim":
                maps.append(1 - self.ssim(x, recon))
            else:
                maps.append(gms_map(x, recon))
        return maps

    def weighted(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """The weighted, scaled sum before smoothing (N, 1, H, W)."""
        total = torch.zeros_like(x[:, :1], dtype=torch.float32)
        for error, weight, scale in zip(self.raw(x, recon), self.plan.weights, self.plan.scales, strict=True):
            total = total + weight * scale * error
        return total

    @torch.no_grad()
    def calibrate(self, good: GoodImages) -> ErrorPlan:
        means = [max(float(error.mean()), 1e-12) for error in self.raw(good.val, good.val_recon)]
        self.plan = replace(self.plan, scales=tuple(1.0 / m for m in means), gain=1.0)
        pairs = zip(batched(good.val, 32), batched(good.val_recon, 32), strict=True)
        peak = peak_quantile((self(TermInputs(x, r)) for x, r in pairs), self.roi)
        self.plan = replace(self.plan, gain=1.0 / max(peak, 1e-12))
        return self.plan

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        # Fused maps differ in their smoothing and gain only: the weighted sum is computed once.
        key = ("errors", self.plan.kinds, self.plan.weights, self.plan.scales)
        smoothed = self.blur(computed_once(inputs.shared, key, lambda: self.weighted(inputs.x, inputs.recon)))
        return smoothed if self.plan.gain == 1.0 else self.plan.gain * smoothed

    def describe(self) -> dict[str, Any]:
        unit = "the good validation images' 99th-percentile peak" if self.plan.gain != 1.0 else "their mean error"
        return {"unit": unit, "plan": plan_to_dict(self.plan)}
