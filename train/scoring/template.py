"""The golden-template term: how far the input's band-pass is from the good training images'
at each pixel, in units of their spread there.

A band-pass (difference of Gaussians) removes lighting offsets and keeps detail at the scale of
a stain. On a fixtured part each image is compared with the template moved by its best
whole-pixel shift, its lighting divided out as a gain plane (`registration.py`), and the
residual is also read by a matched filter for blobs in its own noise. On a texture, where
nothing sits at the same place twice, the template is only a blob detector and weighs less.
What the product is, aligned or not, is measured on the training images at calibration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.scoring.base import GoodImages, Term, TermInputs, peak_quantile, plan_to_dict
from train.scoring.filters import GaussianBlur, circular_filter, dft_matrix, roi_mask
from train.scoring.registration import Registration

# Tuned constants, in pixels at a 128-px input (scaled to the model's input by `for_size`).
# Each was chosen on independent draws of `vqad synth` (docs/decisions.md has the evidence).
TEXTURE_BAND = (2.0, 8.0)  # measures the alignment, and a texture's band
ALIGNED_BAND = (0.5, 16.0)  # an aligned part's: a scratch's edge to a stain's body
SHIFT = 2  # registration radius (fixtures leave a part a pixel or two off)
BLOB_SIGMA = 4.0  # the blob filter's blob
SMOOTHING_SIGMA = 2.0  # the per-pixel term's smoothing
LIGHTING = True  # fit each aligned image's lighting as a gain plane
MIN_ALIGNMENT = 0.5  # aligned = position explains at least this share of the band-pass variance
ALIGNED_WEIGHT = 1.25  # the term's weight on an aligned part, in units of its validation peak
TEXTURE_WEIGHT = 0.625  # and on a texture
# Whitening floor of the blob filter, as a share of the residual's mean power: frequencies the
# good images barely carry are not amplified past 1/WHITEN_FLOOR (0.01-0.2 measured alike).
WHITEN_FLOOR = 0.05
# The blob filter runs on the residual pooled by this factor: a blob of a few pixels' sigma has
# no power near the full-size Nyquist frequency, and the transforms cost 8x less (measured alike).
BLOB_POOL = 2
# The spread's floor: 2 grey levels, so a pixel that never varied in training cannot blow up.
STD_FLOOR = 2.0 / 255.0


@dataclass(frozen=True)
class TemplateSettings:
    """What calibration may choose from (the tuned constants above, at one input size)."""

    texture_band: tuple[float, float] = TEXTURE_BAND
    aligned_band: tuple[float, float] = ALIGNED_BAND
    shift: int = SHIFT
    lighting: bool = LIGHTING
    blob_sigma: float = BLOB_SIGMA
    sigma: float = SMOOTHING_SIGMA
    min_alignment: float = MIN_ALIGNMENT
    aligned_weight: float = ALIGNED_WEIGHT
    texture_weight: float = TEXTURE_WEIGHT

    @classmethod
    def for_size(cls, pixels: float) -> TemplateSettings:
        """The constants scaled to an input of `pixels` per side (128 = as tuned); the shift stays."""
        k = pixels / 128.0
        return cls(
            texture_band=(TEXTURE_BAND[0] * k, TEXTURE_BAND[1] * k),
            aligned_band=(ALIGNED_BAND[0] * k, ALIGNED_BAND[1] * k),
            blob_sigma=BLOB_SIGMA * k,
            sigma=SMOOTHING_SIGMA * k,
        )


@dataclass(frozen=True)
class TemplatePlan:
    """band: the difference of Gaussians the template was fitted in; shift: the registration
    radius (0 = compared in place); lighting: a gain plane per image; blob_sigma: the blob
    filter's (0 = none); sigma: the per-pixel term's smoothing; alignment: the share of the
    band-pass variance position explains on the training images; weight: what calibration
    chose for the term; gain: 1 / the good validation images' 99th-percentile peak."""

    band: tuple[float, float] = TEXTURE_BAND
    shift: int = 0
    lighting: bool = False
    blob_sigma: float = 0.0
    sigma: float = SMOOTHING_SIGMA
    alignment: float = 0.0
    aligned: bool = False
    weight: float = 0.0
    gain: float = 0.0


class BandPass(nn.Module):
    """Difference of Gaussians of [0,1] images (N, C, H, W), same shape. The wide Gaussian runs
    on a copy pooled by f and is resized back (a 49-tap convolution at full size took 2/3 of the
    term's time in ONNX Runtime); pooling by f and blurring by sigma / f is about sigma at full size."""

    def __init__(self, sigmas: tuple[float, float], channels: int):
        super().__init__()
        inner, outer = sigmas
        if not 0 < inner < outer:
            raise ValueError(f"a band needs sigmas 0 < inner < outer, got {sigmas}")
        self.pool = max(1, int(outer // 2))
        self.inner = GaussianBlur(inner, channels)
        self.outer = GaussianBlur(outer / self.pool, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        H, W = x.shape[-2:]
        f = self.pool
        wide = self.outer(F.avg_pool2d(x, f) if f > 1 else x)  # (N, C, H/f, W/f)
        if f > 1:
            wide = F.interpolate(wide, size=(H, W), mode="bilinear", align_corners=False)  # (N, C, H, W)
        return self.inner(x) - wide


class GoldenTemplate(Term):
    """map = gain * smooth(max over channels |residual|), averaged with the blob filter's
    response when fitted; residual = (band-pass / gain plane - template moved) / spread moved."""

    name = "template"
    Plan = TemplatePlan

    def __init__(
        self,
        plan: TemplatePlan,
        channels: int,
        size: tuple[int, int],
        border: int,
        settings: TemplateSettings | None = None,
    ):
        super().__init__(plan)
        self.channels, self.size, self.border = channels, size, border
        self.settings = settings or TemplateSettings.for_size(math.sqrt(size[0] * size[1]))
        H, W = size
        self.register_buffer("mean", torch.zeros(1, channels, H, W))
        self.register_buffer("std", torch.ones(1, channels, H, W))
        self.register_buffer("roi", roi_mask(H, W, border), persistent=False)
        self._adopt(plan)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._derive())

    def _adopt(self, plan: TemplatePlan) -> None:
        """Build what `plan` scores with: its band, smoothing and blob filter buffers."""
        self.plan = plan
        self.band = BandPass(plan.band, self.channels)
        self.blur = GaussianBlur(plan.sigma)
        h, w = self.size[0] // BLOB_POOL, self.size[1] // BLOB_POOL
        on = plan.blob_sigma > 0
        device = self.mean.device
        self.register_buffer("blob_spectrum", torch.zeros(h, w, device=device) if on else None)
        self.register_buffer("blob_rows", dft_matrix(h).to(device) if on else None, persistent=False)
        self.register_buffer("blob_cols", dft_matrix(w).to(device) if on else None, persistent=False)
        self._derive()

    def _derive(self) -> None:
        """The registration of the current template, rebuilt when the template is loaded (a
        template not yet fitted or loaded, all zero, has none to build)."""
        p = self.plan
        fitted = bool(self.mean.abs().sum() > 0)
        needed = p.shift > 0 or p.lighting
        self.registration = (
            Registration(self.mean, self.std, self.roi, p.shift, p.lighting) if needed and fitted else None
        )

    # -- scoring ---------------------------------------------------------------------------

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(band-pass / its gain plane - template) / spread, registered, signed: (N, C, H, W)."""
        bp = self.band(x)  # (N, C, H, W)
        if self.registration is None:
            if self.plan.shift > 0 or self.plan.lighting:
                raise ValueError("the golden template's plan registers, but no template was fitted or loaded")
            return (bp - self.mean) / self.std
        mean, std, plane = self.registration(bp)
        if plane is not None:
            bp = bp / plane
        return (bp - mean) / std

    def _readings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The per-pixel |residual|, largest channel, smoothed; and the blob filter's response
        (None without one); each (N, 1, H, W)."""
        z = self.residual(x)  # (N, C, H, W)
        spread = self.blur(z.abs().amax(dim=1, keepdim=True))  # (N, 1, H, W)
        return spread, (self._blob_response(z) if self.plan.blob_sigma > 0 else None)

    def _blob_response(self, z: torch.Tensor) -> torch.Tensor:
        """|blob filter * residual| (N, C, H, W) -> largest channel (N, 1, H, W), full size."""
        H, W = z.shape[-2:]
        # Zero outside the region of interest, so the frame's margin cannot leak into it.
        pooled = F.avg_pool2d(z * self.roi, BLOB_POOL)  # (N, C, H/p, W/p)
        filtered = circular_filter(pooled, self.blob_spectrum, self.blob_rows, self.blob_cols)
        response = filtered.abs().amax(dim=1, keepdim=True)  # (N, 1, H/p, W/p)
        return F.interpolate(response, size=(H, W), mode="bilinear", align_corners=False)  # (N, 1, H, W)

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """The map before its gain (N, 1, H, W): the per-pixel term, or the mean of it and the
        blob filter (scaled to the same validation peak)."""
        spread, blobs = self._readings(x)
        return spread if blobs is None else 0.5 * (spread + blobs)

    def forward(self, inputs: TermInputs) -> torch.Tensor:
        return self.plan.gain * self.raw_map(inputs.x)

    def describe(self) -> dict[str, Any]:
        return {"unit": "the good validation images' 99th-percentile peak", "plan": plan_to_dict(self.plan)}

    # -- calibration -----------------------------------------------------------------------

    @torch.no_grad()
    def calibrate(self, good: GoodImages) -> TemplatePlan:
        """Fit the template on good training images, decide aligned or not, fit the blob filter,
        and scale the term on good validation images. -> the plan (also adopted).

        Registration: each training image's band-pass is moved onto the mean by its best shift,
        twice (the first mean is blurred by the very shifts it is used to find). The alignment is
        1 - mean per-pixel spread / overall spread. An aligned part's template is then refitted in
        its own band, registered and with each image's lighting divided out; a texture keeps the
        unregistered template in the texture band.
        """
        s = self.settings
        texture_band = BandPass(s.texture_band, self.channels).to(self.mean.device)
        in_place, overall = self._moments(good.train(), texture_band, None)
        template = in_place
        for _ in range(2 if s.shift > 0 else 0):
            template, _ = self._moments(good.train(), texture_band, self._registration(template, s.shift, False))
        alignment = 1.0 - float(template[1].mean()) / max(overall, 1e-12)
        aligned = alignment >= s.min_alignment
        band, shift, lighting = s.texture_band, 0, False
        if aligned:
            band, shift, lighting = s.aligned_band, s.shift, s.lighting
            new_band = s.aligned_band != s.texture_band
            aligned_band = BandPass(band, self.channels).to(self.mean.device)
            if new_band:
                template, _ = self._moments(good.train(), aligned_band, None)
            for _ in range(2 if lighting or (new_band and shift > 0) else 0):
                template, _ = self._moments(good.train(), aligned_band, self._registration(template, shift, lighting))
        elif template is not in_place:  # a texture: no shift fits it better than another; compared in place
            template = in_place
            alignment = 1.0 - float(in_place[1].mean()) / max(overall, 1e-12)
        weight = s.aligned_weight if aligned else s.texture_weight
        # The blob filter on aligned parts only: on a texture compared in place it measured no better.
        blob = s.blob_sigma if aligned and weight > 0 else 0.0
        self.mean.copy_(template[0])
        self.std.copy_(template[1])
        self._adopt(TemplatePlan(band, shift, lighting, blob, s.sigma, alignment, aligned, weight, 0.0))
        val = good.val_batches()
        if blob > 0:
            self._fit_blob_filter(good.train(), val)
        gain = 1.0 / max(self._peak_quantile(self.raw_map(batch) for batch in val), 1e-6) if weight > 0 else 0.0
        self.plan = replace(self.plan, gain=gain)
        return self.plan

    def _registration(self, template: tuple[torch.Tensor, torch.Tensor], radius: int, lighting: bool) -> Registration:
        return Registration(template[0], template[1], self.roi, radius, lighting)

    def _moments(
        self, batches: Iterable[torch.Tensor], band: BandPass, registration: Registration | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        """((per-pixel mean, spread floored), spread of all pixels together) of the band-passes
        of `batches`, each moved onto the template by `registration` first when given."""
        n = 0
        acc = torch.zeros_like(self.mean, dtype=torch.float64)
        acc_sq = torch.zeros_like(self.mean, dtype=torch.float64)
        for batch in batches:
            bp = band(batch)  # (B, C, H, W)
            if registration is not None:
                bp = registration.move_back(bp)
            bp = bp.double()
            acc += bp.sum(dim=0, keepdim=True)
            acc_sq += bp.pow(2).sum(dim=0, keepdim=True)
            n += bp.shape[0]
        if n < 2:
            raise ValueError("the golden template needs at least 2 good training images")
        mean = acc / n
        std = ((acc_sq / n - mean.pow(2)).clamp(min=0) * n / (n - 1)).sqrt()
        pixels = n * mean.numel()
        overall = math.sqrt(max(float(acc_sq.sum()) / pixels - (float(acc.sum()) / pixels) ** 2, 0.0))
        return (mean.float(), std.float().clamp(min=STD_FLOOR)), overall

    @torch.no_grad()
    def _fit_blob_filter(self, train_batches: Iterable[torch.Tensor], val_batches: list[torch.Tensor]) -> None:
        """A Gaussian blob of the plan's sigma divided, frequency by frequency, by the template
        residual's mean power spectrum over the good training images (floored at WHITEN_FLOOR
        of its mean), at the pooled size: the matched filter for such a blob in that noise.
        Scaled so that its 99th-percentile peak on the validation images is the per-pixel term's."""
        power = None
        for batch in train_batches:
            pooled = F.avg_pool2d(self.residual(batch) * self.roi, BLOB_POOL)  # (B, C, H/p, W/p)
            p = torch.fft.fft2(pooled.double()).abs().pow(2).sum(dim=(0, 1))  # (H/p, W/p)
            power = p if power is None else power + p
        if power is None:
            raise ValueError("the blob filter needs good training images")
        power = power / power.mean().clamp(min=1e-30)
        h, w = power.shape
        fy = torch.fft.fftfreq(h, dtype=torch.float64, device=power.device).view(-1, 1)  # cycles per pooled pixel
        fx = torch.fft.fftfreq(w, dtype=torch.float64, device=power.device).view(1, -1)
        sigma = self.plan.blob_sigma / BLOB_POOL
        blob = torch.exp(-2 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))  # a unit Gaussian's spectrum
        self.blob_spectrum.copy_((blob / (power + WHITEN_FLOOR)).float())
        readings = [self._readings(batch) for batch in val_batches]
        spread = self._peak_quantile(s for s, _ in readings)
        blobs = self._peak_quantile(b for _, b in readings)
        self.blob_spectrum.mul_(spread / max(blobs, 1e-12))

    def _peak_quantile(self, maps: Iterable[torch.Tensor]) -> float:
        return peak_quantile(maps, self.roi)
