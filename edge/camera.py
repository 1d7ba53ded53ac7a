"""`vqad camera`: send frames to the daemon, from a folder of images, a video file, or an
OpenCV device index / URL. PUSH, connecting to --to. Paced at --fps (0 = as fast as the
daemon takes them); --loop repeats a folder or file. Writes an optional manifest CSV of
frame_id -> source, so results can be joined with ground truth."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zmq

from edge import transport
from edge.errors import DataError, HandshakeError
from edge.frames import (
    IMAGE_SUFFIXES,
    PIXEL_BITS,
    find_images,
    image_bytes,
    jpeg_whole,
    png_bit_depth,
    png_damage,
    read_image,
    stated_size,
)
from edge.logrepeat import RepeatedLog
from edge.progress import progress
from edge.protocol import MAX_ID_LENGTH, frame_message

log = logging.getLogger(__name__)
# Asked whether to stop (a signal handler's flag): checked between frames and while blocked.
StopFlag = Callable[[], bool]

STOP_LINGER_S = 3.0  # on a stop request, the longest wait for queued frames to leave


@dataclass(frozen=True)
class Sent:
    """What `run_camera` did: `frames` handed to ZeroMQ, and whether the last of them were still
    queued when the linger ran out and were `dropped` (ZeroMQ does not say how many: at most the
    few its high-water mark holds)."""

    frames: int
    dropped: bool = False


def is_live(source: str) -> bool:
    """Whether `source` is a capture device (an index, /dev/...) or a stream URL, not a folder
    or a file that can be read again from its start (a folder named "0" is a folder)."""
    path = Path(source)
    if path.is_dir() or path.is_file():
        return False
    return source.isdigit() or "://" in source or source.startswith("/dev/")


Frame = tuple[str, np.ndarray | bytes]  # (name, image or a file's own bytes)


@dataclass(frozen=True)
class Source:
    """A source opened: its `frames`, and how many one pass of a replay sends where that is known
    before it starts (`length`; None for a loop, a device, a stream, or a video whose container
    does not say), and whether it is `live` (a device or stream: no end). A folder is listed, and
    a video file opened, once for all."""

    frames: Iterator[Frame]
    length: int | None
    live: bool = False


def open_source(
    source: str, loop: bool, stop: StopFlag | None = None, pixel_bits: int = PIXEL_BITS, encoding: str = "raw"
) -> Source:
    """A folder (recursive, sorted), an image file, a video file, or a capture device or stream
    URL (reopened when it stops giving frames, until `stop()`). A frame is an image, or a JPEG or
    PNG file's own bytes when the frames travel in its `encoding` (as_sent); a 16-bit image file
    is read by its low `pixel_bits` bits. DataError for a source that is none of those, a folder
    without images, or a video that cannot be opened."""
    path = Path(source)
    if path.is_dir():
        files = find_images(path)
        if not files:
            raise DataError(f"no images in {path}")
        return Source(_folder_frames(path, files, loop, pixel_bits, encoding), None if loop else len(files))
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(_image_frames(path, loop, pixel_bits, encoding), None if loop else 1)
    if is_live(source):
        return Source(_live_frames(source, stop), None, live=True)
    if not path.exists():  # neither a folder, an image, a video file, a device nor a stream URL
        raise DataError(f"no such file or folder: {source} (images, a folder of them, a video, a device, a URL)")
    cap = _open_video(source)
    if cap is None:
        raise DataError(unopened(source))
    length = None if loop else int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None  # 0: the container does not say
    return Source(_video_frames(source, cap, loop), length)


def iter_source(
    source: str, loop: bool, stop: StopFlag | None = None, pixel_bits: int = PIXEL_BITS, encoding: str = "raw"
) -> Iterator[Frame]:
    """open_source's frames, the source opened at the first one."""
    yield from open_source(source, loop, stop, pixel_bits, encoding).frames


def _image_frames(path: Path, loop: bool, pixel_bits: int, encoding: str) -> Iterator[Frame]:
    frame = as_sent(path, encoding, pixel_bits)
    while True:
        yield str(path), frame
        if not loop:
            return


def _video_frames(source: str, cap: cv2.VideoCapture, loop: bool) -> Iterator[Frame]:
    """A video file's frames to its end, from `cap` (opened), and from its start again with loop."""
    while True:
        index = 0
        try:
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                yield f"{source}#{index}", image
                index += 1
        finally:
            cap.release()
        if not loop or index == 0:
            return
        cap = _open_video(source)
        if cap is None:
            raise DataError(f"cannot open video source {source}")


# The files whose own bytes travel when the frames go in their encoding.
_FILE_ENCODINGS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}


def as_sent(file: Path, encoding: str, pixel_bits: int = PIXEL_BITS) -> np.ndarray | bytes:
    """The frame an image file becomes: its own bytes, not decoded, when it is a JPEG or PNG and
    the frames travel in its encoding (the daemon then decodes the pixels the file holds, as
    `vqad score` and training read them: a JPEG encoded again would be compressed twice, and
    this process spends nothing on it); else its image (read_image), which frame_message
    encodes. A PNG's chunks are checked first, and a JPEG's end, and a damaged file is read, to
    be refused here; a JPEG's data is not checked (it has no checksum), and the daemon's result
    says what is wrong with it. A 16-bit PNG is read by `pixel_bits` into the 8-bit frame.
    DataError when it cannot be read."""
    if _FILE_ENCODINGS.get(file.suffix.lower()) != encoding:
        return read_image(file, pixel_bits)
    data = image_bytes(file)
    whole = stated_size(data, encoding) is not None
    if whole and encoding == "png":
        whole = (png_bit_depth(data) or 16) <= 8 and png_damage(data) is None
    elif whole and encoding == "jpeg":
        whole = jpeg_whole(data)
    return data if whole else read_image(file, pixel_bits, data)


def _folder_frames(path: Path, files: list[Path], loop: bool, pixel_bits: int, encoding: str) -> Iterator[Frame]:
    """The folder `path`'s images `files` in order (as_sent). One that cannot be read (a file
    still being copied, a broken one) is skipped with a warning, so that it does not end the
    replay of the thousands after it; a folder with none readable is a DataError."""
    # A looped small folder is read once: the sender should cost the line nothing.
    cache: dict[Path, np.ndarray | bytes | None] | None = {} if loop and len(files) <= 256 else None
    skipped_log = RepeatedLog(log)
    while True:
        skipped = 0
        for f in files:
            frame = cache[f] if cache is not None and f in cache else _readable(f, skipped_log, pixel_bits, encoding)
            if cache is not None:
                cache[f] = frame
            if frame is None:
                skipped += 1
            else:
                yield str(f), frame
        if skipped == len(files):
            raise DataError(f"no readable images in {path} (of {len(files)})")
        if skipped and cache is None:
            log.warning("%d of %d images in %s could not be read and were not sent", skipped, len(files), path)
        if not loop:
            return


def _readable(file: Path, skipped_log: RepeatedLog, pixel_bits: int, encoding: str) -> np.ndarray | bytes | None:
    """as_sent, or None after a warning when the file cannot be read."""
    try:
        return as_sent(file, encoding, pixel_bits)
    except DataError as exc:
        skipped_log.log("%s; skipped", exc)
        return None


# A live source (a device, a stream URL) that stops giving frames is reopened after this long,
# twice as long after each failed try, up to RECONNECT_MAX_S: a camera rebooting or a network
# switch restarting comes back within seconds to a minute, and the line needs its frames again.
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0


def _open_video(source: str) -> cv2.VideoCapture | None:
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if cap.isOpened():
        return cap
    cap.release()
    return None


def video_devices() -> list[str]:
    """This machine's video capture devices (V4L2's /dev/video*)."""
    return sorted(str(found) for found in Path("/dev").glob("video*"))


def unopened(source: str) -> str:
    """Why OpenCV could not open `source`, as far as this machine tells: OpenCV says nothing."""
    said = f"cannot open video source {source}"
    if not is_live(source):
        return f"{said}: not a video this OpenCV reads (its container or its codec)"
    if "://" in source:
        return f"{said}: the stream does not answer (its address, port or credentials; whether this machine reaches it)"
    device = Path(f"/dev/video{source}" if source.isdigit() else source)
    if not device.exists():
        return f"{said}: no {device} on this machine (its video devices: {', '.join(video_devices()) or 'none'})"
    return f"{said}: {device} is in use by another program, is no camera, or this user may not read it (video group)"


def _live_frames(source: str, stop: StopFlag | None) -> Iterator[Frame]:
    """Frames from a device or stream URL until `stop()`; one that cannot be opened at first is
    a DataError, one that stops giving frames later is reopened (logged when it goes and when it
    is back)."""
    cap = _open_video(source)
    if cap is None:
        raise DataError(unopened(source))
    stopped = stop or (lambda: False)
    index, lost_at, pause = 0, None, RECONNECT_FIRST_S
    try:
        while not stopped():
            ok, image = cap.read() if cap is not None else (False, None)
            if ok:
                if lost_at is not None:
                    log.info("video source %s gives frames again, after %.0f s", source, time.monotonic() - lost_at)
                    lost_at, pause = None, RECONNECT_FIRST_S
                yield f"{source}#{index}", image
                index += 1
                continue
            if lost_at is None:
                lost_at = time.monotonic()
                log.warning(
                    "video source %s gives no frame; reopening it, every %.0f s at most", source, RECONNECT_MAX_S
                )
            if cap is not None:
                cap.release()
                cap = None
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and not stopped():  # a stop is not held up by the wait
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            pause = min(RECONNECT_MAX_S, 2 * pause)
            cap = None if stopped() else _open_video(source)
    finally:
        if cap is not None:
            cap.release()


# After this long without room for a frame, the camera says what it waits for, once.
WAIT_HINT_S = 10.0


def _wait_for_room(
    sock: zmq.Socket, stop: StopFlag | None, endpoint: str, handshakes: transport.HandshakeWatch
) -> bool:
    """Block until the socket can take a frame (-> True) or `stop()` turns true (-> False);
    HandshakeError when the daemon refuses the connection.

    Polls in bounded slices, so that a stop request is seen while the daemon holds us back; a
    wait past WAIT_HINT_S is logged once (a daemon not started, or busy).
    """
    started, hinted = time.monotonic(), False
    while not sock.poll(100, zmq.POLLOUT):
        handshakes.check()
        if stop is not None and stop():
            return False
        if not hinted and time.monotonic() - started > WAIT_HINT_S:
            hinted = True
            log.warning("waiting %.0f s for the daemon at %s to take a frame: is it running, and is that its frames "
                        "endpoint (vqad serve --frames)?", WAIT_HINT_S, endpoint)  # fmt: skip
    return True


def _send(
    sock: zmq.Socket, message: list, stop: StopFlag | None, endpoint: str, handshakes: transport.HandshakeWatch
) -> bool:
    """Send one frame when the socket has room (-> True), or not when `stop()` turns true (->
    False); HandshakeError when the daemon refuses the connection. Without blocking: the room
    that a poll saw goes with a connection torn down before the send (a refused handshake), and
    a blocking send then waited for ever."""
    while _wait_for_room(sock, stop, endpoint, handshakes):
        try:
            sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            continue
        handshakes.check()
        return True
    return False


class Pacer:
    """Holds a sender to `fps` frames a second (0: as fast as it can). A sender that fell behind
    (a slow read, a stalled disk) sends two frames early to catch up, not every frame it owes."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next_t = time.monotonic()

    def wait(self) -> None:
        if not self.period:
            return
        delay = self.next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_t = max(self.next_t + self.period, time.monotonic() - self.period)


def _frames_socket(
    ctx: zmq.Context, endpoint: str, sndhwm: int, curve_secret: str | None, curve_server_key: str | None
) -> tuple[zmq.Socket, transport.HandshakeWatch]:
    """A PUSH socket connected to the daemon's frames endpoint, holding at most `sndhwm` frames,
    and the watch on its handshakes."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    transport.secure_client(sock, curve_secret, curve_server_key)
    handshakes = transport.HandshakeWatch(sock, endpoint, "camera", "frames", bool(curve_secret or curve_server_key))
    transport.connect(sock, endpoint, "frames")
    return sock, handshakes


def _flush_and_close(
    ctx: zmq.Context,
    sock: zmq.Socket,
    handshakes: transport.HandshakeWatch,
    sent: int,
    linger_s: float,
    who: str,
    endpoint: str,
) -> bool:
    """Give the queued frames up to `linger_s` to leave, and say so when some did not: no
    daemon's handshake came in that time, or the frames were still queued at its end.
    -> whether some were dropped; HandshakeError when the daemon refused the connection."""
    started, refused, unheard = time.monotonic(), None, False
    if sent and linger_s > 0 and not handshakes.succeeded:  # every frame was sent before a handshake
        refused = handshakes.refusal(linger_s)
        unheard = not (refused or handshakes.succeeded or handshakes.monitor is None)
    handshakes.close()  # before the context ends: its monitor is a socket of the context
    left_s = 0.0 if refused or unheard else max(0.0, linger_s - (time.monotonic() - started))
    sock.close(linger=int(left_s * 1000))
    ctx.term()  # blocks until the queued frames are sent, or LINGER runs out
    if refused:
        raise HandshakeError(refused)
    if unheard or (left_s > 0 and time.monotonic() - started >= linger_s - 0.05):
        log.warning(
            "%s: frames still queued after %g s were dropped: is the daemon at %s running?", who, linger_s, endpoint
        )
        return True
    return False


def _with_progress(opened: Source, count: int, camera_id: str) -> Iterator[Frame]:
    """The source's frames; a replay's with a bar on a terminal (it has an end to show how near).
    A folder's unreadable images are skipped: the bar may end short of its total."""
    if opened.live:
        return opened.frames
    known = [n for n in (count, opened.length) if n]
    return progress(opened.frames, f"camera {camera_id}", total=min(known, default=None), unit="frame")


def part_id_of(name: str) -> str:
    """The part id `--part-id-from-name` sends for a frame named `name` (a path, or a video's
    SOURCE#N): an image file's name without its suffix, as a serial number is typed into the
    record's part lookup ("RR-SCRATCH-1.png" is RR-SCRATCH-1); its last MAX_ID_LENGTH
    characters."""
    path = Path(name)
    named = path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name
    return named[-MAX_ID_LENGTH:]


def run_camera(
    source: str,
    endpoint: str,
    fps: float = 0.0,
    camera_id: str = "cam0",
    encoding: str = "raw",
    loop: bool = False,
    count: int = 0,
    manifest: str | Path | None = None,
    start_id: int = 0,
    curve_secret: str | None = None,
    curve_server_key: str | None = None,
    stop: StopFlag | None = None,
    sndhwm: int = 4,
    linger_s: float = 30.0,
    part_id_from_name: bool = False,
    pixel_bits: int = PIXEL_BITS,
) -> Sent:
    """Send frames until the source ends, `count` frames went out, or `stop()` is true. -> how
    many were handed over, and whether the last were dropped.

    At most `sndhwm` frames wait in this process: when the daemon stops reading (its
    backpressure policy), sending blocks here instead of piling frames up in memory. On the
    way out it waits up to `linger_s` for the queued frames to leave, and says so if they did not.
    part_id_from_name: each frame's part_id is its file's name without the image suffix (a
    video's: SOURCE#N), for trying the record's part lookup, or master parts, with a folder of
    photos of parts. pixel_bits: the bits a 16-bit image file's counts fill (12 for a Mono12
    camera's), by which it is read into the 8-bit frame sent.
    """
    if sndhwm < 1:
        raise ValueError("sndhwm must be >= 1")
    # A context of our own, terminated below: frames still queued in ZeroMQ's I/O thread are
    # only flushed (within LINGER) by terminating the context; a process that just exits
    # drops them.
    ctx = zmq.Context()
    sock, handshakes = _frames_socket(ctx, endpoint, sndhwm, curve_secret, curve_server_key)
    out = open(manifest, "w") if manifest else None
    if out:
        out.write("camera_id,frame_id,source\n")
    pace = Pacer(fps)
    sent, dropped = 0, False
    # This process, in each frame: two senders left at one camera id are seen by the daemon even
    # when their frame ids only grow (--start-id time), which ZeroMQ's PULL socket cannot tell.
    sender = f"{socket.gethostname()}:{os.getpid()}"[-MAX_ID_LENGTH:]
    try:
        for name, frame in _with_progress(open_source(source, loop, stop, pixel_bits, encoding), count, camera_id):
            if stop is not None and stop():
                break
            pace.wait()
            frame_id = start_id + sent
            part_id = part_id_of(name) if part_id_from_name else None
            message = frame_message(camera_id, frame_id, frame, encoding, part_id=part_id, sender=sender)
            if not _send(sock, message, stop, endpoint, handshakes):
                break
            if out:
                out.write(f"{camera_id},{frame_id},{name}\n")
            sent += 1
            if count and sent >= count:
                break
    except HandshakeError:
        linger_s = 0.0  # nothing queued can reach the daemon
        raise
    finally:
        if out:
            out.close()
        # Asked to stop (SIGTERM): the queued frames still get a few seconds to leave, but a
        # daemon that is gone must not hold the stop for the full linger.
        if stop is not None and stop():
            linger_s = min(linger_s, STOP_LINGER_S)
        dropped = _flush_and_close(ctx, sock, handshakes, sent, linger_s, f"camera {camera_id}", endpoint)
    if not dropped:
        log.info("camera %s sent %d frames to %s", camera_id, sent, endpoint)
    return Sent(sent, dropped)
