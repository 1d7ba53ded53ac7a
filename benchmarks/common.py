"""Shared helpers: machine description, repeated measurements, the report file."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A folder of its own for one measurement's sockets, frames and databases, removed when the
    measurement ends, also by an error: a record of two million rows or a soak's evidence would
    otherwise stay behind in /tmp after each run. Under /tmp with a short name, because an
    ipc:// path must stay under about 100 characters."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp", ignore_cleanup_errors=True) as path:
        yield Path(path)


def stats(values: list[float]) -> dict[str, float]:
    """Median with min and max: how every figure is reported."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def repeat(fn: Callable[[], float], n: int) -> dict[str, float]:
    return stats([fn() for _ in range(n)])


def cpu_info() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", text)
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", text)
    flags = set((re.search(r"flags\s*:\s*(.+)", text) or re.search("(.*)", "")).group(1).split())
    mem = 0
    if Path("/proc/meminfo").exists():
        m = re.search(r"MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text())
        mem = int(m.group(1)) * 1024 if m else 0
    return {
        "model": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "mhz": float(mhz.group(1)) if mhz else None,
        "flags": flags,
        "memory_bytes": mem,
    }


def cpu_peak_flops(info: dict[str, Any]) -> dict[str, Any]:
    """Peak FP32 FLOP/s = cores x clock x SIMD lanes x 2 (FMA) x FMA units.

    Lanes: 16 with AVX-512F, 8 with AVX2/FMA, 4 with SSE only. Two FMA units per core is
    assumed for AVX2/AVX-512 server cores (one for SSE). The clock is the nominal one from
    the model name ("@ 2.10GHz") if present, else /proc/cpuinfo's current MHz.
    """
    flags = info["flags"]
    lanes, units, isa = (
        (16, 2, "AVX-512") if "avx512f" in flags else (8, 2, "AVX2+FMA") if "fma" in flags else (4, 1, "SSE")
    )
    nominal = re.search(r"@\s*([\d.]+)\s*GHz", info["model"] or "")
    ghz = float(nominal.group(1)) if nominal else (info["mhz"] or 2000.0) / 1000.0
    peak = info["cores"] * ghz * 1e9 * lanes * 2 * units
    return {
        "peak_flops": peak,
        "isa": isa,
        "lanes": lanes,
        "fma_units": units,
        "ghz": ghz,
        "cores": info["cores"],
        "how": f"{info['cores']} cores x {ghz:.2f} GHz x {lanes} FP32 lanes ({isa}) x 2 (FMA) x {units} FMA units",
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "onnxruntime", "onnx", "numpy", "cv2", "zmq", "sklearn"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except ImportError:
            out[name] = "missing"
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    info = cpu_info()
    return {
        "hostname": socket.gethostname(),
        "cpu": info["model"],
        "cores": info["cores"],
        "memory_gib": round(info["memory_bytes"] / 2**30, 1),
        "platform": platform.platform(),
        "cpu_peak": cpu_peak_flops(info),
        "versions": versions(),
        "git_commit": git_commit(),
    }


def write_report(report: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dt.date.today().isoformat()}-{socket.gethostname()}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def vqad(*args: str, timeout: float | None = None, quiet: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vqad.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=quiet, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stderr or '')[-3000:]}")
    return proc


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


def input_size(category: Path, image_size: str | int) -> tuple[int, int]:
    """The (H, W) that `vqad train CATEGORY --image-size IMAGE_SIZE` trains at under
    configs/model.yaml: N, HxW, or auto (the category's images decide)."""
    import argparse

    from train.data import resolve_image_size
    from vqad.commands.model import model_and_train_configs

    args = argparse.Namespace(image_size=str(image_size), model_config=None, config=None)
    model_cfg, _ = model_and_train_configs(args)
    return resolve_image_size(model_cfg, category).image_size
