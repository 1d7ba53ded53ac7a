"""The comparison head and its training loss."""

import pytest
import torch
import torch.nn.functional as F

from train.head import ComparisonHead, head_loss


def test_the_loss_is_binary_cross_entropy_and_keeps_pushing_a_faint_good_pixel_down():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=gen)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.7).float()
    assert torch.allclose(head_loss(logits, target), F.binary_cross_entropy_with_logits(logits, target))
    # At 10% on a good pixel its gradient is p = 0.1 (the focal loss's is ~100x smaller: it
    # left the head at ~0.1 over good texture, a floor under every good image's score).
    logit = torch.logit(torch.tensor([[[[0.1]]]])).requires_grad_()
    head_loss(logit, torch.zeros_like(logit)).backward()
    assert float(logit.grad) == pytest.approx(0.1, rel=1e-4)


def test_the_head_maps_input_and_reconstruction_to_one_logit_per_pixel():
    head = ComparisonHead(3, 8)
    x = torch.rand(2, 3, 32, 32)
    logits, features = head(x, x)
    assert logits.shape == (2, 1, 32, 32) and features.shape == (2, 32, 8, 8)
