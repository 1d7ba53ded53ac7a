"""Scoring ablation: one trained run, its map rebuilt from every subset of its terms and with
each of the golden template's choices taken away.

The reconstruction and the head's probability are computed once; each variant is the
product's own `AnomalyScorer`, calibrated on the run's good training and validation images as
training does. So each row shows what a term, or a choice inside one, buys with the training
held fixed. `--half select` scores a seeded half of the test images (to choose on), `report`
the other half (to report), `all` every one.

    python -m benchmarks.scoring RUN_DIR DATA_CAT [--half select|report|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> (terms, error kinds, golden-template settings overrides); None = the run's own.
VARIANTS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None, dict[str, Any]]] = {
    "shipped (the run's terms)": (None, None, {}),
    "head": (("head",), None, {}),
    "errors": (("errors",), None, {}),
    "template": (("template",), None, {}),
    "head + errors": (("head", "errors"), None, {}),
    "head + template": (("head", "template"), None, {}),
    "errors + template": (("errors", "template"), None, {}),
    "errors as L2": (None, ("l2",), {}),
    "errors as 1 - SSIM": (None, ("ssim",), {}),
    "errors as L2 + 1 - SSIM + MS-GMS": (None, ("l2", "ssim", "gms"), {}),
    "template without the blob filter": (None, None, {"blob_sigma": 0.0}),
    "template without the gain plane": (None, None, {"lighting": False}),
    "template unregistered": (None, None, {"shift": 0}),
    "template in the texture's band on parts": (None, None, {"aligned_band": "texture"}),
    "template as on a texture (x 0.625, in place)": (None, None, {"min_alignment": 1.01}),
    "template x 2": (None, None, {"aligned_weight": 2.5, "texture_weight": 1.25}),
    "template x 0.5": (None, None, {"aligned_weight": 0.625, "texture_weight": 0.3125}),
}


def in_half(path: Path, half: str) -> bool:
    """A fixed, seed-free half of the test images by the hash of their kind and name."""
    if half == "all":
        return True
    digest = hashlib.sha256(f"{path.parent.name}/{path.name}".encode()).digest()[0]
    return (digest % 2 == 0) == (half == "select")


@torch.no_grad()
def scoring_ablation(run_dir: Path, category: Path, half: str = "all") -> dict[str, Any]:
    """{variant: {image_auroc, pixel_auroc, aupro, terms}} for one trained run."""
    from edge.frames import batched
    from train.data import load_images, load_test_set
    from train.metrics import aupro, image_auroc, pixel_auroc
    from train.model import uint8_nhwc_to_float
    from train.run import load_run
    from train.scoring import AnomalyScorer, GoodImages, initial_plan
    from train.scoring.template import TemplateSettings

    run = load_run(run_dir)
    cfg, model = run.model_cfg, run.model
    size = cfg.image_size
    test = [s for s in load_test_set(category, cfg.image_size, cfg.channels) if in_half(Path(s.path), half)]
    frames = np.stack([s.image for s in test])
    labels = np.array([s.label for s in test])
    with_mask = np.array([s.mask is not None for s in test])
    masks = np.stack([s.mask if s.mask is not None else np.zeros(frames.shape[1:3], bool) for s in test])
    train_images = load_images([Path(p) for p in run.split()["train"]], cfg.image_size, cfg.channels)
    val_images = load_images([Path(p) for p in run.split()["val"]], cfg.image_size, cfg.channels)
    x_val, r_val = model.reconstruct_frames(val_images)
    good = GoodImages(
        train=lambda: [uint8_nhwc_to_float(torch.from_numpy(b)) for b in batched(train_images, 32)],
        val=x_val,
        val_recon=r_val,
    )
    x_test, r_test = model.reconstruct_frames(frames)
    prob = None
    if model.head is not None:
        pairs = zip(batched(x_test, 16), batched(r_test, 16), strict=True)
        prob = torch.cat([model.head_probability(x, r) for x, r in pairs])
    base = TemplateSettings.for_size((size[0] * size[1]) ** 0.5)
    rows: dict[str, Any] = {}
    for name, (terms, errors, template) in VARIANTS.items():
        terms = terms or cfg.score.terms
        if "head" in terms and prob is None:
            continue
        if template.get("aligned_band") == "texture":
            template = template | {"aligned_band": base.texture_band}
        plan = initial_plan(terms, errors or cfg.score.errors, cfg.score.border, size)
        scorer = AnomalyScorer(plan, cfg.channels, size, dataclasses.replace(base, **template))
        scorer.calibrate(good)
        maps, scores = scorer(x_test, r_test, prob)
        amap, score = maps[:, 0].numpy(), scores.numpy()
        rows[name] = {
            "image_auroc": image_auroc(labels, score),
            "pixel_auroc": pixel_auroc(masks[with_mask], amap[with_mask]) if with_mask.any() else None,
            "aupro": aupro(masks[with_mask], amap[with_mask], fpr_limit=0.3) if with_mask.any() else None,
            "terms": scorer.describe()["terms"],
        }
    return {"run": str(run_dir), "half": half, "n_test": len(test), "variants": rows}


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("category", type=Path)
    ap.add_argument("--half", choices=("select", "report", "all"), default="all")
    args = ap.parse_args()
    result = scoring_ablation(args.run, args.category, args.half)
    for name, r in result["variants"].items():
        print(f"{name:46s} image {_fmt(r['image_auroc'])}  pixel {_fmt(r['pixel_auroc'])}  AUPRO {_fmt(r['aupro'])}")
