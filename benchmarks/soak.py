"""Soak: the daemon for a long time at 80% of its measured throughput, with 1% malformed
messages mixed in. Not part of CI.

    python -m benchmarks.soak MODEL_DIR [--minutes 10] [--load 0.8] [--malformed 0.01] [--window-s 30]
                                        [--warmup-s 60] [--record [--record-max-gb 0.02]]

Reports frames sent, results by status, frames lost (must be 0), the daemon's RSS at the
start and the end (growth must stay under 5%), and p99 latency and RSS per time window.
"Start" is after a warm-up at the soak's own rate (default 60 s, counted in the run): the
allocators' first growth to the working set is not a leak. The RSS right after startup is
reported too, so the warm-up's share is visible.

The frames cycle through 16 noise images, so that no two in a row are alike (the camera health
gate fails a frame identical to the camera's previous one). With `--record` the daemon records
every result in a SQLite file, keeping the frame and overlay of 10% of the passes, under an
evidence quota small enough that the oldest evidence is removed throughout; every frame passes
(`benchmarks.daemon.EVERY_FRAME_PASSES`, as in `benchmarks.record`). The soak then also
requires a row for every result and the evidence within its quota.
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

from benchmarks.daemon import EVERY_FRAME_PASSES, Daemon
from edge.protocol import frame_message, parse_result
from edge.record.writer import BATCH_ROWS

# With --record: the share of passes whose frame and overlay are kept (configs/edge.yaml's default).
PASS_FRACTION = 0.1


def run_soak(
    model_dir: Path,
    minutes: float = 10.0,
    load: float = 0.8,
    malformed: float = 0.01,
    window_s: float = 30.0,
    warmup_s: float = 60.0,
    shape: tuple[int, int, int] = (256, 256, 3),
    record_max_gb: float | None = None,
) -> dict[str, Any]:
    """record_max_gb: record every result with this evidence quota (None: no record)."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="vqs", dir="/tmp"))
    database, evidence = workdir / "line.db", workdir / "evidence"
    settings = ()
    if record_max_gb is not None:
        settings = (
            f"edge.record=sqlite:///{database}",
            f"edge.evidence_dir={evidence}",
            f"edge.record_pass_fraction={PASS_FRACTION}",
            f"edge.record_max_gb={record_max_gb}",
            *EVERY_FRAME_PASSES,
        )
    daemon = Daemon(model_dir, workdir, max_batch=8, max_delay_ms=10.0, settings=settings)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"result.")
    sub.connect(daemon.results)
    push = ctx.socket(zmq.PUSH)
    push.connect(daemon.frames)
    time.sleep(0.5)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(16)]
    good = frame_message("soak", 0, frames[0])

    received: dict[int, str] = {}
    latencies: list[tuple[float, float]] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set() or sub.poll(2000):
            if sub.poll(100):
                h, _ = parse_result(sub.recv_multipart())
                received[h["frame_id"]] = h["status"]
                if h["status"] == "ok":
                    latencies.append((time.monotonic(), h["latency_ms"]["total"]))

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    # Measure throughput first: a burst of 200 frames under backpressure.
    t0 = time.monotonic()
    for i in range(200):
        push.send_multipart(frame_message("soak", i, frames[i % len(frames)]))
    while len(received) < 200 and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    throughput = len(received) / (time.monotonic() - t0)
    rate = load * throughput
    proc = psutil.Process(daemon.proc.pid)
    rss_after_startup = proc.memory_info().rss
    rss_start = None
    rss_windows: list[dict[str, float]] = []
    next_rss_t = time.monotonic()
    sent_valid, sent_bad, fid = 200, 0, 200
    malformed_ids = set()
    t_start = time.monotonic()
    deadline = t_start + minutes * 60
    while time.monotonic() < deadline:
        if rng.random() < malformed:
            header = json.loads(good[0])
            header.update(frame_id=fid, shape=[7, 7, 3])  # byte count mismatch: must get an error result
            push.send_multipart([json.dumps(header).encode(), good[1]])
            malformed_ids.add(fid)
            sent_bad += 1
        else:
            push.send_multipart(frame_message("soak", fid, frames[fid % len(frames)]))
            sent_valid += 1
        fid += 1
        now = time.monotonic()
        if rss_start is None and now - t_start >= min(warmup_s, 0.5 * minutes * 60):
            rss_start = proc.memory_info().rss
        if now >= next_rss_t:
            rss_windows.append({"t_s": round(now - t_start, 1), "rss_mib": proc.memory_info().rss / 2**20})
            next_rss_t = now + window_s
        time.sleep(max(0.0, t_start + (fid - 200) / rate - time.monotonic()))
    # Let the daemon work off any backlog before stopping it: a frame still queued in ZeroMQ
    # when the daemon stops was never accepted, and would count as lost here.
    last, idle_since = -1, time.monotonic()
    while len(received) < fid and time.monotonic() - idle_since < 10:
        if len(received) != last:
            last, idle_since = len(received), time.monotonic()
        time.sleep(0.2)
    rss_end = proc.memory_info().rss
    rss_start = rss_start or rss_after_startup
    daemon.stop()
    stop.set()
    reader.join(timeout=10)
    by_status: dict[str, int] = {}
    for status in received.values():
        by_status[status] = by_status.get(status, 0) + 1
    lost = fid - len(received)
    wrong = sum(1 for i in malformed_ids if received.get(i) != "error")
    record = None if record_max_gb is None else _record_summary(database, evidence, record_max_gb, len(received))
    windows = []
    for w0 in np.arange(t_start, deadline, window_s):
        lat = [v for t, v in latencies if w0 <= t < w0 + window_s]
        if lat:
            windows.append(
                {"t_s": round(float(w0 - t_start), 1), "n": len(lat), "p99_ms": float(np.percentile(lat, 99))}
            )
    return {
        "minutes": minutes,
        "measured_throughput_fps": throughput,
        "offered_fps": rate,
        "frame_shape": list(shape),
        "frames_sent": fid,
        "valid_sent": sent_valid,
        "malformed_sent": sent_bad,
        "results_by_status": by_status,
        "frames_lost": lost,
        "malformed_without_error_result": wrong,
        "rss_after_startup_mib": rss_after_startup / 2**20,
        "warmup_s": warmup_s,
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "rss_growth": (rss_end - rss_start) / rss_start,
        "p99_latency_windows": windows,
        "rss_windows": rss_windows,
        "record": record,
        "passed": lost == 0
        and wrong == 0
        and (rss_end - rss_start) / rss_start < 0.05
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
    args = ap.parse_args()
    result = run_soak(
        args.model,
        args.minutes,
        args.load,
        args.malformed,
        args.window_s,
        args.warmup_s,
        record_max_gb=args.record_max_gb if args.record else None,
    )
    print(json.dumps(result, indent=2))
    raise SystemExit(0 if result["passed"] else 1)
