"""The daemon end to end: camera process -> daemon process -> subscriber process, over ZeroMQ.

- Throughput at full load (backpressure), as a ratio to the raw backend's throughput at the
  same batch size, both measured in this run.
- Latency p50 / p99 at 50% and 90% of that throughput (the camera paced at that rate).
- The daemon's peak RSS (VmHWM).
- The decoding stage alone: frames a second parsed, decoded and shrunk to the model's input,
  handed on in order, at 1, 2 and 4 `decode_workers`, per encoding (what one receiver thread
  caps a daemon at when a GPU infers, and what more threads buy).

    python -m benchmarks.daemon MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import ROOT, scratch_dir, stats
from edge.inorder import InOrder
from edge.transport import free_loopback_port

# `vqad serve --set` for a daemon whose every frame passes: a threshold no score reaches, and no
# camera health gate (the benchmarks' noise frames are unfit to it, and an unfit frame fails).
EVERY_FRAME_PASSES = ("edge.threshold=1e9", "edge.health.enabled=false")


def raw_backend_fps(model_dir: Path, batch: int, seconds: float = 3.0, workers: int | None = None) -> float:
    """The backend alone, as the daemon configures it (configs/edge.yaml): its inference workers'
    instances (or `workers` of them), each running batches back to back on its own thread."""
    import threading

    from edge.backends import create_backend
    from edge.config import load_config
    from edge.package import load_package
    from edge.settings import EdgeConfig

    overrides = {} if workers is None else {"inference_workers": workers}
    cfg = load_config(EdgeConfig, ROOT / "configs" / "edge.yaml", overrides)
    pkg = load_package(model_dir)
    options = cfg.backend_options() | {"max_batch": batch, "providers": ["CPUExecutionProvider"]}
    backends = [create_backend("onnxruntime", pkg, options) for _ in range(cfg.workers())]
    x = np.random.default_rng(0).integers(0, 255, (batch, *pkg.input_shape), dtype=np.uint8)
    for backend in backends:
        backend.infer(x)
    counts = [0] * len(backends)
    t0 = time.perf_counter()
    stop = t0 + seconds

    def run(i: int) -> None:
        while time.perf_counter() < stop:
            backends[i].infer(x)
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(backends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fps = batch * sum(counts) / (time.perf_counter() - t0)
    for backend in backends:
        backend.close()
    return fps


def _frames_dir(shape: tuple[int, int, int], workdir: Path) -> Path:
    folder = workdir / ("frames_" + "x".join(map(str, shape)))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        image = cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"{i}.png"), image)
    return folder


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Daemon:
    def __init__(
        self,
        model_dir: Path,
        workdir: Path,
        max_batch: int,
        max_delay_ms: float,
        settings: tuple = (),
        transport: str = "ipc",
    ):
        if transport == "ipc":
            self.frames, self.results = f"ipc://{workdir}/frames", f"ipc://{workdir}/results"
        else:
            self.frames, self.results = (f"tcp://127.0.0.1:{free_loopback_port()}" for _ in range(2))
        ready = workdir / "ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vqad.cli",
                "serve",
                str(model_dir),
                "--frames",
                self.frames,
                "--results",
                self.results,
                "--max-batch",
                str(max_batch),
                "--max-delay-ms",
                str(max_delay_ms),
                "--ready-file",
                str(ready),
                "--set",
                f"edge.state_dir={workdir}",
                "--set",
                "edge.log_every_s=60",
                *[arg for kv in settings for arg in ("--set", kv)],
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start")
            time.sleep(0.05)

    def stop(self) -> int:
        rss = _peak_rss(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        return rss


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _stream(daemon: Daemon, folder: Path, count: int, fps: float, workdir: Path, tag: str) -> dict[str, Any]:
    """`count` frames from a camera process through the daemon to a subscriber process: the
    subscriber's summary, the frames `lost`, and the CPU each side used per frame sent."""
    summary = workdir / f"summary-{tag}.json"
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemon_before = _cpu_seconds(daemon.proc.pid)
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vqad.cli",
            "watch",
            daemon.results,
            "--count",
            str(count),
            "--quiet",
            "--timeout",
            "20",
            "--summary-json",
            str(summary),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vqad.cli",
            "camera",
            str(folder),
            "--to",
            daemon.frames,
            "--loop",
            "--count",
            str(count),
            "--fps",
            str(fps),
            "--camera-id",
            tag,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    watch.wait(timeout=300)
    daemon_cpu = _cpu_seconds(daemon.proc.pid) - daemon_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the camera and the subscriber, both waited for
    sides_cpu = sum(getattr(children_after, f) - getattr(children_before, f) for f in ("ru_utime", "ru_stime"))
    result = json.loads(summary.read_text())
    result["lost"] = count - int(result.get("results", 0))
    # Where the cores went: the daemon's (all its threads), and the camera's and the subscriber's
    # (with their start-up), which the raw backend does not share its cores with.
    result["cpu_ms_per_frame"] = {"daemon": 1e3 * daemon_cpu / count, "camera_and_subscriber": 1e3 * sides_cpu / count}
    if result["lost"]:
        print(f"WARNING: {result['lost']} of {count} frames got no result ({tag})", file=sys.stderr)
    return result


def bench_daemon(
    model_dir: Path,
    shapes: tuple[tuple[int, int, int], ...] = ((256, 256, 3), (1024, 1280, 3)),
    max_batch: int = 8,
    max_delay_ms: float = 10.0,
    quick: bool = False,
    repeats: int = 3,
    transport: str = "ipc",
) -> dict[str, Any]:
    from edge.config import load_config
    from edge.settings import EdgeConfig

    edge_cfg = load_config(EdgeConfig, ROOT / "configs" / "edge.yaml", {})
    out: dict[str, Any] = {
        "max_batch": max_batch,
        "max_delay_ms": max_delay_ms,
        "inference_workers": edge_cfg.workers(),
        "intra_op_threads_per_worker": edge_cfg.threads_per_worker(),
        "transport": transport,
    }
    for shape in shapes:
        with scratch_dir("vqb") as workdir:
            out["x".join(map(str, shape))] = _bench_shape(
                model_dir, shape, workdir, max_batch, max_delay_ms, quick, repeats, transport
            )
    out["decoding"] = bench_decoding(model_dir, seconds=1.0 if quick else 3.0)
    return out


def bench_decoding(
    model_dir: Path,
    shape: tuple[int, int, int] = (1024, 1280, 3),
    workers: tuple[int, ...] = (1, 2, 4),
    seconds: float = 3.0,
) -> dict[str, Any]:
    """Frames a second through the daemon's decoding stage alone (edge.protocol.parse_frame and
    edge.frames.InputFormat.frame, as Daemon._decode runs them, handed on in order by
    edge.inorder), per encoding and count of decode threads; 1 is the receiver alone."""
    from edge.package import load_package
    from edge.protocol import Limits, frame_message, parse_frame

    package = load_package(model_dir)
    limits = Limits()  # the protocol's default bounds
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), (0, 0), 3)

    def decode(parts: list) -> np.ndarray:
        return package.input_format.frame(parse_frame(parts, limits, 0, package.pixel_bits).image)

    out: dict[str, Any] = {"frame": "x".join(map(str, shape)), "model_input": list(package.image_size)}
    for encoding in ("raw", "jpeg", "png"):
        parts = [bytes(p) for p in frame_message("bench", 0, image, encoding)]
        rates = {str(n): _decoded_per_s(decode, parts, n, seconds) for n in workers}
        out[encoding] = {"fps_by_decode_workers": rates, "bytes": len(parts[1])}
    return out


def _decoded_per_s(decode: Any, parts: list[bytes], workers: int, seconds: float) -> float:
    """Messages a second `decode` gets through for `seconds`, on the caller's thread (1) or on
    `workers` threads handed on in order, every one finished."""
    stage = None if workers == 1 else InOrder(workers, decode, lambda _: None, 2 * workers, "bench-decode")
    start, sent = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        if stage is None:
            decode(parts)
        else:
            stage.submit(parts)
        sent += 1
    if stage is not None:
        stage.close()
    return sent / (time.perf_counter() - start)


def _bench_shape(
    model_dir: Path,
    shape: tuple[int, int, int],
    workdir: Path,
    max_batch: int,
    max_delay_ms: float,
    quick: bool,
    repeats: int,
    transport: str,
) -> dict[str, Any]:
    """The daemon against its raw backend on frames of one `shape`: throughput, latency under load, CPU."""
    folder = _frames_dir(shape, workdir)
    ratios, e2e, raws, lost, cpu = [], [], [], 0, []
    raws_one, ratios_one = [], []
    daemon = Daemon(model_dir, workdir, max_batch, max_delay_ms, transport=transport)
    try:
        count = 150 if quick else 400
        for r in range(repeats):
            raw = raw_backend_fps(model_dir, max_batch, seconds=2.0 if quick else 4.0)
            raw_one = raw_backend_fps(model_dir, max_batch, seconds=2.0 if quick else 4.0, workers=1)
            s = _stream(daemon, folder, count, 0.0, workdir, f"full{r}")
            fps = s["rate_per_s"] or 0.0
            lost += s["lost"]
            cpu.append(s["cpu_ms_per_frame"])
            raws.append(raw)
            e2e.append(fps)
            ratios.append(fps / raw)
            raws_one.append(raw_one)
            ratios_one.append(fps / raw_one)
        load: dict[str, Any] = {}
        base = float(np.median(e2e))
        for frac in (0.5, 0.9):
            rate = frac * base
            n = int(max(40, rate * (8 if quick else 20)))
            s = _stream(daemon, folder, n, rate, workdir, f"load{int(frac * 100)}")
            load[f"{int(frac * 100)}%"] = {
                "offered_fps": rate,
                "frames": n,
                "latency_ms": s["latency_ms"],
                "by_status": s["by_status"],
            }
            lost += s["lost"]
    finally:
        rss = daemon.stop()
    return {
        "end_to_end_fps": stats(e2e),
        "raw_backend_fps": stats(raws),
        "ratio": stats(ratios),
        # For reference: one backend instance with all the cores (inference_workers = 1).
        "raw_backend_fps_one_worker": stats(raws_one),
        "ratio_to_one_worker": stats(ratios_one),
        "latency_under_load": load,
        # CPU ms per frame at full load, medians: the frames' size shows in both.
        "cpu_ms_per_frame": {k: float(np.median([c[k] for c in cpu])) for k in cpu[0]},
        "daemon_peak_rss_mib": rss / 2**20,
        "frames_without_result": lost,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--transport", choices=("ipc", "tcp"), default="ipc", help="frames and results over ipc:// or 127.0.0.1"
    )
    args = ap.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(bench_daemon(args.model, quick=args.quick, transport=args.transport), indent=2))
