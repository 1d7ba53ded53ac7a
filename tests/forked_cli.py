"""`vqad` commands in processes forked from one that has already imported the CLI and what its
commands load (torch, torch._dynamo, ONNX, ONNX Runtime, OpenCV).

A command started as `python -m vqad.cli` spends most of a tiny test's run importing: a 3-step
training took 11 s, 9.6 of them in imports (torch 4.9 s, and 3.5 s for torch._dynamo, which the
optimiser's constructor imports); forked from a process that holds them, 0.95 s. Each command
still runs in its own process, with its own files, exit code, standard output and error, so the
tests see what a user's shell sees. `python -m vqad.cli` itself is still run by the calls that
need a fresh interpreter (an environment read at import) and by the tests of the command's start.

Set VQAD_TEST_FORK=0 to run every command as `python -m vqad.cli`. The fork server imports the
main module of the process that starts it again, as multiprocessing does: pytest's (`python -m
pytest`, `pytest`, an xdist worker) is safe to import. A forked command reads no standard input.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Imported once, in the process every command is forked from; a module that cannot be imported
# here (no ONNX Runtime, say) is left to the command, which reports it as a user would see it.
PRELOAD = (
    "tests.forked_cli",
    "vqad.cli",
    "torch",
    "torch._dynamo",
    "torch.onnx",
    "train.loop",
    "train.pipeline",
    "train.evaluate",
    "export.export_run",
    "onnxruntime",
    "sklearn.metrics",
)

ENABLED = os.environ.get("VQAD_TEST_FORK", "1") != "0"
_context: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """This process's fork server, started with its first command (about 13 s of imports)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(list(PRELOAD))
    return _context


def run_forked(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`vqad ARGV` in a forked process, as subprocess.run(capture_output=True, text=True) runs it:
    its exit code (negative for a signal), its standard output and error. Raises
    subprocess.TimeoutExpired, the process killed, past `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="vqad-cli-") as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        process = _forkserver().Process(target=_command, args=(argv, str(cwd), env, str(out), str(err)))
        process.start()
        try:
            process.join(timeout)
        except BaseException:  # the test stopped (pytest-timeout, Ctrl-C): as subprocess.run does
            process.kill()
            raise
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["vqad", *argv], timeout, _read(out), _read(err))
        return subprocess.CompletedProcess(["vqad", *argv], process.exitcode, _read(out), _read(err))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _command(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The forked process: the caller's directory and environment, its output into two files,
    then `vqad ARGV` as `python -m vqad.cli` runs it."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    time.tzset()  # the caller's TZ, for the record's days
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered, as PYTHONUNBUFFERED leaves a log
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = ["vqad", *argv]
    from vqad.cli import main

    try:
        code = main(argv)
    finally:
        logging.shutdown()  # what the interpreter's exit does: flush and close the log's files
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)
