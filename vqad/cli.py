"""The `vqad` command. Each group of sub-commands lives in vqad/commands/ and imports what a
sub-command needs only when it runs, so `vqad serve`, `vqad camera` and `vqad watch` never
import torch.

Errors: domain exceptions (edge.errors.VqadError) become one log line and their exit code; so
does an OSError, a file or folder the system refused (exit 7; the traceback with --verbose).
"""

from __future__ import annotations

import argparse
import logging
import sys

from edge.errors import VqadError
from vqad.commands import data, export, line, model, tools

log = logging.getLogger("vqad")

GROUPS = (data, model, export, line, tools)
# After VqadError's codes (1-6): the system refused a file or folder (space, permission).
SYSTEM_EXIT_CODE = 7


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
    except OSError as exc:  # a file the system refused: no space, no permission, a folder gone
        log.debug("the system's refusal", exc_info=True)
        # A write to a file already open (a full disk) names none: -v's traceback shows where.
        where = f" {exc.filename}" if exc.filename else " a file or folder (-v shows which)"
        log.error("cannot use%s: %s", where, exc.strerror or exc)
        return SYSTEM_EXIT_CODE
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
