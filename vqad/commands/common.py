"""What the command groups share: the shipped configs, --set overrides, argument types and the stop on SIGTERM."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from edge.errors import VqadError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def picture_arg(text: str) -> Path:
    """--picture: a file whose suffix names an image format, found before the work that draws it."""
    from edge.frames import IMAGE_KINDS, IMAGE_SUFFIXES

    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"--picture is an image file ({IMAGE_KINDS}), got {text!r}")
    return path


def default_config(name: str) -> Path | None:
    """configs/<name>.yaml of this checkout, if it has one (the documented defaults)."""
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def overrides(args: argparse.Namespace, section: str) -> dict:
    """The --set SECTION.KEY=VALUE overrides of one section (model, train, export, edge)."""
    from edge.config import parse_overrides

    nested = parse_overrides(getattr(args, "set", None) or [])
    unknown = set(nested) - {"model", "train", "export", "edge"}
    if unknown:
        raise VqadError(f"--set keys must start with model., train., export. or edge.: {sorted(unknown)}")
    return nested.get(section, {})


def config_args(sp: argparse.ArgumentParser) -> None:
    """--config, --model-config and --set for the commands that train."""
    sp.add_argument("--config", type=Path, help="train config YAML (default configs/train.yaml)")
    sp.add_argument("--model-config", type=Path, help="model config YAML (default configs/model.yaml)")
    sp.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override a config field, e.g. --set model.codebook_size=128 (repeatable)",
    )


def set_arg(sp: argparse.ArgumentParser, section: str) -> None:
    """--set for a command that reads one config section (export., edge.)."""
    sp.add_argument(
        "--set", action="append", metavar=f"{section}.KEY=VALUE", help="override one config key (repeatable)"
    )


def at_least(minimum: float, kind: type = int, at_most: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of `kind` no smaller than `minimum` (nor larger than `at_most`),
    or argparse's one-line usage error (a count of 0 or a size of -1 would otherwise fail deep
    inside, or mean something else; a side of 100,000 pixels asks for 149 GiB)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most:g}, got {text}")
        return value

    return parse


def pixel_bits_arg(text: str) -> int:
    """An argparse type: the bits a 16-bit image's counts fill (edge.frames.check_pixel_bits)."""
    from edge.frames import check_pixel_bits

    try:
        return check_pixel_bits(int(text) if text.isdigit() else text, "--pixel-bits")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def identifier(text: str) -> str:
    """An argparse type: a camera id as the protocol takes it (1..128 printable characters), or a
    usage error. A daemon drops a frame whose camera id it cannot read, with no result to say so."""
    from edge.protocol import MAX_ID_LENGTH, is_id

    if not is_id(text):
        raise argparse.ArgumentTypeError(f"an id is 1..{MAX_ID_LENGTH} printable characters, got {text!r}")
    return text


def sha256_digits(text: str) -> str:
    """An argparse type: a sha256, or its first digits as tables show them (edge.record.store's
    SHA_PREFIX), in lower case; or a usage error."""
    from edge.record.store import check_sha_prefix

    try:
        check_sha_prefix(text.lower(), "the sha256")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.lower()


def mask_digits(text: str) -> str:
    """An argparse type: an inspection mask's sha256 digits (sha256_digits), or none."""
    return text if text == "none" else sha256_digits(text)


def stop_on_sigterm() -> Callable[[], bool]:
    """A check that turns true once SIGTERM arrives (the handler only sets the flag)."""
    import signal

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    return lambda: bool(stopping)
