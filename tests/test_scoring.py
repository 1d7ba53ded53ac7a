"""The shared scorer: error kinds, calibration on good images, region of interest."""

import dataclasses

import pytest
import torch

from train.config import ScoreConfig
from train.scoring import AnomalyScorer, circular_filter, dft_matrix, gaussian_kernel1d, separable_kernels


def _pair(seed: int = 0, n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, (x + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def test_a_perfect_reconstruction_scores_zero_for_every_error_kind():
    x, _ = _pair()
    for kind in ("l2", "ssim", "gms"):
        scorer = AnomalyScorer(
            ScoreConfig(source="recon", errors=(kind,), weights=(1.0,), border=0, balance=False), 32, 3
        )
        amap, score = scorer(x, x)
        assert amap.shape == (4, 1, 32, 32) and score.shape == (4,)
        assert float(amap.abs().max()) < 1e-4, kind


def test_balance_makes_each_error_count_as_its_weight_on_good_images():
    x, recon = _pair()
    cfg = ScoreConfig(
        source="recon", errors=("l2", "ssim"), weights=(1.0, 3.0), smoothing_sigma=0, border=0, balance=True
    )
    scorer = AnomalyScorer(cfg, 32, 3)
    raw_l2 = float(scorer.error_map(x, recon).mean())  # unbalanced: 1-SSIM dwarfs L2
    scorer.calibrate_error_scale(x, recon)
    for i, weight in enumerate(cfg.weights):
        alone = AnomalyScorer(dataclasses.replace(cfg, errors=(cfg.errors[i],), weights=(weight,)), 32, 3)
        alone.error_scale.fill_(float(scorer.error_scale[i]))
        assert abs(float(alone.error_map(x, recon).mean()) - weight) < 1e-3 * weight
    assert abs(float(scorer.error_map(x, recon).mean()) - 4.0) < 1e-2
    assert raw_l2 > 0 and float(scorer.error_scale[0]) > 2 * float(scorer.error_scale[1])


def test_balance_off_leaves_the_scales_at_one():
    x, recon = _pair()
    scorer = AnomalyScorer(ScoreConfig(source="recon", errors=("l2", "ssim"), weights=(1.0, 1.0), balance=False), 32, 3)
    scorer.calibrate_error_scale(x, recon)
    assert torch.equal(scorer.error_scale, torch.ones(2))


def test_the_border_is_left_out_of_map_and_score():
    x, recon = _pair()
    recon = x.clone()
    recon[:, :, :2, :] = 1 - recon[:, :, :2, :]  # a huge error in the top 2 rows only
    plain = AnomalyScorer(ScoreConfig(source="recon", border=0, smoothing_sigma=0, balance=False), 32, 3)
    roi = AnomalyScorer(ScoreConfig(source="recon", border=4, smoothing_sigma=0, balance=False), 32, 3)
    assert float(plain(x, recon)[1].min()) > 0.1
    amap, score = roi(x, recon)
    assert float(amap[..., :4, :].abs().max()) == 0.0
    assert float(score.max()) < float(plain(x, recon)[1].min())


def _aligned_part(n: int, size: int = 32, seed: int = 0, jitter: int = 0) -> torch.Tensor:
    """n images of one fixtured part (a bright square on dark), lit a little differently, with
    noise; each moved by a whole-pixel shift of up to `jitter` in y and x."""
    g = torch.Generator().manual_seed(seed)
    part = torch.full((n, 1, size, size), 0.1)
    offsets = torch.randint(-jitter, jitter + 1, (n, 2), generator=g)
    for image, (dy, dx) in zip(part, offsets.tolist(), strict=True):
        image[:, 8 + dy : 24 + dy, 8 + dx : 24 + dx] = 0.6
    gain = 1 + 0.08 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (part * gain + 0.005 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)


def _texture(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n images of a random texture: nothing sits at the same place twice."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def _reference_scorer(mode: str = "auto", shift: int = 2, blob: float = 1.0, lighting: bool = True) -> AnomalyScorer:
    cfg = ScoreConfig(
        source="recon",
        reference=mode,
        reference_sigmas=(1.0, 3.0),
        reference_aligned_sigmas=(0.5, 4.0),
        border=2,
        balance=False,
        reference_shift=shift,
        reference_blob_sigma=blob,
        reference_lighting=lighting,
    )
    return AnomalyScorer(cfg, 32, 1)


def test_the_golden_template_weighs_itself_by_how_aligned_the_good_images_are():
    part = _reference_scorer()
    found = part.calibrate_reference([_aligned_part(40)], [_aligned_part(10, seed=1)])
    assert found["aligned"] and found["alignment"] > 0.8 and found["weight"] == part.cfg.reference_weight
    assert part.reference_active and float(part.ref_gain) > 0
    texture = _reference_scorer()
    found = texture.calibrate_reference([_texture(40)], [_texture(10, seed=1)])
    assert not found["aligned"] and found["alignment"] < 0.3 and found["weight"] == texture.cfg.reference_texture_weight
    assert texture.reference_active
    cfg = dataclasses.replace(texture.cfg, reference_texture_weight=0.0)
    texture_off = AnomalyScorer(cfg, 32, 1)
    assert not texture_off.calibrate_reference([_texture(40)], [_texture(10, seed=1)])["active"]
    assert float(texture_off.ref_gain) == 0
    forced = _reference_scorer("on")
    assert forced.calibrate_reference([_texture(40)], [_texture(10, seed=1)])["weight"] == forced.cfg.reference_weight
    streamed = _reference_scorer()  # the same images in batches: the same template
    images = _aligned_part(40)
    streamed.calibrate_reference([images[:13], images[13:29], images[29:]], [_aligned_part(10, seed=1)])
    assert torch.allclose(streamed.ref_mean, part.ref_mean, atol=1e-6) and torch.allclose(
        streamed.ref_std, part.ref_std
    )
    assert abs(float(streamed.ref_gain) - float(part.ref_gain)) < 1e-5 * float(part.ref_gain)
    off = _reference_scorer("off")
    assert not off.calibrate_reference([_aligned_part(40)], [_aligned_part(10, seed=1)])["active"]


def test_the_golden_template_scores_a_faint_stain_the_reconstruction_copies():
    scorer = _reference_scorer()
    scorer.calibrate_reference([_aligned_part(40)], [_aligned_part(10, seed=1)])
    good = _aligned_part(6, seed=2)
    stained = good.clone()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    stained[:, :, ...] -= 0.05 * torch.exp(-((yy - 14) ** 2 + (xx - 18) ** 2) / (2 * 2.0**2))  # 5%, smooth
    # The reconstruction copies the input: the error terms see nothing; only the template can.
    good_scores = scorer(good, good)[1]
    stained_map, stained_scores = scorer(stained, stained)
    assert float(stained_scores.min()) > 2 * float(good_scores.max())
    peak = stained_map[0, 0].flatten().argmax()
    assert abs(int(peak) // 32 - 14) <= 2 and abs(int(peak) % 32 - 18) <= 2
    # On good images from the calibration's population the term peaks near its weight
    # (1 = the validation images' 99th-percentile peak).
    assert 0.3 * scorer.cfg.reference_weight < float(good_scores.max()) < 2 * scorer.cfg.reference_weight


def _stain(images: torch.Tensor) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return images - 0.04 * torch.exp(-((yy - 14) ** 2 + (xx - 18) ** 2) / (2 * 2.0**2))


def test_registration_lets_the_template_see_a_stain_on_a_part_that_sits_a_pixel_or_two_off():
    train, val = _aligned_part(60, jitter=2), _aligned_part(12, seed=1, jitter=2)
    registered, in_place = _reference_scorer(shift=2), _reference_scorer(shift=0)
    assert registered.calibrate_reference([train], [val])["shift"] == 2 and registered.register_radius == 2
    assert in_place.calibrate_reference([train], [val])["shift"] == 0
    # Moved back onto one template, the training images' edges no longer dominate the spread.
    assert float(registered.ref_std.mean()) < 0.5 * float(in_place.ref_std.mean())
    good = _aligned_part(8, seed=2, jitter=2)
    stained = _stain(good)

    def separation(scorer: AnomalyScorer) -> float:
        return float(scorer(stained, stained)[1].min()) / float(scorer(good, good)[1].max())

    assert separation(registered) > 1.3 and separation(registered) > 1.3 * separation(in_place)
    # A texture has nothing to register to: it is compared in place.
    texture = _reference_scorer(shift=2)
    assert texture.calibrate_reference([_texture(40)], [_texture(10, seed=1)])["shift"] == 0
    # Registration and the blob filter read the training images more than once: an iterator would be read once.
    with pytest.raises(ValueError, match="iterator"):
        _reference_scorer().calibrate_reference(iter([train]), [val])
    streamed = _reference_scorer(shift=2)  # batches, given as a function: the same template
    streamed.calibrate_reference(lambda: (train[i : i + 16] for i in range(0, 60, 16)), [val])
    assert torch.allclose(streamed.ref_mean, registered.ref_mean, atol=1e-6)


def test_the_golden_template_travels_in_the_state_dict_and_is_off_when_absent():
    scorer = _reference_scorer()
    scorer.calibrate_reference([_aligned_part(40)], [_aligned_part(10, seed=1)])
    loaded = _reference_scorer()
    assert not loaded.reference_active
    loaded.load_state_dict(scorer.state_dict())
    assert loaded.reference_active and loaded.register_radius == scorer.register_radius == 2
    x = _aligned_part(3, seed=5)
    assert torch.equal(loaded(x, x)[1], scorer(x, x)[1])
    fresh = _reference_scorer()  # never calibrated (a run from before the template existed)
    assert torch.equal(fresh(x, x)[1], torch.zeros(3))


def test_the_dft_as_matrix_products_is_the_fft_filter():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 12, generator=g)
    spectrum = torch.rand(16, 12, generator=g)
    spectrum = 0.5 * (spectrum + spectrum.flip(0, 1).roll((1, 1), (0, 1)))  # even: S[k] = S[-k], as a power spectrum
    expected = torch.fft.ifft2(torch.fft.fft2(x.double()) * spectrum.double()).real
    assert torch.allclose(circular_filter(x, spectrum, dft_matrix(16), dft_matrix(12)).double(), expected, atol=1e-5)


def _grained_part(n: int, seed: int = 0) -> torch.Tensor:
    """n images of a fixtured part whose surface carries brushed grain: noise correlated along
    rows (sigma 3 px) and not across them, as brushed metal is, and as strong as a faint stain."""
    g = torch.Generator().manual_seed(seed)
    part = torch.full((n, 1, 32, 32), 0.1)
    part[:, :, 6:26, 6:26] = 0.6
    kx, _ = separable_kernels(gaussian_kernel1d(3.0), 1)
    grain = torch.nn.functional.conv2d(
        torch.nn.functional.pad(torch.randn(n, 1, 32, 32, generator=g), (9, 9, 0, 0), mode="circular"), kx
    )
    gain = 1 + 0.08 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return (part * gain + 0.03 * grain / grain.std()).clamp(0, 1)


def test_the_blob_filter_finds_a_stain_in_brushed_grain_that_the_per_pixel_spread_misses():
    train, val, good = _grained_part(80), _grained_part(16, seed=1), _grained_part(40, seed=2)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    stained = _grained_part(40, seed=3) - 0.1 * torch.exp(-((yy - 15) ** 2 + (xx - 17) ** 2) / (2 * 1.5**2))

    def auroc(scorer: AnomalyScorer) -> float:
        good_scores, stained_scores = scorer(good, good)[1], scorer(stained, stained)[1]
        return float((stained_scores[:, None] > good_scores[None, :]).float().mean())

    spread_only, with_blob = _reference_scorer(shift=0, blob=0.0), _reference_scorer(shift=0)
    assert not spread_only.calibrate_reference([train], [val])["blob"]
    assert with_blob.calibrate_reference([train], [val])["blob"] and with_blob.blob_active
    assert auroc(with_blob) > 0.9 and auroc(with_blob) > auroc(spread_only) + 0.1
    # Scaled to the per-pixel term's peak on good images, the map's scale is unchanged.
    ratio = float(with_blob(val, val)[1].max()) / float(spread_only(val, val)[1].max())
    assert 0.5 < ratio < 2
    # A texture is compared in place and gets no blob filter (measured no better there).
    texture = _reference_scorer()
    assert not texture.calibrate_reference([_texture(40)], [_texture(10, seed=1)])["blob"]
    assert float(texture.ref_blob_spectrum.abs().sum()) == 0
    # The filter travels in the state dict.
    loaded = _reference_scorer(shift=0)
    loaded.load_state_dict(with_blob.state_dict())
    assert loaded.blob_active and torch.equal(loaded(stained, stained)[1], with_blob(stained, stained)[1])


def _lit_part(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of a fixtured part with a bored boss, each under its own light: a gain plane
    1 + a + b*x + c*y (x, y in [-0.5, 0.5]), a, b, c up to +-0.15; and those planes (n, 1, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    part = torch.full((1, 1, 32, 32), 0.1)
    part[..., 6:26, 6:26] = 0.5
    part[..., ((yy - 16) ** 2 + (xx - 16) ** 2) < 36] = 0.8
    coef = 0.3 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    x, y = (xx + 0.5) / 32 - 0.5, (yy + 0.5) / 32 - 0.5
    planes = 1 + coef[:, :1] + coef[:, 1:2] * x + coef[:, 2:] * y  # (n, 1, 32, 32)
    return (part * planes + 0.005 * torch.randn(n, 1, 32, 32, generator=g)).clamp(0, 1), planes


def test_the_gain_plane_divides_each_images_lighting_out_of_the_comparison():
    train, val = _lit_part(60)[0], _lit_part(12, seed=1)[0]
    good, planes = _lit_part(40, seed=2)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    stained = _lit_part(40, seed=3)[0] + 0.02 * torch.exp(-((yy - 10) ** 2 + (xx - 16) ** 2) / (2 * 2.0**2))
    lit, as_is = _reference_scorer(), _reference_scorer(lighting=False)
    assert lit.calibrate_reference([train], [val])["lighting"] and lit.lighting_active
    assert not as_is.calibrate_reference([train], [val])["lighting"] and not as_is.lighting_active
    # The plane fitted to each good image is the light it was made under (the template is lit
    # as the training images are on average: 1, to the sampling of 60 lights).
    _, _, fitted = lit.register(lit.band_pass(good))
    assert float((fitted - planes).abs().max()) < 0.05
    # With it divided out, the good images' spread shrinks (to its floor, 2 grey levels, where
    # the light had scaled the part's edges), and the stain stands clear of them.
    assert float(lit.ref_std.amax()) < 0.5 * float(as_is.ref_std.amax())

    def auroc(scorer: AnomalyScorer) -> float:
        good_scores, stained_scores = scorer(good, good)[1], scorer(stained, stained)[1]
        return float((stained_scores[:, None] > good_scores[None, :]).float().mean())

    assert auroc(lit) > 0.95 and auroc(lit) > auroc(as_is) + 0.2
    # A texture has no shape to fit a plane to: it is compared as it is, in its own band.
    texture = _reference_scorer()
    found = texture.calibrate_reference([_texture(40)], [_texture(10, seed=1)])
    assert not found["lighting"] and not texture.lighting_active and not texture.aligned_band
    assert lit.aligned_band and not as_is.lighting_active
    # Both travel in the state dict.
    loaded = _reference_scorer()
    loaded.load_state_dict(lit.state_dict())
    assert loaded.lighting_active and loaded.aligned_band
    assert torch.equal(loaded(stained, stained)[1], lit(stained, stained)[1])
