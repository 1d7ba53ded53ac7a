"""The learned comparison head: a compact U-Net on concat(input, reconstruction) that
outputs a per-pixel defect logit (DRAEM's discriminative network, made small for a CPU).

It is trained on synthetic anomalies whose masks are exact (train/anomalies.py), with binary
cross-entropy, so it learns which differences
between a frame and its reconstruction are defects and which are the model's ordinary
reconstruction error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edge.precision import HEAD_FP32_LAYERS


def _block(cin: int, cout: int) -> nn.Sequential:
    # One conv per level keeps the head cheap on a CPU; BatchNorm folds into it at export.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class ComparisonHead(nn.Module):
    """(N, 2C, H, W) -> (N, 1, H, W) logits. Three scales, skip connections, one conv per level
    plus a second one at the coarsest scale for context."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        w = width
        self.enc1 = _block(2 * channels, w)  # H
        self.enc2 = _block(w, 2 * w)  # H/2
        self.enc3 = nn.Sequential(_block(2 * w, 4 * w), _block(4 * w, 4 * w))  # H/4
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits (N, 1, H, W), the coarsest features (N, 4w, H/4, W/4)): what the head has
        made of the frame and its reconstruction together, which the memory term compares."""
        h = torch.cat([x, recon], dim=1)  # (N, 2C, H, W)
        # The first layer compares frame and reconstruction, whose difference on good pixels is
        # a few grey levels: rounding both to FP16 first put a 10-minute model's map 1.6% off in
        # the FP16 graph. So it runs in FP32 at inference in every graph (half_precision() keeps
        # it so); the rest runs in whatever dtype it is given. Training keeps bf16 autocast here
        # as everywhere: FP32 in training cost ~5% of the steps and measured no better over two
        # seeds per category (a rerun of one seed moved the bracket's pixel AUROC as far).
        autocast = torch.is_autocast_enabled(h.device.type)
        e1 = self.enc1(h if autocast else h.float())  # (N, w, H, W)
        # The encoder half stays FP32 in the FP16 graph too (`half_precision`): its coarsest
        # features are what the memory term measures distances between, and FP16 rounding moved
        # those distances by over 1% of the map.
        e2 = self.enc2(F.max_pool2d(e1, 2))  # (N, 2w, H/2, W/2)
        e3 = self.enc3(F.max_pool2d(e2, 2))  # (N, 4w, H/4, W/4)
        dtype = self.up2.weight.dtype
        skip1, skip2, deep = (e1, e2, e3) if autocast else (e1.to(dtype), e2.to(dtype), e3.to(dtype))
        d2 = self.dec2(torch.cat([self.up2(deep), skip2], dim=1))  # (N, 2w, H/2, W/2)
        d1 = self.dec1(torch.cat([self.up1(d2), skip1], dim=1))  # (N, w, H, W)
        return self.out(d1), e3  # (N, 1, H, W), (N, 4w, H/4, W/4)


def half_precision(head: ComparisonHead) -> ComparisonHead:
    """Convert `head` in place to FP16 except its encoder half (see ComparisonHead.forward) -> head."""
    for name, child in head.named_children():
        if name not in HEAD_FP32_LAYERS:  # not half() then float(): the round trip would have rounded its weights
            child.half()
    return head


def head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The head's training loss: binary cross-entropy on the painted defects' masks. The focal
    loss (gamma 2, alpha 0.75) left the head at ~0.1 on good texture, and the soft Dice loss
    measured lower (docs/decisions.md)."""
    return F.binary_cross_entropy_with_logits(logits, target)
