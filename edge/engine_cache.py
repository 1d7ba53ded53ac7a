"""Where TensorRT engines live: MODEL_DIR/engines/<key>.plan.

An engine is specific to its TensorRT version and GPU, so the key names everything that
makes it valid: the ONNX file's sha256, the TensorRT version, the GPU name and compute
capability, and the build settings. A different key is a different file, so a stale
engine is never loaded. Torch-free: used by `vqad build-engine` and by the daemon.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from edge.package import ModelPackage

ENGINE_DIR = "engines"


@dataclass(frozen=True)
class EngineSettings:
    max_batch: int
    workspace_mb: int
    # "strongly-typed" (TensorRT >= 10, model_fp16.onnx) or "fp16-flag" (8.x, model.onnx + constraints)
    mode: str


def engine_key(onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, s: EngineSettings) -> str:
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    settings = f"b{s.max_batch}-ws{s.workspace_mb}-{s.mode}"
    digest = hashlib.sha256(f"{onnx_sha256}|{trt_version}|{gpu_name}|{compute_capability}|{settings}".encode())
    sm = compute_capability.replace(".", "")
    return f"{onnx_sha256[:12]}-trt{trt_version}-{gpu}-sm{sm}-{settings}-{digest.hexdigest()[:8]}"


def engine_path(package: ModelPackage, key: str) -> Path:
    return package.root / ENGINE_DIR / f"{key}.plan"


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def build_mode(version: str) -> str:
    """TensorRT >= 10 builds the FP16 graph strongly typed; 8.x has no strong typing."""
    return "strongly-typed" if trt_major(version) >= 10 else "fp16-flag"


def onnx_file_for(mode: str) -> str:
    return "model_fp16.onnx" if mode == "strongly-typed" else "model.onnx"
