"""The `vqad` command. Each group of sub-commands lives in vqad/commands/ and imports what a
sub-command needs only when it runs, so `vqad serve`, `vqad camera` and `vqad watch` never
import torch.

Errors: domain exceptions (edge.errors.VqadError) become one log line and their exit code; so
does an OSError, a file or folder the system refused (exit 7; the traceback with --verbose), and
a training package missing where only the line's packages are installed (exit 1). A reader of
the output that leaves early (`vqad records ... | head`) ends the command in silence, as it
ends `cat`: exit 141, the shell's code for a pipe closed under a writer.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import select
import sys

from edge.errors import VqadError
from vqad import __version__
from vqad.commands import data, export, line, model, tools

log = logging.getLogger("vqad")

GROUPS = (data, model, export, line, tools)
# After VqadError's codes (1-6): the system refused a file or folder (space, permission).
SYSTEM_EXIT_CODE = 7
# 128 + SIGPIPE: what a shell reports for a writer whose reader closed the pipe.
CLOSED_PIPE_EXIT_CODE = 141
# What the train extra installs and a line's box (`vqad[edge]`) has not: a command that needs
# one (train, eval, export, embed, synth's pictures) says which extra brings it. Exit code 1,
# VqadError's own.
TRAINING_PACKAGES = {"torch", "onnx", "sklearn", "matplotlib", "scipy", "psutil", "tensorboard"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqad", description="VQ-VAE visual inspection: train, export, serve.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"vqad {__version__}")
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
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            return CLOSED_PIPE_EXIT_CODE
        log.debug("the system's refusal", exc_info=True)
        # A write to a file already open (a full disk) names none: -v's traceback shows where.
        where = f" {exc.filename}" if exc.filename else " a file or folder (-v shows which)"
        log.error("cannot use%s: %s", where, exc.strerror or exc)
        return SYSTEM_EXIT_CODE
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAINING_PACKAGES:
            raise
        log.error("vqad %s needs %s, which this install lacks: pip install 'vqad[train]' (torch's CPU build first, "
                  "as the README says); a line's box needs only 'vqad[edge]'", args.command, exc.name)  # fmt: skip
        return VqadError.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on its
    write end). If so, it is pointed at /dev/null, so that the interpreter's last flush at exit
    does not fail again and print a traceback."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # replaced, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


if __name__ == "__main__":
    sys.exit(main())
