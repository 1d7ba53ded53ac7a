"""A SQLite record on a disk it fills: a line's results into a small filesystem, without
`record_keep_days`, until the rows alone would fill it many times over. Whether every result is
recorded, the free space the disk keeps against `record_min_free_gb`, where the file's size
stops, and the longest housekeeping pass (the writer's pause).

    sudo mount -t tmpfs -o size=100m tmpfs /mnt/small
    python -m benchmarks.record_full /mnt/small [--results 600000] [--floor-mb 30]

DISK must be a filesystem of its own: its free space is what the record leaves of it. The
record is written to DISK/vqad-record-full/, which is removed at the end. Results are
published 5 days before now at 5 a second, so the older ones may leave; they are handed over
at about 3,000 a second, 100 times a line's 30.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

FAIL_EVERY = 50  # 2% fails, each with its frame and overlay as evidence
SPACING_NS = 2 * 10**8
NEWEST_FAILS = 100  # the rejects an operator reviews next: do they still have their images?


def fill(folder: Path, n: int, floor_mb: float) -> dict[str, Any]:
    """Hand `n` results to a RecordWriter in `folder`; -> what was recorded and what its disk kept."""
    from edge.protocol import result_header
    from edge.record import RecordWriter, housekeeping
    from edge.results import Result

    longest = [0.0]
    run = housekeeping.Housekeeping.run

    def timed(self: housekeeping.Housekeeping) -> None:
        t0 = time.perf_counter()
        run(self)
        longest[0] = max(longest[0], time.perf_counter() - t0)

    housekeeping.Housekeeping.run = timed  # type: ignore[method-assign]
    try:
        writer = RecordWriter(f"sqlite:///{folder / 'line.db'}", min_free_gb=floor_mb / 1e3, max_buffer=100_000)
        writer.start()
        frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        model, start = {"name": "bench", "sha256": "0" * 64}, time.time_ns() - 5 * 86400 * 10**9
        peak_pending, min_free, t0 = 0, shutil.disk_usage(folder).free, time.perf_counter()
        for i in range(n):
            fail, at = i % FAIL_EVERY == 0, start + i * SPACING_NS
            header = result_header("cam0", i, at, "ok", 1.0, model, score=2.0 if fail else 0.5,
                                   decision="fail" if fail else "pass", batch_size=1)  # fmt: skip
            writer.put(Result(header, recv_ns=at, frame=frame if fail else None), at)
            if i % 100 == 99:
                time.sleep(0.03)
                peak_pending = max(peak_pending, len(writer.buffer))
                min_free = min(min_free, shutil.disk_usage(folder).free)
        writer.close(timeout=60)  # a full disk (the record of an older vqad) never empties the buffer
    finally:
        housekeeping.Housekeeping.run = run  # type: ignore[method-assign]
    newest_fails = _newest_fails_with_images(f"sqlite:///{folder / 'line.db'}", NEWEST_FAILS)
    return {
        "results": n, "recorded": writer.recorded, "unrecorded": writer.unrecorded,
        "removed_for_space": getattr(writer, "removed_for_space", None), "evidence_removed": writer.evidence_removed,
        "evidence_not_written": writer.evidence_failed, "floor_mb": floor_mb,
        "min_free_mb": round(min_free / 1e6, 1), "end_free_mb": round(shutil.disk_usage(folder).free / 1e6, 1),
        "database_mb": round((folder / "line.db").stat().st_size / 1e6, 1), "peak_pending": peak_pending,
        "longest_housekeeping_s": round(longest[0], 3), "wall_s": round(time.perf_counter() - t0, 1),
        f"newest_{NEWEST_FAILS}_fails_with_images": newest_fails,
    }  # fmt: skip


def _newest_fails_with_images(url: str, n: int) -> int:
    """How many of the record's newest `n` fails have their frame on the disk."""
    from edge.record import Record

    fails = Record(url).results(decision="fail", limit=n)
    return sum(1 for r in fails if r["evidence_frame"] and Path(r["evidence_frame"]).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("disk", type=Path, help="a small filesystem of its own")
    parser.add_argument("--results", type=int, default=600_000)
    parser.add_argument("--floor-mb", type=float, default=30.0, help="record_min_free_gb, in MB")
    args = parser.parse_args()
    folder = args.disk / "vqad-record-full"
    shutil.rmtree(folder, ignore_errors=True)  # a run stopped before its end
    folder.mkdir(parents=True)
    try:
        print(json.dumps(fill(folder, args.results, args.floor_mb), indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
