"""What the daemon serves with: a model package, its backend instances (one per inference
worker), how results are scored (threshold, model identity), and what is measured against the
package's own figures (the camera health gate, the drift alarm). Loaded, verified and warmed
up as one; replaced as one between batches (a reload, a new threshold)."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends import Backend, create_backend
from edge.drift import DriftMonitor
from edge.errors import BackendError, PackageError
from edge.frames import as_size
from edge.health import HealthGate, HealthLimits
from edge.inspection import InspectionMask, load_mask, masked
from edge.metrics import DaemonMetrics
from edge.package import FP32_FILE, ModelPackage, load_package
from edge.results import FrameSampler, Scoring
from edge.settings import EdgeConfig
from edge.threshold import RAISED_REFUSED

log = logging.getLogger(__name__)


@dataclass
class Serving:
    package: ModelPackage
    backends: list[Backend]
    scoring: Scoring
    health: HealthGate | None = None  # against the package's camera_health figures
    drift: DriftMonitor | None = None  # against the scores its threshold was calibrated on
    mask: InspectionMask | None = None  # what of the frame the decision leaves out (edge.inspection)

    def with_threshold(self, threshold: float, source: dict[str, Any]) -> Serving:
        """The same model, backends, health gate and drift alarm, scoring at another threshold
        (`source`: who set it, when and why)."""
        scoring = dataclasses.replace(self.scoring, threshold=threshold, threshold_source=source)
        return dataclasses.replace(self, scoring=scoring)

    def close(self) -> None:
        """Close the backends and give the memory they held back to the system."""
        for backend in self.backends:
            backend.close()
        return_freed_heap()


def load_serving(model_dir: Path, cfg: EdgeConfig, metrics: DaemonMetrics) -> Serving:
    """Load MODEL_DIR (following a `current` symlink as it points now), verify its graph's
    sha256, build one backend per worker and warm each up, and the package's health gate and
    drift alarm. PackageError or BackendError when anything is wrong; nothing is half-built then."""
    pkg = load_package(model_dir.resolve())
    if cfg.input_size != (0,) and as_size(cfg.input_size) != pkg.image_size:
        raise PackageError(
            f"{model_dir} takes {pkg.image_size[0]}x{pkg.image_size[1]} (HxW) frames but the config "
            f"expects edge.input_size={list(cfg.input_size)}: wrong model for this line?"
        )
    pkg.verify(FP32_FILE)
    warn_of_a_raised_threshold(pkg, cfg)
    mask = load_mask(pkg)  # the parts of the frame the package's decision leaves out, checked
    scoring = Scoring(
        threshold=configured_threshold(pkg, cfg),
        model=model_identity(pkg, mask),
        map_scale=float(pkg.map_scale),
        min_region_area=cfg.min_region_area,
        publish_maps=cfg.publish_maps,
        frames=FrameSampler(cfg.publish_frames),
        threshold_source=threshold_source(pkg.meta.get("threshold", {}), cfg.threshold is not None),
        judged=None if mask is None else mask.keep,
    )
    backends: list[Backend] = []
    try:
        for _ in range(cfg.workers()):
            backends.append(masked(create_backend(cfg.backend, pkg, cfg.backend_options()), mask))
        dummy = np.zeros((cfg.max_batch, *pkg.input_shape), np.uint8)
        for backend in backends:
            for _ in range(cfg.warmup_runs):
                for n in sorted({1, cfg.max_batch}):
                    _, scores = backend.infer(dummy[:n])
                    if not np.isfinite(scores).all():  # every frame would be an error result
                        raise BackendError(
                            f"{cfg.backend} gives a blank frame no finite score ({scores[0]}): "
                            f"the model or its engine is broken ({pkg.root})"
                        )
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    serving = Serving(pkg, backends, scoring, health_gate(pkg, cfg.health), mask=mask)
    serving.drift = drift_monitor(serving, metrics)
    return serving


def model_identity(pkg: ModelPackage, mask: InspectionMask | None) -> dict[str, str]:
    """What decides, as each result and heartbeat names it: the model by its FP32 graph's
    sha256, and its inspection mask's when one leaves a part of the frame out."""
    model = {"name": pkg.name, "sha256": pkg.sha256}
    return model if mask is None else {**model, "mask_sha256": mask.sha256}


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, from the C library the process runs on; None where it has none
    (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def return_freed_heap() -> None:
    """Hand the heap that closed sessions freed back to the system. glibc keeps freed memory for
    the process's next allocations, and a closed ONNX Runtime session's is left in pieces it
    does not return by itself: a daemon reloading the demo's model every 5 s held 528 MiB of RSS
    after 23 reloads instead of 296, memory that a Jetson's GPU shares (benchmarks/RESULTS.md,
    "Soak with reloads"). Costs 5-12 ms a reload."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def health_gate(pkg: ModelPackage, limits: HealthLimits) -> HealthGate | None:
    """The camera health gate for `pkg`'s training figures (None: off, or a package without them)."""
    stats = pkg.meta.get("camera_health")
    if not limits.enabled:
        return None
    if not stats:
        log.warning("%s has no camera_health figures (exported before them): the health gate is off", pkg.root)
        return None
    return HealthGate(stats, limits)


def warn_of_a_raised_threshold(pkg: ModelPackage, cfg: EdgeConfig) -> None:
    """A warning when edge.threshold (or --threshold) is RAISED_REFUSED times the package's
    calibrated threshold or more: every defect scoring between the two passes. The config is the
    integrator's decision, so it serves; a slip of the decimal point is said at each start."""
    if cfg.threshold is not None and cfg.threshold >= RAISED_REFUSED * pkg.threshold:
        log.warning("edge.threshold %g is %.3g times the package's calibrated threshold (%.6g): every defect "
                    "scoring between the two passes. A slip of the decimal point?", cfg.threshold,
                    cfg.threshold / pkg.threshold, pkg.threshold)  # fmt: skip


def configured_threshold(pkg: ModelPackage, cfg: EdgeConfig) -> float:
    """The threshold a daemon starts on: edge.threshold when the config sets one, else the package's."""
    return float(cfg.threshold if cfg.threshold is not None else pkg.threshold)


def threshold_source(calibration: dict[str, Any], from_config: bool) -> dict[str, Any]:
    """Where the serving threshold came from, in brief: the package's calibration (which
    command, when, on how many good images, and the bound they put on false rejects), or the
    edge config's `threshold`, which overrides it."""
    if from_config:
        return {"by": "edge.threshold in the config"}
    source = calibration.get("source") or {}
    return {
        "by": source.get("by"),
        "calibrated": calibration.get("calibrated"),
        "n_images": calibration.get("n_val"),
        "frr_upper_bound_95": calibration.get("frr_upper_bound_95"),
    }


def drift_monitor(serving: Serving, metrics: DaemonMetrics) -> DriftMonitor | None:
    """The drift alarm against `serving`'s calibration scores (None for a package without them)."""
    scores = serving.package.meta.get("threshold", {}).get("scores")
    if not scores:
        log.warning("%s keeps no calibration scores (exported before them): the drift alarm is off",
                    serving.package.root)  # fmt: skip
        return None
    return DriftMonitor(scores, metrics)
