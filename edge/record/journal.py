"""The record's journal: each result handed to the record's writer, a JSON line of its row,
kept in the state folder until the writer has committed every one handed so far.

The writer commits in batches, and a batch of fails writes its evidence first (a PNG, an
overlay and their syncs: about 30 ms each). A daemon killed meanwhile (the OOM killer, a
watchdog's SIGKILL, a power cut) lost every result in memory: a probe at 40 fails/s lost 43
of 129. Each line is written to the kernel as the result is handed over, so a kill of the
process loses none; it is synced with the writer's state file (before each transaction, and
every quarter second while evidence is written), so a power cut loses what came since. The
next start inserts the rows its record lacks (by the run and its `seq`), with the images the
killed batch had written whole and the others without, and says how many
(edge.record.writer).

The file starts again whenever the writer has nothing left to commit, and stops taking lines
at JOURNAL_MAX_BYTES (a record down for long: the results wait in memory, counted), so it
stays small. It goes at a clean stop, unless results are left there (a record that did not
answer): the next start puts those back too. One file a run (`vqad-serve.journal.<run>.jsonl`): the next start reads the
previous runs' before its own writer adds to its own.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "vqad-serve.journal."
# Past this, lines are no longer added until the writer catches up: 64 MiB holds about 60,000
# results' rows (about 1 KiB each with their regions), minutes of a fast line's backlog.
JOURNAL_MAX_BYTES = 64 << 20


class Journal:
    """This run's journal in `folder`. add() under the writer's lock; emptied() when the buffer
    is empty (under the same lock); sync() from the writer's thread."""

    def __init__(self, folder: Path, run_id: str):
        self.path = folder / f"{JOURNAL_PREFIX}{run_id}.jsonl"
        self.size, self.full, self._dirty = 0, False, False
        self.file: IO[bytes] | None = None
        try:
            self.file = open(self.path, "ab")
        except OSError as exc:
            log.error("the record's journal %s cannot be written (%s): a kill loses the results the writer "
                      "holds in memory", self.path, exc)  # fmt: skip

    def add(self, row: dict[str, Any]) -> None:
        """A row handed to the writer, in the kernel when this returns."""
        if self.file is None or self.full:
            return
        line = (json.dumps(row, separators=(",", ":"), default=str) + "\n").encode()
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as exc:  # a full disk: the rows matter more than their journal
            self._stop(f"cannot be written ({exc})")
            return
        self.size += len(line)
        self._dirty = True
        if self.size >= JOURNAL_MAX_BYTES:
            self._stop(f"holds {self.size >> 20} MiB of results the record has not taken")

    def _stop(self, why: str) -> None:
        self.full = True
        log.warning("the record's journal %s %s: until the record catches up, a kill loses the results "
                    "waiting for it", self.path, why)  # fmt: skip

    def emptied(self) -> None:
        """Every row handed so far is committed (or counted unrecorded): the file starts again."""
        if self.file is None or (self.size == 0 and not self.full):
            return
        try:
            self.file.truncate(0)  # opened to append: the next line goes to the start
        except OSError as exc:
            log.warning("the record's journal %s could not start again: %s", self.path, exc)
            return
        if self.full:
            log.info("the record has caught up: its journal %s takes results again", self.path)
        self.size, self.full = 0, False

    def sync(self) -> None:
        """On the disk, as far as it was written (the writer's thread, beside its state file)."""
        if self.file is None or not self._dirty:
            return
        self._dirty = False
        try:
            os.fsync(self.file.fileno())
        except (OSError, ValueError):  # closed meanwhile, or the disk refused: said by add()
            pass

    def close(self, keep: bool = False) -> None:
        """The writer has stopped: the file goes, or with `keep` (results left uncommitted, the
        record down at the stop), stays for the next start to put back."""
        if self.file is None:
            return
        self.sync()
        self.file.close()
        self.file = None
        if not keep:
            self.path.unlink(missing_ok=True)


def previous_journals(folder: Path, run_id: str) -> dict[str, Path]:
    """The journals other runs left in `folder`, by run."""
    found = {}
    for path in sorted(folder.glob(f"{JOURNAL_PREFIX}*.jsonl")):
        run = path.name[len(JOURNAL_PREFIX) : -len(".jsonl")]
        if run != run_id:
            found[run] = path
    return found


def journal_rows(path: Path) -> list[dict[str, Any]]:
    """The rows a journal holds; a line cut by a power cut, or unreadable, is left out."""
    rows = []
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("the record's journal %s cannot be read (%s): its results are not recovered", path, exc)
        return rows
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
