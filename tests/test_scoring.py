"""The shared scorer: error kinds, calibration on good images, region of interest."""

import dataclasses

import torch

from train.config import ScoreConfig
from train.scoring import AnomalyScorer


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
