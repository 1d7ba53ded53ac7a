"""`vqad collect`: training images received as the daemon receives frames.

A line's camera bridge already speaks the wire protocol (docs/protocol.md) to the daemon.
Pointed at this command instead, before any model exists, it gives the training images the
pixels the daemon will read later: the same decoding (raw BGR or RGB, BGRx, JPEG or PNG), from
the camera, lens, lighting and position of the line. Each kept frame is written as a PNG under
DIR/<camera>/: 8-bit as decoded; a 16-bit frame's counts as they are (a 16-bit PNG), which
training reads by `--pixel-bits` as the daemon reads the camera's frames by the model's.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zmq

from edge import transport
from edge.durable import require_writable
from edge.errors import FrameError
from edge.frames import write_image
from edge.health import HealthLimits
from edge.logrepeat import RepeatedLog
from edge.master import MasterParts
from edge.metrics import DaemonMetrics
from edge.progress import progress
from edge.protocol import Frame, UnreadableMessageError, file_name, parse_frame
from edge.settings import EdgeConfig

if TYPE_CHECKING:
    from edge.security import CurveGate

log = logging.getLogger(__name__)

# How often the CURVE keys' folder is looked at, as the daemon does (edge.publisher.LAG_CHECK_S).
KEYS_LOOK_S = 1.0


@dataclasses.dataclass
class Collected:
    """What a collection kept and left: images written per camera folder; per camera that sent
    16-bit frames, the bits their headers said they fill (None: not said); messages that were no
    readable frame; frames of other cameras than the one asked for; and frames that came within
    `every_s` of their camera's last kept one; frames of master parts; and the error of a frame
    that could not be written (a full disk), which ended the collection."""

    written: collections.Counter[Path] = dataclasses.field(default_factory=collections.Counter)
    sixteen_bit: dict[str, int | None] = dataclasses.field(default_factory=dict)
    unreadable: int = 0
    other_cameras: int = 0
    too_soon: int = 0
    master_parts: int = 0  # frames of master parts (edge.master_good_parts, edge.master_defective_parts)
    write_failed: OSError | None = None  # what ended the collection at a frame it could not write


def collect_frames(
    out: Path,
    cfg: EdgeConfig,
    count: int,
    camera: str | None = None,
    every_s: float = 0.0,
    timeout_s: float = 0.0,
    stop: Callable[[], bool] = lambda: False,
) -> Collected:
    """Bind the frames socket as the daemon does (`cfg`: its endpoint or camera endpoints, CURVE
    keys and limits) and write frames to OUT/<camera>/<camera>_<frame id>.png until `count` are
    written, `timeout_s` seconds pass without a frame (0: never), or `stop()`. `camera`: that
    camera's frames only; `every_s`: a camera's frame at most every so many seconds (a line at
    rest sends the same part again and again). OSError before anything is bound when OUT
    cannot be written; ConfigError when the endpoint cannot be bound. A frame that cannot be
    written ends the collection (Collected.write_failed)."""
    require_writable(out, out)
    collected = Collected()
    ctx = zmq.Context()
    auth = transport.start_auth(ctx, cfg, DaemonMetrics())
    sock = None
    try:
        sock = transport.frames_socket(ctx, cfg, who="vqad collect")
        where = cfg.frames_endpoint if cfg.frames_mode == "pull" else ", ".join(cfg.camera_endpoints)
        log.info("collecting frames at %s into %s", where, out)
        frames = _kept_frames(sock, cfg, camera, every_s, timeout_s, stop, collected, auth)
        for frame in progress(frames, "collecting", total=count, unit="frame"):
            try:
                collected.written[_write(out, frame)] += 1
            except OSError as exc:  # a full disk: what was written stays, and is said
                collected.write_failed = exc
                break
            if sum(collected.written.values()) >= count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        if sock is not None:
            sock.close(linger=0)
        if auth is not None:
            auth.stop()
        ctx.term()
    return collected


def _kept_frames(
    sock: zmq.Socket,
    cfg: EdgeConfig,
    camera: str | None,
    every_s: float,
    timeout_s: float,
    stop: Callable[[], bool],
    collected: Collected,
    curve: CurveGate | None,
) -> Iterator[Frame]:
    """The frames to write, as they come; what is left is counted in `collected`. With CURVE
    on (`curve`), a camera whose key was removed from the folder is no longer heard."""
    limits = cfg.frame_limits()
    # A shift's master parts are no product to learn from: a red rabbit would teach its defect
    # as good, and the good master is one part again and again.
    masters = MasterParts(cfg.master_good_parts, cfg.master_defective_parts)
    unreadable = RepeatedLog(log)
    last_kept: dict[str, float] = {}  # camera -> when its last frame was kept (monotonic)
    shapes: dict[str, tuple[int, ...]] = {}  # camera -> its first frame's shape
    told: set[str] = set()  # the cameras whose frames changed shape, said once
    heard = keys_read = time.monotonic()
    while not stop():
        if curve is not None and time.monotonic() - keys_read >= KEYS_LOOK_S:
            curve.keys.refresh()
            keys_read = time.monotonic()
        if not sock.poll(100):
            if timeout_s and time.monotonic() - heard > timeout_s:
                log.info("no frame for %.0f s: the collection ends", timeout_s)
                return
            continue
        message = sock.recv_multipart(copy=False)
        heard = time.monotonic()
        if curve is not None and not curve.keys.admits(message[0], "frames"):
            continue
        parts = [part.bytes for part in message]
        try:
            frame = parse_frame(parts, limits, keep_counts=True)
        except (UnreadableMessageError, FrameError) as exc:
            collected.unreadable += 1
            unreadable.log("a message that is no readable frame was left: %s", exc)
            continue
        if camera is not None and frame.camera_id != camera:
            collected.other_cameras += 1
            continue
        if masters.expected(frame.part_id) is not None:
            collected.master_parts += 1
            continue
        if every_s and heard - last_kept.get(frame.camera_id, -every_s) < every_s:
            collected.too_soon += 1
            continue
        last_kept[frame.camera_id] = heard
        if frame.image.dtype == np.uint16 and frame.camera_id not in collected.sixteen_bit:
            collected.sixteen_bit[frame.camera_id] = json.loads(bytes(parts[0])).get("pixel_bits")
        _say_shape(frame, shapes, told)
        yield frame


def _say_shape(frame: Frame, shapes: dict[str, tuple[int, ...]], told: set[str]) -> None:
    """Log a camera's first frame's shape, and once a frame of another camera's shape than its
    first: other channels, or an aspect ratio further off than the daemon's camera check allows
    (a few rows more or less, as KolektorSDD's commutators have, are one camera's)."""
    shape, first = frame.image.shape, shapes.get(frame.camera_id)
    if first is None:
        shapes[frame.camera_id] = shape
        log.info("%s: frames of %dx%d, %d channel%s, %d-bit%s", frame.camera_id, shape[0], shape[1], shape[2],
                 "" if shape[2] == 1 else "s", 8 * frame.image.itemsize,
                 f", from {frame.sender}" if frame.sender else "")  # fmt: skip
        return
    aspect_change = abs((shape[0] / shape[1]) / (first[0] / first[1]) - 1)
    if (shape[2] != first[2] or aspect_change > HealthLimits.max_aspect_change) and frame.camera_id not in told:
        told.add(frame.camera_id)
        log.warning("%s: frame %d is %dx%dx%d, its first was %dx%dx%d: one camera's images train one model",
                    frame.camera_id, frame.frame_id, *shape, *first)  # fmt: skip


def _write(out: Path, frame: Frame) -> Path:
    """The frame as a PNG in its camera's folder -> the folder. A name taken (a sender that
    counts its frame ids from 0 again) gets the receive time added."""
    folder = out / file_name(frame.camera_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_name(frame.camera_id)}_{frame.frame_id}.png"
    if path.exists():
        path = path.with_name(f"{path.stem}_{frame.recv_ns}.png")
    write_image(path, frame.image)
    return folder
