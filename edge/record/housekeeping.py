"""`Housekeeping`: keeps the line's record within its bounds while the writer fills it. The
evidence quota removes the oldest evidence files past `record_max_gb` and marks their rows; the
free-space floor does the same while the evidence's disk has less than `record_min_free_gb`
free, and holds new evidence back while nothing is left to remove; expiry removes results older
than `record_keep_days` with their files, except reviewed ones.
Both run on the writer's thread, between its transactions; a failure is logged and tried again,
and never stops the writer: the line's rows come first.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import sqlalchemy as sa

from edge.metrics import DaemonMetrics
from edge.record.schema import results, reviews

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


class Housekeeping:
    def __init__(
        self, engine: sa.Engine, evidence_dir: Path, metrics: DaemonMetrics, max_gb: float, keep_days: float,
        min_free_gb: float = 0.0,
    ):  # fmt: skip
        """max_gb: the evidence's disk quota (0 = none). keep_days: how long a result stays
        (0 = for ever). min_free_gb: the free space the evidence's disk keeps (0 = no floor)."""
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
        self._next_expiry = 0.0  # monotonic time of the next pass; 0: at the first commit
        self._expired_up_to = 0  # rows up to this id were examined (reviewed ones stay behind it)

    def added(self, path: Path) -> None:
        """An evidence file the writer wrote: counted against the quota (once it is measured;
        the measurement finds the file itself)."""
        if self.evidence_bytes is not None:
            self.evidence_bytes += path.stat().st_size

    def run(self) -> None:
        """The quota, then expiry when it is due; errors are logged, counted and left for later."""
        try:
            if self.evidence_bytes is None:
                self.evidence_bytes = _folder_bytes(self.evidence_dir)
            if self.max_bytes and self.evidence_bytes > self.max_bytes:
                self._remove_oldest(self.evidence_bytes - self.max_bytes, "evidence quota")
            if self.min_free_bytes:
                self._keep_free()
            if self.keep_ns and time.monotonic() >= self._next_expiry:
                self._expire()
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            self.metrics.record_errors.inc()
            log.warning("the record's housekeeping failed, tried again later: %s", str(exc).splitlines()[0][:200])

    def _keep_free(self) -> None:
        """Under the floor of free space, the oldest evidence goes as past the quota; when none
        is left (the database, or another program, fills the disk), new evidence is held back
        (`low_disk`) until the disk has room again. A full disk would stop more than the
        evidence: the record's own writes, and on a Jetson the system on the same disk."""
        short = self.min_free_bytes - free_bytes(self.evidence_dir)
        if short > 0:
            self._remove_oldest(short, "free-space floor")
            short = self.min_free_bytes - free_bytes(self.evidence_dir)
        low = short > 0
        if low != self.low_disk:
            floor_gb = self.min_free_bytes / 1e9
            if low:
                log.error("the disk of %s has %.2f GB free, under record_min_free_gb %g, and no evidence is left "
                          "to remove: rejects are recorded without their images until it has room. The record's "
                          "rows, or another program, fill it (record_keep_days bounds the rows)",
                          self.evidence_dir, (self.min_free_bytes - short) / 1e9, floor_gb)  # fmt: skip
            else:
                log.info("the disk of %s is over record_min_free_gb %g again: evidence is written", self.evidence_dir,
                         floor_gb)  # fmt: skip
        self.low_disk = low

    def _remove_oldest(self, excess: int, why: str) -> None:
        """Remove the oldest evidence until `excess` bytes are freed (or none is left); mark and
        count each. The search starts after the last row marked: from the first row, it would
        read every row whose evidence is gone or was never kept, at each pass (0.17 s at 2
        million rows, and a pass follows nearly every transaction once the quota is reached)."""
        removed, up_to = 0, self._quota_up_to
        target = self.evidence_bytes - excess
        with self.engine.begin() as conn:
            while self.evidence_bytes > target:
                oldest = conn.execute(
                    sa.select(results.c.id, results.c.evidence_frame, results.c.evidence_overlay)
                    .where(results.c.id > up_to, results.c.evidence_frame.is_not(None),
                           results.c.evidence_removed.is_(False))
                    .order_by(results.c.id)
                    .limit(64)
                ).all()  # fmt: skip
                if not oldest:
                    break
                marked = []
                for row in oldest:
                    self._remove_files(row.evidence_frame, row.evidence_overlay)
                    marked.append(row.id)
                    if self.evidence_bytes <= target:
                        break
                conn.execute(sa.update(results).where(results.c.id.in_(marked)).values(evidence_removed=True))
                removed, up_to = removed + len(marked), marked[-1]
        self._quota_up_to = up_to  # once committed
        self.evidence_removed += removed
        self.metrics.evidence_removed.inc(removed)
        if removed:
            log.info("%s: removed the oldest %d frames' evidence (%d in all)", why, removed, self.evidence_removed)

    def _expire(self) -> None:
        """Remove results published more than keep_days ago, oldest first, with their evidence
        files; a reviewed result stays. Rows are written in time order, so the scan walks the
        ids up from where it stopped and ends at the first row that is young enough."""
        cutoff = time.time_ns() - self.keep_ns
        published = sa.func.coalesce(results.c.published_ns, results.c.ts_ns).label("at")
        reviewed = sa.exists().where(reviews.c.result_id == results.c.id).label("reviewed")
        query = sa.select(results.c.id, published, reviewed, results.c.evidence_frame, results.c.evidence_overlay)
        removed, backlog = 0, True
        try:
            for _ in range(EXPIRE_CHUNKS):
                with self.engine.begin() as conn:
                    rows = conn.execute(
                        query.where(results.c.id > self._expired_up_to).order_by(results.c.id).limit(EXPIRE_ROWS)
                    ).all()
                    young = next((i for i, r in enumerate(rows) if r.at >= cutoff), len(rows))
                    gone = [r for r in rows[:young] if not r.reviewed]
                    if gone:
                        conn.execute(sa.delete(results).where(results.c.id.in_([r.id for r in gone])))
                    if young:
                        self._expired_up_to = rows[young - 1].id
                for r in gone:
                    self._remove_files(r.evidence_frame, r.evidence_overlay)
                removed += len(gone)
                if young < len(rows) or len(rows) < EXPIRE_ROWS:
                    backlog = False
                    break
        finally:
            self._next_expiry = time.monotonic() + (EXPIRE_BACKLOG_S if backlog else EXPIRE_EVERY_S)
            if removed:
                self.expired += removed
                self.metrics.results_expired.inc(removed)
                log.info("record: removed %d results older than %g days (%d in all; reviewed ones stay)",
                         removed, self.keep_ns / 86400e9, self.expired)  # fmt: skip

    def _remove_files(self, *paths: str | None) -> None:
        """Delete evidence files that are there, and take them off the quota's count."""
        for path in paths:
            if path and Path(path).is_file():
                self.evidence_bytes -= Path(path).stat().st_size
                Path(path).unlink()


def free_bytes(folder: Path) -> int:
    """The free space of the disk that holds `folder` (or would: its nearest existing parent)."""
    for place in (folder, *folder.parents):
        if place.exists():
            return shutil.disk_usage(place).free
    return shutil.disk_usage("/").free


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
