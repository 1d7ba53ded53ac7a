"""Transport ceiling: raw pyzmq PUSH -> PULL throughput of camera-sized frames over ipc://
and tcp://127.0.0.1, sender and receiver in separate processes.

    python -m benchmarks.transport
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import zmq

from benchmarks.common import scratch_dir, stats

SENDER = """
import sys, json, zmq, numpy as np
endpoint, h, w, c, n = sys.argv[1], *map(int, sys.argv[2:6])
ctx = zmq.Context(); sock = ctx.socket(zmq.PUSH); sock.connect(endpoint)
payload = np.random.default_rng(0).integers(0, 255, h * w * c, dtype=np.uint8).tobytes()
header = json.dumps({"v": 1, "camera_id": "t", "frame_id": 0, "shape": [h, w, c]}).encode()
for _ in range(n):
    sock.send_multipart([header, payload])
sock.close(linger=-1)
ctx.term()  # queued frames leave only here: a process that just exits drops them
"""


def one_run(endpoint: str, shape: tuple[int, int, int], n: int) -> float:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, 30000)  # a sender that died must not hang the benchmark
    sock.bind(endpoint)
    real = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    proc = subprocess.Popen([sys.executable, "-c", SENDER, real, *map(str, shape), str(n)])
    try:
        sock.recv_multipart(copy=False)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            sock.recv_multipart(copy=False)
        seconds = time.perf_counter() - t0
    finally:
        proc.wait(timeout=60)
        sock.close(linger=0)
    return (n - 1) / seconds


def bench_transport(
    shapes: tuple[tuple[int, int, int], ...] = ((256, 256, 3), (1024, 1280, 3)), repeats: int = 3, quick: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in shapes:
        frame_bytes = shape[0] * shape[1] * shape[2]
        n = max(50, min(5000, int((300 if quick else 1500) * 196608 / frame_bytes)))
        key = "x".join(map(str, shape))
        out[key] = {}
        for scheme in ("ipc", "tcp"):
            fps = []
            for _ in range(repeats):
                with scratch_dir("vqt") as folder:
                    fps.append(one_run(f"ipc://{folder}/t" if scheme == "ipc" else "tcp://127.0.0.1:*", shape, n))
            s = stats(fps)
            out[key][scheme] = {
                "frames_per_s": s,
                "gbytes_per_s": frame_bytes * s["median"] / 1e9,
                "frames": n,
            }
    return out


if __name__ == "__main__":
    print(json.dumps(bench_transport(quick="--quick" in sys.argv), indent=2))
