"""The `vqad` command. Each group of sub-commands lives in vqad/commands/ and imports what a
sub-command needs only when it runs, so `vqad serve`, `vqad camera` and `vqad watch` never
import torch.

Errors: domain exceptions (edge.errors.VqadError) become one log line and their exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edge.errors import VqadError
from vqad.commands import data, export, line, model, tools

log = logging.getLogger("vqad")

GROUPS = (data, model, export, line, tools)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqad", description="VQ-VAE visual inspection: train, export, serve.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
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
