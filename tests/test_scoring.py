"""The scorer and its terms: error kinds, calibration on good images, region of interest,
the golden template (alignment, registration, blob filter, gain plane), plans that travel."""

import dataclasses
import json

import pytest
import torch

from train.scoring import (
    AnomalyScorer,
    GoodImages,
    ScorerPlan,
    TermInputs,
    circular_filter,
    dft_matrix,
    gaussian_kernel1d,
    initial_plan,
    separable_kernels,
)
from train.scoring.errors import ErrorPlan, ReconstructionErrors
from train.scoring.filters import roi_mask, shift_offsets, shifted
from train.scoring.registration import Registration
from train.scoring.template import GoldenTemplate, TemplatePlan, TemplateSettings


def _pair(seed: int = 0, n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, (x + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def _errors_scorer(kinds=("gms",), border: int = 0, sigma: float = 0.0, channels: int = 3) -> AnomalyScorer:
    plan = ErrorPlan(kinds=kinds, weights=(1.0,) * len(kinds), scales=(1.0,) * len(kinds), sigma=sigma)
    return AnomalyScorer(ScorerPlan((("errors", 1.0, plan),), border), channels, (32, 32))


def _good(train: torch.Tensor | list[torch.Tensor], val: torch.Tensor, val_recon: torch.Tensor | None = None):
    batches = train if isinstance(train, list) else [train]
    return GoodImages(train=lambda: batches, val=val, val_recon=val if val_recon is None else val_recon)


def test_a_perfect_reconstruction_scores_zero_for_every_error_kind():
    x, _ = _pair()
    for kind in ("l2", "ssim", "gms"):
        amap, score = _errors_scorer((kind,))(x, x)
        assert amap.shape == (4, 1, 32, 32) and score.shape == (4,)
        assert float(amap.abs().max()) < 1e-4, kind


def test_calibration_makes_each_error_count_as_its_weight_on_good_images():
    x, recon = _pair()
    plan = ErrorPlan(kinds=("l2", "ssim"), weights=(1.0, 3.0), scales=(1.0, 1.0), sigma=0.0)
    term = ReconstructionErrors(plan, 3, (32, 32), 0)
    raw_l2 = float(term.weighted(x, recon).mean())  # unbalanced: 1-SSIM dwarfs L2
    calibrated = term.calibrate(_good(x, x, recon))
    assert term.plan is calibrated and dataclasses.is_dataclass(calibrated)
    with pytest.raises(dataclasses.FrozenInstanceError):
        calibrated.scales = (1.0, 1.0)
    for i, weight in enumerate(plan.weights):
        alone = ReconstructionErrors(
            ErrorPlan(kinds=(plan.kinds[i],), weights=(weight,), scales=(calibrated.scales[i],), sigma=0.0),
            3,
            (32, 32),
            0,
        )
        assert abs(float(alone.weighted(x, recon).mean()) - weight) < 1e-3 * weight
    assert abs(float(term.weighted(x, recon).mean()) - 4.0) < 1e-2
    assert raw_l2 > 0 and calibrated.scales[0] > 2 * calibrated.scales[1]


def test_the_border_is_left_out_of_the_score_and_drawn_from_its_nearest_scored_pixel():
    x, recon = _pair()
    recon = x.clone()
    recon[:, :, :2, :] = 1 - recon[:, :, :2, :]  # a huge error in the top 2 rows only
    plain, roi = _errors_scorer(("l2",), border=0), _errors_scorer(("l2",), border=4)
    assert float(plain(x, recon)[1].min()) > 0.1
    amap, score = roi(x, recon)
    assert float(score.max()) < float(plain(x, recon)[1].min())
    # The margin repeats the scored pixels next to it: row 0 is row 4, column 31 is column 27.
    full = plain(x, recon)[0]
    assert torch.equal(amap[..., 4:-4, 4:-4], full[..., 4:-4, 4:-4])
    assert torch.equal(amap[..., 0, 4:-4], full[..., 4, 4:-4])
    assert torch.equal(amap[..., 4:-4, 31], full[..., 4:-4, 27])
    assert torch.equal(amap[..., 0, 0], full[..., 4, 4])
    assert torch.equal(score, amap.flatten(1).max(dim=1).values)


def test_the_plan_names_the_terms_and_a_zero_weight_leaves_a_term_out():
    plan = initial_plan(("head", "errors", "template"), ("gms",), 4, (128, 128))
    assert [name for name, _, _ in plan.terms] == ["head", "errors", "template"]
    assert ScorerPlan.from_dict(plan.to_dict()) == plan  # saved as JSON, read back equal
    with pytest.raises(ValueError, match="unknown"):
        initial_plan(("head", "glitter"), ("gms",), 4, (128, 128))
    with pytest.raises(ValueError, match="unknown term"):
        ScorerPlan.from_dict({"border": 0, "terms": [{"name": "nope", "weight": 1.0, "plan": {}}]})
    x, recon = _pair()
    scorer = AnomalyScorer(initial_plan(("errors", "template"), ("gms",), 0, (32, 32)), 3, (32, 32))
    scorer.weights["template"] = 0.0  # as calibration leaves a texture's template at weight 0
    assert [t.name for t in scorer.active_terms()] == ["errors"]
    assert torch.allclose(scorer(x, recon)[1], 0.1 * _errors_scorer(sigma=0.5)(x, recon)[1])


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


def _template(
    shift: int = 2, blob: float = 1.0, lighting: bool = True, texture_weight: float = 0.625
) -> GoldenTemplate:
    settings = TemplateSettings(
        texture_band=(1.0, 3.0),
        aligned_band=(0.5, 4.0),
        shift=shift,
        lighting=lighting,
        blob_sigma=blob,
        sigma=2.0,
        texture_weight=texture_weight,
    )
    return GoldenTemplate(TemplatePlan(), 1, (32, 32), 2, settings)


def _template_scorer(template: GoldenTemplate) -> AnomalyScorer:
    """A scorer of the template term alone, at the weight its calibration chose."""
    scorer = AnomalyScorer(ScorerPlan((("template", template.plan.weight, template.plan),), 2), 1, (32, 32))
    scorer.terms["template"] = template
    return scorer


def _score(template: GoldenTemplate, x: torch.Tensor) -> torch.Tensor:
    return _template_scorer(template)(x, x)[1]


def test_fused_maps_each_in_units_of_their_good_images_and_the_map_their_maximum():
    x, recon = _pair(0, n=8)
    plan = initial_plan(("errors",), ("gms",), 2, (32, 32), scale=1.0, fuse=(0.5,))
    assert [p.scale for p in (plan, *plan.finer)] == [1.0, 0.5]
    assert plan.finer[0].terms[0][2].sigma == 0.5 * plan.terms[0][2].sigma
    scorer = AnomalyScorer(plan, 3, (32, 32))
    good = dataclasses.replace(_good(x, x, recon), outputs=lambda batch: (recon, None, None, None))
    calibrated = scorer.calibrate(good)
    coarse, fine = scorer.single_map(x, recon), scorer.finer[0].single_map(x, recon)
    # Each unit is its own map's 99th-percentile ("higher") validation score: here the highest of 8.
    assert calibrated.unit == pytest.approx(float(coarse[1].max()))
    assert calibrated.finer[0].unit == pytest.approx(float(fine[1].max()))
    test, test_recon = _pair(1, n=3)
    test_recon[0, :, 16, 16] = 1 - test[0, :, 16, 16]  # a one-pixel defect in the first
    fused_map, fused_score = scorer(test, test_recon)
    (m0, s0), (m1, s1) = scorer.single_map(test, test_recon), scorer.finer[0].single_map(test, test_recon)
    assert torch.allclose(fused_map, torch.maximum(m0 / calibrated.unit, m1 / calibrated.finer[0].unit))
    assert torch.allclose(fused_score, torch.maximum(s0 / calibrated.unit, s1 / calibrated.finer[0].unit))
    assert torch.equal(fused_score, fused_map[..., 2:-2, 2:-2].flatten(1).max(dim=1).values)
    assert "fused" in scorer.describe() and len(scorer.describe()["fused"]["units"]) == 2
    # Saved as JSON and a state dict, it scores the same.
    again = AnomalyScorer(ScorerPlan.from_dict(json.loads(json.dumps(calibrated.to_dict()))), 3, (32, 32))
    again.load_state_dict(scorer.state_dict())
    assert again.plan == calibrated and torch.equal(again(test, test_recon)[1], fused_score)
    # Without the model's outputs the units cannot be measured.
    with pytest.raises(ValueError, match="fusing maps"):
        AnomalyScorer(plan, 3, (32, 32)).calibrate(_good(x, x, recon))


def test_fused_maps_compute_their_shared_error_map_once(monkeypatch):
    x, recon = _pair(0, n=8)
    scorer = AnomalyScorer(initial_plan(("errors",), ("gms", "l2"), 2, (32, 32), fuse=(0.7, 0.5)), 3, (32, 32))
    scorer.calibrate(dataclasses.replace(_good(x, x, recon), outputs=lambda batch: (recon, None, None, None)))
    test, test_recon = _pair(1, n=3)
    alone = [m.single_map(test, test_recon) for m in scorer.maps()]  # each computes its own
    calls = []
    weighted = ReconstructionErrors.weighted
    monkeypatch.setattr(ReconstructionErrors, "weighted", lambda self, *a: calls.append(self) or weighted(self, *a))
    fused_map, fused_score = scorer(test, test_recon)
    assert len(calls) == 1  # three maps, one weighted error sum
    expected = torch.stack([m / s.unit for (m, _), s in zip(alone, scorer.maps(), strict=True)]).amax(dim=0)
    assert torch.equal(fused_map, expected)  # the very numbers each map computes alone
    # A map whose errors are balanced otherwise computes its own.
    fine = scorer.finer[1].terms["errors"]
    fine.plan = dataclasses.replace(fine.plan, scales=tuple(2 * v for v in fine.plan.scales))
    calls.clear()
    scorer(test, test_recon)
    assert len(calls) == 2


def test_the_golden_template_weighs_itself_by_how_aligned_the_good_images_are():
    part = _template()
    plan = part.calibrate(_good(_aligned_part(40), _aligned_part(10, seed=1)))
    assert plan is part.plan and plan.aligned and plan.alignment > 0.8 and plan.weight == part.settings.aligned_weight
    assert plan.gain > 0 and plan.band == part.settings.aligned_band
    texture = _template()
    plan = texture.calibrate(_good(_texture(40), _texture(10, seed=1)))
    assert not plan.aligned and plan.alignment < 0.3 and plan.weight == texture.settings.texture_weight
    assert plan.band == texture.settings.texture_band
    texture_off = _template(texture_weight=0.0)
    plan = texture_off.calibrate(_good(_texture(40), _texture(10, seed=1)))
    assert plan.weight == 0 and plan.gain == 0
    scorer = AnomalyScorer(initial_plan(("errors", "template"), ("gms",), 2, (32, 32)), 1, (32, 32))
    scorer.terms["template"] = _template(texture_weight=0.0)
    x = _texture(10, seed=1)
    scorer.calibrate(_good(_texture(40), x))
    assert scorer.weights["template"] == 0 and [t.name for t in scorer.active_terms()] == ["errors"]
    streamed = _template()  # the same images in batches: the same template
    images = _aligned_part(40)
    streamed.calibrate(_good([images[:13], images[13:29], images[29:]], _aligned_part(10, seed=1)))
    assert torch.allclose(streamed.mean, part.mean, atol=1e-6) and torch.allclose(streamed.std, part.std)
    assert abs(streamed.plan.gain - part.plan.gain) < 1e-5 * part.plan.gain


def test_the_golden_template_scores_a_faint_stain_the_reconstruction_copies():
    template = _template()
    template.calibrate(_good(_aligned_part(40), _aligned_part(10, seed=1)))
    good = _aligned_part(6, seed=2)
    stained = good.clone()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    stained[:, :, ...] -= 0.05 * torch.exp(-((yy - 14) ** 2 + (xx - 18) ** 2) / (2 * 2.0**2))  # 5%, smooth
    # The reconstruction copies the input: the error terms see nothing; only the template can.
    scorer = _template_scorer(template)
    good_scores = scorer(good, good)[1]
    stained_map, stained_scores = scorer(stained, stained)
    assert float(stained_scores.min()) > 2 * float(good_scores.max())
    peak = stained_map[0, 0].flatten().argmax()
    assert abs(int(peak) // 32 - 14) <= 2 and abs(int(peak) % 32 - 18) <= 2
    # On good images from the calibration's population the term peaks near its weight
    # (1 = the validation images' 99th-percentile peak).
    weight = template.plan.weight
    assert 0.3 * weight < float(good_scores.max()) < 2 * weight


def _stain(images: torch.Tensor) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return images - 0.04 * torch.exp(-((yy - 14) ** 2 + (xx - 18) ** 2) / (2 * 2.0**2))


def test_registration_lets_the_template_see_a_stain_on_a_part_that_sits_a_pixel_or_two_off():
    train, val = _aligned_part(60, jitter=2), _aligned_part(12, seed=1, jitter=2)
    registered, in_place = _template(shift=2), _template(shift=0)
    assert registered.calibrate(_good(train, val)).shift == 2 and registered.registration is not None
    assert in_place.calibrate(_good(train, val)).shift == 0
    # Moved back onto one template, the training images' edges no longer dominate the spread.
    assert float(registered.std.mean()) < 0.5 * float(in_place.std.mean())
    good = _aligned_part(8, seed=2, jitter=2)
    stained = _stain(good)

    def separation(template: GoldenTemplate) -> float:
        return float(_score(template, stained).min()) / float(_score(template, good).max())

    assert separation(registered) > 1.3 and separation(registered) > 1.3 * separation(in_place)
    # A texture has nothing to register to: it is compared in place.
    texture = _template(shift=2)
    assert texture.calibrate(_good(_texture(40), _texture(10, seed=1))).shift == 0
    streamed = _template(shift=2)  # batches, given as a function: the same template
    streamed.calibrate(GoodImages(train=lambda: (train[i : i + 16] for i in range(0, 60, 16)), val=val, val_recon=val))
    assert torch.allclose(streamed.mean, registered.mean, atol=1e-6)


@pytest.mark.parametrize("lighting", [False, True])
def test_registration_moves_the_template_by_each_images_chosen_shift(lighting):
    g = torch.Generator().manual_seed(4)
    mean, std = torch.randn(1, 2, 24, 32, generator=g), 1 + torch.rand(1, 2, 24, 32, generator=g)
    registration = Registration(mean, std, roi_mask(24, 32, 2), 2, lighting)
    offsets = shift_offsets(2)
    images = torch.cat([shifted(mean, dy, dx, 2) for dy, dx in offsets[::6]]) + 0.01 * torch.randn(5, 2, 24, 32)
    moved_mean, moved_std, plane = registration(images)
    best, _ = registration.best(images)
    assert best.tolist() == list(range(0, len(offsets), 6))  # each image's own shift is found
    for i, k in enumerate(best.tolist()):  # the template's own numbers, moved: exactly equal
        assert torch.equal(moved_mean[i : i + 1], shifted(mean, *offsets[k], 2))
        assert torch.equal(moved_std[i : i + 1], shifted(std, *offsets[k], 2))
    assert (plane is not None) == lighting


def test_the_golden_template_travels_as_plan_and_state_dict():
    template = _template()
    template.calibrate(_good(_aligned_part(40), _aligned_part(10, seed=1)))
    loaded = GoldenTemplate(template.plan, 1, (32, 32), 2, template.settings)
    x = _aligned_part(3, seed=5)
    with pytest.raises(ValueError, match="no template was fitted or loaded"):
        loaded(TermInputs(x, x))  # a registering plan without its template: refused, not scored unregistered
    loaded.load_state_dict(template.state_dict())
    assert loaded.registration is not None and loaded.plan.shift == 2
    assert torch.equal(_score(loaded, x), _score(template, x))


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

    def auroc(template: GoldenTemplate) -> float:
        good_scores, stained_scores = _score(template, good), _score(template, stained)
        return float((stained_scores[:, None] > good_scores[None, :]).float().mean())

    spread_only, with_blob = _template(shift=0, blob=0.0), _template(shift=0)
    assert spread_only.calibrate(_good(train, val)).blob_sigma == 0 and spread_only.blob_spectrum is None
    assert with_blob.calibrate(_good(train, val)).blob_sigma > 0
    assert auroc(with_blob) > 0.9 and auroc(with_blob) > auroc(spread_only) + 0.1
    # Scaled to the per-pixel term's peak on good images, the map's scale is unchanged.
    ratio = float(_score(with_blob, val).max()) / float(_score(spread_only, val).max())
    assert 0.5 < ratio < 2
    # A texture is compared in place and gets no blob filter (measured no better there).
    texture = _template()
    assert texture.calibrate(_good(_texture(40), _texture(10, seed=1))).blob_sigma == 0
    # The filter travels in the state dict, its size in the plan.
    loaded = GoldenTemplate(with_blob.plan, 1, (32, 32), 2, with_blob.settings)
    loaded.load_state_dict(with_blob.state_dict())
    assert torch.equal(_score(loaded, stained), _score(with_blob, stained))


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
    lit, as_is = _template(), _template(lighting=False)
    assert lit.calibrate(_good(train, val)).lighting and lit.registration.lighting
    assert not as_is.calibrate(_good(train, val)).lighting and not as_is.registration.lighting
    # The plane fitted to each good image is the light it was made under (the template is lit
    # as the training images are on average: 1, to the sampling of 60 lights).
    _, _, fitted = lit.registration(lit.band(good))
    assert float((fitted - planes).abs().max()) < 0.05
    # With it divided out, the good images' spread shrinks (to its floor, 2 grey levels, where
    # the light had scaled the part's edges), and the stain stands clear of them.
    assert float(lit.std.amax()) < 0.5 * float(as_is.std.amax())

    def auroc(template: GoldenTemplate) -> float:
        good_scores, stained_scores = _score(template, good), _score(template, stained)
        return float((stained_scores[:, None] > good_scores[None, :]).float().mean())

    assert auroc(lit) > 0.95 and auroc(lit) > auroc(as_is) + 0.2
    # A texture has no shape to fit a plane to: it is compared as it is, in its own band.
    texture = _template()
    plan = texture.calibrate(_good(_texture(40), _texture(10, seed=1)))
    assert not plan.lighting and texture.registration is None and plan.band == texture.settings.texture_band
    assert lit.plan.band == lit.settings.aligned_band
    # Both travel: the plan says what to build, the state dict holds the template.
    loaded = GoldenTemplate(lit.plan, 1, (32, 32), 2, lit.settings)
    loaded.load_state_dict(lit.state_dict())
    assert loaded.registration.lighting and torch.equal(_score(loaded, stained), _score(lit, stained))


def test_k_center_covers_every_cluster_even_a_rare_one():
    from train.scoring.memory import k_center

    g = torch.Generator().manual_seed(0)
    common = torch.randn(500, 4, generator=g) * 0.1
    rare = torch.randn(3, 4, generator=g) * 0.1 + 10.0  # a rare but good pattern
    chosen = k_center(torch.cat([common, rare]), 8)
    assert len(set(chosen.tolist())) == 8 and (chosen >= 500).any()


def test_the_memory_scores_features_it_never_saw_and_travels_with_its_plan():
    from train.scoring.memory import FeatureMemory, MemoryPlan

    g = torch.Generator().manual_seed(0)
    good = [torch.randn(4, 8, 8, 8, generator=g) * 0.1 for _ in range(5)]  # (B, D, h, w) features
    images = torch.zeros(4, 1, 32, 32)
    batch_features = iter(good)  # three training batches' features, then the validation batch's
    calibration = GoodImages(
        train=lambda: [images] * 3, val=images, val_recon=images, features=lambda x: next(batch_features)
    )
    memory = FeatureMemory(MemoryPlan(sigma=0.5), 1, (32, 32), 2)
    plan = memory.calibrate(calibration)
    assert plan.size == 3 * 4 * 64 and plan.dim == 8 and 0 < plan.gain < 1e6  # every cell fits in 2048
    odd = good[4].clone()  # good features the memory has not seen, and a patch of odd ones
    not_read = torch.empty(0)  # the memory reads the features alone, not the images
    odd[0, :, 3:5, 3:5] += 3.0  # a patch of features never seen in training
    m = memory(TermInputs(not_read, not_read, features=odd))
    peak = m[0, 0].flatten().argmax()
    assert 8 <= int(peak) // 32 <= 24 and 8 <= int(peak) % 32 <= 24  # where the patch is (cells 3-4 of 8)
    assert float(m[0].max()) > 5 * float(m[1:].max())
    loaded = FeatureMemory(plan, 1, (32, 32), 2)
    loaded.load_state_dict(memory.state_dict())
    assert torch.equal(loaded(TermInputs(not_read, not_read, features=odd)), m)
