"""The line's record: the rows per second its writer sustains into SQLite and PostgreSQL, what
the dashboard's queries cost over a week of results, and what recording costs the daemon's
throughput (256 x 256 frames, evidence for 10% of them).

    python -m benchmarks.record MODEL [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import scratch_dir, stats


def writer_rows_per_s(url: str, n: int) -> float:
    """Results handed to a RecordWriter as fast as it takes them, until all are committed."""
    from edge.protocol import result_header
    from edge.record import RecordWriter
    from edge.results import Result

    model = {"name": "bench", "sha256": "0" * 64}
    results = [
        Result(result_header("cam", i, time.time_ns(), "ok", 1.0, model, score=0.5, decision="pass", batch_size=8))
        for i in range(n)
    ]
    with scratch_dir("vqad-ev-") as evidence:
        writer = RecordWriter(url, evidence, max_buffer=n + 1)
        t0 = time.perf_counter()
        writer.start()
        for r in results:
            writer.put(r, time.time_ns())
        writer.close(timeout=600)
        return writer.recorded / (time.perf_counter() - t0)


def daemon_cost(model_dir: Path, repeats: int, count: int) -> dict[str, Any]:
    """End-to-end frames/s of the daemon with and without the record (SQLite, evidence for 10%
    of the passes and every fail), alternating, at 256 x 256."""
    with scratch_dir("vqr") as workdir:
        rates = _alternate(model_dir, workdir, repeats, count)
    ratio = float(np.median(rates["on"]) / np.median(rates["off"]))
    return {"off_fps": stats(rates["off"]), "on_fps": stats(rates["on"]), "ratio": ratio, "cost": 1.0 - ratio}


def _alternate(model_dir: Path, workdir: Path, repeats: int, count: int) -> dict[str, list[float]]:
    """daemon_cost's runs without the record ("off") and with it ("on"), `repeats` times each,
    alternating -> frames/s of each mode."""
    from benchmarks.daemon import EVERY_FRAME_PASSES, Daemon, _frames_dir, _stream

    folder = _frames_dir((256, 256, 3), workdir)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    # Every frame passes (the bench's frames are noise, which a model and the camera health gate
    # fail), so that evidence is kept for record_pass_fraction = 10% of them, the figure's
    # condition; both modes alike.
    for r in range(repeats):
        for mode in ("off", "on"):
            record = (f"edge.record=sqlite:///{workdir}/line{r}.db", "edge.record_pass_fraction=0.1")
            daemon = Daemon(model_dir, workdir, 8, 10.0, settings=EVERY_FRAME_PASSES + (record if mode == "on" else ()))
            try:
                rates[mode].append(_stream(daemon, folder, count, 0.0, workdir, f"{mode}{r}")["rate_per_s"] or 0.0)
            finally:
                daemon.stop()
    return rates


def record_queries_cost(n: int, days: int = 7) -> dict[str, Any]:
    """What the dashboard's queries cost over a SQLite record of `n` results of one camera,
    spread evenly over the line's last `days` days (Europe/Berlin, from 06:00; today's share up
    to now), 1% of them fails, 100 reviewed: the daily tally counted afresh (Record.daily; each page's minute before
    edge.dashboard.daily), the page's daily ask once closed days are held (today's results and
    the reviews), a camera's gallery of its 24 newest rejects (asked up to twice a second), and
    the page's review of yesterday's unreviewed fails."""
    with scratch_dir("vqad-db-") as folder:
        return _queries_cost(f"sqlite:///{folder}/daily.db", n, days)


def _queries_cost(url: str, n: int, days: int) -> dict[str, Any]:
    import sqlalchemy as sa

    from edge.dashboard import daily
    from edge.record import Record
    from edge.record.days import ProductionDays
    from edge.record.schema import migrate, results, reviews
    from edge.record.store import WHOLE_FRAME

    # A plant's days: its zone, summer time included, from its first shift's start.
    line_days = ProductionDays.parse("Europe/Berlin", "06:00")
    engine = sa.create_engine(url)
    migrate(engine)
    now = time.time_ns()
    today_ns = line_days.start_ns(line_days.today(now))
    since = line_days.start_ns(line_days.today(now) - dt.timedelta(days=days - 1))
    step, rng = (now - since) // n, np.random.default_rng(0)
    fails = rng.random(n) < 0.01
    base = {"camera_id": "cam0", "status": "ok", "score": 1.0, "threshold": 2.0, "model_name": "bench",
            "model_sha256": "0" * 64, "regions": [], "batch_size": 8, "evidence_removed": False}  # fmt: skip
    with engine.begin() as conn:
        for start in range(0, n, 100_000):
            rows = [{**base, "frame_id": i, "ts_ns": since + i * step, "decision": "fail" if fails[i] else "pass"}
                    for i in range(start, min(n, start + 100_000))]  # fmt: skip
            conn.execute(sa.insert(results), rows)
        # The rows' ids count from 1 in frame order: frame i is result i + 1.
        reviewed = [{"camera_id": "cam0", "frame_id": int(i), "verdict": "defect", "created_ns": now,
                     "result_id": int(i) + 1} for i in np.flatnonzero(fails)[:100]]  # fmt: skip
        conn.execute(sa.insert(reviews), reviewed)
    engine.dispose()
    record = Record(url)
    t0 = time.perf_counter()
    expected = record.daily(since_ns=since, days=line_days)
    afresh = time.perf_counter() - t0
    tally = daily.DailyTally(line_days)
    tally.rows(record, None, since)  # the first ask counts the closed days
    fresh, daily.FRESH_S = daily.FRESH_S, 0.0
    try:
        t0 = time.perf_counter()
        held = tally.rows(record, None, since)
        minute = time.perf_counter() - t0
    finally:
        daily.FRESH_S = fresh
        record.close()
    if held != expected:
        raise RuntimeError("the held daily tally differs from Record.daily")
    record = Record(url)
    t0 = time.perf_counter()
    for _ in range(10):
        record.results(camera="cam0", decision="fail", limit=24)
    gallery = (time.perf_counter() - t0) / 10
    # The page's review of a day's unreviewed fails: yesterday's, up to 1,000 (one answer).
    since_ns, until_ns = line_days.period_ns(line_days.today(now) - dt.timedelta(days=1))
    t0 = time.perf_counter()
    queue = record.results(camera="cam0", decision="fail", reviewed=False, model_sha256="0" * 64, limit=1000,
                           since_ns=since_ns, until_ns=until_ns, mask_sha256=WHOLE_FRAME)  # fmt: skip
    queue_s = time.perf_counter() - t0
    record.close()
    if any(r["reviews"] for r in queue):
        raise RuntimeError("the review queue holds a reviewed result")
    today = int((np.arange(n) * step + since >= today_ns).sum())
    return {"rows": n, "rows_today": today, "daily_s": round(afresh, 3), "page_ask_s": round(minute, 3),
            "gallery_s": round(gallery, 4), "review_queue_s": round(queue_s, 4),
            "review_queue_rows": len(queue)}  # fmt: skip


def bench_record(model_dir: Path, quick: bool = False) -> dict[str, Any]:
    from benchmarks.postgres import throwaway_postgres

    n = 5_000 if quick else 50_000
    out: dict[str, Any] = {"rows": n}
    with scratch_dir("vqad-db-") as folder:
        out["sqlite_rows_per_s"] = writer_rows_per_s(f"sqlite:///{folder}/bench.db", n)
    try:
        with throwaway_postgres(port=5441) as url:
            out["postgresql_rows_per_s"] = writer_rows_per_s(url, n)
    except (FileNotFoundError, OSError) as exc:
        out["postgresql_rows_per_s"] = None
        out["postgresql_note"] = str(exc)
    out["queries"] = record_queries_cost(200_000 if quick else 2_000_000)
    out["daemon"] = daemon_cost(model_dir, repeats=1 if quick else 3, count=150 if quick else 400)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(json.dumps(bench_record(args.model, args.quick), indent=2))
