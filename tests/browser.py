"""A real browser and a real dashboard process for tests: headless Chromium from Debian
(`chromium`, `chromium-driver`; `.ci/run` installs them) driven by Selenium."""

from __future__ import annotations

import os
import subprocess
import sys
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

    def __init__(self, *args: str, log_path: Path, env: dict | None = None):
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-c", BLOCKED_LAUNCH, "dashboard", "--port", str(self.port), *args]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log_path = log_path

    def start(self, timeout: float = 30.0, headers: dict | None = None) -> DashboardProcess:
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)

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
