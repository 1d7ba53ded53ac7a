"""Soak: the daemon for a long time at 80% of its measured throughput, with 1% malformed
messages mixed in. Not part of CI.

    python -m benchmarks.soak MODEL_DIR [--minutes 10] [--load 0.8] [--malformed 0.01] [--window-s 30]
                                        [--warmup-s 60] [--record [--record-max-gb 0.02]] [--reload-every-s S]
                                        [--encoding raw|jpeg|png] [--decode-workers N]

Reports frames sent, results by status, frames lost (must be 0), the daemon's RSS at the
start and the end (growth must stay under 5%), its open file descriptors and threads (at most
HANDLES_SLACK more at the end), and p99 latency, RSS and handles per time window.
"Start" is after a warm-up at the soak's own rate (default 60 s, counted in the run): the
allocators' first growth to the working set is not a leak. The RSS right after startup is
reported too, so the warm-up's share is visible.

The frames cycle through 16 noise images, so that no two in a row are alike (the camera health
gate fails a frame identical to the camera's previous one). With `--record` the daemon records
every result in a SQLite file, keeping the frame and overlay of 10% of the passes, under an
evidence quota small enough that the oldest evidence is removed throughout; every frame passes
(`benchmarks.daemon.EVERY_FRAME_PASSES`, as in `benchmarks.record`). The soak then also
requires a row for every result and the evidence within its quota. With `--reload-every-s S`
the model is reloaded through the control socket (`vqad ctl reload`) every S seconds from the
RSS "start" on, as a line that updates its model; every reload must succeed, and the growth
then covers them. With `--encoding png` (or jpeg) the frames travel encoded, and with
`--decode-workers N` the daemon decodes them on N threads (edge.decode_workers; 0: its default):
the malformed frames' error results then come through the pool that keeps the frames in order.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from benchmarks.common import scratch_dir
from benchmarks.daemon import EVERY_FRAME_PASSES, Daemon
from edge.control import request
from edge.errors import VqadError
from edge.protocol import frame_message, parse_result
from edge.record.writer import BATCH_ROWS

# With --record: the share of passes whose frame and overlay are kept (configs/edge.yaml's default).
PASS_FRACTION = 0.1


# File descriptors or threads the daemon may hold at the end over the start: a reload in flight
# (its new session's threads) or a reconnecting socket; a leak grows with every reload or hour.
HANDLES_SLACK = 8

# The burst that measures the throughput the soak offers a share of.
BURST_FRAMES = 200


class Soak:
    """A daemon, a sender and a subscriber thread that keeps every result's status and latency."""

    def __init__(
        self, model_dir: Path, workdir: Path, settings: tuple[str, ...], shape: tuple[int, int, int], encoding: str
    ):
        self.daemon = Daemon(model_dir, workdir, max_batch=8, max_delay_ms=10.0, settings=settings)
        ctx = zmq.Context.instance()
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"result.")
        self.sub.connect(self.daemon.results)
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(self.daemon.frames)
        time.sleep(0.5)
        self.rng = np.random.default_rng(0)
        images = [self.rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(16)]
        # Encoded once: the sender must not be what sets the pace.
        self.frames = images if encoding == "raw" else [frame_message("", 0, im, encoding)[1] for im in images]
        self.encoding = encoding
        self.received: dict[int, str] = {}
        self.latencies: list[tuple[float, float]] = []  # (when, total latency ms) of ok results
        self.malformed_ids: set[int] = set()
        self.sent = 0
        self.stopping = threading.Event()
        self.reader = threading.Thread(target=self._receive, daemon=True)
        self.reader.start()
        self.proc = psutil.Process(self.daemon.proc.pid)
        self.reloads = {"ok": 0, "failed": 0}
        self.reloads_end = threading.Event()
        self.reloader: threading.Thread | None = None

    def _receive(self) -> None:
        while not self.stopping.is_set() or self.sub.poll(2000):
            if self.sub.poll(100):
                h, _ = parse_result(self.sub.recv_multipart())
                self.received[h["frame_id"]] = h["status"]
                if h["status"] == "ok":
                    self.latencies.append((time.monotonic(), h["latency_ms"]["total"]))

    def send(self, malformed: bool) -> None:
        """The next frame; a malformed one (its byte count does not match its shape) must get an
        error result."""
        message = frame_message("soak", self.sent, self.frames[self.sent % len(self.frames)], self.encoding)
        if malformed:
            header = json.loads(message[0])
            header["shape"] = [7, 7, 3]
            message[0] = json.dumps(header).encode()
            self.malformed_ids.add(self.sent)
        self.push.send_multipart(message)
        self.sent += 1

    def burst_throughput(self) -> float:
        """Frames a second over a burst of BURST_FRAMES under backpressure."""
        t0 = time.monotonic()
        for _ in range(BURST_FRAMES):
            self.send(malformed=False)
        while len(self.received) < BURST_FRAMES and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        return len(self.received) / (time.monotonic() - t0)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def handles(self) -> dict[str, int]:
        """The daemon's open file descriptors (sockets, files, the record's) and threads: a leak of
        either ends a daemon after months (systemd's LimitNOFILE) that no RSS figure shows."""
        return {"fds": self.proc.num_fds(), "threads": self.proc.num_threads()}

    def reload_every(self, control: str, every_s: float) -> None:
        """Reload the model through `control` every `every_s` seconds, in a thread, until
        end_reloads()."""

        def reload() -> None:
            while not self.reloads_end.wait(every_s):
                try:
                    ok = request(control, "reload", {}, "soak", timeout_s=60)["ok"]
                except VqadError:  # no answer: a failed reload, counted
                    ok = False
                self.reloads["ok" if ok else "failed"] += 1

        self.reloader = threading.Thread(target=reload, daemon=True)
        self.reloader.start()

    def end_reloads(self) -> None:
        """No reload after this, and the one in flight has answered: the RSS read next is of one
        model, not of the two a reload holds for a moment."""
        self.reloads_end.set()
        if self.reloader is not None:
            self.reloader.join(timeout=70)  # a reload's request times out at 60 s

    def drain(self) -> None:
        """Let the daemon work off its backlog: a frame still queued in ZeroMQ when the daemon
        stops was never accepted, and would count as lost."""
        last, idle_since = -1, time.monotonic()
        while len(self.received) < self.sent and time.monotonic() - idle_since < 10:
            if len(self.received) != last:
                last, idle_since = len(self.received), time.monotonic()
            time.sleep(0.2)

    def stop(self) -> None:
        self.end_reloads()
        self.daemon.stop()
        self.stopping.set()
        self.reader.join(timeout=10)

    def p99_windows(self, t_start: float, deadline: float, window_s: float) -> list[dict[str, float]]:
        windows = []
        for w0 in np.arange(t_start, deadline, window_s):
            lat = [v for t, v in self.latencies if w0 <= t < w0 + window_s]
            if lat:
                windows.append(
                    {"t_s": round(float(w0 - t_start), 1), "n": len(lat), "p99_ms": float(np.percentile(lat, 99))}
                )
        return windows


def run_soak(
    model_dir: Path,
    minutes: float = 10.0,
    load: float = 0.8,
    malformed: float = 0.01,
    window_s: float = 30.0,
    warmup_s: float = 60.0,
    shape: tuple[int, int, int] = (256, 256, 3),
    record_max_gb: float | None = None,
    reload_every_s: float = 0.0,
    encoding: str = "raw",
    decode_workers: int = 0,
) -> dict[str, Any]:
    """record_max_gb: record every result with this evidence quota (None: no record);
    reload_every_s: reload the model this often after the warm-up (0: never); encoding: how
    the frames travel; decode_workers: edge.decode_workers (0: the daemon's default)."""
    with scratch_dir("vqs") as workdir:
        return _soak(
            workdir, model_dir, minutes, load, malformed, window_s, warmup_s, shape, record_max_gb, reload_every_s,
            encoding, decode_workers,
        )  # fmt: skip


def _soak(
    workdir: Path, model_dir: Path, minutes: float, load: float, malformed: float, window_s: float, warmup_s: float,
    shape: tuple[int, int, int], record_max_gb: float | None, reload_every_s: float, encoding: str,
    decode_workers: int,
) -> dict[str, Any]:  # fmt: skip
    database, evidence, control = workdir / "line.db", workdir / "evidence", f"ipc://{workdir}/control"
    settings: tuple[str, ...] = (f"edge.control_endpoint={control}",) if reload_every_s > 0 else ()
    settings += (f"edge.decode_workers={decode_workers}",)
    if record_max_gb is not None:
        settings += (
            f"edge.record=sqlite:///{database}",
            f"edge.evidence_dir={evidence}",
            f"edge.record_pass_fraction={PASS_FRACTION}",
            f"edge.record_max_gb={record_max_gb}",
            *EVERY_FRAME_PASSES,
        )
    soak = Soak(model_dir, workdir, settings, shape, encoding)
    throughput = soak.burst_throughput()
    rate = load * throughput
    rss_after_startup = soak.rss()
    rss_start = None
    handles_start = soak.handles()
    rss_windows: list[dict[str, float]] = []
    next_rss_t = t_start = time.monotonic()
    deadline = t_start + minutes * 60
    while time.monotonic() < deadline:
        soak.send(malformed=bool(soak.rng.random() < malformed))
        now = time.monotonic()
        if rss_start is None and now - t_start >= min(warmup_s, 0.5 * minutes * 60):
            rss_start, handles_start = soak.rss(), soak.handles()
            if reload_every_s > 0:
                soak.reload_every(control, reload_every_s)
        if now >= next_rss_t:
            rss_windows.append({"t_s": round(now - t_start, 1), "rss_mib": soak.rss() / 2**20, **soak.handles()})
            next_rss_t = now + window_s
        time.sleep(max(0.0, t_start + (soak.sent - BURST_FRAMES) / rate - time.monotonic()))
    soak.end_reloads()
    soak.drain()
    rss_end, handles_end = soak.rss(), soak.handles()
    rss_start = rss_start or rss_after_startup
    handles_grown = {k: handles_end[k] - handles_start[k] for k in handles_end}
    soak.stop()
    by_status: dict[str, int] = {}
    for status in soak.received.values():
        by_status[status] = by_status.get(status, 0) + 1
    lost = soak.sent - len(soak.received)
    wrong = sum(1 for i in soak.malformed_ids if soak.received.get(i) != "error")
    record = None if record_max_gb is None else _record_summary(database, evidence, record_max_gb, len(soak.received))
    return {
        "minutes": minutes,
        "measured_throughput_fps": throughput,
        "offered_fps": rate,
        "frame_shape": list(shape),
        "encoding": encoding,
        "decode_workers": decode_workers,
        "frames_sent": soak.sent,
        "valid_sent": soak.sent - len(soak.malformed_ids),
        "malformed_sent": len(soak.malformed_ids),
        "results_by_status": by_status,
        "frames_lost": lost,
        "malformed_without_error_result": wrong,
        "rss_after_startup_mib": rss_after_startup / 2**20,
        "warmup_s": warmup_s,
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "rss_growth": (rss_end - rss_start) / rss_start,
        "p99_latency_windows": soak.p99_windows(t_start, deadline, window_s),
        "rss_windows": rss_windows,
        "handles_start": handles_start,
        "handles_end": handles_end,
        "record": record,
        "reload_every_s": reload_every_s,
        "reloads": soak.reloads,
        "passed": lost == 0
        and wrong == 0
        and soak.reloads["failed"] == 0
        and (rss_end - rss_start) / rss_start < 0.05
        and all(grown <= HANDLES_SLACK for grown in handles_grown.values())
        and (record is None or record["passed"]),
    }


def _record_summary(database: Path, evidence: Path, max_gb: float, answered: int) -> dict[str, Any]:
    """What the record kept: a row for each of the `answered` results, and the evidence within
    its quota (plus the files of one writer batch, which the writer trims after committing it)."""
    with sqlite3.connect(database) as conn:
        rows, kept, removed = conn.execute(
            "SELECT COUNT(*), COUNT(evidence_frame) - SUM(evidence_removed), SUM(evidence_removed) FROM results"
        ).fetchone()
    sizes = [p.stat().st_size for p in evidence.rglob("*") if p.is_file()]
    evidence_bytes = sum(sizes)
    quota = int(max_gb * 1e9)
    batch_slack = BATCH_ROWS * PASS_FRACTION * 2 * max(sizes, default=0)  # a batch's frames and overlays
    return {
        "rows": rows,
        "results_answered": answered,
        "evidence_kept": kept,
        "evidence_removed": removed,
        "evidence_mb": evidence_bytes / 1e6,
        "quota_mb": quota / 1e6,
        "passed": rows == answered and evidence_bytes <= quota + batch_slack,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--malformed", type=float, default=0.01)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS 'start' is taken after this")
    ap.add_argument("--record", action="store_true", help="record every result in SQLite, under an evidence quota")
    ap.add_argument("--record-max-gb", type=float, default=0.02, help="the evidence quota with --record")
    ap.add_argument("--reload-every-s", type=float, default=0.0, help="reload the model this often (0 = never)")
    ap.add_argument("--encoding", choices=("raw", "jpeg", "png"), default="raw", help="how the frames travel")
    ap.add_argument("--decode-workers", type=int, default=0, help="edge.decode_workers (0 = the daemon's default)")
    args = ap.parse_args()
    result = run_soak(
        args.model,
        args.minutes,
        args.load,
        args.malformed,
        args.window_s,
        args.warmup_s,
        record_max_gb=args.record_max_gb if args.record else None,
        reload_every_s=args.reload_every_s,
        encoding=args.encoding,
        decode_workers=args.decode_workers,
    )
    print(json.dumps(result, indent=2))
    raise SystemExit(0 if result["passed"] else 1)
