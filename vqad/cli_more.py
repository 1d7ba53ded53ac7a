"""Sub-commands beyond synth/train/eval. Registered here to keep cli.py short."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    return None
