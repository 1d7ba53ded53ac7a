"""Data: `vqad synth`, `vqad collect`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from edge.frames import DEFAULT_MAX_FRAME_PIXELS
from vqad.commands.common import at_least, default_config, identifier, overrides, set_arg, stop_on_sigterm

if TYPE_CHECKING:
    from edge.collect import Collected

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


def cmd_collect(args: argparse.Namespace) -> int:
    """`vqad collect DIR`: a camera's frames, as the daemon reads them, saved for training."""
    from edge.collect import collect_frames
    from edge.config import load_config
    from edge.settings import EdgeConfig

    over = overrides(args, "edge")
    if args.frames is not None:
        over["frames_endpoint"] = args.frames
    cfg = load_config(EdgeConfig, args.config or default_config("edge"), over)
    collected = collect_frames(args.out, cfg, args.count, args.camera, args.every_s, args.timeout,
                               stop=stop_on_sigterm())  # fmt: skip
    _say_collected(collected)
    if collected.write_failed is not None:
        raise collected.write_failed  # one line and exit 7, after what was written
    return 0


def _say_collected(collected: Collected) -> None:
    """What `vqad collect` wrote and left, and what to do with it."""
    for folder, n in sorted(collected.written.items()):
        print(f"{n} frame{'' if n == 1 else 's'} -> {folder}")
    left = [(collected.unreadable, "no readable frame (the log says why)"),
            (collected.other_cameras, "of other cameras (--camera)"),
            (collected.too_soon, "within --every-s of their camera's last one"),
            (collected.master_parts, "of master parts (edge.master_*_parts): no product")]  # fmt: skip
    said = ", ".join(f"{n} {why}" for n, why in left if n)
    if said:
        print(f"left: {said}")
    for camera, bits in sorted(collected.sixteen_bit.items()):
        told = f"their headers say {bits} bits: vqad train DATA --pixel-bits {bits}" if bits else (
            "say the bits the camera fills when training: vqad train DATA --pixel-bits N (12 for Mono12)")  # fmt: skip
        print(f"{camera}: 16-bit frames, saved as their counts (16-bit PNG; an image viewer shows counts of fewer "
              f"than 16 bits dark: stretch its levels to look); {told}")  # fmt: skip
    if collected.written:
        print("look through them: a model learns from defect-free parts only; then put them under DATA/train/good/ "
              "(a camera's folder a model) and vqad train DATA")  # fmt: skip
    else:
        print("no frame was collected")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The data's commands: synth, collect."""
    _add_synth(sub)
    _add_collect(sub)


def _add_synth(sub: argparse._SubParsersAction) -> None:
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


def _add_collect(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "collect", help="save the frames cameras send, decoded as the daemon decodes them: images to train on"
    )
    c.add_argument("out", type=Path, metavar="DIR", help="where each camera's frames go, as PNG: DIR/<camera>/")
    c.add_argument(
        "--frames", metavar="ENDPOINT", help="where to bind for frames (default: the edge config's, the daemon's)"
    )
    c.add_argument("--config", type=Path, help="edge config YAML: its frames endpoint, CURVE keys and frame limits")
    set_arg(c, "edge")
    c.add_argument("--camera", type=identifier, metavar="ID", help="this camera's frames only")
    c.add_argument("--count", type=at_least(1), default=300, metavar="N", help="stop after N frames (default 300)")
    c.add_argument(
        "--every-s", type=at_least(0.0, float), default=0.0, metavar="S",
        help="a camera's frame at most every S seconds: a line at rest sends the same part again (default: each)",
    )  # fmt: skip
    c.add_argument(
        "--timeout", type=at_least(0.0, float), default=0.0, metavar="S",
        help="stop after S seconds without a frame (default: wait until --count, Ctrl-C or SIGTERM)",
    )  # fmt: skip
    c.set_defaults(func=cmd_collect)
