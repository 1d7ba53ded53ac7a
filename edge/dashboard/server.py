"""`vqad dashboard`: startup (the record, the result feed, the daemon probe, the listening
socket) -> uvicorn's main loop -> shutdown (each part stopped, the record closed)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import cv2
import uvicorn

from edge.dashboard.app import create_app
from edge.dashboard.live import LiveView, ResultsFeed
from edge.dashboard.probe import MetricsProbe
from edge.dashboard.record_link import RecordLink
from edge.dashboard.settings import DashboardConfig
from edge.errors import ConfigError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound before uvicorn starts, so that a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def wait_until_serving(
    url: str, process: subprocess.Popen, timeout_s: float = 30.0, headers: dict[str, str] | None = None
) -> bool:
    """Poll a `vqad dashboard` started as `process` until URL/api/summary answers -> True; False
    once the process has exited or `timeout_s` has passed. Any HTTP answer counts, a refusal
    (401 without the token) too: the server is up."""
    request = urllib.request.Request(url.rstrip("/") + "/api/summary", headers=headers or {})
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(request, timeout=1).close()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.1)
    return False


def run_dashboard(cfg: DashboardConfig) -> int:
    sock = listening_socket(cfg.host, cfg.port)
    if cfg.nice:
        os.nice(cfg.nice)
    # OpenCV's worker threads would spin on every core for a small picture: draw on this one.
    cv2.setNumThreads(1)
    record = RecordLink(cfg.record, cfg.evidence_dir) if cfg.record else None
    view = LiveView(cfg.silent_after_s)
    feed = ResultsFeed(cfg.results, view, cfg.curve_secret, cfg.curve_server_key) if cfg.results else None
    probes = tuple(MetricsProbe(url) for url in cfg.metrics)
    if feed:
        feed.start()
    for probe in probes:
        probe.start()
    app = create_app(cfg, view, probes, record)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
            root_path=cfg.root_path,
        )  # fmt: skip
    )
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    log.info(
        "dashboard on http://%s:%d/ (results %s, record %s, metrics %s%s%s)",
        shown, cfg.port, ", ".join(cfg.results) or "none", record.where if record else "none",
        ", ".join(cfg.metrics) or "none",
        f", peers {', '.join(cfg.peers)}" if cfg.peers else "", ", token required" if cfg.token else "",
    )  # fmt: skip
    try:
        with _signals_handled_here():
            server.run(sockets=[sock])
    finally:
        if feed:
            feed.stop()
        for probe in probes:
            probe.stop()
        if record:
            record.close()
        sock.close()
    log.info("dashboard stopped")
    return 0


@contextlib.contextmanager
def _signals_handled_here() -> Iterator[None]:
    """SIGTERM and SIGINT, as uvicorn hands them back. Its main loop catches them, shuts down,
    and then raises the signal again under the handlers it found. Python's default handler
    would kill the process there, before the parts are stopped, with 143 instead of exit code
    0. The handler only notes the signal: the shutdown has already begun."""
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stopping.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stopping:
            log.info("stopping on %s", signal.Signals(stopping[0]).name)
