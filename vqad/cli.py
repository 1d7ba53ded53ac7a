"""The `vqad` command. Each sub-command imports only what it needs, so `vqad serve`,
`vqad camera` and `vqad watch` never import torch.

Errors: domain exceptions (edge.errors.VqadError) become one log line and their exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.errors import VqadError

log = logging.getLogger("vqad")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def default_config(name: str) -> Path | None:
    """configs/<name>.yaml of this checkout, if it has one (the documented defaults)."""
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def _overrides(args: argparse.Namespace, section: str) -> dict:
    from edge.config import parse_overrides

    nested = parse_overrides(args.set or [])
    unknown = set(nested) - {"model", "train", "export", "edge"}
    if unknown:
        raise VqadError(f"--set keys must start with model., train., export. or edge.: {sorted(unknown)}")
    return nested.get(section, {})


def _model_and_train_configs(args: argparse.Namespace):
    from edge.config import load_config
    from train.config import ModelConfig, TrainConfig

    m_over = _overrides(args, "model")
    t_over = _overrides(args, "train")
    if getattr(args, "image_size", None):
        m_over["image_size"] = args.image_size
    if getattr(args, "max_minutes", None):
        t_over["max_minutes"] = args.max_minutes
    if getattr(args, "steps", None):
        t_over["steps"] = args.steps
    if getattr(args, "seed", None) is not None:
        t_over["seed"] = args.seed
    model_cfg = load_config(ModelConfig, args.model_config or default_config("model"), m_over)
    train_cfg = load_config(TrainConfig, args.config or default_config("train"), t_over)
    return model_cfg, train_cfg


# -- sub-commands -------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from train.synth import CATEGORIES, SynthSpec, synth

    spec = SynthSpec(size=args.size, n_train=args.n_train, n_test_good=args.n_test_good, n_per_defect=args.n_per_defect)
    cats = tuple(args.categories.split(",")) if args.categories else CATEGORIES
    t0 = time.monotonic()
    counts = synth(args.out, seed=args.seed, spec=spec, categories=cats)
    for cat, c in counts.items():
        print(f"{cat}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    print(f"wrote {args.out} in {time.monotonic() - t0:.1f}s (seed {args.seed})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.loop import train

    model_cfg, train_cfg = _model_and_train_configs(args)
    summary = train(args.data, args.out, model_cfg, train_cfg, resume=args.resume)
    print(f"trained {summary['step']} steps; validation L2 {summary['val_l2']:.5f}; run in {args.out}")
    if args.plot:
        from train.plots import curves_plot

        if curves_plot(Path(args.out) / "metrics.csv", Path(args.out) / "curves.png"):
            print(f"curves: {Path(args.out) / 'curves.png'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate

    m = evaluate(args.run, args.data, args.out, pictures=not args.no_pictures)
    print(
        f"image AUROC {m['image_auroc']:.4f}  pixel AUROC {m['pixel_auroc']:.4f}  AUPRO {m['aupro']:.4f}  "
        f"F1-max {m['f1_max']:.4f}  threshold {m['threshold']:.5g}  ({m['n_images']} images)"
    )
    print(f"report: {Path(args.out) / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqad", description="VQ-VAE visual inspection: train, export, serve.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic MVTec-layout benchmark")
    s.add_argument("out", type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=256, help="image side in pixels")
    s.add_argument("--n-train", type=int, default=160)
    s.add_argument("--n-test-good", type=int, default=40)
    s.add_argument("--n-per-defect", type=int, default=12)
    s.add_argument("--categories", help="comma-separated subset of: weave,bracket")
    s.set_defaults(func=cmd_synth)

    def config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="train config YAML (default configs/train.yaml)")
        sp.add_argument("--model-config", type=Path, help="model config YAML (default configs/model.yaml)")
        sp.add_argument(
            "--set",
            action="append",
            metavar="SECTION.KEY=VALUE",
            help="override a config field, e.g. --set model.codebook_size=128 (repeatable)",
        )

    t = sub.add_parser("train", help="train a VQ-VAE on CAT/train/good")
    t.add_argument("data", type=Path, metavar="DATA_CAT")
    t.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
    config_args(t)
    t.add_argument("--image-size", type=int)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--steps", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR from its checkpoint")
    t.add_argument("--plot", action="store_true", help="render RUN_DIR/curves.png at the end")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="calibrate the threshold and evaluate on CAT/test")
    e.add_argument("run", type=Path, metavar="RUN_DIR")
    e.add_argument("data", type=Path, metavar="DATA_CAT")
    e.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR")
    e.add_argument("--no-pictures", action="store_true")
    e.set_defaults(func=cmd_eval)

    from vqad import cli_more

    cli_more.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except VqadError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
