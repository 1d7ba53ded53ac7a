"""Scoring: reconstruction -> pixel anomaly map -> image score. One module, used by
evaluation and by the exported ONNX graph, so the line sees the scores evaluation saw.

Every op here exports to ONNX opset 17 and parses in TensorRT: fixed-size depthwise
convolutions (Gaussian, Prewitt), average pooling, bilinear resize, reduce-max/TopK.
It runs in FP32 in every graph, FP16 included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from train.config import ScoreConfig


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


# Whitening floor of the blob filter, as a share of the residual's mean power: frequencies the
# good images barely carry are not amplified past 1/WHITEN_FLOOR (0.01-0.2 measured alike).
WHITEN_FLOOR = 0.05
# The blob filter runs on the residual pooled by this factor: a blob of a few pixels' sigma has
# no power near the full-size Nyquist frequency, and the transforms cost 8x less (measured alike).
BLOB_POOL = 2


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


# Registration compares band-passes pooled by this factor: 16x less work, and a defect's own
# pixels barely move the choice of shift.
REGISTER_POOL = 4


def shift_steps(radius: int) -> list[int]:
    """The offsets registration tries along each axis: whole pixels within +-radius (half-pixel
    steps measured no better on a 120 + 200 image draw, and blur the moved training images)."""
    return list(range(-radius, radius + 1))


def shift_offsets(radius: int) -> list[tuple[int, int]]:
    """Shifts (dy, dx) registration tries, row by row: (2r+1)^2 of them."""
    steps = shift_steps(radius)
    return [(dy, dx) for dy in steps for dx in steps]


def _shift_axis(t: torch.Tensor, offset: int, radius: int, dim: int) -> torch.Tensor:
    """t (N, C, H, W) moved along dim (-2: rows, -1: columns) so that the value at p is t at
    p + offset, edges replicated; |offset| <= radius."""
    pad = (0, 0, radius, radius) if dim == -2 else (radius, radius, 0, 0)
    padded = F.pad(t, pad, mode="replicate")  # (N, C, H+2r, W) or (N, C, H, W+2r)
    return padded.narrow(dim, radius + offset, t.shape[dim])


def shifted(t: torch.Tensor, dy: int, dx: int, radius: int) -> torch.Tensor:
    """(N, C, H, W) -> same shape, value at p = t at p + (dy, dx), edges replicated; |dy|, |dx| <= radius."""
    return _shift_axis(_shift_axis(t, dx, radius, -1), dy, radius, -2)


class AnomalyScorer(nn.Module):
    """(input, reconstruction) in [0,1], (N, C, H, W) -> (anomaly_map (N, 1, H, W), score (N,)).

    map = smooth(sum_i w_i * error_i), optionally standardised per pixel by the error
    statistics of good validation images (buffers `err_mean`, `err_std`); or the learned
    head's smoothed defect probability (its own, smaller sigma); or the sum of both. The image score is the map's
    max or its top-k mean.

    With score.reference active (calibrated on, see `calibrate_reference`), a golden-template
    term is added to the map: how far the input's band-pass is from the good training images'
    at each pixel (`reference_map`), after moving the template by the whole-pixel shift that
    fits the input best (`register`) and, on an aligned part, dividing the input's lighting out
    as a gain plane fitted to the template (`_fit_lighting`); averaged with a matched filter for
    blobs in the template residual's own noise when one is fitted (`_reference_terms`).
    """

    def __init__(self, cfg: ScoreConfig, image_size: int, channels: int):
        super().__init__()
        self.cfg = cfg
        # SSIM: 11-px Gaussian window, sigma 1.5, over the 5C stacked statistics.
        ssim_kx, ssim_ky = separable_kernels(gaussian_kernel1d(1.5, radius=5), 5 * channels)
        # Derived from the config, so not saved: checkpoints do not pin the scoring implementation.
        self.register_buffer("ssim_kx", ssim_kx, persistent=False)
        self.register_buffer("ssim_ky", ssim_ky, persistent=False)
        sigma = cfg.smoothing_sigma
        smooth_kx, smooth_ky = separable_kernels(gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1), 1)
        self.register_buffer("smooth_kx", smooth_kx, persistent=False)
        self.register_buffer("smooth_ky", smooth_ky, persistent=False)
        sigma = cfg.head_smoothing_sigma
        head_kx, head_ky = separable_kernels(gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1), 1)
        self.register_buffer("head_smooth_kx", head_kx, persistent=False)
        self.register_buffer("head_smooth_ky", head_ky, persistent=False)
        # Region of interest: a margin of `border` pixels is left out of the map and the score.
        roi = torch.zeros(1, 1, image_size, image_size)
        b = cfg.border
        roi[..., b : image_size - b, b : image_size - b] = 1.0
        self.register_buffer("roi", roi, persistent=False)
        # One scale per error kind, 1 / its mean on good validation images (score.balance).
        self.register_buffer("error_scale", torch.ones(len(cfg.errors)))
        # Per-pixel error statistics (identity until calibrated on good validation images).
        self.register_buffer("err_mean", torch.zeros(1, 1, image_size, image_size))
        self.register_buffer("err_std", torch.ones(1, 1, image_size, image_size))
        # Golden template (score.reference): difference-of-Gaussians kernels for C channels; the
        # per-pixel mean and spread of the good training images' band-pass; the gain the term
        # enters the map with (weight / the validation images' 99th-percentile peak; 0 = off,
        # as in runs from before it existed and on textures); the measured alignment.
        # Two bands: score.reference_sigmas measures the alignment and serves textures;
        # score.reference_aligned_sigmas serves an aligned part (`ref_aligned_band` says which).
        # The wide Gaussian runs on a copy pooled by a factor f and is resized back: a 49-tap
        # depthwise convolution at full size took 2/3 of the term's time in ONNX Runtime.
        # Pooling by f and blurring by sigma / f is a Gaussian of about sigma at full size.
        self.band_pools = {}
        for band, (inner, outer) in (("texture", cfg.reference_sigmas), ("aligned", cfg.reference_aligned_sigmas)):
            self.band_pools[band] = max(1, int(outer // 2))
            for name, sigma in (("inner", inner), ("outer", outer / self.band_pools[band])):
                kx, ky = separable_kernels(gaussian_kernel1d(sigma), channels)
                self.register_buffer(f"band_{band}_{name}_kx", kx, persistent=False)
                self.register_buffer(f"band_{band}_{name}_ky", ky, persistent=False)
        # 1 = the template was fitted in the aligned part's band; 0 = in score.reference_sigmas
        # (textures, and runs from before the aligned band existed).
        self.register_buffer("ref_aligned_band", torch.zeros(()))
        self.aligned_band = False
        self.register_buffer("ref_mean", torch.zeros(1, channels, image_size, image_size))
        self.register_buffer("ref_std", torch.ones(1, channels, image_size, image_size))
        self.register_buffer("ref_gain", torch.zeros(()))
        self.register_buffer("ref_alignment", torch.zeros(()))
        # Registration radius in pixels the template was fitted with (score.reference_shift on an
        # aligned part; 0 = compared in place, as in runs from before registration existed).
        self.register_buffer("ref_shift", torch.zeros((), dtype=torch.int64))
        # 1 = each image's lighting is fitted as a gain plane on the template before the comparison
        # (score.reference_lighting on an aligned part); 0 = compared as is, as in runs from before it.
        self.register_buffer("ref_lighting", torch.zeros(()))
        # Image coordinates in [-0.5, 0.5], the gain plane's x and y.
        coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size - 0.5
        plane_x = coords.view(1, 1, 1, -1).expand(1, 1, image_size, image_size).clone()  # (1, 1, H, W)
        self.register_buffer("plane_x", plane_x, persistent=False)
        self.register_buffer("plane_y", plane_x.transpose(-1, -2).clone(), persistent=False)
        # Python copies, so that the graph is built for what was calibrated (no term, no
        # registration, or K shifts); they follow ref_gain and ref_shift.
        self.reference_active = False
        self.register_radius = 0
        self.lighting_active = False
        banks = (
            "ref_bank",
            "ref_pick_row",
            "ref_pick_col",
            "ref_col_bank",
            "ref_pick",
            "ref_light_basis",
            "ref_light_solve",
        )
        for name in banks:
            self.register_buffer(name, torch.zeros(0), persistent=False)  # see _build_register_banks
        # The blob filter (score.reference_blob_sigma): its spectrum at the pooled size, fitted by
        # calibrate_reference; all zero until then, and empty when off (runs from before it).
        pooled = image_size // BLOB_POOL
        on = cfg.reference_blob_sigma > 0
        self.register_buffer("ref_blob_spectrum", torch.zeros(pooled, pooled) if on else torch.zeros(0))
        self.register_buffer("blob_dft", dft_matrix(pooled) if on else torch.zeros(0), persistent=False)
        self.blob_active = False
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_reference_flag())

    def _sync_reference_flag(self) -> None:
        self.reference_active = float(self.ref_gain) > 0
        self.blob_active = self.ref_blob_spectrum.numel() > 0 and bool(self.ref_blob_spectrum.abs().sum() > 0)
        self.register_radius = int(self.ref_shift)
        self.lighting_active = bool(self.ref_lighting > 0)
        self.aligned_band = bool(self.ref_aligned_band > 0)
        if self.register_radius > 0 or self.lighting_active:
            self._build_register_banks()

    @torch.no_grad()
    def _build_register_banks(self) -> None:
        """Derive, from the template, what registration reads (not saved: rebuilt on load):
        the pooled template at every shift (K, D) to choose one by, one-hot rows (K, S) for the
        chosen shift's row and column offsets, and the template and spread, side by side, at
        every column offset (S, 2*C*H*W). A chosen shift is then a matrix product and S row moves, so no
        K-sized full-resolution stack sits in the graph. K = (2r+1)^2, S = 2r+1."""
        r = self.register_radius
        offsets = shift_offsets(r)
        steps = shift_steps(r)
        bank = torch.cat([shifted(self.ref_mean, dy, dx, r) for dy, dx in offsets])  # (K, C, H, W)
        self.ref_bank = self._pooled(bank)  # (K, D)
        eye = torch.eye(len(steps), device=self.ref_mean.device)
        self.ref_pick_row = torch.stack([eye[steps.index(dy)] for dy, _ in offsets])  # (K, S)
        self.ref_pick_col = torch.stack([eye[steps.index(dx)] for _, dx in offsets])  # (K, S)
        both = torch.cat([self.ref_mean, self.ref_std], dim=1)  # (1, 2C, H, W)
        self.ref_col_bank = torch.cat([_shift_axis(both, dx, r, -1) for dx in steps]).flatten(1)  # (S, 2*C*H*W)
        if self.lighting_active:
            self._build_lighting_banks(bank)

    @torch.no_grad()
    def _build_lighting_banks(self, bank: torch.Tensor) -> None:
        """What fitting the gain plane reads, from the template at every shift `bank` (K, C, H, W):
        per shift k, an orthonormal basis Q_k (3, D) of the pooled template times 1, x and y,
        stacked to (3K, D), and R_k^-1 (K, 3, 3) of its QR factors, which turns an image's
        coordinates in that basis into the plane's coefficients; and one-hot rows (K, K) to pick
        the chosen shift's."""
        columns = torch.stack(
            [self.ref_bank, self._pooled(bank * self.plane_x), self._pooled(bank * self.plane_y)], dim=2
        )  # (K, D, 3)
        q, upper = torch.linalg.qr(columns.double())  # (K, D, 3), (K, 3, 3)
        self.ref_light_basis = q.transpose(1, 2).flatten(0, 1).float()  # (3K, D)
        self.ref_light_solve = torch.linalg.inv(upper).float()  # (K, 3, 3)
        self.ref_pick = torch.eye(bank.shape[0], device=bank.device)  # (K, K)

    def error_terms(self, x: torch.Tensor, recon: torch.Tensor) -> list[torch.Tensor]:
        """Each configured error kind's raw map (N, 1, H, W), unweighted and unscaled."""
        x, recon = x.float(), recon.float()
        terms = []
        for kind in self.cfg.errors:
            if kind == "l2":
                terms.append((x - recon).pow(2).mean(dim=1, keepdim=True))
            elif kind == "ssim":
                terms.append(1 - self.ssim(x, recon))
            else:
                terms.append(gms_map(x, recon))
        return terms

    def error_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """The raw, weighted pixel error before normalisation and smoothing -> (N, 1, H, W)."""
        total = torch.zeros_like(x[:, :1], dtype=torch.float32)
        for i, (term, weight) in enumerate(zip(self.error_terms(x, recon), self.cfg.weights, strict=True)):
            total = total + weight * self.error_scale[i] * term
        return total

    def ssim(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pixel SSIM (N, 1, H, W) of [0,1] images; also the training loss's SSIM."""
        return ssim_map(x, y, self.ssim_kx, self.ssim_ky)

    def smooth(self, err: torch.Tensor) -> torch.Tensor:
        """Gaussian smoothing (score.smoothing_sigma) of a (N, 1, H, W) map."""
        if self.cfg.smoothing_sigma <= 0:
            return err
        return separable_filter(err, self.smooth_kx, self.smooth_ky)

    def smooth_head(self, prob: torch.Tensor) -> torch.Tensor:
        """Gaussian smoothing (score.head_smoothing_sigma) of the head's (N, 1, H, W) probability."""
        if self.cfg.head_smoothing_sigma <= 0:
            return prob.float()
        return separable_filter(prob.float(), self.head_smooth_kx, self.head_smooth_ky)

    def band_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Difference of Gaussians of [0,1] images (N, C, H, W), same shape: detail at the scale
        of a stain, with lighting gradients and offsets removed. score.reference_sigmas, or
        score.reference_aligned_sigmas once the template was fitted in the aligned part's band."""
        x = x.float()
        H, W = x.shape[-2:]
        band = "aligned" if self.aligned_band else "texture"
        f = self.band_pools[band]
        inner_kx, inner_ky, outer_kx, outer_ky = (
            getattr(self, f"band_{band}_{name}") for name in ("inner_kx", "inner_ky", "outer_kx", "outer_ky")
        )
        wide = F.avg_pool2d(x, f) if f > 1 else x  # (N, C, H/f, W/f)
        wide = separable_filter(wide, outer_kx, outer_ky)
        if f > 1:
            wide = F.interpolate(wide, size=(H, W), mode="bilinear", align_corners=False)  # (N, C, H, W)
        return separable_filter(x, inner_kx, inner_ky) - wide

    def _pooled(self, t: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) band-passes -> (N, D): the region of interest, pooled for registration."""
        H = t.shape[-1]
        f = REGISTER_POOL if H % REGISTER_POOL == 0 and H >= 4 * REGISTER_POOL else 1
        return F.avg_pool2d(t * self.roi, f).flatten(1)

    def _best_shift(self, bp: torch.Tensor) -> torch.Tensor:
        """Index (N,) into shift_offsets(register_radius) of the shift that moves the template
        nearest to each band-pass in `bp` (N, C, H, W): least squares, pooled, FP32."""
        a = self._pooled(bp.float())  # (N, D)
        b = self.ref_bank  # (K, D)
        # |a - b|^2 without the |a|^2 that every candidate shares.
        dist = b.pow(2).sum(dim=1).unsqueeze(0) - 2 * a @ b.t()  # (N, K)
        return dist.argmin(dim=1)  # (N,)

    def _fit_lighting(self, bp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index (N,) into shift_offsets(register_radius) of the shift whose template, times the
        best gain plane a + b*x + c*y, fits each band-pass in `bp` (N, C, H, W) nearest (least
        squares, pooled, FP32), and that plane at full size (N, 1, H, W). The plane is floored
        at 0.5: a defect may pull it, but not flip the template's sign."""
        a = self._pooled(bp.float())  # (N, D)
        K = self.ref_pick.shape[0]
        coords = (a @ self.ref_light_basis.t()).view(-1, K, 3)  # (N, K, 3): in each shift's basis
        # The least-squares residual is |a|^2 - |coords|^2: the best shift keeps the most of a.
        best = coords.pow(2).sum(dim=2).argmax(dim=1)  # (N,)
        pick = self.ref_pick[best]  # (N, K) one-hot
        chosen = (pick.unsqueeze(2) * coords).sum(dim=1)  # (N, 3)
        solve = (pick @ self.ref_light_solve.flatten(1)).view(-1, 3, 3)  # (N, 3, 3)
        coef = (solve @ chosen.unsqueeze(2)).view(-1, 3, 1, 1)  # (N, 3, 1, 1): a, b, c
        plane = coef[:, 0:1] + coef[:, 1:2] * self.plane_x + coef[:, 2:3] * self.plane_y  # (N, 1, H, W)
        return best, plane.clamp(min=0.5)

    def register(self, bp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The template (mean, spread), each (N, C, H, W), moved by the shift within
        `register_radius` that fits each band-pass in `bp` (N, C, H, W) best:
        a fixtured part still sits a pixel or two off, and its edges would otherwise swamp the
        spread. With the lighting fitted, the shift is chosen together with each image's gain
        plane (N, 1, H, W), returned third (None without)."""
        r = self.register_radius
        best, plane = self._fit_lighting(bp) if self.lighting_active else (None, None)
        if r == 0:
            return self.ref_mean, self.ref_std, plane
        N, (C, H, W) = bp.shape[0], self.ref_mean.shape[1:]
        if best is None:
            best = self._best_shift(bp)  # (N,)
        pick_row, pick_col = self.ref_pick_row[best], self.ref_pick_col[best]  # (N, S) one-hot each
        # Template and spread side by side, column offset applied by the matrix product.
        by_col = (pick_col @ self.ref_col_bank).view(N, 2 * C, H, W)
        padded = F.pad(by_col, (0, 0, r, r), mode="replicate")  # (N, 2C, H+2r, W)
        moved = pick_row[:, :1].view(N, 1, 1, 1) * padded[:, :, :H]
        for i in range(1, 2 * r + 1):  # row offset i - r: rows i .. i+H of the padded copy
            moved = moved + pick_row[:, i : i + 1].view(N, 1, 1, 1) * padded[:, :, i : i + H]
        return moved[:, :C], moved[:, C:], plane  # (N, C, H, W) each; plane as above

    def template_residual(self, x: torch.Tensor) -> torch.Tensor:
        """(band-pass / its gain plane - the good images' mean) / their spread, registered,
        signed: (N, C, H, W) in units of standard deviations."""
        bp = self.band_pass(x)  # (N, C, H, W)
        mean, std, plane = self.register(bp)
        if plane is not None:
            bp = bp / plane
        return (bp - mean) / std

    def _reference_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The template's two readings, each (N, 1, H, W): the per-pixel |residual|, largest
        channel, smoothed; and |blob filter * residual|, largest channel (None while off)."""
        z = self.template_residual(x)  # (N, C, H, W)
        spread = self.smooth(z.abs().amax(dim=1, keepdim=True))  # (N, 1, H, W)
        if not self.blob_active:
            return spread, None
        return spread, self._blob_response(z)

    def _blob_response(self, z: torch.Tensor) -> torch.Tensor:
        """|blob filter * residual| (N, C, H, W) -> largest channel (N, 1, H, W), full size."""
        H, W = z.shape[-2:]
        # Zero outside the region of interest, so the frame's margin cannot leak into it.
        pooled = F.avg_pool2d(z * self.roi, BLOB_POOL)  # (N, C, H/p, W/p)
        filtered = circular_filter(pooled, self.ref_blob_spectrum, self.blob_dft, self.blob_dft)  # (N, C, H/p, W/p)
        response = filtered.abs().amax(dim=1, keepdim=True)  # (N, 1, H/p, W/p)
        return F.interpolate(response, size=(H, W), mode="bilinear", align_corners=False)  # (N, 1, H, W)

    def reference_map(self, x: torch.Tensor) -> torch.Tensor:
        """The golden-template map (N, 1, H, W), unscaled, active or not: the per-pixel term, or
        with the blob filter fitted, the mean of both (the filter scaled to the same peak on good
        validation images)."""
        spread, blobs = self._reference_terms(x)
        return spread if blobs is None else 0.5 * (spread + blobs)

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, head_prob: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """head_prob: the comparison head's (N, 1, H, W) defect probability, when the map uses it."""
        if self.cfg.source == "head":
            anomaly_map = self.smooth_head(head_prob)
        else:
            err = self.smooth(self.error_map(x, recon))
            if self.cfg.normalize != "none":
                err = (err - self.err_mean) / self.err_std
            anomaly_map = err  # (N, 1, H, W)
            if self.cfg.source == "combined":
                anomaly_map = self.smooth_head(head_prob) + self.cfg.head_recon_weight * err
        if self.reference_active:
            anomaly_map = anomaly_map + self.ref_gain * self.reference_map(x)
        if self.cfg.border > 0:
            anomaly_map = anomaly_map * self.roi  # the margin scores 0 (maps are >= 0 unless normalised)
        flat = anomaly_map.flatten(1)  # (N, H*W)
        if self.cfg.reduce == "max":
            score = flat.max(dim=1).values
        else:
            score = flat.topk(min(self.cfg.topk, flat.shape[1]), dim=1).values.mean(dim=1)
        return anomaly_map, score

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        """Calibrate on good images x, recon (M, C, H, W): the per-kind scales (score.balance),
        then the per-pixel (or pooled) statistics of the balanced, smoothed map (score.normalize)."""
        self.calibrate_error_scale(x, recon)
        if self.cfg.normalize != "none":
            self.calibrate_normalization(self.smooth(self.error_map(x, recon)))

    @torch.no_grad()
    def calibrate_error_scale(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        """score.balance: scale each error kind by 1 / its mean over good images x, recon (M, C, H, W)."""
        if not self.cfg.balance:
            return
        means = [max(float(term.mean()), 1e-12) for term in self.error_terms(x, recon)]
        self.error_scale.copy_(torch.tensor([1.0 / m for m in means]))

    @torch.no_grad()
    def calibrate_normalization(self, smoothed_errors: torch.Tensor) -> None:
        """Set err_mean/err_std from smoothed error maps of good images, (M, 1, H, W).

        'pixel': statistics at each position (aligned objects). 'pooled': one mean and
        spread for the whole image (textures). The spread has a floor so that a pixel that
        never varied in validation cannot blow up.
        """
        if self.cfg.normalize == "pixel":
            mean = smoothed_errors.mean(dim=0, keepdim=True)
            std = smoothed_errors.std(dim=0, keepdim=True) if smoothed_errors.shape[0] > 1 else torch.zeros_like(mean)
        elif self.cfg.normalize == "pooled":
            mean = smoothed_errors.mean().expand_as(self.err_mean)
            std = smoothed_errors.std().expand_as(self.err_mean)
        else:
            return
        floor = 0.1 * float(std.mean()) + 1e-6
        self.err_mean.copy_(mean)
        self.err_std.copy_(std.clamp(min=floor))

    @torch.no_grad()
    def calibrate_reference(
        self,
        train_batches: Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]],
        val_batches: Iterable[torch.Tensor],
    ) -> dict:
        """score.reference: fit the golden template on good training images and scale it on good
        validation images, each given as batches of (B, C, H, W) float [0,1] (streamed: a large
        training set need not be in memory as floats at once). Registration and the blob filter
        read the training images up to seven times, so `train_batches` is a collection (a list) or
        a function that returns a fresh iterable of batches each call; an iterator is refused.

        Registration (score.reference_shift > 0): each training image's band-pass is moved onto
        the mean by its best whole-pixel shift, twice, and the mean and spread are taken over the
        moved images. The alignment is then 1 - mean per-pixel spread / overall spread: the share
        of the band-pass variance that position explains. It decides the weight under
        score.reference "auto"; below score.reference_min_alignment (a texture) the template is
        the unregistered one, compared in place.
        With score.reference_blob_sigma > 0, a weight and an aligned part, the blob filter is then
        fitted for the final template (`_fit_blob_filter`).
        An aligned part's template is then fitted again in score.reference_aligned_sigmas' band,
        registered, and with score.reference_lighting each image divided by its gain plane
        (`_fit_lighting`), as the comparison then does.
        -> {"alignment", "aligned", "weight", "active", "shift", "lighting", "blob"}.
        """
        if callable(train_batches):
            passes = train_batches
        elif iter(train_batches) is train_batches:
            raise ValueError(
                "calibrate_reference needs a list of batches, or a function returning them; not an iterator"
            )
        else:
            passes = lambda: train_batches  # noqa: E731 - a collection can be read again as it is
        self.ref_shift.zero_()
        self.ref_lighting.zero_()
        self.ref_aligned_band.zero_()
        self._sync_reference_flag()
        *in_place, overall = self._template_moments(passes(), 0)
        moments = in_place
        self._set_template(*moments)
        if self.cfg.reference_shift > 0:
            for _ in range(2):  # the first mean is blurred by the very shifts it is used to find
                *moments, _ = self._template_moments(passes(), self.cfg.reference_shift)
                self._set_template(*moments)
        alignment = 1.0 - float(moments[1].mean()) / max(overall, 1e-12)
        aligned = alignment >= self.cfg.reference_min_alignment
        if aligned:
            # Refit in the aligned part's band, from the in-place mean, and with each image's
            # lighting divided out (score.reference_lighting): only a template with the part's
            # shape says what the lighting did (a texture's says nothing).
            lighting = self.cfg.reference_lighting
            new_band = self.cfg.reference_aligned_sigmas != self.cfg.reference_sigmas
            if new_band:
                self.ref_aligned_band.fill_(1.0)
                self._sync_reference_flag()
                *moments, _ = self._template_moments(passes(), 0)
                self._set_template(*moments)
            if lighting or (new_band and self.cfg.reference_shift > 0):
                for _ in range(2):  # as above: the first fit is made against a blurred mean
                    *moments, _ = self._template_moments(passes(), self.cfg.reference_shift, lighting=lighting)
                    self._set_template(*moments)
            self.ref_lighting.fill_(float(lighting))
            self.ref_shift.fill_(self.cfg.reference_shift)
        elif moments is not in_place:  # a texture: no shift fits it better than another; compared in place
            self._set_template(*in_place)
            alignment = 1.0 - float(in_place[1].mean()) / max(overall, 1e-12)
        self.ref_alignment.fill_(alignment)
        weight = {
            "on": self.cfg.reference_weight,
            "auto": self.cfg.reference_weight if aligned else self.cfg.reference_texture_weight,
            "off": 0.0,
        }[self.cfg.reference]
        val_batches = list(val_batches)  # read twice: the blob filter's scale, then the gain
        self.ref_blob_spectrum.zero_()
        self.ref_gain.zero_()
        self._sync_reference_flag()  # the registration banks of the final template
        # Aligned parts only: on a texture compared in place it measured no better (the weave's
        # image AUROC 0.001-0.002 lower on the selection draw, benchmarks/RESULTS.md session 10).
        if aligned and weight > 0 and self.ref_blob_spectrum.numel() > 0:
            self._fit_blob_filter(passes(), val_batches)
        gain = 0.0
        if weight > 0:
            gain = weight / max(self._peak_quantile(self.reference_map(batch) for batch in val_batches), 1e-6)
        self.ref_gain.fill_(gain)
        self._sync_reference_flag()
        return {
            "alignment": alignment,
            "aligned": aligned,
            "weight": weight,
            "active": self.reference_active,
            "shift": self.register_radius,
            "lighting": self.lighting_active,
            "blob": self.blob_active,
        }

    @torch.no_grad()
    def _fit_blob_filter(self, train_batches: Iterable[torch.Tensor], val_batches: list[torch.Tensor]) -> None:
        """The blob filter of score.reference_blob_sigma, for the current template: a Gaussian
        blob of that sigma divided, frequency by frequency, by the template residual's mean power
        spectrum over the good training images (floored at WHITEN_FLOOR of its mean), at the
        pooled size. That is the matched filter for such a blob in that noise. It is scaled so
        that its 99th-percentile peak on the good validation images equals the per-pixel term's."""
        power = None
        for batch in train_batches:
            pooled = F.avg_pool2d(self.template_residual(batch) * self.roi, BLOB_POOL)  # (B, C, H/p, W/p)
            p = torch.fft.fft2(pooled.double()).abs().pow(2).sum(dim=(0, 1))  # (H/p, W/p)
            power = p if power is None else power + p
        if power is None:
            raise ValueError("score.reference_blob_sigma needs good training images")
        power = power / power.mean().clamp(min=1e-30)
        h, w = power.shape
        fy = torch.fft.fftfreq(h, dtype=torch.float64, device=power.device).view(-1, 1)  # cycles per pooled pixel
        fx = torch.fft.fftfreq(w, dtype=torch.float64, device=power.device).view(1, -1)
        sigma = self.cfg.reference_blob_sigma / BLOB_POOL
        blob = torch.exp(-2 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))  # a unit Gaussian's spectrum
        self.ref_blob_spectrum.copy_((blob / (power + WHITEN_FLOOR)).float())
        self._sync_reference_flag()

        terms = [self._reference_terms(batch) for batch in val_batches]
        spread = self._peak_quantile(s for s, _ in terms)
        blobs = self._peak_quantile(b for _, b in terms)
        self.ref_blob_spectrum.mul_(spread / max(blobs, 1e-12))

    def _peak_quantile(self, maps: Iterable[torch.Tensor]) -> float:
        """The 99th percentile, over images, of each (B, 1, H, W) map's peak inside the region of
        interest: the scale "1" of a template term means on the good validation images."""
        peaks = torch.cat([(m * self.roi).flatten(1).amax(dim=1) for m in maps])  # (M,)
        return float(torch.quantile(peaks, 0.99))

    def _set_template(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.ref_mean.copy_(mean.float())
        # Floor: 2 grey levels, so a pixel that never varied in training cannot blow up.
        self.ref_std.copy_(std.float().clamp(min=2.0 / 255.0))

    def _template_moments(
        self, batches: Iterable[torch.Tensor], radius: int, lighting: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-pixel mean and (unbiased) spread of the band-passes of `batches`, each moved onto
        the current template by its best shift within `radius` (0: in place) and, with
        `lighting`, divided by its gain plane first; and the spread of all their pixels together."""
        if radius > 0 or lighting:
            self.ref_shift.fill_(radius)
            self.ref_lighting.fill_(float(lighting))
            self._sync_reference_flag()  # the banks of the current template
            offsets = shift_offsets(radius)
        n = 0
        acc = torch.zeros_like(self.ref_mean, dtype=torch.float64)
        acc_sq = torch.zeros_like(self.ref_mean, dtype=torch.float64)
        for batch in batches:
            bp = self.band_pass(batch)  # (B, C, H, W)
            if lighting:
                best, plane = self._fit_lighting(bp)
                bp = bp / plane
            elif radius > 0:
                best = self._best_shift(bp)
            if radius > 0:
                # An image matches the template moved by (dy, dx); moved back, it matches the template.
                moves = [offsets[k] for k in best.tolist()]
                bp = torch.cat(
                    [shifted(image[None], -dy, -dx, radius) for image, (dy, dx) in zip(bp, moves, strict=True)]
                )
            bp = bp.double()
            acc += bp.sum(dim=0, keepdim=True)
            acc_sq += bp.pow(2).sum(dim=0, keepdim=True)
            n += bp.shape[0]
        if radius > 0 or lighting:
            self.ref_shift.zero_()
            self.ref_lighting.zero_()
            self._sync_reference_flag()
        if n < 2:
            raise ValueError("score.reference needs at least 2 good training images")
        mean = acc / n
        std = ((acc_sq / n - mean.pow(2)).clamp(min=0) * n / (n - 1)).sqrt()
        pixels = n * mean.numel()
        overall = math.sqrt(max(float(acc_sq.sum()) / pixels - (float(acc.sum()) / pixels) ** 2, 0.0))
        return mean, std, overall
