"""A storm of rejects into a SQLite record: every frame of a 1280 x 1024 colour camera fails at
30 frames/s, so each one's PNG and overlay are written as evidence, slower than they come. The
daemon's memory while the frames wait for their evidence (edge.record.writer.FRAMES_HELD_BYTES),
and how many results were recorded without their images.

    python -m benchmarks.record_storm IMAGE [--seconds 60] [--unbounded]

IMAGE: a camera image (any size; resized to 1280 x 1024), with a little noise added to each
frame as a sensor's. --unbounded lifts the bound, as before it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FPS = 30
SHAPE = (1024, 1280)


def rss_mib() -> float:
    return int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def storm(image: Path, seconds: float, bounded: bool) -> dict[str, Any]:
    import cv2

    from edge.frames import read_image
    from edge.protocol import result_header
    from edge.record import RecordWriter
    from edge.record import writer as writer_module
    from edge.results import Result

    if not bounded:
        writer_module.FRAMES_HELD_BYTES = 1 << 62
    folder = Path(tempfile.mkdtemp(prefix="vqad-storm-"))
    frame = cv2.resize(read_image(image), SHAPE[::-1])
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    rng, model = np.random.default_rng(0), {"name": "m", "sha256": "ab" * 32}
    try:
        writer = RecordWriter(f"sqlite:///{folder / 'line.db'}", folder / "evidence").start()
        start_rss, peak_rss, peak_held, handed, start = rss_mib(), 0.0, 0, 0, time.monotonic()
        while time.monotonic() - start < seconds:
            noisy = cv2.add(frame, rng.integers(0, 8, frame.shape, dtype=np.uint8))
            header = result_header("cam", handed, time.time_ns(), "ok", 1.0, model, score=2.0, decision="fail",
                                   batch_size=1)  # fmt: skip
            writer.put(Result(header, recv_ns=time.time_ns(), frame=noisy), time.time_ns())
            handed += 1
            peak_rss, peak_held = max(peak_rss, rss_mib()), max(peak_held, writer.held.bytes)
            time.sleep(max(0.0, start + handed / FPS - time.monotonic()))
        end_rss, recorded_by_end = rss_mib(), writer.recorded
        writer.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "bounded": bounded, "seconds": seconds, "handed": handed, "recorded_by_the_end": recorded_by_end,
        "recorded": writer.recorded, "without_images": writer.held.let_go,
        "rss_mib": {"start": round(start_rss, 1), "peak": round(peak_rss, 1), "end": round(end_rss, 1)},
        "frames_held_peak_mib": round(peak_held / 2**20, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a camera image")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--unbounded", action="store_true", help="no bound on the frames waiting")
    args = parser.parse_args()
    print(json.dumps(storm(args.image, args.seconds, not args.unbounded), indent=1))


if __name__ == "__main__":
    main()
