"""`vqad watch`: subscribe to results, print one line each, optionally save heat-map
overlays of failed frames, and print a summary (counts and latency percentiles) at the end."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zmq

from edge import transport
from edge.clock import span
from edge.durable import require_writable
from edge.fail_rate import mostly_unfit
from edge.frames import write_image
from edge.inspection import StreamMasks
from edge.logrepeat import RepeatedLog
from edge.master import outcome_of
from edge.overlay import result_picture
from edge.protocol import (
    HEARTBEAT_TOPIC,
    RECORD_BEHIND_S,
    RunsHeard,
    StreamGaps,
    file_name,
    heartbeat_overdue,
    parse_heartbeat,
    parse_result,
    unfit_reasons,
)

log = logging.getLogger(__name__)

# `vqad watch` prints every result: it may fall this many behind a burst before ZeroMQ drops
# some of its copies (the daemon never waits for it).
WATCH_RCVHWM = 100_000


# The summary line gives a rate only over results that spanned this long: 3 results read in a
# burst are "7647.4/s", a figure of the socket's buffer, not the line's. as_dict keeps the
# figure for the benchmarks, whose short streams are such bursts on purpose.
TEXT_RATE_MIN_SPAN_S = 1.0


# The latencies the summary's percentiles come from: every one up to this many results, then a
# uniform sample of this many (reservoir sampling), so that a subscriber left running for months
# (30 results/s: 78 million a month, 2.5 GB as a list) holds 0.8 MB. A p99 from 100,000 draws
# is within a few hundredths of a percentile of the whole stream's.
LATENCY_SAMPLE = 100_000


class LatencySample:
    """A uniform random sample of at most `size` of the values added (Vitter's algorithm R),
    all of them while there are no more; seeded, so that a summary reads the same twice."""

    def __init__(self, size: int = LATENCY_SAMPLE) -> None:
        self.size = size
        self.values = np.empty(size, np.float64)
        self.seen = 0
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        if self.seen < self.size:
            self.values[self.seen] = value
        else:
            slot = self._rng.randrange(self.seen + 1)
            if slot < self.size:
                self.values[slot] = value
        self.seen += 1

    def __len__(self) -> int:
        return min(self.seen, self.size)

    def percentiles(self, qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
        """{"p50": ..., ...} of the sample; {} before the first value."""
        kept = self.values[: len(self)]
        return {f"p{q}": float(np.percentile(kept, q)) for q in qs} if len(kept) else {}


class Summary:
    def __init__(self, every_camera: bool = True) -> None:
        """every_camera: the subscription is to every camera's results, so that a gap in a
        daemon run's `seq` is results this subscriber missed (one camera's leave gaps of others)."""
        self.by_status: collections.Counter[str] = collections.Counter()
        self.by_decision: collections.Counter[str] = collections.Counter()
        self.by_master: collections.Counter[str] = collections.Counter()  # master parts' checks, by outcome
        self.latency = LatencySample()
        self.first: float | None = None
        self.last: float | None = None
        self.every_camera = every_camera
        self.gaps = StreamGaps()
        self.runs = RunsHeard()
        self.refused: str | None = None  # why the daemon refused this reader's connection

    def add(self, header: dict[str, Any]) -> int:
        """Count a result; -> how many results of its daemon run were missed just before it (a
        gap in `seq`: ZeroMQ dropped them for a reader that fell behind, or it was not connected).
        KeyError or TypeError, counting nothing, for a header without the fields counted."""
        latency = float(header["latency_ms"]["total"]) if header["status"] == "ok" else None
        now = time.monotonic()
        self.first = self.first or now
        self.last = now
        self.by_status[header["status"]] += 1
        if header.get("decision"):
            self.by_decision[header["decision"]] += 1
        if header.get("master"):
            self.by_master[master_outcome(header)] += 1
        if latency is not None:
            self.latency.add(latency)
        self.runs.hear(header)
        return self.gaps.follow(header) if self.every_camera else 0

    def beat(self, header: dict[str, Any]) -> tuple[int, list[str]]:
        """-> how many results the daemon's heartbeat shows were missed since the last one read,
        and the daemon runs it names that this reader never heard (RunsHeard)."""
        unseen = self.runs.hear(header)
        return (self.gaps.follow_heartbeat(header) if self.every_camera else 0), unseen

    @property
    def missed(self) -> int:
        return self.gaps.missed

    def as_dict(self) -> dict[str, Any]:
        n = sum(self.by_status.values())
        span = (self.last - self.first) if self.first and self.last and self.last > self.first else 0.0
        return {
            "results": n,
            "by_status": dict(self.by_status),
            "by_decision": dict(self.by_decision),
            "master_parts": dict(self.by_master),
            "latency_ms": self.latency.percentiles(),
            "rate_per_s": (n - 1) / span if span > 0 else None,
            "missed": self.missed if self.every_camera else None,
            "unseen_runs": self.runs.unseen,
        }

    def text(self) -> str:
        d = self.as_dict()
        lat = " ".join(f"{k} {v:.1f} ms" for k, v in d["latency_ms"].items())
        span = (self.last or 0.0) - (self.first or 0.0)
        rate = f", {d['rate_per_s']:.1f}/s" if d["rate_per_s"] and span >= TEXT_RATE_MIN_SPAN_S else ""
        missed = f"; missed {self.missed} (a daemon's record keeps them)" if self.missed else ""
        unseen = f"; {len(self.runs.unseen)} daemon run(s) never heard" if self.runs.unseen else ""
        masters = f"master parts {_counts(self.by_master)}; " if self.by_master else ""
        return (
            f"{d['results']} results{rate}; status {_counts(self.by_status)}; "
            f"decision {_counts(self.by_decision)}; {masters}"
            f"latency {lat or 'n/a'}{missed}{unseen}"
        )


def _counts(counts: dict[str, int]) -> str:
    """{"fail": 2, "pass": 4} -> "pass 4, fail 2": the most first; "none" when empty."""
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def master_outcome(h: dict[str, Any]) -> str:
    """A master part's result's outcome (right, wrong, unproven): as its `master` names it, or
    worked out for a daemon that did not name it (edge.master.outcome)."""
    return outcome_of({**h["master"], "decision": h.get("decision"), "unfit": unfit_reasons(h)})


def format_line(h: dict[str, Any]) -> str:
    part = f" part {h['part_id']}" if h.get("part_id") else ""
    master = h.get("master")
    if master:  # a part of known verdict (edge/master.py)
        checked = master_outcome(h)
        said = "as expected" if checked == "right" else f"{checked.upper()}, expected {master['expected']}"
        part += f" (master: {said})"
    if h["status"] == "ok":
        regions = len(h.get("regions") or [])
        unfit = unfit_reasons(h)
        return (
            f"{h['camera_id']} #{h['frame_id']}{part} {h['decision'].upper():4s} score {h['score']:.5g} "
            f"(thr {h['threshold']:.5g}) regions {regions} batch {h['batch_size']} "
            f"latency {h['latency_ms']['total']:.1f} ms" + (f" unfit: {unfit}" if unfit else "")
        )
    return f"{h['camera_id']} #{h['frame_id']}{part} {h['status'].upper()} {h.get('error') or ''}"


# A daemon that has sent nothing at all (no heartbeat, no result) for this long since the reader
# connected is warned of: ten of the default heartbeat's intervals, where a connection on a
# plant's network takes well under one.
NEVER_HEARD_S = 10.0


class DaemonSilence:
    """Says once when a daemon that sent heartbeats falls silent, and once when it is back; the
    same when its heartbeat says its inference has stalled (edge.watchdog), when it says its
    record has fallen RECORD_BEHIND_S behind, for each camera's fail-rate alarm, and for each
    camera paused by the line's control; once for each damaged record it says it set aside.
    A daemon that has sent nothing for NEVER_HEARD_S since the reader started (not running, or
    another endpoint) is warned of once."""

    def __init__(self, endpoint: str, clock: Callable[[], float] = time.monotonic):
        self.endpoint, self.silent, self.stalled, self.record_behind = endpoint, False, False, False
        self.clock_behind = False
        self.fail_rate_alarms: set[str] = set()  # the cameras whose fail-rate alarm the heartbeat names
        self.paused: set[str] = set()  # the cameras the heartbeat names paused (vqad ctl pause)
        self.set_aside_at: int | None = None  # the time of the damaged record last said set aside
        self.last: tuple[float, dict[str, Any]] | None = None  # (when, the heartbeat's header)
        self.clock, self.started = clock, clock()
        self.heard_any = False  # a heartbeat or a result came
        self.never_heard_said = False

    def heard(self) -> None:
        """A message came (a result, or a heartbeat): the daemon is there, even with its heartbeat off."""
        if self.never_heard_said:
            log.info("the daemon at %s is heard from", self.endpoint)
        self.heard_any, self.never_heard_said = True, False

    def beat(self, parts: list[bytes]) -> dict[str, Any] | None:
        """Take a heartbeat message; -> its header, None for one that is not a heartbeat."""
        try:
            header = parse_heartbeat(parts)
        except (ValueError, json.JSONDecodeError):
            return None
        if self.silent:
            log.info("the daemon at %s sends heartbeats again", self.endpoint)
        self.heard()
        self.last, self.silent = (self.clock(), header), False
        stalled = bool(header.get("stalled"))
        if stalled != self.stalled:
            if stalled:
                log.warning("the daemon at %s says its inference has stalled (%s frames wait)",
                            self.endpoint, header.get("queue", "?"))  # fmt: skip
            else:
                log.info("the daemon at %s says its inference runs again", self.endpoint)
        self.stalled = stalled
        self._record(header.get("record") or {})
        self._clock(header.get("clock"))
        self._fail_rate(header.get("fail_rate") or {})
        if "paused" in header:  # a daemon that knows pauses
            self._paused(set(header["paused"] or ()))
        return header

    def _paused(self, paused: set[str]) -> None:
        """Say once when the daemon's control pauses a camera, and once when it resumes it: a
        paused camera's frames get error results, and a stopped line's camera sends none."""
        for camera in sorted(paused - self.paused):
            log.warning("the daemon at %s says camera %s is paused by the line's control: its parts are not "
                        "inspected until vqad ctl ENDPOINT resume %s", self.endpoint, camera, camera)  # fmt: skip
        for camera in sorted(self.paused - paused):
            log.info("the daemon at %s says camera %s is resumed", self.endpoint, camera)
        self.paused = paused

    def _fail_rate(self, fail_rate: dict[str, Any]) -> None:
        """Say once when the daemon raises a camera's fail-rate alarm, and once when it clears."""
        alarms = fail_rate.get("alarms") or {}
        for camera in sorted(alarms.keys() - self.fail_rate_alarms):
            alarm = alarms[camera]
            camera_first = ": see to the camera" if mostly_unfit(alarm) else ""
            unfit = f" ({alarm['unfit']} of them unfit frames{camera_first})" if alarm.get("unfit") else ""
            log.warning("the daemon at %s raised camera %s's fail-rate alarm: %s of its last %s decisions failed%s, "
                        "over the limit of %.0f%%", self.endpoint, camera, alarm.get("fails"),
                        alarm.get("of", fail_rate.get("window")), unfit,
                        100 * float(alarm.get("limit", fail_rate.get("limit")) or 0))  # fmt: skip
        for camera in sorted(self.fail_rate_alarms - alarms.keys()):
            log.info("the daemon at %s cleared camera %s's fail-rate alarm", self.endpoint, camera)
        self.fail_rate_alarms = set(alarms)

    def _clock(self, clock: dict[str, Any] | None) -> None:
        """Say once that the daemon's box's clock reads before a time it has passed, and once
        that it no longer does (edge.clock)."""
        behind = clock is not None
        if behind and not self.clock_behind:
            log.warning("the daemon at %s says its box's clock reads %s, %s before %s (%s): its record files "
                        "results at that clock's time", self.endpoint, clock.get("reads"),
                        span(clock.get("behind_s") or 0.0), clock.get("behind"), clock.get("behind_at"))  # fmt: skip
        elif self.clock_behind and not behind:
            log.info("the daemon at %s says its box's clock reads after what it had passed again", self.endpoint)
        self.clock_behind = behind

    def _record(self, record: dict[str, Any]) -> None:
        behind = (record.get("behind_s") or 0.0) >= RECORD_BEHIND_S
        if behind and not self.record_behind:
            why = f"; the record's last error: {record['error']}" if record.get("error") else ""
            log.warning("the daemon at %s says its record is %.0f s behind (%s results wait for their rows%s)",
                        self.endpoint, record["behind_s"], record.get("pending", "?"), why)  # fmt: skip
        elif self.record_behind and not behind:
            log.info("the daemon at %s says its record has caught up", self.endpoint)
        self.record_behind = behind
        aside = record.get("set_aside")
        if aside and aside.get("at_ns") != self.set_aside_at:  # once per file set aside
            self.set_aside_at = aside.get("at_ns")
            log.warning("the daemon at %s says its record was damaged (%s) and set aside as %s; it records on a new "
                        "one (docs/deploy.md, \"A damaged record\")", self.endpoint, aside.get("reason"),
                        aside.get("damaged"))  # fmt: skip

    def check(self, ending: bool = False) -> None:
        """Warn of what the daemon's silence says; `ending`: the reader stops now (its --timeout,
        --count or a stop), so a daemon never heard is named even before NEVER_HEARD_S."""
        if not self.heard_any:
            waited_s = self.clock() - self.started
            if (waited_s > NEVER_HEARD_S or ending) and not self.never_heard_said:
                self.never_heard_said = True
                log.warning("nothing from the daemon at %s in %.1f s: is it running, and are these its results "
                            "(edge.results_endpoint)?", self.endpoint, waited_s)  # fmt: skip
            return
        if self.last is None or self.silent:
            return
        quiet_s = self.clock() - self.last[0]
        if heartbeat_overdue(quiet_s, self.last[1]):
            self.silent = True
            log.warning("no heartbeat from the daemon at %s for %.1f s: is it running?", self.endpoint, quiet_s)


def _say_missed(said: RepeatedLog, missed: int, run: str, seq: int) -> None:
    """Log that the `missed` results of `run` before `seq` did not reach this reader."""
    said.log("missed %d results before seq %d of run %s (this reader fell behind); a daemon with a record "
             "has them: vqad records RECORD --run %s --after-seq %d",
             missed, seq, run, run, seq - missed - 1)  # fmt: skip


def save_overlay(
    folder: Path,
    header: dict[str, Any],
    amap: np.ndarray | None,
    frame_jpeg: bytes | None,
    keep: np.ndarray | None = None,
) -> Path | None:
    """The result's picture as FOLDER/<camera>_<frame>.png, or <camera>_<frame>_2.png and on when
    that is taken (a sender that started its frame ids again: an earlier picture is never
    overwritten); None when the stream carries neither its map nor its frame. `keep`: the
    inspection mask it was judged through (edge.inspection.StreamMasks), what it left out
    hatched. OSError when it cannot be written. The camera id becomes a file name, so it cannot
    reach outside FOLDER."""
    picture = result_picture(header, amap, frame_jpeg, keep=keep)
    if picture is None:
        return None
    stem = f"{file_name(header['camera_id'])}_{header['frame_id']:08d}"
    path, n = folder / f"{stem}.png", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}_{n}.png"
    write_image(path, picture)
    return path


def jsonl_to_stdout(jsonl: str | Path | None) -> bool:
    """Whether `--jsonl` names stdout ("-"): a pipe's, into jq or a program, which then carries
    the headers alone (no line per result, the summary elsewhere)."""
    return jsonl is not None and str(jsonl) == "-"


# A fail whose inspection mask no heartbeat has carried yet waits this long for it (a heartbeat
# a second, as shipped), and at most this many wait: then they are drawn unhatched.
MASK_WAIT_S = 3.0
MASK_WAIT_FAILS = 64


class _Outputs:
    """Where `vqad watch` writes each result: its line to `out` (unless quiet), its header to the
    JSONL file, and a fail's picture to the overlay folder. A file that cannot be written (a full
    disk) is logged and the results go on being printed."""

    def __init__(self, out: TextIO | None, jsonl: str | Path | None, save_dir: str | Path | None):
        self.out, self.jsonl = out, jsonl
        self.folder = Path(save_dir) if save_dir else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            require_writable(self.folder, self.folder)  # an existing folder on a read-only disk
        self.sink = sys.stdout if jsonl_to_stdout(jsonl) else open(jsonl, "a") if jsonl else None
        # One per message: a message logged within another's interval would only be counted.
        self.unsaved, self.undrawable, self.unwritten = RepeatedLog(log), RepeatedLog(log), RepeatedLog(log)
        self.masks = StreamMasks()  # from the heartbeats: what each fail's picture hatches
        # Fails whose inspection mask no heartbeat has carried yet (a reader just connected, a
        # reload): drawn once it comes, or unhatched after MASK_WAIT_S or MASK_WAIT_FAILS of them.
        self.waiting: list[tuple[float, dict[str, Any], np.ndarray | None, bytes | None]] = []

    def write(self, line: str, header: dict[str, Any], amap: np.ndarray | None, frame_jpeg: bytes | None) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)
        if self.sink:
            try:
                self.sink.write(json.dumps(header) + "\n")
                self.sink.flush()
            except OSError as exc:
                self.unwritten.log("result not written to %s: %s", self.jsonl, exc)
        if self.folder and header.get("decision") == "fail":
            self.waiting.append((time.monotonic(), header, amap, frame_jpeg))
            self.save_waiting()

    def heartbeat(self, beat: dict[str, Any]) -> None:
        """A heartbeat read: the mask it carries, and the fails that waited for it drawn."""
        self.masks.learn(beat)
        self.save_waiting()

    def save_waiting(self, every: bool = False) -> None:
        """Draw the waiting fails whose mask is known, and all of them (unhatched where it is not)
        once the oldest waited MASK_WAIT_S, MASK_WAIT_FAILS wait, or `every`."""
        if not self.waiting:
            return
        every = every or time.monotonic() - self.waiting[0][0] > MASK_WAIT_S or len(self.waiting) > MASK_WAIT_FAILS
        still = []
        for waited in self.waiting:
            known, keep = self.masks.of(waited[1])
            if known or every:
                self._save(*waited[1:], keep)
            else:
                still.append(waited)
        self.waiting = still

    def _save(
        self, header: dict[str, Any], amap: np.ndarray | None, frame_jpeg: bytes | None, keep: np.ndarray | None
    ) -> None:
        try:
            saved = save_overlay(self.folder, header, amap, frame_jpeg, keep)
        except OSError as exc:
            self.unsaved.log("overlay not saved: %s", exc)
        else:
            if saved is None:
                self.undrawable.log("overlay not saved: the daemon publishes neither maps nor frames "
                                    "(edge.publish_maps, edge.publish_frames)")  # fmt: skip

    def close(self) -> None:
        self.save_waiting(every=True)
        if self.sink and self.sink is not sys.stdout:
            with contextlib.suppress(OSError):  # what a full disk kept back is logged above
                self.sink.close()


def run_watch(
    endpoint: str,
    camera: str | None = None,
    save_dir: str | Path | None = None,
    count: int = 0,
    timeout_s: float = 0.0,
    jsonl: str | Path | None = None,
    quiet: bool = False,
    stop: Callable[[], bool] | None = None,
    out: TextIO | None = None,
    curve_secret: str | None = None,
    curve_server_key: str | None = None,
) -> Summary:
    """Subscribe and print until `count` results, `timeout_s` idle seconds, or `stop()`; returns the summary."""
    sock, handshakes = transport.results_subscriber(
        zmq.Context.instance(), endpoint, WATCH_RCVHWM, camera, curve_secret, curve_server_key, "reader"
    )
    malformed, gaps = RepeatedLog(log), RepeatedLog(log)
    daemon = DaemonSilence(endpoint)
    outputs = _Outputs(None if quiet or jsonl_to_stdout(jsonl) else out or sys.stdout, jsonl, save_dir)
    summary = Summary(every_camera=not camera)
    last = time.monotonic()
    try:
        while not (stop and stop()):
            daemon.check()
            outputs.save_waiting()  # those whose mask's wait is over, on a line gone idle too
            summary.refused = handshakes.refusal()
            if summary.refused:
                break
            if sock.poll(100):
                parts = sock.recv_multipart()
                if parts[0] == HEARTBEAT_TOPIC:
                    beat = daemon.beat(parts)
                    _hear_beat(beat, summary, gaps)
                    if beat is not None:
                        outputs.heartbeat(beat)
                    continue
                daemon.heard()
                if _take_result(parts, camera, summary, outputs, malformed, gaps):
                    last = time.monotonic()
                    if count and sum(summary.by_status.values()) >= count:
                        break
            elif timeout_s and time.monotonic() - last > timeout_s:
                break
    except KeyboardInterrupt:
        pass
    finally:
        handshakes.close()
        sock.close(linger=0)
        outputs.close()
    if not summary.refused:
        daemon.check(ending=True)
    return summary


def _hear_beat(beat: dict[str, Any] | None, summary: Summary, gaps: RepeatedLog) -> None:
    """A daemon's heartbeat (None: not one to count): say the results it shows were missed since
    the last one read, and the daemon runs this reader never heard."""
    if beat is None:
        return
    missed, unseen = summary.beat(beat)
    if missed:
        _say_missed(gaps, missed, beat["run"], beat["published"])
    if unseen:
        log.warning("the daemon started and stopped %d time(s) while this reader could not "
                    "hear it (runs %s); a daemon with a record has their results: vqad records "
                    "RECORD --run RUN", len(unseen), ", ".join(unseen))  # fmt: skip


def _take_result(
    parts: list[bytes], camera: str | None, summary: Summary, outputs: _Outputs, malformed: RepeatedLog,
    gaps: RepeatedLog,
) -> bool:  # fmt: skip
    """Count, print and save one result message; -> whether it was counted (not another camera's,
    not malformed)."""
    try:
        header, amap = parse_result(parts)
        if camera and header.get("camera_id") != camera:
            return False  # the topic prefix also matches longer ids
        line = format_line(header)
        missed = summary.add(header)
    except (ValueError, KeyError, TypeError) as exc:  # a publisher that is not a vqad daemon
        malformed.log("ignoring a malformed result: %s: %s", type(exc).__name__, exc)
        return False
    if missed:
        _say_missed(gaps, missed, header["run"], header["seq"])
    outputs.write(line, header, amap, parts[3] if len(parts) > 3 else None)
    return True
