"""Tools: `vqad keys`, `vqad demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqad.commands.common import at_least
from vqad.commands.model import size_arg


def cmd_keys(args: argparse.Namespace) -> int:
    from edge.security import create_keys

    public, secret = create_keys(args.dir, args.name, replace=args.force)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vqad.demo import main_demo

    return main_demo(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="create a CURVE key pair (DIR/NAME.key, DIR/NAME.key_secret)")
    k.add_argument("dir", type=Path, metavar="DIR", help="where to write the key pair")
    k.add_argument("--name", default="server", help="the pair's file name (default server)")
    k.add_argument("--force", action="store_true", help="replace an existing key pair of that name")
    k.set_defaults(func=cmd_keys)

    d = sub.add_parser("demo", help="synth -> train -> eval -> export -> serve -> camera -> watch, end to end")
    d.add_argument("--workdir", default="demo", help="where the demo writes its data, run and package (default demo)")
    d.add_argument(
        "--category", default="bracket", choices=["bracket", "weave"], help="the synthetic product (default bracket)"
    )
    d.add_argument("--minutes", type=at_least(0.1, float), default=3.0, help="training budget")
    d.add_argument(
        "--image-size", type=size_arg, default="auto", help="vqad train --image-size: N, HxW or auto (configs/)"
    )
    d.add_argument("--frames", metavar="ENDPOINT", help="the daemon's frames endpoint (default tcp://127.0.0.1:5555)")
    d.add_argument("--results", metavar="ENDPOINT", help="the daemon's results endpoint (default tcp://127.0.0.1:5556)")
    d.set_defaults(func=cmd_demo)
