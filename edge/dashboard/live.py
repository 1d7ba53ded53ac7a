"""What the dashboard knows from the daemon's result stream: per camera, the counts, the fail
rate over time, recent scores and latencies, the latest result and the latest rejects.

`LiveView.add` takes each result as the subscriber reads it and only updates counters and
bounded buffers; pictures are drawn when a page asks for one. `ResultsFeed` is the subscriber
thread, of one daemon's results or of several (a plant's lines on one page); each result and
heartbeat is known by the endpoint it came from. The stream is the truth for "now"; the record
(when given) is the truth for history.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import zmq

from edge import transport
from edge.inspection import StreamMasks
from edge.logrepeat import RepeatedLog
from edge.overlay import result_picture
from edge.protocol import HEARTBEAT_TOPIC, StreamGaps, decode_map, parse_heartbeat, parse_result_header
from edge.recent import RecentDict

log = logging.getLogger(__name__)

# Fail-rate bins: 10 s over the last hour is 360 points per camera, enough for a chart that
# shows a minute's burst and cheap to send twice a second.
BIN_S = 10
HISTORY_S = 3600
# Recent scores for the histogram and latencies for p50/p99: a few minutes at line rates.
RECENT = 2000
# Rejects kept in memory per camera (the record keeps all of them): at 200 rejects/s a page
# that asked for the latest 12 still finds their pictures half a second later; 100 maps of
# 128 x 128 are 1.6 MB as published (a byte a pixel), a few MB with their frames' and drawn
# pictures' JPEGs.
REJECTS_KEPT = 100
# Pictures are JPEG: a fifth of PNG's encoding time, and a heat map loses nothing a person sees.
JPEG_QUALITY = 90
# The live picture is the newest result that carries its frame (the daemon's `publish_frames:
# preview` sends one every 0.5 s per camera), unless that is older than this behind the newest
# result: then the newest, drawn as its map alone, so the picture never lags the line for long.
FRAMED_HOLD_S = 2.0
# The cameras the view keeps, the latest to send (each holds up to REJECTS_KEPT rejects, their
# maps and frames: a few MB). A box serves a handful; past this, a sender names parts as cameras.
CAMERAS_SHOWN = 128
# Throughput is averaged over this window.
RATE_WINDOW_S = 10.0
# The subscriber reads what has arrived every BATCH_S: 20 wake-ups a second instead of one per
# result (200 at line rates); the page's tick is 0.5 s.
BATCH_S = 0.05


# Why a streamed reject is not in the record, and never will be (LiveView.never_recorded).
RUN_ENDED_UNRECORDED = ("the daemon run that decided it ended before recording it (killed, crashed or the power "
                        "lost): it is not in the record, and cannot be reviewed")  # fmt: skip
NO_RECORD_UNRECORDED = "its daemon keeps no record (vqad serve --record): it cannot be reviewed"


@dataclass
class LiveFrame:
    """A result as streamed: its header, its map (None when not published), its frame as JPEG."""

    header: dict[str, Any]
    map_bytes: bytes  # the map part as published (decoded only when drawn)
    frame_jpeg: bytes | None
    seen_s: float  # wall time the dashboard read it: matched against the record's publication times
    seen_mono: float  # the monotonic clock then: ages, rates and order, which a clock set does not move
    source: str = ""  # the results endpoint it came from: its daemon
    _picture: bytes | None = None

    def picture_jpeg(self, masks: StreamMasks | None = None) -> bytes | None:
        """The result drawn as a JPEG (its map over the frame, or either alone, regions boxed, and
        what its inspection mask left out hatched); None when the stream carries neither. Drawn
        once, however many pages ask (again while its mask has not come in a heartbeat)."""
        if self._picture is not None or self.header.get("score") is None:
            return self._picture
        known, keep = masks.of(self.header) if masks is not None else (True, None)
        amap = decode_map(self.header, self.map_bytes)
        picture = result_picture(self.header, amap, self.frame_jpeg, labelled=False, keep=keep)  # the page labels it
        if picture is None:
            return None
        ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        drawn = jpeg.tobytes() if ok else None
        if known:
            self._picture = drawn
        return drawn


@dataclass
class CameraView:
    counts: collections.Counter = field(default_factory=collections.Counter)
    last_ts_ns: int = 0
    last_seen_mono: float | None = None
    bins: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_S // BIN_S))
    per_second: collections.deque = field(default_factory=lambda: collections.deque(maxlen=int(RATE_WINDOW_S) + 1))
    scores: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    threshold: float | None = None
    model: dict[str, Any] | None = None
    latest: LiveFrame | None = None
    latest_framed: LiveFrame | None = None
    rejects: collections.deque = field(default_factory=lambda: collections.deque(maxlen=REJECTS_KEPT))
    source: str = ""  # the results endpoint it was last read from: which daemon serves it

    def add(self, frame: LiveFrame) -> None:
        h, now = frame.header, frame.seen_mono
        status, decision = h.get("status"), h.get("decision")
        self.counts["frames"] += 1
        self.counts[decision if status == "ok" and decision in ("pass", "fail") else status] += 1
        self.last_ts_ns, self.last_seen_mono = int(h.get("ts_ns") or 0), now
        second = int(now)
        if not self.per_second or self.per_second[-1][0] != second:
            self.per_second.append([second, 0])
        self.per_second[-1][1] += 1
        # A master part's decision is the line's proof, not its rate (edge/master.py): not counted.
        self._count_in_bin(now, decision if status == "ok" and not h.get("master") else None)
        if status != "ok":
            return
        self.scores.append(float(h["score"]))
        self.latency_ms.append(float((h.get("latency_ms") or {}).get("total") or 0.0))
        self.threshold, self.model, self.latest = float(h["threshold"]), h.get("model"), frame
        if frame.frame_jpeg:
            self.latest_framed = frame
        if decision == "fail":
            self.rejects.append(frame)
            self.counts["master_fail"] += bool(h.get("master"))

    @property
    def pictured(self) -> LiveFrame | None:
        """The result the live picture shows: the newest with its frame, if recent; else the newest."""
        framed, latest = self.latest_framed, self.latest
        if framed is not None and latest is not None and latest.seen_mono - framed.seen_mono <= FRAMED_HOLD_S:
            return framed
        return latest

    def _count_in_bin(self, now: float, decision: str | None) -> None:
        index = int(now // BIN_S)
        if not self.bins or self.bins[-1][0] != index:
            self.bins.append([index, 0, 0])  # [bin, decided, failed]
        if decision in ("pass", "fail"):
            self.bins[-1][1] += 1
            self.bins[-1][2] += decision == "fail"

    def fail_rate(self, now: float, span_s: float) -> float | None:
        """Fails / decided results over the last span_s seconds (None when nothing was decided)."""
        first = int((now - span_s) // BIN_S)
        decided = sum(b[1] for b in self.bins if b[0] > first)
        return sum(b[2] for b in self.bins if b[0] > first) / decided if decided else None

    def fail_rate_series(self, now: float) -> list[list[float]]:
        """[[seconds ago, fail rate]] per non-empty bin of the last hour, oldest first."""
        return [
            [round(max(0.0, now - (b[0] + 1) * BIN_S), 1), round(b[2] / b[1], 4)]
            for b in self.bins
            if b[1] and now - b[0] * BIN_S <= HISTORY_S
        ]

    def histogram(self, bins: int = 30) -> dict[str, Any]:
        """Recent scores in `bins` bins from 0 to max(2 x threshold, the highest score)."""
        if not self.scores or self.threshold is None:
            return {"edges": [], "counts": []}
        scores = np.fromiter(self.scores, np.float64)
        top = max(2.0 * self.threshold, float(scores.max()), 1e-9)
        counts, edges = np.histogram(np.clip(scores, 0.0, top), bins=bins, range=(0.0, top))
        return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}

    def summary(self, now: float, silent_after_s: float) -> dict[str, Any]:
        """The camera's figures for the page at `now`, a time.monotonic() reading."""
        c, lat = self.counts, np.fromiter(self.latency_ms, np.float64)
        recent = sum(n for second, n in self.per_second if now - second <= RATE_WINDOW_S)
        age = now - self.last_seen_mono if self.last_seen_mono is not None else None
        pictured = self.pictured
        latest = pictured.header if pictured else None
        return {
            "frames": c["frames"],
            "pass": c["pass"],
            "fail": c["fail"],
            "master_fails": c["master_fail"],  # of the fails, the master parts' (no rejects of the line's)
            "error": c["error"],
            "dropped": c["dropped"],
            "last_ts_ns": self.last_ts_ns,
            "fail_rate_5min": self.fail_rate(now, 300),
            "fail_rate_1h": self.fail_rate(now, 3600),
            "age_s": round(age, 2) if age is not None else None,
            "silent": age is None or age > silent_after_s,
            "throughput_per_s": round(recent / RATE_WINDOW_S, 2),
            "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 99)} if len(lat) else None,
            "threshold": self.threshold,
            "model": self.model,
            "daemon": self.source or None,
            "latest": _brief(latest) if latest else None,
            "fail_rate_series": self.fail_rate_series(now),
            "fail_rate_bin_s": BIN_S,
            "histogram": self.histogram(),
        }


# The latest result as the page gets it; its frame_shape sizes the page's picture.
BRIEF_KEYS = ("camera_id", "frame_id", "part_id", "ts_ns", "status", "score", "threshold", "decision", "regions",
              "health", "frame_shape")  # fmt: skip


def _brief(h: dict[str, Any]) -> dict[str, Any]:
    return {k: h.get(k) for k in BRIEF_KEYS if k in h}


class LiveView:
    """Thread-safe: the feed thread adds, request handlers read."""

    def __init__(self, silent_after_s: float = 10.0):
        self.silent_after_s = silent_after_s
        self.cameras: RecentDict[str, CameraView] = RecentDict(CAMERAS_SHOWN)
        self.lock = threading.Lock()
        self.results_seen = 0
        self.gaps = StreamGaps()  # what the feed missed: the counts are short by it (seq per daemon run)
        self._heartbeats: dict[str, tuple[float, dict[str, Any]]] = {}  # by the endpoint it came from
        self._heard: set[str] = set()  # the endpoints any message came from
        self._refused: dict[str, str] = {}  # why the daemon at an endpoint refuses the page's connection
        self.masks = StreamMasks()  # the inspection masks the heartbeats carry: hatched in the pictures
        self.started = time.monotonic()  # when the feed began to listen

    def add(self, header: dict[str, Any], map_bytes: bytes, frame_jpeg: bytes | None, source: str = "") -> None:
        """A result read from the results endpoint `source`."""
        frame = LiveFrame(header, map_bytes, frame_jpeg, time.time(), time.monotonic(), source)
        with self.lock:
            self.results_seen += 1
            self._heard.add(source)
            self.gaps.follow(header)
            camera = str(header["camera_id"])
            view = self.cameras.get(camera) or CameraView()
            self.cameras[camera] = view  # the most recent: a camera that sends is never the one dropped
            view.source = source
            view.add(frame)

    def heartbeat(self, header: dict[str, Any], source: str = "") -> None:
        """A heartbeat read from the results endpoint `source`."""
        self.masks.learn(header)
        with self.lock:
            self._heartbeats[source] = (time.monotonic(), header)
            self._heard.add(source)
            self.gaps.follow_heartbeat(header)

    def last_heartbeat(self, source: str = "") -> tuple[float, dict[str, Any]] | None:
        """(seconds since the last heartbeat from `source`, its header), or None before the first."""
        with self.lock:
            beat = self._heartbeats.get(source)
        return None if beat is None else (time.monotonic() - beat[0], beat[1])

    def never_recorded(self, frame: LiveFrame) -> str | None:
        """Why the streamed `frame`, not in the record now, never will be, as its daemon's latest
        heartbeat tells: that daemon keeps no record, or it names the run that published the
        frame among the runs before it (`previous_runs`: a killed run's writer had not committed
        it; a clean stop records every result first). None while it may yet be recorded."""
        with self.lock:
            beat = self._heartbeats.get(frame.source)
        if beat is None:
            return None
        run, now = frame.header.get("run"), beat[1]
        if run and run != now.get("run") and run in (now.get("previous_runs") or ()):
            return RUN_ENDED_UNRECORDED
        if run == now.get("run") and "record" in now and now["record"] is None:
            return NO_RECORD_UNRECORDED
        return None

    def refuse(self, source: str, why: str | None) -> None:
        """The daemon at `source` refuses the feed's connection, for `why`; None: no longer."""
        with self.lock:
            if why:
                self._refused[source] = why
            else:
                self._refused.pop(source, None)

    def refusal(self, source: str = "") -> str | None:
        """Why the daemon at `source` refuses the feed's connection, or None."""
        with self.lock:
            return self._refused.get(source)

    def never_heard_s(self, source: str = "") -> float | None:
        """Seconds the view has listened for `source` without a message from it (a heartbeat or a
        result); None once one came."""
        with self.lock:
            heard = source in self._heard
        return None if heard else time.monotonic() - self.started

    def summary(self, recorded: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Each camera's figures, by camera id. `recorded`: cameras the record knows; one the
        stream has not sent since the dashboard started is there too, with nothing streamed and
        `recorded_only`, so that the page shows its rejects and its tally from the record."""
        now = time.monotonic()
        with self.lock:
            cameras = {cam: {**view.summary(now, self.silent_after_s), "recorded_only": False}
                       for cam, view in self.cameras.items()}  # fmt: skip
        quiet = {**CameraView().summary(now, self.silent_after_s), "recorded_only": True}  # nothing streamed
        for camera in recorded:
            if camera not in cameras and len(cameras) < CAMERAS_SHOWN:
                cameras[camera] = dict(quiet)
        return dict(sorted(cameras.items()))

    def rejects(self, camera: str | None, limit: int) -> list[LiveFrame]:
        """The latest streamed rejects, newest first."""
        with self.lock:
            views = [self.cameras[camera]] if camera in self.cameras else [] if camera else self.cameras.values()
            found = [f for v in views for f in v.rejects]
        return sorted(found, key=lambda f: f.seen_mono, reverse=True)[:limit]

    def find(self, camera: str, frame_id: int | str, ts_ns: int | None = None) -> LiveFrame | None:
        """A streamed result still held: the latest of `camera` ("latest"), or one of its rejects,
        the newest of that frame id, or the one sent with `ts_ns` (a sender that started its ids
        again sent the frame id twice)."""
        with self.lock:
            view = self.cameras.get(camera)
            if view is None:
                return None
            if frame_id == "latest":
                return view.pictured
            same = [f for f in view.rejects if f.header["frame_id"] == frame_id]
            return max(same, key=lambda f: (ts_ns is None or f.header["ts_ns"] == ts_ns, f.seen_mono), default=None)


class ResultsFeed(threading.Thread):
    """Subscribes to the results of one daemon or several (`endpoints`) and adds each to a
    LiveView, known by its endpoint, until stopped."""

    def __init__(
        self, endpoints: str | tuple[str, ...], view: LiveView, curve_secret: str = "", curve_server_key: str = ""
    ):
        super().__init__(name="results-feed", daemon=True)
        self.endpoints = (endpoints,) if isinstance(endpoints, str) else tuple(endpoints)
        self.view = view
        self.curve = (curve_secret, curve_server_key) if curve_secret else (None, None)
        self.malformed = RepeatedLog(log)
        self.stopping = threading.Event()

    def run(self) -> None:
        # A socket per daemon, so that each heartbeat says which daemon is up. The dashboard must
        # never slow a daemon: past this many unread results, ZeroMQ drops this subscriber's
        # messages (PUB never blocks) and the counts show a gap, not a stall.
        ctx = zmq.Context.instance()
        keys = ("curve_secret", "curve_server_key")
        subscribed = {e: transport.results_subscriber(ctx, e, 10000, None, *self.curve, "dashboard", keys)
                      for e in self.endpoints}  # fmt: skip
        socks = {sock: e for e, (sock, _) in subscribed.items()}
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        try:
            while not self.stopping.is_set():
                for endpoint, (_, handshakes) in subscribed.items():
                    self._follow_handshakes(endpoint, handshakes)
                ready = dict(poller.poll(100))
                for sock, endpoint in socks.items():
                    if sock in ready:
                        self._drain(sock, endpoint)
                if ready:
                    # Read in batches: a wake-up per result costs more than the result at line
                    # rates, and a page never needs a result sooner than this.
                    self.stopping.wait(BATCH_S)
        finally:
            for sock, handshakes in subscribed.values():
                handshakes.close()
                sock.close(linger=0)

    def _follow_handshakes(self, endpoint: str, handshakes: transport.HandshakeWatch) -> None:
        """Whether the daemon at `endpoint` refuses this page's connection, into the view; said
        in the log when it begins and when it ends."""
        refused = handshakes.refusal()
        if refused == self.view.refusal(endpoint) or (refused is None and not handshakes.succeeded):
            return
        if refused:
            log.error("%s", refused)
        else:
            log.info("the daemon at %s accepts this dashboard's connection", endpoint)
        self.view.refuse(endpoint, refused)

    def _drain(self, sock: zmq.Socket, endpoint: str) -> None:
        """Every result waiting on the socket into the view."""
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if parts[0] == HEARTBEAT_TOPIC:
                    self.view.heartbeat(parse_heartbeat(parts), endpoint)
                    continue
                header = parse_result_header(parts)
                self.view.add(header, parts[2], parts[3] if len(parts) > 3 else None, endpoint)
            except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
                self.malformed.log("ignoring a malformed result: %s", exc)
            except Exception as exc:  # noqa: BLE001 - one result the page cannot take must not end its feed
                self.malformed.log("ignoring a result the page could not take (%s: %s)", type(exc).__name__, exc)

    def stop(self) -> None:
        self.stopping.set()
        self.join(2.0)
