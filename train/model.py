"""The VQ-VAE, top to bottom: encoder -> vector quantiser -> decoder.

Shapes use N (batch), C (image channels), H, W (image size), D (code dim),
h, w (latent grid = H / downsample), K (codebook size).

With model.levels = 2 (VQ-VAE-2, Razavi et al.) a top level sits between the encoder and
the quantiser: the encoder's features are encoded further to a (h/2, w/2) grid and
quantised with their own codebook; the top codes' decoded guess conditions the bottom
quantiser, and the decoder reads both levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from train.config import ModelConfig


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))): the residual block of VQ-VAE (van den Oord et al.)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """(N, C, H, W) -> (N, D, h, w): log2(downsample) strided 4x4 convs, then residual blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_down = int(math.log2(cfg.downsample))
        layers: list[nn.Module] = []
        in_ch = cfg.channels
        for i in range(n_down):
            out_ch = cfg.width if i < n_down - 1 else 2 * cfg.width
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.ReLU()]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 2 * cfg.width, 3, padding=1))
        layers += [ResBlock(2 * cfg.width, cfg.width) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(2 * cfg.width, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(N, D * levels, h, w) -> (N, C, H, W): the encoder mirrored, with 4x4 transposed convs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_up = int(math.log2(cfg.downsample))
        # The decoder reads the bottom codes and, with two levels, the top level's guess beside them.
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim * cfg.levels, 2 * cfg.width, 3, padding=1)]
        layers += [ResBlock(2 * cfg.width, cfg.width) for _ in range(cfg.res_blocks)]
        layers.append(nn.ReLU())
        in_ch = 2 * cfg.width
        for i in range(n_up):
            last = i == n_up - 1
            out_ch = cfg.channels if last else cfg.width
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            in_ch = out_ch
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


# Codebook learning, tuned on `vqad synth` and kept from the VQ-VAE literature: commitment
# weight 0.25 (van den Oord et al.), EMA decay 0.99 and dead-code restart below an EMA cluster
# size of 2 (SoundStream), k-means on the first batch with 10 Lloyd iterations. The EMA codebook
# measured above the codebook-loss one, and plain L2 codes above L2-normalised (cosine) ones
# (docs/decisions.md).
BETA = 0.25
EMA_DECAY = 0.99
DEAD_CODE_THRESHOLD = 2.0
KMEANS_ITERS = 10


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with straight-through gradients and an EMA codebook.

    Codebook state lives in buffers: `embed` (the codes), `initted` (k-means done),
    `cluster_size` and `embed_avg` (EMA statistics). The distance and argmin always run in
    FP32, even in an FP16 graph: a flipped code changes the reconstruction.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.K, self.D = cfg.codebook_size, cfg.code_dim
        embed = torch.randn(self.K, self.D) / math.sqrt(self.D)
        self.register_buffer("embed", embed)
        self.last_batch: torch.Tensor | None = None  # the latest training batch's vectors (M, D)
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("cluster_size", torch.ones(self.K))
        self.register_buffer("embed_avg", embed.clone())

    # -- the six steps -------------------------------------------------------------------
    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        """Step 2: squared distances ||z||^2 - 2 z.e + ||e||^2 by one matmul.

        flat: (M, D) -> dist (M, K). Computed in FP32 whatever the input dtype.
        """
        flat = flat.float()
        codebook = self.embed.float()
        return (
            flat.pow(2).sum(1, keepdim=True)  # (M, 1)
            - 2 * flat @ codebook.t()  # (M, K)
            + codebook.pow(2).sum(1)[None, :]  # (1, K)
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """z: (N, D, h, w) -> (z_q (N, D, h, w), codes (N, h, w), stats).

        Under autocast (mixed-precision training) the quantiser still runs in FP32: a bf16
        matmul in the distances would flip nearest codes, and the EMA sums would lose mass.
        """
        if torch.is_autocast_enabled(z.device.type):
            with torch.autocast(z.device.type, enabled=False):
                return self._quantize(z.float())
        return self._quantize(z)

    @staticmethod
    def _flatten(z: torch.Tensor) -> torch.Tensor:
        """Step 1: (N, D, h, w) -> (N, h, w, D) -> (N*h*w, D)."""
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        N, D, h, w = z.shape
        # 1. flatten: (N, D, h, w) -> (N*h*w, D)
        flat = self._flatten(z)
        if self.training and not bool(self.initted):
            self._kmeans_init(flat.detach().float())
        # 2-3. distances and argmin, in FP32
        codes = self.distances(flat).argmin(dim=1)  # (N*h*w,)
        # 4. look up the codes: (N*h*w,) -> (N*h*w, D)
        quant = F.embedding(codes, self.embed).to(flat.dtype)
        stats: dict[str, torch.Tensor] = {}
        if self.training:
            stats = self._learn(flat, quant, codes)
            self.last_batch = flat.detach()  # (M, D), the pool dead codes restart from
        # 5. reshape back: (N*h*w, D) -> (N, h, w, D) -> (N, D, h, w)
        quant = quant.view(N, h, w, D).permute(0, 3, 1, 2)
        if not self.training:
            return quant, codes.view(N, h, w), stats
        # 6. straight-through: forward uses the code, backward copies the gradient to z
        flat_nchw = flat.view(N, h, w, D).permute(0, 3, 1, 2)
        z_q = flat_nchw + (quant - flat_nchw).detach()
        return z_q, codes.view(N, h, w), stats

    @torch.no_grad()
    def margins(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, D, h, w) -> (N,): per image, the smallest gap between the nearest and the
        second-nearest code over its cells, relative to the size of the distances. Near 0
        (about 1e-6) the argmin is a tie at FP32 precision: another runtime, summing in another
        order, may pick the other code."""
        N, D, h, w = z.shape
        flat = self._flatten(z.float())  # (N*h*w, D)
        nearest_two = self.distances(flat).topk(2, dim=1, largest=False).values  # (N*h*w, 2)
        scale = flat.pow(2).sum(1) + self.embed.float().pow(2).sum(1).max()  # (N*h*w,)
        gap = (nearest_two[:, 1] - nearest_two[:, 0]) / scale
        return gap.view(N, h * w).amin(dim=1)

    # -- codebook learning ---------------------------------------------------------------
    def _learn(self, flat: torch.Tensor, quant: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        onehot = F.one_hot(codes, self.K).type(flat.dtype)  # (M, K)
        counts = onehot.sum(0)  # (K,)
        commitment = F.mse_loss(flat, quant.detach())
        sums = onehot.t() @ flat.detach()  # (K, D)
        self.ema_update(_all_reduce_sum(counts), _all_reduce_sum(sums))
        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return {
            "vq_loss": BETA * commitment,
            "perplexity": perplexity.detach(),
            "used_codes": (counts > 0).sum().detach(),
        }

    @torch.no_grad()
    def ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """EMA codebook step: N_k <- d N_k + (1-d) n_k; m_k <- d m_k + (1-d) s_k;
        e_k = m_k / N~_k with Laplace smoothing N~_k = (N_k + eps) / (n + K eps) * n."""
        self.cluster_size.mul_(EMA_DECAY).add_(counts, alpha=1 - EMA_DECAY)
        self.embed_avg.mul_(EMA_DECAY).add_(sums, alpha=1 - EMA_DECAY)
        n = self.cluster_size.sum()
        eps = 1e-5
        smoothed = (self.cluster_size + eps) / (n + self.K * eps) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        """k-means on the first batch's encoder outputs (SoundStream); rank 0's result is shared."""
        self.embed.copy_(kmeans(flat, self.K, KMEANS_ITERS))
        _broadcast(self.embed)
        self.embed_avg.copy_(self.embed)
        self.cluster_size.fill_(1.0)
        self.initted.fill_(True)

    @torch.no_grad()
    def expire_dead_codes(self, batch_vectors: torch.Tensor) -> int:
        """Replace codes whose EMA cluster size fell below DEAD_CODE_THRESHOLD with random encoder
        outputs of the current batch. batch_vectors: (M, D). Returns how many were restarted."""
        dead = self.cluster_size < DEAD_CODE_THRESHOLD
        n_dead = int(dead.sum())
        if n_dead == 0 or batch_vectors.shape[0] == 0:
            return 0
        pick = torch.randint(0, batch_vectors.shape[0], (n_dead,), device=batch_vectors.device)
        fresh = batch_vectors[pick].float()
        self.embed[dead] = fresh
        self.embed_avg[dead] = fresh
        self.cluster_size[dead] = DEAD_CODE_THRESHOLD
        _broadcast(self.embed)
        _broadcast(self.embed_avg)
        _broadcast(self.cluster_size)
        return n_dead


def kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Plain Lloyd's k-means on (M, D) vectors; empty clusters keep their seed. -> (k, D)."""
    M = x.shape[0]
    idx = torch.randperm(M, device=x.device)[:k] if M >= k else torch.randint(0, M, (k,), device=x.device)
    centers = x[idx].clone()
    for _ in range(iters):
        dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ centers.t() + centers.pow(2).sum(1)[None, :]
        assign = dist.argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return centers


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _dist_ready():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> None:
    if _dist_ready():
        torch.distributed.broadcast(t, src=0)


class TopLevel(nn.Module):
    """VQ-VAE-2's top level over the bottom grid (model.levels = 2).

    encoder: bottom features (N, D, h, w) -> (N, D, h/2, w/2), quantised by its own codebook;
    decoder: top codes -> a guess at the bottom features (N, D, h, w);
    condition: [bottom features, guess] (N, 2D, h, w) -> what the bottom quantiser sees (N, D, h, w).
    It runs in FP32 in every graph, as the encoder does: it decides the bottom codes.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, W = cfg.code_dim, cfg.width
        self.encoder = nn.Sequential(  # (N, D, h, w) -> (N, D, h/2, w/2)
            nn.Conv2d(D, W, 4, stride=2, padding=1), ResBlock(W, W // 2), nn.ReLU(), nn.Conv2d(W, D, 1)
        )
        self.quantizer = VectorQuantizer(cfg)
        self.decoder = nn.Sequential(  # (N, D, h/2, w/2) -> (N, D, h, w)
            nn.Conv2d(D, W, 3, padding=1),
            ResBlock(W, W // 2),
            nn.ReLU(),
            nn.ConvTranspose2d(W, D, 4, stride=2, padding=1),
        )
        self.condition = nn.Conv2d(2 * D, D, 1)


class VQVAE(nn.Module):
    """encode -> quantise -> decode, with the encode / decode / decode_code split of VQ-VAE-2."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.top = TopLevel(cfg) if cfg.levels == 2 else None
        self.quantizer = VectorQuantizer(cfg)  # the bottom (or only) level; restoration acts here
        self.decoder = Decoder(cfg)

    def quantizers(self) -> list[VectorQuantizer]:
        """Every codebook, bottom first."""
        return [self.quantizer] + ([self.top.quantizer] if self.top is not None else [])

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Encoder features (N, D, h, w) -> (decoder input (N, D * levels, h, w), bottom codes (N, h, w), stats).

        Two levels: top codes first, then the bottom codes conditioned on the top's guess;
        vq_loss is the sum over levels, perplexity the bottom's (top_perplexity beside it).
        """
        if self.top is None:
            return self.quantizer(z)
        z_top, _, top_stats = self.top.quantizer(self.top.encoder(z))  # (N, D, h/2, w/2)
        guess = self.top.decoder(z_top)  # (N, D, h, w)
        z_bottom, codes, stats = self.quantizer(self.top.condition(torch.cat([z, guess], dim=1)))
        if top_stats:
            stats = dict(stats)
            stats["vq_loss"] = stats["vq_loss"] + top_stats["vq_loss"]
            stats["top_perplexity"] = top_stats["perplexity"]
        return torch.cat([z_bottom, guess], dim=1), codes, stats  # (N, 2D, h, w)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """x: (N, C, H, W) normalised -> (decoder input (N, D * levels, h, w), bottom codes (N, h, w), stats)."""
        return self.quantize(self.encoder(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(N, D * levels, h, w) -> (N, C, H, W) normalised reconstruction."""
        return self.decoder(z_q)

    def decode_code(self, codes: torch.Tensor, top_codes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, h, w) int codes [and, with two levels, top codes (N, h/2, w/2)] -> (N, C, H, W) reconstruction."""
        z_q = F.embedding(codes, self.quantizer.embed).permute(0, 3, 1, 2)  # (N, h, w, D) -> (N, D, h, w)
        if self.top is not None:
            if top_codes is None:
                raise ValueError("a two-level VQ-VAE decodes from bottom and top codes")
            z_top = F.embedding(top_codes, self.top.quantizer.embed).permute(0, 3, 1, 2)  # (N, D, h/2, w/2)
            z_q = torch.cat([z_q, self.top.decoder(z_top)], dim=1)  # (N, 2D, h, w)
        return self.decode(z_q)

    @torch.no_grad()
    def decode_ranked(self, x: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) normalised; ranks: (N, h, w) int at the latent grid -> (N, C, H, W)
        normalised, decoded with each cell's code taken as its ranks-th nearest by distance (0,
        its own). Code-space anomalies (train/anomalies.py, repair_ranks): no gradient, and the
        codebook's EMA does not learn from them. One level only: a two-level model's bottom codes
        are conditioned on the top's, which a swap would leave inconsistent."""
        if self.top is not None:
            raise ValueError("code-space swaps need a one-level VQ-VAE (model.levels 1)")
        z = self.encoder(x).float()  # (N, D, h, w)
        n, d, h, w = z.shape
        if tuple(ranks.shape) != (n, h, w):
            raise ValueError(f"ranks of shape {tuple(ranks.shape)} for a latent grid of {(n, h, w)}")
        order = self.quantizer.distances(z.permute(0, 2, 3, 1).reshape(-1, d)).argsort(dim=1)  # (N*h*w, K)
        codes = order.gather(1, ranks.reshape(-1, 1).to(order.device))  # (N*h*w, 1)
        return self.decode_code(codes.view(n, h, w))

    @torch.no_grad()
    def expire_dead_codes(self) -> int:
        """Restart dead codes in every codebook from its last training batch; returns how many."""
        return sum(q.expire_dead_codes(q.last_batch) for q in self.quantizers() if q.last_batch is not None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_q, _, stats = self.encode(x)
        return self.decode(z_q), stats


def normalize(x01: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) -> the model's input space."""
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    return (x01 - m) / s


def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The model's output space -> [0, 1] images (N, C, H, W)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x * s + m


def uint8_nhwc_to_float(frames: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float in [0, 1]. The first op of the exported graph."""
    return frames.permute(0, 3, 1, 2).float() / 255.0
