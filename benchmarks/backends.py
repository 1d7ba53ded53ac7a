"""Backends: throughput and latency per batch for PyTorch eager, ONNX Runtime FP32 and FP16,
and TensorRT FP16 where tensorrt and a GPU exist; FLOPs per frame and achieved FLOP/s.

    python -m benchmarks.backends RUN_DIR MODEL_DIR [--batch-sizes 1,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, stats


def model_flops(run_dir: Path) -> dict[str, float]:
    """FLOPs of one frame through the exported forward, counted by torch's FlopCounterMode
    (every aten op: convolutions, matmuls), for the whole model and per part."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from train.model import uint8_nhwc_to_float
    from train.run import load_run

    model = load_run(run_dir).model.eval()
    cfg = model.cfg
    frames = torch.zeros(1, *cfg.image_size, cfg.channels, dtype=torch.uint8)
    with torch.no_grad():
        with FlopCounterMode(display=False) as total:
            model(frames)
        x01 = uint8_nhwc_to_float(frames)
        with FlopCounterMode(display=False) as vq:
            model.reconstruct(x01)
    out = {"total": float(total.get_total_flops()), "vqvae": float(vq.get_total_flops())}
    out["scoring_and_head"] = out["total"] - out["vqvae"]
    return out


def _time_backend(
    infer: Callable[[np.ndarray], Any], frames: np.ndarray, batch: int, repeats: int, min_seconds: float
) -> dict[str, Any]:
    x = frames[:batch]
    for _ in range(2):
        infer(x)
    latencies = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            infer(x)
            n += 1
            if time.perf_counter() - t0 >= min_seconds:
                break
        latencies.append((time.perf_counter() - t0) / n)
    lat = stats([v * 1000 for v in latencies])
    fps = stats([batch / v for v in latencies])
    return {"latency_ms_per_batch": lat, "frames_per_s": fps}


def bench_backends(
    run_dir: Path,
    model_dir: Path,
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16),
    repeats: int = 5,
    min_seconds: float = 0.5,
) -> dict[str, Any]:
    import torch

    from edge.backends import create_backend
    from edge.package import load_package
    from train.run import load_run

    pkg = load_package(model_dir)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (max(batch_sizes), *pkg.input_shape), dtype=np.uint8)
    model = load_run(run_dir).model.eval()

    def torch_infer(x: np.ndarray) -> None:
        with torch.no_grad():
            model(torch.from_numpy(x))

    runners: dict[str, Any] = {"pytorch_eager": torch_infer}
    for precision in ("fp32", "fp16"):
        backend = create_backend(
            "onnxruntime",
            pkg,
            {"precision": precision, "max_batch": max(batch_sizes), "providers": ["CPUExecutionProvider"]},
        )
        runners[f"onnxruntime_{precision}"] = backend.infer
    results: dict[str, Any] = {"batch_sizes": list(batch_sizes), "torch_threads": torch.get_num_threads()}
    try:
        trt = create_backend("tensorrt", pkg, {"max_batch": max(batch_sizes)})
        runners["tensorrt_fp16"] = trt.infer
    except Exception as exc:  # noqa: BLE001 - whatever stops TensorRT here is reported, not raised
        results["tensorrt_fp16"] = {"measured": False, "reason": str(exc).split(":")[0][:200]}
    for name, infer in runners.items():
        results[name] = {str(b): _time_backend(infer, frames, b, repeats, min_seconds) for b in batch_sizes}
    flops = model_flops(run_dir)
    peak = machine()["cpu_peak"]
    results["flops_per_frame"] = flops
    results["cpu_peak"] = peak
    for name in runners:
        for fig in results[name].values():
            achieved = flops["total"] * fig["frames_per_s"]["median"]
            fig["achieved_gflops"] = achieved / 1e9
            fig["fraction_of_cpu_peak"] = achieved / peak["peak_flops"] if name != "tensorrt_fp16" else None
    for b in map(str, batch_sizes):
        results.setdefault("ort_fp32_over_torch", {})[b] = (
            results["onnxruntime_fp32"][b]["frames_per_s"]["median"]
            / results["pytorch_eager"][b]["frames_per_s"]["median"]
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    args = ap.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    print(json.dumps(bench_backends(args.run, args.model, sizes), indent=2, default=str))


if __name__ == "__main__":
    main()
