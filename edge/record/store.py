"""`Record`: the one API onto the line's record: connect, query results with their reviews,
add a review, export the reviewed evidence as training data. `vqad records`, `vqad review` and
the dashboard use it; so can any program.

URLs are SQLAlchemy's: `sqlite:///PATH` (the default; WAL mode) or `postgresql://...`; a plain
PATH names a SQLite file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from edge.durable import rename_synced, sync_file, sync_folders, write_refusal
from edge.errors import ConfigError, DataError, RecordMissingError, ReviewedSinceError
from edge.frames import batched
from edge.master import outcome
from edge.progress import progress
from edge.protocol import file_name, is_frame_id, is_id
from edge.record.days import QUARTER_NS, UTC_DAYS, ProductionDays
from edge.record.housekeeping import (
    BUSY_TIMEOUT_MS,
    FAILING_DISK,
    database_file,
    free_bytes,
    located,
    sqlite_file,
)
from edge.record.schema import check_readable, events, migrate, results, reviews, stored_removed

log = logging.getLogger(__name__)

VERDICTS = ("false_reject", "defect")
# The daily tally's count of passes reviewed as defects: the misses people found.
MISSED = "missed"
# A review's note is a sentence or a few: this bounds what a page or a script can store in one.
NOTE_MAX_CHARS = 2000
# The SQLite WAL file's size kept between checkpoints (PRAGMA journal_size_limit).
WAL_KEPT_BYTES = 4 * 2**20
# Frames looked up per query by their ids: well under every database's limit on bound parameters.
LOOKUP_CHUNK = 500
# An export reads the record this many results at a time (about 10 MB of them in Python): a
# month of a line's results read at once held gigabytes (2.1 GB for a million).
PAGE_ROWS = 5000
# A database server that stops answering (its host switched off, the network cut, a server that
# takes the connection and never answers) fails a connection within connect_timeout, and one
# open connection within about a minute, as errors that the writer retries, instead of blocking
# it for the kernel's 15 minutes of retransmissions, or for ever. libpq's names; a URL's own
# (?connect_timeout=5) win. Keepalives find a dead idle connection after 30 + 3 x 10 s;
# tcp_user_timeout one whose sent data has gone unacknowledged for 30 s. Queries on a server
# that is up but slow are its own matter (its statement_timeout).
SERVER_TIMEOUTS = {
    "connect_timeout": 10,  # s, the connection with its authentication
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms; libpq 12 or later
}


def record_url(text: str) -> str:
    """A record URL as SQLAlchemy reads it: a URL stays, a plain path names a SQLite file."""
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def create_engine(url: str, must_exist: bool = False, read_only: bool = False) -> sa.Engine:
    """An engine for `url` (or a SQLite file's path); SQLite files get WAL (readers never block
    the writer), synchronous=NORMAL (a crash loses at most the last transaction, never the
    file), and when new, incremental auto-vacuum (space can be given back to the disk).
    must_exist: DataError for a SQLite file that is not there, instead of creating it.
    read_only: a SQLite file opened as it is, nothing written (`unwritable_file`)."""
    url = record_url(url)
    if read_only:
        return _read_only_engine(url)
    try:
        target = _with_driver(_supported(sa.make_url(url)))
        engine = sa.create_engine(target, pool_pre_ping=True, connect_args=_server_timeouts(target))
    except ImportError as exc:  # a driver not installed: psycopg comes with vqad's postgresql extra
        hint = " (PostgreSQL needs psycopg: pip install 'vqad[postgresql]')" if "postgresql" in url else ""
        raise ConfigError(f"cannot use the record URL {shown_url(url)!r}: {exc}{hint}") from exc
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"cannot use the record URL {url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            if must_exist and not Path(database).exists():
                raise RecordMissingError(
                    f"no record at {Path(database).resolve()}: the daemon creates it (vqad serve --record)"
                )
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # A new file gives back to the disk what expired rows leave (the housekeeping's
            # incremental_vacuum). Set only on an empty file: on one that has tables it changes
            # nothing, yet it writes, and on a full disk the dashboard and `vqad records` could
            # not open the record they only read.
            if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # An expiry pass of 100,000 rows grows the WAL to about 21 MB, which SQLite otherwise
            # keeps on disk for good; past this size it is cut back after each checkpoint.
            cursor.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
            cursor.close()

    return engine


def unwritable_file(url: str) -> Path | None:
    """A SQLite record's file that this process cannot write: on a read-only disk or medium (a
    backup on a share, a write-protected stick, a card the kernel made read-only) or of another
    user's. None for a file it can write, one that is not there, or a server's database."""
    database = sqlite_file_of(url)
    if database is None or not database.is_file():
        return None
    return None if os.access(database, os.W_OK) else database


def sqlite_file_of(url: str) -> Path | None:
    """The file a SQLite record's URL names; None for a server's database or an in-memory one."""
    return database_file(sa.make_url(record_url(url)))


def _why_unwritable(url: str) -> str:
    """What SQLite's "unable to open database file" leaves unsaid of a record to be written: its
    file, or the folder to make it in, that this process cannot write; "" when neither is so."""
    if (unwritable := unwritable_file(url)) is not None:
        return f" ({unwritable} cannot be written by this process: a read-only disk or medium, another user's)"
    database = sqlite_file_of(url)
    if database is None or database.exists() or not database.parent.is_dir():
        return ""
    refused = write_refusal(database.parent)
    return "" if refused is None else f" (no file can be made in {database.parent}: {refused.strerror or refused})"


def _read_only_engine(url: str) -> sa.Engine:
    """A SQLite file read as it is: mode=ro. Where its folder cannot be written either and no
    WAL lies beside it, immutable too: a WAL-mode file's reader otherwise makes its -shm there.
    Never with a WAL: an immutable reader leaves the WAL's transactions out (measured: 0 rows of
    10 with SQLite 3.40), and mode=ro reads them through the -shm beside it. The engine's URL
    stays the file's, which evidence_dir and the messages read."""
    database = sqlite_file_of(url)
    fixed = not os.access(database.parent, os.W_OK) and not Path(f"{database}-wal").exists()
    uri = f"file:{quote(str(database))}?mode=ro" + ("&immutable=1" if fixed else "")
    engine = sa.create_engine(url, creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    return engine


# The databases a record is written, queried and tested on (tests/test_record.py runs both).
DIALECTS = ("sqlite", "postgresql")


def _supported(url: sa.URL) -> sa.URL:
    """`url`, if it names a database the record is made for; ConfigError naming them otherwise."""
    if url.get_backend_name() not in DIALECTS:
        raise ConfigError(
            f"a record is a SQLite file (a path or sqlite:///PATH) or a PostgreSQL database (postgresql://...), "
            f"not {url.get_backend_name()}: {url.render_as_string(hide_password=True)!r}"
        )
    return url


def _with_driver(url: sa.URL) -> sa.URL:
    """A PostgreSQL URL without a driver uses psycopg 3, the one vqad's postgresql extra installs
    (SQLAlchemy 2.0 would look for psycopg2)."""
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def _server_timeouts(url: sa.URL) -> dict[str, int]:
    """SERVER_TIMEOUTS for a psycopg URL: those it does not set itself and the installed libpq
    knows; none for another database or driver."""
    if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg":
        return {}
    import psycopg

    known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    return {name: value for name, value in SERVER_TIMEOUTS.items() if name in known and name not in url.query}


def shown_url(url: str) -> str:
    """The record's URL as logs and messages show it: a path as its SQLite URL, no password."""
    return sa.make_url(record_url(url)).render_as_string(hide_password=True)


def is_sqlite(url: str) -> bool:
    """Whether the record is a SQLite file (this machine's) rather than a database server."""
    return sa.make_url(record_url(url)).get_backend_name() == "sqlite"


# What SQLite says when its file's disk refuses a write, naming neither the disk nor the cause.
SQLITE_WRITE_REFUSALS = ("attempt to write a readonly database", "disk I/O error")


def database_reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The first line of what the database driver said, without SQLAlchemy's wrapping; with a
    SQLite write refused by its disk, the likeliest cause."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if reason.startswith(SQLITE_DAMAGED[0]):  # "file is not a database" is as often another file named
        return f'{reason}: the file is damaged (docs/deploy.md, "A damaged record", says how to read back its rows)'
    return f"{reason} (is its disk read-only? {FAILING_DISK})" if reason.startswith(SQLITE_WRITE_REFUSALS) else reason


def open_record(url: str, must_exist: bool = False, read_only: bool = False) -> sa.Engine:
    """create_engine, then the schema brought up to date: a database that cannot be reached
    (a PostgreSQL server down, a SQLite file that cannot be written) is one DataError that names
    it, without its password, instead of a driver's traceback. So is a file that is not a SQLite
    database, or a damaged one ("file is not a database"). The DataError's cause is the driver's
    error: an OperationalError is a database that may answer later. read_only: a SQLite file
    (`unwritable_file`) opened read-only, its schema as it is (`check_readable`)."""
    if read_only:
        log.info("%s cannot be written here: read as it is", shown_url(url))
    engine = create_engine(url, must_exist, read_only)
    database = sqlite_file(engine)
    if database is not None and database.is_dir():  # SQLite's own word is "unable to open database file"
        engine.dispose()
        raise DataError(f"cannot open the record at {shown_url(url)}: {database} is a folder; a SQLite record is a "
                        f"file in one (e.g. {database}/line.db)")  # fmt: skip
    try:
        check_readable(engine) if read_only else migrate(engine)
    except sa.exc.DatabaseError as exc:
        engine.dispose()
        reason = database_reason(exc) + ("" if read_only else _why_unwritable(url))
        raise DataError(f"cannot open the record at {shown_url(url)}: {reason}") from exc
    except DataError as exc:
        engine.dispose()
        raise DataError(f"cannot open the record at {shown_url(url)}: {exc}") from exc
    except ConfigError:
        engine.dispose()
        raise
    return engine


@contextmanager
def refusals_named(url: str) -> Iterator[None]:
    """A query the record refuses midway (its server gone, a lock held past BUSY_TIMEOUT_MS, a
    disk error) raised as one DataError that names the record, as open_record does at the
    start, instead of a driver's traceback."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise DataError(f"the record at {shown_url(url)} refused: {database_reason(exc)}") from exc


def compact(url: str) -> tuple[int, int]:
    """Rewrite a SQLite record without the room its removed rows left, with incremental
    auto-vacuum turned on, so that rows expired from then on give their space back to the disk
    (edge.record.housekeeping); -> the file's size before and after, in bytes. Needs as much
    free space as the file takes; a daemon writing to it makes it wait, then refuse. DataError
    when it cannot; ConfigError for a server's database (its own to compact)."""
    if not is_sqlite(url):
        raise ConfigError("only a SQLite record is compacted here: a database server's is its administrator's")
    engine = open_record(url, must_exist=True)
    try:
        database = sqlite_file(engine)
        before, free = database.stat().st_size, free_bytes(database.parent)
        if free < before:
            raise DataError(f"compacting {database} needs {before / 1e9:.2f} GB free beside it; its disk has "
                            f"{free / 1e9:.2f} GB")  # fmt: skip
        with engine.connect() as conn:
            try:  # the driver's own call: only executescript steps VACUUM and the pragmas through
                conn.connection.driver_connection.executescript(
                    "PRAGMA auto_vacuum=INCREMENTAL; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);"
                )
            except sqlite3.Error as exc:
                raise DataError(f"cannot compact {database}: {exc} (is a daemon writing to it? stop it first)") from exc
        return before, database.stat().st_size
    finally:
        engine.dispose()


def backup(url: str, dest: str | Path) -> tuple[Path, int, int]:
    """A copy of a SQLite record at `dest` while daemons write to it. `dest` is a file, or a
    folder (one that is there, or a name ending in a slash) for a new file named by the time.
    SQLite's online backup, all pages in one step: one snapshot, which the writers' commits
    neither tear nor restart (a `cp` of a file in WAL mode may copy a page the writer moves
    meanwhile). The copy is checked (PRAGMA quick_check), in one file (a rollback journal, no
    WAL beside it), and put in place whole: written beside `dest`, synced, renamed over it.
    -> (the copy's path, its results, its size in bytes). ConfigError for a server's database
    (pg_dump is its administrator's); DataError when it cannot be made."""
    if not is_sqlite(url):
        raise ConfigError("only a SQLite record is backed up here: a database server's with its own tools (pg_dump)")
    engine = open_record(url, must_exist=True, read_only=unwritable_file(url) is not None)
    try:
        database = sqlite_file(engine)
        dest = _backup_path(database, Path(dest), str(dest).endswith(("/", os.sep)))
        partial = dest.with_name(dest.name + ".partial")
        try:
            with engine.connect() as conn:
                copy = sqlite3.connect(partial)
                try:
                    conn.connection.driver_connection.backup(copy)  # pages=-1: one step, one snapshot
                    copy.execute("PRAGMA journal_mode=DELETE")
                    check = copy.execute("PRAGMA quick_check").fetchone()[0]
                    count = copy.execute("SELECT count(*) FROM results").fetchone()[0]
                finally:
                    copy.close()
            if check != "ok":
                raise DataError(f"the copy of {database} fails SQLite's check: {check}")
            sync_file(partial)
            rename_synced(partial, dest)
        except sqlite3.Error as exc:
            raise DataError(f"cannot back {database} up to {dest}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return dest, count, dest.stat().st_size
    finally:
        engine.dispose()


def _backup_path(database: Path, dest: Path, meant_folder: bool) -> Path:
    """Where `backup` writes: `dest`, or in the folder `dest` a file named by the record and the
    UTC time; DataError for a folder that is not there (`meant_folder`: `dest` was written with
    a trailing slash), the record itself, or a disk without room for it."""
    if dest.is_dir():
        dest = dest / f"{database.stem}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.db"
    elif meant_folder:
        raise DataError(f"cannot back the record up into {dest}/: there is no such folder")
    if not dest.parent.is_dir():
        raise DataError(f"cannot back the record up to {dest}: there is no folder {dest.parent}")
    if dest.exists() and dest.samefile(database):
        raise DataError(f"{dest} is the record itself: back it up to another file")
    wal = database.with_name(database.name + "-wal")
    needed = database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    if free_bytes(dest.parent) < needed:
        raise DataError(f"backing {database} up needs {needed / 1e9:.2f} GB free in {dest.parent}; its disk has "
                        f"{free_bytes(dest.parent) / 1e9:.2f} GB")  # fmt: skip
    return dest


# A model's or a mask's sha256, or its first digits as a table shows them (4 at least: fewer
# would match most of a record's models).
SHA_PREFIX = re.compile(r"[0-9a-f]{4,64}")


def check_sha_prefix(value: str | None, what: str) -> None:
    """Raises ValueError unless `value` (None: any) is a sha256 or its first 4 or more digits,
    lower-case hex: Record.results' `model_sha256` and `mask_sha256`."""
    if value and not SHA_PREFIX.fullmatch(value):
        raise ValueError(f"{what} {value!r:.70} is not a sha256 nor its first digits (4 to 64 of 0-9a-f)")


def _sha_is(column: sa.Column, value: str) -> sa.ColumnElement:
    """`column` holds the sha256 `value`, or one that starts with it (a prefix; check_sha_prefix
    keeps LIKE's wildcards out)."""
    return column == value if len(value) == 64 else column.startswith(value)


def check_seq_cursor(run: str | None, after_seq: int | None) -> None:
    """Raises ValueError for an `after_seq` without its `run`: seq counts within one start of
    the daemon (Record.results, and the dashboard's API before it asks)."""
    if after_seq is not None and not run:
        raise ValueError("after_seq counts within one start of the daemon: name its run")


# A time as long ago: "30m", "24h", "7d" (an audit's "the last week", without a date to type).
AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
AGO_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str | None, zone: dt.tzinfo = dt.timezone.utc) -> int | None:
    """ISO 8601 (a time without an offset is read in `zone`, UTC unless given), or a time as
    long ago as "7d", "24h", "30m" or "90s" -> ns since the epoch; None stays None. A trailing Z
    (UTC, as JavaScript's toISOString and most programs write it) is read on every Python:
    before 3.11, fromisoformat refuses it."""
    if text is None:
        return None
    if ago := AGO.fullmatch(text.strip()):
        return time.time_ns() - int(float(ago[1]) * AGO_S[ago[2]] * 1e9)
    try:
        moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError as exc:
        raise DataError(f"not an ISO 8601 time, nor one as long ago as 7d, 24h or 30m: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return int(moment.timestamp() * 1e9)


def _results_where(q: sa.Select, equal: dict[str, Any], after_seq: int | None, reviewed: bool | None) -> sa.Select:
    """`q` over the results, kept to those whose columns equal `equal`'s values (column name ->
    value; None: any), published after `after_seq`, and reviewed (True), awaiting a review (False:
    not reviewed, and not failed by the camera health gate) or either (None)."""
    for name, value in equal.items():
        if value is not None:
            column = results.c[name]
            if name == "camera_id" and equal.get("part_id") is not None:
                # Asked for a part, its few rows by their index: SQLite, without statistics, took
                # the camera's index and sorted every row of the camera (0.28 s at 2 million
                # results). An expression on the camera keeps it off that index, on any database.
                column = column + ""
            q = q.where(column == value)
    if after_seq is not None:
        q = q.where(results.c.seq > after_seq)
    if reviewed:  # from the reviews (few) to their results; an EXISTS would walk every result
        q = q.where(results.c.id.in_(sa.select(reviews.c.result_id)))
    elif reviewed is False:  # NOT IN would find none where a review's result_id is NULL (before v5)
        # A fail of the camera health gate (a frame too dark, blurred, moved, frozen) waits for
        # the camera to be seen to, not for a verdict on a part its frame does not show; a master
        # part's verdict is known (edge/master.py).
        q = q.where(results.c.unfit.is_(None), results.c.master.is_(None),
                    ~sa.exists().where(reviews.c.result_id == results.c.id))  # fmt: skip
    return q


def _integer_from(value: Any, least: int) -> bool:
    """Whether `value` is an integer (not a bool) of at least `least`: a row's id from a program."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_review(
    camera_id: Any,
    frame_id: Any,
    verdict: Any,
    kind: Any,
    by: Any,
    note: Any,
    result_id: Any,
    after_review_id: Any,
) -> None:
    """DataError for a review whose fields are of another type or too long (Record.review)."""
    if not is_id(camera_id) or not is_frame_id(frame_id):
        raise DataError(f"a review names a result: camera_id text, frame_id an integer 0..2^63-1; got "
                        f"{camera_id!r:.60}, {frame_id!r:.30}")  # fmt: skip
    if result_id is not None and not _integer_from(result_id, 1):
        raise DataError(f"a result_id is the record's id of a result, an integer from 1; got {result_id!r:.30}")
    if after_review_id is not None and not _integer_from(after_review_id, 0):
        raise DataError(f"an after_review_id is the id of the newest review seen, an integer from 0 (none "
                        f"seen); got {after_review_id!r:.30}")  # fmt: skip
    if verdict not in VERDICTS:
        raise DataError(f"a verdict is one of {', '.join(VERDICTS)}, got {verdict!r}")
    if kind and verdict != "defect":  # export_reviewed would file it as good, its kind lost
        raise DataError(f"a kind names a confirmed defect's kind; a {verdict} has none (a note says why)")
    limits = {"kind": reviews.c.kind.type.length, "by": reviews.c.reviewer.type.length, "note": NOTE_MAX_CHARS}
    for name, value in (("kind", kind), ("by", by), ("note", note)):
        if value is not None and (not isinstance(value, str) or len(value) > limits[name]):
            raise DataError(f"a review's {name} is text of at most {limits[name]} characters")


def _reviewable_result(
    conn: sa.Connection, camera_id: str, frame_id: int, verdict: str, result_id: int | None
) -> sa.Row[Any]:
    """The result a review of camera_id's frame_id judges (result_id's, else the newest), or
    DataError where there is none, or nothing of the line's own to judge (Record.review)."""
    q = sa.select(results.c.id, results.c.decision, results.c.master, results.c.part_id)
    q = q.where(results.c.camera_id == camera_id, results.c.frame_id == frame_id)
    if result_id is not None:
        q = q.where(results.c.id == result_id)
    found = conn.execute(q.order_by(results.c.id.desc()).limit(1)).first()
    if found is None:
        which = f" with result_id {result_id}" if result_id is not None else ""
        known = conn.execute(sa.select(results.c.id).where(results.c.camera_id == camera_id).limit(1)).first()
        unknown = "" if known else f" (the record holds no result of a camera {camera_id!r} at all)"
        raise DataError(f"no recorded result for camera {camera_id!r}, frame {frame_id}{which}{unknown}")
    if found.decision is None:  # an error or a dropped frame: the model judged nothing
        raise DataError(f"camera {camera_id!r}, frame {frame_id} has no decision (the frame was an error "
                        "or dropped): a review judges what the line decided")  # fmt: skip
    if found.master is not None:  # a red rabbit reviewed as good would be exported to train on as good
        raise DataError(f"camera {camera_id!r}, frame {frame_id} is master part {found.part_id}, whose "
                        f"verdict is known (it must {found.master}): a review judges the line's "
                        "products")  # fmt: skip
    if verdict == "false_reject" and found.decision != "fail":
        raise DataError(f"camera {camera_id!r}, frame {frame_id} was not rejected (decision "
                        f"{found.decision}): a false_reject is a good part the line rejected")  # fmt: skip
    return found


def _not_reviewed_since(conn: sa.Connection, camera_id: str, frame_id: int, result_id: int, seen: int) -> None:
    """ReviewedSinceError when result `result_id` has a review newer than review `seen`."""
    q = sa.select(reviews).where(reviews.c.result_id == result_id, reviews.c.id > seen).order_by(reviews.c.id)
    newer = [dict(r._mapping) for r in conn.execute(q)]
    if newer:
        said = "; ".join(map(review_words, newer))
        raise ReviewedSinceError(f"camera {camera_id!r}, frame {frame_id} was reviewed since you saw it: {said}; "
                                 "look again, and send yours once more to record it after that", newer)  # fmt: skip


def review_words(review: dict[str, Any]) -> str:
    """A review row in words: 'defect (scratch) by ann at 2026-12-07 10:02:11 UTC'."""
    kind = f" ({review['kind']})" if review["kind"] else ""
    when = dt.datetime.fromtimestamp(review["created_ns"] / 1e9, dt.timezone.utc)
    return f"{review['verdict']}{kind} by {review['reviewer'] or 'someone unnamed'} at {when:%Y-%m-%d %H:%M:%S} UTC"


def _reviews_of(conn: sa.Connection, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The reviews of the results of `ids`, by result id, oldest first."""
    found: dict[int, list[dict[str, Any]]] = {}
    # These results' reviews only (by their index): a camera's months of reviews would
    # otherwise be read for every page of rejects. In chunks: SQLite takes a bounded
    # number of parameters in one statement.
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        for r in conn.execute(sa.select(reviews).where(reviews.c.result_id.in_(chunk)).order_by(reviews.c.id)):
            found.setdefault(r.result_id, []).append(dict(r._mapping))
    return found


# SQLite's words for a file it cannot read as a database: a damaged page (SQLITE_CORRUPT) or a
# damaged header (SQLITE_NOTADB). Python 3.10's sqlite3 gives the message, not the code.
SQLITE_DAMAGED = ("database disk image is malformed", "file is not a database")
SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_damage(exc: BaseException | None) -> str | None:
    """SQLite's words when `exc`, or an error it was raised from, is its error for a damaged
    file; None for any other error."""
    seen = 0
    while exc is not None and seen < 8:  # DataError -> SQLAlchemy's DatabaseError -> sqlite3's
        if isinstance(exc, sqlite3.DatabaseError) and str(exc).startswith(SQLITE_DAMAGED):
            return str(exc)
        exc, seen = getattr(exc, "orig", None) or exc.__cause__, seen + 1
    return None


def set_aside(database: Path, evidence_dir: Path | None) -> tuple[Path, Path | None]:
    """Rename a damaged SQLite record, its WAL and shared-memory files, and its evidence folder
    to `NAME.damaged-<UTC time>` beside each, for a person to recover the rows (sqlite3's
    `.recover`) and read them with their images (`--evidence-dir`). -> (the record's new path,
    the evidence folder's, None when there was none). DataError for a file that does not begin
    as a SQLite database does: the record's URL names another file, not the daemon's to move."""
    with open(database, "rb") as f:
        if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise DataError(f"cannot open the record {database}: file is not a database (it does not begin as a "
                            "SQLite file does: does the record's URL name the right file?)")  # fmt: skip
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = database.with_name(f"{database.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{database}{suffix}"):
            os.replace(f"{database}{suffix}", f"{moved}{suffix}")
    moved_evidence = None
    if evidence_dir is not None and evidence_dir.is_dir():
        moved_evidence = evidence_dir.with_name(f"{evidence_dir.name}.damaged-{stamp}")
        os.replace(evidence_dir, moved_evidence)
    sync_folders({database.parent, *([evidence_dir.parent] if moved_evidence else [])})
    return moved, moved_evidence


def default_evidence_dir(engine: sa.Engine) -> Path:
    """Beside a SQLite file (DB.evidence/); ./evidence for a server database."""
    database = sqlite_file(engine)
    return Path(f"{database}.evidence") if database else Path("evidence")


class Record:
    def __init__(self, url: str, must_exist: bool = False, evidence_dir: str | Path = "", reading: bool = False):
        """must_exist: refuse a SQLite file that is not there (a query or a review of a
        mistyped path would otherwise create an empty record and answer "0 results").
        reading: this process only queries, or can do without reviews; a SQLite file it cannot
        write is read as it is (`read_only`).
        evidence_dir: the record's evidence folder on this machine ("" = beside a SQLite file,
        where the daemon writes it and its backup unit copies it; none for a server's record),
        where an evidence file is looked for when it is not where its row names it
        (evidence_file)."""
        if evidence_dir and not Path(evidence_dir).is_dir():  # a mistyped folder would hide every image
            raise DataError(f"no evidence folder {evidence_dir} (--evidence-dir)")
        self.url = url
        self.read_only = reading and unwritable_file(url) is not None
        self.engine = open_record(url, must_exist, self.read_only)
        self.evidence_dir = Path(evidence_dir) if evidence_dir else None
        if not evidence_dir and is_sqlite(url):
            self.evidence_dir = default_evidence_dir(self.engine)

    def evidence_file(self, named: str | None) -> str | None:
        """The evidence file a row names, on this machine: where the row says, or else the same
        camera/day/file under this record's evidence folder (a backup opened on another machine,
        a record moved to another disk: the rows keep the paths the daemon wrote). `named` when
        neither is a file (removed, or on another box's disk), None for None."""
        return located(named, self.evidence_dir)

    def close(self) -> None:
        self.engine.dispose()

    def results(
        self,
        camera: str | None = None,
        decision: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        frame_id: int | None = None,
        limit: int = 100,
        part_id: str | None = None,
        result_id: int | None = None,
        reviewed: bool | None = None,
        model_sha256: str | None = None,
        before: tuple[int, int] | None = None,
        run: str | None = None,
        after_seq: int | None = None,
        master: bool | None = None,
        mask_sha256: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest results matching every filter given, newest first, each with its reviews.
        `result_id`: the record's own id of a result (its row). `reviewed`: only results a
        person has (True) or has not (False) reviewed; with decision "fail" and a day's period,
        False gives the fails that daily counts as not reviewed. `before`: (ts_ns, id) of a
        result; only those after it in this order (the next page of an export, iter_results).
        `run`: one start of the daemon's results (their header's `run`). With `after_seq`, its
        results published after the one of that `seq`, the oldest first, in the order they were
        published: a subscriber's catch-up, whatever their capture times. `master`: only master
        parts' results (True: the line's proofs, edge/master.py) or only products' (False).
        `model_sha256`: only those judged by that model (its graphs' sha256, or its first digits).
        `mask_sha256`: only those judged through that inspection mask (its sha256, or its first
        digits); WHOLE_FRAME ("") those judged through none (a daily row's, whose `mask_sha256` is
        None). Raises ValueError for a sha256 that is none (check_sha_prefix)."""
        check_seq_cursor(run, after_seq)
        check_sha_prefix(model_sha256, "model")
        check_sha_prefix(mask_sha256, "mask")
        equal = {"camera_id": camera, "decision": decision, "frame_id": frame_id, "part_id": part_id, "id": result_id,
                 "daemon_run": run}  # fmt: skip
        q = _results_where(sa.select(results), equal, after_seq, reviewed)
        q = _kept_to(q, master, (model_sha256, mask_sha256), since_ns, until_ns, before)
        of_camera = camera is not None and decision is None and frame_id is None and part_id is None
        q = _ordered(q, limit, after_seq, of_camera and result_id is None)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
            found = _reviews_of(conn, [r["id"] for r in rows])
        return [self._result(row, found.get(row["id"], [])) for row in rows]

    def _result(self, row: dict[str, Any], reviews: list[dict[str, Any]]) -> dict[str, Any]:
        """A results row as results() gives it: its model as the stream names it, its evidence
        files on this machine (evidence_file), its reviews, and a master part's outcome."""
        # As the stream names it (edge.serving.model_identity): the mask only where one judged.
        row["model"] = {"name": row.pop("model_name"), "sha256": row.get("model_sha256")}
        if row.get("mask_sha256"):
            row["model"]["mask_sha256"] = row["mask_sha256"]
        if not row["evidence_removed"]:
            row["evidence_frame"] = self.evidence_file(row["evidence_frame"])
            row["evidence_overlay"] = self.evidence_file(row["evidence_overlay"])
        row["evidence"] = None if row["evidence_removed"] else row["evidence_frame"]
        row["reviews"] = reviews
        # A master part's check, as the stream and the heartbeat name it (edge.master.outcome).
        row["master_outcome"] = outcome(row["decision"], row["master"], row["unfit"]) if row["master"] else None
        return row

    def iter_results(self, limit: int, page: int = PAGE_ROWS, **filters: Any) -> Iterator[dict[str, Any]]:
        """results(**filters), the newest `limit` at most (with `after_seq`, the first), read `page`
        at a time: an export of a month holds one page in memory, not the month."""
        cursor: dict[str, Any] = {}
        by_seq = filters.get("after_seq") is not None
        while limit > 0:
            rows = self.results(**{**filters, **cursor}, limit=min(page, limit))
            yield from rows
            if len(rows) < min(page, limit):
                return
            limit -= len(rows)
            last = rows[-1]
            cursor = {"after_seq": last["seq"]} if by_seq else {"before": (last["ts_ns"], last["id"])}

    def removed(self) -> dict[str, int] | None:
        """What has left the record, or None if nothing has: `up_to_ns`, the newest capture time
        of a result removed (the days up to it are counted in part), and how many left
        `for_space` (the disk's floor) and `past_keep_days`. Reviewed results never leave."""
        with self.engine.connect() as conn:
            held = stored_removed(conn)
        if not held:
            return None
        return {"up_to_ns": held.get("removed_up_to_ns", 0), "for_space": held.get("removed_for_space", 0),
                "past_keep_days": held.get("removed_past_keep_days", 0)}  # fmt: skip

    def run_published(self, run: str) -> int | None:
        """How many results the daemon's run `run` published in all, from the `stop` row it wrote
        as it stopped; None while it serves, or when it ended without one (killed, or the power
        lost). A subscriber that never heard the run learns from it where the run's results end,
        and so whether the record lacks its last ones."""
        q = (
            sa.select(events.c.detail)
            .where(events.c.kind == "stop", events.c.detail["run"].as_string() == run)
            .order_by(events.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            detail = conn.execute(q).scalar_one_or_none()
        published = (detail or {}).get("published")
        return int(published) if published is not None else None

    def events(
        self,
        limit: int = 100,
        since_ns: int | None = None,
        until_ns: int | None = None,
        kinds_left_out: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The latest changes made to the running daemon (in the period given), newest first,
        but those of `kinds_left_out`."""
        q = _within(sa.select(events), events.c.ts_ns, since_ns, until_ns)
        if kinds_left_out:
            q = q.where(events.c.kind.not_in(kinds_left_out))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(events.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    def daily(
        self,
        camera: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        days: ProductionDays = UTC_DAYS,
    ) -> list[dict[str, Any]]:
        """What the line decided, per day (`days`: UTC calendar days unless given), camera and
        model as the stream names it (its sha256 and the inspection mask that judged): results,
        passes, fails, errors, drops, the products' fail rate (master parts left out), and what
        people found in the model's fails of products they reviewed (the latest review of a
        result decides): false rejects, confirmed defects, and those not reviewed; the fails the
        camera health gate made (unfit frames), reviewed or not; and the passes reviewed as
        defects (missed). Oldest first."""
        window = (camera, since_ns, until_ns, days)
        return daily_rows(self.daily_decisions(*window), self.daily_verdicts(*window))

    def daily_decisions(
        self,
        camera: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        days: ProductionDays = UTC_DAYS,
    ) -> dict[DayKey, dict[str, int]]:
        """daily's counts of what the line decided, by (day, camera, model, mask): one pass over the
        results in the period, without the reviews, counted by quarter hour in SQL and added up
        into `days` here (no SQL dialect knows the line's time zone)."""
        r = results.c
        # The very key objects in the select and the grouping: PostgreSQL groups by the same
        # expression only with the same bound parameter.
        key = ((r.ts_ns // QUARTER_NS).label("quarter"), r.camera_id, r.model_sha256, r.mask_sha256)
        fail = r.decision == "fail"
        counted = {
            "results": sa.func.count(),
            "pass": _count(r.decision == "pass"),
            "fail": _count(fail),
            "error": _count(r.status == "error"),
            "dropped": _count(r.status == "dropped"),
            "unfit": _count(fail, r.unfit.is_not(None)),
            "master": _count(r.master.is_not(None)),
            MASTER_FAILS: _count(fail, r.master.is_not(None), r.unfit.is_(None)),  # not among the unfit
            MASTER_DECIDED: _count(r.master.is_not(None), r.decision.is_not(None)),
            MASTER_FAILED: _count(fail, r.master.is_not(None)),
            # A master part's check (edge.master.outcome, in SQL): wrong, the model's other decision
            # on a fit frame; unproven, a frame it did not judge (an error, or the camera health
            # gate's fail, which proves nothing).
            "master_wrong": _count(r.master.is_not(None), r.unfit.is_(None), r.decision != r.master),
            "master_unproven": _count(r.master.is_not(None), sa.or_(r.decision.is_(None), r.unfit.is_not(None))),
        }
        q = sa.select(*key, *counted.values()).group_by(*key)
        if camera is not None:
            q = q.where(r.camera_id == camera)
        with self.engine.connect() as conn:
            rows = conn.execute(_within(q, r.ts_ns, since_ns, until_ns)).all()
        tally: dict[DayKey, dict[str, int]] = {}
        # In time order: a day's models are keyed in the order they served (daily_rows keeps it).
        for quarter, cam, model, mask, *counts in sorted(rows, key=lambda row: row[0]):
            day_key = (days.day_of_quarter(int(quarter)), cam, model, mask)
            day_counts = tally.setdefault(day_key, dict.fromkeys(counted, 0))
            for name, n in zip(counted, counts, strict=True):
                day_counts[name] += int(n or 0)
        return tally

    def daily_verdicts(
        self,
        camera: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        days: ProductionDays = UTC_DAYS,
    ) -> dict[DayKey, dict[str, int]]:
        """daily's reviewed results, by (day, camera, model, mask): the verdict (false_reject, defect) of
        each of the model's own fails of a product (the camera health gate's fails and master
        parts' are counted apart, reviewed or not), and the products' passes reviewed as defects
        ("missed": what the line let through, found downstream). The latest review of each
        reviewed result (a person's few a day), then those results in the period, looked up by
        their ids. Two steps, not one join: SQLite's planner may walk every result to meet the
        reviews, which took minutes at 2 million rows and 20,000 reviews."""
        r = results.c
        reviewed = reviews.c.result_id
        latest = sa.select(sa.func.max(reviews.c.id)).where(reviewed.is_not(None)).group_by(reviewed)
        q = sa.select(reviewed, reviews.c.verdict).where(reviews.c.id.in_(latest))
        if camera is not None:
            q = q.where(reviews.c.camera_id == camera)
        tally: dict[DayKey, dict[str, int]] = {}
        with self.engine.connect() as conn:
            verdicts = {row.result_id: row.verdict for row in conn.execute(q)}
            ids = sorted(verdicts)
            for start in range(0, len(ids), LOOKUP_CHUNK):
                rq = sa.select(r.id, r.ts_ns, r.camera_id, r.model_sha256, r.mask_sha256, r.decision, r.unfit,
                               r.master)  # fmt: skip
                # The period is applied here, not in SQL: given a time range, SQLite walks the rows
                # by time instead of looking the results up.
                rq = rq.where(r.id.in_(ids[start : start + LOOKUP_CHUNK]))
                for result_id, ts_ns, camera_id, model, mask, decision, unfit, master in conn.execute(rq):
                    if (since_ns is None or ts_ns >= since_ns) and (until_ns is None or ts_ns <= until_ns):
                        day = days.day_of_quarter(ts_ns // QUARTER_NS)
                        key = (day, camera_id, model, mask)
                        counts = tally.setdefault(key, dict.fromkeys((*VERDICTS, MISSED), 0))
                        if decision == "fail":
                            if unfit is None and master is None:  # the model's own fail, of a product
                                counts[verdicts[result_id]] += 1
                        elif verdicts[result_id] == "defect" and master is None:
                            # A product's pass found defective (review refuses a pass's false_reject);
                            # a master part's wrong pass is the tally's master_wrong, not a miss.
                            counts[MISSED] += 1
        return tally

    def review(
        self,
        camera_id: str,
        frame_id: int,
        verdict: str,
        kind: str | None = None,
        by: str | None = None,
        note: str | None = None,
        result_id: int | None = None,
        after_review_id: int | None = None,
    ) -> dict[str, Any]:
        """Record a person's verdict on a recorded result, as a row of its own: the result
        `result_id` (the record's id of it), which must be of this camera and frame, or else the
        newest result of the camera and frame (a sender that started its ids again has older
        ones). DataError for an id or verdict of another type, a result the record does not
        hold, a result without a decision (an error or a dropped frame: nothing was judged), a
        master part's (its verdict is known, edge/master.py), or a
        false_reject of a result the line did not reject (a pass reviewed as a `defect` is a defect
        the line missed). `after_review_id`: the id of the result's newest review the reviewer
        saw (0: none); ReviewedSinceError when another was recorded since (two people on one
        queue: the second is shown the first's verdict, not overwriting it unseen). None: no
        such check. -> the review's row, its `id` included."""
        _check_review(camera_id, frame_id, verdict, kind, by, note, result_id, after_review_id)
        with self.engine.begin() as conn:
            found = _reviewable_result(conn, camera_id, frame_id, verdict, result_id)
            if after_review_id is not None:
                _not_reviewed_since(conn, camera_id, frame_id, found.id, after_review_id)
            row = {"camera_id": camera_id, "frame_id": frame_id, "verdict": verdict, "kind": kind,
                   "reviewer": by, "note": note, "created_ns": time.time_ns(), "result_id": found.id}  # fmt: skip
            row["id"] = conn.execute(sa.insert(reviews).values(**row)).inserted_primary_key[0]
        return row

    def export_reviewed(
        self,
        out: str | Path,
        camera: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        elsewhere: Callable[[dict[str, Any]], bytes | None] | None = None,
    ) -> dict[str, int]:
        """The reviewed evidence in the MVTec layout: false rejects into OUT/train/good (new
        good images), confirmed defects into OUT/test/<kind> (kind "defect" when none was given).
        The latest review of a result decides. -> how many images went where. A reviewed result
        without its evidence (not kept, removed by the quota, or its file not on this machine),
        whose frame the camera health gate failed, or a master part's (reviewed before vqad
        refused such reviews), is left out, and a warning counts those.
        `camera`, `since_ns`, `until_ns`: one camera's results, captured in that time (a record
        keeps the lines of several products, and each model is trained and calibrated on its own
        product's images). `elsewhere(row)`: the frame's bytes when its file is not on this
        machine's disk (another box's, on a record that boxes share), else None; `row` has the
        result's id, camera_id, frame_id and daemon_run."""
        out = Path(out)
        found, left_out = self._latest_reviews(camera, since_ns, until_ns)
        # A camera and frame id reviewed in two results (a sender that started its ids again):
        # their files are told apart by the record's id of each.
        pairs = Counter((r.camera_id, r.frame_id) for _, r, _ in found)
        counts: Counter[str] = Counter()
        for result_id, r, row in progress(found, "exporting reviewed images", total=len(found)):
            if row is not None and row.unfit is not None:
                # A dark, blurred or frozen frame shows no part: a good image to train on as good,
                # or a defect to test on, it is neither, whatever the review said of the part.
                # Said before its file is looked for, or asked of a peer.
                left_out["whose frame the camera health gate found unfit (no picture of the part)"] += 1
                continue
            if row is not None and row.master is not None:  # a red rabbit is no good image, whatever its review
                left_out["of a master part (its verdict is known)"] += 1
                continue
            frame, content, why = self._frame_to_export(row, elsewhere)
            if why:
                left_out[why] += 1
                continue
            folder = out / "train" / "good" if r.verdict == "false_reject" else out / "test" / _defect_folder(r.kind)
            name = f"{file_name(r.camera_id)}_{r.frame_id}"
            name += f"_{result_id}" if pairs[(r.camera_id, r.frame_id)] > 1 else ""
            _write_evidence(Path(str(frame)), folder, name, content)
            counts[str(folder.relative_to(out))] += 1
        _warn_left_out(left_out, "reviewed result")
        return dict(counts)

    def export_sample(
        self,
        out: str | Path,
        limit: int,
        camera: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        elsewhere: Callable[[dict[str, Any]], bytes | None] | None = None,
    ) -> list[SampleDrawn]:
        """The line's frames for `vqad calibrate` to set a threshold on, per camera: `limit` of
        the passes whose frames the record kept (`edge.record_pass_fraction` of them), and its
        rejects in the share the line rejected in the period, each spread evenly over it, into
        OUT/<camera>/<camera>_<frame id>_<pass|fail>.<suffix>. Passes alone lack every good part
        that scored over the threshold in force (it was rejected): a threshold set on them comes
        out under that one, and lower again at each recalibration. A result reviewed as a defect
        is left out, as are master parts and the camera health gate's unfit frames; the rest are
        the model's decisions, for a person to look through. `camera`,
        `since_ns`, `until_ns` and `elsewhere` as in `export_reviewed`."""
        r = results.c
        in_period = _within(sa.select(r.id), r.ts_ns, since_ns, until_ns)
        with self.engine.connect() as conn:  # read first: files copied or fetched hold no snapshot
            passed = _within(sa.select(r.camera_id).distinct().where(r.decision == "pass"), r.ts_ns, since_ns, until_ns)
            cameras = [camera] if camera is not None else conn.execute(passed).scalars().all()
            # The line's parts alone: not a master part (a red rabbit that passed wrongly would be
            # a defect among the good), nor a frame the camera health gate failed (no part seen).
            parts = in_period.where(r.master.is_(None), r.unfit.is_(None))
            drawn = [self._draw_sample(conn, parts.where(r.camera_id == c), c, limit) for c in sorted(cameras)]
        left_out: Counter[str] = Counter()
        for sample in drawn:
            self._write_sample(sample, Path(out), elsewhere, left_out)
        _warn_left_out(left_out, "sampled result")
        return [sample for sample in drawn if sample.passes_in_period]

    def _draw_sample(self, conn: sa.Connection, in_period: sa.Select, camera: str, limit: int) -> SampleDrawn:
        """One camera's sample (export_sample), drawn; its rows, not yet written."""
        r = results.c
        kept = (r.evidence_frame.is_not(None), r.evidence_removed.is_(False))
        passes, kept_passes = _evenly_spaced(conn, in_period.where(r.decision == "pass", *kept).order_by(r.id), limit)
        decided = dict(conn.execute(sa.select(r.decision, sa.func.count()).where(r.id.in_(in_period))
                                    .group_by(r.decision)).all())  # fmt: skip
        n_pass, n_fail = decided.get("pass", 0), decided.get("fail", 0)
        rejects_wanted = round(len(passes) * n_fail / n_pass) if n_pass else 0
        rejects, _ = _evenly_spaced(conn, in_period.where(r.decision == "fail", *kept).order_by(r.id), rejects_wanted)
        columns = (r.id, r.camera_id, r.frame_id, r.daemon_run, r.evidence_frame, r.evidence_removed, r.decision)
        rows = [row for part in batched(passes + rejects, LOOKUP_CHUNK)
                for row in conn.execute(sa.select(*columns).where(r.id.in_(part)).order_by(r.id))]  # fmt: skip
        reviewed = _reviews_of(conn, [row.id for row in rows])  # oldest first: the last one decides
        defects = {result_id for result_id, said in reviewed.items() if said[-1]["verdict"] == "defect"}
        sample = SampleDrawn(camera, n_pass, n_fail, kept_passes, rejects_wanted, len(rejects))
        sample.rows = [row for row in rows if row.id not in defects]
        sample.defects_left_out = len(rows) - len(sample.rows)
        return sample

    def _write_sample(
        self,
        sample: SampleDrawn,
        out: Path,
        elsewhere: Callable[[dict[str, Any]], bytes | None] | None,
        left_out: Counter[str],
    ) -> None:
        """A drawn sample's frames into OUT/<camera>/, counted by decision in `sample`."""
        sample.folder = out / file_name(sample.camera)
        pairs = Counter(row.frame_id for row in sample.rows)
        for row in progress(sample.rows, f"exporting {sample.camera}'s sample", total=len(sample.rows)):
            frame, content, why = self._frame_to_export(row, elsewhere)
            if why:
                left_out[why] += 1
                continue
            name = f"{file_name(sample.camera)}_{row.frame_id}" + (f"_{row.id}" if pairs[row.frame_id] > 1 else "")
            _write_evidence(Path(str(frame)), sample.folder, f"{name}_{row.decision}", content)
            sample.written[row.decision] += 1

    def _frame_to_export(
        self, row: Any, elsewhere: Callable[[dict[str, Any]], bytes | None] | None
    ) -> tuple[str | None, bytes | None, str]:
        """A result's evidence frame for an export (`row`: its evidence columns, or None) ->
        (its file on this machine, the bytes a peer gave for it when the file is another box's,
        and why there is none: "" when there is one)."""
        frame = self.evidence_file(row.evidence_frame) if row is not None else None
        why, content = _no_evidence(row, frame), None
        if why == NOT_ON_THIS_DISK and elsewhere:  # another box's, asked of its dashboard
            content = elsewhere(dict(row._mapping))
            why = "" if content is not None else NOR_ON_PEERS
        return frame, content, why

    def _latest_reviews(
        self, camera: str | None, since_ns: int | None, until_ns: int | None
    ) -> tuple[list[tuple[int, Any, Any]], Counter[str]]:
        """The latest review of each reviewed result (of `camera`, captured in the period), by
        camera and frame id -> ([(result id, review row, the result's evidence row)], the reviews
        left out and why: those of a result no longer in the record)."""
        reviewed = sa.select(reviews).order_by(reviews.c.id)
        if camera is not None:
            reviewed = reviewed.where(reviews.c.camera_id == camera)
        if since_ns is not None or until_ns is not None:  # the reviews of results captured then
            reviewed = _within(reviewed.join(results, results.c.id == reviews.c.result_id), results.c.ts_ns,
                               since_ns, until_ns)  # fmt: skip
        left_out: Counter[str] = Counter()
        columns = (results.c.id, results.c.camera_id, results.c.frame_id, results.c.daemon_run, results.c.decision,
                   results.c.evidence_frame, results.c.evidence_removed, results.c.unfit, results.c.master)  # fmt: skip
        with self.engine.connect() as conn:  # read first: files copied or fetched hold no snapshot
            latest: dict[int, Any] = {}
            for r in conn.execute(reviewed):
                if r.result_id is None:  # reviewed before v5, of a result no longer in the record
                    left_out[_no_evidence(None, None)] += 1
                    continue
                latest[r.result_id] = r
            in_order = sorted(latest.items(), key=lambda item: (item[1].camera_id, item[1].frame_id, item[0]))
            found = [(result_id, r, conn.execute(sa.select(*columns).where(results.c.id == result_id)).first())
                     for result_id, r in in_order]  # fmt: skip
        return found, left_out


@dataclasses.dataclass
class SampleDrawn:
    """One camera's sample of the line's frames (Record.export_sample): the period's passes and
    rejects, the passes whose frames the record kept, the rejects wanted to match the line's
    share and those drawn; then the rows drawn, those left out as reviewed defects, where they
    went and how many of each decision were written."""

    camera: str
    passes_in_period: int
    rejects_in_period: int
    passes_kept: int
    rejects_wanted: int
    rejects_drawn: int  # fewer than wanted where the evidence quota has removed rejects' frames
    rows: list[Any] = dataclasses.field(default_factory=list)
    defects_left_out: int = 0
    folder: Path | None = None
    written: Counter[str] = dataclasses.field(default_factory=Counter)


def _write_evidence(source: Path, folder: Path, name: str, content: bytes | None) -> None:
    """The evidence frame `source` into `folder` as `name` (its suffix kept): copied from this
    disk, or `content`, the bytes a peer gave for it."""
    folder.mkdir(parents=True, exist_ok=True)
    if content is None:
        shutil.copyfile(source, folder / f"{name}{source.suffix}")
    else:
        (folder / f"{name}{source.suffix}").write_bytes(content)


def _warn_left_out(left_out: Counter[str], what: str) -> None:
    """One warning: how many `what`s an export left out, and why."""
    if left_out:
        n = sum(left_out.values())
        reasons = ", ".join(f"{k} {why}" for why, k in sorted(left_out.items()))
        log.warning("%d %s%s left out: %s", n, what, "" if n == 1 else "s", reasons)


def _evenly_spaced(conn: sa.Connection, ids: sa.Select, k: int) -> tuple[list[int], int]:
    """`k` of the ids the query `ids` selects, in its order, at evenly spaced places (spread_evenly)
    -> (them, how many it selects). The places are counted first, then the ids streamed past
    them: months of a line's passes are millions of ids, which a list would hold all at once."""
    n = conn.execute(sa.select(sa.func.count()).select_from(ids.subquery())).scalar_one()
    places = set(spread_evenly(range(n), k))
    streamed = conn.execution_options(yield_per=10_000).execute(ids)
    try:  # rows written since the count come after it, and are not taken: zip stops at n
        return [id_ for place, id_ in zip(range(n), streamed.scalars(), strict=False) if place in places], n
    finally:
        streamed.close()


def spread_evenly(items: Sequence[Any], k: int) -> list[Any]:
    """`k` of `items` at evenly spaced places, the first and the last among them; all of them
    when there are no more than `k`; the last alone when `k` is 1."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[-1]]
    step = (len(items) - 1) / (k - 1)  # over 1: no place is taken twice
    return [items[round(i * step)] for i in range(k)]


def _defect_folder(kind: str | None) -> str:
    """A confirmed defect's folder under test/: its kind as a file name ("defect" without one, and
    for a kind named "good", which is the good images' folder in the MVTec layout)."""
    folder = file_name(kind) if kind else "defect"
    return "defect" if folder == "good" else folder


# Record.results' mask_sha256 for the results judged through no inspection mask (the column's NULL).
WHOLE_FRAME = ""


def model_mark(row: dict[str, Any], digits: int = 12, none: str = "-") -> str:
    """A results or daily row's model as the tables and pictures name it: its sha256's first
    `digits` (`none` without one), then "+mask" where an inspection mask judged."""
    return (row["model_sha256"] or none)[:digits] + ("+mask" if row.get("mask_sha256") else "")


# daily_decisions' count of the master parts' fails the gate did not make: not a column of the tally.
MASTER_FAILS = "master_fails"
# daily_decisions' counts of the master parts decided, and of those failed (the gate's fails too):
# left out of the day's fail rate, which is the products' (not columns either).
MASTER_DECIDED, MASTER_FAILED = "master_decided", "master_failed"

# (day, camera_id, model_sha256, mask_sha256): what Record.daily counts by. The model as the
# stream names it (edge.serving.model_identity): a mask set midday parts the day's fail rate.
DayKey = tuple[dt.date, str, str | None, str | None]


def _count(*conditions: Any) -> Any:
    """SQL: how many rows of the group meet every condition."""
    return sa.func.sum(sa.case((sa.and_(*conditions), 1), else_=0))


def daily_rows(decided: dict[DayKey, dict[str, int]], verdicts: dict[DayKey, dict[str, int]]) -> list[dict[str, Any]]:
    """Record.daily's rows, oldest first, from its two tallies (Record.daily_decisions and
    Record.daily_verdicts over the same period); a day and camera's models in the order
    `decided` first saw them, which Record.daily_decisions makes the order they served in."""
    rows = []
    for key in sorted(decided, key=lambda k: (k[0], k[1])):  # stable: the models' order kept
        day, camera, model, mask = key
        counts, found = decided[key], verdicts.get(key, {})
        # The model's own fails of products, by their verdicts; the rest wait for one. The camera
        # health gate's fails wait for the camera, and a master part's verdict is known.
        reviewed = {v: found.get(v, 0) for v in VERDICTS}
        unreviewed = counts["fail"] - counts["unfit"] - counts[MASTER_FAILS] - sum(reviewed.values())
        # The products' fail rate: a shift's master parts, red rabbits failed as they must, are not
        # the line's rejects (the fail-rate alarm and the page's live rates leave them out too).
        decided_n = counts["pass"] + counts["fail"] - counts[MASTER_DECIDED]
        failed_n = counts["fail"] - counts[MASTER_FAILED]
        rows.append({
            "day": day.isoformat(),
            "camera_id": camera,
            "model_sha256": model,
            "mask_sha256": mask,  # the inspection mask that judged them; None for the whole frame
            **{k: counts[k] for k in ("results", "pass", "fail", "error", "dropped")},
            **reviewed,
            "unreviewed": unreviewed,
            "unfit": counts["unfit"],
            "master": counts["master"],  # master parts run through, right or not
            "master_wrong": counts["master_wrong"],  # of them, those the model decided otherwise
            "master_unproven": counts["master_unproven"],  # and those whose frame it did not judge
            MISSED: found.get(MISSED, 0),
            "fail_rate": round(failed_n / decided_n, 6) if decided_n else None,
            # Its denominator and numerator: the products' decisions and fails (master parts left out).
            "products_decided": decided_n,
            "products_failed": failed_n,
            # The fails parted by what they were, adding up to `fail`: a fail of the camera health
            # gate or of a master part counted there alone, reviewed or not; the model's own fails
            # of products by their verdicts, and those not reviewed yet.
            "fails": {**reviewed, "unreviewed": unreviewed, "unfit": counts["unfit"],
                      "master": counts[MASTER_FAILS]},
        })  # fmt: skip
    return rows


# The record's rows among the changes that are not changes made to the daemon: each master part's
# check (edge/master.py). A plant's shifts make hundreds a day, and the newest 100 changes would
# hold nothing else; the daily tally counts them (`master`, `master_wrong`, `master_unproven`), and `vqad records
# --master-parts` lists them.
NOT_CHANGES = ("master-part",)

# The order results() answers in; its queries and their parts sort by the same columns.
NEWEST_FIRST = (results.c.ts_ns.desc(), results.c.id.desc())


def _kept_to(
    q: sa.Select,
    master: bool | None,
    judged_by: tuple[str | None, str | None],
    since_ns: int | None,
    until_ns: int | None,
    before: tuple[int, int] | None,
) -> sa.Select:
    """`q` (Record.results') kept to master parts' results or products' (`master`; None: both),
    to those one model judged and those judged through one inspection mask or through none
    (`judged_by`: model_sha256, mask_sha256, each its sha256 or first digits; WHOLE_FRAME for no
    mask; None: any), to the period, and to those after `before` (ts_ns, id) newest first."""
    if master is not None:
        q = q.where(results.c.master.is_not(None) if master else results.c.master.is_(None))
    model_sha256, mask_sha256 = judged_by
    if model_sha256 is not None:
        q = q.where(_sha_is(results.c.model_sha256, model_sha256))
    if mask_sha256 is not None:
        q = q.where(_sha_is(results.c.mask_sha256, mask_sha256) if mask_sha256 else results.c.mask_sha256.is_(None))
    q = _within(q, results.c.ts_ns, since_ns, until_ns)
    if before is not None:  # the range on ts_ns first, which the time indexes serve
        ts, row_id = before
        q = q.where(results.c.ts_ns <= ts, sa.or_(results.c.ts_ns < ts, results.c.id < row_id))
    return q


def _ordered(q: sa.Select, limit: int, after_seq: int | None, a_cameras_newest: bool) -> sa.Select:
    """`q` in Record.results' order, `limit` rows: with `after_seq`, by seq (a subscriber's
    catch-up); a camera's newest of any decision by its index (_newest_of_camera); else newest
    first."""
    if after_seq is not None:
        return q.order_by(results.c.seq).limit(limit)
    return _newest_of_camera(q, limit) if a_cameras_newest else q.order_by(*NEWEST_FIRST).limit(limit)


def _newest_of_camera(q: sa.Select, limit: int) -> sa.Select:
    """`q` (a camera's results, any decision) as the newest `limit` of each decision (pass, fail,
    none: errors and drops), merged: each part walks ix_results_camera_decision_ts in time order
    and stops at `limit` rows. Asked whole, SQLite sorted every row of the camera (2.3 s at 2
    million results, for the newest 100)."""
    decisions = (results.c.decision == "pass", results.c.decision == "fail", results.c.decision.is_(None))
    parts = [q.where(d).order_by(*NEWEST_FIRST).limit(limit).subquery() for d in decisions]
    merged = sa.union_all(*(sa.select(part) for part in parts)).subquery()
    return sa.select(merged).order_by(merged.c.ts_ns.desc(), merged.c.id.desc()).limit(limit)


def _within(q: sa.Select, column: Any, since_ns: int | None, until_ns: int | None) -> sa.Select:
    """`q` limited to rows whose `column` (a time in ns) lies in [since_ns, until_ns], either open."""
    if since_ns is not None:
        q = q.where(column >= since_ns)
    if until_ns is not None:
        q = q.where(column <= until_ns)
    return q


def _no_evidence(row: Any, frame: str | None) -> str:
    """Why a result has no evidence to export ("" when it has); `frame`, its evidence frame on
    this machine (Record.evidence_file)."""
    if row is None:
        return "without a recorded result"
    if row.evidence_frame is None and getattr(row, "decision", None) == "fail":  # every fail's is kept, if it can be
        return "without evidence (its images were not written: a full disk, or the daemon ended first)"
    if row.evidence_frame is None:
        return "without evidence (none was kept: passes keep it only for edge.record_pass_fraction)"
    if row.evidence_removed:
        return "whose evidence the disk quota removed (edge.record_max_gb)"
    if not Path(str(frame)).is_file():
        return NOT_ON_THIS_DISK
    return ""


# A reviewed result whose evidence file this machine does not have: removed by hand, copied
# elsewhere with its record, or on another box's disk (a record that boxes share keeps each
# box's evidence on that box).
NOT_ON_THIS_DISK = (
    "whose evidence file is not on this machine's disk (a copy of the evidence folder: --evidence-dir; on a "
    "record that boxes share, another box's: --peers)"
)
NOR_ON_PEERS = "whose evidence file is on neither this machine's disk nor a peer's"
