"""A result as it travels from inference to the publisher (and the line's record): the v1
header, the quantised map, any extra message parts, and when its frame was received.

`scored_results` turns one batch's model outputs into results; `error_result` is the result
of a frame that could not be scored. Neither publishes: the daemon decides what to do with them.
`FrameSampler` (the one state they consult) decides which results carry their frame.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from edge.postprocess import decide, find_regions, quantize_map
from edge.protocol import result_header
from edge.recent import RecentDict


@dataclass
class Pending:
    """An accepted frame waiting for inference."""

    camera_id: str
    frame_id: int
    ts_ns: int
    recv_ns: int
    frame_hw: tuple[int, int]
    model_input: np.ndarray  # (H, W, C) uint8 at the model's input size
    arrived_mono_ns: int  # time.monotonic_ns() on arrival: its latencies, which a clock set does not move
    received: np.ndarray | None = None  # the frame as received, kept for the record's evidence
    health: dict[str, Any] | None = None  # the camera health gate's verdict (None: no gate)
    part_id: str | None = None  # the part's identity, as the frame gave it


@dataclass
class Result:
    """header: the v1 result header; map_bytes: the uint8 map of a scored frame, published when
    the header has its `map` (`publish_maps`), and kept in the record's evidence either way;
    map_info: its shape and scale when the header does not carry them; extra: further message
    parts; recv_ns: when the frame arrived (0 = unknown); frame: the frame as received, for the
    record's evidence (None when not needed); arrived_mono_ns: the monotonic clock when it
    arrived (0 = unknown)."""

    header: dict[str, Any]
    map_bytes: bytes = b""
    extra: list[bytes] | None = None
    recv_ns: int = 0
    frame: np.ndarray | None = None
    arrived_mono_ns: int = 0
    map_info: dict[str, Any] | None = None
    judged: np.ndarray | None = None

    @property
    def published_map(self) -> bytes:
        """The map part of the result's message: empty unless its header describes the map."""
        return self.map_bytes if self.header.get("map") else b""

    def ms_since_arrival(self) -> float:
        """Milliseconds since the frame arrived, on the monotonic clock: NTP setting a Jetson's
        clock hours after the start gave the frames in flight a latency of plus or minus hours.
        A result made without it (an error result, the receiver's at once) reads the wall clock."""
        if self.arrived_mono_ns:
            return (time.monotonic_ns() - self.arrived_mono_ns) / 1e6
        return (time.time_ns() - self.recv_ns) / 1e6 if self.recv_ns else 0.0


@dataclass
class BatchResults:
    """The results of one batch, numbered in the order batches left the queue."""

    seq: int
    items: list[Result]


# How often a passing result carries its frame under `publish_frames: preview`: the dashboard's
# tick (0.5 s), so a page's live picture shows the part, at two JPEGs a second per camera
# (0.1-0.3 ms each at the model's size) instead of one per frame.
PREVIEW_EVERY_S = 0.5

PublishFrames = bool | Literal["preview"]

# The error of a frame whose score the backend gave as NaN or infinity.
NONFINITE_SCORE = "the model gave no finite score"


class FrameSampler:
    """Which results carry their model-size frame (`edge.publish_frames`): every one (true),
    none (false), or `preview`: every fail and, per camera, a result every PREVIEW_EVERY_S.
    Thread-safe: the inference workers ask side by side."""

    def __init__(self, mode: PublishFrames, every_s: float = PREVIEW_EVERY_S):
        self.mode, self.every_s = mode, every_s
        self._last_s: RecentDict[str, float] = RecentDict()
        self._lock = threading.Lock()

    def wants(self, camera_id: str, decision: str | None, now_s: float) -> bool:
        if self.mode is True or self.mode is False:
            return self.mode
        with self._lock:
            due = now_s - self._last_s.get(camera_id, float("-inf")) >= self.every_s
            if due or decision == "fail":
                self._last_s[camera_id] = now_s
            return due or decision == "fail"


@dataclass(frozen=True)
class Scoring:
    """What turns a batch's outputs into results: the threshold, the model that scored, and
    what the results carry."""

    threshold: float
    model: dict[str, str]
    map_scale: float
    min_region_area: int
    publish_maps: bool
    frames: FrameSampler
    # Where the threshold came from, as the heartbeat tells it (edge.serving.threshold_source).
    threshold_source: dict[str, Any] | None = None
    # (h, w) bool at the map's size, True where the inspection mask judges (edge.inspection): the
    # record's evidence hatches the rest. None: the whole frame.
    judged: np.ndarray | None = field(default=None, compare=False, repr=False)


def error_result(
    camera_id: str, frame_id: int, ts_ns: int, reason: str, recv_ns: int, s: Scoring, part_id: str | None = None
) -> Result:
    header = result_header(
        camera_id, frame_id, ts_ns, "error", s.threshold, s.model, error=reason[:500], part_id=part_id
    )
    return Result(header, recv_ns=recv_ns)


def dropped_result(p: Pending, s: Scoring) -> Result:
    latency = {"queue": round((time.monotonic_ns() - p.arrived_mono_ns) / 1e6, 3), "infer": 0.0, "total": 0.0}
    error = "dropped by drop_oldest overload policy"
    header = result_header(
        p.camera_id, p.frame_id, p.ts_ns, "dropped", s.threshold, s.model, error=error, latency_ms=latency,
        part_id=p.part_id,
    )  # fmt: skip
    return Result(header, recv_ns=p.recv_ns, arrived_mono_ns=p.arrived_mono_ns)


def scored_results(
    batch: list[Pending], maps: np.ndarray, scores: np.ndarray, start_mono_ns: int, infer_ms: float, s: Scoring
) -> list[Result]:
    """One result per frame of `batch` from the backend's maps (N, 1, h, w) and scores (N,);
    `start_mono_ns`: time.monotonic_ns() when the batch's inference began.
    A frame whose score is not a finite number (NaN or infinity: an FP16 overflow, a broken
    engine) gets an error result: NaN compares as a pass, and JSON cannot carry either."""
    results, now_s = [], time.monotonic()
    for p, amap, score in zip(batch, maps, scores, strict=True):
        score_f = float(score)
        if not math.isfinite(score_f):
            reason = f"{NONFINITE_SCORE} ({score_f}): the frame was not judged"
            results.append(error_result(p.camera_id, p.frame_id, p.ts_ns, reason, p.recv_ns, s, p.part_id))
            continue
        latency = {"queue": round((start_mono_ns - p.arrived_mono_ns) / 1e6, 3), "infer": round(infer_ms, 3),
                   "total": 0.0}  # fmt: skip
        results.append(_judged_result(p, amap[0], score_f, latency, len(batch), s, now_s))
    return results


def _judged_result(
    p: Pending, amap2d: np.ndarray, score: float, latency: dict[str, float], batch_size: int, s: Scoring, now_s: float
) -> Result:
    """The result of a frame the model judged: its decision (an unfit frame's is a fail whatever
    its score), regions, quantised map, and the frame itself where the stream carries it."""
    map_info = {"shape": list(amap2d.shape), "dtype": "uint8", "scale": s.map_scale}
    header = result_header(
        p.camera_id, p.frame_id, p.ts_ns, "ok", s.threshold, s.model, score=score,
        decision=decide(score, s.threshold), regions=find_regions(amap2d, s.threshold, p.frame_hw, s.min_region_area),
        latency_ms=latency, batch_size=batch_size, map_info=map_info if s.publish_maps else None, part_id=p.part_id,
    )  # fmt: skip
    header["frame_shape"] = list(p.frame_hw)  # extension: the frame size the regions refer to
    if p.health is not None:  # extension: the camera health gate; an unfit frame never passes
        header["health"] = p.health
        if not p.health["ok"]:
            header["decision"] = "fail"
    extra = _published_frame(p, header, s, now_s)
    # Quantised either way: the record's evidence draws the map a subscriber was not sent.
    map_bytes = quantize_map(amap2d, s.map_scale)
    return Result(header, map_bytes, extra, p.recv_ns, arrived_mono_ns=p.arrived_mono_ns, map_info=map_info,
                  judged=s.judged)  # fmt: skip


def _published_frame(p: Pending, header: dict[str, Any], s: Scoring, now_s: float) -> list[bytes] | None:
    """The model's input as a JPEG for the stream, where `edge.publish_frames` wants this
    camera's frame now (named in `header`'s `frame`); None where it does not."""
    if not s.frames.wants(p.camera_id, header["decision"], now_s):
        return None
    ok, jpg = cv2.imencode(".jpg", p.model_input)
    header["frame"] = {"shape": list(p.model_input.shape), "encoding": "jpeg"}
    return [jpg.tobytes() if ok else b""]
