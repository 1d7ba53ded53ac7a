"""Shared fixtures: a tiny synthetic data set, a tiny trained and evaluated run, and its
exported model package. Everything is small so the whole suite runs in minutes on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import forked_cli

ROOT = Path(__file__).resolve().parents[1]
SHARED_TOOLS = ROOT.parent / "shared" / "tools"
VQAD = [sys.executable, "-m", "vqad.cli"]

TINY_MODEL = [
    "--set",
    "model.image_size=32",
    "--set",
    "model.width=8",
    "--set",
    "model.code_dim=8",
    "--set",
    "model.codebook_size=32",
    "--set",
    "model.res_blocks=1",
]
TINY_TRAIN = [
    "--set",
    "train.batch_size=8",
    "--set",
    "train.log_every=5",
    "--set",
    "train.checkpoint_every=10",
    "--set",
    "train.num_threads=1",
    "--set",
    "train.val_fraction=0.25",
]


def run_vqad(*args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """`vqad ARGS` in a process of its own, from the repository's root; `env` adds to this one's.
    The process is forked from one that has imported the CLI's dependencies (tests/forked_cli.py),
    unless another subprocess.run option is given."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **kw.pop("env", {}))
    if forked_cli.ENABLED and not kw:  # a forked process, torch already imported (tests/forked_cli.py)
        proc = forked_cli.run_forked(list(map(str, args)), ROOT, env, timeout)
    else:
        proc = subprocess.run(
            [*VQAD, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, **kw
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"vqad {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    run_vqad(
        "synth",
        out,
        "--seed",
        "3",
        "--size",
        "64",
        "--n-train",
        "16",
        "--n-test-good",
        "4",
        "--n-per-defect",
        "2",
    )
    return out


@pytest.fixture(scope="session")
def line_good(tmp_path_factory) -> Path:
    """16 good bracket images that the tiny models never trained on (the same generator, another
    seed): the line's good parts, as `vqad calibrate` takes them."""
    out = tmp_path_factory.mktemp("line")
    run_vqad("synth", out, "--categories", "bracket", "--seed", "4", "--size", "64", "--n-train", "16",
             "--n-test-good", "1", "--n-per-defect", "1")  # fmt: skip
    return out / "bracket" / "train" / "good"


@pytest.fixture(scope="session")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "bracket"
    # 200 steps (a few seconds): enough for its scores to see a +20% gain (the drift test).
    run_vqad("train", synth_root / "bracket", "--out", run, "--steps", "200", "--plot", *TINY_MODEL, *TINY_TRAIN)
    evaluated = run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval")
    (run / "eval" / "stdout.txt").write_text(evaluated.stdout)  # what the command printed, for its tests
    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "bracket"
    run_vqad("export", tiny_run, "--out", out)
    return out


# The files that take longest, collected first: each of `make test`'s workers takes a whole file
# at a time (--dist loadfile, in collection order with --no-loadscope-reorder), and a long file
# taken last ends the run alone. Seconds per file at 4f5e479 (--durations=0, two workers):
# test_demo 72 in one test, test_train_eval 229, the next 209 and less. xdist's own order (most
# tests first) took test_demo last: 609 s for 1,122 s of tests; these two first, 601 s for 1,141.
LONGEST_FILES = ("test_demo.py", "test_train_eval.py")


def pytest_collection_modifyitems(config, items) -> None:
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: each file's own order kept


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", help="run the fuzz tests with many more examples")


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster from Debian's `postgresql` package (`.ci/run` installs it)."""
    from benchmarks.postgres import postgres_bin, throwaway_postgres

    if not postgres_bin("initdb"):
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with throwaway_postgres() as url:
        yield url
