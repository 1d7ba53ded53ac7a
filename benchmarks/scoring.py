"""Scoring ablation: one trained VQ-VAE, scored every way the scorer supports.

The reconstruction is computed once; each variant is the product's own `AnomalyScorer`
with a different `model.score` config (per-pixel statistics calibrated on the run's good
validation images, as training does). So each row shows what an error map, a
normalisation or a region of interest buys, with the training held fixed.

    python -m benchmarks.scoring RUN_DIR DATA_CAT
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> model.score overrides (on top of the run's own score config)
_L2_SSIM = {"errors": ("l2", "ssim"), "weights": (1.0, 1.0)}
_PLAIN = {"balance": False, "border": 0, "normalize": "none", "reduce": "max"}
SCORING_VARIANTS: dict[str, dict[str, Any]] = {
    "L2": _PLAIN | {"errors": ("l2",), "weights": (1.0,)},
    "L2, per pixel": _PLAIN | {"errors": ("l2",), "weights": (1.0,), "normalize": "pixel"},
    "1 - SSIM": _PLAIN | {"errors": ("ssim",), "weights": (1.0,)},
    "MS-GMS": _PLAIN | {"errors": ("gms",), "weights": (1.0,)},
    "L2 + (1 - SSIM)": _PLAIN | _L2_SSIM,
    "L2 + MS-GMS": _PLAIN | {"errors": ("l2", "gms"), "weights": (1.0, 1.0)},
    "L2 + (1 - SSIM), balanced": _PLAIN | _L2_SSIM | {"balance": True},
    "L2 + MS-GMS, balanced": _PLAIN | {"errors": ("l2", "gms"), "weights": (1.0, 1.0), "balance": True},
    "L2 + (1 - SSIM), balanced, border 4": _PLAIN | _L2_SSIM | {"balance": True, "border": 4},
    "MS-GMS, border 4": _PLAIN | {"errors": ("gms",), "weights": (1.0,), "border": 4},
    "L2 + MS-GMS, balanced, border 4": _PLAIN
    | {"errors": ("l2", "gms"), "weights": (1.0, 1.0), "balance": True, "border": 4},
    "L2 + (1 - SSIM), balanced, border 8": _PLAIN | _L2_SSIM | {"balance": True, "border": 8},
    "L2 + (1 - SSIM), balanced, border 4, per pixel": _PLAIN
    | _L2_SSIM
    | {"balance": True, "border": 4, "normalize": "pixel"},
    "L2 + (1 - SSIM), balanced, border 4, pooled": _PLAIN
    | _L2_SSIM
    | {"balance": True, "border": 4, "normalize": "pooled"},
    "L2 + (1 - SSIM), balanced, border 4, top-16 mean": _PLAIN
    | _L2_SSIM
    | {"balance": True, "border": 4, "reduce": "topk_mean"},
}


@torch.no_grad()
def scoring_ablation(run_dir: Path, category: Path) -> dict[str, Any]:
    """{variant: {image_auroc, pixel_auroc, aupro, score config}} for one trained run."""
    from train.data import load_images, load_test_set
    from train.metrics import aupro, image_auroc, pixel_auroc
    from train.run import load_run
    from train.scoring import AnomalyScorer

    run = load_run(run_dir)
    cfg = run.model_cfg
    test = load_test_set(category, cfg.image_size, cfg.channels)
    val = load_images([Path(p) for p in run.split()["val"]], cfg.image_size, cfg.channels)
    x_test, r_test = run.model.reconstruct_frames(np.stack([s.image for s in test]))
    x_val, r_val = run.model.reconstruct_frames(val)
    labels = np.array([s.label for s in test])
    with_mask = np.array([s.mask is not None for s in test])
    masks = np.stack([s.mask if s.mask is not None else np.zeros(x_test.shape[-2:], bool) for s in test])
    rows: dict[str, Any] = {}
    for name, overrides in SCORING_VARIANTS.items():
        score_cfg = dataclasses.replace(cfg.score, source="recon", **overrides)
        scorer = AnomalyScorer(score_cfg, cfg.image_size, cfg.channels)
        scorer.calibrate(x_val, r_val)  # as training does
        maps, scores = [], []
        for i in range(0, len(x_test), 16):
            m, s = scorer(x_test[i : i + 16], r_test[i : i + 16])
            maps.append(m[:, 0].numpy())
            scores.append(s.numpy())
        amap, score = np.concatenate(maps), np.concatenate(scores)
        rows[name] = {
            "image_auroc": image_auroc(labels, score),
            "pixel_auroc": pixel_auroc(masks[with_mask], amap[with_mask]),
            "aupro": aupro(masks[with_mask], amap[with_mask], fpr_limit=0.3),
            "score": dataclasses.asdict(score_cfg),
        }
    return {"run": str(run_dir), "variants": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("category", type=Path)
    args = ap.parse_args()
    result = scoring_ablation(args.run, args.category)
    for name, r in result["variants"].items():
        print(f"{name:50s} image {r['image_auroc']:.3f}  pixel {r['pixel_auroc']:.3f}  AUPRO {r['aupro']:.3f}")
