"""A real daemon process on loopback for tests, with what a Jetson lacks blocked (torch, train/, ...)."""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
import zmq

from edge.protocol import HEARTBEAT_TOPIC, parse_heartbeat, parse_result
from edge.security import make_curve_client
from tests.conftest import ROOT

# What a Jetson installed with `vqad[edge]` lacks: train/, and the packages of the train extra
# that the edge extra does not bring. Made unimportable in every process the tests start as the
# line runs them: the daemon, the dashboard, `vqad score`, `vqad build-engine`.
NOT_ON_THE_EDGE = ("train", "torch", "onnx", "sklearn", "matplotlib", "psutil")
AS_ON_THE_EDGE = "import sys; " + "".join(f"sys.modules[{name!r}] = None; " for name in NOT_ON_THE_EDGE)
BLOCKED_LAUNCH = AS_ON_THE_EDGE + "from vqad.cli import main; sys.exit(main(sys.argv[1:]))"


def short_ipc_dir() -> Path:
    """A short /tmp folder (ipc paths must stay under ~100 chars), removed when the tests end."""
    path = Path(tempfile.mkdtemp(prefix="vq", dir="/tmp"))
    atexit.register(shutil.rmtree, path, True)
    return path


def stop_process(proc: subprocess.Popen, log, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Signal a process, wait for its exit code (killed past `timeout`), close its log."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


class DaemonProcess:
    def __init__(
        self, model_dir: Path, *extra: str, ipc_dir: Path | None = None, env: dict | None = None,
        python: str = sys.executable, wall_clock: Path | None = None,
    ):  # fmt: skip
        """wall_clock: a file whose number (seconds) the daemon's wall clock reads ahead of the
        real one (tests.wall_clock), written again to step it."""
        self.dir = ipc_dir or short_ipc_dir()
        launch = ("import tests.wall_clock; " if wall_clock else "") + BLOCKED_LAUNCH
        self.frames = f"ipc://{self.dir}/frames"
        self.results = f"ipc://{self.dir}/results"
        self.ready = self.dir / "ready.json"
        self.log_path = self.dir / "daemon.log"
        self.args = [
            python,
            "-c",
            launch,
            "serve",
            str(model_dir),
            "--frames",
            self.frames,
            "--results",
            self.results,
            "--ready-file",
            str(self.ready),
            "--set",
            "edge.log_every_s=1",
            "--set",
            f"edge.state_dir={self.dir}",
            *extra,
        ]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        if wall_clock:
            self.env["VQAD_WALL_CLOCK_FILE"] = str(wall_clock)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        self.ready.unlink(missing_ok=True)
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.exists():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        return stop_process(self.proc, self.log, sig, timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    def __init__(self, endpoint: str, topic: bytes = b"result.", curve: tuple[Path, Path] | None = None):
        """`curve`: (this client's secret key file, the daemon's public key file)."""
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        if curve is not None:
            make_curve_client(self.sock, *curve)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        time.sleep(0.3)  # let the subscription reach the publisher (ZeroMQ's slow joiner)

    def collect(self, n: int, timeout: float = 30.0, idle: float | None = None) -> list[tuple[dict, object]]:
        """Up to n results; stops at the timeout, or after `idle` seconds without one."""
        out = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while len(out) < n and time.monotonic() < deadline:
            if idle is not None and time.monotonic() - last > idle:
                break
            if self.sock.poll(50):
                out.append(parse_result(self.sock.recv_multipart()))
                last = time.monotonic()
        return out

    def close(self) -> None:
        self.sock.close(linger=0)


def next_heartbeat(endpoint: str, timeout_s: float = 10.0) -> dict:
    """The daemon's next heartbeat from its results `endpoint`, its header parsed."""
    sub = Subscriber(endpoint, topic=HEARTBEAT_TOPIC)
    try:
        assert sub.sock.poll(int(timeout_s * 1000)), f"no heartbeat from {endpoint} in {timeout_s} s"
        return parse_heartbeat(sub.sock.recv_multipart())
    finally:
        sub.close()


def metrics_text(port: int) -> str:
    """The daemon's Prometheus endpoint on loopback `port`, as text."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


class Camera:
    def __init__(self, endpoint: str, curve: tuple[Path, Path] | None = None):
        """`curve`: (this camera's secret key file, the daemon's public key file)."""
        self.sock = zmq.Context.instance().socket(zmq.PUSH)
        if curve is not None:
            make_curve_client(self.sock, *curve)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.sock.setsockopt(zmq.SNDTIMEO, 10000)
        self.sock.connect(endpoint)

    def send(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.sock.close()


def header(camera_id="cam0", frame_id=0, **kw) -> bytes:
    h = {
        "v": 1,
        "camera_id": camera_id,
        "frame_id": frame_id,
        "ts_ns": time.time_ns(),
        "dtype": "uint8",
        "encoding": "raw",
    }
    h.update(kw)
    return json.dumps(h).encode()


def protocol_doc_example(title: str) -> str:
    """The Python block under `## <title>` in docs/protocol.md, to run as written."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split(f"## {title}", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


@contextmanager
def write_protected(*paths: Path) -> Iterator[None]:
    """`paths` immutable (chattr +i): not even root writes them, as on a read-only medium or
    disk, which a test cannot mount. Skipped where the filesystem has no such attribute."""
    protected: list[Path] = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not possible here (not root, or a filesystem without the attribute)")
            protected.append(path)
        yield
    finally:
        for path in reversed(protected):
            subprocess.run(["chattr", "-i", str(path)], check=True)


class PipeLines:
    """The lines a child process has written to a pipe so far, read without blocking. The pipe's
    descriptor is read directly: select() on a buffered file object misses the lines its buffer
    already holds, and a wait for the second of two lines written together ran to its end."""

    def __init__(self, stream: IO):
        self.fd, self.lines, self.ended = stream.fileno(), [], False
        self._partial = b""

    def read(self, timeout: float = 0.0) -> list[str]:
        """Every line so far, after reading what the pipe holds (waiting up to `timeout` seconds
        for something when it holds nothing)."""
        wait = timeout
        while not self.ended and select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, 65536)
            self.ended = not chunk  # the process closed its end
            *done, self._partial = (self._partial + chunk).split(b"\n")
            self.lines += [line.decode(errors="replace").strip() for line in done]
            wait = 0.0
        return self.lines

    def text(self) -> str:
        """What was read, as the pipe gave it (a last line without its newline included)."""
        done = "".join(f"{line}\n" for line in self.lines)
        return done + self._partial.decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> str:
        """Everything said until a line holds `text`, the pipe ends, or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines) and not self.ended and time.monotonic() < deadline:
            self.read(timeout=max(0.0, deadline - time.monotonic()))
        return "\n".join(self.lines)
