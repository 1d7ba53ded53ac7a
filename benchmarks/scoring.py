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

from train.config import ScoreConfig

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

# The shipped map (ScoreConfig's defaults, which configs/model.yaml equals, a test says: the
# head's probability smoothed by sigma 1 + 0.1 x balanced MS-GMS, the golden template "auto":
# an aligned part x 1.25, in its own band (0.5, 16), registered within 2 px with each image's gain
# plane divided out, blob filter; a texture x 0.625, in place, band (2, 8)), with the template
# forced off, unregistered, or at other weights; and session 8's map (head smoothed like the
# error maps, x 0.15, template x 1.5 unregistered). Needs a run with the head.
_SHIPPED: dict[str, Any] = {field.name: getattr(ScoreConfig(), field.name) for field in dataclasses.fields(ScoreConfig)}
REFERENCE_VARIANTS: dict[str, dict[str, Any]] = {
    "shipped: head (sigma 1) + 0.1 MS-GMS + golden template (auto, registered, gain plane, blob filter)": _SHIPPED,
    "shipped, no golden template": _SHIPPED | {"reference": "off"},
    "shipped, golden template without the blob filter": _SHIPPED | {"reference_blob_sigma": 0.0},
    "shipped, golden template without the gain plane": _SHIPPED | {"reference_lighting": False},
    "shipped, golden template in the texture's band (2, 8)": _SHIPPED | {"reference_aligned_sigmas": (2.0, 8.0)},
    "session 10: golden template in the band (2, 8), no gain plane": _SHIPPED
    | {"reference_aligned_sigmas": (2.0, 8.0), "reference_lighting": False},
    "shipped, blob filter sigma 3": _SHIPPED | {"reference_blob_sigma": 3.0},
    "shipped, blob filter sigma 5": _SHIPPED | {"reference_blob_sigma": 5.0},
    "shipped, golden template unregistered": _SHIPPED | {"reference_shift": 0},
    "shipped, golden template x 0.25": _SHIPPED | {"reference": "on", "reference_weight": 0.25},
    "shipped, golden template x 0.5": _SHIPPED | {"reference": "on", "reference_weight": 0.5},
    "shipped, golden template x 1.25": _SHIPPED | {"reference": "on", "reference_weight": 1.25},
    "shipped, golden template x 2": _SHIPPED | {"reference": "on", "reference_weight": 2.0},
    "shipped, golden template x 4": _SHIPPED | {"reference": "on", "reference_weight": 4.0},
    "shipped, texture's template x 0.5 (sessions 9-12)": _SHIPPED | {"reference_texture_weight": 0.5},
    "shipped, texture's template x 0.75": _SHIPPED | {"reference_texture_weight": 0.75},
    "shipped, head smoothed by sigma 2": _SHIPPED | {"head_smoothing_sigma": 2.0},
    "session 8: head (sigma 2) + 0.15 MS-GMS + golden template x 1.5 unregistered": _SHIPPED
    | {
        "head_smoothing_sigma": 2.0,
        "head_recon_weight": 0.15,
        "reference_weight": 1.5,
        "reference_texture_weight": 0.25,
        "reference_shift": 0,
    },
}

# Latent restoration (model.restore = "position"), calibrated post hoc from the run's own
# training images as training would: name -> (restore_radius, restore_min_count).
RESTORATION_VARIANTS: dict[str, tuple[int, int]] = {
    "latent restoration, radius 0": (0, 1),
    "latent restoration, radius 1": (1, 1),
}
# The scorings each restoration variant is read with.
RESTORATION_SCORINGS = ("L2 + (1 - SSIM), balanced, border 4", "MS-GMS, border 4")


def with_restoration(run, radius: int, min_count: int, train_images: np.ndarray):
    """A copy of the run's model with model.restore = position, calibrated on train_images."""
    from train.pipeline import InspectionModel

    cfg = dataclasses.replace(run.model_cfg, restore="position", restore_radius=radius, restore_min_count=min_count)
    model = InspectionModel(cfg)
    missing, unexpected = model.load_state_dict(run.model.state_dict(), strict=False)
    if unexpected or set(missing) - {"vqvae.quantizer.code_penalty"}:
        raise ValueError(f"state mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    model.calibrate_restoration(train_images)
    return model


@torch.no_grad()
def scoring_ablation(run_dir: Path, category: Path) -> dict[str, Any]:
    """{variant: {image_auroc, pixel_auroc, aupro, score config}} for one trained run."""
    from train.data import load_images, load_test_set
    from train.metrics import aupro, image_auroc, pixel_auroc
    from train.model import uint8_nhwc_to_float
    from train.run import load_run
    from train.scoring import AnomalyScorer

    run = load_run(run_dir)
    cfg = run.model_cfg
    test = load_test_set(category, cfg.image_size, cfg.channels)
    val = load_images([Path(p) for p in run.split()["val"]], cfg.image_size, cfg.channels)
    test_frames = np.stack([s.image for s in test])
    labels = np.array([s.label for s in test])
    with_mask = np.array([s.mask is not None for s in test])
    masks = np.stack([s.mask if s.mask is not None else np.zeros(test_frames.shape[1:3], bool) for s in test])

    train_images = load_images([Path(p) for p in run.split()["train"]], cfg.image_size, cfg.channels)
    train_x01 = uint8_nhwc_to_float(torch.from_numpy(train_images))  # the golden template's fit, once

    def score_rows(model, variants: dict[str, dict[str, Any]], prefix: str = "") -> dict[str, Any]:
        x_test, r_test = model.reconstruct_frames(test_frames)
        x_val, r_val = model.reconstruct_frames(val)
        p_test = None
        rows: dict[str, Any] = {}
        for name, overrides in variants.items():
            score_cfg = dataclasses.replace(cfg.score, **({"source": "recon", "reference": "off"} | overrides))
            scorer = AnomalyScorer(score_cfg, cfg.image_size, cfg.channels)
            scorer.calibrate(x_val, r_val)  # as training does
            if score_cfg.reference != "off":
                scorer.calibrate_reference([train_x01], [x_val])
            if score_cfg.source != "recon" and p_test is None:
                p_test = torch.cat(
                    [model.head_probability(x_test[i : i + 16], r_test[i : i + 16]) for i in range(0, len(x_test), 16)]
                )
            maps, scores = [], []
            for i in range(0, len(x_test), 16):
                prob = p_test[i : i + 16] if score_cfg.source != "recon" else None
                m, s = scorer(x_test[i : i + 16], r_test[i : i + 16], prob)
                maps.append(m[:, 0].numpy())
                scores.append(s.numpy())
            amap, score = np.concatenate(maps), np.concatenate(scores)
            rows[prefix + name] = {
                "image_auroc": image_auroc(labels, score),
                "pixel_auroc": pixel_auroc(masks[with_mask], amap[with_mask]),
                "aupro": aupro(masks[with_mask], amap[with_mask], fpr_limit=0.3),
                "score": dataclasses.asdict(score_cfg),
            }
        return rows

    rows = score_rows(run.model, SCORING_VARIANTS)
    if run.model.head is not None:
        rows.update(score_rows(run.model, REFERENCE_VARIANTS))
    for name, (radius, min_count) in RESTORATION_VARIANTS.items():
        model = with_restoration(run, radius, min_count, train_images)
        scorings = {k: SCORING_VARIANTS[k] for k in RESTORATION_SCORINGS}
        rows.update(score_rows(model, scorings, prefix=f"{name}; "))
    return {"run": str(run_dir), "variants": rows}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("category", type=Path)
    args = ap.parse_args()
    result = scoring_ablation(args.run, args.category)
    for name, r in result["variants"].items():
        print(f"{name:66s} image {r['image_auroc']:.3f}  pixel {r['pixel_auroc']:.3f}  AUPRO {r['aupro']:.3f}")
