"""This machine's clock against the times it has passed, and its steps (edge.clock): a Jetson
without an RTC battery boots in 1970 or at its last shutdown's time, and NTP sets it later."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.request

import cv2
import pytest

from edge.clock import BEHIND_TOLERANCE_S, STEP_TOLERANCE_S, ClockWatch, span, step_words
from edge.frames import list_images
from edge.package import load_package
from edge.protocol import HEARTBEAT_TOPIC, frame_message, parse_heartbeat
from edge.transport import free_loopback_port
from tests.browser import wait_for
from tests.conftest import ROOT, run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber

S = 10**9
MADE = 1_796_000_000 * S  # 2026-11-30T00:53:20Z


class FakeClocks:
    """A wall clock a test sets, and a monotonic one that only goes forward."""

    def __init__(self, wall_ns: int):
        self.wall_ns, self.mono_ns = wall_ns, 1000 * S

    def wall(self) -> int:
        return self.wall_ns

    def monotonic(self) -> int:
        return self.mono_ns

    def tick(self, seconds: float, wall_step_s: float = 0.0) -> None:
        self.mono_ns += int(seconds * S)
        self.wall_ns += int((seconds + wall_step_s) * S)


def test_a_clock_before_a_time_it_has_passed_is_said_once_and_after_it_again(caplog):
    clocks = FakeClocks(MADE - 3600 * S)
    watch = ClockWatch(clocks.wall, clocks.monotonic)
    assert watch.behind() is None and watch.status() is None  # nothing passed yet
    watch.passed("the model package's export", MADE)
    watch.passed("the record's newest result", None)  # an empty record: no time
    with caplog.at_level(logging.INFO, "edge.clock"):
        assert watch.check() is None
        clocks.tick(1)
        watch.check()
    assert watch.behind() == ("the model package's export", MADE)
    status = watch.status()
    assert status["behind"] == "the model package's export" and status["behind_s"] == pytest.approx(3599, abs=1)
    assert status["reads"].startswith("2026-11-29T23:53") and status["behind_at"] == "2026-11-30T00:53:20Z"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "60 min before the model package's export" in warnings[0], warnings
    # Within the tolerance of clocks that differ by a little (a workstation's, another box's).
    clocks.wall_ns = MADE - (BEHIND_TOLERANCE_S - 1) * S
    assert watch.behind() is None
    caplog.clear()
    with caplog.at_level(logging.INFO, "edge.clock"):
        watch.check()  # that was a step of an hour, too
    assert any("after the model package's export again" in r.getMessage() for r in caplog.records)


def test_a_step_of_the_wall_clock_is_one_said_and_returned_and_a_small_one_is_not(caplog):
    clocks = FakeClocks(3 * 86400 * S)  # 1970-01-04: no RTC battery
    watch = ClockWatch(clocks.wall, clocks.monotonic)
    watch.passed("the record's newest result", MADE)
    with caplog.at_level(logging.INFO, "edge.clock"):
        watch.check()
        clocks.tick(5, wall_step_s=STEP_TOLERANCE_S - 1)  # NTP's small steps are not a change to record
        assert watch.check() is None
        clocks.tick(1, wall_step_s=(MADE - clocks.wall_ns) / S + 10)  # NTP sets it to the right time
        step = watch.check()
        assert step is not None and watch.check() is None  # said once
    assert step.by_s > 20_000 * 86400
    detail = step.detail()
    assert detail["from"].startswith("1970-01-04T") and detail["to"] == "2026-11-30T00:53:31Z"
    assert step_words(detail).startswith("set forward by 20,784 days (1970-01-04T")
    said = [r.getMessage() for r in caplog.records]
    assert sum("before the record's newest result" in m for m in said) == 1, said
    assert any("clock was set forward by 20,784 days" in m for m in said), said
    assert watch.behind() is None and watch.status() is None
    clocks.tick(1, wall_step_s=-7200)  # a person sets it back two hours
    back = watch.check()
    assert back is not None and step_words(back.detail()).startswith("set back by 2.0 h")


def test_spans_read_in_the_unit_a_person_reads_them_in():
    assert [span(s) for s in (45, -45, 600, 3 * 3600, 20_430 * 86400)] == [
        "45 s", "45 s", "10 min", "3.0 h", "20,430 days",
    ]  # fmt: skip


def test_a_packages_making_time_is_read_from_model_json(tiny_model, tmp_path):
    package = load_package(tiny_model)
    made = package.created_ns
    assert made is not None and abs(made - time.time_ns()) < 86400 * S * 365  # exported by the fixture
    meta = json.loads((tiny_model / "model.json").read_text())
    for created, expected in (("2026-11-30T00:53:20+00:00", MADE), ("2026-11-30T01:53:20+01:00", MADE),
                              ("2026-11-30T00:53:20", MADE), ("yesterday", None), (None, None)):  # fmt: skip
        copy = tmp_path / str(hash(created))
        copy.mkdir()
        for name in ("model.onnx", "model_fp16.onnx"):
            (copy / name).symlink_to(tiny_model / name)
        edited = {**meta, "created": created} if created else {k: v for k, v in meta.items() if k != "created"}
        (copy / "model.json").write_text(json.dumps(edited))
        assert load_package(copy).created_ns == expected, created


def test_a_daemon_on_a_box_that_boots_in_1970_says_so_and_records_when_ntp_sets_its_clock(
    tiny_model, synth_root, tmp_path
):
    """A box whose clock reads 1970 (a Jetson without its RTC battery, no network) starts: the
    log, the heartbeat, `serve --check` and the record's start row say its clock reads before
    the package's export, and results are filed at its time. NTP then sets the clock: the step is
    logged and kept among the record's changes, and the heartbeat says nothing more."""
    offset = tmp_path / "wall_clock_offset"
    offset.write_text(str(-(time.time_ns() // S - 4 * 86400)))  # 1970-01-05
    database, port = tmp_path / "line.db", free_loopback_port()
    daemon = DaemonProcess(tiny_model, "--record", f"sqlite:///{database}", "--set", "edge.heartbeat_s=0.2",
                           "--metrics-port", str(port), wall_clock=offset).start()  # fmt: skip
    metric = lambda name: float(re.search(rf"^{name} (\S+)$", _metrics(port), re.M).group(1))  # noqa: E731
    beats = Subscriber(daemon.results, HEARTBEAT_TOPIC)
    cam = Camera(daemon.frames)
    try:
        said = _next_heartbeat(beats)["clock"]
        assert said["behind"] == "the model package's export" and said["reads"].startswith("1970-01-05T"), said
        assert said["behind_s"] > 20_000 * 86400
        assert metric("vqad_clock_behind_seconds") > 20_000 * 86400 and metric("vqad_clock_steps_total") == 0
        image = cv2.imread(str(list_images(synth_root / "bracket" / "test" / "good")[0]))
        cam.send(frame_message("cam0", 0, image, ts_ns=0))  # a camera on the same box: no clock of its own
        assert wait_for(lambda: _rows(database, "select count(*) from results")[0][0] == 1, 20)
        offset.write_text("0")  # NTP answers
        assert wait_for(lambda: _next_heartbeat(beats)["clock"] is None, 10)
        assert metric("vqad_clock_behind_seconds") == 0  # read at the scrape
        assert wait_for(lambda: metric("vqad_clock_steps_total") == 1, 10)  # seen within a second
        cam.send(frame_message("cam0", 1, image, ts_ns=0))
        assert wait_for(lambda: _rows(database, "select count(*) from results")[0][0] == 2, 20)
    finally:
        cam.close()
        beats.close()
        daemon.stop()
    log = daemon.log_text()
    assert "this machine's clock reads 1970-01-05T" in log and "before the model package's export" in log, log
    assert "this machine's clock was set forward by 20," in log, log
    times = [ts // S for (ts,) in _rows(database, "select ts_ns from results order by id")]
    assert times[0] < 6 * 86400 and abs(times[1] - time.time()) < 600, times  # each at the box's time then
    changes = {kind: json.loads(detail) for kind, detail in _rows(database, "select kind, detail from events")}
    assert changes["start"]["clock"]["behind"] == "the model package's export", changes
    assert changes["clock"]["stepped_s"] > 20_000 * 86400 and changes["clock"]["from"].startswith("1970-01-05T")
    shown = run_vqad("records", f"sqlite:///{database}", "--daily")
    assert "the box's clock set forward by 20," in shown.stdout, shown.stdout
    assert "the box's clock read 20," in shown.stdout and "before the model package's export" in shown.stdout


def test_a_frames_time_off_the_clock_is_said_as_what_it_likely_is(tmp_path, caplog):
    """A camera's ts_ns over 5 minutes off: the box's own clock when it reads before a time it has
    passed; else the camera's clock, or, for a frame from the past, one its sender held."""
    from edge.daemon import Daemon
    from edge.settings import EdgeConfig

    now = time.time_ns()
    said = []
    for passed_ns, ts_ns in ((None, now - 600 * S), (None, now + 3 * 3600 * S), (now + 86400 * S, now + 86400 * S)):
        daemon = Daemon(tmp_path, EdgeConfig())
        daemon.clock.passed("the model package's export", passed_ns)
        caplog.clear()
        with caplog.at_level(logging.WARNING, "edge.daemon"):
            daemon._check_clock("cam0", ts_ns, now)
        said.append(caplog.records[-1].getMessage())
    late, ahead, box = said
    assert "camera cam0 sent ts_ns -0.2 h off this machine's clock (or it held the frame that long" in late, late
    assert "3.0 h off this machine's clock: the record keeps the receive time" in ahead, ahead
    assert "which reads before the model package's export: the record keeps this machine's time" in box, box


def test_serve_check_names_a_clock_that_reads_before_the_packages_export(tiny_model, tmp_path):
    offset = tmp_path / "wall_clock_offset"
    offset.write_text("-864000")  # ten days behind
    daemon = DaemonProcess(tiny_model, "--check", wall_clock=offset)
    checked = subprocess.run(daemon.args, cwd=ROOT, env=daemon.env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "note: this machine's clock reads" in checked.stdout and "10 days before the model package's export" in (
        checked.stdout
    ), checked.stdout


def test_a_threshold_calibrated_on_a_box_whose_clock_reads_before_the_export_keeps_that_clock_beside_its_date(
    tiny_model, tmp_path, line_good, caplog
):
    """`vqad calibrate MODEL_DIR` on the line's box dates the threshold by the box's clock: one that
    reads 1970 wrote "calibrated": "1970-…" into the audit's provenance without a word."""
    from edge.recalibrate import calibrate_package

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, "created": "2099-01-01T00:00:00+00:00"}))  # clock behind
    with caplog.at_level(logging.WARNING, "edge.clock"):
        threshold = calibrate_package(model, line_good)
    assert threshold["clock"]["behind"] == "the model package's export", threshold
    assert threshold["clock"]["behind_at"] == "2099-01-01T00:00:00Z"
    assert load_package(model).meta["threshold"]["clock"] == threshold["clock"]  # kept in model.json
    assert any("the new threshold's calibration time is dated by it" in r.getMessage() for r in caplog.records)
    shutil.copytree(tiny_model, tmp_path / "as_exported")
    assert "clock" not in calibrate_package(tmp_path / "as_exported", line_good)  # a clock after the export


def test_the_records_newest_result_is_a_time_the_writer_and_serve_check_read_the_clock_against(tmp_path):
    """A record whose newest result is a day ahead of this machine's clock: the writer's start
    reads that time for the daemon's check, and `vqad serve --check` notes it; a record whose
    results are all past says nothing."""
    from edge.preflight import _record_lines
    from edge.record import RecordWriter
    from edge.results import Result, result_header
    from edge.settings import EdgeConfig

    database = tmp_path / "line.db"
    writer = RecordWriter(f"sqlite:///{database}").start()
    assert writer.newest_ns is None  # an empty record: no time
    ahead = time.time_ns() + 86400 * S
    header = result_header("cam0", 0, ahead, "ok", 1.0, {"name": "m", "sha256": "ab" * 32}, score=0.5,
                           decision="pass", batch_size=1)  # fmt: skip
    writer.put(Result(header, recv_ns=ahead), ahead)
    writer.close()
    writer = RecordWriter(f"sqlite:///{database}").start()
    assert writer.newest_ns == ahead
    writer.close()
    notes = [line for line in _record_lines(EdgeConfig(record=str(database))) if "clock" in line]
    assert len(notes) == 1 and "before the record's newest result" in notes[0], notes
    assert "24.0 h before the record's newest result" in notes[0], notes
    past = tmp_path / "past.db"
    writer = RecordWriter(f"sqlite:///{past}").start()
    header = result_header("cam0", 0, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32}, score=0.5,
                           decision="pass", batch_size=1)  # fmt: skip
    writer.put(Result(header, recv_ns=time.time_ns()), time.time_ns())
    writer.close()
    assert not [line for line in _record_lines(EdgeConfig(record=str(past))) if "clock" in line]


def _next_heartbeat(beats: Subscriber) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if beats.sock.poll(100):
            return parse_heartbeat(beats.sock.recv_multipart())
    raise AssertionError("no heartbeat in 10 s")


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def _rows(database, query: str) -> list[tuple]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return conn.execute(query).fetchall()
