"""Shared fixtures: a tiny synthetic data set, a tiny trained and evaluated run, and its
exported model package. Everything is small so the whole suite runs in minutes on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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
def tiny_run(synth_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "bracket"
    run_vqad("train", synth_root / "bracket", "--out", run, "--steps", "20", "--plot", *TINY_MODEL, *TINY_TRAIN)
    run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval")
    return run


@pytest.fixture(scope="session")
def tiny_model(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "bracket"
    run_vqad("export", tiny_run, "--out", out)
    return out


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", help="run the fuzz tests with many more examples")


def _postgres_bin(name: str) -> str | None:
    import glob
    import shutil

    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster from Debian's `postgresql` package (`.ci/run` installs it),
    on a Unix socket only, run as the `postgres` user when the tests run as root."""
    import pwd
    import shutil
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL is not installed: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    # Not under pytest's own temporary folder: the server's user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="vqad-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    prefix = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, user)
        shutil.chown(sock, user)
    env = dict(os.environ, LC_ALL="C")
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "vqad", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    options = f"-k {sock} -c listen_addresses='' -p 5439 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    yield f"postgresql+psycopg://vqad@/postgres?host={sock}&port=5439"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, env=env)
    shutil.rmtree(root, ignore_errors=True)
