"""The record's tables (SQLAlchemy 2 Core) and their versioned migration.

Version 1: `results` (one row per published result), `reviews` (one row per review; a
decision is never overwritten), `meta` (the schema version). Version 2 adds `events`: changes
made to the running daemon (a new threshold, a model reload, a paused camera), by whom and when.
Version 3 adds `results.part_id`: the part's own identity, when its frame carried one.
Version 4 adds `results.unfit`: why the camera health gate failed a frame (its reasons, e.g.
"blurred,exposure"), so that an audit tells a camera's fault from a part's.
Version 5 adds `reviews.result_id`: the result a review is of. A sender that starts its frame
ids again gives two results the same camera and frame id; each earlier review is given the
newest result of its camera and frame published before it.
Version 6 adds `results.seq`: the result's place in its daemon run's stream (the header's
`seq`), so that a subscriber catches up on what it missed in the order it was published.
Version 7 adds `results.master`: a master part's expected decision (edge/master.py), so that
the review queue and the daily tally leave out the parts run to prove the inspection.
Version 8 adds `results.mask_sha256`: the inspection mask the result was judged through
(edge/inspection.py; NULL for the whole frame), so that a row says all that decided it: model,
threshold and mask.
Version 9 adds `results.recovered_ns`: when a start put the row back from its daemon run's
journal (edge.record.journal; NULL for a row its own run committed), so that an audit tells a
row whose images were lost with a killed process from one whose images were never kept.
`meta` also keeps what has left the record (`REMOVED`): how many results, why, and the newest
capture time among them, so that a tally of the days before it is known to be in part; and the
record's own identity (`RECORD_ID`), which a daemon's state file names.
`migrate(engine)` creates a new database or brings an older one to SCHEMA_VERSION, one step at
a time; it creates any index the record lacks. A newer one it uses as it is when the newer
vqad's steps only added to it (meta's `oldest_writer`), and refuses otherwise.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from edge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 9
# The oldest schema version whose vqad may write a record of this one, kept in meta as
# `oldest_writer`. A plant's server record is shared by a box per line, upgraded one at a time:
# the first box upgraded migrates it under the others, which refused a newer schema at their
# next start, and their lines stopped. A step that only adds (a table, a nullable column, an
# index) leaves it: an older vqad writes and reads what it knows. A step that changes what a row
# means raises it to its own version: 5, since a review must name its result (result_id), which
# a vqad before 5 did not write.
OLDEST_WRITER = 5

metadata = sa.MetaData()

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("frame_id", sa.BigInteger, nullable=False),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
    sa.Column("received_ns", sa.BigInteger),
    sa.Column("published_ns", sa.BigInteger),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("decision", sa.String(8)),
    sa.Column("regions", sa.JSON),
    sa.Column("model_name", sa.String(128)),
    sa.Column("model_sha256", sa.String(64)),
    sa.Column("latency_ms", sa.JSON),
    sa.Column("batch_size", sa.Integer),
    sa.Column("evidence_frame", sa.Text),
    sa.Column("evidence_overlay", sa.Text),
    sa.Column("evidence_removed", sa.Boolean, nullable=False, default=False),
    sa.Column("daemon_run", sa.String(32)),  # which start of the daemon recorded the row
    sa.Column("part_id", sa.String(128)),  # the part's identity (a serial), when its frame gave one
    sa.Column("unfit", sa.String(128)),  # the camera health gate's reasons when it failed the frame
    sa.Column("seq", sa.BigInteger),  # its place in the daemon run's published stream, from 0
    sa.Column("master", sa.String(8)),  # a master part's expected decision (pass, fail); NULL for a product
    sa.Column("mask_sha256", sa.String(64)),  # the inspection mask that judged it; NULL for the whole frame
    sa.Column("recovered_ns", sa.BigInteger),  # when it was put back from its run's journal; NULL if committed by it
    sa.Index("ix_results_camera_frame", "camera_id", "frame_id"),
    sa.Index("ix_results_ts", "ts_ns"),
    # A camera's newest fails (the dashboard's gallery of a camera's rejects, asked up to twice a
    # second) without sorting all its results: 0.45 s at 2 million rows before. Not (camera, time):
    # SQLite's planner, without statistics, then walked a camera's rows by time to find one frame.
    sa.Index("ix_results_camera_decision_ts", "camera_id", "decision", "ts_ns"),
    sa.Index("ix_results_part", "part_id"),
    sa.Index("ix_results_run_seq", "daemon_run", "seq"),  # a subscriber's catch-up (Record.results)
    # The master parts' results, a handful a shift among millions (vqad records --master-parts).
    sa.Index("ix_results_master_ts", "master", "ts_ns"),
)

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("frame_id", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),  # false_reject | defect
    sa.Column("kind", sa.String(64)),
    sa.Column("reviewer", sa.String(128)),
    sa.Column("note", sa.Text),
    sa.Column("created_ns", sa.BigInteger, nullable=False),
    sa.Column("result_id", sa.Integer),  # results.id; None only for a review whose result had left before v5
    sa.Index("ix_reviews_camera_frame", "camera_id", "frame_id"),
    sa.Index("ix_reviews_result", "result_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
    # set-threshold | reload | pause | resume | threshold-dropped | start | stop (the daemon's own)
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", sa.JSON),
    sa.Column("by", sa.String(128)),
)

meta = sa.Table("meta", metadata, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text))


def _add_events(conn: sa.Connection) -> None:
    events.create(conn)


def _add_part_id(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN part_id VARCHAR(128)"))
    next(i for i in results.indexes if i.name == "ix_results_part").create(conn)


def _add_unfit(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN unfit VARCHAR(128)"))


def _add_review_result(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE reviews ADD COLUMN result_id INTEGER"))
    same_frame = (results.c.camera_id == reviews.c.camera_id, results.c.frame_id == reviews.c.frame_id)
    published = sa.func.coalesce(results.c.published_ns, results.c.ts_ns)
    before = sa.select(sa.func.max(results.c.id)).where(*same_frame, published <= reviews.c.created_ns)
    newest = sa.select(sa.func.max(results.c.id)).where(*same_frame)
    conn.execute(
        sa.update(reviews).values(result_id=sa.func.coalesce(before.scalar_subquery(), newest.scalar_subquery()))
    )


def _add_seq(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN seq BIGINT"))
    next(i for i in results.indexes if i.name == "ix_results_run_seq").create(conn)


def _add_master(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN master VARCHAR(8)"))
    next(i for i in results.indexes if i.name == "ix_results_master_ts").create(conn)


def _add_mask_sha256(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN mask_sha256 VARCHAR(64)"))


def _add_recovered_ns(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN recovered_ns BIGINT"))


# version n -> what brings version n to n + 1.
STEPS: dict[int, Callable[[sa.Connection], None]] = {
    1: _add_events, 2: _add_part_id, 3: _add_unfit, 4: _add_review_result, 5: _add_seq, 6: _add_master,
    7: _add_mask_sha256, 8: _add_recovered_ns,
}  # fmt: skip


# meta's keys for what left the record: the newest capture time (ns) of a result removed, and
# how many left to keep the disk's floor and past record_keep_days.
REMOVED = ("removed_up_to_ns", "removed_for_space", "removed_past_keep_days")


def newest_result_ns(conn: sa.Connection) -> int | None:
    """The latest `ts_ns` among the results (by ix_results_ts), None for an empty record: a time
    the machine that reads it has passed (edge.clock)."""
    return conn.execute(sa.select(sa.func.max(results.c.ts_ns))).scalar_one()


def stored_removed(conn: sa.Connection) -> dict[str, int]:
    """meta's counts of what left the record, by key (REMOVED); empty if nothing has."""
    return {row.key: int(row.value) for row in conn.execute(sa.select(meta).where(meta.c.key.in_(REMOVED)))}


def add_removed(conn: sa.Connection, why: str, count: int, up_to_ns: int) -> None:
    """Count `count` results removed (`why`: "for_space" or "past_keep_days"), the newest captured
    at `up_to_ns`, in `meta`, in the transaction that removed them."""
    held = stored_removed(conn)
    new = {"removed_up_to_ns": max(up_to_ns, held.get("removed_up_to_ns", 0)),
           f"removed_{why}": held.get(f"removed_{why}", 0) + count}  # fmt: skip
    for key, value in new.items():
        if key in held:
            conn.execute(sa.update(meta).where(meta.c.key == key).values(value=str(value)))
        else:
            conn.execute(sa.insert(meta).values(key=key, value=str(value)))


# meta's key for the record's own identity, made once with the record (or by the first vqad that
# knows it): a daemon's state file names the record its run wrote, so that a record made anew at
# the same place (a file deleted and started again, or put back from a copy) is told apart.
RECORD_ID = "record_id"


def stored_record_id(conn: sa.Connection) -> str | None:
    """The record's identity (meta's RECORD_ID); None for one that no vqad knowing it has written."""
    return conn.execute(sa.select(meta.c.value).where(meta.c.key == RECORD_ID)).scalar_one_or_none()


def _name_record(conn: sa.Connection) -> None:
    if stored_record_id(conn) is None:
        conn.execute(sa.insert(meta).values(key=RECORD_ID, value=uuid.uuid4().hex))


def stored_version(conn: sa.Connection) -> int | None:
    if not sa.inspect(conn).has_table("meta"):
        return None
    row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return int(row[0]) if row else None


def check_readable(engine: sa.Engine) -> int:
    """The schema version of a record that nothing may migrate (a file opened read-only): this
    vqad's, or a newer one that it still writes. DataError for an older one, whose missing
    columns its queries would name, and for a database that holds no record."""
    with engine.connect() as conn:
        version = stored_version(conn)
        if version is None:
            raise DataError("it holds no record (no schema): is it the daemon's record file?")
        if version > SCHEMA_VERSION:
            return _newer(conn, version)
    if version < SCHEMA_VERSION:
        raise DataError(
            f"its schema is version {version}, older than this vqad's ({SCHEMA_VERSION}), and it cannot be written "
            "to bring it up to date: copy it to a folder this user can write, and open the copy"
        )
    return version


def migrate(engine: sa.Engine) -> int:
    """Create or upgrade the record's schema; -> the version it is now at. A newer schema is
    used as it is where its oldest writer is this vqad's version or older; ConfigError otherwise.
    Processes that open a new or older record at the same moment (a plant's boxes after a power
    cut, on its server; a daemon and its dashboard at boot) each made or upgraded it, and all
    but the first failed on what the first had made: a daemon stopped with "duplicate key value
    violates unique constraint". One that fails so tries once more, and finds the work done."""
    try:
        return _migrate(engine)
    except sa.exc.DatabaseError as exc:
        if not _made_meanwhile(exc):
            raise
        log.info("another process made the record's schema at the same moment: %s", str(exc).splitlines()[0][:200])
        return _migrate(engine)


def _made_meanwhile(exc: sa.exc.DatabaseError) -> bool:
    """Whether `exc` is what creating a table, a column, an index or meta's version row says when
    another process has just made it: PostgreSQL's unique violation (of its catalogue or of
    meta's key) or duplicate object, SQLite's "already exists" or "duplicate column"."""
    said = str(exc.orig)
    return isinstance(exc, (sa.exc.IntegrityError, sa.exc.ProgrammingError)) or (
        "already exists" in said or "duplicate column" in said
    )


def _migrate(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        version = stored_version(conn)
        if version is None:
            metadata.create_all(conn)
            conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            _set_oldest_writer(conn)
            _name_record(conn)
            return SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            return _newer(conn, version)
        while version < SCHEMA_VERSION:
            STEPS[version](conn)
            version += 1
            conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value=str(version)))
        _set_oldest_writer(conn)
        _name_record(conn)
        _add_indexes(conn)
        return version


def _newer(conn: sa.Connection, version: int) -> int:
    """A record migrated by a newer vqad: used as it is if this one may write it."""
    oldest = _oldest_writer(conn) or version
    if oldest > SCHEMA_VERSION:
        raise ConfigError(f"the record's schema is version {version}, which a vqad of schema {oldest} or newer "
                          f"writes; this one's is {SCHEMA_VERSION}: upgrade vqad on this box")  # fmt: skip
    log.warning("the record's schema is version %d, newer than this vqad's (%d), which still writes it: upgrade "
                "vqad on this box to read what version %d adds", version, SCHEMA_VERSION, version)  # fmt: skip
    return version


def _oldest_writer(conn: sa.Connection) -> int | None:
    """meta's oldest_writer; None in a record made before it was kept."""
    row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "oldest_writer")).first()
    return int(row[0]) if row else None


def _set_oldest_writer(conn: sa.Connection) -> None:
    """meta's oldest_writer raised to OLDEST_WRITER (a record made before it was kept gets it)."""
    oldest = _oldest_writer(conn)
    if oldest is None:
        conn.execute(sa.insert(meta).values(key="oldest_writer", value=str(OLDEST_WRITER)))
    elif oldest < OLDEST_WRITER:
        conn.execute(sa.update(meta).where(meta.c.key == "oldest_writer").values(value=str(OLDEST_WRITER)))


def _add_indexes(conn: sa.Connection) -> None:
    """Create the indexes a record lacks. They change no row and an older vqad reads the record
    as before, so they are not a schema version; on a large record the first open takes a while."""
    have = {i["name"] for table in ("results", "reviews") for i in sa.inspect(conn).get_indexes(table)}
    for index in (*results.indexes, *reviews.indexes):
        if index.name not in have:
            log.info("the record gets index %s (once; a large record takes a while)", index.name)
            index.create(conn)
