"""`RecordLink`: the line's record as the dashboard reaches it. A database server that does not
answer (at start, or for a while later), or a SQLite record its daemon has not made yet, costs
the page its record-backed parts, with the reason, and never the page: the live view goes on,
and the record is opened again when it answers.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from edge.errors import DataError, RecordMissingError
from edge.record import Record
from edge.record.store import SQLITE_WRITE_REFUSALS, database_reason, is_sqlite, shown_url

log = logging.getLogger(__name__)

# How often an unreachable record is tried again: often enough that the page recovers within
# seconds, seldom enough that a page's polling does not become a connection storm.
RETRY_S = 5.0


class RecordUnavailableError(Exception):
    """The record cannot be reached now; the message says why."""


class RecordLink:
    def __init__(self, url: str, evidence_dir: str = ""):
        """Open the record now (`evidence_dir`: Record's). A SQLite file that cannot be opened is
        this machine's mistake (DataError, the start stops); a server that does not answer, or a
        SQLite file that is not there yet, is tried again later. The dashboard never creates a
        record: a mistyped path would give a page of "no rejects" over an empty file, and its
        reviews would go there."""
        self.url, self.where, self.evidence_dir = url, shown_url(url), evidence_dir
        self._record: Record | None = None
        self._error, self._next_try = "", 0.0
        try:
            self._record = Record(url, must_exist=True, evidence_dir=evidence_dir, reading=True)
        except RecordMissingError as exc:  # a box whose daemon has not started yet
            self._failed(str(exc))
        except DataError as exc:
            if is_sqlite(url):
                raise
            self._failed(str(exc))

    def get(self) -> Record:
        """The open record; RecordUnavailableError while its server does not answer."""
        if self._record is None and time.monotonic() >= self._next_try:
            try:
                self._record = Record(self.url, must_exist=True, evidence_dir=self.evidence_dir, reading=True)
                log.info("the record at %s answers now", self.where)
            except DataError as exc:
                self._failed(str(exc))
        if self._record is None:
            raise RecordUnavailableError(self._error)
        return self._record

    def failed(self, exc: sa.exc.SQLAlchemyError) -> RecordUnavailableError:
        """A query on the open record failed (its server went away): the reason, to raise or
        answer with. The engine reconnects by itself once the server is back."""
        reason = database_reason(exc)
        what = (
            "cannot be written"
            if is_sqlite(self.url) and reason.startswith(SQLITE_WRITE_REFUSALS)
            else "does not answer"
        )
        return RecordUnavailableError(f"the record at {self.where} {what}: {reason}")

    @property
    def read_only(self) -> bool:
        """Whether the open record is a file this process cannot write: read, never reviewed."""
        return self._record is not None and self._record.read_only

    def close(self) -> None:
        if self._record is not None:
            self._record.close()

    def _failed(self, reason: str) -> None:
        if reason != self._error:
            log.warning("%s; the dashboard goes on without it, and tries again every %.0f s", reason, RETRY_S)
        self._error, self._next_try = reason, time.monotonic() + RETRY_S
