"""`Housekeeping`: keeps the line's record within its bounds while the writer fills it. The
evidence quota removes the oldest evidence files past `record_max_gb` and marks their rows; the
free-space floor does the same while the evidence's disk has less than `record_min_free_gb`
free, and holds new evidence back while nothing is left to remove; on a SQLite record's disk
under the floor, the oldest results leave too, so that the rows stop growing; expiry removes
results older than `record_keep_days` with their files. A reviewed result always stays, and
so do its images, which `vqad records --export-reviewed` gives recalibration and evaluation,
within a share of the evidence's room (REVIEWED_SHARE). Each writer removes only the files it
can own (`Housekeeping.owns`): daemons on several boxes may share one record.
Both run on the writer's thread, between its transactions; a failure is logged and tried again,
and never stops the writer: the line's rows come first.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa

from edge.durable import nearest_existing, write_refusal
from edge.logrepeat import RepeatedLog
from edge.metrics import DaemonMetrics
from edge.record.schema import add_removed, results, reviews

log = logging.getLogger(__name__)

# Expiry runs at start and then this often, in transactions of EXPIRE_ROWS rows and at most
# EXPIRE_CHUNKS of them a time, so that the writer returns to the line's rows within a second
# or so even when a first start meets months of old rows.
EXPIRE_EVERY_S = 600.0
EXPIRE_ROWS = 5000
EXPIRE_CHUNKS = 20
# A pass that stopped at EXPIRE_CHUNKS with old rows left goes on after this, not after
# EXPIRE_EVERY_S: a line of more than 100,000 results in 10 minutes (170 frames/s) would
# otherwise fall behind for good. The writer's own transactions run in between.
EXPIRE_BACKLOG_S = 2.0
# Under the free-space floor with no evidence older than a day left to remove, the oldest results
# leave a SQLite record until its file holds this much free space: SQLite writes new rows into the
# pages of deleted ones, so the file stops growing. These pages stay in the file, for the rows;
# a file made with incremental auto-vacuum gives those past them back to the disk
# (`_give_back`), for the evidence. 8 MiB is about 30,000 results, a quarter of an hour of a
# 30 frames/s line, so such a pass is due a few times an hour.
ROOM_BYTES = 8 * 2**20
# Evidence held back under the floor is written again once the disk has this much over it (or a
# tenth of the floor, if less): at the floor, the SQLite WAL's checkpoints swing the free space by
# up to its 4 MiB (store.WAL_KEPT_BYTES), and a batch of evidence by a few MB. Without a margin
# the state flapped every few seconds, and each new image was removed again as the oldest.
RESUME_MARGIN_BYTES = 16 * 2**20
# After expiry, the free pages of a SQLite file (one created with incremental auto-vacuum) past
# ROOM_BYTES go back to the disk, at most this many a pass: 25,600 pages of 4 KiB (100 MiB) took
# 0.73 s here (2026-12-03). More left over shortens the wait for the next pass to EXPIRE_BACKLOG_S.
GIVE_BACK_PAGES = 25_600
# Results younger than this never leave for space: a day's results are what operators review and
# what the shift's tally counts. A disk that cannot hold a day is an error to fix.
KEEP_NEWEST_NS = 86400 * 10**9
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for incremental
# SQLite's automatic checkpoints copy the WAL into the file only as far as every reader's snapshot
# allows, and start the WAL again only when no reader is in it. Readers that overlap all the time
# (a dashboard open on several screens, each page asking every few seconds) keep it from ever
# starting again: with three readers asking back to back, the WAL grew by 0.6 MB a second, 55 MB
# in 90 s beside a 26 MB file, and would fill the disk. Past this size the writer checkpoints it
# in full and truncates it, waiting WAL_WAIT_MS at most for the readers of that moment (readers
# that begin meanwhile read the file, not the WAL); a try that the readers outlast (an export of
# months) is repeated after WAL_RETRY_S. While it waits, other writers (a review) wait too: a
# second is far longer than a dashboard's query takes, and well within their BUSY_TIMEOUT_MS.
# Four times what a checkpoint leaves (store.WAL_KEPT_BYTES).
WAL_BOUND_BYTES = 16 * 2**20
WAL_RETRY_S = 10.0
WAL_WAIT_MS = 1000
# Reviewed results' images are kept past the quota and the floor, which remove the others'
# oldest first, but within a share: at most a quarter of record_max_gb, and under the floor with
# nothing else left to remove, none is kept for good. Tens of reviews a day at 1280 x 1024 are
# about 16 GB a year: kept without a bound they would fill a quota, and then every new reject's
# image, the oldest unreviewed one, would be removed as soon as it was written. The oldest
# reviewed images go first, looked at every REVIEWED_EVERY_S (the reviews are few: a pass reads
# them all).
REVIEWED_SHARE = 0.25
REVIEWED_EVERY_S = 600.0
# How long a SQLite connection waits for another's lock before it fails (PRAGMA busy_timeout).
BUSY_TIMEOUT_MS = 5000


class Housekeeping:
    def __init__(
        self, engine: sa.Engine, evidence_dir: Path, metrics: DaemonMetrics, max_gb: float, keep_days: float,
        min_free_gb: float = 0.0,
    ):  # fmt: skip
        """max_gb: the evidence's disk quota (0 = none). keep_days: how long a result stays
        (0 = for ever). min_free_gb: the free space the disks of the evidence and of a SQLite
        record keep (0 = no floor)."""
        self.engine, self.metrics, self.evidence_dir = engine, metrics, evidence_dir
        self.max_bytes = int(max_gb * 1e9)
        self.min_free_bytes = int(min_free_gb * 1e9)
        self.low_disk = False  # under the floor with no evidence left to remove: none is written
        # Measured on the writer's thread at its first pass, not in the daemon's start: a full
        # quota of months holds a million files (about 15 s to add up).
        self.evidence_bytes: int | None = None if self.max_bytes or self.min_free_bytes else 0
        self.evidence_removed = 0
        self._quota_up_to = 0  # rows up to this id hold no evidence the quota may still remove
        self.keep_ns = int(keep_days * 86400e9)
        self.expired = 0
        self.removed_for_space = 0
        self.database = sqlite_file(engine)  # the file whose disk the floor also keeps; None on a server
        self._full_log = RepeatedLog(log, logging.ERROR)
        self._failed_log = RepeatedLog(log)
        self._removed_logs: dict[str, RepeatedLog] = {}  # by why: the quota, the floor
        self._next_expiry = 0.0  # monotonic time of the next pass; 0: at the first commit
        self._next_wal_try = 0.0  # monotonic time before which the WAL is not checkpointed again
        self._next_reviewed = 0.0  # monotonic time of the next look at the reviewed images' share
        self._reviewed_log = RepeatedLog(log)
        self._hand_removed_log = RepeatedLog(log)
        self._expired_up_to = 0  # rows up to this id were examined (reviewed ones stay behind it)

    def started_anew(self, engine: sa.Engine) -> None:
        """The record and its evidence folder were set aside (a damaged SQLite file) and begin
        again empty on `engine`: what was measured and examined of the old ones is forgotten."""
        self.engine = engine
        self.evidence_bytes = None if self.max_bytes or self.min_free_bytes else 0
        self._quota_up_to = self._expired_up_to = 0
        self._next_expiry = 0.0

    def added(self, path: Path) -> None:
        """An evidence file the writer wrote: counted against the quota (once it is measured;
        the measurement finds the file itself)."""
        if self.evidence_bytes is not None:
            self.evidence_bytes += path.stat().st_size

    def run(self) -> None:
        """The quota, the floor, then expiry when it is due. Whatever fails is counted, logged (a
        line a minute at most: this runs after every transaction) and left for the next pass; it
        never stops the writer, whose rows come first."""
        try:
            if self.evidence_bytes is None:
                self.evidence_bytes = _folder_bytes(self.evidence_dir)
            if self.max_bytes and self.evidence_bytes > self.max_bytes:
                self._remove_oldest(self.evidence_bytes - self.max_bytes, "evidence quota")
            if self.min_free_bytes:
                self._keep_free()
            if (self.max_bytes or self.low_disk) and time.monotonic() >= self._next_reviewed:
                self._bound_reviewed()
            if self.keep_ns and time.monotonic() >= self._next_expiry:
                self._expire()
            if self.database is not None:
                self._bound_wal()
        except Exception as exc:  # a database's, a disk's or a bug: the rows go on
            self.metrics.record_errors.inc()
            reason = str(exc).splitlines()[0][:200] if str(exc) else ""
            if self._failed_log.log("the record's housekeeping failed, tried again later: %s: %s",
                                    type(exc).__name__, reason):  # fmt: skip
                log.debug("the failure", exc_info=exc)

    def _keep_free(self) -> None:
        """Under the floor of free space, the oldest evidence older than a day goes as past the
        quota; then a SQLite record's oldest results older than a day leave (`_make_room`), their
        room back to the disk where the file can give it; then the last day's evidence, oldest
        first. When none is left (the database, or another program, fills the disk), new evidence
        is held back (`low_disk`) until the disk has room again (RESUME_MARGIN_BYTES over the
        floor). A full disk would stop more than the evidence: every result after it unrecorded,
        and on a Jetson the system on the same disk. The last day's images go last: they are the
        rejects operators review, and without rows leaving first, the rows that take the disk in
        the end left none at all."""
        cutoff = time.time_ns() - KEEP_NEWEST_NS
        short = self.min_free_bytes - free_bytes(self.evidence_dir)
        if short > 0:
            self._remove_oldest(short, "free-space floor", before_ns=cutoff)
        if self.database is not None and free_bytes(self.database.parent) < self.min_free_bytes:
            self._make_room(cutoff)
        short = self.min_free_bytes - free_bytes(self.evidence_dir)
        if short > 0:
            self._remove_oldest(short, "free-space floor")
            short = self.min_free_bytes - free_bytes(self.evidence_dir)
        low = short > 0 if not self.low_disk else short > -self._resume_margin
        if low != self.low_disk:
            floor_gb = self.min_free_bytes / 1e9
            if low:
                log.error("the disk of %s has %.2f GB free, under record_min_free_gb %g, and no evidence is left "
                          "to remove: rejects are recorded without their images until it has room",
                          self.evidence_dir, (self.min_free_bytes - short) / 1e9, floor_gb)  # fmt: skip
            else:
                log.info("the disk of %s is over record_min_free_gb %g again: evidence is written", self.evidence_dir,
                         floor_gb)  # fmt: skip
        self.low_disk = low

    @property
    def _resume_margin(self) -> int:
        """How far over the floor the disk must be for evidence to be written again."""
        return min(RESUME_MARGIN_BYTES, self.min_free_bytes // 10)

    def _make_room(self, cutoff: int) -> None:
        """The oldest results published before `cutoff` (ns) leave the SQLite record, with their
        files, until its file holds ROOM_BYTES of free pages for the rows to come, and, where the
        file gives pages back to the disk, as many more as the disk is short of the floor and its
        resume margin: those go back to the disk, for the evidence. Reviewed results stay. Called
        only under the floor."""
        want = ROOM_BYTES
        if gives_space_back(self.engine):
            want += self.min_free_bytes + self._resume_margin - free_bytes(self.database.parent)
        removed, roomy = 0, False
        for _ in range(EXPIRE_CHUNKS):
            roomy = self._free_bytes_inside() >= want
            if roomy:
                break
            count, more = self._remove_results(cutoff, "for_space")
            removed += count
            if not more:
                break
        if want > ROOM_BYTES and self._free_bytes_inside() > ROOM_BYTES:
            self._give_back()
            self._checkpoint()  # the pages leave the disk only once the WAL's copy of them is in the file
        if removed:
            self.removed_for_space += removed
            self.metrics.results_removed_for_space.inc(removed)
            self._full_log.log(
                "the disk of %s is under record_min_free_gb %g: removed the oldest %d results to keep it (%d in "
                "all; reviewed ones and the last day's stay). Set record_keep_days, or give the record more disk",
                self.database,
                self.min_free_bytes / 1e9,
                removed,
                self.removed_for_space,
            )
        elif not roomy and self._free_bytes_inside() < ROOM_BYTES:  # no room for the rows to come
            self._full_log.log(
                "the disk of %s is under record_min_free_gb %g and the record has no result older than a day "
                "that is not reviewed: it fills the disk",
                self.database,
                self.min_free_bytes / 1e9,
            )

    def _give_back(self) -> bool:
        """Give the SQLite file's free pages past ROOM_BYTES back to the disk, GIVE_BACK_PAGES at
        most; -> whether more are left. Expired rows then free the disk, not only the file: a
        record whose record_keep_days is lowered, or set after its rows reached the floor, shrinks.
        A file created without incremental auto-vacuum keeps its size (docs/deploy.md)."""
        if not gives_space_back(self.engine):
            return False
        pages, page_bytes = self._freelist()
        spare = pages - ROOM_BYTES // page_bytes
        if spare <= 0:
            return False
        with self.engine.connect() as conn:
            # The pragma frees one page per step, and only executescript steps it to the end.
            conn.connection.driver_connection.executescript(
                f"PRAGMA incremental_vacuum({min(spare, GIVE_BACK_PAGES)});"
            )
        return spare > GIVE_BACK_PAGES

    def _bound_wal(self) -> None:
        """Checkpoint the SQLite WAL in full and truncate it once it is past WAL_BOUND_BYTES,
        at most once every WAL_RETRY_S."""
        now = time.monotonic()
        if now < self._next_wal_try or _size(self.database.with_name(self.database.name + "-wal")) <= WAL_BOUND_BYTES:
            return
        self._next_wal_try = now + WAL_RETRY_S
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the SQLite WAL into the file in full, which the file's pages given back then leave,
        and start it again; WAL_WAIT_MS at most for the readers of the moment."""
        with self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            driver.execute(f"PRAGMA busy_timeout={WAL_WAIT_MS}")
            try:
                busy, frames, copied = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if busy:
            log.debug("the WAL's checkpoint met readers: %d of its %d pages copied, tried again later", copied, frames)

    def _free_bytes_inside(self) -> int:
        """Bytes of the SQLite file that deleted rows left, which new rows take first."""
        pages, page_bytes = self._freelist()
        return pages * page_bytes

    def _freelist(self) -> tuple[int, int]:
        """The SQLite file's free pages, and the bytes of a page."""
        with self.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            return pages, conn.exec_driver_sql("PRAGMA page_size").scalar_one()

    def _remove_oldest(self, excess: int, why: str, before_ns: int | None = None) -> None:
        """Remove the oldest evidence until `excess` bytes are freed (or none is left, or, with
        `before_ns`, none of a result published before it); mark and count each. A reviewed
        result's evidence stays (its share is _bound_reviewed's): an operator's verdict on a
        reject is the labelled image recalibration and evaluation take (`vqad records
        --export-reviewed`). The search starts after the last row marked: from the first row, it
        would read every row whose evidence is gone or was never kept, at each pass (0.17 s at 2
        million rows, and a pass follows nearly every transaction once the quota is reached). A
        result reviewed after the search passed it has already lost its images."""
        removed, up_to, young, stale = 0, self._quota_up_to, False, False
        target = self.evidence_bytes - excess
        kept = sa.exists().where(reviews.c.result_id == results.c.id).label("kept")  # reviewed
        published = sa.func.coalesce(results.c.published_ns, results.c.ts_ns).label("at")
        with self.engine.begin() as conn:
            while self.evidence_bytes > target and not young:
                oldest = conn.execute(
                    sa.select(results.c.id, results.c.evidence_frame, results.c.evidence_overlay, kept, published)
                    .where(results.c.id > up_to, results.c.evidence_frame.is_not(None),
                           results.c.evidence_removed.is_(False))
                    .order_by(results.c.id)
                    .limit(64)
                ).all()  # fmt: skip
                if not oldest:
                    break
                marked = []
                for row in oldest:
                    # Rows are written in time order: the first one young enough ends the search.
                    young = before_ns is not None and row.at >= before_ns
                    if young:
                        break
                    if row.kept or not self.owns(row.evidence_frame):
                        up_to = row.id
                        continue
                    if not _any_file(*self._here(row.evidence_frame, row.evidence_overlay)):  # removed by hand: marked
                        stale, up_to = True, row.id
                        marked.append(row.id)
                        continue
                    if stale:  # the count holds bytes no longer there: measured again before any removal
                        young = True
                        break
                    up_to = row.id
                    self._remove_files(row.evidence_frame, row.evidence_overlay)
                    marked.append(row.id)
                    if self.evidence_bytes <= target:
                        break
                if marked:
                    conn.execute(sa.update(results).where(results.c.id.in_(marked)).values(evidence_removed=True))
                removed += len(marked)
        self._quota_up_to = up_to  # once committed
        if stale:
            self._measure_again()
        self.evidence_removed += removed
        self.metrics.evidence_removed.inc(removed)
        if removed:  # at its bound, nearly every transaction removes some: a line a minute says so
            self._removed_logs.setdefault(why, RepeatedLog(log, logging.INFO)).log(
                "%s: removed the oldest %d frames' evidence (%d in all)", why, removed, self.evidence_removed
            )

    def _bound_reviewed(self) -> None:
        """Reviewed results' images past REVIEWED_SHARE of the quota, and under the floor with no
        other evidence left as many as it takes, leave oldest first; marked and counted as the
        quota's."""
        self._next_reviewed = time.monotonic() + REVIEWED_EVERY_S
        # From the reviews to their results by id: an EXISTS on each result walked every row
        # (0.52 s at a million results, against 2 ms).
        reviewed = results.c.id.in_(sa.select(reviews.c.result_id))
        query = (
            sa.select(results.c.id, results.c.evidence_frame, results.c.evidence_overlay)
            .where(reviewed, results.c.evidence_frame.is_not(None), results.c.evidence_removed.is_(False))
            .order_by(results.c.id)
        )
        with self.engine.connect() as conn:
            rows = [r for r in conn.execute(query).all() if self.owns(r.evidence_frame)]
        sizes = [sum(_size(Path(p)) for p in self._here(r.evidence_frame, r.evidence_overlay) if p) for r in rows]
        excess = sum(sizes) - int(REVIEWED_SHARE * self.max_bytes) if self.max_bytes else 0
        if self.low_disk:
            excess = max(excess, self.min_free_bytes + self._resume_margin - free_bytes(self.evidence_dir))
        gone = []
        for row, size in zip(rows, sizes, strict=True):
            if excess <= 0:
                break
            self._remove_files(row.evidence_frame, row.evidence_overlay)
            gone.append(row.id)
            excess -= size
        if not gone:
            return
        with self.engine.begin() as conn:
            conn.execute(sa.update(results).where(results.c.id.in_(gone)).values(evidence_removed=True))
        self.evidence_removed += len(gone)
        self.metrics.evidence_removed.inc(len(gone))
        self._reviewed_log.log(
            "removed the images of the oldest %d reviewed results: reviewed images keep %d%% of record_max_gb at "
            "most, and none under record_min_free_gb with nothing else to remove (vqad records --export-reviewed "
            "keeps them)", len(gone), 100 * REVIEWED_SHARE,
        )  # fmt: skip

    def _expire(self) -> None:
        """Remove results published more than keep_days ago, oldest first, with their evidence
        files; a reviewed result stays."""
        removed, backlog = 0, True
        try:
            for _ in range(EXPIRE_CHUNKS):
                count, more = self._remove_results(time.time_ns() - self.keep_ns, "past_keep_days")
                removed += count
                if not more:
                    backlog = False
                    break
            if self.database is not None and self._give_back():
                backlog = True
        finally:
            self._next_expiry = time.monotonic() + (EXPIRE_BACKLOG_S if backlog else EXPIRE_EVERY_S)
            if removed:
                self.expired += removed
                self.metrics.results_expired.inc(removed)
                log.info("record: removed %d results older than %g days (%d in all; reviewed ones stay)",
                         removed, self.keep_ns / 86400e9, self.expired)  # fmt: skip

    def _remove_results(self, cutoff: int, why: str) -> tuple[int, bool]:
        """Remove the unreviewed results among the next EXPIRE_ROWS oldest that were published
        before `cutoff` (ns), in one transaction that also counts them in `meta` (`why`), then
        their files. Rows are written in time order, so the scan walks the ids up from where it
        stopped and ends at the first row that is young enough. -> (results removed, whether
        older ones may be left)."""
        published = sa.func.coalesce(results.c.published_ns, results.c.ts_ns).label("at")
        reviewed = sa.exists().where(reviews.c.result_id == results.c.id).label("reviewed")
        query = sa.select(results.c.id, results.c.ts_ns, published, reviewed, results.c.evidence_frame,
                          results.c.evidence_overlay, results.c.evidence_removed)  # fmt: skip
        with self.engine.begin() as conn:
            rows = conn.execute(
                query.where(results.c.id > self._expired_up_to).order_by(results.c.id).limit(EXPIRE_ROWS)
            ).all()
            young = next((i for i, r in enumerate(rows) if r.at >= cutoff), len(rows))
            # A row whose images are on another box's disk stays for that box to remove with them.
            gone = [r for r in rows[:young] if not r.reviewed and (r.evidence_removed or self.owns(r.evidence_frame))]
            if gone:
                conn.execute(sa.delete(results).where(results.c.id.in_([r.id for r in gone])))
                add_removed(conn, why, len(gone), max(r.ts_ns for r in gone))
                newest = conn.execute(sa.select(sa.func.max(results.c.id))).scalar_one() or 0
        if young:
            self._expired_up_to = rows[young - 1].id  # once committed
        if gone and newest < self._expired_up_to:
            # The newest rows went too (a line idle for longer than what is kept): SQLite gives the
            # next row the greatest id left plus one, an id the scans have passed. From there on.
            self._expired_up_to = newest
            self._quota_up_to = min(self._quota_up_to, newest)
        for r in gone:
            self._remove_files(r.evidence_frame, r.evidence_overlay)
        return len(gone), young == len(rows) == EXPIRE_ROWS

    def owns(self, path: str | None) -> bool:
        """Whether the evidence file named `path` is this writer's to remove: every file of a
        SQLite record (on this box's disk, as the record is); of a server record, one under its
        own folder, one of a relative name (written before names were absolute, read from the
        working directory), one on this machine (under a folder an earlier config named), or
        none. Boxes on several lines may share a server record (a plant's PostgreSQL): a file
        another box named is on that box's disk. Its row marked removed, or deleted, here, the
        file stayed there for good, out of that box's quota and expiry, until its disk held its
        floor with nothing it could remove, and its rejects were recorded without images."""
        if path is None or self.database is not None:
            return True
        named = Path(path)
        return not named.is_absolute() or named.is_relative_to(self.evidence_dir) or named.exists()

    def forget(self, paths: Iterable[str], counted: bool = True) -> None:
        """Remove evidence files that no row will name (a batch that was never stored); `counted`:
        they were `added` to the quota's count, and leave it."""
        for path in paths:
            try:
                size = Path(path).stat().st_size
                Path(path).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("evidence %s that no row names could not be removed: %s", path, exc)
                continue
            if counted and self.evidence_bytes is not None:
                self.evidence_bytes -= size

    def _measure_again(self) -> None:
        """The evidence's size read from the disk again: files were removed by hand (a folder
        cleared to make room), and the count still held them. The quota would otherwise remove
        every new image as soon as it was written, for as long as the daemon ran."""
        before, self.evidence_bytes = self.evidence_bytes, _folder_bytes(self.evidence_dir)
        self._hand_removed_log.log(
            "evidence files were removed by hand from %s: its size is measured again (%.1f MB, not %.1f MB); "
            "their results are marked as without evidence", self.evidence_dir, self.evidence_bytes / 1e6,
            (before or 0) / 1e6,
        )  # fmt: skip

    def _here(self, *paths: str | None) -> list[str | None]:
        """The evidence files rows name, where they are on this machine (located)."""
        return [located(path, self.evidence_dir) for path in paths]

    def _remove_files(self, *paths: str | None) -> None:
        """Delete evidence files that are there, and take them off the quota's count."""
        for path in self._here(*paths):
            if path and Path(path).is_file():
                self.evidence_bytes -= Path(path).stat().st_size
                Path(path).unlink()


def _any_file(*paths: str | None) -> bool:
    """Whether any of the evidence files named is on the disk."""
    return any(path and Path(path).is_file() for path in paths)


# An evidence file's path under its record's evidence folder: camera/day/file, as the daemon
# names it (RecordWriter._evidence_paths).
EVIDENCE_DEPTH = 3


def located(named: str | None, evidence_dir: Path | None) -> str | None:
    """The evidence file a row names, on this machine: where the row says, or else the same
    camera/day/file under `evidence_dir` (a record and its evidence moved to another disk, a
    backup opened on another machine: the rows keep the paths the daemon wrote). `named` when
    neither is a file (removed, or on another box's disk); None for None."""
    if named is None or evidence_dir is None or os.path.isfile(named):
        return named
    moved = evidence_dir.joinpath(*Path(named).parts[-EVIDENCE_DEPTH:])
    return str(moved) if moved.is_file() else named


def gives_space_back(engine: sa.Engine) -> bool:
    """Whether a SQLite record's file was made with incremental auto-vacuum, so that the pages
    its expired rows leave can go back to the disk."""
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one() == INCREMENTAL


def free_bytes(folder: Path) -> int:
    """The free space of the disk that holds `folder` (or would: its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(folder)).free


# Filesystems where SQLite's locks do not hold and its WAL's shared memory is not shared
# (sqlite.org/wal.html: "WAL does not work over a network filesystem"): a SQLite record there can
# be damaged. Their names as /proc/self/mountinfo gives them.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs", "fuse.sshfs",
     "fuse.glusterfs", "fuse.rclone", "fuse.s3fs"}
)  # fmt: skip


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem that holds `path` (or would: its nearest existing parent), as
    the kernel names it (ext4, nfs4, ...); None where /proc/self/mountinfo cannot be read (not
    Linux)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    return mount_type(nearest_existing(path).resolve(), mountinfo)


def mount_type(place: Path, mountinfo: str) -> str | None:
    """The type of the innermost mount in `mountinfo` (/proc/self/mountinfo's text) that holds
    the absolute path `place`."""
    best, kind = -1, None
    for line in mountinfo.splitlines():
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not after:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4]))  # a space is \040
        if (place == point or point in place.parents) and len(point.parts) > best:
            best, kind = len(point.parts), after.split()[0]
    return kind


def network_filesystem_note(database: Path) -> str | None:
    """A warning when a SQLite record lies on a network filesystem; None otherwise."""
    kind = filesystem_type(database)
    if kind not in NETWORK_FILESYSTEMS:
        return None
    return (f"the SQLite record {database} is on a network filesystem ({kind}), where SQLite's locking does not hold "
            "and the file can be damaged: keep it on this machine's disk, or use a PostgreSQL server for a record "
            "off it")  # fmt: skip


# Why a disk an edge box writes to turns read-only, said where that shows: the kernel's doing.
FAILING_DISK = "the kernel makes a failing SD card or eMMC read-only after a write error (see dmesg)"


def unwritable_note(path: Path, what: str) -> str | None:
    """A line when no file can be written where `path` is (or would be: its nearest existing
    parent), by trying; None when one can. SQLite then says only "disk I/O error", and the
    likeliest cause on an edge box is its own: the kernel turns a worn SD card or eMMC read-only
    after a write error, and nothing is written there again until the disk is checked or
    replaced. Its mount flags may still say rw (ext4's emergency_ro), hence the try."""
    place = nearest_existing(path)
    folder = place if place.is_dir() else place.parent
    if (exc := write_refusal(folder)) is None:
        return None
    if exc.errno != errno.EROFS:
        return f"{what} {path} cannot be written ({folder}: {exc.strerror or exc})"
    after = "nothing is written there until it is writable again"
    return f"{what} {path} is on a read-only filesystem ({folder}): {FAILING_DISK}; {after}"


def _size(path: Path) -> int:
    """A file's size in bytes; 0 when it is not there."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def sqlite_file(engine: sa.Engine) -> Path | None:
    """The file of a SQLite record; None for a database server (its disk is not this machine's
    to keep) or an in-memory one."""
    return database_file(engine.url)


def database_file(url: sa.URL) -> Path | None:
    """The file a SQLite URL names; None for a server's database or an in-memory one."""
    database = url.database if url.get_backend_name() == "sqlite" else None
    return Path(database) if database and database != ":memory:" else None


def _folder_bytes(folder: Path) -> int:
    """The size of the files under `folder` (0 when it is not there)."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            total += _folder_bytes(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total
