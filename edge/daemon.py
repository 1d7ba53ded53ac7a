"""`vqad serve`: the daemon on the line. startup -> main loop -> shutdown.

Threads, each owning its own sockets (ZeroMQ sockets are not thread-safe):
- receiver: reads frame messages, parses and preprocesses them (decode, resize: this
  overlaps with inference of the current batch), and queues them. Malformed frames
  become error results at once. With `decode_workers` > 1 it hands the parsing and
  preprocessing to that many threads, and one more ("decode-order") queues the frames in
  the order they came (edge.inorder).
- inference workers (the main thread, plus `inference_workers - 1` more, each with its own
  backend instance): dynamic batching and inference, then post-processing into results.
  Batches are numbered as they leave the queue.
- publisher: sends every result on the PUB socket, batches in the order they were numbered.

Signal handlers only set flags. On SIGTERM/SIGINT the receiver stops reading (after a
bounded, non-blocking drain of what the socket already holds), the main loop answers
every accepted frame, the publisher flushes, and sockets close with linger.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import cv2
import numpy as np
import zmq

from edge import transport, vqad_version
from edge.batcher import FrameQueue
from edge.clock import PACKAGE_MADE, RECORD_NEWEST, ClockWatch
from edge.control import Control
from edge.errors import BackendError, DaemonThreadError, FrameError
from edge.fail_rate import FAIL_RATE_FILE, FailRateAlarm, end_left_raised
from edge.inorder import InOrder
from edge.inspection import judged_words, mask_note
from edge.logrepeat import RepeatedLog
from edge.master import MASTERS_FILE, MasterParts
from edge.metrics import DaemonMetrics
from edge.protocol import Frame, UnreadableMessageError, capture_time_ns, parse_frame, parse_header
from edge.publisher import STOP, Publisher
from edge.results import BatchResults, Pending, Result, dropped_result, error_result, scored_results
from edge.serving import Serving, load_serving
from edge.settings import EdgeConfig
from edge.state import Overrides, follow_runs, hold_state_folder, mark_running
from edge.watchdog import Liveness, Watchdog, notify

if TYPE_CHECKING:
    from edge.security import CurveGate, HandshakeRefusals

log = logging.getLogger(__name__)

# Every camera id gets its own state in the daemon (health, drift, frame previews; the most recent
# edge.recent.CAMERAS_KEPT) and in the dashboard. More distinct ids than this are a sender that
# names its parts as cameras.
MANY_CAMERAS = 64

DECODE_ORDER = "decode-order"  # the thread that admits frames decoded side by side, in order


@dataclass
class Decoded:
    """A message as the receiver (or a decoding thread) read it: the frame and its model input,
    or what failed; `serving`, the model in force when it was read."""

    parts: list[bytes | memoryview]
    recv_ns: int
    arrived_mono_ns: int
    serving: Serving
    frame: Frame | None = None
    model_input: np.ndarray | None = None
    failure: Exception | None = None


class _StatusLog:
    """The daemon's status line, every `every_s` while results are published. An idle line (a
    night, a weekend) is said once, not every interval: a box logs for months into a journal it
    shares with the system."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.next_at = clock() + every_s
        self.last_published, self.idle_said = 0, False

    def due(self) -> bool:
        """Whether a line is due: checked on every turn of the loop, so without its lock."""
        return self.clock() >= self.next_at

    def tick(self, accepted: int, published: int, queued: int) -> None:
        now = self.clock()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        new, self.last_published = published - self.last_published, published
        if new == 0 and queued == 0:
            if not self.idle_said:
                log.info("idle: no frame in the last %.0f s (accepted %d, published %d); status lines "
                         "resume with the frames", self.every_s, accepted, published)  # fmt: skip
            self.idle_said = True
            return
        self.idle_said = False
        log.info("accepted %d, published %d (%.1f/s), queue %d", accepted, published, new / self.every_s, queued)


class Daemon:
    def __init__(self, model_dir: str | Path, cfg: EdgeConfig, ready_file: str | Path | None = None):
        self.model_dir = Path(model_dir)
        self.cfg = cfg
        self.ready_file = Path(ready_file) if ready_file else None
        self.metrics = DaemonMetrics()
        self._throttle_logs()
        self.should_exit = threading.Event()  # set by signals: stop reading, finish, exit
        self.receiver_done = threading.Event()
        self.inference_stopped = threading.Event()  # the main loop is gone: nothing more will be dequeued
        self.queue: FrameQueue[Pending] = FrameQueue(cfg.queue_size, cfg.overload, source=lambda p: p.camera_id)
        self.outbox: queue.Queue = queue.Queue()
        self.accepted = 0
        self.published = 0  # also the next result's `seq` (only the publisher thread adds to it)
        # This start of the daemon: each result names it with its `seq`, and its record rows carry
        # both, so that a subscriber catches up on what it missed (docs/protocol.md).
        self.run_id = uuid.uuid4().hex
        self.version = vqad_version()  # said at the start, in each heartbeat and in vqad_build_info
        self.metrics.show_version(self.version)
        self.previous_runs: list[str] = []  # the state folder's runs before this one, oldest first
        self._count_lock = threading.Lock()
        self.serving: Serving | None = None  # the model, its backends and scoring; replaced between batches
        self._take_lock = threading.Lock()  # one worker at a time forms a batch and numbers it
        self._busy: list[threading.Lock] = []  # held by worker i while it infers a batch
        self.reload_requested = threading.Event()  # SIGHUP: the control thread reloads
        self.paused: set[str] = set()  # cameras whose frames get an error result instead of a score
        self._cameras_seen: set[str] = set()  # up to MANY_CAMERAS ids, for one warning
        self._last_frame_ids: dict[str, int] = {}  # of up to MANY_CAMERAS cameras
        self._senders: dict[str, tuple[str, str | None]] = {}  # camera -> (its latest sender, the one before)
        self._senders_logs: dict[str, RepeatedLog] = {}
        self._batch_seq = 0
        self.ctx: zmq.Context | None = None
        self.curve: CurveGate | None = None  # the authenticator and its keys, with CURVE on
        self.refusals: HandshakeRefusals | None = None
        self.frames_sock: zmq.Socket | None = None
        self.results_sock: zmq.Socket | None = None
        self.control: Control | None = None
        self.threads: list[threading.Thread] = []
        self._decoders: InOrder[Decoded] | None = None  # decode_workers > 1: frames decoded side by side
        self.recorder = None  # edge.record.RecordWriter with --record
        self.limits = cfg.frame_limits()
        self._marker: Path | None = None
        self._previous_unclean = False  # the run before this one left its running marker
        self._stop_change: tuple[str, dict[str, Any], str] | None = None  # the record's last row of this run
        self.stop_signal: str | None = None  # the signal that stopped the daemon (SIGTERM, SIGINT)
        self._state_lock: IO[str] | None = None  # edge.state.hold_state_folder's, held while serving
        self.state_dir = cfg.state_folder(model_dir)
        self.overrides = Overrides(self.state_dir / Overrides.FILE_NAME)  # what vqad ctl changed; loaded at start
        self.liveness = Liveness()  # each loop beats once per turn; edge.watchdog finds one that stopped
        self.watchdog: Watchdog | None = None
        self.failed: list[str] = []  # what failed (a thread, the backend): the exit is then DaemonThreadError's
        self._failing: tuple[float, int] | None = None  # since when, and how many, batches have all failed
        self.clock = ClockWatch()  # this machine's clock, against times it has passed (edge.clock)
        self._set_up_watches()

    def _throttle_logs(self) -> None:
        """The daemon's repeated complaints, each said at most once a while (edge.logrepeat)."""
        self._unreadable_log, self._failed_batch_log = RepeatedLog(log), RepeatedLog(log, logging.ERROR)
        self._nonfinite_log = RepeatedLog(log, logging.ERROR)
        self._clock_log = RepeatedLog(log)
        self._ids_back_logs: dict[str, RepeatedLog] = {}  # per camera, so that each is named
        self._fault_log = RepeatedLog(log, logging.ERROR)

    def _set_up_watches(self) -> None:
        """What watches the line beside the model: each camera's fail rate, the master parts, the clock."""
        cfg = self.cfg
        # Each camera's decisions, as they are published, against edge.fail_rate_alarm (0 = off);
        # the master parts' checks. Both are rows of the record's changes: an audit says when the
        # line rejected too much, and when its inspection was proved, on which model and threshold.
        on_alarm = lambda change, detail: self._note("fail-rate-alarm", state=change, **detail)  # noqa: E731
        counted = cfg.fail_rate_alarm or any(cfg.fail_rate_alarm_cameras.values())
        self.fail_rate = (FailRateAlarm(cfg.fail_rate_alarm, self.metrics, on_alarm, limits=cfg.fail_rate_alarm_cameras,
                                        kept=self.state_dir / FAIL_RATE_FILE)
                          if counted else None)  # fmt: skip
        on_check = lambda detail: self._note("master-part", **detail)  # noqa: E731
        self.masters = (MasterParts(cfg.master_good_parts, cfg.master_defective_parts, self.metrics, on_check,
                                    self.state_dir / MASTERS_FILE)
                        if cfg.master_good_parts or cfg.master_defective_parts else None)  # fmt: skip
        self.metrics.clock_behind.set_function(lambda: (self.clock.status() or {}).get("behind_s", 0.0))

    # -- life cycle -------------------------------------------------------------------------
    def serve(self) -> int:
        """-> 0 after a stop by signal; raises DaemonThreadError when a thread failed, or the
        backend failed every batch for backend_failure_exit_s."""
        self.install_signal_handlers()
        self.watchdog = Watchdog(self.liveness, self._status_line, lambda on: self.metrics.stalled.set(on)).start()
        try:
            self.startup()
        except BaseException:
            self._undo_startup()
            raise
        try:
            self.main_loop()
        finally:
            self.shutdown()
        if self.failed:
            raise DaemonThreadError(f"stopped after the failure of its {', '.join(self.failed)} (logged above)")
        return 0

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            self.stop_signal = signal.Signals(signum).name  # for the record's "stop"
            self.should_exit.set()  # only a flag: the loops notice it

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())  # only a flag, too

    def startup(self) -> None:
        """Load the model, bind the sockets, open the record, start the loops; then say ready (the
        log, the ready file, systemd). A step that fails raises before the daemon says ready."""
        cfg = self.cfg
        if cfg.opencv_threads:
            cv2.setNumThreads(cfg.opencv_threads)
        self.serving = serving = load_serving(self.model_dir, cfg, self.metrics)
        self.metrics.threshold.set(serving.scoring.threshold)
        self.clock.passed(PACKAGE_MADE, serving.package.created_ns)
        self._busy = [threading.Lock() for _ in serving.backends]
        # The sockets and ports before the state folder: a taken one (the daemon before this
        # one still running) stops the start before it touches that daemon's marker.
        self._open_sockets()
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        self._check_previous_exit()
        if cfg.record:
            self._start_recorder()
        self.watch_clock()  # with the record's newest result, when it answers now
        self._restore(Overrides.load(self.state_dir))
        if self.masters is not None:
            self.masters.restore()  # a master part that missed its verdict before the restart: it stands
            self.masters.show_current(*_inspection(self.serving))
        # The alarms the run before left raised: counted anew (or ended, with the alarm off here),
        # and named in the start's row.
        if self.fail_rate is not None:
            alarms = {"fail_rate_alarms_left": self.fail_rate.take_left_raised()}
        else:
            alarms = {"fail_rate_alarms_ended": end_left_raised(self.state_dir / FAIL_RATE_FILE)}
        self._start_decoders()
        self._start_threads()
        if self.recorder is not None:  # serving now
            self._record_start(alarms)
        self.metrics.ready.set(1)
        self._log_ready()
        if self.ready_file:
            self.ready_file.write_text(
                json.dumps({"pid": os.getpid(), "frames": cfg.frames_endpoint, "results": cfg.results_endpoint})
            )
        notify(f"READY=1\nSTATUS={self._status_line()}")

    def _open_sockets(self) -> None:
        """The frames', results' and control sockets, with CURVE's authenticator where it is on."""
        cfg = self.cfg
        self.ctx = zmq.Context()
        self.curve = transport.start_auth(self.ctx, cfg, self.metrics)
        self.frames_sock = transport.frames_socket(self.ctx, cfg)
        self.results_sock = transport.results_socket(self.ctx, cfg)
        self.control = Control(self, cfg.control_endpoint)
        if cfg.curve.enabled:
            from edge.security import watch_refusals

            socks = {"frames": self.frames_sock, "results": self.results_sock, "control": self.control.sock}
            self.refusals = watch_refusals(socks, self.metrics)

    def _start_threads(self) -> None:
        """The receiver, the publisher and the control thread (the workers are main_loop's)."""
        self.threads = [
            threading.Thread(target=self._guarded(loop, name), name=name, daemon=True)
            for loop, name in ((self._receive_loop, "receiver"), (Publisher(self).run, "publisher"),
                               (self.control.run, "control"))
        ]  # fmt: skip
        for t in self.threads:
            t.start()

    def _record_start(self, alarms: dict[str, Any]) -> None:
        """The start's row among the record's changes: how the run before ended, the clock, the
        alarms it left raised, and its results put back or without a row."""
        clock = {"clock": status} if (status := self.clock.status()) else {}  # the times it files are off
        # The results of the run before that have no row (killed before its writer committed
        # them): the audit reads them in the record, not only in this box's log.
        noted = {**alarms, "previous_results_without_row": self.recorder.previous_lost,
                 "previous_results_recovered": self.recorder.previous_recovered}  # fmt: skip
        self.recorder.event(
            *self._change("start", previous_exit="unclean" if self._previous_unclean else "clean", **clock,
                          **{key: value for key, value in noted.items() if value})
        )  # fmt: skip

    def _start_recorder(self) -> None:
        from edge.record import RecordWriter

        cfg = self.cfg
        self.recorder = RecordWriter(
            cfg.record, cfg.evidence_dir or None, cfg.record_pass_fraction, metrics=self.metrics,
            max_gb=cfg.record_max_gb, keep_days=cfg.record_keep_days, min_free_gb=cfg.record_min_free_gb,
            state_file=self.state_dir / "vqad-serve.record.json", run_id=self.run_id,
        ).start()  # fmt: skip

    def _log_ready(self) -> None:
        """The start's one line: what is served, on what, where, and how frames are batched."""
        cfg, serving = self.cfg, self.serving
        pkg = serving.package
        log.info(
            "ready: vqad %s, model %s (%s…) threshold %.6g%s, backend %s x %d, decoders %d, frames %s (%s), "
            "results %s, max_batch %d, max_delay %.1f ms, overload %s",
            self.version,
            pkg.name,
            pkg.sha256[:12],
            serving.scoring.threshold,
            "" if serving.mask is None else f" judging {judged_words(mask_note(serving.mask))}",
            cfg.backend,
            len(serving.backends),
            cfg.decoders(),
            cfg.frames_endpoint if cfg.frames_mode == "pull" else ",".join(cfg.camera_endpoints),
            cfg.frames_mode,
            cfg.results_endpoint,
            cfg.max_batch,
            cfg.max_delay_ms,
            cfg.overload,
        )

    def _start_decoders(self) -> None:
        """With decode_workers > 1, a pool that decodes frames side by side for the receiver and
        one thread that admits them in the order they came (edge.inorder)."""
        workers = self.cfg.decoders()
        self.metrics.decode_workers.set(workers)
        if workers > 1:
            self._decoders = InOrder(
                workers, self._decode, self._admit, window=2 * workers, name=DECODE_ORDER,
                beat=lambda: self.liveness.beat(self._admitter), guard=lambda run: self._guarded(run, self._admitter),
            )  # fmt: skip

    @property
    def _admitter(self) -> str:
        """The loop that admits decoded frames, by its liveness name."""
        return DECODE_ORDER if self._decoders is not None else "receiver"

    def record_status(self) -> dict[str, Any] | None:
        """The record's state as the heartbeat and `vqad ctl status` say it (None without a record)."""
        return self.recorder.status() if self.recorder is not None else None

    def state(self) -> dict[str, Any]:
        """What the heartbeat and `vqad ctl status` both say of the daemon (docs/protocol.md): its
        model and threshold (None while the first package loads), its runs, counts and record."""
        scoring = self.serving.scoring if self.serving else None
        return {
            "model": scoring.model if scoring else None,
            # The package's folder as the daemon was given it (a `current` symlink, say), made
            # absolute: where `vqad calibrate` sets its threshold and mask, as the dashboard's
            # dialog says to a person who is not in the daemon's working folder.
            "model_dir": os.path.abspath(self.model_dir),
            "threshold": scoring.threshold if scoring else None,
            "threshold_source": scoring.threshold_source if scoring else None,
            "inspection": mask_note(self.serving.mask) if self.serving else None,
            "run": self.run_id,
            "previous_runs": self.previous_runs,
            "vqad_version": self.version,
            "accepted": self.accepted,
            "published": self.published,
            "queue": len(self.queue),
            "stalled": self.stalled,
            "paused": sorted(self.paused),
            "record": self.record_status(),
            "clock": self.clock.status(),
            "fail_rate": self.fail_rate.state() if self.fail_rate else None,
            "master_parts": self.masters.state() if self.masters else None,
        }

    def _note(self, kind: str, **detail: Any) -> None:
        """What the daemon saw happen, from the publisher's thread, as a row among the record's
        changes (left to the writer thread: the publisher must not wait on the database), with
        the model and threshold then: a step of the box's clock, a master part's check, a
        camera's fail-rate alarm raised or cleared."""
        if self.recorder is not None:
            self.recorder.event(*self._change(kind, **detail), by_writer=True)

    def watch_clock(self) -> None:
        """Every second or so (the publisher's thread): this machine's clock against the times
        it has passed (the package's export, the record's newest result), and its steps, each
        a `clock` row among the record's changes (edge.clock)."""
        if self.recorder is not None:
            self.clock.passed(RECORD_NEWEST, self.recorder.newest_ns)
        step = self.clock.check()
        if step is not None:
            self.metrics.clock_steps.inc()
            self._note("clock", **step.detail())

    @property
    def stalled(self) -> bool:
        """Whether the watchdog finds a loop of the pipeline that has not come round."""
        return self.watchdog is not None and self.watchdog.stalled

    def _status_line(self) -> str:
        """What `systemctl status` shows of the running daemon."""
        pkg = self.serving.package if self.serving else None
        model = f"{pkg.name} ({pkg.sha256[:12]}…)" if pkg else "(loading)"
        return f"serving {model}: accepted {self.accepted}, published {self.published}, queue {len(self.queue)}"

    def _guarded(self, loop: Callable[[], None], name: str) -> Callable[[], None]:
        """`loop` as a thread's target: its failure is logged and stops the daemon."""

        def run() -> None:
            try:
                loop()
            except Exception:
                log.exception("the %s thread failed; stopping the daemon", name)
                self._fail(f"{name} thread")
            finally:
                self.liveness.ended(name)

        return run

    def _fail(self, what: str) -> None:
        self.failed.append(what)
        self.should_exit.set()  # the other loops finish what was accepted, then stop

    def main_loop(self) -> None:
        """Run the inference workers until the receiver is done and the queue is empty."""
        workers = [
            threading.Thread(
                target=self._guarded(lambda i=i: self._inference_loop(i), f"inference-{i}"),
                name=f"inference-{i}",
                daemon=True,
            )
            for i in range(1, len(self._busy))
        ]
        for t in workers:
            t.start()
        try:
            self._guarded(lambda: self._inference_loop(0, log_progress=True), "inference-0")()
        except BaseException:
            self.should_exit.set()  # the other workers finish what is queued, then stop
            raise
        finally:
            for t in workers:
                t.join()

    def _inference_loop(self, index: int, log_progress: bool = False) -> None:
        """Worker `index`: take a batch (numbered, with the serving in force when it is taken)
        and infer it on its own backend instance of that serving."""
        cfg = self.cfg
        status = _StatusLog(cfg.log_every_s) if log_progress else None
        while True:
            self.liveness.beat(f"inference-{index}")
            with self._take_lock:
                batch = self.queue.get_batch(cfg.max_batch, cfg.max_delay_ms / 1000.0, timeout=0.05)
                seq = self._batch_seq
                if batch:
                    self._batch_seq += 1
                    self._busy[index].acquire()  # before a swap can see this batch's serving go
                serving = self.serving
            self.metrics.queue_depth.set(len(self.queue))
            if batch:
                try:
                    self._infer(batch, serving, index, seq)
                finally:
                    self._busy[index].release()
            elif self.receiver_done.is_set() and len(self.queue) == 0:
                break
            if status is not None and status.due():
                with self._count_lock:
                    status.tick(self.accepted, self.published, len(self.queue))

    def shutdown(self) -> None:
        notify("STOPPING=1")
        self.should_exit.set()
        self.inference_stopped.set()
        self.metrics.ready.set(0)
        receiver = self.threads[0] if self.threads else None
        if receiver is not None:
            receiver.join(timeout=10)
        for item in self.queue.drain():  # only if the main loop died: nothing accepted goes unanswered
            self._emit_pending_error(item, "daemon stopped before inference")
        self.outbox.put(STOP)
        for t in self.threads[1:]:
            t.join(timeout=max(10, self.cfg.linger_ms / 1000 + 5))
        cause = (
            f"the failure of its {', '.join(self.failed)}" if self.failed else self.stop_signal or "its main loop's end"
        )
        # An alarm still raised ends with the run (a start's windows are empty): the audit's interval closes here.
        raised = {"fail_rate_alarms": sorted(self.fail_rate.raised)} if self.fail_rate and self.fail_rate.raised else {}
        self._stop_change = self._change("stop", cause=cause, accepted=self.accepted, published=self.published,
                                         **raised)  # fmt: skip
        self._release()
        log.info("shut down cleanly: accepted %d frames, published %d results", self.accepted, self.published)

    def _undo_startup(self) -> None:
        """Release what a start that failed had taken (no thread of the daemon runs yet), so
        that the process exits, and remove its running marker if it wrote one: a start that
        failed is no crash for the next start to report."""
        for sock in (self.frames_sock, self.results_sock, self.control.sock if self.control else None):
            if sock is not None:
                sock.close(linger=0)
        self._release()

    def _release(self) -> None:
        """The end of a shutdown, or of a start that failed, once no socket is open: the record's
        writer, the authenticator, the context, the backends and the running marker."""
        if self._decoders is not None:
            self._decoders.close(timeout=5)  # after the receiver's own close: a start that failed
        if self.recorder is not None:
            self.recorder.close(last_change=self._stop_change)  # after the results it counts
        if self.curve is not None:
            self.curve.stop()
        if self.refusals is not None:
            self.refusals.stop()  # its monitors are sockets of the context
        if self.ctx is not None:
            self.ctx.term()
        if self.serving is not None:
            self.serving.close()
        if self._marker is not None:
            self._remove_marker()
        if self._state_lock is not None:
            self._state_lock.close()  # lets the folder go
        if self.watchdog is not None:
            self.watchdog.stop()

    def _remove_marker(self) -> None:
        """A clean stop's last word to the next start. A marker that a read-only folder never
        took is no error (unlink says EROFS even of a missing file), and a disk that turned
        read-only meanwhile (ext4's errors=remount-ro) must not turn the stop into a failure,
        or skip the rest of it."""
        if not self._marker.exists():
            return
        try:
            self._marker.unlink()
        except OSError as exc:
            log.warning("%s cannot be removed (%s): the next start will count this clean stop as unclean",
                        self._marker, exc.strerror or exc)  # fmt: skip

    # -- startup pieces -------------------------------------------------------------------
    def _check_previous_exit(self) -> None:
        self._state_lock = hold_state_folder(self.state_dir)  # before the marker: another daemon's is not a crash
        self._marker, self._previous_unclean = mark_running(self.state_dir, self.metrics)
        self.previous_runs = follow_runs(self.state_dir, self.run_id)

    def _change(self, kind: str, **detail: Any) -> tuple[str, dict[str, Any], str]:
        """The daemon's own start or stop as a change for the record (kind, detail, by), beside
        those `vqad ctl` makes: an audit tells a line that was not inspected (the daemon stopped,
        or killed: a start whose `previous_exit` is unclean) from one that made no parts, and a
        subscriber learns where a run it never heard ends (`published`)."""
        scoring = self.serving.scoring
        about = {
            "model": scoring.model,
            "threshold": scoring.threshold,
            "inspection": mask_note(self.serving.mask),
            "run": self.run_id,
            "vqad_version": self.version,
        }  # an upgrade of the box, in the line's audit
        return kind, {**about, **detail, "pid": os.getpid()}, "vqad serve"

    def _restore(self, overrides: Overrides) -> None:
        """Put back what `vqad ctl` changed before the restart (edge.state.Overrides): its
        threshold, while the daemon starts on the model and configured threshold it replaced;
        its paused cameras."""
        self.overrides, kept, serving = overrides, overrides.threshold, self.serving
        if kept is not None:
            sha, configured = serving.package.sha256, serving.scoring.threshold
            who, why = kept["source"].get("who"), kept["source"].get("reason")
            if overrides.applies(sha, configured):
                self.serving = serving.with_threshold(kept["value"], kept["source"])
                self.metrics.threshold.set(kept["value"])
                log.info("threshold %.6g kept from before the restart (set by %s: %s) over the configured %.6g",
                         kept["value"], who, why, configured)  # fmt: skip
            else:
                log.warning(
                    "the threshold %.6g set with vqad ctl before the restart (by %s: %s) is dropped: it replaced %.6g "
                    "on model %s…, and the daemon now starts on %.6g on model %s…",
                    kept["value"], who, why, kept["replaces"], str(kept["model_sha256"])[:12], configured, sha[:12],
                )  # fmt: skip
                overrides.threshold = None
                overrides.save()
                if self.recorder is not None:  # the serving threshold changed: the audit says why
                    detail = {"from": kept["value"], "to": configured, "set_by": who, "reason": why,
                              "model": serving.scoring.model}  # fmt: skip
                    self.recorder.event("threshold-dropped", detail, "vqad serve (start)")
        if overrides.paused:
            self.paused.update(overrides.paused)
            self.metrics.show_paused(self.paused)
            log.info("paused before the restart, and still paused: %s (vqad ctl ... resume CAMERA)",
                     ", ".join(overrides.paused))  # fmt: skip

    # -- changes while serving (the control thread) ------------------------------------------
    def swap(self, new: Serving, close_old: bool = True) -> Serving:
        """Serve with `new` from the next batch on; every batch already taken finishes with the
        old one, whose backends are then closed (not when only the threshold changed)."""
        with self._take_lock:
            old, self.serving = self.serving, new
        self.metrics.threshold.set(new.scoring.threshold)
        self.clock.passed(PACKAGE_MADE, new.package.created_ns)
        for lock in self._busy:  # wait for the batches in flight on the old backends
            with lock:
                pass
        if old is not None and new.drift is not old.drift:
            self.metrics.forget_drift()  # the old model's alarms: its windows start again
        if old is not None and (before := _inspection(old)) != (after := _inspection(new)):
            self._another_inspection(before, after)
        if close_old and old is not None and old.backends is not new.backends:
            old.close()
        return old

    def _another_inspection(self, before: tuple[str, float, str | None], after: tuple[str, float, str | None]) -> None:
        """Another model, threshold or inspection mask serves: the master parts' checks prove the
        one before, and the fails before say nothing of this one (a threshold set to end false
        rejects). The fail-rate alarm's reason says which changed (docs/protocol.md)."""
        if self.masters is not None:
            log.info("the master parts' checks so far were made on the model, threshold or inspection mask before: "
                     "run them again to prove this inspection")  # fmt: skip
            self.masters.show_current(*after)
        if self.fail_rate is not None:
            self.fail_rate.start_all_again(_what_changed(before, after))

    # -- receiver thread ------------------------------------------------------------------
    def _receive_loop(self) -> None:
        sock = self.frames_sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self.should_exit.is_set():
                self.liveness.beat("receiver")
                if poller.poll(100):
                    self._receive_admitted(sock.recv_multipart(copy=False))
            # Frames the socket already holds were delivered to us: answer them too (bounded).
            for _ in range(self.cfg.rcvhwm + self.cfg.queue_size):
                try:
                    parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._receive_admitted(parts)
        finally:
            sock.close(linger=0)
            if self._decoders is not None:
                self._decoders.close()  # every frame received is queued or answered first
            self.receiver_done.set()

    def _receive_admitted(self, message: list[zmq.Frame]) -> None:
        """A message as it arrives, unless it came from a camera whose CURVE key was removed."""
        if self.curve is None or self.curve.keys.admits(message[0], "frames"):
            self._receive(transport.message_parts(message))

    def _receive(self, parts: list[bytes | memoryview]) -> None:
        """A message as it arrives: decoded here, or by the decoding threads, then admitted in
        the order it came."""
        arrived = time.time_ns(), time.monotonic_ns()
        self.metrics.frames_in.inc()
        if self._decoders is None:
            self._admit(self._decode(parts, *arrived))
        else:
            self._decoders.submit(parts, *arrived, waiting=lambda: self.liveness.beat("receiver"))

    def _decode(self, parts: list[bytes | memoryview], recv_ns: int, arrived_mono_ns: int) -> Decoded:
        """The costly, thread-safe part of accepting a frame: parse and decode the message and
        bring the frame to the model's input. Never raises: what failed is in the result."""
        started = time.perf_counter()
        serving = self.serving  # one model for the frame's reading and its input
        decoded = Decoded(parts, recv_ns, arrived_mono_ns, serving)
        try:
            decoded.frame = parse_frame(parts, self.limits, recv_ns, serving.package.pixel_bits)
            decoded.model_input = serving.package.input_format.frame(decoded.frame.image)
        except Exception as exc:  # noqa: BLE001 - the frame's own failure: _admit answers it
            decoded.failure = exc
        self.metrics.decode_seconds.inc(time.perf_counter() - started)
        return decoded

    def _admit(self, decoded: Decoded) -> None:
        """A decoded message, in the order messages came: an error result for a malformed frame
        or a paused camera, else the health gate's verdict and a place in the queue."""
        parts, recv_ns, frame, failure = decoded.parts, decoded.recv_ns, decoded.frame, decoded.failure
        if frame is None:
            self._answer_unparsed(parts, failure, recv_ns)
            return
        self._note_camera(frame.camera_id)
        self._check_clock(frame.camera_id, frame.ts_ns, recv_ns)
        self._check_frame_id(frame.camera_id, frame.frame_id)
        self._check_sender(frame.camera_id, frame.sender)
        if frame.part_id is None and self.masters is not None:  # vqad ctl master named this frame's part
            frame.part_id = self.masters.take_tag(frame.camera_id)
        if frame.camera_id in self.paused:
            reason = "camera paused by the line's control"
            self._reject(frame.camera_id, frame.frame_id, frame.ts_ns, reason, recv_ns, frame.part_id)
            return
        try:
            if failure is not None:
                raise failure
            health = None
            if decoded.serving.health is not None:
                health = decoded.serving.health.check(frame.camera_id, decoded.model_input, frame.image.shape[:2])
        except Exception as exc:  # noqa: BLE001 - any preprocessing failure is this frame's error, not the daemon's
            reason = exc.reason if isinstance(exc, FrameError) else f"preprocessing failed: {exc}"
            self._reject(frame.camera_id, frame.frame_id, frame.ts_ns, reason, recv_ns, frame.part_id)
            return
        with self._count_lock:
            self.accepted += 1
        self.metrics.count_camera_frame(frame.camera_id, "unchecked" if health is None else _fit(health))
        item = Pending(
            frame.camera_id,
            frame.frame_id,
            frame.ts_ns,
            recv_ns,
            frame.image.shape[:2],
            decoded.model_input,
            decoded.arrived_mono_ns,
            frame.image if self.recorder is not None else None,
            health,
            frame.part_id,
        )
        self._enqueue(item)

    def _answer_unparsed(self, parts: list[bytes | memoryview], exc: BaseException | None, recv_ns: int) -> None:
        """A message the parser refused: an error result when its ids can be read."""
        if isinstance(exc, UnreadableMessageError):
            self.metrics.unreadable.inc()
            self._unreadable_log.log("unreadable message (%d parts) ignored: %s", len(parts), exc)
        elif isinstance(exc, FrameError):
            self._reject(exc.camera_id, exc.frame_id, _ts(parts), exc.reason, recv_ns, exc.part_id)
        else:  # a fault of the parser is this message's, not the line's
            self._parser_fault(parts, exc, recv_ns)

    def _enqueue(self, item: Pending) -> None:
        """Queue an accepted frame, waiting while the queue is full (backpressure)."""
        while True:
            self.liveness.beat(self._admitter)  # waiting on a full queue is a turn too; a stalled worker is found
            queued, evicted = self.queue.put(item, timeout=0.1)
            for old in evicted:
                self.outbox.put(dropped_result(old, self.serving.scoring))
            if queued:
                return
            if self.inference_stopped.is_set():  # the queue will never drain: answer now
                self._emit_pending_error(item, "daemon stopping")
                return

    def _parser_fault(self, parts: list[bytes | memoryview], exc: Exception, recv_ns: int) -> None:
        """A message the parser failed on unexpectedly (a bug to report): an error result when its
        ids can be read, the traceback logged (at most a line a minute), and the receiver goes on."""
        self._fault_log.log(
            "a message the parser failed on (%s: %s) gets an error result; please report it:\n%s",
            type(exc).__name__, exc, "".join(traceback.format_exception(exc)),
        )  # fmt: skip
        try:
            _, camera_id, frame_id = parse_header(parts[0], self.limits)
        except Exception:  # noqa: BLE001 - without its ids a message gets no result, as an unreadable one
            self.metrics.unreadable.inc()
            return
        reason = f"the daemon could not read this frame ({type(exc).__name__})"
        self._reject(camera_id, frame_id, _ts(parts), reason, recv_ns)

    def _check_clock(self, camera_id: str, ts_ns: int, recv_ns: int) -> None:
        """Count, and say at most a line a minute, when a frame's ts_ns is no capture time."""
        if ts_ns and capture_time_ns(ts_ns, recv_ns) != ts_ns:
            self.metrics.clock_off.inc()
            if (behind := self.clock.behind(recv_ns)) is not None:
                self._clock_log.log(
                    "camera %s sent ts_ns %.1f h off this machine's clock, which reads before %s: the record "
                    "keeps this machine's time. Set this machine's clock (docs/deploy.md, \"The box's clock\")",
                    camera_id, (ts_ns - recv_ns) / 3.6e12, behind[0],
                )  # fmt: skip
                return
            # A frame from the past may be one its sender held (a network outage), not a clock off.
            held = " (or it held the frame that long: a network outage?)" if ts_ns < recv_ns else ""
            self._clock_log.log(
                "camera %s sent ts_ns %.1f h off this machine's clock%s: the record keeps the receive time. "
                "Send the capture time in ns since the epoch (UTC) from a synchronised clock, or 0",
                camera_id, (ts_ns - recv_ns) / 3.6e12, held,
            )  # fmt: skip

    def _check_frame_id(self, camera_id: str, frame_id: int) -> None:
        """Count, and say at most a line a minute, when a camera's frame id is not above its
        previous one: a sender restarted that counts from 0 again, or two senders given one camera
        id (two `vqad camera` processes left at cam0 send 0, 0, 1, 1, ...). Every frame still gets
        its result and its row, but a review or a picture asked for by camera and frame id is of
        the newest of them."""
        last = self._last_frame_ids.get(camera_id)
        if last is None and len(self._last_frame_ids) >= MANY_CAMERAS:
            return
        self._last_frame_ids[camera_id] = frame_id
        if last is not None and frame_id <= last:
            self.metrics.frame_ids_back.inc()
            self._ids_back_logs.setdefault(camera_id, RepeatedLog(log)).log(
                "camera %s sent frame id %d after %d (a sender restarted? or, if this repeats, two senders with "
                "one camera id): the record keeps both frames, but a review or a picture asked for by camera and "
                "frame id is of the newest of them. Give each sender its own --camera-id, and each start of a "
                "sender new ids (vqad camera --start-id time)",
                camera_id, frame_id, last,
            )  # fmt: skip

    def _check_sender(self, camera_id: str, sender: str | None) -> None:
        """Count, and say at most a line a minute, when a camera's frame comes from the sender
        before its previous frame's (A, B, A): two senders at once with one camera id, which
        frame ids that only grow (--start-id time) do not show. A sender that starts again under
        a new name (A, B) is one change, not counted."""
        if sender is None:
            return
        latest, before = self._senders.get(camera_id, (None, None))
        if sender == latest or (latest is None and len(self._senders) >= MANY_CAMERAS):
            return
        self._senders[camera_id] = (sender, latest)
        if sender == before:
            self.metrics.senders_mixed.inc()
            self._senders_logs.setdefault(camera_id, RepeatedLog(log)).log(
                "camera %s gets frames from two senders at once (%s and %s): their results, records and drift are "
                "mixed under one id. Give each sender its own --camera-id",
                camera_id, sender, latest,
            )  # fmt: skip

    def has_seen(self, camera_id: str) -> bool | None:
        """Whether `camera_id` has sent a readable frame since the start; None past MANY_CAMERAS
        ids, which are not all kept."""
        seen = self._cameras_seen
        return True if camera_id in seen else (None if len(seen) > MANY_CAMERAS else False)

    def _note_camera(self, camera_id: str) -> None:
        """Say once when more than MANY_CAMERAS distinct camera ids have sent frames."""
        seen = self._cameras_seen
        if len(seen) > MANY_CAMERAS or camera_id in seen:
            return
        seen.add(camera_id)
        if len(seen) > MANY_CAMERAS:
            log.warning(
                "frames from more than %d camera ids (the latest %r): each camera's health, drift and dashboard "
                "view is kept apart, for the most recent ones only. A camera_id names a camera; a part's serial "
                "goes in the frame's part_id (docs/protocol.md)",
                MANY_CAMERAS,
                camera_id,
            )

    def _reject(
        self, camera_id: str, frame_id: int, ts_ns: int, reason: str, recv_ns: int, part_id: str | None = None
    ) -> None:
        with self._count_lock:
            self.accepted += 1
        self._emit_error(camera_id, frame_id, ts_ns, reason, recv_ns, part_id)

    # -- inference (main thread) ----------------------------------------------------------
    def _infer(self, batch: list[Pending], serving: Serving, index: int, seq: int) -> None:
        """Run one batch on worker `index`'s backend of `serving` and hand its results to the
        publisher as batch `seq`, always: a failed batch gets an error result per frame (the
        publisher waits for every number)."""
        try:
            items = self._run_batch(batch, serving, index)
            self._failing = None
        except Exception as exc:  # noqa: BLE001 - one failed batch must not stop the line
            self.metrics.backend_errors.inc()
            self._failed_batch_log.log("inference failed on a batch of %d: %s", len(batch), exc)
            items = [
                self._error_result(p.camera_id, p.frame_id, p.ts_ns, f"inference failed: {exc}", p.recv_ns, p.part_id)
                for p in batch
            ]
            self._note_failed_batch()
        self.outbox.put(BatchResults(seq, items))

    def _note_failed_batch(self) -> None:
        """Stop the daemon (exit code 8) once every batch has failed for backend_failure_exit_s."""
        now = time.monotonic()
        since, batches = self._failing or (now, 0)
        self._failing = since, batches + 1
        limit = self.cfg.backend_failure_exit_s
        if limit and batches + 1 >= 3 and now - since >= limit and "inference backend" not in self.failed:
            log.error(
                "every batch has failed for %.0f s (%d batches): the backend is taken as broken; stopping, "
                "for the supervisor to start the daemon again with a new one",
                now - since,
                batches + 1,
            )
            self._fail("inference backend")

    def _run_batch(self, batch: list[Pending], serving: Serving, index: int) -> list[Result]:
        start_mono_ns = time.monotonic_ns()
        maps, scores = serving.backends[index].infer(np.stack([p.model_input for p in batch]))
        if maps.shape[0] != len(batch) or scores.shape[0] != len(batch):
            raise BackendError(f"backend returned {maps.shape[0]} maps for {len(batch)} frames")
        finite = np.isfinite(scores)
        if not finite.any():  # a broken engine or context: the batch failed, and counts to a restart
            raise BackendError(f"backend returned no finite score for {len(batch)} frames ({scores[0]})")
        infer_ms = (time.monotonic_ns() - start_mono_ns) / 1e6
        self.metrics.batch_size.observe(len(batch))
        results = scored_results(batch, maps, scores, start_mono_ns, infer_ms, serving.scoring)
        if not finite.all():
            self._nonfinite_log.log("%d of %d frames got no finite score: error results", (~finite).sum(), len(batch))
        scored = [r for r in results if r.header["status"] == "ok"]
        if serving.drift is not None:  # the scores go to the alarm of the model that made them
            for result in scored:
                if not self._is_master_part(result.header):  # the line's products drift, not its test pieces
                    serving.drift.add(result.header["camera_id"], result.header["score"])
        if self.recorder is not None:
            for result, p in zip(results, batch, strict=True):
                if self.recorder.wants_evidence(result.header):
                    result.frame = p.received
        for result in scored:
            self.metrics.latency.labels("queue").observe(result.header["latency_ms"]["queue"])
            self.metrics.latency.labels("infer").observe(infer_ms)
        return results

    def _is_master_part(self, header: dict[str, Any]) -> bool:
        """Whether a result is a master part's (edge/master.py): a part of known verdict, run
        through again and again, whose scores say nothing of how the line's products drift."""
        return self.masters is not None and self.masters.expected(header.get("part_id")) is not None

    # -- publishing -----------------------------------------------------------------------
    def _error_result(
        self, camera_id: str, frame_id: int, ts_ns: int, reason: str, recv_ns: int, part_id: str | None = None
    ) -> Result:
        return error_result(camera_id, frame_id, ts_ns, reason, recv_ns, self.serving.scoring, part_id)

    def _emit_error(
        self, camera_id: str, frame_id: int, ts_ns: int, reason: str, recv_ns: int, part_id: str | None = None
    ) -> None:
        self.outbox.put(self._error_result(camera_id, frame_id, ts_ns, reason, recv_ns, part_id))

    def _emit_pending_error(self, p: Pending, reason: str) -> None:
        self._emit_error(p.camera_id, p.frame_id, p.ts_ns, reason, p.recv_ns, p.part_id)


def _ts(parts: list[bytes | memoryview]) -> int:
    """The header's ts_ns if it is a readable int, else 0 (for error results)."""
    try:
        ts = json.loads(parts[0]).get("ts_ns")
        return ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
    except Exception:  # noqa: BLE001 - an unreadable ts is reported as 0
        return 0


def _fit(health: dict[str, Any]) -> str:
    """A frame's health as vqad_camera_frames labels it."""
    return "fit" if health["ok"] else "unfit"


def _what_changed(old: tuple[str, float, str | None], new: tuple[str, float, str | None]) -> str:
    """The fail-rate alarm's reason for counting anew. A mask alone has words of its own; a
    model or threshold change keeps the words programs already match (docs/protocol.md)."""
    if old[:2] == new[:2]:
        return "the inspection mask changed"
    return "the model or threshold changed"


def _inspection(serving: Serving) -> tuple[str, float, str | None]:
    """What a master part's check proves (edge/master.py): the model, the threshold, and the
    inspection mask (None for the whole frame)."""
    return serving.package.sha256, serving.scoring.threshold, serving.scoring.model.get("mask_sha256")
