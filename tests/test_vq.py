import pytest
import torch

from train.config import ModelConfig
from train.model import EMA_DECAY, VQVAE, VectorQuantizer, kmeans


def quantizer(kmeans_init: bool = False, **kw) -> VectorQuantizer:
    """A small quantiser; k-means initialisation marked done unless asked for."""
    vq = VectorQuantizer(ModelConfig(**{"codebook_size": 16, "code_dim": 4, **kw}))
    vq.initted.fill_(not kmeans_init)
    return vq


def test_nearest_code_matches_brute_force():
    torch.manual_seed(0)
    vq = quantizer().eval()
    z = torch.randn(2, 4, 3, 5)  # (N, D, h, w)
    z_q, codes, _ = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.stack([((vq.embed - v) ** 2).sum(1).argmin() for v in flat])  # one vector at a time
    assert torch.equal(codes.flatten(), brute)
    assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 4), vq.embed[brute])


def test_margins_find_a_cell_halfway_between_two_codes():
    """A latent vector exactly halfway between two codes is a tie: its image's margin is ~0;
    images whose cells all sit on a code have a clear margin."""
    torch.manual_seed(0)
    vq = quantizer().eval()
    z = vq.embed[torch.randint(0, 16, (2 * 3 * 5,))].view(2, 3, 5, 4).permute(0, 3, 1, 2).clone()  # (N, D, h, w)
    z[1, :, 2, 3] = (vq.embed[3] + vq.embed[7]) / 2  # image 1, one cell: a tie between codes 3 and 7
    margins = vq.margins(z)
    assert margins.shape == (2,)
    assert margins[1] < 1e-6 < 1e-2 < margins[0]


def test_straight_through_gradient_reaches_the_encoder_output_unchanged():
    torch.manual_seed(0)
    vq = quantizer().train()
    vq.initted.fill_(True)
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    z_q, _, stats = vq(z)
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    assert torch.allclose(z.grad, weights)  # d(z_q)/dz is the identity
    assert not vq.embed.requires_grad  # the codebook learns by EMA, not by gradient


def test_commitment_loss_pulls_the_encoder_output_toward_its_code():
    vq = quantizer().train()
    vq.initted.fill_(True)
    z = torch.randn(1, 4, 2, 2, requires_grad=True)
    _, _, stats = vq(z)
    stats["vq_loss"].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_ema_update_arithmetic():
    vq = quantizer()
    vq.cluster_size.fill_(2.0)
    vq.embed_avg.fill_(1.0)
    counts = torch.zeros(16)
    counts[3] = 4.0
    sums = torch.zeros(16, 4)
    sums[3] = torch.tensor([4.0, 8.0, 0.0, -4.0])
    vq.ema_update(counts, sums)
    d = EMA_DECAY
    expect_n = d * 2.0 + (1 - d) * counts
    expect_m = d * 1.0 + (1 - d) * sums
    assert torch.allclose(vq.cluster_size, expect_n)
    assert torch.allclose(vq.embed_avg, expect_m)
    n, eps = expect_n.sum(), 1e-5
    smoothed = (expect_n + eps) / (n + 16 * eps) * n
    assert torch.allclose(vq.embed, expect_m / smoothed[:, None])


def test_kmeans_init_moves_the_codebook_onto_the_data():
    torch.manual_seed(0)
    vq = quantizer(kmeans_init=True, codebook_size=4, code_dim=2).train()
    assert not bool(vq.initted)
    before = vq.embed.clone()
    centres = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    data = (centres[:, None, :] + 0.1 * torch.randn(4, 8, 2)).reshape(-1, 2)  # 32 vectors around 4 centres
    z = data.t().reshape(1, 2, 4, 8)  # (N=1, D=2, h=4, w=8)
    vq(z)
    assert bool(vq.initted)
    assert not torch.allclose(before, vq.embed)
    found = sorted(map(tuple, vq.embed.round().tolist()))
    assert found == sorted(map(tuple, centres.tolist()))


def test_kmeans_finds_separated_clusters():
    torch.manual_seed(1)
    x = torch.cat([torch.randn(50, 3) + 20, torch.randn(50, 3) - 20])
    c = kmeans(x, 2, 10)
    assert sorted(c[:, 0].round().tolist()) == [-20.0, 20.0] or torch.allclose(
        c.abs().mean(), torch.tensor(20.0), atol=1
    )


def test_dead_code_restart_replaces_unused_codes_with_batch_vectors():
    torch.manual_seed(0)
    vq = quantizer()
    vq.cluster_size.fill_(5.0)  # DEAD_CODE_THRESHOLD is 2
    vq.cluster_size[[1, 7]] = 0.5  # two dead codes
    before = vq.embed.clone()
    batch = torch.randn(10, 4) + 100.0
    n = vq.expire_dead_codes(batch)
    assert n == 2
    changed = (vq.embed != before).any(dim=1)
    assert changed.tolist() == [i in (1, 7) for i in range(16)]
    for i in (1, 7):  # each restarted code is one of the batch vectors
        assert ((batch - vq.embed[i]).abs().sum(1) < 1e-5).any()


def test_perplexity_and_shapes_of_the_whole_model():
    cfg = ModelConfig(image_size=32, width=8, code_dim=8, codebook_size=32, res_blocks=1)
    model = VQVAE(cfg).train()
    x = torch.randn(2, 3, 32, 32)
    recon, stats = model(x)
    assert recon.shape == x.shape
    assert 1.0 <= float(stats["perplexity"]) <= 32.0
    z_q, codes, _ = model.eval().encode(x)
    assert codes.shape == (2, 8, 8) and z_q.shape == (2, 8, 8, 8)
    assert torch.allclose(model.decode_code(codes), model.decode(z_q), atol=1e-5)


def test_quantiser_stays_fp32_under_bf16_autocast():
    """Mixed-precision training must not move the distances, argmin or EMA statistics to bf16."""
    torch.manual_seed(0)
    vq = quantizer(codebook_size=64, code_dim=8).train()
    vq.initted.fill_(True)
    # Vectors close to their codes, so that bf16 distances would tie and flip some of them.
    z = (vq.embed[torch.randint(0, 64, (2 * 6 * 6,))] + 1e-3 * torch.randn(72, 8)).view(2, 6, 6, 8).permute(0, 3, 1, 2)
    fp32_codes = vq.eval()(z)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, codes, stats = vq.train()(z.bfloat16())
    assert z_q.dtype == torch.float32 and vq.embed.dtype == torch.float32 and vq.embed_avg.dtype == torch.float32
    assert torch.equal(codes, fp32_codes)
    assert stats["vq_loss"].dtype == torch.float32


def test_training_precision_choice():
    from train.device import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "auto") in (None, torch.bfloat16)


def test_decode_ranked_swaps_each_cell_for_its_ranked_code_and_rank_0_is_the_plain_decode():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, width=8, code_dim=8, codebook_size=32, res_blocks=1)
    model = VQVAE(cfg).train()
    x = torch.randn(2, 3, 32, 32)
    model(x)  # k-means initialisation
    model.eval()
    z = model.encoder(x)
    _, codes, _ = model.quantize(z)
    ranks = torch.zeros(2, 8, 8, dtype=torch.long)
    assert torch.allclose(model.decode_ranked(x, ranks), model.decode_code(codes), atol=1e-5)
    ranks[0, 2:4, 2:5] = 3
    order = model.quantizer.distances(z.permute(0, 2, 3, 1).reshape(-1, 8)).argsort(dim=1).view(2, 8, 8, 32)
    swapped = torch.where(ranks > 0, order[..., 3], codes)
    assert (swapped != codes).sum() == 6
    embed = model.quantizer.embed.clone()
    assert torch.allclose(model.decode_ranked(x, ranks), model.decode_code(swapped), atol=1e-5)
    assert torch.equal(model.quantizer.embed, embed)  # the codebook learns nothing from a swap
    with pytest.raises(ValueError, match="latent grid"):
        model.decode_ranked(x, ranks[:, :4])
    with pytest.raises(ValueError, match="one-level"):
        VQVAE(ModelConfig(image_size=32, width=8, code_dim=8, codebook_size=32, res_blocks=1, levels=2)).decode_ranked(
            x, ranks
        )


def test_two_levels_condition_the_bottom_codes_on_the_top_and_decode_from_both():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, width=8, code_dim=8, codebook_size=32, res_blocks=1, levels=2)
    model = VQVAE(cfg).train()
    x = torch.randn(2, 3, 32, 32)
    recon, stats = model(x)
    assert recon.shape == x.shape and 1.0 <= float(stats["top_perplexity"]) <= 32.0 + 1e-3
    recon.pow(2).mean().backward()  # straight-through at both levels: every part learns
    for part in (model.encoder, model.top.encoder, model.top.decoder, model.top.condition):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.eval()
    z = model.encoder(x)
    _, top_codes, _ = model.top.quantizer(model.top.encoder(z))
    z_q, codes, _ = model.quantize(z)
    assert z_q.shape == (2, 16, 8, 8) and codes.shape == (2, 8, 8) and top_codes.shape == (2, 4, 4)
    assert torch.allclose(model.decode_code(codes, top_codes), model.decode(z_q), atol=1e-5)
    with pytest.raises(ValueError, match="top codes"):
        model.decode_code(codes)
    # Dead codes are restarted in both codebooks.
    model.train()(x)
    for q in model.quantizers():
        q.cluster_size.fill_(0.0)
    assert model.expire_dead_codes() == 2 * 32
