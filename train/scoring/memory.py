"""The feature-memory term: how far each cell's features are from the nearest ones seen in
good training images (PatchCore's nearest-neighbour distance, on the model's own features
instead of a pretrained backbone's).

Features are the comparison head's coarsest ((N, 4w, H/4, W/4): what it made of the frame and
its reconstruction together; they measured far above the VQ encoder's own on real images,
docs/decisions.md), averaged over each cell's 3x3 neighbourhood (PatchCore's local
aggregation). The memory is a greedy k-center coreset of the training images' cells: every
good cell is near some entry, rare good patterns included. In the graph the distance is one
matrix product and a min, in FP32.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from train.scoring.base import GoodImages, Term, TermInputs, peak_quantile, plan_to_dict
from train.scoring.filters import GaussianBlur, roi_mask

# At most this many training cells enter the coreset search (a random subset beyond it), and
# the memory keeps at most MEMORY_SIZE of them: 2048 x 32 floats is 256 KB, and the distance
# costs 2048 x 32 multiply-adds per latent cell (about 0.07 GFLOP per 128 x 128 frame).
CANDIDATES = 100_000
MEMORY_SIZE = 2048


@dataclass(frozen=True)
class MemoryPlan:
    """size: entries in the memory (0 = not fitted); dim: the features' dimension; sigma: the
    map's smoothing at full size;
    gain: 1 / the good validation images' 99th-percentile peak."""

    size: int = 0
    dim: int = 0
    sigma: float = 2.0
    gain: float = 0.0


def aggregate(features: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) -> (N, D, h, w): each cell's features averaged over its 3x3 neighbourhood."""
    return F.avg_pool2d(features.float(), 3, stride=1, padding=1, count_include_pad=False)


def k_center(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Greedy k-center coreset of (P, D) points -> indices (k,): each new center is the point
    farthest from those chosen so far (PatchCore's coreset subsampling)."""
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(len(points), (1,), generator=g))
    chosen = [first]
    nearest = (points - points[first]).pow(2).sum(dim=1)  # (P,)
    for _ in range(k - 1):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (points - points[nxt]).pow(2).sum(dim=1))
    return torch.tensor(chosen)


class FeatureMemory(Term):
    """map = gain * smooth(upsampled distance of each cell's aggregated features to the nearest
    memory entry)."""

    name = "memory"
    Plan = MemoryPlan
    needs_head = True
    needs_features = True

    def __init__(self, plan: MemoryPlan, channels: int, size: tuple[int, int], border: int):
        super().__init__(plan)
        self.size = size
        # The entries, centred on their mean (`center`): distances between vectors far from the
        # origin lose precision to cancellation in |f|^2 - 2 f.m + |m|^2.
        self.register_buffer("bank", torch.zeros(plan.size, plan.dim))
        self.register_buffer("center", torch.zeros(plan.dim))
        self.register_buffer("roi", roi_mask(size[0], size[1], border), persistent=False)
        self.blur = GaussianBlur(plan.sigma)

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) features -> (N, 1, h, w) squared distance to the nearest memory entry.
        Squared, not its root: a root near 0 turns the expansion's rounding (~1e-6 of |f|^2)
        into errors of 1e-3 that ONNX Runtime and PyTorch do not share; the root measured
        the same on the real sets (image and pixel AUROC within 0.003)."""
        f = aggregate(features)
        N, D, h, w = f.shape
        flat = f.permute(0, 2, 3, 1).reshape(-1, D) - self.center  # (N*h*w, D), centred
        # |f - m|^2 = |f|^2 - 2 f.m + |m|^2, one matrix product; FP32 in every graph.
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.bank.t() + self.bank.pow(2).sum(1)[None, :]
        nearest = dist.min(dim=1).values.clamp(min=0)  # (N*h*w,)
        return nearest.view(N, 1, h, w)

    def raw_map(self, features: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.distance(features), size=self.size, mode="bilinear", align_corners=False)
        return self.blur(up)  # (N, 1, H, W)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        if inputs.features is None:
            raise ValueError("the memory term needs the comparison head's features")
        return self.plan.gain * self.raw_map(inputs.features)

    @torch.no_grad()
    def calibrate(self, good: GoodImages) -> MemoryPlan:
        cells = []
        for batch in good.train():
            f = aggregate(good.features(batch))  # (B, D, h, w)
            cells.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        points = torch.cat(cells)
        g = torch.Generator().manual_seed(0)
        if len(points) > CANDIDATES:
            points = points[torch.randperm(len(points), generator=g)[:CANDIDATES]]
        k = min(MEMORY_SIZE, len(points))
        bank = points[k_center(points, k)]
        self.center = bank.mean(dim=0).to(self.bank.device)
        self.bank = (bank - bank.mean(dim=0)).to(self.bank.device)
        self.plan = replace(self.plan, size=k, dim=bank.shape[1])
        peak = peak_quantile((self.raw_map(good.features(b)) for b in good.val_batches()), self.roi)
        self.plan = replace(self.plan, gain=1.0 / max(peak, 1e-6))
        return self.plan

    def describe(self) -> dict[str, Any]:
        return {"unit": "the good validation images' 99th-percentile peak", "plan": plan_to_dict(self.plan)}
