"""The edge daemon's config (configs/edge.yaml)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge.config import require
from edge.endpoints import check_endpoint
from edge.frames import DEFAULT_MAX_FRAME_PIXELS
from edge.health import HealthLimits
from edge.protocol import MAX_BYTES_PER_PIXEL, Limits, is_id
from edge.results import PublishFrames

# The longest a frame may wait for its batch to fill. A batch is a throughput measure; a line at
# a part a second gains nothing from waiting for 8, and a typo of 10000 for 10 held each result
# 10 s, past any inline gate, with nothing refused.
MAX_DELAY_MS = 1000.0


@dataclass(frozen=True)
class CurveConfig:
    """CURVE encryption and client authentication through pyzmq's zmq.auth (key files)."""

    enabled: bool = False
    # The daemon's own key pair: `vqad keys DIR` writes server.key_secret / server.key.
    server_secret_key: str = ""
    # A folder of authorised clients' public keys (*.key); anyone else is refused.
    authorized_keys_dir: str = ""


@dataclass(frozen=True)
class EdgeConfig:
    frames_endpoint: str = "tcp://127.0.0.1:5555"
    # pull: bind PULL, cameras connect PUSH. sub: connect SUB to each camera's PUB endpoint.
    frames_mode: Literal["pull", "sub"] = "pull"
    camera_endpoints: tuple[str, ...] = ()
    results_endpoint: str = "tcp://127.0.0.1:5556"
    # A heartbeat on the results socket this often (topic "heartbeat"; 0 = none), so that a
    # subscriber can tell an idle line from a daemon that is gone.
    heartbeat_s: float = 1.0
    backend: str = "onnxruntime"
    precision: Literal["fp32", "fp16"] = "fp32"
    max_batch: int = 8
    max_delay_ms: float = 10.0
    queue_size: int = 64
    overload: Literal["backpressure", "drop_oldest"] = "backpressure"
    threshold: float | None = None
    # The model input size this deployment expects (0 = whatever the package says). A package
    # with another size is refused at startup, so a wrong model cannot reach the line.
    input_size: tuple[int, ...] = (0,)
    publish_maps: bool = True
    # The line's record (edge/record/): a database URL (sqlite:///PATH or postgresql://...;
    # "" = none), the evidence folder ("" = beside a SQLite file), the share of passes whose
    # evidence is kept too (every fail's is), and the evidence's disk quota (0 = none).
    # The control socket (ROUTER, for `vqad ctl`'s REQ): off when empty; loopback unless you change it.
    control_endpoint: str = ""
    record: str = ""
    evidence_dir: str = ""
    # 1% of the passes: at 30 frames/s and 1% rejects, as many pass images as reject images
    # (about 26,000 a day each; `vqad calibrate` wants a few hundred). A 1280 x 1024 mono frame's
    # evidence is about 0.9 MB (its PNG 0.6, its overlay 0.3), so a 64 GB disk holds about 30
    # hours of it. At 10% the passes took ten times the rejects' disk, and the quota or the floor
    # removed each reject's images after about 6 hours, before a shift's end.
    record_pass_fraction: float = 0.01
    record_max_gb: float = 0.0
    # The free space the evidence's disk keeps: below it the evidence older than a day is removed,
    # as past the quota, then a SQLite record's results older than a day, then the last day's
    # evidence; with none left no more is written. 1 GB leaves a Jetson's system on the same
    # disk room for its logs and updates. 0 = no floor.
    record_min_free_gb: float = 1.0
    # Results older than this many days leave the record, with their evidence; reviewed ones
    # stay (a person's verdict is training data and an audit). 0 keeps every result.
    record_keep_days: float = 0.0
    # Extension to protocol v1: a 4th result part with the model-size frame as JPEG, so that a
    # picture shows the part under its map. true: every result; preview: every fail and a result
    # per camera every 0.5 s (the dashboard's live picture); false: none.
    publish_frames: PublishFrames = "preview"
    min_region_area: int = 4
    # A camera whose fails are more than this share of its last 100 decisions raises the
    # fail-rate alarm (edge/fail_rate.py): a log line, vqad_fail_rate_alarm, the heartbeat, the
    # record's changes, the dashboard. Set it well above the line's usual reject rate. 0 = off.
    fail_rate_alarm: float = 0.2
    # Per camera id, its own limit over fail_rate_alarm (0 = off for that camera): a camera whose
    # product is usually rejected more, or far less, than the others'.
    fail_rate_alarm_cameras: dict[str, float] = field(default_factory=dict)
    # Master parts (edge/master.py): good and defective parts of known verdict, run through the
    # line to prove its inspection works (each shift's start, a changeover), named by the
    # part_id patterns (fnmatch, case-sensitive) of their frames. Each is checked against its expected
    # decision: its result's `master`, the log, the metrics, the heartbeat, the record.
    master_good_parts: tuple[str, ...] = ()
    master_defective_parts: tuple[str, ...] = ()
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_header_bytes: int = 65536
    rcvhwm: int = 32
    sndhwm: int = 10000
    linger_ms: int = 5000
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_every_s: float = 60.0
    # Inference workers: each takes its own batches from the queue and runs its own backend
    # instance, so one batch is post-processed (and another formed) while the next runs.
    # On a CPU, 2 single-threaded ONNX Runtime sessions outrun 1 two-threaded one and do not
    # stall together when an I/O thread takes a core. Results are published in batch order.
    # 0 = automatic: 1 for tensorrt (one engine, one stream), else 2 where there are 2+ cores.
    inference_workers: int = 0
    # ONNX Runtime threads per worker; 0 = the cores divided among the workers (ORT's default for 1).
    intra_op_threads: int = 0
    # ONNX Runtime's worker threads busy-wait between batches unless this is off. Off leaves
    # the CPU to the receiver, the publisher and the camera processes on small boards.
    intra_op_spinning: bool = False
    # OpenCV's own worker threads for decode and resize. The receiver thread already overlaps
    # preprocessing with inference; splitting one resize over the cores inference uses costs
    # more than it saves (1280x1024 -> 128 px: 2.5 ms on 2 threads, 1.5 ms on 1). 0 = OpenCV's default.
    opencv_threads: int = 1
    # Threads that decode and resize frames side by side, their frames admitted in the order they
    # came (edge/inorder.py). One receiver thread decodes about 170 JPEG frames of 1280 x 1024 a
    # second on a core of a 2-core AMD EPYC (34 as PNG): a GPU infers faster than that. 1 = the
    # receiver alone. 0 = automatic: 1 for onnxruntime, whose inference wants the cores, and for
    # tensorrt half the cores, at most 4 (the rest left to ZeroMQ, the publisher and the record).
    decode_workers: int = 0
    warmup_runs: int = 2
    # A backend whose every batch has failed for this many seconds (3 batches at least) is taken
    # as broken: a CUDA error leaves the process's context unusable, and only a new process gets
    # a fresh one. The daemon then stops with exit code 8 for its supervisor to restart it.
    # 0 = never: it answers each frame with an error result for as long as it runs.
    backend_failure_exit_s: float = 60.0
    # A reload (vqad ctl reload, SIGHUP) not done within this long is given up: the old model
    # serves on and changes (vqad ctl) are taken again, instead of waiting for a load that hung
    # (a stalled network filesystem) until the daemon restarts. A TensorRT engine built for the
    # new package on a Jetson takes minutes: as long as deploy/vqad.service gives a start.
    reload_timeout_s: float = 1800.0
    # Where the daemon keeps its run marker (to detect an unclean previous exit); "" = the model dir.
    state_dir: str = ""
    tensorrt_workspace_mb: int = 1024
    curve: CurveConfig = field(default_factory=CurveConfig)
    # The camera health gate's limits (edge/health.py); an unfit frame is failed with its reasons.
    health: HealthLimits = field(default_factory=HealthLimits)

    def __post_init__(self) -> None:
        require(0.0 <= self.record_pass_fraction <= 1.0, "edge.record_pass_fraction must be in [0, 1]")
        require(self.record_max_gb >= 0, "edge.record_max_gb must be >= 0 (0 = no quota)")
        require(self.record_keep_days >= 0, "edge.record_keep_days must be >= 0 (0 = keep every result)")
        require(self.record_min_free_gb >= 0, "edge.record_min_free_gb must be >= 0 (0 = no floor)")
        require(self.max_batch >= 1, "edge.max_batch must be >= 1")
        require(self.inference_workers >= 0, "edge.inference_workers must be >= 0 (0 = automatic)")
        require(self.intra_op_threads >= 0, "edge.intra_op_threads must be >= 0 (0 = automatic)")
        require(
            0 <= self.max_delay_ms <= MAX_DELAY_MS,
            f"edge.max_delay_ms must be in [0, {MAX_DELAY_MS:g}], got {self.max_delay_ms:g}: a frame waits this long "
            "for its batch to fill, and its result with it",
        )
        require(self.heartbeat_s >= 0, "edge.heartbeat_s must be >= 0 (0 = no heartbeat)")
        require(self.reload_timeout_s > 0, "edge.reload_timeout_s must be > 0 (seconds a reload may take)")
        require(self.backend_failure_exit_s >= 0, "edge.backend_failure_exit_s must be >= 0 (0 = never)")
        require(self.queue_size >= self.max_batch, "edge.queue_size must be >= max_batch")
        require(self.max_frame_pixels >= 64, "edge.max_frame_pixels is too small")
        require(self.max_header_bytes >= 256, "edge.max_header_bytes is too small")
        require(self.linger_ms >= 0, f"edge.linger_ms must be >= 0, got {self.linger_ms}")
        for name in ("rcvhwm", "sndhwm"):  # ZeroMQ's 0 is no bound at all: a burst would fill the memory
            require(getattr(self, name) >= 1, f"edge.{name} must be >= 1, got {getattr(self, name)}")
        require(0 <= self.metrics_port <= 65535, "edge.metrics_port must be 0 (off) or a port")
        for what, endpoint in self._endpoints():
            check_endpoint(endpoint, what)
        require(
            self.frames_mode == "pull" or len(self.camera_endpoints) > 0,
            "edge.frames_mode=sub needs camera_endpoints to connect to",
        )
        require(
            not self.curve.enabled or bool(self.curve.server_secret_key),
            "edge.curve.enabled needs curve.server_secret_key",
        )
        require(self.threshold is None or 0 < self.threshold < math.inf, "edge.threshold must be a finite number > 0")
        require(self.decode_workers >= 0, "edge.decode_workers must be >= 0 (0 = automatic)")
        require(self.opencv_threads >= 0, "edge.opencv_threads must be >= 0 (0 = OpenCV's default)")
        both = set(self.master_good_parts) & set(self.master_defective_parts)
        require(not both, f"edge.master_good_parts and edge.master_defective_parts both name {sorted(both)}")
        masters = self.master_good_parts + self.master_defective_parts
        require(all(masters), "edge.master_good_parts and edge.master_defective_parts take patterns, not empty text")
        require(0.0 <= self.fail_rate_alarm < 1.0, "edge.fail_rate_alarm must be a share in [0, 1) (0 = off)")
        for camera, limit in self.fail_rate_alarm_cameras.items():
            require(is_id(camera), f"edge.fail_rate_alarm_cameras: {camera!r} is no camera id (1-128 characters)")
            require(0.0 <= limit < 1.0, f"edge.fail_rate_alarm_cameras.{camera} must be a share in [0, 1) (0 = off)")
        require(self.log_every_s > 0, "edge.log_every_s must be > 0 (seconds between status lines)")
        require(self.warmup_runs >= 0, "edge.warmup_runs must be >= 0")
        require(
            len(self.input_size) in (1, 2) and min(self.input_size) >= 0,
            "edge.input_size must be 0 (from the model package), N or [H, W]",
        )

    def _endpoints(self) -> list[tuple[str, str]]:
        """(what, endpoint) for every ZeroMQ endpoint this config names."""
        named = [("edge.frames_endpoint", self.frames_endpoint), ("edge.results_endpoint", self.results_endpoint)]
        if self.control_endpoint:
            named.append(("edge.control_endpoint", self.control_endpoint))
        return named + [("edge.camera_endpoints", endpoint) for endpoint in self.camera_endpoints]

    def backend_options(self) -> dict[str, Any]:
        """The options `create_backend` takes, as this config sets them (the daemon's and the benchmark's)."""
        return {
            "max_batch": self.max_batch,
            "precision": self.precision,
            "intra_op_threads": self.threads_per_worker(),
            "intra_op_spinning": self.intra_op_spinning,
            "workspace_mb": self.tensorrt_workspace_mb,
        }

    def workers(self) -> int:
        """How many inference workers the daemon runs (inference_workers, or its automatic choice)."""
        if self.inference_workers:
            return self.inference_workers
        return 1 if self.backend == "tensorrt" else min(2, os.cpu_count() or 1)

    def decoders(self) -> int:
        """How many threads decode frames (decode_workers, or its automatic choice; 1 = the receiver)."""
        if self.decode_workers:
            return self.decode_workers
        return min(4, max(1, (os.cpu_count() or 1) // 2)) if self.backend == "tensorrt" else 1

    def threads_per_worker(self) -> int:
        """intra_op_threads, or with several workers and 0, the cores shared among them (0 = ORT's default)."""
        if self.intra_op_threads or self.workers() == 1:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.workers())

    def state_folder(self, model_dir: Path) -> Path:
        """Where the daemon keeps its crash marker and what `vqad ctl` changed: state_dir, or
        the model's folder when it is empty."""
        return Path(self.state_dir) if self.state_dir else model_dir

    @property
    def max_frame_bytes(self) -> int:
        """The largest raw frame within max_frame_pixels: 4 channels of 16 bits a pixel."""
        return self.max_frame_pixels * MAX_BYTES_PER_PIXEL

    def frame_limits(self) -> Limits:
        """What a frame message may hold, as the frames socket's readers check it (the daemon's,
        `vqad collect`'s)."""
        return Limits(self.max_header_bytes, self.max_frame_pixels, self.max_frame_bytes)
