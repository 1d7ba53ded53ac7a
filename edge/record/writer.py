"""`RecordWriter`: the daemon's results into the record, off the inference path.

The publisher hands each result over with `put`, which never blocks: results wait in a
bounded buffer and a writer thread stores them in batched transactions, with their evidence
files. A slow or unavailable database costs nothing but buffer: a failed transaction is
retried, with a growing pause, and its rows stay first in line. Past the bound, results are
counted as unrecorded (metric and log), never dropped silently. The frames kept for evidence
are bounded apart, by their bytes: past the bound a result waits without its frame, and is
recorded without evidence (counted). A kill loses at most the batch
in flight; on restart the record is intact (SQLite in WAL mode; transactions on PostgreSQL).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from edge.durable import sync_folders
from edge.errors import DataError
from edge.frames import PNG_SIGNATURE, jpeg_whole, one_channel_if_grey, png_damage, write_image
from edge.logrepeat import RepeatedLog
from edge.metrics import DaemonMetrics
from edge.overlay import as_bgr, draw_ignored, draw_regions, heatmap_overlay
from edge.protocol import RECORD_BEHIND_S, capture_time_ns, file_name, unfit_reasons
from edge.record.held import HeldFrames
from edge.record.housekeeping import (
    Housekeeping,
    free_bytes,
    network_filesystem_note,
    unwritable_note,
)
from edge.record.journal import Journal, journal_rows, previous_journals
from edge.record.schema import events, migrate, newest_result_ns, results, stored_record_id
from edge.record.store import (
    create_engine,
    database_reason,
    default_evidence_dir,
    is_sqlite,
    open_record,
    set_aside,
    shown_url,
    sqlite_damage,
    sqlite_file_of,
)
from edge.results import Result
from edge.state import write_whole

log = logging.getLogger(__name__)

RESULT_COLUMNS = frozenset(c.name for c in results.columns) - {"id"}  # what a journal's row may set

# Rows per transaction and the longest a row waits for one: a few hundred rows commit in
# milliseconds on SQLite and PostgreSQL alike; a commit per row would be the bottleneck.
BATCH_ROWS = 256
FLUSH_S = 0.5
# While a batch's evidence is written (the fails of large frames: seconds for a batch), the state
# file's count of the results handed to the writer is brought up to date this often: a kill then
# leaves the results of about this long uncounted, not those of the whole batch.
STATE_EVERY_S = 0.25
RETRY_MAX_S = 5.0
# The frames that wait in the buffer for their evidence to be written, at most. Each is held as
# received, 3.9 MB at 1280 x 1024 in colour: without a bound, 500 fails held while the database
# was down took 1.9 GB, and a storm of fails at 30 frames/s, whose PNGs the writer encodes
# slower than they come, grew the process by 11 MB a second with 2 cores to itself and by 55 with
# another job on them (the daemon's inference is one), until the system (8 GB on a Jetson Orin
# Nano, shared with the GPU) would stop it (benchmarks.record_storm). 256 MiB is 68 such frames,
# seconds of a writer's work; what is over it is recorded without its images.
FRAMES_HELD_BYTES = 256 * 2**20
# A SQLite record that cannot be opened while its disk has less than this free is taken for one
# on a full disk, not for a mistake in its path: SQLite needs its WAL and a 32 KiB shared-memory
# file beside the database to open it, and some pages to bring its schema up to date.
FULL_DISK_BYTES = 16 * 2**20


def disk_is_full(url: str) -> bool:
    """Whether a SQLite record's disk has less than FULL_DISK_BYTES free."""
    database = sqlite_file_of(url)
    return database is not None and free_bytes(database.parent) < FULL_DISK_BYTES


class RecordWriter:
    def __init__(
        self,
        url: str,
        evidence_dir: str | Path | None = None,
        pass_fraction: float = 0.0,
        max_buffer: int = 100_000,
        metrics: DaemonMetrics | None = None,
        max_gb: float = 0.0,
        state_file: str | Path | None = None,
        keep_days: float = 0.0,
        min_free_gb: float = 0.0,
        run_id: str | None = None,
    ):
        """max_gb: the evidence's disk quota (0 = none): past it the oldest evidence is removed,
        its rows marked, and the removals counted. min_free_gb: the free space its disk keeps,
        the oldest evidence removed to keep it, and none written while nothing is left to
        remove; then a SQLite record's oldest results leave (0 = no floor). state_file: where
        the writer keeps how many results it was handed, so that the next start can say how
        many have no row. keep_days: results published longer ago leave the record with their
        evidence, except reviewed ones (0 = keep every result). run_id: the start of the daemon
        its rows name (`daemon_run`), the `run` of the results it publishes; a new one if None."""
        self.url, self.pass_fraction, self.max_buffer = url, pass_fraction, max_buffer
        self.where = shown_url(url)  # as logs and the state file name it: no password
        self.engine, self._migrated, damaged = self._open(url, max_buffer)
        self.metrics = metrics or DaemonMetrics()
        self._set_up_buffer()
        self._set_up_evidence(evidence_dir, max_gb, keep_days, min_free_gb)
        self.thread = threading.Thread(target=self._loop, name="record-writer", daemon=True)
        self._set_up_run(state_file, run_id)
        self._first_look(damaged)

    def _set_up_buffer(self) -> None:
        """The results handed over and not yet committed, and what is counted of them."""
        # (result, published_ns, when it was queued: monotonic, so that a clock set at boot, as on a
        # board without a clock battery, is not taken for a record hours behind)
        self.buffer: collections.deque[tuple[Result, int, float]] = collections.deque()
        self.lock = threading.Condition()
        self.metrics.record_behind.set_function(self.behind_s)  # read at each scrape
        self.stopping = False
        self.recorded = self.unrecorded = 0
        self._behind_since: float | None = None  # when the record fell RECORD_BEHIND_S behind (monotonic)
        self.held = HeldFrames(FRAMES_HELD_BYTES)  # the buffered results' frames (under self.lock)
        self._throttle_logs()
        self._last_error: str | None = None  # the database's last refusal, while results wait
        # Changes to the daemon (vqad ctl, a reload) that the record refused when they were made:
        # an audit's rows, written by the writer thread once it answers (under self.lock).
        self._events_waiting: collections.deque[dict[str, Any]] = collections.deque()

    def _set_up_evidence(
        self, evidence_dir: str | Path | None, max_gb: float, keep_days: float, min_free_gb: float
    ) -> None:
        """The evidence folder, its housekeeping, and what the batch in flight may write there."""
        # Absolute: the rows name their files, and the dashboard, `vqad records --export-reviewed`
        # and `vqad review` read them from other working directories (a server record's default
        # folder, ./evidence, was stored as "evidence/...").
        self.evidence_dir = (Path(evidence_dir) if evidence_dir else default_evidence_dir(self.engine)).absolute()
        # Ids of the batch's results whose evidence could not be written (writer thread only):
        # counted once their rows commit without it, since a batch retried while the database is
        # down writes it again, and a disk writable again takes it.
        self._evidence_missed: set[int] = set()
        self._folders_changed: set[Path] = set()  # evidence folders with new names, synced before the commit
        # The evidence the batch in flight may write, [camera, frame id, frame file, overlay file]
        # each: in the state file before the files are written, so that a start after a power cut
        # removes those its rows never came to name (_unnamed_evidence).
        self._pending: list[list[Any]] = []
        self._random = random.Random(0)
        self.evidence_failed = 0
        self.house = Housekeeping(self.engine, self.evidence_dir, self.metrics, max_gb, keep_days, min_free_gb)
        if self.house.database is not None and (note := network_filesystem_note(self.house.database)):
            log.warning(note)
        # The damaged file this run set aside, for the heartbeat: a person has its rows to read back.
        self.set_aside: dict[str, Any] | None = None
        self._log_unwritable(logging.ERROR)

    def _set_up_run(self, state_file: str | Path | None, run_id: str | None) -> None:
        """This run of the daemon, its state file and journal, and what is known of the runs before."""
        self.run_id = run_id or uuid.uuid4().hex  # the daemon's, which its results name
        self.handed = 0
        self._state_failed = False
        self._state_saved = 0.0  # when the state file was last written (monotonic)
        self.state_file = Path(state_file) if state_file else None
        self._previous = self._previous_state()  # read before this run's first write replaces it
        # Each result handed over, until its row commits: a kill loses none (edge.record.journal).
        # The previous runs' journals are read once the record answers (_report_previous_run).
        folder = self.state_file.parent if self.state_file else None
        self._journals_left = previous_journals(folder, self.run_id) if folder else {}
        self._journal = Journal(folder, self.run_id) if folder else None
        self.previous_recovered: dict[str, Any] | None = None  # {"run", "recovered", "with_images"}
        # How many of the previous run's results have no row, at least (its run id and the
        # count), once the record answers at this start: the start's row names them.
        self.previous_lost: dict[str, Any] | None = None
        self._after_id = 0  # every row of this run has a greater id (known once the record answers)
        self.record_id: str | None = None  # the record's identity (schema.RECORD_ID), once it answers
        # The record's latest result time: one this machine's clock has passed (edge.clock;
        # known once the record answers, None for an empty record).
        self.newest_ns: int | None = None

    def _throttle_logs(self) -> None:
        """The writer's repeated complaints, each said at most once a while (edge.logrepeat)."""
        self._let_go_log = RepeatedLog(log, logging.ERROR)
        self._buffer_full_log, self._evidence_failed_log = RepeatedLog(log), RepeatedLog(log, logging.ERROR)
        self._outage_log = RepeatedLog(log)  # a database down for hours: a line a minute, not one a retry
        self._unstorable_log = RepeatedLog(log, logging.ERROR)
        self._set_aside_log = RepeatedLog(log, logging.ERROR)  # a damaged record that cannot be moved

    def _first_look(self, damaged: DataError | None) -> None:
        """At the start: a damaged record set aside for a new one, and the previous run's rows
        counted, once the record answers (else at its first answer: _ensure_migrated)."""
        if damaged is not None:
            self._start_anew(damaged)
        if self._migrated:
            try:
                self._report_previous_run()
            except sa.exc.DatabaseError as exc:  # a damaged page the schema's did not show
                if not self._damaged(exc):
                    raise
                self._start_anew(exc)
                self._report_previous_run()

    @staticmethod
    def _open(url: str, max_buffer: int) -> tuple[sa.Engine, bool, DataError | None]:
        """The engine, whether the record could be opened now, and SQLite's refusal of a damaged
        file (to be set aside, _start_anew). A database server that does not answer at start (the
        box booted before the plant's server) is not a reason to stop the line: the results wait
        in the buffer, as when it goes down later. Nor is a SQLite file on a disk that is full:
        it is opened once there is room. A SQLite file that cannot be opened otherwise is this
        machine's mistake, and stops the start (DataError), as does a server that answers with a
        refusal (no permission to create the tables)."""
        try:
            return open_record(url), True, None
        except DataError as exc:
            if is_sqlite(url) and sqlite_damage(exc):
                return create_engine(url), False, exc
            if is_sqlite(url):
                if not disk_is_full(url):
                    raise
                log.error("%s, and its disk is full; the results wait in the buffer (%d at most) until there is room",
                          exc, max_buffer)  # fmt: skip
            elif isinstance(exc.__cause__, sa.exc.OperationalError):
                log.warning("%s; the results wait in the buffer (%d at most) until it answers", exc, max_buffer)
            else:
                raise
            return create_engine(url), False, None

    def _damaged(self, exc: BaseException) -> bool:
        """Whether `exc` is SQLite's refusal of this writer's record file as damaged."""
        return self.house.database is not None and sqlite_damage(exc) is not None

    def _start_anew(self, exc: BaseException) -> None:
        """The SQLite record is damaged (a failing SD card, a power cut on a disk that lies about
        its writes): it and its evidence folder are set aside, and the results go to a new record
        in its place, so that the line goes on and keeps every result from now on. The old rows
        wait for a person to recover them. DataError when they cannot be set aside."""
        reason = sqlite_damage(exc)
        self.engine.dispose()
        try:
            moved, moved_evidence = set_aside(self.house.database, self.evidence_dir)
        except OSError as failed:
            raise DataError(f"the record {self.house.database} is damaged ({reason}) and could not be set aside: "
                            f"{failed}") from exc  # fmt: skip
        self.engine, self._migrated = open_record(self.url), True
        self.house.started_anew(self.engine)
        self._after_id, self.newest_ns, self._previous = 0, None, None
        with self.engine.connect() as conn:  # the new record's own: this run's state file names it
            self.record_id = stored_record_id(conn)
        self.metrics.record_set_aside.inc()
        log.error(
            "the record %s is damaged (%s): set aside as %s%s, and a new record started in its place; docs/deploy.md "
            "(\"A damaged record\") says how to read back the rows it still holds, with their images",
            self.house.database, reason, moved, f" (its evidence as {moved_evidence})" if moved_evidence else "",
        )  # fmt: skip
        detail = {"damaged": str(moved), "evidence": str(moved_evidence) if moved_evidence else None, "reason": reason}
        self.set_aside = {**detail, "at_ns": time.time_ns()}
        self.event("record-set-aside", detail, "vqad serve", by_writer=True)

    @property
    def evidence_bytes(self) -> int | None:
        """The evidence folder's size as the quota counts it (None until the writer's first pass
        has measured it)."""
        return self.house.evidence_bytes

    @property
    def evidence_removed(self) -> int:
        return self.house.evidence_removed

    @property
    def expired(self) -> int:
        return self.house.expired

    @property
    def removed_for_space(self) -> int:
        return self.house.removed_for_space

    def start(self) -> RecordWriter:
        self.thread.start()
        return self

    def behind_s(self) -> float:
        """How long the oldest result without its row has waited for it, in seconds (0 when every
        result handed over is stored). Read from any thread; it grows while the writer is held,
        whatever holds it."""
        with self.lock:
            oldest = self.buffer[0][2] if self.buffer else None
        return 0.0 if oldest is None else time.monotonic() - oldest

    def status(self) -> dict[str, Any]:
        """What the heartbeat says of the record: results waiting for their rows, how long the
        oldest has waited, how many will have none, the database's last refusal while it
        refuses (None otherwise), and the damaged file this run set aside (None if none)."""
        return {"pending": len(self.buffer), "behind_s": round(self.behind_s(), 1), "unrecorded": self.unrecorded,
                "error": self._last_error, "set_aside": self.set_aside}  # fmt: skip

    def watch_lag(self) -> None:
        """Log once when the record falls RECORD_BEHIND_S behind, and once when it has caught up.
        Called from another thread than the writer's (the publisher's): the writer may be the one
        held."""
        behind = self.behind_s()
        if behind >= RECORD_BEHIND_S and self._behind_since is None:
            self._behind_since = time.monotonic() - behind
            # Without an error, the writer is held, not refused: by a lock or a server that does not answer.
            cause = (
                f"the last error: {self._last_error}"
                if self._last_error
                else "a database that does not answer, or a query held by a lock?"
            )
            log.error(
                "the record is %.0f s behind: %d results wait for their rows (%s); subscribers that catch up from the "
                "record miss them until it is back",
                behind, len(self.buffer), cause,
            )  # fmt: skip
        elif self._behind_since is not None and behind < RECORD_BEHIND_S / 2:  # not a line per result near it
            log.warning("the record has caught up after %.0f s behind", time.monotonic() - self._behind_since)
            self._behind_since = None

    def wants_evidence(self, header: dict[str, Any]) -> bool:
        """Every failed frame, and every frame the model could not score; a sampled share
        (record_pass_fraction) of the passes."""
        if header.get("decision") == "fail" or header.get("status") == "error":
            return True
        return header.get("decision") == "pass" and self._random.random() < self.pass_fraction

    def put(self, result: Result, published_ns: int) -> None:
        """Queue a published result for the record; never blocks."""
        with self.lock:
            if len(self.buffer) >= self.max_buffer:
                self._count_unrecorded(1)
                self._buffer_full_log.log(
                    "the record's buffer is full (%d): %d results unrecorded", self.max_buffer, self.unrecorded
                )
                return
            if result.frame is not None and (let_go := self.held.hold(result)):
                self._let_go(let_go)
            self.buffer.append((result, published_ns, time.monotonic()))
            self.handed += 1
            if self._journal is not None:
                self._journal.add(self._row_fields(result, published_ns, self._record_time(result, published_ns)))
            self.metrics.record_pending.set(len(self.buffer))
            if len(self.buffer) >= BATCH_ROWS:
                self.lock.notify()

    def _let_go(self, n: int) -> None:
        """Count and log n results that will be recorded without their images (under self.lock)."""
        self.metrics.evidence_failed.inc(n)
        self._let_go_log.log(
            "the frames waiting for the record take %d MiB, its bound: %d results recorded without their images "
            "(the database or the disk is slower than the line's rejects; the camera with the most waiting gives "
            "up its newest first)", self.held.bytes >> 20, self.held.let_go,
        )  # fmt: skip

    def event(self, kind: str, detail: dict[str, Any], by: str, by_writer: bool = False) -> None:
        """A change made to the running daemon, written at once (its own transaction), or, when
        the record refuses it then, kept in memory and written by the writer thread, in order,
        once the record answers (as results wait for it). `by_writer`: left to the writer thread
        from the start, for a caller that must not wait on the database (the publisher's thread).
        Its detail names the daemon (`daemon`: the box's host name, and the run its result rows
        name as `daemon_run`): boxes on several lines may share one record, and an audit asks
        which line's threshold changed."""
        row = {"ts_ns": time.time_ns(), "kind": kind, "by": by,
               "detail": {**detail, "daemon": {"host": socket.gethostname(), "run": self.run_id}}}  # fmt: skip
        with self.lock:
            # Behind earlier ones, in their order; or for the writer thread to bring the schema up.
            if by_writer or self._events_waiting or not self._migrated:
                self._events_waiting.append(row)
                self.lock.notify()
                return
        try:
            self._insert_events([row])
        except sa.exc.SQLAlchemyError as exc:
            with self.lock:
                self._events_waiting.append(row)
                self.lock.notify()
            log.warning("the record cannot keep the %s by %s now (%s): it waits in memory and is written when the "
                        "record answers", kind, by, str(exc).splitlines()[0][:200])  # fmt: skip

    def _insert_events(self, rows: list[dict[str, Any]]) -> None:
        """Audit rows in one transaction. SQLAlchemyError when the record refuses them."""
        with self.engine.begin() as conn:
            conn.execute(sa.insert(events), rows)

    def _store_waiting_events(self) -> None:
        """The changes that waited for the record, in their order (the writer thread)."""
        with self.lock:
            waiting = list(self._events_waiting)
        if not waiting:
            return
        self._ensure_migrated()
        self._insert_events(waiting)
        with self.lock:
            for _ in waiting:
                self._events_waiting.popleft()
        log.info("the record kept the %d change(s) to the daemon that waited for it", len(waiting))

    def close(self, timeout: float = 30.0, last_change: tuple[str, dict[str, Any], str] | None = None) -> None:
        """Store what is buffered (within `timeout`), then `last_change` (kind, detail, by: the
        daemon's stop, whose row then follows every result row it counts), then stop; what is
        left is counted unrecorded."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout)
        if last_change is not None:
            self.event(*last_change)
            if self._events_waiting and not self.thread.is_alive():  # one more try, from here
                with contextlib.suppress(sa.exc.SQLAlchemyError):
                    self._store_waiting_events()
        self._save_state(closed=True)
        left = len(self.buffer)
        if self._journal is not None:  # kept when results are left: the next start puts them back
            with self.lock:  # a writer whose join timed out may be emptying it this moment
                self._journal.close(keep=bool(left))
        if left:
            self._count_unrecorded(left)
            kept = " (kept in its journal: the next start puts them back once the record answers)"
            log.error("the record's writer stopped with %d results unrecorded%s", left, kept if self._journal else "")
        if self._events_waiting:
            kinds = ", ".join(f"{e['kind']} by {e['by']}" for e in self._events_waiting)
            log.error("the record's writer stopped with changes to the daemon unrecorded: %s", kinds)
        self.engine.dispose()
        log.info("record: %d results recorded, %d unrecorded", self.recorded, self.unrecorded)

    # -- the writer thread ----------------------------------------------------------------
    def _loop(self) -> None:
        pause = 0.0
        while True:
            with self.lock:
                if not self.buffer and not self._events_waiting and self.stopping:
                    return
                if len(self.buffer) < BATCH_ROWS and not self.stopping:
                    self.lock.wait(FLUSH_S)
                batch = [self.buffer[i] for i in range(min(BATCH_ROWS, len(self.buffer)))]
                if not batch and not self._events_waiting:
                    continue
            try:
                self._store_waiting_events()
                if batch:
                    self._store(batch)
            except sa.exc.SQLAlchemyError as exc:
                if self._damaged(exc) and self._started_anew(exc):
                    continue  # the batch again, on the new record
                self.metrics.record_errors.inc()
                pause = min(RETRY_MAX_S, max(0.1, 2 * pause))
                self._last_error = database_reason(exc)[:300]  # with its likeliest cause, for the heartbeat
                message = "the record is unavailable (%s); %d results wait, retrying every %.0f s at most"
                if self._outage_log.log(message, str(exc).splitlines()[0][:200], len(self.buffer), RETRY_MAX_S):
                    self._log_unwritable(logging.WARNING)  # the log names the read-only folder itself
                if self.stopping and pause >= RETRY_MAX_S:
                    return  # shutting down against a database that stays down: close() counts the rest
                time.sleep(pause)
                continue
            except Exception as exc:  # noqa: BLE001 - not the database's: the next results can be stored
                self._leave_out(batch, exc)
                continue
            if pause:
                log.info("the record is available again")
                self._outage_log.reset()
                self._last_error = None
            pause = 0.0
            self.house.run()
            with self.lock:
                self._take_off(len(batch))
            self.recorded += len(batch)
            self.metrics.recorded.inc(len(batch))

    def _started_anew(self, exc: BaseException) -> bool:
        """_start_anew while the daemon serves; False, logged, when it could not be set aside
        (a read-only disk): the results then wait, as for a record that does not answer."""
        try:
            self._start_anew(exc)
        except DataError as failed:
            self._set_aside_log.log("%s; the results wait in memory (%d at most)", failed, self.max_buffer)
            return False
        return True

    def _log_unwritable(self, level: int) -> None:
        """Say so when the record's folder or its evidence folder cannot be written (a read-only
        filesystem): at start, where the daemon serves all the same, and with a failed write's
        line. One line: the two share a disk unless configured apart."""
        places = [("the record", self.house.database), ("the evidence folder", self.evidence_dir)]
        notes = (unwritable_note(path, what) for what, path in places if path is not None)
        if note := next((n for n in notes if n), None):
            log.log(level, "%s; the results wait in memory (%d at most)", note, self.max_buffer)

    def _leave_out(self, batch: list[tuple[Result, int, float]], exc: Exception) -> None:
        """A batch that failed for a reason of its own, not the database's, is counted unrecorded
        and left out: retried, it would fail again, and the writer would stop for the whole run."""
        with self.lock:
            self._take_off(len(batch))
            self._count_unrecorded(len(batch))
        self.house.forget(path for entry in self._pending for path in entry[2:])
        self._pending = []
        message = "%d results could not be stored and are left out of the record (%s: %s)"
        if self._unstorable_log.log(message, len(batch), type(exc).__name__, exc):
            log.debug("the failure", exc_info=exc)

    def _take_off(self, n: int) -> None:
        """The first n buffered results leave the buffer (the caller holds self.lock)."""
        for _ in range(n):
            result, _published_ns, _queued = self.buffer.popleft()
            self.held.leave(result)
        self.held.batch_done()
        self._evidence_missed = set()
        self.metrics.record_pending.set(len(self.buffer))
        if not self.buffer and self._journal is not None:  # nothing handed over waits: none to put back
            self._journal.emptied()

    def _count_unrecorded(self, n: int) -> None:
        """n results that will have no row (under self.lock, or once the writer has stopped)."""
        self.unrecorded += n
        self.metrics.unrecorded.inc(n)

    def _ensure_migrated(self) -> None:
        """The schema brought up to date, once: the server did not answer at start. An
        OperationalError when it still does not."""
        if not self._migrated:
            migrate(self.engine)
            self._migrated = True
            log.info("the record at %s answers now", self.where)
            self._report_previous_run()

    def _store(self, batch: list[tuple[Result, int, float]]) -> None:
        self._ensure_migrated()
        timed = [(result, pub, self._record_time(result, pub)) for result, pub, _queued in batch]
        self._pending = [
            [
                result.header["camera_id"],
                result.header["frame_id"],
                *map(str, self._evidence_paths(result.header, ts, pub)),
            ]
            for result, pub, ts in timed
            if result.frame is not None
        ]
        self._save_state()
        rows = []
        for result, pub, ts in timed:
            rows.append(self._row(result, pub, ts))
            if time.monotonic() - self._state_saved >= STATE_EVERY_S:
                self._save_state()
        # The evidence is on the disk before the rows that name it commit (edge.durable): after a
        # power cut, a row's images are whole, or the row is not there.
        sync_folders(self._folders_changed)
        self._folders_changed.clear()
        with self.engine.begin() as conn:
            conn.execute(sa.insert(results), rows)
        self._pending = []
        missed = sum(row["evidence_frame"] is None and id(result) in self._evidence_missed
                     for row, (result, _pub, _queued) in zip(rows, batch, strict=True))  # fmt: skip
        self.evidence_failed += missed
        self.metrics.evidence_failed.inc(missed)

    def _claim(self, result: Result) -> np.ndarray | None:
        """The frame of `result` for its evidence, None when it waits without one; from now on
        it is not given up (under self.lock: HeldFrames.hold may be giving it up this moment)."""
        with self.lock:
            return self.held.claim(result)

    @staticmethod
    def _record_time(result: Result, published_ns: int) -> int:
        """A sender without a clock (ts_ns 0), or with one far off: the record's time is then the
        daemon's receive time, so that queries by time, the order of rows and the daily tally
        hold. The published result echoes the sender's ts_ns as it came."""
        return capture_time_ns(result.header["ts_ns"], result.recv_ns or published_ns)

    def _row(self, result: Result, published_ns: int, ts_ns: int) -> dict[str, Any]:
        frame = self._claim(result)
        frame_path, overlay_path = (
            self._evidence_or_none(result, frame, ts_ns, published_ns) if frame is not None else (None, None)
        )
        return {**self._row_fields(result, published_ns, ts_ns), "evidence_frame": frame_path,
                "evidence_overlay": overlay_path}  # fmt: skip

    def _row_fields(self, result: Result, published_ns: int, ts_ns: int) -> dict[str, Any]:
        """`result`'s row without its evidence: as the journal keeps it, and the record once the
        evidence is written."""
        h = result.header
        return {
            "camera_id": h["camera_id"],
            "frame_id": h["frame_id"],
            "ts_ns": ts_ns,
            "received_ns": result.recv_ns or None,
            "published_ns": published_ns,
            "status": h["status"],
            "error": h.get("error"),
            "score": h.get("score"),
            "threshold": h.get("threshold"),
            "decision": h.get("decision"),
            "regions": h.get("regions") or [],
            "model_name": (h.get("model") or {}).get("name"),
            "model_sha256": (h.get("model") or {}).get("sha256"),
            "mask_sha256": (h.get("model") or {}).get("mask_sha256"),
            "latency_ms": h.get("latency_ms"),
            "batch_size": h.get("batch_size"),
            "evidence_frame": None,
            "evidence_overlay": None,
            "evidence_removed": False,
            "daemon_run": self.run_id,
            "part_id": h.get("part_id"),
            "unfit": unfit_reasons(h),
            "seq": h.get("seq"),
            "master": (h.get("master") or {}).get("expected"),
        }

    def _evidence_or_none(
        self, result: Result, frame: np.ndarray, ts_ns: int, published_ns: int
    ) -> tuple[str | None, str | None]:
        """_evidence, or no evidence when it cannot be written (a full disk, a folder gone, a frame
        the codec refuses): the row is kept without it, and the writer goes on; counted and logged
        now and then."""
        try:
            if self.house.low_disk:
                raise OSError("its disk is under record_min_free_gb, with no evidence left to remove")
            if free_bytes(self.evidence_dir) < FULL_DISK_BYTES:  # what is left is the rows'
                raise OSError(f"its disk has less than {FULL_DISK_BYTES >> 20} MiB free")
            return self._evidence(result, frame, ts_ns, published_ns)
        except Exception as exc:  # noqa: BLE001 - a full disk, or a frame no codec takes: the row stays
            self._evidence_missed.add(id(result))
            self._evidence_failed_log.log("evidence not written (its row, when stored, goes without it): %s", exc)
            return None, None

    def _evidence(
        self, result: Result, frame: np.ndarray, ts_ns: int, published_ns: int
    ) -> tuple[str | None, str | None]:
        """The frame as received (PNG, lossless) and its anomaly-map overlay (JPEG), in the
        camera's folder of the record's day (`ts_ns`). Named by the frame id and the time the
        result was published: a sender whose frame ids start again (a restarted camera bridge)
        must not overwrite an earlier frame's evidence, and a retried batch rewrites its own."""
        h = result.header
        frame_path, overlay_path = self._evidence_paths(result.header, ts_ns, published_ns)
        folder = frame_path.parent
        if not folder.is_dir():  # a new camera's or day's: the folders above gain a name
            folder.mkdir(parents=True, exist_ok=True)
            self._folders_changed.update((folder.parent, folder.parent.parent))
        self._folders_changed.add(folder)
        write_image(frame_path, one_channel_if_grey(frame), synced=True)
        self.house.added(frame_path)
        info = h.get("map") or result.map_info  # the map is drawn whether or not it was published
        if not (result.map_bytes and info):
            overlay_path = None
        else:
            amap = np.frombuffer(result.map_bytes, np.uint8).reshape(info["shape"]).astype(np.float32) * info["scale"]
            shown = frame if result.judged is None else draw_ignored(as_bgr(frame), result.judged)
            overlay = heatmap_overlay(shown, amap, vmax=2 * h["threshold"])
            picture = draw_regions(overlay, h.get("regions") or [])  # regions: frame pixels
            write_image(overlay_path, picture, synced=True)
            self.house.added(overlay_path)
        return str(frame_path), (str(overlay_path) if overlay_path else None)

    def _evidence_paths(self, h: dict[str, Any], ts_ns: int, published_ns: int) -> tuple[Path, Path]:
        """Where the frame and overlay of the result (or row) `h` go: the camera's folder of the
        record's day."""
        day = time.strftime("%Y%m%d", time.gmtime(ts_ns / 1e9))
        stem = f"{h['frame_id']}_{published_ns}"
        folder = self.evidence_dir / file_name(h["camera_id"]) / day
        return folder / f"{stem}.png", folder / f"{stem}_overlay.jpg"

    def _save_state(self, closed: bool = False) -> None:
        """How many results this run was handed, before each transaction and while one writes its
        evidence: after a kill, the rows this run lacks are at least that count minus the rows it
        has. `closed`: the writer has stopped, and the count is whole."""
        self._state_saved = time.monotonic()
        if self._journal is not None:
            self._journal.sync()
        if self.state_file is None:
            return
        pending = self._pending
        if self._previous is not None:  # the record has not answered yet: the previous run's stay listed
            pending = pending + self._previous.get("evidence_pending", [])
        try:
            write_whole(self.state_file, {"run": self.run_id, "handed": self.handed, "after_id": self._after_id,
                                          "record": self.where, "record_id": self.record_id,
                                          "evidence_pending": pending, "closed": closed})  # fmt: skip
        except OSError as exc:  # a full disk: the rows matter more than the count of them
            if not self._state_failed:
                log.error("the record's state file %s cannot be written (%s): a restart after a kill will "
                          "not say how many results have no row", self.state_file, exc)  # fmt: skip
            self._state_failed = True

    def _previous_state(self) -> dict[str, Any] | None:
        """The state file the previous run of the daemon left, if any."""
        if self.state_file is None or not self.state_file.is_file():
            return None
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("the record's state file %s is unreadable: the previous run is not checked", self.state_file)
            return None

    def _report_previous_run(self) -> None:
        """Put back the rows the previous runs' journals hold and the record lacks (a kill, a power
        cut), log how many of the previous run's results still have no row, and remove the
        evidence it wrote for them. Its rows follow the id the state file names: counted from
        there, not over months of rows (0.33 s at 2 million rows of SQLite, in the daemon's start)."""
        state, self._previous = self._previous, None
        journals, self._journals_left = self._journals_left, {}
        with self.engine.connect() as conn:
            self._after_id = conn.execute(sa.select(sa.func.max(results.c.id))).scalar_one() or 0
            # The latest time among the rows (ix_results_ts), not the last row's: a run whose clock
            # read 1970 wrote the last ones.
            self.newest_ns = newest_result_ns(conn)
            self.record_id = stored_record_id(conn)
        if state is None or not self._same_record(state):
            for path in journals.values():  # another record's rows, or none known to be this one's
                path.unlink(missing_ok=True)
            return
        back, imaged = self._recover(journals, state.get("evidence_pending") or []).get(state["run"], (0, 0))
        with self.engine.connect() as conn:
            previous = sa.select(sa.func.count()).where(
                results.c.id > int(state.get("after_id") or 0), results.c.daemon_run == state["run"]
            )
            rows = conn.execute(previous).scalar_one()
            unnamed = _unnamed_evidence(conn, state.get("evidence_pending") or [])
        if back:
            self.previous_recovered = {"run": state["run"], "recovered": back, "with_images": imaged}
            log.warning("the previous run of the daemon ended before %d of its results were committed: their rows "
                        "are put back from its journal, %d with the images it had written whole",
                        back, imaged)  # fmt: skip
        missing = int(state["handed"]) - rows
        if missing > 0:
            self.previous_lost = {"run": state["run"], "without_row": missing}
            log.warning("the previous run of the daemon recorded %d results; at least %d of it have no row "
                        "(it stopped before they were committed)", rows, missing)  # fmt: skip
        elif state.get("closed") or state["run"] in journals:  # its journal held each result handed over
            log.info("the previous run's %d results are all recorded%s", rows, f", {back} put back" if back else "")
        else:  # killed: results handed since its count was last kept are not in it
            log.info("the previous run's %d results counted before it ended are all recorded; it ended without "
                     "stopping, and those of its last moments (under a second, while the record answered) may "
                     "have no row: its subscribers had them", rows)  # fmt: skip
        if unnamed:
            # Counted from the folder when the quota first runs, after this: not taken off a count.
            self.house.forget(unnamed, counted=False)
            log.warning("removed %d evidence files of the previous run that no row names (it stopped before "
                        "their results were committed)", len(unnamed))  # fmt: skip

    def _same_record(self, state: dict[str, Any]) -> bool:
        """Whether the previous run recorded here, to this record (older state files do not say)."""
        if state.get("record", self.where) != self.where:
            log.info("the previous run of the daemon recorded to %s, not here: its results are not counted",
                     state["record"])  # fmt: skip
            return False
        if state.get("record_id") not in (None, self.record_id):
            log.info("the previous run of the daemon recorded to another record at %s (made anew since, or put "
                     "back from a copy): its results are not counted", self.where)  # fmt: skip
            return False
        return True

    def _recover(self, journals: dict[str, Path], pending: list[Any]) -> dict[str, tuple[int, int]]:
        """The rows the previous runs' journals hold and the record lacks (by run and seq),
        inserted -> by run, how many, and how many with images. Each journal goes once read. A row
        whose images the killed batch had written whole (`pending`: the state file's
        evidence_pending) names them; the others have none."""
        written = {str(entry[2]) for entry in pending if isinstance(entry, list) and len(entry) == 4}  # frame files
        recovered = {}
        for run, path in journals.items():
            rows = [r for r in journal_rows(path) if r.get("daemon_run") == run and isinstance(r.get("seq"), int)]
            if rows:
                recovered[run] = self._put_back(run, rows, written)
            path.unlink(missing_ok=True)
        return recovered

    def _put_back(self, run: str, rows: list[dict[str, Any]], written: set[str]) -> tuple[int, int]:
        """Insert those of `rows` (run `run`'s, from its journal) the record lacks, with their
        images where the killed batch had `written` them (its frame files) whole, each marked with
        the time it was put back (`recovered_ns`) -> how many, and how many with images."""
        first, now_ns = min(r["seq"] for r in rows), time.time_ns()
        with self.engine.begin() as conn:
            query = sa.select(results.c.seq).where(results.c.daemon_run == run, results.c.seq >= first)
            have = set(conn.execute(query).scalars())
            missing = [{k: v for k, v in r.items() if k in RESULT_COLUMNS} for r in rows if r["seq"] not in have]
            for row in missing:
                row["recovered_ns"] = now_ns
                frame, overlay = map(str, self._evidence_paths(row, row["ts_ns"], row["published_ns"]))
                if frame in written and _whole_images(frame, overlay):
                    row["evidence_frame"] = frame
                    row["evidence_overlay"] = overlay if Path(overlay).is_file() else None
            if missing:
                conn.execute(sa.insert(results), missing)
        return len(missing), sum(row.get("evidence_frame") is not None for row in missing)


def _unnamed_evidence(conn: sa.Connection, pending: list[Any]) -> list[str]:
    """The files among `pending` (the state file's [camera, frame id, frame file, overlay file]
    entries) that are on the disk while no row names the frame file: the evidence of a batch
    that never committed. Found by the camera and frame id's index, not by a scan."""
    unnamed = []
    for entry in pending:
        try:
            camera, frame_id, *paths = entry
            if len(paths) != 2 or not all(_is_evidence_name(p) for p in paths):
                raise ValueError(entry)
        except (TypeError, ValueError):
            log.warning("the record's state file names evidence as %r, not as this vqad writes it: left", entry)
            continue
        there = [p for p in paths if Path(p).is_file()]
        if not there:
            continue
        named = sa.select(results.c.id).where(
            results.c.camera_id == camera, results.c.frame_id == frame_id, results.c.evidence_frame == paths[0]
        )
        if conn.execute(named.limit(1)).first() is None:
            unnamed += there
    return unnamed


def _whole_images(frame: str, overlay: str) -> bool:
    """Whether a killed batch's frame file is a whole PNG, and its overlay (if there) a whole
    JPEG: a kill of the process leaves what it wrote; a power cut may leave them cut or empty."""
    try:
        data = Path(frame).read_bytes()
        if not data.startswith(PNG_SIGNATURE) or png_damage(data) is not None:
            return False
        return not Path(overlay).is_file() or jpeg_whole(Path(overlay).read_bytes())
    except OSError:
        return False


def _is_evidence_name(path: Any) -> bool:
    """An absolute path to a PNG frame or a JPEG overlay, as _evidence_paths names them."""
    return isinstance(path, str) and Path(path).is_absolute() and path.endswith((".png", "_overlay.jpg"))
