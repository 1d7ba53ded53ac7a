"""The learned-comparison term: the comparison head's defect probability, smoothed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from edge.frames import batched
from train.scoring.base import GoodImages, Term, TermInputs, peak_quantile, plan_to_dict
from train.scoring.filters import GaussianBlur, roi_mask


@dataclass(frozen=True)
class HeadPlan:
    """sigma: Gaussian smoothing of the probability, pixels at the model's input size (it is
    already a localised estimate: more smoothing spreads a small defect's peak); gain: 1 / the
    good validation images' 99th-percentile peak (1 in runs from before it: a probability)."""

    sigma: float = 1.0
    gain: float = 1.0


class LearnedComparison(Term):
    """map = smooth(head probability); 1 = certain defect."""

    name = "head"
    Plan = HeadPlan
    needs_head = True

    def __init__(self, plan: HeadPlan, channels: int, size: tuple[int, int], border: int):
        super().__init__(plan)
        self.blur = GaussianBlur(plan.sigma)
        self.register_buffer("roi", roi_mask(size[0], size[1], border), persistent=False)

    @torch.no_grad()
    def calibrate(self, good: GoodImages) -> HeadPlan:
        if good.val_head is None:
            raise ValueError("the head term is calibrated on the head's probability of the validation images")
        peak = peak_quantile((self.blur(p) for p in batched(good.val_head, 32)), self.roi)
        self.plan = replace(self.plan, gain=1.0 / max(peak, 1e-6))
        return self.plan

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if inputs.head_prob is None:
            raise ValueError("the head term needs the comparison head's probability")
        smoothed = self.blur(inputs.head_prob)
        return smoothed if self.plan.gain == 1.0 else self.plan.gain * smoothed

    def describe(self) -> dict[str, Any]:
        unit = "the good validation images' 99th-percentile peak" if self.plan.gain != 1.0 else "defect probability"
        return {"unit": unit, "plan": plan_to_dict(self.plan)}
