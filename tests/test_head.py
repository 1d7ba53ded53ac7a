"""The comparison head's training losses (train.head_loss)."""

import typing

import pytest
import torch
import torch.nn.functional as F

from train.config import TrainConfig
from train.head import HEAD_LOSSES, dice_loss, focal_loss, head_loss


def _grad_on_good_pixel(kind: str, prob: float) -> float:
    """d loss / d logit of one good pixel (target 0) whose predicted defect probability is `prob`."""
    logit = torch.logit(torch.tensor([[[[prob]]]])).requires_grad_()
    head_loss(logit, torch.zeros_like(logit), kind).backward()
    return float(logit.grad)


def test_bce_is_binary_cross_entropy_and_focal_is_the_focal_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.7).float()
    assert torch.allclose(head_loss(logits, target, "bce"), F.binary_cross_entropy_with_logits(logits, target))
    assert torch.allclose(head_loss(logits, target, "focal"), focal_loss(logits, target))
    assert not torch.allclose(head_loss(logits, target, "bce"), head_loss(logits, target, "focal"))


def test_bce_keeps_pushing_a_good_pixel_down_where_focal_nearly_stops():
    # At 10% probability on a good pixel BCE's gradient is p = 0.1; focal's (gamma 2, the good
    # class weighted 0.25) is about 100x smaller: why "bce" exists (false alarms on textures).
    bce, focal = _grad_on_good_pixel("bce", 0.1), _grad_on_good_pixel("focal", 0.1)
    assert bce == pytest.approx(0.1, rel=1e-4)
    assert 0 < focal < bce / 50


def test_dice_is_one_minus_the_soft_dice_over_the_batch():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1  # 4 defect pixels in the first image, the second image clean
    perfect = torch.where(target > 0, 20.0, -20.0)
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: overlap 2, sum(p) 16, sum(t) 4 -> 1 - (4 + 1) / (20 + 1)
    assert float(dice_loss(torch.zeros(2, 1, 4, 4), target)) == pytest.approx(1 - 5 / 21)
    logits = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    both = head_loss(logits, target, "bce+dice")
    assert torch.allclose(both, F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target))


def test_dice_pushes_a_low_floor_on_good_pixels_down():
    # A floor of 5% on every good pixel of a batch with a small defect: Dice's gradient on a
    # good pixel does not vanish with the pixel's own probability the way focal's does.
    target = torch.zeros(1, 1, 16, 16)
    target[0, 0, :2, :2] = 1
    logits = torch.where(target > 0, 3.0, float(torch.logit(torch.tensor(0.05)))).requires_grad_()
    dice_loss(logits, target).backward()
    assert float(logits.grad[0, 0, 8, 8]) > 0


def test_every_configurable_head_loss_is_built():
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["head_loss"])) == set(HEAD_LOSSES)


def test_unknown_head_loss_is_a_value_error():
    with pytest.raises(ValueError, match="unknown head loss"):
        head_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "jaccard")
