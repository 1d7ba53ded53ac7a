"""Image filters the scoring terms are made of. Every op exports to ONNX opset 17 and parses
in TensorRT: fixed-size depthwise convolutions (Gaussian, Prewitt), average pooling, bilinear
resize, and the DFT written as matrix products. All run in FP32 in every graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, radius defaulting to ceil(3 sigma)."""
    radius = int(math.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def separable_kernels(k1d: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise (groups, 1, 1, k) and (groups, 1, k, 1) kernels from 1-D taps.

    Built once with a fixed group count, so the ONNX graph holds constant-shape kernels.
    """
    return k1d.view(1, 1, 1, -1).repeat(groups, 1, 1, 1), k1d.view(1, 1, -1, 1).repeat(groups, 1, 1, 1)


def separable_filter(x: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, pad_mode: str = "replicate") -> torch.Tensor:
    """Filter each channel of (N, G, H, W) with depthwise kernels kx (G,1,1,k), ky (G,1,k,1); same size out."""
    r = kx.shape[-1] // 2
    groups = kx.shape[0]
    x = F.pad(x, (r, r, r, r), mode=pad_mode)  # (N, G, H+2r, W+2r)
    x = F.conv2d(x, kx, groups=groups)  # (N, G, H+2r, W)
    return F.conv2d(x, ky, groups=groups)  # (N, G, H, W)


def ssim_map(x: torch.Tensor, y: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of [0,1] images (N, C, H, W) with a Gaussian window given as depthwise
    kernels for 5C groups (x, y, x², y², xy filtered in one pass), averaged over C -> (N, 1, H, W)."""
    c1, c2 = 0.01**2, 0.03**2
    C = x.shape[1]
    stats = separable_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), kx, ky)  # (N, 5C, H, W)
    mu_x, mu_y, xx, yy, xy = stats.split(C, dim=1)
    sxx, syy, sxy = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim.mean(dim=1, keepdim=True)


def _prewitt_magnitude(g: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude by Prewitt kernels of (N, 1, H, W)."""
    kx = torch.tensor([[1.0, 0.0, -1.0]] * 3, device=g.device, dtype=g.dtype) / 3.0
    k = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)  # (N, 2, H, W)
    return torch.sqrt(grad.pow(2).sum(dim=1, keepdim=True) + 1e-12)


def gms_map(x: torch.Tensor, y: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Multi-scale gradient-magnitude dissimilarity 1 - GMS of [0,1] images -> (N, 1, H, W)."""
    c = 0.0026
    H, W = x.shape[-2:]
    gx, gy = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    out = torch.zeros_like(gx)
    for s in range(scales):
        if s > 0:
            gx, gy = F.avg_pool2d(gx, 2), F.avg_pool2d(gy, 2)
        mx, my = _prewitt_magnitude(gx), _prewitt_magnitude(gy)
        gms = (2 * mx * my + c) / (mx**2 + my**2 + c)
        d = 1 - gms
        if s > 0:
            d = F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False)
        out = out + d
    out = out / scales
    return F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def dft_matrix(n: int) -> torch.Tensor:
    """[cos; sin] of the n-point DFT, stacked: (2n, n). With G = dft_matrix(n) and a real
    signal x, G @ x is (Re, -Im) of its DFT; the DFT as matrix products exports to every graph."""
    k = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, k).remainder(n) / n  # remainder: exact angles for large k*k
    return torch.cat([torch.cos(angle), torch.sin(angle)]).float()


def circular_filter(
    x: torch.Tensor, spectrum: torch.Tensor, g_rows: torch.Tensor, g_cols: torch.Tensor
) -> torch.Tensor:
    """Circular convolution of real (N, C, h, w) with the filter whose DFT is the real, even
    `spectrum` (h, w), by matrix products: x -> DFT -> times spectrum -> inverse DFT.
    g_rows = dft_matrix(h), g_cols = dft_matrix(w). Equals ifft2(fft2(x) * spectrum).real."""
    h, w = spectrum.shape
    # With C = cos, S = sin blocks: G x G^T = [[CxC, CxS], [SxC, SxS]], and DFT(x) = A - iB.
    q = g_rows @ x @ g_cols.t()  # (N, C, 2h, 2w)
    a = spectrum * (q[..., :h, :w] - q[..., h:, w:])  # (N, C, h, w): Re, filtered
    b = spectrum * (q[..., :h, w:] + q[..., h:, :w])  # (N, C, h, w): -Im, filtered
    # Inverse: Re[(C + iS)(A - iB)(C + iS)] / hw = [C S] [[A, B], [B, -A]] [C; S] / hw.
    m = torch.cat([torch.cat([a, b], dim=-1), torch.cat([b, -a], dim=-1)], dim=-2)  # (N, C, 2h, 2w)
    return g_rows.t() @ m @ g_cols / (h * w)  # (N, C, h, w)


def shift_steps(radius: int) -> list[int]:
    """The offsets registration tries along each axis: whole pixels within +-radius (half-pixel
    steps measured no better on a 120 + 200 image draw, and blur the moved training images)."""
    return list(range(-radius, radius + 1))


def shift_offsets(radius: int) -> list[tuple[int, int]]:
    """Shifts (dy, dx) registration tries, row by row: (2r+1)^2 of them."""
    steps = shift_steps(radius)
    return [(dy, dx) for dy in steps for dx in steps]


def shift_axis(t: torch.Tensor, offset: int, radius: int, dim: int) -> torch.Tensor:
    """t (N, C, H, W) moved along dim (-2: rows, -1: columns) so that the value at p is t at
    p + offset, edges replicated; |offset| <= radius."""
    pad = (0, 0, radius, radius) if dim == -2 else (radius, radius, 0, 0)
    padded = F.pad(t, pad, mode="replicate")  # (N, C, H+2r, W) or (N, C, H, W+2r)
    return padded.narrow(dim, radius + offset, t.shape[dim])


def shifted(t: torch.Tensor, dy: int, dx: int, radius: int) -> torch.Tensor:
    """(N, C, H, W) -> same shape, value at p = t at p + (dy, dx), edges replicated; |dy|, |dx| <= radius."""
    return shift_axis(shift_axis(t, dx, radius, -1), dy, radius, -2)


class GaussianBlur(nn.Module):
    """Depthwise Gaussian smoothing of (N, groups, H, W), same size out, edges replicated;
    sigma 0 is the identity. The kernels are derived from sigma, so they are not saved."""

    def __init__(self, sigma: float, groups: int = 1, radius: int | None = None):
        super().__init__()
        self.sigma = sigma
        kx, ky = separable_kernels(gaussian_kernel1d(sigma, radius) if sigma > 0 else torch.ones(1), groups)
        self.register_buffer("kx", kx, persistent=False)
        self.register_buffer("ky", ky, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return x.float()
        return separable_filter(x.float(), self.kx, self.ky)


class SSIM(nn.Module):
    """Per-pixel SSIM (N, 1, H, W) of [0,1] images (N, C, H, W): an 11-px Gaussian window,
    sigma 1.5. The reconstruction-error term and the training loss share it."""

    def __init__(self, channels: int):
        super().__init__()
        kx, ky = separable_kernels(gaussian_kernel1d(1.5, radius=5), 5 * channels)
        self.register_buffer("kx", kx, persistent=False)
        self.register_buffer("ky", ky, persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ssim_map(x, y, self.kx, self.ky)


def roi_mask(height: int, width: int, border: int) -> torch.Tensor:
    """(1, 1, H, W): 1 inside, 0 in a margin of `border` pixels."""
    roi = torch.zeros(1, 1, height, width)
    roi[..., border : height - border, border : width - border] = 1.0
    return roi
