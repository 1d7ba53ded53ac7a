"""Registration of the golden template to each image: the whole-pixel shift that fits it best
and, on an aligned part, the image's lighting as a gain plane on the template.

Everything here is derived from the template (mean, spread) and rebuilt when it changes; none
of it is saved. In the graph a chosen shift is one Gather from the template padded by the
radius, at indices offset by the shift: no K-sized full-resolution stack of shifted templates
sits in it, and the moved template is the template's own numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.scoring.filters import shift_offsets, shifted

# Registration compares band-passes pooled by this factor: 16x less work, and a defect's own
# pixels barely move the choice of shift.
REGISTER_POOL = 4
# The gain plane's floor: a defect may pull the plane, but not flip the template's sign.
PLANE_FLOOR = 0.5


def pooled_roi(t: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) band-passes -> (N, D): the region of interest, pooled for registration."""
    h, w = t.shape[-2:]
    f = REGISTER_POOL if h % REGISTER_POOL == 0 and w % REGISTER_POOL == 0 and min(h, w) >= 4 * REGISTER_POOL else 1
    return F.avg_pool2d(t * roi, f).flatten(1)


class Registration(nn.Module):
    """Moves a template (mean, spread), each (1, C, H, W), onto images by the whole-pixel shift
    within `radius` that fits each best; with `lighting`, chooses the shift together with each
    image's gain plane a + b*x + c*y and returns that plane. K = (2r+1)^2 shifts, S = 2r+1."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, roi: torch.Tensor, radius: int, lighting: bool):
        super().__init__()
        self.radius, self.lighting = radius, lighting
        H, W = mean.shape[-2:]
        # Image coordinates in [-0.5, 0.5], the gain plane's x and y.
        xs = (torch.arange(W, dtype=torch.float32, device=mean.device) + 0.5) / W - 0.5
        ys = (torch.arange(H, dtype=torch.float32, device=mean.device) + 0.5) / H - 0.5
        self.register_buffer("plane_x", xs.view(1, 1, 1, W).expand(1, 1, H, W).clone(), persistent=False)
        self.register_buffer("plane_y", ys.view(1, 1, H, 1).expand(1, 1, H, W).clone(), persistent=False)
        self.register_buffer("roi", roi, persistent=False)
        self._build_banks(mean.float(), std.float())

    @torch.no_grad()
    def _build_banks(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The pooled template at every shift (K, D) to choose one by; template and spread side
        by side, padded by the radius with edges replicated and flattened (2C, (H+2r)*(W+2r));
        the flat index of each pixel's unshifted source in it (H*W,) and each shift's offset
        to add (K,): (dy + r) padded rows and dx + r columns."""
        r = self.radius
        offsets = shift_offsets(r)
        bank = torch.cat([shifted(mean, dy, dx, r) for dy, dx in offsets])  # (K, C, H, W)
        self.register_buffer("bank", pooled_roi(bank, self.roi), persistent=False)  # (K, D)
        H, W = mean.shape[-2:]
        both = torch.cat([mean, std], dim=1)  # (1, 2C, H, W)
        padded = F.pad(both, (r, r, r, r), mode="replicate")[0].flatten(1)  # (2C, (H+2r)*(W+2r))
        rows, cols = torch.arange(H, device=mean.device), torch.arange(W, device=mean.device)
        self.register_buffer("padded", padded, persistent=False)
        self.register_buffer("origin", (rows[:, None] * (W + 2 * r) + cols[None, :]).flatten(), persistent=False)
        shift = torch.tensor([(dy + r) * (W + 2 * r) + dx + r for dy, dx in offsets], device=mean.device)
        self.register_buffer("shift_offset", shift, persistent=False)  # (K,)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        if self.lighting:
            self._build_lighting_banks(bank)

    @torch.no_grad()
    def _build_lighting_banks(self, bank: torch.Tensor) -> None:
        """Per shift k, an orthonormal basis Q_k (3, D) of the pooled template times 1, x and y,
        stacked to (3K, D), and R_k^-1 (K, 3, 3) of its QR factors, which turns an image's
        coordinates in that basis into the plane's coefficients; one-hot rows (K, K) to pick
        the chosen shift's."""
        columns = torch.stack(
            [self.bank, pooled_roi(bank * self.plane_x, self.roi), pooled_roi(bank * self.plane_y, self.roi)], dim=2
        )  # (K, D, 3)
        q, upper = torch.linalg.qr(columns.double())  # (K, D, 3), (K, 3, 3)
        self.register_buffer("light_basis", q.transpose(1, 2).flatten(0, 1).float(), persistent=False)  # (3K, D)
        self.register_buffer("light_solve", torch.linalg.inv(upper).float(), persistent=False)  # (K, 3, 3)
        self.register_buffer("pick", torch.eye(bank.shape[0], device=bank.device), persistent=False)  # (K, K)

    def best_shift(self, bp: torch.Tensor) -> torch.Tensor:
        """Index (N,) into shift_offsets(radius) of the shift that moves the template nearest to
        each band-pass in `bp` (N, C, H, W): least squares, pooled, FP32."""
        a = pooled_roi(bp.float(), self.roi)  # (N, D)
        # |a - b|^2 without the |a|^2 that every candidate shares.
        dist = self.bank.pow(2).sum(dim=1).unsqueeze(0) - 2 * a @ self.bank.t()  # (N, K)
        return dist.argmin(dim=1)  # (N,)

    def fit_lighting(self, bp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index (N,) of the shift whose template, times the best gain plane, fits each band-pass
        in `bp` (N, C, H, W) nearest (least squares, pooled, FP32), and that plane (N, 1, H, W)."""
        a = pooled_roi(bp.float(), self.roi)  # (N, D)
        K = self.pick.shape[0]
        coords = (a @ self.light_basis.t()).view(-1, K, 3)  # (N, K, 3): in each shift's basis
        # The least-squares residual is |a|^2 - |coords|^2: the best shift keeps the most of a.
        best = coords.pow(2).sum(dim=2).argmax(dim=1)  # (N,)
        pick = self.pick[best]  # (N, K) one-hot
        chosen = (pick.unsqueeze(2) * coords).sum(dim=1)  # (N, 3)
        solve = (pick @ self.light_solve.flatten(1)).view(-1, 3, 3)  # (N, 3, 3)
        coef = (solve @ chosen.unsqueeze(2)).view(-1, 3, 1, 1)  # (N, 3, 1, 1): a, b, c
        plane = coef[:, 0:1] + coef[:, 1:2] * self.plane_x + coef[:, 2:3] * self.plane_y  # (N, 1, H, W)
        return best, plane.clamp(min=PLANE_FLOOR)

    def best(self, bp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chosen shift index (N,) for each band-pass, and its gain plane (None without lighting)."""
        return self.fit_lighting(bp) if self.lighting else (self.best_shift(bp), None)

    def forward(self, bp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The template (mean, spread), each (N, C, H, W), moved onto each band-pass in `bp`,
        and each image's gain plane (N, 1, H, W), or None without lighting."""
        r = self.radius
        if r == 0:
            return self.mean, self.std, self.fit_lighting(bp)[1]
        best, plane = self.best(bp)
        N, (C, H, W) = bp.shape[0], self.mean.shape[1:]
        # The value at p of the template moved by (dy, dx) is the padded one's at p + (dy + r, dx + r).
        index = self.origin[None, :] + self.shift_offset[best][:, None]  # (N, H*W)
        moved = self.padded[:, index]  # (2C, N, H*W)
        moved = moved.transpose(0, 1).reshape(N, 2 * C, H, W)
        return moved[:, :C], moved[:, C:], plane

    def move_back(self, bp: torch.Tensor) -> torch.Tensor:
        """Each band-pass in `bp` (N, C, H, W) divided by its gain plane (with lighting) and moved
        back by its chosen shift, onto the template: how training images are stacked."""
        best, plane = self.best(bp)
        if plane is not None:
            bp = bp / plane
        if self.radius == 0:
            return bp
        offsets = shift_offsets(self.radius)
        moves = [offsets[k] for k in best.tolist()]
        # An image matches the template moved by (dy, dx); moved back, it matches the template.
        return torch.cat(
            [shifted(image[None], -dy, -dx, self.radius) for image, (dy, dx) in zip(bp, moves, strict=True)]
        )
