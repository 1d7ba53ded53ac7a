"""The learned-comparison term: the comparison head's defect probability, smoothed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from train.scoring.base import GoodImages, Term, plan_to_dict
from train.scoring.filters import GaussianBlur


@dataclass(frozen=True)
class HeadPlan:
    """sigma: Gaussian smoothing of the probability, pixels at the model's input size (it is
    already a localised estimate: more smoothing spreads a small defect's peak)."""

    sigma: float = 1.0


class LearnedComparison(Term):
    """map = smooth(head probability); 1 = certain defect."""

    name = "head"
    Plan = HeadPlan
    needs_head = True

    def __init__(self, plan: HeadPlan, channels: int):
        super().__init__(plan)
        self.blur = GaussianBlur(plan.sigma)

    def calibrate(self, good: GoodImages) -> HeadPlan:
        return self.plan  # trained, not fitted: nothing to calibrate

    def forward(self, x: torch.Tensor, recon: torch.Tensor, head_prob: torch.Tensor | None) -> torch.Tensor:
        if head_prob is None:
            raise ValueError("the head term needs the comparison head's probability")
        return self.blur(head_prob)

    def describe(self) -> dict[str, Any]:
        return {"unit": "defect probability", "plan": plan_to_dict(self.plan)}
