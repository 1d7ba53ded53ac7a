"""Wire protocol, version 1 (docs/protocol.md is its user-facing description).

Frames in (PUSH -> the daemon's PULL, or camera PUB -> the daemon's SUB), 2 parts:
  1. UTF-8 JSON header {"v": 1, "camera_id", "frame_id", "ts_ns", "shape": [H, W, C],
     "dtype": "uint8" | "uint16" (raw), "encoding": "raw" | "jpeg" | "png"}   (shape optional
     for jpeg/png; an optional "part_id", the part's own identity, is echoed in its result and
     recorded; an optional "color_order": "RGB" for raw frames in that order; an optional
     "sender", the sending process, by which two senders given one camera id are seen; an
     optional "pixel_bits", 8..16, the bits a 16-bit frame's counts fill: 12 for Mono12, the
     model's own when absent)
  2. the pixel bytes (raw: C-contiguous HWC, BGR when C = 3, grey when C = 1, BGRA or BGRx
     when C = 4)

Results out (the daemon's PUB), 3 parts:
  1. topic b"result.<camera_id>"
  2. UTF-8 JSON header (see `result_header`)
  3. the anomaly map as uint8 bytes (value = byte * map.scale), empty unless status is ok

Parsing is strict and total: any input either yields a Frame, or raises FrameError that
carries (camera_id, frame_id) when they were readable, or UnreadableMessageError when not.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.errors import FrameError
from edge.frames import (
    DEFAULT_MAX_FRAME_PIXELS,
    PIXEL_BITS,
    check_pixel_bits,
    decode_image,
    encoded_size,
    stated_size,
    to_uint8,
)

VERSION = 1
ENCODINGS = ("raw", "jpeg", "png")
# A result's status: scored, or refused with a reason (a malformed frame, a failed batch), or
# discarded under overload (drop_oldest).
STATUSES = ("ok", "error", "dropped")
# A raw frame's pixel types: 8 bits, or 16 (little-endian; a Mono12/Mono16 camera's counts).
RAW_DTYPES = {"uint8": np.dtype(np.uint8), "uint16": np.dtype("<u2")}
# A frame's ts_ns this far from its receive time is no capture time: the sender's clock is off
# (local time sent as UTC, a camera's uptime counter, a clock never set). Frames wait in the
# queues for seconds at most; a time zone is 30 minutes or more.
CLOCK_TOLERANCE_S = 300.0
# A raw frame's channel order (`color_order`; BGR when absent). Grey frames have none.
COLOR_ORDERS = ("BGR", "RGB")
# The largest raw pixel: 4 channels (BGRA) of 16 bits.
MAX_BYTES_PER_PIXEL = 4 * 2
MAX_ID_LENGTH = 128
RESULT_TOPIC_PREFIX = b"result."
# The daemon's own sign of life on the results socket, for a subscriber that must tell an idle
# line from a daemon that is gone (a PLC bridge that fails safe). A subscriber to `result.`
# never receives it.
HEARTBEAT_TOPIC = b"heartbeat"
# A subscriber counts the daemon as gone after this many heartbeat intervals without one: one
# lost beat is a hiccup, three are a daemon gone.
HEARTBEAT_MISSED = 3
# A record whose oldest result without its row (the heartbeat's record.behind_s) has waited this
# long no longer keeps up: a query that hangs on a database server (a lock held elsewhere), a
# server down, a disk slower than the line's rejects. A row normally lands within half a second
# and a retry within 5 s (edge.record.writer); a minute is past any batch of evidence the writer
# has been seen to write, and a sliver of its buffer (100,000 results, 55 minutes at 30 frames/s).
RECORD_BEHIND_S = 60.0


class UnreadableMessageError(Exception):
    """A message whose camera_id and frame_id cannot be read: counted and logged, no result."""


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 65536
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_frame_bytes: int = DEFAULT_MAX_FRAME_PIXELS * MAX_BYTES_PER_PIXEL


@dataclass
class Frame:
    camera_id: str
    frame_id: int
    ts_ns: int
    # (H, W, C) uint8, C 1 or 3 (BGR): a raw 4-channel, 16-bit or RGB frame converted (a 16-bit
    # frame's uint16 counts with parse_frame's keep_counts)
    image: np.ndarray
    recv_ns: int
    part_id: str | None = None  # the part's identity (a serial, a trace id), when the sender gave one
    sender: str | None = None  # the sending process (vqad camera: host:pid), when it said


def is_frame_id(value: Any) -> bool:
    """A frame id: an integer 0 <= id < 2^63 (a camera's counter; SQL's 64-bit integer)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def is_id(value: Any) -> bool:
    """A camera or part id: a string of 1..MAX_ID_LENGTH printable characters (it goes into log
    lines, topics, file names and the record)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def file_name(name: str) -> str:
    """A camera id, a part id or a defect kind as one file or folder name: letters, digits, '-',
    '_' and '.' kept, any other character '_'. Never empty, '.' or '..': a name from the wire or
    from a person must not reach outside the folder it is written in."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return safe if safe.strip(".") else "_" * max(1, len(safe))


def _read_ids(header: Any) -> tuple[str, int]:
    if not isinstance(header, dict):
        raise UnreadableMessageError("header is not a JSON object")
    camera_id, frame_id = header.get("camera_id"), header.get("frame_id")
    if not is_id(camera_id):
        raise UnreadableMessageError(f"camera_id must be a string of 1..{MAX_ID_LENGTH} printable characters")
    if not is_frame_id(frame_id):
        raise UnreadableMessageError("frame_id must be a non-negative 64-bit integer")
    return camera_id, frame_id


def read_optional_id(header: dict[str, Any], key: str) -> str | None:
    """The header's optional id `key` (`part_id`, `sender`; None when absent). ValueError when it
    is not a string of 1..MAX_ID_LENGTH printable characters."""
    value = header.get(key)
    if value is None:
        return None
    if not is_id(value):
        raise ValueError(f"{key} must be a string of 1..{MAX_ID_LENGTH} printable characters")
    return value


def parse_header(raw: bytes, limits: Limits) -> tuple[dict[str, Any], str, int]:
    """Decode the JSON header and read its ids. UnreadableMessageError when the ids cannot be read."""
    if len(raw) > limits.max_header_bytes:
        raise UnreadableMessageError(f"header of {len(raw)} bytes exceeds {limits.max_header_bytes}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UnreadableMessageError(f"header is not UTF-8 JSON: {type(exc).__name__}") from exc
    camera_id, frame_id = _read_ids(header)
    return header, camera_id, frame_id


def _shape(header: dict[str, Any], required: bool) -> tuple[int, int, int] | None:
    shape = header.get("shape")
    if shape is None:
        if required:
            raise FrameError("raw frames need a shape [H, W, C]")
        return None
    if (
        not isinstance(shape, list)
        or len(shape) not in (2, 3)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
    ):
        raise FrameError(f"shape must be [H, W, C] integers, got {json.dumps(shape)[:80]}")
    h, w = shape[0], shape[1]
    c = shape[2] if len(shape) == 3 else 1
    if h <= 0 or w <= 0 or c not in (1, 3, 4):
        raise FrameError(f"shape {shape} is not a valid image shape (C must be 1, 3 or 4)")
    return h, w, c


def parse_frame(
    parts: list[bytes | memoryview],
    limits: Limits,
    recv_ns: int | None = None,
    pixel_bits: int = PIXEL_BITS,
    keep_counts: bool = False,
) -> Frame:
    """Validate and decode one frame message. See the module docstring for the contract. A
    16-bit frame is read by its header's "pixel_bits", else by `pixel_bits` (the model's);
    `keep_counts`: its counts kept as they are (uint16), for a file that training reads by its
    own pixel_bits (vqad collect).

    The payload may be a memoryview of the socket's buffer (zero copy); a raw image is then
    a view of it too, valid while that buffer lives."""
    if not parts:
        raise UnreadableMessageError("empty message")
    header, camera_id, frame_id = parse_header(parts[0], limits)
    part_id = None
    try:
        part_id = _optional_id(header, "part_id")
        sender = _optional_id(header, "sender")
        if len(parts) != 2:
            raise FrameError(f"expected 2 message parts, got {len(parts)}")
        layout = _read_layout(header, len(parts[1]), limits, pixel_bits)
        bits = None if keep_counts else layout.pixel_bits
        image = (
            _raw_payload(parts[1], layout, bits)
            if layout.encoding == "raw"
            else _encoded_payload(parts[1], layout, limits, bits)
        )
    except FrameError as exc:  # raised without the ids, which only this level knows
        raise FrameError(exc.reason, camera_id, frame_id, part_id) from None
    return Frame(
        camera_id, frame_id, header["ts_ns"], image, recv_ns if recv_ns is not None else time.time_ns(), part_id, sender
    )


@dataclass(frozen=True)
class _Layout:
    """How a frame's payload is laid out, as its header says, checked."""

    encoding: str
    dtype: str
    shape: tuple[int, int, int] | None  # required for raw; optional for JPEG and PNG
    pixel_bits: int
    color_order: str


def _optional_id(header: dict[str, Any], key: str) -> str | None:
    try:
        return read_optional_id(header, key)
    except ValueError as exc:
        raise FrameError(str(exc)) from None


def _read_layout(header: dict[str, Any], payload_bytes: int, limits: Limits, pixel_bits: int) -> _Layout:
    """The header's version, time and payload layout, checked against `limits`. FrameError
    (without ids) names the first field that is wrong."""
    if header.get("v") != VERSION:
        raise FrameError(
            f"unsupported protocol version {json.dumps(header.get('v'))[:20]}; this daemon speaks v{VERSION}"
        )
    ts_ns = header.get("ts_ns")
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, int) or ts_ns < 0:
        raise FrameError("ts_ns must be a non-negative integer (ns since the epoch)")
    encoding = header.get("encoding")
    if encoding not in ENCODINGS:
        raise FrameError(f"encoding must be one of {', '.join(ENCODINGS)}")
    dtype = header.get("dtype", "uint8" if encoding != "raw" else None)
    if not isinstance(dtype, str) or dtype not in RAW_DTYPES or (dtype != "uint8" and encoding != "raw"):
        raise FrameError(f"unsupported dtype {json.dumps(dtype)[:40]}; uint8, or uint16 for raw frames")
    if payload_bytes > limits.max_frame_bytes:
        raise FrameError(f"frame of {payload_bytes} bytes exceeds the limit of {limits.max_frame_bytes}")
    shape = _shape(header, required=encoding == "raw")
    if shape is not None and shape[0] * shape[1] > limits.max_frame_pixels:
        raise FrameError(f"shape {list(shape)} exceeds the limit of {limits.max_frame_pixels} pixels")
    try:
        pixel_bits = check_pixel_bits(header.get("pixel_bits", pixel_bits))
    except ValueError as exc:
        raise FrameError(str(exc)) from None
    order = header.get("color_order", "BGR")
    if not isinstance(order, str) or order not in COLOR_ORDERS or (order != "BGR" and encoding != "raw"):
        raise FrameError(f"color_order must be BGR or RGB (RGB for raw frames only), got {json.dumps(order)[:40]}")
    return _Layout(encoding, dtype, shape, pixel_bits, order)


def _raw_payload(payload: bytes | memoryview, layout: _Layout, pixel_bits: int | None) -> np.ndarray:
    """A raw payload -> the (H, W, C) image (_raw_image); its size must be what the shape says."""
    h, w, c = layout.shape  # type: ignore[misc]
    pixel_type = RAW_DTYPES[layout.dtype]
    if len(payload) != h * w * c * pixel_type.itemsize:
        raise FrameError(f"payload has {len(payload)} bytes but shape {[h, w, c]} of {layout.dtype} needs "
                         f"{h * w * c * pixel_type.itemsize}")  # fmt: skip
    return _raw_image(np.frombuffer(payload, dtype=pixel_type).reshape(h, w, c), layout.color_order, pixel_bits)


def _encoded_payload(
    payload: bytes | memoryview, layout: _Layout, limits: Limits, pixel_bits: int | None
) -> np.ndarray:
    """A JPEG or PNG payload -> the (H, W, C) image, C 1 or 3, uint8 (a 16-bit PNG read by
    `pixel_bits`; None: its counts kept). The file must be whole, claim no more than the pixel
    limit before it is decoded, and match the header's shape."""
    encoding = layout.encoding
    # Decoders return partial images from truncated files; a complete file ends with its end marker.
    end_marker = b"\xff\xd9" if encoding == "jpeg" else b"IEND"
    if end_marker not in bytes(payload[-64:]):
        raise FrameError(f"{encoding} data is truncated (no end marker)")
    claimed = encoded_size(payload)
    if claimed is not None and claimed[0] * claimed[1] > limits.max_frame_pixels:
        raise FrameError(f"{encoding} image {claimed[1]}x{claimed[0]} exceeds {limits.max_frame_pixels} pixels")
    try:
        image = decode_image(payload, pixel_bits)
    except FrameError as exc:
        raise FrameError(f"{encoding} {exc.reason}") from None
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[0] * image.shape[1] > limits.max_frame_pixels:
        raise FrameError(f"decoded image {image.shape[1]}x{image.shape[0]} exceeds {limits.max_frame_pixels} pixels")
    shape = layout.shape
    if shape is not None and tuple(image.shape[:2]) != shape[:2]:
        raise FrameError(f"decoded image is {image.shape[0]}x{image.shape[1]} but shape says {shape[0]}x{shape[1]}")
    return image


def _raw_image(pixels: np.ndarray, order: str, pixel_bits: int | None) -> np.ndarray:
    """A raw frame's (H, W, C) pixels -> the uint8 image training reads: a 16-bit frame by the top
    8 of its `pixel_bits` (as a 16-bit image file; None: its counts kept), the channels in BGR
    order, a fourth channel (the alpha or padding byte of BGRA, BGRx, RGBA, RGBx) dropped."""
    image = pixels if pixel_bits is None else to_uint8(pixels, pixel_bits)
    channels = image.shape[2]
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR if order == "RGB" else cv2.COLOR_BGRA2BGR)
    if channels == 3 and order == "RGB":
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return image


def capture_time_ns(ts_ns: int, recv_ns: int) -> int:
    """The time a result is recorded at: the sender's capture time `ts_ns`, or `recv_ns` (the
    daemon's receive time) when the sender has no clock (0) or one more than CLOCK_TOLERANCE_S
    off, so that queries by time and the daily tally hold."""
    return ts_ns if ts_ns and abs(ts_ns - recv_ns) <= CLOCK_TOLERANCE_S * 1e9 else recv_ns


def frame_message(
    camera_id: str,
    frame_id: int,
    image: np.ndarray | bytes,
    encoding: str = "raw",
    ts_ns: int | None = None,
    part_id: str | None = None,
    color_order: str = "BGR",
    sender: str | None = None,
    pixel_bits: int | None = None,
) -> list[bytes | memoryview]:
    """Build a v1 frame message from an (H, W[, C]) uint8 image, or uint16 for raw (what `vqad
    camera` sends; `color_order` RGB for a raw image in that order), or from a JPEG or PNG
    file's own bytes in that `encoding`, sent as they are (shape [H, W], from their header);
    `part_id`, the part's identity, comes back in its result; `sender`, the sending process,
    lets the daemon tell two senders given one camera id apart; `pixel_bits` says how many bits
    a 16-bit image's counts fill (12 for Mono12), when not the model's."""
    if isinstance(image, bytes):
        shape, dtype = _encoded_shape(image, encoding), "uint8"
    else:
        image = image[:, :, None] if image.ndim == 2 else image
        shape, dtype = list(image.shape), "uint16" if image.dtype.itemsize == 2 and encoding == "raw" else "uint8"
    header: dict[str, Any] = {
        "v": VERSION,
        "camera_id": camera_id,
        "frame_id": int(frame_id),
        "ts_ns": int(ts_ns if ts_ns is not None else time.time_ns()),
        "shape": shape,
        "dtype": dtype,
        "encoding": encoding,
    }
    if part_id is not None:
        header["part_id"] = part_id
    if sender is not None:
        header["sender"] = sender
    if color_order != "BGR":
        header["color_order"] = color_order
    if pixel_bits is not None:
        header["pixel_bits"] = pixel_bits
    if isinstance(image, bytes):
        payload = image
    elif encoding == "raw":
        payload = np.ascontiguousarray(image, RAW_DTYPES[header["dtype"]]).data  # the array's memory, no copy
    elif encoding in ("jpeg", "png"):
        ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", image)
        if not ok:
            raise FrameError(f"could not encode frame as {encoding}")
        payload = buf.tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return [json.dumps(header).encode(), payload]


def _encoded_shape(data: bytes, encoding: str) -> list[int]:
    """[H, W] that a JPEG or PNG file's header states; ValueError for bytes of another kind."""
    size = stated_size(data, encoding)
    if size is None:
        raise ValueError(f"a frame's own bytes are a JPEG or PNG whose header states its size, in {encoding!r}")
    return list(size)


def result_header(
    camera_id: str,
    frame_id: int,
    ts_ns: int,
    status: str,
    threshold: float,
    model: dict[str, str],
    *,
    error: str | None = None,
    score: float | None = None,
    decision: str | None = None,
    regions: list[dict[str, Any]] | None = None,
    latency_ms: dict[str, float] | None = None,
    batch_size: int = 0,
    map_info: dict[str, Any] | None = None,
    part_id: str | None = None,
) -> dict[str, Any]:
    """The v1 result header, every key always present; `part_id` (an extension) only when the
    frame carried one."""
    header = {
        "v": VERSION,
        "camera_id": camera_id,
        "frame_id": frame_id,
        "ts_ns": ts_ns,
        "status": status,
        "error": error,
        "score": score,
        "threshold": threshold,
        "decision": decision,
        "regions": regions or [],
        "model": model,
        "latency_ms": latency_ms or {"queue": 0.0, "infer": 0.0, "total": 0.0},
        "batch_size": batch_size,
        "map": map_info,
    }
    if part_id is not None:
        header["part_id"] = part_id
    return header


def result_message(
    header: dict[str, Any], map_bytes: bytes = b"", extra_parts: list[bytes] | None = None
) -> list[bytes]:
    """[topic, header JSON, map bytes] (+ optional extension parts, e.g. the frame preview)."""
    topic = RESULT_TOPIC_PREFIX + header["camera_id"].encode("utf-8")
    return [topic, json.dumps(header, separators=(",", ":")).encode(), map_bytes, *(extra_parts or [])]


def heartbeat_message(header: dict[str, Any]) -> list[bytes]:
    """[topic, header JSON]: the daemon is up and serving `header["model"]`."""
    return [HEARTBEAT_TOPIC, json.dumps({"v": VERSION, **header}, separators=(",", ":")).encode()]


class StreamGaps:
    """A subscriber's count of the results it missed: the gaps in each daemon run's `seq`
    (ZeroMQ drops results for a reader that falls its high-water mark behind). Only for a
    subscription to every camera: one camera's results leave the others' seqs out."""

    def __init__(self) -> None:
        self.missed = 0
        self.next_seq: dict[str, int] = {}  # per daemon run: the seq its next result should carry

    def follow(self, header: dict[str, Any]) -> int:
        """-> how many results of the header's run were missed just before it (0 for a header
        without `run` and `seq`: a daemon before them)."""
        run, seq = header.get("run"), header.get("seq")
        if not isinstance(run, str) or not isinstance(seq, int):
            return 0
        return self._reach(run, seq, seq + 1)

    def follow_heartbeat(self, header: dict[str, Any]) -> int:
        """-> how many results of the heartbeat's run were missed since the last one read: its
        `published` is the seq of the next result, and the results before it went out before it
        on the same socket. A gap at the end of a burst shows here, before any next result."""
        run, published = header.get("run"), header.get("published")
        if not isinstance(run, str) or not isinstance(published, int):
            return 0
        return self._reach(run, published, published)

    def _reach(self, run: str, seq: int, next_seq: int) -> int:
        """The stream of `run` has reached `seq`, and goes on at `next_seq`: -> the results
        missed before `seq`."""
        expected = self.next_seq.get(run)
        self.next_seq[run] = max(next_seq, expected or 0)
        gap = seq - expected if expected is not None and seq > expected else 0
        self.missed += gap
        return gap


class RunsHeard:
    """The daemon runs a subscriber has read a message of, and those it never heard: runs that
    a later run's heartbeat names (`previous_runs`) after the newest one it had heard, daemons
    that started and stopped while it could not reach them. Their results are in the record."""

    def __init__(self) -> None:
        self.heard: list[str] = []  # in the order first read
        self.unseen: list[str] = []
        self._checked: set[str] = set()

    def hear(self, header: dict[str, Any]) -> list[str]:
        """Note the run of a result or heartbeat header; -> the runs newly found unseen (only a
        run's heartbeat names them: its first one is checked)."""
        run = header.get("run")
        if not isinstance(run, str):
            return []
        if run not in self.heard:
            self.heard.append(run)
        previous = header.get("previous_runs")
        if run in self._checked or not isinstance(previous, list):
            return []
        self._checked.add(run)
        before = [r for r in self.heard if r != run]
        if not before:  # the first run this subscriber heard: what came before it is not missed
            return []
        read = [i for i, r in enumerate(previous) if r in before]
        found = [r for r in previous[read[-1] + 1 if read else 0 :] if isinstance(r, str) and r not in self.heard]
        self.unseen += found
        return found


def heartbeat_overdue(age_s: float, header: dict[str, Any]) -> bool:
    """Whether a heartbeat `age_s` old (its header as sent) says the daemon is gone: more than
    HEARTBEAT_MISSED of its intervals (`every_s`) have passed without the next one."""
    return age_s > HEARTBEAT_MISSED * max(float(header.get("every_s") or 1.0), 0.1)


def parse_heartbeat(parts: list[bytes]) -> dict[str, Any]:
    """Subscriber side: a heartbeat message -> its header; ValueError for anything else."""
    if len(parts) != 2 or parts[0] != HEARTBEAT_TOPIC:
        raise ValueError(f"not a v1 heartbeat message ({len(parts)} parts)")
    header = json.loads(parts[1])
    if not isinstance(header, dict):
        raise ValueError("a heartbeat's header is a JSON object")
    return header


def parse_result(parts: list[bytes]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Subscriber side: -> (header, anomaly map as float32 (h, w) or None)."""
    header = parse_result_header(parts)
    return header, decode_map(header, parts[2])


def parse_result_header(parts: list[bytes]) -> dict[str, Any]:
    """Subscriber side, the header alone (a subscriber that draws few maps decodes them later)."""
    if len(parts) < 3 or not parts[0].startswith(RESULT_TOPIC_PREFIX):
        raise ValueError(f"not a v1 result message ({len(parts)} parts)")
    header = json.loads(parts[1])
    if not isinstance(header, dict) or not is_id(header.get("camera_id")) or not is_frame_id(header.get("frame_id")):
        raise ValueError("a result's header is a JSON object with camera_id and frame_id")
    if header.get("status") not in STATUSES or header.get("decision") not in (None, "pass", "fail"):
        raise ValueError(f"a result's status is one of {', '.join(STATUSES)}, its decision pass, fail or null")
    for key in ("score", "threshold"):
        value = header.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"a result's {key} is a number or null, got {json.dumps(value)[:40]}")
    return header


def unfit_reasons(header: dict[str, Any]) -> str | None:
    """Why the camera health gate failed a result's frame ("blurred,exposure"); None when it found
    the frame fit, or did not look (the gate off, a package without its figures, an error)."""
    health = header.get("health")
    if not isinstance(health, dict) or health.get("ok", True):
        return None
    return ",".join(str(r) for r in health.get("reasons") or []) or "unfit"


def decode_map(header: dict[str, Any], map_bytes: bytes) -> np.ndarray | None:
    """A result's map part -> float32 (h, w) in score units; None when it carries none."""
    info = header.get("map")
    if not info or not map_bytes:
        return None
    try:
        h, w = (int(side) for side in info["shape"])
        scale = float(info["scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a result's map is described by shape [h, w] and scale: {exc}") from None
    if h < 1 or w < 1 or h * w != len(map_bytes):
        raise ValueError(f"a result's map of {len(map_bytes)} bytes is not its shape {[h, w]}")
    return np.frombuffer(map_bytes, dtype=np.uint8).reshape(h, w).astype(np.float32) * scale
