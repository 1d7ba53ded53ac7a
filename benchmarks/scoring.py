"""Scoring ablation: one trained run, its map rebuilt from every subset of its terms and with
each of the golden template's choices taken away (in the first map), and with other map scales
fused; each with the run's `score.peers` and `score.fuse_scales` unless the variant names them.

The reconstruction and the head's probability are computed once; each variant is the
product's own `AnomalyScorer`, calibrated on the run's good training and validation images as
training does. So each row shows what a term, or a choice inside one, buys with the training
held fixed. `--half select` scores a seeded half of the test images (to choose on), `report`
the other half (to report), `all` every one. Each row also gives the false rejects and misses
at the threshold the variant's own validation scores calibrate (the run's `target_frr`), and the
misses at 5% false rejects on the test good images: where a line judges the map.

    python -m benchmarks.scoring RUN_DIR DATA_CAT [--half select|report|all]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from train.data import TestSample
    from train.run import Run
    from train.scoring import GoodImages

# name -> what the variant changes: terms, error kinds, golden-template settings, weights,
# peers, fused map scales (each left out = the run's own, the constants' or WEIGHTS).
L2_SSIM_GMS = ("l2", "ssim", "gms")
VARIANTS: dict[str, dict[str, Any]] = {
    "the run's terms": {},
    "the run's terms, no peers": {"peers": False},
    "the run's terms, with peers": {"peers": True},
    "the run's terms, one map": {"fuse": ()},
    "the run's terms, fused with 0.7": {"fuse": (0.7,)},
    "the run's terms, fused with 0.5": {"fuse": (0.5,)},
    "the run's terms, fused with 0.7 and 0.5": {"fuse": (0.7, 0.5)},
    "the run's terms, border 8": {"border": 8},
    "the run's terms, border 12": {"border": 12},
    "the run's terms, errors x 0.3": {"weights": {"errors": 0.3}},
    "the run's terms, errors x 1": {"weights": {"errors": 1.0}},
    "head": {"terms": ("head",)},
    "errors": {"terms": ("errors",)},
    "template": {"terms": ("template",)},
    "memory": {"terms": ("memory",)},
    "head + errors": {"terms": ("head", "errors")},
    "head + template": {"terms": ("head", "template")},
    "errors + template": {"terms": ("errors", "template")},
    "head + errors + template": {"terms": ("head", "errors", "template")},
    "errors as L2": {"terms": ("head", "errors"), "errors": ("l2",)},
    "errors as 1 - SSIM": {"terms": ("head", "errors"), "errors": ("ssim",)},
    "errors as L2 + 1 - SSIM + MS-GMS": {"terms": ("head", "errors"), "errors": L2_SSIM_GMS},
    "template without the blob filter": {"template": {"blob_sigma": 0.0}},
    "template without the gain plane": {"template": {"lighting": False}},
    "template unregistered": {"template": {"shift": 0}},
    "template x 0.5": {"template": {"aligned_weight": 0.625, "texture_weight": 0.3125}},
    "head + memory": {"terms": ("head", "memory")},
    "errors + memory": {"terms": ("errors", "memory")},
    "head + errors + memory": {"terms": ("head", "errors", "memory")},
    "head + errors(3) + memory": {"terms": ("head", "errors", "memory"), "errors": L2_SSIM_GMS},
    "head + errors(3) x1 + memory": {
        "terms": ("head", "errors", "memory"),
        "errors": L2_SSIM_GMS,
        "weights": {"errors": 1.0},
    },
    "head + errors x1 + memory": {"terms": ("head", "errors", "memory"), "weights": {"errors": 1.0}},
    "head + errors(3) x0.5 + memory": {
        "terms": ("head", "errors", "memory"),
        "errors": L2_SSIM_GMS,
        "weights": {"errors": 0.5},
    },
    "head + errors + template + memory": {"terms": ("head", "errors", "template", "memory")},
    "head + errors + template (aligned parts only) + memory": {
        "terms": ("head", "errors", "template", "memory"),
        "template": {"texture_weight": 0.0},
    },
    "head + errors + template (aligned parts only)": {
        "terms": ("head", "errors", "template"),
        "template": {"texture_weight": 0.0},
    },
    "head, border 0": {"terms": ("head",), "border": 0},
    "head + memory, border 0": {"terms": ("head", "memory"), "border": 0},
    "head + errors + memory, border 0": {"terms": ("head", "errors", "memory"), "border": 0},
    "head + errors(3) + memory, border 0": {"terms": ("head", "errors", "memory"), "errors": L2_SSIM_GMS, "border": 0},
    "head + errors + template + memory, border 0": {"terms": ("head", "errors", "template", "memory"), "border": 0},
}


def selected(names: list[str] | None) -> dict[str, dict[str, Any]]:
    """The variants named (all when None)."""
    if not names:
        return VARIANTS
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    return {n: VARIANTS[n] for n in names}


def in_half(path: Path, half: str) -> bool:
    """A fixed, seed-free half of the test images by the hash of their kind and name."""
    if half == "all":
        return True
    digest = hashlib.sha256(f"{path.parent.name}/{path.name}".encode()).digest()[0]
    return (digest % 2 == 0) == (half == "select")


@dataclasses.dataclass
class Passes:
    """What every variant shares, computed once: the test images with their labels and masks,
    the network's passes over them and over the validation images, and the good images that
    calibrate a scorer."""

    test: list[TestSample]  # in the half scored
    labels: np.ndarray  # (M,) 1 for a defect
    masks: np.ndarray  # (M, H, W) bool, all False where an image has no mask
    with_mask: np.ndarray  # (M,) bool
    x_test: torch.Tensor
    r_test: torch.Tensor
    latents_test: torch.Tensor
    x_val: torch.Tensor
    r_val: torch.Tensor
    latents_val: torch.Tensor
    good: GoodImages
    prob: torch.Tensor | None = None  # the head's probability and coarsest features (no head: None)
    z_test: torch.Tensor | None = None
    val_head: torch.Tensor | None = None
    z_val: torch.Tensor | None = None


@torch.no_grad()
def network_passes(run: Run, category: Path, half: str) -> Passes:
    """The run's reconstructions, latents and head outputs on `half` of the category's test
    images (the run's own training images left out) and on its validation images."""
    from edge.frames import batched
    from train.data import load_images, load_test_set, without_copies_of
    from train.model import uint8_nhwc_to_float
    from train.scoring import GoodImages

    cfg, model = run.model_cfg, run.model
    split = run.split()
    test, _ = without_copies_of(load_test_set(category, cfg.input_format), split["train"] + split["val"])
    test = [s for s in test if in_half(Path(s.path), half)]
    frames = np.stack([s.image for s in test])
    train_images = load_images(split["train"], cfg.input_format)
    x_val, r_val = model.reconstruct_frames(load_images(split["val"], cfg.input_format))
    x_test, r_test = model.reconstruct_frames(frames)

    def head_pass(x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability, coarsest features) of the comparison head, in batches."""
        outputs = [model.head_outputs(a, b) for a, b in zip(batched(x, 16), batched(recon, 16), strict=True)]
        return torch.cat([p for p, _ in outputs]), torch.cat([f for _, f in outputs])

    prob, z_test, val_head, z_val = None, None, None, None
    if model.head is not None:
        prob, z_test = head_pass(x_test, r_test)
        val_head, z_val = head_pass(x_val, r_val)
    good = GoodImages(
        train=lambda: [uint8_nhwc_to_float(torch.from_numpy(b)) for b in batched(train_images, 32)],
        val=x_val,
        val_recon=r_val,
        val_head=val_head,
        features=model.features if model.head is not None else None,
        outputs=model.outputs,
    )
    return Passes(
        test=test,
        labels=np.array([s.label for s in test]),
        masks=np.stack([s.mask if s.mask is not None else np.zeros(frames.shape[1:3], bool) for s in test]),
        with_mask=np.array([s.mask is not None for s in test]),
        x_test=x_test,
        r_test=r_test,
        latents_test=torch.cat([model.latents(x) for x in batched(x_test, 16)]),
        x_val=x_val,
        r_val=r_val,
        latents_val=torch.cat([model.latents(x) for x in batched(x_val, 16)]),
        good=good,
        prob=prob,
        z_test=z_test,
        val_head=val_head,
        z_val=z_val,
    )


@torch.no_grad()
def variant_row(run: Run, passes: Passes, variant: dict[str, Any]) -> dict[str, Any] | None:
    """One variant's scorer, built and calibrated as training does, on the shared passes -> its
    figures; None for a variant that needs the head of a run without one."""
    from edge.threshold import calibrate_threshold
    from train.evaluate import miss_rate_at_frr
    from train.metrics import aupro, image_auroc, pixel_auroc
    from train.scoring import AnomalyScorer, initial_plan, template_settings

    cfg = run.model_cfg
    terms = variant.get("terms", cfg.score.terms)
    if ("head" in terms or "memory" in terms) and passes.prob is None:
        return None
    border = variant.get("border", cfg.score.border)
    errors, peers = variant.get("errors", cfg.score.errors), variant.get("peers", cfg.score.peers)
    fuse = variant.get("fuse", cfg.score.fuse_scales)
    plan = initial_plan(terms, errors, border, cfg.image_size, peers, cfg.score.scale, fuse)
    template = dataclasses.replace(template_settings(cfg.image_size, cfg.score.scale), **variant.get("template", {}))
    scorer = AnomalyScorer(plan, cfg.channels, cfg.image_size, template)
    for each_map in scorer.maps():
        each_map.weights.update(variant.get("weights", {}))
    scorer.calibrate(passes.good)
    maps, scores = scorer(passes.x_test, passes.r_test, passes.prob, passes.z_test, passes.latents_test)
    amap, score = maps[:, 0].numpy(), scores.numpy()
    val_score = scorer(passes.x_val, passes.r_val, passes.val_head, passes.z_val, passes.latents_val)[1].numpy()
    threshold = calibrate_threshold(val_score, run.train_cfg.target_frr, {"by": "benchmarks.scoring"})["value"]
    masks, m = passes.masks[passes.with_mask], amap[passes.with_mask]
    return {
        "image_auroc": image_auroc(passes.labels, score),
        "pixel_auroc": pixel_auroc(masks, m) if passes.with_mask.any() else None,
        "aupro": aupro(masks, m, fpr_limit=0.3) if passes.with_mask.any() else None,
        "false_reject_rate": _share(score[passes.labels == 0] >= threshold),
        "miss_rate": _share(score[passes.labels == 1] < threshold),
        "miss_rate_at_5pct_frr": miss_rate_at_frr(passes.labels, score, 0.05),
        "terms": scorer.describe()["terms"],
    }


def scoring_ablation(
    run_dir: Path, category: Path, half: str = "all", names: list[str] | None = None
) -> dict[str, Any]:
    """{variant: {image_auroc, pixel_auroc, aupro, false_reject_rate, miss_rate,
    miss_rate_at_5pct_frr, terms}} for one trained run."""
    from train.run import load_run

    run = load_run(run_dir)
    passes = network_passes(run, category, half)
    rows: dict[str, Any] = {}
    for name, variant in selected(names).items():
        started = time.monotonic()
        row = variant_row(run, passes, variant)
        if row is None:
            continue
        rows[name] = row
        # A line a variant: on a slow CPU the ablation of one category takes tens of minutes.
        auroc = row["image_auroc"]
        print(f"[scoring] {category.name} / {name}: image AUROC {'-' if auroc is None else f'{auroc:.3f}'} "
              f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    return {"run": str(run_dir), "half": half, "n_test": len(passes.test), "variants": rows}


def _share(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if flags.size else None


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    from train.metrics import percent

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("category", type=Path)
    ap.add_argument("--half", choices=("select", "report", "all"), default="all")
    ap.add_argument("--variant", action="append", help="only this variant (repeatable)")
    args = ap.parse_args(argv)
    result = scoring_ablation(args.run, args.category, args.half, args.variant)
    for name, r in result["variants"].items():
        figures = (
            f"image {_fmt(r['image_auroc'])}  pixel {_fmt(r['pixel_auroc'])}  AUPRO {_fmt(r['aupro'])}  "
            f"at the threshold: false rejects {percent(r['false_reject_rate'])}, misses {percent(r['miss_rate'])}; "
            f"misses at 5% FRR {percent(r['miss_rate_at_5pct_frr'])}"
        )
        print(f"{name:46s} {figures}", flush=True)


if __name__ == "__main__":
    main()
