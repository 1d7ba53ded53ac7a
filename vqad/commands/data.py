"""Data: `vqad synth`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from edge.frames import DEFAULT_MAX_FRAME_PIXELS
from vqad.commands.common import at_least

# The largest synthetic image side: the side of the daemon's default largest frame
# (edge.settings max_frame_pixels). Larger sides only fill the memory (2 x 8 bytes a pixel).
SYNTH_MAX_SIZE = math.isqrt(DEFAULT_MAX_FRAME_PIXELS)


def cmd_synth(args: argparse.Namespace) -> int:
    import time

    from train.synth import CATEGORIES, SynthSpec, synth

    spec = SynthSpec(size=args.size, n_train=args.n_train, n_test_good=args.n_test_good, n_per_defect=args.n_per_defect)
    cats = args.categories or CATEGORIES
    t0 = time.monotonic()
    counts = synth(args.out, seed=args.seed, spec=spec, categories=cats)
    for cat, c in counts.items():
        print(f"{cat}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    print(f"wrote {args.out} in {time.monotonic() - t0:.1f}s (seed {args.seed})")
    return 0


def synth_categories(text: str) -> tuple[str, ...]:
    """`--categories weave,bracket` as a tuple; an unknown name is a usage error, before anything is written."""
    from train.synth import CATEGORIES

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CATEGORIES]
    if unknown or not names:
        named = ", ".join(unknown) or repr(text)
        raise argparse.ArgumentTypeError(f"unknown category {named}; known: {','.join(CATEGORIES)}")
    return names


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("synth", help="write a synthetic MVTec-layout benchmark")
    s.add_argument("out", type=Path, metavar="OUT_DIR", help="where to write one MVTec-layout folder per category")
    s.add_argument("--seed", type=at_least(0), default=0, help="the same seed writes the same images")
    s.add_argument("--size", type=at_least(16, at_most=SYNTH_MAX_SIZE), default=256, help="image side in pixels")
    # 4: what vqad train needs
    s.add_argument("--n-train", type=at_least(4), default=160, help="good training images per category")
    s.add_argument("--n-test-good", type=at_least(0), default=40, help="good test images per category")
    s.add_argument("--n-per-defect", type=at_least(0), default=12, help="test images per defect kind")
    s.add_argument(
        "--categories", type=synth_categories, help="comma-separated subset of: weave,bracket (default: both)"
    )
    s.set_defaults(func=cmd_synth)
