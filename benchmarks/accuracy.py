"""Accuracy: our model, the plain VQ-VAE and the per-pixel Gaussian baseline on the
same data, each VQ-VAE trained to the same budget: `train.steps` (configs/train.yaml, or
--steps), with `--minutes` as the guard that stops a slow machine short of it (each row says
how its training ended).

    python -m benchmarks.accuracy [--data DIR] [--steps N] [--minutes M] [--quick] [--ablation]

Variants are `--set` overrides on top of configs/*.yaml, so a row says exactly what it is.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timer, input_size, stats, vqad
from train.metrics import figure, percent

SEED = [  # the plain VQ-VAE: the same training, its L2 reconstruction error alone as the map
    "model.head_width=0",
    "model.score.terms=errors",
    "model.score.errors=l2",
    "model.score.border=0",
]
# Without the head the map is the balanced L2 + (1 - SSIM) error: the best head-less scoring
# over both categories in the scoring ablation (MS-GMS alone, the default's error term beside
# the head, is poor on textures without it).
RECON = ["model.head_width=0", "model.score.terms=errors,template", "model.score.errors=l2,ssim"]
VARIANTS: dict[str, list[str]] = {"ours (configs/)": [], "plain VQ-VAE (L2 error)": SEED}
ABLATION: dict[str, list[str]] = {
    "no head: reconstruction error and template": RECON,
    "head alone (score.terms: head)": ["model.score.terms=head"],
    "no golden template": ["model.score.terms=head,errors"],
    "FP32 training (no bf16 autocast)": ["train.precision=fp32"],
    "two levels (VQ-VAE-2 top codes)": ["model.levels=2"],
}


SPREAD_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "train_seconds",
    "steps",
    "false_reject_rate",
    "miss_rate",
    "miss_rate_at_1pct_frr",
    "miss_rate_at_5pct_frr",
)
SEED_SUFFIX = "__seed"


def run_slug(variant: str, repeat: int = 0) -> str:
    """The folder name of a variant's run (WORKDIR/runs/<category>/<slug>); repeats > 0 add a seed."""
    slug = "".join(ch if ch.isalnum() else "_" for ch in variant)[:40]
    return slug if repeat == 0 else f"{slug}{SEED_SUFFIX}{repeat}"


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from repeated trainings (seeds 0..n-1): the median of each figure, with
    min, max and n under "spread"; where the defects' maps peak, added up over the runs; the
    other fields (run dir, FLOPs) from the seed-0 run."""
    row = dict(rows[0])
    row["spread"] = {k: _spread([r.get(k) for r in rows]) for k in SPREAD_KEYS}  # None: not in an older report
    row.update({k: row["spread"][k]["median"] for k in SPREAD_KEYS})
    if "defect_peaks" in row:  # the baseline's row has none
        row["defect_peaks"] = summed_peaks([r.get("defect_peaks") for r in rows])
    if "target_frr_choices" in row:
        row["target_frr_choices"] = median_trade([r.get("target_frr_choices") for r in rows])
    return row


def median_trade(trades: list[list[dict[str, Any]] | None]) -> list[dict[str, Any]] | None:
    """The runs' `target_frr_choices` (vqad eval's trade: for each target, the test images' false
    rejects and misses at the threshold the validation images set) as one list: per target, the
    median of each rate over the runs that gave it, with `runs`. Each seed's threshold is its own,
    so no threshold is given. None where no run gave one (a report written before it was)."""
    known = [t for t in trades if t]
    if not known:
        return None
    by_target: dict[float, list[dict[str, Any]]] = {}
    for trade in known:
        for choice in trade:
            by_target.setdefault(choice["target_frr"], []).append(choice)
    return [
        {"target_frr": target, "runs": len(choices)}
        | {k: _spread([c[k] for c in choices])["median"] for k in ("false_reject_rate", "miss_rate")}
        for target, choices in sorted(by_target.items())
    ]


def summed_peaks(counted: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The runs' `defect_peaks` (vqad eval's counts of where each defect's map peaks) added up,
    with `runs`, how many counted: counts of defects, so a sum over the seeds, not a median.
    None where no run counted them (a report written before they were)."""
    known = [c for c in counted if c]
    if not known:
        return None
    total = {group: {k: sum(c[group][k] for c in known) for k in ("on_defect", "elsewhere")}
             for group in ("passed", "caught")}  # fmt: skip
    return total | {
        "without_mask": sum(c["without_mask"] for c in known),
        "within_px": known[0]["within_px"],
        "runs": len(known),
    }


def _spread(values: list[float | None]) -> dict[str, Any]:
    """stats() of the figures that could be computed; all None where none could."""
    known = [float(v) for v in values if v is not None]
    return stats(known) if known else {"median": None, "min": None, "max": None, "n": 0}


def baseline_metrics(category: Path, image_size: str) -> dict[str, Any]:
    """The per-pixel Gaussian at the input size the model trains at (`--image-size` IMAGE_SIZE)."""
    from edge.frames import InputFormat
    from train.baseline import PixelGaussian
    from train.data import load_images, load_test_set, train_image_paths, without_copies_of
    from train.metrics import aupro, f1_max, image_auroc, pixel_auroc

    size = input_size(category, image_size)
    own = train_image_paths(category)
    with Timer() as t:
        model = PixelGaussian().fit(load_images(own, InputFormat(size, 3)))
    test, _ = without_copies_of(load_test_set(category, InputFormat(size, 3)), own)  # as vqad eval leaves them out
    maps, scores = model.score(np.stack([s.image for s in test]))
    labels = np.array([s.label for s in test])
    has = np.array([s.mask is not None for s in test])
    masks = np.stack([s.mask if s.mask is not None else np.zeros(size, bool) for s in test])
    return {
        "input_size": list(size),
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks[has], maps[has]),
        "aupro": aupro(masks[has], maps[has]),
        "f1_max": f1_max(labels, scores)[0],
        "train_seconds": t.seconds,
    }


@dataclass(frozen=True)
class Budget:
    """A bench training's budget: `steps` (None = train.steps of configs/) and the `minutes`
    guard (None = train.max_minutes of configs/), as `vqad train --steps / --max-minutes`."""

    steps: int | None = None
    minutes: float | None = None

    @classmethod
    def quick(cls) -> Budget:
        """`--quick`: about 2 minutes a training, ended by the guard: a look, not a figure."""
        return cls(minutes=2.0)

    def args(self) -> list[str | float]:
        return [
            *(["--steps", self.steps] if self.steps else []),
            *(["--max-minutes", self.minutes] if self.minutes else []),
        ]

    def to_dict(self) -> dict[str, Any]:
        defaults = train_defaults()
        return {"steps": self.steps or defaults.steps, "minutes": self.minutes or defaults.max_minutes}


def train_defaults() -> Any:
    """configs/train.yaml, as `vqad train` reads it without --config."""
    from edge.config import load_config
    from train.config import TrainConfig
    from vqad.commands.common import default_config

    return load_config(TrainConfig, default_config("train"))


def budget_text(budget: dict[str, Any]) -> str:
    """'3000 steps (guard 60 min)': how each model of a report was trained."""
    return f"{budget['steps']} steps (guard {budget['minutes']:g} min)"


def train_and_eval(
    category: Path, run_dir: Path, budget: Budget, image_size: str, overrides: list[str]
) -> dict[str, Any]:
    from train.evaluate import evaluate

    sets = [a for o in overrides for a in ("--set", o)]
    # A training is minutes to an hour and prints nothing here: each says when it starts and ends.
    what = f"{category.name} / {run_dir.name}"
    print(f"[train] {what}: started {time.strftime('%H:%M')}", flush=True)
    with Timer() as t:
        vqad("train", category, "--out", run_dir, *budget.args(), "--image-size", image_size, *sets)
        evaluate(run_dir, category, run_dir / "eval", pictures=False)
    row = accuracy_row(run_dir) | {"overrides": overrides}
    print(
        f"[train] {what}: {row['steps']} steps (ended by {row['ended_by']}), image AUROC "
        f"{figure(row['image_auroc'])}, trained and evaluated in {t.seconds / 60:.1f} min",
        flush=True,
    )
    return row


def accuracy_row(run_dir: Path) -> dict[str, Any]:
    """One table row from a trained and evaluated run: its metrics, training time and FLOPs."""
    import json

    from benchmarks.backends import model_flops
    from train.checkpoint import load_checkpoint

    m = json.loads((run_dir / "eval" / "metrics.json").read_text())
    meta = load_checkpoint(run_dir / "checkpoint.pt")["meta"]
    keys = (
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "threshold",
        "per_kind_image_auroc",
        "per_kind_misses",
        "false_reject_rate",
        "miss_rate",
        "miss_rate_at_1pct_frr",
        "miss_rate_at_5pct_frr",
        "frr_upper_bound_95",
    )
    return {k: m[k] for k in keys} | {
        "defect_peaks": m.get("defect_peaks"),  # None in a report written before it was counted
        "target_frr_choices": m.get("target_frr_choices"),  # None in a report written before it was
        "train_seconds": meta["elapsed_s"],
        "steps": meta["step"],
        "ended_by": meta["metrics"].get("ended_by"),  # steps, or max_minutes: the guard stopped it short
        "budget": {"steps": meta["train_config"]["steps"], "minutes": meta["train_config"]["max_minutes"]},
        "input_size": meta["model_config"]["image_size"],
        "flops_per_frame": model_flops(run_dir)["total"],
        "run": str(run_dir),
    }


def collect_accuracy(workdir: Path, image_size: str = "auto") -> dict[str, Any]:
    """Rebuild the accuracy part from an earlier run's folders (WORKDIR/runs/<cat>/<variant>)."""
    data = workdir / "data"
    names = {run_slug(n): n for n in {**VARIANTS, **ABLATION}}
    out: dict[str, Any] = {
        "data": str(data),
        "synth_seconds": None,
        "image_size": image_size,
        "categories": {},
        "rebuilt_from": str(workdir),
    }

    for cat_dir in sorted((workdir / "runs").iterdir()):
        rows: dict[str, Any] = {"per-pixel Gaussian": baseline_metrics(data / cat_dir.name, image_size)}
        repeats: dict[str, list[dict[str, Any]]] = {}
        for run in sorted(cat_dir.iterdir()):  # seed 0 sorts before its __seedN repeats
            slug = run.name.split(SEED_SUFFIX)[0]
            repeats.setdefault(names.get(slug, slug), []).append(accuracy_row(run))
        for name, runs in repeats.items():
            rows[name] = median_row(runs)
            out["budget"] = runs[0]["budget"]
        out["categories"][cat_dir.name] = rows
    return out


def bench_accuracy(
    data: Path | None,
    budget: Budget,
    image_size: str = "auto",
    ablation: bool = False,
    workdir: Path | None = None,
    categories: tuple[str, ...] | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Train and evaluate every variant on every category, `repeats` times (seeds 0..repeats-1);
    each figure is the median over the repeats, with min and max."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="vqad-bench-"))
    if data is None:
        data = workdir / "data"
        with Timer() as t:
            vqad("synth", data)
        synth_seconds = t.seconds
    else:
        synth_seconds = None
    cats = categories or tuple(sorted(p.name for p in data.iterdir() if (p / "train" / "good").is_dir()))
    variants = dict(VARIANTS, **(ABLATION if ablation else {}))
    out: dict[str, Any] = {
        "data": str(data),
        "synth_seconds": synth_seconds,
        "budget": budget.to_dict(),
        "image_size": image_size,
        "repeats": repeats,
        "categories": {},
    }
    for cat in cats:
        rows: dict[str, Any] = {"per-pixel Gaussian": baseline_metrics(data / cat, image_size)}
        for name, overrides in variants.items():
            t0 = time.monotonic()
            runs = [
                train_and_eval(
                    data / cat,
                    workdir / "runs" / cat / run_slug(name, r),
                    budget,
                    image_size,
                    [*overrides, f"train.seed={r}"],
                )
                for r in range(repeats)
            ]
            rows[name] = median_row(runs)
            print(
                f"[accuracy] {cat} / {name}: image AUROC {figure(rows[name]['image_auroc'])}, pixel AUROC "
                f"{figure(rows[name]['pixel_auroc'])}, AUPRO {figure(rows[name]['aupro'])} "
                f"({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
        out["categories"][cat] = rows
    return out


def real_categories(root: Path) -> dict[str, Path]:
    """The categories (folders with `train/good`) under `root`, by name; `root` itself when it is
    one. SystemExit when there is none."""
    if not root.is_dir():
        raise SystemExit(f"--real {root}: no such folder")
    if (root / "train" / "good").is_dir():
        return {root.name: root}
    cats = {p.name: p for p in sorted(root.iterdir()) if (p / "train" / "good").is_dir()}
    if not cats:
        raise SystemExit(f"--real {root}: no category (CAT/train/good) in it or under it")
    return cats


def bench_real(root: Path, budget: Budget, image_size: str, workdir: Path, repeats: int = 1) -> dict[str, Any]:
    """The shipped defaults on every real category under `root` (MVTec layout), beside the
    per-pixel Gaussian: accuracy and the rates at the calibrated threshold."""
    out: dict[str, Any] = {
        "data": str(root),
        "budget": budget.to_dict(),
        "image_size": image_size,
        "repeats": repeats,
        "categories": {},
    }
    for cat, folder in real_categories(root).items():
        runs = [
            train_and_eval(folder, workdir / "real" / cat / run_slug("ours", r), budget, image_size,
                           [f"train.seed={r}"])
            for r in range(repeats)
        ]  # fmt: skip
        rows = {"per-pixel Gaussian": baseline_metrics(folder, image_size), "ours (configs/)": median_row(runs)}
        out["categories"][cat] = rows
        m = rows["ours (configs/)"]
        print(
            f"[real] {cat}: image AUROC {figure(m['image_auroc'])}, pixel AUROC {figure(m['pixel_auroc'])}, "
            f"false rejects {percent(m['false_reject_rate'])}, misses {percent(m['miss_rate'])}",
            flush=True,
        )
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--steps", type=int, help="training steps per model (default: train.steps of configs/)")
    ap.add_argument("--minutes", type=float, help="the guard per training (default: train.max_minutes)")
    ap.add_argument("--quick", action="store_true", help="about 2 minutes per training")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--image-size", default="auto", help="vqad train --image-size: N, HxW or auto (configs/)")
    ap.add_argument("--repeats", type=int, default=1, help="trainings per variant (seeds 0..N-1); median, min, max")
    args = ap.parse_args()
    budget = Budget.quick() if args.quick else Budget(args.steps, args.minutes)
    result = bench_accuracy(args.data, budget, args.image_size, args.ablation, repeats=args.repeats)
    print(json.dumps(result, indent=2))
