"""The map in units of its peers: the scores of the good training images most like the frame.

A category's good images are not all alike. A fabric tile with the cloth's frayed edge in it,
a commutator with a mark at its slot: a rare kind of good image is one the comparison head
fires on, and its kind then sets the threshold above most defects. So the summed map is
divided by the mean image score of the frame's `k` peers: the good training images nearest
to it by a global descriptor, the mean and spread of each channel of the VQ encoder's output,
standardised. A frame of a rare kind is measured against its own kind; a defect still stands
out against peers without one.

The encoder runs in FP32 in the FP16 graph too, so both graphs pick the same peers; the head's
features, which measured as well, pass through the FP16 decoder's reconstruction, and a peer
swapped at a near tie moved the FP16 map by 7% (the parity bound is 1%). In the graph it is one
matrix product, a TopK, a gather and a mean, in FP32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

# Chosen on the select halves of the real sets and `vqad synth`, three trainings each: 20 read
# at or above the plain map's median on all five sets, 10 lost 0.016 on DeepPCB and 0.003 on
# synth weave (docs/decisions.md).
PEERS = 20
# The denominator's floor, a share of the training images' median score, so that peers scoring
# ~0 (blank tiles) do not magnify rounding: a blank AITEX tile's code ties moved its score by
# 7% of itself between PyTorch and ONNX Runtime, 1.6% of the threshold without this floor. Half
# the median measured as no floor on the select halves; the full median lost up to 0.045 on
# KolektorSDD.
FLOOR_SHARE = 0.5


@dataclass(frozen=True)
class PeerPlan:
    """k: peers per frame (0 = off); size, dim: the bank of training descriptors (0 = not
    fitted); floor: the smallest denominator."""

    k: int = 0
    size: int = 0
    dim: int = 0
    floor: float = 1.0


def descriptor(latents: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) latents -> (N, 2D): each channel's mean and standard deviation."""
    z = latents.float()
    mean = z.mean(dim=(2, 3))
    spread = (z - mean[:, :, None, None]).pow(2).mean(dim=(2, 3)).sqrt()
    return torch.cat([mean, spread], dim=1)


class PeerScale(nn.Module):
    """latents -> (N,) the mean score of each frame's k peers (at least `floor`)."""

    def __init__(self, plan: PeerPlan):
        super().__init__()
        self.plan = plan
        self.register_buffer("bank", torch.zeros(plan.size, plan.dim))  # standardised descriptors
        self.register_buffer("bank_scores", torch.zeros(plan.size))
        self.register_buffer("center", torch.zeros(plan.dim))
        self.register_buffer("scale", torch.ones(plan.dim))

    @property
    def active(self) -> bool:
        return self.plan.k > 0 and self.plan.size > 0

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        d = (descriptor(latents) - self.center) / self.scale  # (N, 2D)
        # |d - b|^2 without |d|^2, which is the same for every peer of a frame.
        dist = self.bank.pow(2).sum(dim=1)[None, :] - 2 * d @ self.bank.t()  # (N, size)
        k = min(self.plan.k, self.plan.size)
        nearest = torch.topk(dist, k, dim=1, largest=False).indices  # (N, k)
        return self.bank_scores[nearest].mean(dim=1).clamp(min=self.plan.floor)  # (N,)

    @torch.no_grad()
    def calibrate(self, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> PeerPlan:
        """pairs: (latents (B, D, h, w), image scores (B,)) of the good training images."""
        descs, scores = zip(*((descriptor(z), s.float()) for z, s in pairs), strict=True)
        return self.fit(torch.cat(descs), torch.cat(scores))

    @torch.no_grad()
    def fit(self, desc: torch.Tensor, score: torch.Tensor) -> PeerPlan:
        """desc: the good training images' descriptors (N, 2D); score: their image scores (N,)."""
        score = score.float()
        self.center = desc.mean(dim=0)
        self.scale = desc.std(dim=0).clamp(min=1e-6) if len(desc) > 1 else torch.ones_like(self.center)
        self.bank = (desc - self.center) / self.scale
        self.bank_scores = score
        floor = FLOOR_SHARE * float(score.median())
        self.plan = replace(self.plan, size=len(desc), dim=desc.shape[1], floor=max(floor, 1e-6))
        return self.plan
