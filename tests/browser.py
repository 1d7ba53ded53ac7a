"""A real browser and a real dashboard process for tests: headless Chromium from Debian
(`chromium`, `chromium-driver`; `.ci/run` installs them) driven by Selenium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.dashboard.server import wait_until_serving
from edge.transport import free_loopback_port
from tests.conftest import ROOT
from tests.edge_helpers import BLOCKED_LAUNCH, stop_process


def headless_chromium(width: int = 1400, height: int = 1000):
    """The project's headless Chromium; skipped without one (failed under CI: .ci/run installs it)."""
    from edge.dashboard.browser import BrowserMissingError
    from edge.dashboard.browser import headless_chromium as chromium

    try:
        return chromium(width, height)
    except BrowserMissingError as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"{exc}; .ci/run installs chromium and chromium-driver") from exc
        pytest.skip(str(exc))


def wait_for(check, timeout: float = 10.0, every: float = 0.05):
    """check() until it returns something true, for at most `timeout` seconds -> its value (or None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return None


class DashboardProcess:
    """`vqad dashboard` in a process of its own, with torch and train/ unimportable."""

    def __init__(
        self, *args: str, log_path: Path, env: dict | None = None, python: str = sys.executable, cwd: Path = ROOT
    ):
        self.port = free_loopback_port()
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [python, "-c", BLOCKED_LAUNCH, "dashboard", "--port", str(self.port), *args]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log_path = log_path

    def start(self, timeout: float = 30.0, headers: dict | None = None) -> DashboardProcess:
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)

        if not wait_until_serving(self.url, self.proc, timeout, headers):
            how = f"exited {self.proc.returncode}" if self.proc.poll() is not None else f"not answering in {timeout}s"
            raise AssertionError(f"dashboard {how}:\n{self.log_path.read_text()}")
        return self

    def stop(self, timeout: float = 15.0) -> int:
        return stop_process(self.proc, self.log, timeout=timeout)

    def __enter__(self) -> DashboardProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PrefixProxy:
    """A reverse proxy on loopback that serves a dashboard under `prefix` and takes the prefix
    off before passing each request on, as nginx's `location /line3/ { proxy_pass
    http://127.0.0.1:8080/; }` does. One request per connection (it asks for `Connection:
    close`), its answer streamed back as it comes (the event stream too)."""

    def __init__(self, prefix: str, upstream_port: int):
        self.prefix, self.upstream_port = prefix, upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.requests: list[str] = []  # the request lines as passed on
        self.refused: list[str] = []  # those outside the prefix, answered 404

    def __enter__(self) -> PrefixProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                client = self.server.accept()[0]
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            request_line, *headers = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            if not target.startswith(self.prefix + "/"):  # the gateway's other paths are not this dashboard's
                self.refused.append(f"{method} {target}")
                client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            target = target[len(self.prefix) :]
            headers = [h for h in headers if not h.lower().startswith("connection:")] + ["Connection: close"]
            self.requests.append(f"{method} {target}")
            upstream.sendall("\r\n".join([f"{method} {target} {version}", *headers]).encode("latin-1") + b"\r\n\r\n")
            upstream.sendall(body)
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()  # a POST's body
            _pump(upstream, client)


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy `source` to `target` until either closes."""
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
