"""`vqad build-engine MODEL_DIR`: a TensorRT FP16 engine, built on the target.

- TensorRT >= 10: `model_fp16.onnx` as a strongly typed network. The precision is in the
  graph (FP16 convolutions, FP32 islands for the VQ argmin and scoring); TensorRT 11
  has no FP16 builder flag and no precision constraints, so this is the only way there.
- TensorRT 8.6 (JetPack 6.0), which has no strong typing: `model.onnx` with the FP16
  builder flag, and FP32 precision constraints on every layer outside the encoder and
  decoder and head (preprocessing, encoder, VQ distance/argmin, scoring).
- One optimisation profile (min 1, opt B, max B), a workspace limit and a timing cache.
- Engines are cached under MODEL_DIR/engines/<key>.plan (see edge.engine_cache); one that
  fails to deserialize is rebuilt. After a build, a few frames are compared with ONNX
  Runtime within the export's FP16 bounds.

Torch-free: it runs on a Jetson with TensorRT, cuda-python and onnxruntime (`vqad[edge]`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.tensorrt_backend import find_engine, import_tensorrt
from edge.cuda_memory import load_cudart
from edge.durable import replace_synced, require_writable
from edge.engine_cache import ENGINE_DIR, onnx_file_for, trt_major
from edge.errors import BackendError
from edge.package import load_package
from edge.precision import runs_in_fp16

log = logging.getLogger(__name__)


def _network_flags(trt: Any, major: int) -> int:
    if major >= 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # required on 8.x, gone in 11


def _constrain_fp32_islands(trt: Any, network: Any, config: Any) -> int:
    """TensorRT 8.x only: FP16 flag, and FP32 pinned on every layer `runs_in_fp16` refuses."""
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if runs_in_fp16(layer.name):
            continue
        if any(layer.get_output(j).dtype != trt.float32 for j in range(layer.num_outputs)):
            continue  # shape / integer layers keep their own types
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(model_dir: str | Path, max_batch: int = 8, workspace_mb: int = 1024, force: bool = False) -> Path:
    """Build (or reuse) the engine for this GPU and TensorRT; returns its path."""
    trt = import_tensorrt()
    cudart = load_cudart()
    package = load_package(model_dir)
    path, key, settings = find_engine(package, max_batch, workspace_mb, trt, cudart)
    logger = trt.Logger(trt.Logger.WARNING)
    if not force and _cached_engine_loads(trt, logger, path):
        return path
    require_writable(path.parent, path)  # a read-only package folder is found before minutes of building
    onnx_path = package.verify(onnx_file_for(settings.mode))
    builder = trt.Builder(logger)
    network = _parsed_network(trt, builder, logger, onnx_path)
    cache_file = package.root / ENGINE_DIR / "timing.cache"
    config = _builder_config(trt, builder, network, package.input_shape, max_batch, workspace_mb, cache_file)
    t0 = time.monotonic()
    log.info("building %s from %s (max batch %d, workspace %d MiB, %s)", key, onnx_path.name, max_batch,
             workspace_mb, settings.mode)  # fmt: skip
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError("TensorRT failed to build the engine (see its log above)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Whole or not at all through a power cut: a first start often builds, and a line switched
    # off minutes later must not leave an empty engine that the next start cannot read.
    replace_synced(path, bytes(plan))
    replace_synced(cache_file, bytes(config.get_timing_cache().serialize()))
    log.info("built %s in %.0f s", path, time.monotonic() - t0)
    return path


def _cached_engine_loads(trt: Any, logger: Any, path: Path) -> bool:
    """Whether the engine cached at `path` deserializes on this GPU; one that does not is warned
    of, to be rebuilt."""
    if not path.is_file():
        return False
    if trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes()) is not None:
        log.info("engine %s is cached and valid", path.name)
        return True
    log.warning("cached engine %s does not deserialize: rebuilding", path.name)
    return False


def _parsed_network(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    """The network of the ONNX graph at `onnx_path`; BackendError with the parser's errors."""
    network = builder.create_network(_network_flags(trt, trt_major(trt.__version__)))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    return network


def _builder_config(
    trt: Any,
    builder: Any,
    network: Any,
    one: tuple[int, ...],
    max_batch: int,
    workspace_mb: int,
    cache_file: Path,
) -> Any:
    """The build's settings: the workspace limit, TensorRT 8's FP16 flag and FP32 islands, one
    optimisation profile of batches 1 to `max_batch` of frames of shape `one` (H, W, C), and the
    timing cache read from `cache_file` when there is one."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if trt_major(trt.__version__) < 10:
        pinned = _constrain_fp32_islands(trt, network, config)
        log.info("TensorRT %s: FP16 flag with %d layers pinned to FP32", trt.__version__, pinned)
    profile = builder.create_optimization_profile()
    profile.set_shape("frames", (1, *one), (max_batch, *one), (max_batch, *one))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def verify_engine(model_dir: str | Path, max_batch: int, workspace_mb: int, n_frames: int = 8, seed: int = 0) -> dict:
    """Run a few frames through the engine and through ONNX Runtime; check the FP16 bounds."""
    from edge.backends import create_backend

    package = load_package(model_dir)
    rng = np.random.default_rng(seed)
    shape = package.input_shape
    base = rng.integers(60, 200, (n_frames, 1, 1, shape[2]))
    frames = np.clip(base + rng.normal(0, 12, (n_frames, *shape)), 0, 255).astype(np.uint8)
    trt_backend = create_backend("tensorrt", package, {"max_batch": max_batch, "workspace_mb": workspace_mb})
    ort_backend = create_backend(
        "onnxruntime", package, {"max_batch": max_batch, "providers": ["CPUExecutionProvider"]}
    )
    try:
        n = min(n_frames, trt_backend.max_batch)
        m_trt, s_trt = trt_backend.infer(frames[:n])
        m_ort, s_ort = ort_backend.infer(frames[:n])
    finally:
        trt_backend.close()
        ort_backend.close()
    rel = float(
        (
            np.linalg.norm((m_trt - m_ort).reshape(n, -1), axis=1)
            / np.maximum(np.linalg.norm(m_ort.reshape(n, -1), axis=1), 1e-12)
        ).max()
    )
    agree = float(((s_trt >= package.threshold) == (s_ort >= package.threshold)).mean())
    bounds = package.meta.get("parity", {}).get("fp16_vs_fp32", {})
    rel_bound = float(bounds.get("bound_relative_error", 1e-2))
    agree_bound = float(bounds.get("bound_decision_agreement", 0.99))
    if rel > rel_bound or agree < agree_bound:
        raise BackendError(
            f"engine disagrees with ONNX Runtime: map relative error {rel:.3g} (bound {rel_bound}), "
            f"decision agreement {agree:.3f} (bound {agree_bound})"
        )
    return {"map_relative_error": rel, "decision_agreement": agree, "n_frames": n}
