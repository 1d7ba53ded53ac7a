"""What the dashboard costs: the daemon's throughput with the dashboard and 5 pages open on
it, and a page's responsiveness at 200 results/s (headless Chromium).

    python -m benchmarks.dashboard MODEL [--quick]
    python -m benchmarks.dashboard --page-memory SECONDS    # one page's memory over time
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks.common import ROOT, scratch_dir, stats
from edge.dashboard.server import wait_until_serving
from edge.transport import free_loopback_port

BROWSERS = 5
# In the page: how late a 50 ms timer fires is how long the page could not answer a click.
LAG_PROBE = """
window.__lags = []; window.__longTasks = 0;
let last = performance.now();
setInterval(() => { const now = performance.now(); window.__lags.push(now - last - 50); last = now; }, 50);
try { new PerformanceObserver((l) => { window.__longTasks += l.getEntries().length; })
        .observe({ entryTypes: ["longtask"] }); } catch (e) {}
"""


class _DashboardProcess:
    def __init__(self, results: str):
        self.url = f"http://127.0.0.1:{free_loopback_port()}/"
        port = self.url.rsplit(":", 1)[1].strip("/")
        cmd = [sys.executable, "-m", "vqad.cli", "dashboard", "--results", results, "--port", port]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until_serving(self.url, self.proc):
            self.stop()
            raise RuntimeError("the dashboard did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _browsers(url: str, n: int) -> list:
    from edge.dashboard.browser import headless_chromium

    drivers = []
    for _ in range(n):
        driver = headless_chromium(1280, 900)
        driver.get(url)
        drivers.append(driver)
    return drivers


class PageClient(threading.Thread):
    """What one open page asks of the dashboard, without drawing it (the drawing happens on
    the operator's screen, not on the edge box), at dashboard.js's pace: the event stream; on
    each summary, a camera's rejects when it has fails (at most twice a second; every 1.5 s in a
    storm of rejects) and each new reject's picture once; the latest picture at most once a second."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopping, self.requests, self.missing = url, threading.Event(), 0, 0
        self.seen: set[tuple[str, int]] = set()
        self.last: dict[tuple[str, str], float] = {}
        self.new_tiles: dict[str, int] = {}
        self.conn: http.client.HTTPConnection | None = None

    def _get(self, path: str) -> bytes:
        """GET over one kept-alive connection, as a browser does."""
        self.requests += 1
        if self.conn is None:
            parts = urllib.parse.urlsplit(self.url)
            self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.conn.request("GET", "/" + path.lstrip("/"))
        response = self.conn.getresponse()
        body = response.read()
        if response.status >= 400:
            self.missing += 1  # a browser would show a broken picture
        return body

    def _due(self, key: tuple[str, str], every_s: float) -> bool:
        now = time.monotonic()
        if now - self.last.get(key, 0.0) < every_s:
            return False
        self.last[key] = now
        return True

    def run(self) -> None:
        with urllib.request.urlopen(self.url + "api/events", timeout=30) as stream:
            for line in stream:
                if self.stopping.is_set():
                    return
                if line.startswith(b"data: "):
                    self._follow(json.loads(line[6:]))

    def _follow(self, summary: dict[str, Any]) -> None:
        for camera, view in summary["cameras"].items():
            quoted = urllib.parse.quote(camera, safe="")
            if view["latest"] and self._due((camera, "latest"), 1.0):
                self._get(f"api/image/{quoted}/latest/overlay")
            every = 1.5 if self.new_tiles.get(camera, 0) > 6 else 0.5  # the page's storm pace
            if view["fail"] and self._due((camera, "rejects"), every):
                fresh = [
                    r
                    for r in json.loads(self._get(f"api/rejects?camera={quoted}&limit=12"))["rejects"]
                    if (camera, r["frame_id"]) not in self.seen
                ]
                self.new_tiles[camera] = len(fresh)
                for r in fresh:
                    self.seen.add((camera, r["frame_id"]))
                    self._get(r["images"]["overlay"])


def _page_clients(url: str, n: int, out: Path) -> list[subprocess.Popen]:
    """n PageClients in a process at niceness 19: they stand for browsers on the operators'
    screens, whose work is not the edge box's; here they take only what the daemon leaves."""
    cmd = [sys.executable, "-m", "benchmarks.dashboard", "--pages", url, "--n", str(n), "--out", str(out)]
    return [subprocess.Popen(cmd, cwd=ROOT, preexec_fn=lambda: os.nice(19))]


def _run_pages(url: str, n: int, out: Path) -> None:
    clients = [PageClient(url) for _ in range(n)]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    for client in clients:
        client.start()
    stopping.wait()
    counts = {"requests": sum(c.requests for c in clients), "missing": sum(c.missing for c in clients)}
    out.write_text(json.dumps(counts))


def daemon_cost(
    model_dir: Path, repeats: int, count: int, pages: str = "clients", rejects: bool = True
) -> dict[str, Any]:
    """End-to-end frames/s of the daemon alone, and with the dashboard subscribed and 5 pages
    open on it, alternating, at 256 x 256. pages: "clients" asks what 5 pages ask (PageClient);
    "chromium" opens 5 headless Chromium on this machine, whose drawing then shares the
    daemon's cores. rejects: every noise frame fails, the galleries refresh as often as they
    can (the dashboard's worst case); else every frame passes (a line's usual state)."""
    with scratch_dir("vqd") as workdir:
        rates, cores = _alternate(model_dir, workdir, repeats, count, pages, rejects)
    # Each "on" run against the "off" run just before it: the machine's slow drifts cancel.
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True) if off]
    return {"pages": BROWSERS, "as": pages, "rejects": rejects, "off_fps": stats(rates["off"]),
            "on_fps": stats(rates["on"]), "drop": 1.0 - float(np.median(ratios)),
            "cpu_cores": {k: float(np.median(v)) for k, v in cores.items()}}  # fmt: skip


def _alternate(
    model_dir: Path, workdir: Path, repeats: int, count: int, pages: str, rejects: bool
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """daemon_cost's runs, alone ("off") and with the dashboard and its pages ("on"), `repeats`
    times each, alternating -> (frames/s of each mode, the cores the dashboard and pages used)."""
    from benchmarks.daemon import EVERY_FRAME_PASSES, Daemon, _frames_dir, _stream

    folder = _frames_dir((256, 256, 3), workdir)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cores: dict[str, list[float]] = {}
    for r in range(repeats):
        for mode in ("off", "on"):
            daemon = Daemon(model_dir, workdir, 8, 10.0, settings=() if rejects else EVERY_FRAME_PASSES)
            dashboard, drivers, clients = None, [], []
            try:
                if mode == "on":
                    dashboard = _DashboardProcess(daemon.results)
                    if pages == "chromium":
                        drivers = _browsers(dashboard.url, BROWSERS)
                    else:
                        clients = _page_clients(dashboard.url, BROWSERS, workdir / f"pages{r}.json")
                    time.sleep(2.0)  # the pages loaded and follow the events
                watched = _cpu_meter([dashboard.proc.pid] if dashboard else [], [c.pid for c in clients])
                t0 = time.monotonic()
                rates[mode].append(_stream(daemon, folder, count, 0.0, workdir, f"{mode}{r}")["rate_per_s"] or 0.0)
                if dashboard:
                    for key, seconds in watched().items():
                        cores.setdefault(key, []).append(seconds / (time.monotonic() - t0))
            finally:
                for client in clients:
                    client.send_signal(signal.SIGTERM)
                    client.wait(timeout=30)
                for driver in drivers:
                    driver.quit()
                if dashboard:
                    dashboard.stop()
                daemon.stop()
    return rates, cores


def _cpu_meter(dashboard: list[int], pages: list[int]):
    """-> a call that says how many CPU seconds the dashboard, and the page clients, used since."""
    import psutil

    procs = {"dashboard": [psutil.Process(p) for p in dashboard], "pages": [psutil.Process(p) for p in pages]}

    def used() -> dict[str, float]:
        return {k: sum(sum(p.cpu_times()[:2]) for p in ps) for k, ps in procs.items()}

    start = used()
    return lambda: {k: v - start[k] for k, v in used().items()}


def _publish(endpoint: str, rate: float, seconds: float, fail_every: int = 10) -> int:
    """Synthetic results at `rate` per second (a 32 x 32 map each, one in `fail_every` failing)."""
    from edge.protocol import result_header, result_message

    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind(endpoint)
    time.sleep(1.0)  # the dashboard's subscription arrives
    amap = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8).tobytes()
    model = {"name": "bench", "sha256": "0" * 64}
    n, t0 = int(rate * seconds), time.perf_counter()
    for i in range(n):
        fail = i % fail_every == 0
        score = 2.0 if fail else 0.5
        header = result_header(
            f"cam{i % 2}", i, time.time_ns(), "ok", 1.0, model, score=score, decision="fail" if fail else "pass",
            latency_ms={"queue": 1.0, "infer": 5.0, "total": 6.0}, batch_size=8,
            map_info={"shape": [32, 32], "dtype": "uint8", "scale": 0.02},
        )  # fmt: skip
        sock.send_multipart(result_message(header, amap))
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
    sock.close(linger=1000)
    return n


def page_at_rate(rate: float = 200.0, seconds: float = 20.0) -> dict[str, Any]:
    """One page open while the dashboard reads `rate` results/s: how late the page answers,
    how often it redraws, and whether its counts add up to what was published."""
    import psutil

    with scratch_dir("vqp") as workdir:
        endpoint = f"ipc://{workdir}/results"
        dashboard = _DashboardProcess(endpoint)
        (driver,) = _browsers(dashboard.url, 1)
        try:
            driver.execute_script(LAG_PROBE)
            cpu = psutil.Process(dashboard.proc.pid)
            cpu.cpu_percent()
            sent = _publish(endpoint, rate, seconds)
            dashboard_cpu = cpu.cpu_percent() / 100.0
            time.sleep(1.5)
            lags = np.array(driver.execute_script("return window.__lags"))
            stats_js = driver.execute_script("return window.vqadStats")
            shown = sum(
                int(e.text) for e in driver.find_elements("css selector", '[data-field="frames"]') if e.text.isdigit()
            )
            long_tasks = driver.execute_script("return window.__longTasks")
        finally:
            driver.quit()
            dashboard.stop()
        return {
            "results_per_s": rate,
            "seconds": seconds,
            "published": sent,
            "shown": shown,
            "page_lag_ms": {
                "p50": float(np.percentile(lags, 50)),
                "p99": float(np.percentile(lags, 99)),
                "max": float(lags.max()),
            },  # fmt: skip
            "long_tasks": long_tasks,
            "redraws_per_s": stats_js["renders"] / (seconds + 1.5),
            "dashboard_cpu_cores": dashboard_cpu,
        }


def page_memory(rate: float = 200.0, seconds: float = 600.0, every_s: float = 30.0) -> dict[str, Any]:
    """One page open for `seconds` while the dashboard reads `rate` results/s (two cameras, one
    result in ten a reject): the page's JavaScript heap after a garbage collection, its DOM
    nodes and event listeners, and the dashboard's resident memory, every `every_s`. A page on
    the line's monitor stays open for months: what grows here grows for good."""
    import psutil

    from edge.dashboard.browser import page_footprint

    with scratch_dir("vqm") as workdir:
        endpoint = f"ipc://{workdir}/results"
        dashboard = _DashboardProcess(endpoint)
        (driver,) = _browsers(dashboard.url, 1)
        samples = []
        try:
            server = psutil.Process(dashboard.proc.pid)
            publisher = threading.Thread(target=_publish, args=(endpoint, rate, seconds), daemon=True)
            t0 = time.monotonic()
            publisher.start()
            for _ in range(int(seconds / every_s) + 2):  # bounded; the publisher ends after `seconds`
                publisher.join(timeout=every_s)
                samples.append({"s": round(time.monotonic() - t0), **page_footprint(driver),
                                "dashboard_rss_mb": round(server.memory_info().rss / 2**20, 1)})  # fmt: skip
                if not publisher.is_alive():
                    break
        finally:
            driver.quit()
            dashboard.stop()
    return {"results_per_s": rate, "seconds": seconds, "samples": samples}


def bench_dashboard(model_dir: Path, quick: bool = False) -> dict[str, Any]:
    # 1,200 frames is 6 s of streaming: shorter runs measure the processes' start, not the cost.
    from edge.dashboard.browser import BrowserMissingError

    repeats, count = (1, 300) if quick else (3, 1200)
    out: dict[str, Any] = {
        "daemon": daemon_cost(model_dir, repeats, count, pages="clients", rejects=False),
        "daemon_storm": daemon_cost(model_dir, repeats, count, pages="clients", rejects=True),
    }
    try:  # the parts that need a real browser
        out["page"] = page_at_rate(seconds=5.0 if quick else 20.0)
        out["page_memory"] = page_memory(seconds=30.0 if quick else 180.0, every_s=15.0 if quick else 30.0)
        out["daemon_chromium_here"] = daemon_cost(model_dir, repeats, count, pages="chromium", rejects=False)
    except BrowserMissingError as exc:
        out["browser_note"] = str(exc)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--page-memory", type=float, metavar="SECONDS", help="only: one page's memory over this long")
    ap.add_argument("--pages", metavar="URL", help=argparse.SUPPRESS)  # _page_clients' own process
    ap.add_argument("--n", type=int, default=BROWSERS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pages:
        _run_pages(args.pages, args.n, args.out)
    elif args.page_memory:
        print(json.dumps(page_memory(seconds=args.page_memory), indent=2))
    else:
        print(json.dumps(bench_dashboard(args.model, args.quick), indent=2))
