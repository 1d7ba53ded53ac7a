"""The dashboard (`vqad dashboard`): its parts on their own, then the page in headless Chromium
against a real daemon with a tiny model: the counts streamed, a reject in the gallery within
2 s, a review written from the page, and a token that every request needs."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
import zmq
from prometheus_client import generate_latest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from edge import vqad_version
from edge.dashboard.app import _reject_item
from edge.dashboard.live import CAMERAS_SHOWN, FRAMED_HOLD_S, CameraView, LiveFrame, LiveView
from edge.dashboard.probe import MetricsProbe, read_metrics
from edge.dashboard.settings import DashboardConfig
from edge.inspection import parse_rectangle
from edge.metrics import DaemonMetrics
from edge.overlay import LABELLED_MIN_WIDTH, result_picture
from edge.package import load_package
from edge.protocol import frame_message, heartbeat_message, result_header, result_message
from edge.record import Record
from edge.record.days import ProductionDays
from edge.record.schema import add_removed
from edge.record.store import create_engine
from edge.transport import free_loopback_port
from tests.browser import DashboardProcess, PrefixProxy, headless_chromium, wait_for
from tests.conftest import run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber, stop_process, write_protected

TOKEN = "t0ken-for-the-dashboard-tests"
# The line's days in the dashboard tests: a zone a quarter hour off the hour, from a quarter-hour shift start.
LINE_ZONE, LINE_DAY_STARTS = "Asia/Kathmandu", "05:45"


# -- its parts ------------------------------------------------------------------------------
def test_binding_beyond_loopback_needs_a_token_of_some_length():
    DashboardConfig(host="127.0.0.1")
    DashboardConfig(host="::1")
    with pytest.raises(ValueError, match="requires a token"):
        DashboardConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16"):
        DashboardConfig(host="0.0.0.0", token="short")
    DashboardConfig(host="0.0.0.0", token=TOKEN)
    refused = run_vqad("dashboard", "--host", "0.0.0.0", "--port", str(free_loopback_port()), check=False, timeout=60)
    assert refused.returncode != 0 and "requires a token" in refused.stderr


def test_the_daily_tallys_days_are_a_known_zone_and_a_quarter_hour():
    assert DashboardConfig(timezone="Europe/Berlin", day_starts="06:00").production_days().describe() == (
        "Europe/Berlin, from 06:00"
    )
    for zone, start, why in (("Europe/Berlln", "00:00", "unknown time zone"), ("UTC", "06:10", "quarter hour"),
                             ("UTC", "6 am", "HH:MM")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            DashboardConfig(timezone=zone, day_starts=start)
    refused = run_vqad("dashboard", "--timezone", "Europe/Berlln", "--port", str(free_loopback_port()), check=False)
    assert refused.returncode == 2 and "unknown time zone 'Europe/Berlln'" in refused.stderr


def test_the_daemon_state_is_read_from_its_prometheus_text():
    m = DaemonMetrics()
    m.ready.set(1)
    assert read_metrics(generate_latest(m.registry).decode())["stalled"] is False
    m.stalled.set(1)
    m.queue_depth.set(5)
    m.threshold.set(0.25)
    m.reloads.inc(2)
    m.drift_ks.labels("left").set(0.31)
    m.drift_alarm.labels("left").set(1)
    state = read_metrics(generate_latest(m.registry).decode())
    assert state["ready"] is True and state["stalled"] is True
    assert state["queue_depth"] == 5 and state["threshold"] == 0.25
    assert state["reloads"] == 2 and state["drift"]["left"] == {"ks": 0.31, "alarm": True}
    assert state["record_behind_s"] == 0.0  # no record: nothing waits for it
    m.record_behind.set_function(lambda: 75.0)
    assert read_metrics(generate_latest(m.registry).decode())["record_behind_s"] == 75.0


def test_without_metrics_the_heartbeat_says_how_far_behind_the_record_is():
    """The page's record pill reads `record_behind`: from the metrics, or without them from the
    heartbeat's `record`; a minute of waiting (edge.protocol.RECORD_BEHIND_S) turns it on."""
    from edge.dashboard.app import Dashboard
    from edge.record.days import UTC_DAYS

    view = LiveView()
    page = Dashboard(view, None, None, UTC_DAYS)
    beat = {"ts_ns": time.time_ns(), "every_s": 1.0, "threshold": 1.0, "stalled": False, "record": None}
    view.heartbeat(beat)
    assert page._summary()["daemon"]["record_behind"] is False
    view.heartbeat(beat | {"record": {"pending": 900, "behind_s": 75.2, "unrecorded": 4}})  # an older daemon's
    said = page._summary()["daemon"]
    assert said["record_behind"] is True and said["record_behind_s"] == 75.2 and said["record_error"] is None
    assert said["record_pending"] == 900 and said["unrecorded"] == 4
    refused = "disk I/O error (is its disk read-only? …)"  # the database's last refusal, for the pill to say
    view.heartbeat(beat | {"record": {"pending": 950, "behind_s": 80.0, "unrecorded": 4, "error": refused}})
    assert page._summary()["daemon"]["record_error"] == refused
    view.heartbeat(beat | {"record": {"pending": 3, "behind_s": 0.4, "unrecorded": 4, "error": None}})
    assert page._summary()["daemon"]["record_behind"] is False and page._summary()["daemon"]["record_error"] is None
    aside = {"damaged": "/var/lib/vqad/line.db.damaged-20261206T085844Z", "evidence": None, "reason": "…", "at_ns": 1}
    view.heartbeat(
        beat | {"record": {"pending": 0, "behind_s": 0.0, "unrecorded": 0, "error": None, "set_aside": aside}}
    )
    assert page._summary()["daemon"]["record_set_aside"] == aside  # for the pill: a person has rows to read back


def test_the_results_the_pages_feed_missed_are_counted_by_the_gaps_in_their_seq():
    """ZeroMQ drops results for a feed that falls behind a burst: the page's counts were short
    without a word. A restarted daemon (a new run) starts its seq again, which is no gap."""
    from edge.dashboard.app import Dashboard
    from edge.record.days import UTC_DAYS

    view = LiveView()
    page = Dashboard(view, None, None, UTC_DAYS)
    for run, seq in (("a", 0), ("a", 1), ("a", 5), ("b", 0), ("b", 1), ("a", 6)):
        view.add({**_header(seq, score=0.5), "run": run, "seq": seq}, b"", None)
    view.heartbeat({"ts_ns": time.time_ns(), "every_s": 1.0, "run": "a", "published": 9})  # 7 and 8 dropped
    said = page._summary()["daemon"]
    assert (said["results_seen"], said["results_missed"]) == (6, 5)


def _header(frame_id, status="ok", score=None, camera="c"):
    decision = None if score is None else ("fail" if score > 1.0 else "pass")
    model = {"name": "m", "sha256": "0" * 64}
    return result_header(camera, frame_id, time.time_ns(), status, 1.0, model, score=score, decision=decision)


def test_a_saved_picture_is_wide_enough_for_its_label_and_the_pages_is_left_to_the_page():
    header = {**_header(7, score=1.5), "regions": [{"x": 8, "y": 8, "w": 4, "h": 4}]}
    amap = np.zeros((32, 48), np.float32)
    saved = result_picture(header, amap)
    assert saved.shape[1] == LABELLED_MIN_WIDTH and abs(saved.shape[0] - LABELLED_MIN_WIDTH * 32 / 48) <= 1
    assert (saved[:14, :120, 2] > 200).any()  # a FAIL's label, in red, on its dark band
    page = result_picture(header, amap, labelled=False)
    assert page.shape == (32, 48, 3) and (page[8, 8:13] == (0, 0, 255)).all()  # the region's box, in red
    assert not (page[:6, :, 2] > 200).any()  # no label


def test_the_heat_map_colours_the_part_only_where_the_map_is_high():
    """A reject's picture is read by an operator: the part as the camera saw it where the map is
    low (a fixed blend washed every part blue), the map's colour where it nears the threshold."""
    from edge.overlay import heatmap_overlay

    part = np.full((40, 60), 120, np.uint8)
    amap = np.zeros((40, 60), np.float32)
    amap[:, 20:30] = 0.2  # a fifth of the threshold: a good image's level
    amap[:, 40:50] = 1.0  # at the threshold
    picture = heatmap_overlay(part, amap, vmax=2.0)  # full red at twice the threshold
    assert (picture[:, :20] == 120).all()  # no map, no colour
    assert np.abs(picture[:, 20:30].astype(int) - 120).max() <= 12  # a low map: barely tinted
    assert np.abs(picture[:, 40:50].astype(int) - 120).max() > 60  # at the threshold: in colour


def test_a_stream_without_maps_still_shows_the_part_and_names_no_picture_it_cannot_draw():
    """`publish_maps: false`: the page's pictures of a streamed result are its frame, regions
    boxed; a result with neither map nor frame links no picture (a broken image, else)."""
    header = {**_header(7, score=1.5), "regions": [{"x": 8, "y": 8, "w": 4, "h": 4}], "frame_shape": [32, 48]}
    ok, jpeg = cv2.imencode(".jpg", np.full((32, 48, 3), 128, np.uint8))
    picture = cv2.imdecode(np.frombuffer(LiveFrame(header, b"", jpeg.tobytes(), 1.0, 1.0).picture_jpeg(), np.uint8), 1)
    assert picture.shape == (32, 48, 3)
    assert int(picture[8, 10, 2]) - picture[8, 10, 0] > 60 and abs(int(picture[20, 30, 0]) - 128) < 8  # box; grey
    assert LiveFrame(header, b"", None, 1.0, 1.0).picture_jpeg() is None
    framed = {**header, "frame": {"shape": [32, 48, 3], "encoding": "jpeg"}}
    assert _reject_item(framed, recorded=False)["images"]["overlay"].startswith("/api/image/c/7/overlay?t=")
    assert _reject_item(header, recorded=False)["images"] == {"overlay": None, "frame": None}
    # A recorded fail whose frame was kept without an overlay (its result had no map) links the
    # frame alone: its overlay's link answered 404, and the tile said "no such image".
    row = {**header, "id": 3, "evidence": "/ev/7.png", "evidence_overlay": None}
    assert _reject_item(row, recorded=True)["images"] == {"overlay": None, "frame": "/api/image/c/7/frame?result=3"}
    with_overlay = _reject_item({**row, "evidence_overlay": "/ev/7_overlay.jpg"}, recorded=True)["images"]
    assert with_overlay["overlay"] == "/api/image/c/7/overlay?result=3"
    unwritten = _reject_item({**row, "evidence": None}, recorded=True)["images"]  # the stream's, while held
    assert unwritten == {"overlay": "/api/image/c/7/overlay?result=3", "frame": None}


def test_the_live_view_counts_rates_histogram_and_rejects():
    view = LiveView(silent_after_s=60)
    scores = [0.2, 0.4, 1.5, 0.3, 2.5]
    for i, score in enumerate(scores):
        amap = np.zeros((4, 4), np.uint8).tobytes()
        view.add({**_header(i, score=score), "map": {"shape": [4, 4], "dtype": "uint8", "scale": 0.1}}, amap, None)
    view.add(_header(5, status="error"), b"", None)
    view.add(_header(6, status="dropped"), b"", None)
    c = view.summary()["c"]
    assert (c["frames"], c["pass"], c["fail"], c["error"], c["dropped"]) == (7, 3, 2, 1, 1)
    assert c["fail_rate_5min"] == pytest.approx(2 / 5) and not c["silent"]
    assert sum(c["histogram"]["counts"]) == 5 and c["histogram"]["edges"][-1] >= 2.5
    assert [f.header["frame_id"] for f in view.rejects("c", 10)] == [4, 2]
    assert view.find("c", 4).picture_jpeg()[:2] == b"\xff\xd8"
    assert view.find("c", "latest").header["frame_id"] == 4
    assert LiveView(silent_after_s=0.01).summary() == {}
    # A shift's red rabbits are not the line's fails: the rates leave master parts out, as the
    # daemon's fail-rate alarm does; they stay among the rejects, marked.
    for i in range(7, 10):
        view.add({**_header(i, score=3.0), "part_id": f"RR-{i}", "master": {"expected": "fail", "ok": True}}, b"", None)
    c = view.summary()["c"]
    assert c["fail_rate_5min"] == c["fail_rate_1h"] == pytest.approx(2 / 5) and c["fail"] == 5
    assert c["master_fails"] == 3  # named among the fails, which count every decision
    assert [f.header["frame_id"] for f in view.rejects("c", 2)] == [9, 8]


def test_a_clock_set_while_the_page_is_open_moves_neither_a_cameras_age_nor_its_rates(monkeypatch):
    """A Jetson without a clock battery is set by NTP after the services start: the camera read
    "silent" until its next frame, and its fail-rate bins were skewed for up to an hour."""
    view = LiveView(silent_after_s=10)
    for i, score in enumerate([0.5, 1.5, 0.5, 0.5]):
        view.add(_header(i, score=score), b"", None)
    set_at = time.time()
    monkeypatch.setattr(time, "time", lambda: set_at + 86400)  # set a day ahead
    c = view.summary()["c"]
    assert not c["silent"] and c["age_s"] < 5 and c["throughput_per_s"] > 0
    assert c["fail_rate_5min"] == pytest.approx(1 / 4) and len(c["fail_rate_series"]) <= 2
    assert c["fail_rate_bin_s"] == 10
    view.add(_header(4, score=1.5), b"", None)
    monkeypatch.setattr(time, "time", lambda: set_at - 86400)  # and two days back
    view.add(_header(5, score=1.5), b"", None)
    assert [f.header["frame_id"] for f in view.rejects("c", 10)] == [5, 4, 1]
    assert view.summary()["c"]["fail_rate_5min"] == pytest.approx(3 / 6)


def test_a_result_the_page_cannot_take_is_logged_and_the_feed_goes_on(caplog):
    """A result with its latencies as a list used to raise an AttributeError in the feed's
    thread, which ended it: the page froze until the dashboard was restarted."""
    import zmq

    from edge.dashboard.live import ResultsFeed
    from edge.protocol import result_message

    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)
    view = LiveView(silent_after_s=60)
    feed = ResultsFeed(endpoint, view)
    feed.start()
    try:
        odd = {**_header(0, score=0.5), "latency_ms": [1.0]}
        deadline = time.monotonic() + 10
        while view.find("c", "latest") is None and time.monotonic() < deadline:  # past the slow join
            pub.send_multipart(result_message(odd))
            pub.send_multipart(result_message(_header(1, score=0.4)))
            time.sleep(0.2)
        assert feed.is_alive() and view.find("c", "latest").header["frame_id"] == 1
    finally:
        feed.stop()
        pub.close(linger=0)
    assert "ignoring a result the page could not take (AttributeError" in caplog.text


def test_the_live_view_keeps_the_cameras_that_send_and_drops_the_longest_silent_past_its_bound():
    view = LiveView(silent_after_s=60)
    view.add(_header(0, score=0.1, camera="line"), b"", None)
    for i in range(CAMERAS_SHOWN + 20):  # a sender naming parts as cameras, the real camera among them
        view.add(_header(i, score=0.1, camera=f"SN-{i}"), b"", None)
        if i % 50 == 0:
            view.add(_header(i + 1, score=0.1, camera="line"), b"", None)
    kept = view.summary()
    assert len(kept) == CAMERAS_SHOWN and "line" in kept and "SN-0" not in kept and f"SN-{CAMERAS_SHOWN + 19}" in kept
    assert kept["line"]["frames"] == 4  # the sending camera kept its counts


def test_the_live_picture_is_the_newest_result_with_its_frame_unless_that_lags():
    view, jpeg = CameraView(), b"\xff\xd8 a frame"
    for frame_id, seen_s, frame in ((1, 100.0, jpeg), (2, 100.2, None), (3, 101.9, None)):
        view.add(LiveFrame(_header(frame_id, score=0.1), b"", frame, seen_s, seen_s))
    assert view.pictured.header["frame_id"] == 1  # the part under its map, 1.9 s behind the line
    assert view.summary(102.0, 60)["latest"]["frame_id"] == 1
    view.add(LiveFrame(_header(4, score=0.1), b"", None, *[100.0 + FRAMED_HOLD_S + 0.1] * 2))
    assert view.pictured.header["frame_id"] == 4  # no frame for too long: the newest, its map alone
    view.add(LiveFrame(_header(5, score=0.1), b"", jpeg, 103.0, 103.0))
    assert view.pictured.header["frame_id"] == 5


# -- in a real browser, against a real daemon -------------------------------------------------
@pytest.fixture(scope="module")
def line(tiny_model, synth_root, tmp_path_factory):
    """A daemon (record, control, metrics, frames in its results) and a dashboard on it."""
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'line.db'}"
    control = f"ipc://{folder}/ctl"
    metrics_port = free_loopback_port()
    daemon = DaemonProcess(
        tiny_model, "--record", url, "--control", control, "--metrics-port", str(metrics_port),
        "--set", "edge.publish_frames=true",
    ).start()  # fmt: skip
    dashboard = DashboardProcess(
        "--results", daemon.results, "--record", url, "--metrics", f"http://127.0.0.1:{metrics_port}/metrics",
        "--timezone", LINE_ZONE, "--day-starts", LINE_DAY_STARTS, log_path=folder / "dashboard.log",
    ).start()  # fmt: skip
    images = sorted((synth_root / "bracket" / "test").glob("*/*.png"))
    yield {"daemon": daemon, "dashboard": dashboard, "url": url, "control": control, "images": images,
           "model_dir": str(tiny_model)}  # fmt: skip
    dashboard.stop()
    daemon.stop()


# The page's two charts drawn again on a canvas of their size with numbers long enough to need
# an exponent: the labels that would not fit inside it, as [text, left, width].
LABELS_OUTSIDE_THE_CHARTS = """
const canvas = document.createElement("canvas");
canvas.width = 420; canvas.height = 160;
const ctx = canvas.getContext("2d"), fill = ctx.fillText.bind(ctx), outside = [];
ctx.fillText = (text, x, y) => {
  const width = ctx.measureText(text).width;
  const left = ctx.textAlign === "right" || ctx.textAlign === "end" ? x - width
    : ctx.textAlign === "center" ? x - width / 2 : x;
  if (left < 0 || left + width > canvas.width) outside.push([text, left, width]);
  fill(text, x, y);
};
drawHistogram(canvas, {counts: [3, 1, 2], edges: [0, 1.2345e9, 2.469e9, 3.7035e9]}, 3.2e9);
drawRateChart(canvas, [[3590, 0.0123], [0, 0.75]], 10);
return outside;
"""


# The histogram drawn with its tallest bar: the pixels of bar colour (red or green) in the band
# of the threshold's label, its top 16 rows.
BARS_IN_THE_LABELS_BAND = """
const canvas = document.createElement("canvas");
canvas.width = 420; canvas.height = 160;
drawHistogram(canvas, {counts: [1, 9, 3], edges: [0, 1, 2, 3]}, 0.5);
const band = canvas.getContext("2d").getImageData(0, 0, canvas.width, 16).data;
let bars = 0;
for (let i = 0; i < band.length; i += 4) {
  const [r, g, b] = [band[i], band[i + 1], band[i + 2]];
  if ((g > 150 && b < 100) || (r > 200 && g < 100)) bars++;
}
return bars;
"""


# The fail-rate chart of a line that stood for most of the hour: its points 10 s apart are
# joined, the two runs are not. -> the pixels of the line's red in the middle of the chart,
# where the gap is, and in the last run's span, on the row of their common rate (the top's).
RATE_LINE_ACROSS_A_GAP = """
const canvas = document.createElement("canvas");
canvas.width = 420; canvas.height = 160;
drawRateChart(canvas, [[3590, 0.5], [3580, 0.5], [3570, 0.5], [120, 0.5], [110, 0.5], [100, 0.5]], 10);
const ctx = canvas.getContext("2d"), y = 8;  // the highest rate's row: the chart's top
const red = (x0, x1) => {
  const row = ctx.getImageData(x0, y - 1, x1 - x0, 3).data;
  let n = 0;
  for (let i = 0; i < row.length; i += 4) if (row[i] > 200 && row[i + 1] < 120) n++;
  return n;
};
const at = (ago) => 24 + (420 - 24 - 4) * (1 - ago / 3600);
return [red(Math.round(at(3000)), Math.round(at(600))), red(Math.round(at(118)), Math.round(at(102)))];
"""


# The header's record pill for a record that keeps up, one that is behind, and one that also lost
# results: [hidden, text, class] each.
RECORD_STATES = """
const el = document.createElement("span"), seen = [];
for (const d of [{unrecorded: 0, record_behind: false, record_behind_s: 0.2},
                 {unrecorded: 0, record_behind: true, record_behind_s: 95.2},
                 {unrecorded: 4, record_behind: true, record_behind_s: 95.2},
                 {unrecorded: 0, record_behind: true, record_behind_s: 95.2, record_error: "disk I/O error"},
                 {unrecorded: 0, record_behind: false, record_behind_s: 0.1, record_error: "disk I/O error"}]) {
  drawRecordState(el, d);
  seen.push(el.hidden ? [true, ""] : [false, el.textContent, el.className]);
}
return seen;
"""


# The header's clock pill for a box whose clock reads right, one that reads 1970, and one daemon's
# of several (a step of that clock among the changes: tests/test_changes.py).
CLOCK_STATES = """
const el = document.createElement("span"), seen = [];
const behind = {behind: "the model package's export", behind_at: "2026-12-05T23:07:00Z", behind_s: 1795981582.5,
                reads: "1970-01-07T03:20:33Z"};
for (const d of [{clock: null}, {clock: behind}, {clock: {...behind, endpoint: "tcp://line4-box:5556"}}]) {
  drawClockState(el, d);
  seen.push(el.hidden ? [true, ""] : [false, el.textContent, el.className]);
}
return seen;
"""


# A restart loop's starts and stops, newest first, folded into one change; two starts in a row
# are not a loop, and a change between them keeps its place.
FOLDED_RESTARTS = """
const e = (kind, s, detail = {}) => ({kind, ts_ns: s * 1e9, by: "vqad serve", detail});
const folded = foldRestarts([
  e("stop", 100, {cause: "SIGTERM", published: 5}), e("start", 99, {previous_exit: "unclean"}),
  e("start", 90, {previous_exit: "unclean"}), e("stop", 80, {cause: "SIGTERM", published: 0}),
  e("start", 70, {previous_exit: "clean"}), e("set-threshold", 60, {from: 1, to: 2, reason: "audit"}),
  e("start", 50), e("stop", 40, {cause: "SIGTERM", published: 9}), e("start", 30)]);
return [folded.map((x) => x.kind), changeText(folded[0]), folded[0].detail.since_ns];
"""


def test_without_metrics_the_heartbeat_says_the_boxs_clock_reads_before_times_it_has_passed():
    from edge.dashboard.app import Dashboard
    from edge.record.days import UTC_DAYS

    view = LiveView()
    page = Dashboard(view, None, None, UTC_DAYS)
    beat = {"ts_ns": time.time_ns(), "every_s": 1.0, "threshold": 1.0, "stalled": False, "record": None}
    view.heartbeat(beat)  # an older daemon's: no clock said
    assert page._summary()["daemon"]["clock"] is None
    behind = {"behind": "the record's newest result", "behind_at": "2026-12-05T23:07:00Z", "behind_s": 9e8,
              "reads": "1998-01-01T00:00:00Z"}  # fmt: skip
    view.heartbeat(beat | {"clock": behind})
    assert page._summary()["daemon"]["clock"] == behind


def test_a_metrics_endpoint_that_answers_garbage_reads_as_down_not_as_its_last_good_state(monkeypatch):
    """A scrape cut short (the daemon killed mid-answer) or answered by something that is not
    HTTP raised an error the probe did not catch: its thread ended, and the page went on showing
    the last state it had, "daemon ready", for a daemon that was gone."""
    import socket
    import threading

    from edge.dashboard import probe as probe_module
    from edge.dashboard.probe import MetricsProbe

    listener = socket.create_server(("127.0.0.1", 0))
    port, answers = listener.getsockname()[1], []

    def serve() -> None:
        for _ in range(6):  # bounded: one connection a scrape
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                body = b"vqad_ready 1.0\n"
                if not answers:  # the first scrape: the daemon answers
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                else:  # then an answer that is not HTTP
                    conn.sendall(b"garbage\r\n\r\n")
                answers.append(1)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(probe_module, "PROBE_EVERY_S", 0.1)
    probe = MetricsProbe(f"http://127.0.0.1:{port}/metrics")
    try:
        probe.start()
        assert wait_for(lambda: probe.snapshot().get("ready") is True, 5)
        down = wait_for(lambda: (s := probe.snapshot())["up"] is False and s, 5)
        assert down and down["ready"] is False and probe.is_alive(), probe.snapshot()
    finally:
        probe.stop()
        listener.close()


def _results_left(url: str, up_to_ns: int) -> None:
    """The record counts a result removed for its disk's floor, the newest captured at up_to_ns."""
    engine = create_engine(url)
    with engine.begin() as conn:
        add_removed(conn, "for_space", 1, up_to_ns)
    engine.dispose()


def _field(driver, camera, field):
    found = driver.find_elements("css selector", f'[data-camera="{camera}"] [data-field="{field}"]')
    return found[0].text if found else None


def test_the_page_shows_the_counts_streamed_and_a_reject_within_2_s_and_writes_a_review(line):
    daemon, dashboard = line["daemon"], line["dashboard"]
    driver = headless_chromium()
    sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
    try:
        driver.get(dashboard.url + "/")
        frames = [cv2.imread(str(p)) for p in line["images"][:16]]
        for i, frame in enumerate(frames):
            cam.send(frame_message("line1", i, frame, "raw"))
        streamed = [h for h, _ in sub.collect(len(frames), timeout=60)]
        tally = {d: sum(h["decision"] == d for h in streamed) for d in ("pass", "fail")}
        shown = wait_for(
            lambda: (
                [_field(driver, "line1", f) for f in ("frames", "pass", "fail")]
                == [str(len(frames)), str(tally["pass"]), str(tally["fail"])]
            ),
            timeout=10,
        )
        assert shown, [_field(driver, "line1", f) for f in ("frames", "pass", "fail")]
        assert len(streamed) == len(frames)
        latency_lines = driver.execute_script(  # the widest latency a slow box shows, on one line
            'const b = document.querySelector(\'[data-camera="line1"] [data-field="latency"]\');'
            "b.textContent = '1580.4 / 2937.8 ms'; return b.getClientRects().length"
        )
        assert latency_lines == 1, latency_lines

        # A certain reject: a threshold below every score, then one more frame.
        run_vqad("ctl", line["control"], "set-threshold", "1e-9", "--reason", "dashboard test", "--by", "test")
        cam.send(frame_message("line1", 999, frames[1], "raw"))
        assert [h["decision"] for h, _ in sub.collect(1, timeout=30)] == ["fail"]
        cam.send(frame_message("line1", 1000, frames[0], "raw", part_id="SN-1000"))
        ((reject, _),) = sub.collect(1, timeout=30)
        published = time.monotonic()
        assert reject["decision"] == "fail"
        selector = '[data-camera="line1"] .reject[data-frame-id="1000"]'
        tile = wait_for(lambda: driver.find_elements("css selector", selector), timeout=10)
        assert tile and time.monotonic() - published <= 2.0, time.monotonic() - published
        assert "SN-1000" in tile[0].text  # the tile names the part

        # Review it from the page: the record gets the row.
        assert wait_for(lambda: Record(line["url"]).results(camera="line1", frame_id=1000), timeout=10)
        driver.find_elements("css selector", selector)[0].click()
        wait_for(lambda: driver.find_element("id", "review-defect").is_displayed(), timeout=5)
        assert "SN-1000" in driver.find_element("id", "detail-meta").text
        assert "camera health\nno fault found" in driver.find_element("id", "detail-meta").text  # failed by its score
        top = reject["regions"][0]  # in the words `vqad calibrate --ignore` takes, to leave a date code out
        said = driver.find_element("id", "detail-meta").text.split("regions X,Y,W,H\n", 1)[1]
        assert said.startswith(f"{top['x']},{top['y']},{top['w']},{top['h']} (peak "), said
        # A quality engineer drags over the frame: the part to leave out, in the frame's pixels,
        # and the command that sets it (the page sets nothing).
        frame = driver.find_element("id", "detail-frame")
        assert wait_for(lambda: frame.get_property("naturalWidth") and frame.get_property("clientWidth"), 5)
        cw, ch = frame.get_property("clientWidth"), frame.get_property("clientHeight")
        fh, fw = reject.get("frame_shape") or (frame.get_property("naturalHeight"), frame.get_property("naturalWidth"))
        drag = ActionChains(driver).move_to_element_with_offset(frame, -(cw // 4), -(ch // 4)).click_and_hold()
        drag.move_by_offset(cw // 2, ch // 3).release().perform()
        command = driver.find_element("id", "detail-ignore-command").text
        # The package's folder on the daemon's machine, as its heartbeat names it.
        assert command.startswith(f"vqad calibrate {line['model_dir']} GOOD_DIR --ignore "), command
        x, y, w, h = parse_rectangle(command.rsplit(" ", 1)[1])  # as `vqad calibrate --ignore` reads it
        px = fw / cw + 1  # a CSS pixel's frame pixels, and one for rounding out
        expected = (fw / 4, fh / 4, fw / 2, fh / 3)
        assert all(abs(a - b) <= 2 * px for a, b in zip((x, y, w, h), expected, strict=True)), (command, expected)
        assert len(driver.find_elements("css selector", "#detail-ignored .ignore-box")) == 1  # drawn, hatched
        driver.find_element("id", "detail-ignore-clear").click()
        # The command that appears as one drags does not widen the dialog: the frame stays under
        # the pointer, however long the package's folder.
        rect = "return JSON.stringify(document.getElementById('detail-frame').getBoundingClientRect())"
        before = driver.execute_script(rect)
        driver.execute_script("state.packages.get = () => '/srv/' + 'line-7/'.repeat(60)")  # for the heartbeat's
        ActionChains(driver).move_to_element_with_offset(frame, -(cw // 4), -(ch // 4)).click_and_hold().move_by_offset(
            cw // 2, ch // 3).release().perform()  # fmt: skip
        assert "/srv/line-7/line-7/" in driver.find_element("id", "detail-ignore-command").text
        assert driver.execute_script(rect) == before
        driver.execute_script("delete state.packages.get")
        driver.find_element("id", "detail-ignore-clear").click()
        assert not driver.find_element("id", "detail-ignore").is_displayed()
        # A result judged through an inspection mask names it after its model.
        driver.execute_script(
            "window.shown = [state.open, state.openList];"
            "openDetail({...state.open, model: {...state.open.model, mask_sha256: 'e7'.repeat(32)}})"
        )
        said = driver.find_element("id", "detail-meta").text.split("model\n", 1)[1].split("\n")[0]
        assert said.endswith(f"{reject['model']['sha256']}, through inspection mask e7e7e7e7e7e7…"), said
        # Stepping from a reject judged through a mask to one judged through none moves no picture,
        # on a window where the model line is wider than the pictures: the dialog is as wide as they are.
        driver.set_window_size(1100, 500)
        assert wait_for(lambda: driver.execute_script("return window.innerWidth < 1200 && window.innerHeight < 600"), 5)

        def frame_at(opened: str) -> str:
            """Where the frame is once the dialog shows `opened` and its pictures are fitted."""
            driver.execute_script(f"openDetail({opened})")

            def settled() -> str | None:
                first = driver.execute_script(rect)
                time.sleep(0.25)
                return first if first == driver.execute_script(rect) else None

            return wait_for(settled, 5)

        shown_at = [frame_at("{...state.open}"), frame_at("window.shown[0]")]
        assert shown_at[0] == shown_at[1] and '"width":179' in shown_at[0], shown_at
        driver.set_window_size(1400, 1000)
        assert wait_for(lambda: driver.execute_script("return window.innerWidth > 1200"), 5)
        driver.execute_script("openDetail({...window.shown[0], model: {...window.shown[0].model, "
                              "mask_sha256: 'e7'.repeat(32)}})")  # fmt: skip

        # `vqad calibrate --ignore` replaces the package's mask: the command that adds a rectangle
        # repeats the rectangles of the mask the reject was judged through (the heartbeat's
        # `inspection.given`, learnt from the summary), where they are in this frame's pixels.
        def dragged_command(given):
            driver.execute_script(f"learnMasks({{daemons: [{{inspection: {{mask_sha256: 'e7'.repeat(32), "
                                  f"given: {json.dumps(given)}}}}}]}}); showIgnored()")  # fmt: skip
            ActionChains(driver).move_to_element_with_offset(
                frame, -(cw // 4), -(ch // 4)
            ).click_and_hold().move_by_offset(cw // 2, ch // 3).release().perform()  # as above
            shown = (
                driver.find_element("id", "detail-ignore-command").text,
                driver.find_element("id", "detail-ignore-note").text,
            )
            driver.find_element("id", "detail-ignore-clear").click()
            return shown

        command, note = dragged_command({"rectangles": [[1, 2, 3, 4], [5, 6, 7, 8]], "frame": [fh, fw]})
        assert command.startswith(f"vqad calibrate {line['model_dir']} GOOD_DIR --ignore 1,2,3,4 --ignore 5,6,7,8 "
                                  "--ignore "), command  # fmt: skip
        # The dragged one last: the same drag, within a frame pixel.
        dragged = parse_rectangle(command.rsplit(" ", 1)[1])
        assert all(abs(a - b) <= 1 for a, b in zip(dragged, (x, y, w, h), strict=True)), (dragged, (x, y, w, h))
        assert note == "(the first 2 are the rectangles its inspection mask leaves out already)", note
        assert len(driver.find_elements("css selector", "#detail-ignored .ignore-box.kept")) == 0  # cleared
        driver.execute_script("state.ignored = [{x: 0, y: 0, w: 2, h: 2}]; showIgnored()")
        assert len(driver.find_elements("css selector", "#detail-ignored .ignore-box.kept")) == 2  # drawn, dotted
        driver.find_element("id", "detail-ignore-clear").click()
        command, note = dragged_command({"rectangles": [[1, 2, 3, 4]], "frame": [fh * 2, fw * 2]})
        assert command.count("--ignore") == 1 and f"in {fw * 2}x{fh * 2} frames, this frame is {fw}x{fh}" in note, note
        command, note = dragged_command({"image": "/line/mask.png"})
        assert command.count("--ignore") == 1 and "given as an image" in note and "--mask" in note, note
        driver.execute_script("openDetail({...state.open, model: {...state.open.model, mask_sha256: 'ab'.repeat(32)}})")
        command, note = dragged_command({"image": None})  # another mask than the one learnt: not known here
        assert f"give the rectangles that mask leaves out too, as vqad info {line['model_dir']} lists them" in note
        # A model no heartbeat on the page has named (no longer served): its folder is not known here.
        driver.execute_script("openDetail({...state.open, model: {...state.open.model, sha256: 'cd'.repeat(32)}})")
        command, note = dragged_command({"image": None})
        assert command.startswith("vqad calibrate MODEL_DIR GOOD_DIR --ignore "), command
        driver.execute_script("openDetail(...window.shown)")  # the reject itself again, to review it
        assert not driver.find_element("id", "detail-ignore").is_displayed()
        command, note = dragged_command({"image": None})
        assert command.count("--ignore") == 1 and note == "", note  # judged through no mask: nothing to repeat
        driver.find_element("id", "review-by").send_keys("operator 7")
        driver.find_element("id", "review-kind").send_keys("scratch")
        driver.find_element("id", "review-defect").click()
        assert wait_for(lambda: "Recorded" in driver.find_element("id", "review-status").text, timeout=5)
        reviews = Record(line["url"]).results(camera="line1", frame_id=1000)[0]["reviews"]
        assert [(r["verdict"], r["kind"], r["reviewer"]) for r in reviews] == [("defect", "scratch", "operator 7")]
        # The next reject without closing (the focus is on the dialog's Defect button, not an input):
        # the arrow keys walk the gallery, older and back.
        frame_shown = lambda: driver.find_element("id", "detail-meta").text.split("frame\n", 1)[1].split("\n")[0]  # noqa: E731
        ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
        assert wait_for(lambda: frame_shown() == "999", timeout=5), frame_shown()
        ActionChains(driver).send_keys(Keys.ARROW_LEFT).perform()
        assert wait_for(lambda: frame_shown() == "1000", timeout=5), frame_shown()
        assert not driver.find_element("id", "detail-newer").is_enabled()  # 1000 is the newest
        assert "daemon ready" in driver.find_element("css selector", '[data-field="daemon-state"]').text
        source = lambda: driver.find_element("css selector", '[data-field="threshold-source"]').text  # noqa: E731
        assert wait_for(lambda: "(set by test " in source() and source().endswith(": dashboard test)"), 5), source()
        masked = driver.execute_script(  # a package whose inspection mask leaves a part of the frame out
            "return thresholdSource({by: 'vqad calibrate', calibrated: '2026-12-07T08:00:00Z', n_images: 40, "
            "frr_upper_bound_95: 0.072}, {mask_sha256: 'ab', inspected_share: 0.971})"
        )
        assert masked.endswith("false rejects ≤ 7.2%; 97.1% of the frame judged (inspection mask))"), masked
        # The record's daily tally, read again on a fresh page: today's row counts the reviewed defect.
        driver.refresh()
        today = ProductionDays.parse(LINE_ZONE, LINE_DAY_STARTS).today().isoformat()
        daily = '[data-camera="line1"] [data-field="daily"] tr'
        header = '[data-camera="line1"] [data-field="daily-day"]'
        zone_shown = lambda: [e.text for e in driver.find_elements("css selector", header)]  # noqa: E731
        assert wait_for(lambda: zone_shown() == ["day (Asia/Kathmandu, from 05:45)"], 10), zone_shown()
        row = wait_for(lambda: [r.text for r in driver.find_elements("css selector", daily) if today in r.text], 10)
        assert row and row[0].split()[-6:-4] == ["0", "1"], row  # false rejects, defects
        # Results of today leave the record (its disk's floor): today is counted in part, and says so.
        _results_left(line["url"], time.time_ns())
        driver.refresh()
        in_part = lambda: [r for r in driver.find_elements("css selector", daily) if today in r.text]  # noqa: E731
        row = wait_for(lambda: (rows := in_part()) and "(in part)" in rows[0].text and rows, 10)
        title = row[0].get_attribute("title") if row else ""
        assert "have left the record (" in title and "for the disk's free space" in title, title
        # A sender that started again sends frame 1000 anew, then 1001: the gallery, drawn again for
        # each, shows both frame 1000s.
        for frame_id, frame in ((1000, frames[2]), (1001, frames[3])):
            cam.send(frame_message("line1", frame_id, frame, "raw"))
            assert [h["decision"] for h, _ in sub.collect(1, timeout=30)] == ["fail"]
        newest = '[data-camera="line1"] .reject[data-frame-id="1001"]'
        assert wait_for(lambda: driver.find_elements("css selector", newest), timeout=10)
        time.sleep(1.0)  # the record's rows in: the gallery is drawn from them once more
        assert len(driver.find_elements("css selector", selector)) == 2
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert driver.execute_script(LABELS_OUTSIDE_THE_CHARTS) == []
        assert driver.execute_script(BARS_IN_THE_LABELS_BAND) == 0  # the label is not drawn over a bar
        across_gap, within_run = driver.execute_script(RATE_LINE_ACROSS_A_GAP)
        assert across_gap == 0 and within_run > 0, (across_gap, within_run)  # no slope drawn over the gap
        assert not driver.find_element("css selector", '[data-field="record-state"]').is_displayed()  # it keeps up
        assert driver.execute_script(RECORD_STATES) == [
            [True, ""],
            [False, "record: 95 s behind", "pill warn"],
            [False, "record: 4 results unrecorded, 95 s behind", "pill bad"],
            [False, "record: 95 s behind: disk I/O error", "pill warn"],  # why, while it refuses
            [True, ""],  # a refusal within the minute: no pill yet
        ]
        kinds, text, since_ns = driver.execute_script(FOLDED_RESTARTS)
        assert kinds == ["restarts", "set-threshold", "start", "stop", "start"], kinds
        assert text.startswith("vqad serve started 3 times since ") and since_ns == 70e9, text
        assert text.endswith(", 2 of them after a run that ended without stopping: vqad records --daily lists each")
        said = "the box's clock reads 1970-01-07, 20,787 days before the model package's export (2026-12-05): "
        assert driver.execute_script(CLOCK_STATES) == [
            [True, ""],
            [False, said + "results are filed at its time", "pill bad"],
            [False, "line4-box:5556: " + said + "results are filed at its time", "pill bad"],
        ]
    finally:
        run_vqad("ctl", line["control"], "set-threshold", "1.0", "--reason", "dashboard test done", check=False)
        sub.close()
        cam.close()
        driver.quit()


# The open reject shown again with a 64 x 64 heat map and a 200 x 120 frame (images drawn here).
SHOW_A_MAP_AND_A_FRAME_OF_TWO_SIZES = """
const image = (w, h) => { const c = document.createElement("canvas"); c.width = w; c.height = h;
  c.getContext("2d").fillRect(0, 0, w, h); return c.toDataURL(); };
openDetail({...state.open, frame_shape: [120, 200], images: {overlay: image(64, 64), frame: image(200, 120)}});
"""
# The detail's heat map and frame as shown: [[width, height], [width, height]], once both loaded.
DETAIL_IMAGE_SIZES = """
return ["detail-overlay", "detail-frame"].map((id) => {
  const i = document.getElementById(id);
  return i.complete && i.naturalWidth ? [i.clientWidth, i.clientHeight] : [0, 0]; });
"""


# Each detail picture's caption: [text, shown, its width, its picture's width, links the picture].
DETAIL_CAPTIONS = r"""
return ["detail-overlay", "detail-frame"].map((id) => {
  const img = document.getElementById(id), caption = img.closest("figure").querySelector("figcaption");
  return [caption.textContent.replace(/\s+/g, " "), caption.getClientRects().length > 0,
          caption.getBoundingClientRect().width, img.getBoundingClientRect().width,
          caption.querySelector("a").href === img.src]; });
"""


def test_a_narrow_window_scrolls_only_the_tally_sideways_and_a_reject_keeps_its_proportions(line):
    """An operator's tablet or phone: the page keeps to the window's width. The week's tally,
    wider than a phone, scrolls inside its card; the charts shrink with it. A reject's heat map
    (the model's size) and frame (its own) show at one height, neither squeezed, in a dialog
    that keeps to the window too."""
    daemon, dashboard, camera = line["daemon"], line["dashboard"], f"narrow-{uuid.uuid4().hex[:6]}"
    cam, sub = Camera(daemon.frames), Subscriber(daemon.results)
    driver = headless_chromium(width=500, height=900)  # Chromium's narrowest headless window
    run_vqad("ctl", line["control"], "set-threshold", "1e-9", "--reason", "narrow test", "--by", "test")
    try:
        for i, path in enumerate(line["images"][:3]):  # a wide frame, larger than the model's input
            cam.send(frame_message(camera, i, cv2.resize(cv2.imread(str(path)), (200, 120)), "raw"))
        assert [h["decision"] for h, _ in sub.collect(3, timeout=30)] == ["fail"] * 3
        driver.get(dashboard.url + "/")
        tally = f'[data-camera="{camera}"] [data-field="daily-box"]'
        assert wait_for(lambda: [e for e in driver.find_elements("css selector", tally) if e.is_displayed()], 15)
        widths = driver.execute_script(
            "const card = document.querySelector(arguments[0]).closest('section');"
            "return [document.documentElement.scrollWidth, window.innerWidth, card.getBoundingClientRect().right,"
            " document.querySelector(arguments[0] + ' table').scrollWidth,"
            " document.querySelector(arguments[0] + ' table').clientWidth];",
            tally,
        )
        page, window, card_right, table_content, table_box = widths
        assert page <= window and card_right <= window, widths
        assert table_content > table_box, widths  # the tally is wider than the card: it scrolls in it

        tile = wait_for(lambda: driver.find_elements("css selector", f'[data-camera="{camera}"] .reject'), 10)
        assert tile
        tile[0].click()
        detail = (
            "const d = document.getElementById('detail').getBoundingClientRect(); return [d.right, window.innerWidth];"
        )
        assert wait_for(lambda: driver.find_element("id", "review-defect").is_displayed(), 5)
        right, window = driver.execute_script(detail)
        assert right <= window, (right, window)
        # A live reject's heat map is at the model's size and its frame at the camera's: the
        # detail of one with a 64 x 64 map over a 200 x 120 frame.
        driver.execute_script(SHOW_A_MAP_AND_A_FRAME_OF_TWO_SIZES)
        got = wait_for(
            lambda: (sizes := driver.execute_script(DETAIL_IMAGE_SIZES)) and all(sizes[0] + sizes[1]) and sizes, 10
        )
        assert got, driver.execute_script(DETAIL_IMAGE_SIZES)
        (overlay_w, overlay_h), (frame_w, frame_h) = got
        assert abs(overlay_w / overlay_h - 1.0) < 0.02 and abs(frame_w / frame_h - 200 / 120) < 0.02, got
        assert abs(overlay_h - frame_h) <= 1, got
        # Each picture says what it is, in a caption no wider than itself.
        captions = driver.execute_script(DETAIL_CAPTIONS)
        assert [c[0] for c in captions] == [
            "heat map: full colour from the threshold (green), red at twice it; full size",
            "the frame as received, its regions boxed; full size; drag over it to measure a part to leave out",
        ], captions
        assert all(
            shown and width <= picture_width + 1 and link for _, shown, width, picture_width, link in captions
        ), captions
    finally:
        run_vqad("ctl", line["control"], "set-threshold", "1.0", "--reason", "narrow test done", check=False)
        sub.close()
        cam.close()
        driver.quit()


# A reject opened in the detail with a heat map and a frame of the sizes given ([w, h] each).
OPEN_A_REJECT_OF_SIZES = """
const [[mw, mh], [fw, fh]] = arguments;
const image = (w, h) => { const c = document.createElement("canvas"); c.width = w; c.height = h;
  c.getContext("2d").fillRect(0, 0, w, h); return c.toDataURL(); };
openDetail({camera_id: "tall", frame_id: 1, part_id: null, ts_ns: Date.now() * 1e6, score: 2, threshold: 1,
            unfit: null, model: null, regions: [], reviews: [], frame_shape: [fh, fw],
            images: {overlay: image(mw, mh), frame: image(fw, fh)}});
"""
# Where the detail's frame, its details (the verdict buttons' block) and the Defect button are:
# [frame right, frame bottom, details left, details top, Defect's bottom, window height].
DETAIL_LAYOUT = """
const f = document.getElementById("detail-frame").getBoundingClientRect();
const info = document.querySelector("#detail .detail-info").getBoundingClientRect();
const defect = document.getElementById("review-defect").getBoundingClientRect();
return [f.right, f.bottom, info.left, info.top, defect.bottom, window.innerHeight];
"""


def test_a_tall_parts_pictures_stand_beside_its_details_as_tall_as_the_window_allows(line):
    """A commutator 2.5 times as tall as wide: its heat map and frame were 170 px wide above the
    details, at half the window's height. On a wide window they stand beside the details, as
    tall as the window leaves room for, each in its proportions, with the verdict buttons still
    in sight; a square part's stay above the details, and so do a tall one's on a phone."""
    driver = headless_chromium(width=1300, height=900)
    try:
        driver.get(line["dashboard"].url + "/")
        assert wait_for(lambda: driver.execute_script("return typeof openDetail === 'function'"), 10)

        def opened(map_size, frame_size):
            driver.execute_script(OPEN_A_REJECT_OF_SIZES, map_size, frame_size)
            sizes = wait_for(lambda: (s := driver.execute_script(DETAIL_IMAGE_SIZES)) and all(s[0] + s[1]) and s, 10)
            assert sizes, driver.execute_script(DETAIL_IMAGE_SIZES)
            return sizes, driver.execute_script(DETAIL_LAYOUT)

        (map_shown, frame_shown), layout = opened([128, 320], [500, 1250])
        frame_right, _, info_left, _, defect_bottom, window_height = layout
        assert info_left >= frame_right and defect_bottom <= window_height, layout
        assert frame_shown[1] > 0.7 * window_height and abs(map_shown[1] - frame_shown[1]) <= 1, (layout, frame_shown)
        assert abs(frame_shown[0] / frame_shown[1] - 0.4) < 0.02 and abs(map_shown[0] / map_shown[1] - 0.4) < 0.02

        (_, frame_shown), layout = opened([64, 64], [200, 120])
        assert layout[3] >= layout[1] and frame_shown[1] <= 0.5 * window_height, layout  # above the details

        driver.set_window_size(500, 900)
        (_, frame_shown), layout = opened([128, 320], [500, 1250])
        assert layout[3] >= layout[1], layout
    finally:
        driver.quit()


@contextlib.contextmanager
def _rejects_to_review(line, camera: str, n: int) -> Iterator[tuple[object, str]]:
    """`n` rejects of a new `camera` (the threshold near 0 meanwhile), and a browser on the page
    whose daily tally counts them as not reviewed -> (the browser, the selector of that count's
    button)."""
    cam, driver = Camera(line["daemon"].frames), headless_chromium()
    run_vqad("ctl", line["control"], "set-threshold", "1e-9", "--reason", "queue test", "--by", "test")
    try:
        for frame_id, image in enumerate(line["images"][:n]):
            cam.send(frame_message(camera, frame_id, cv2.imread(str(image)), "raw"))
        query = f"{line['dashboard'].url}/api/results?camera={camera}&decision=fail&reviewed=false"
        assert wait_for(lambda: len(_json(query)[1]["results"]) == n, 20)
        driver.get(line["dashboard"].url + "/")
        button = f'[data-camera="{camera}"] [data-field="daily"] button.queue'
        # 30 s: the dashboard runs niced (10), behind the other test process's training on two cores
        assert wait_for(lambda: [b.text for b in driver.find_elements("css selector", button)] == [str(n)], 30)
        yield driver, button
    finally:
        run_vqad("ctl", line["control"], "set-threshold", "1.0", "--reason", "queue test done", check=False)
        cam.close()
        driver.quit()


# A browser's fetch of the camera's tally that the server answers now and the page reads late:
# the answer of a request overtaken by a newer one, as a loaded box may deliver it.
LATE_DAILY_ANSWER = """
const camera = arguments[0], done = arguments[arguments.length - 1];
const real = window.fetch;
let late = true;
window.fetch = (path, options) => {
  const answer = real(path, options);
  if (!late || !String(path).startsWith("api/daily")) return answer;
  late = false;
  return answer.then((r) => new Promise((resolve) => setTimeout(() => resolve(r), 1500)));
};
loadDaily(state.cameras.get(camera), camera);
done();
"""


def test_the_tallys_older_answer_arriving_late_does_not_put_its_figures_back(line):
    """Each review asks for the tally again; the server answers side by side, so an older
    answer could arrive after a newer one and show a reject reviewed meanwhile as not reviewed
    until the next minute's refresh."""
    camera = f"late-{uuid.uuid4().hex[:6]}"
    with _rejects_to_review(line, camera, 2) as (driver, button):
        driver.execute_async_script(LATE_DAILY_ANSWER, camera)  # answered "2 not reviewed", read in 1.5 s
        time.sleep(0.5)  # the server has answered it
        review = json.dumps({"camera_id": camera, "frame_id": 0, "verdict": "false_reject"}).encode()
        assert _json(f"{line['dashboard'].url}/api/review", {"content-type": "application/json"}, review)[0] == 201
        driver.execute_script("loadDaily(state.cameras.get(arguments[0]), arguments[0])", camera)  # "1", at once
        texts = "return [...document.querySelectorAll(arguments[0])].map((b) => b.textContent)"  # read at once
        shown = lambda: driver.execute_script(texts, button)  # noqa: E731 (a redraw between reads: stale)
        assert wait_for(lambda: shown() == ["1"], 5), shown()
        time.sleep(1.5)  # past the late answer's arrival
        assert shown() == ["1"]


def test_the_days_unreviewed_rejects_are_reviewed_one_after_another_from_the_tally(line):
    """The tally's "not reviewed" count could not be worked down from the page: the gallery
    holds the latest 12 rejects, and a shift makes hundreds. Its count opens the day's rejects
    nobody has reviewed, and each review moves on to the next."""
    base, camera = line["dashboard"].url, f"queue-{uuid.uuid4().hex[:6]}"
    query = f"/api/results?camera={camera}&decision=fail&reviewed=false&day="
    today = ProductionDays.parse(LINE_ZONE, LINE_DAY_STARTS).today().isoformat()
    with _rejects_to_review(line, camera, 4) as (driver, button):
        driver.find_element("css selector", button).click()
        position = lambda: driver.find_element("id", "detail-position").text  # noqa: E731
        daily_status = f'[data-camera="{camera}"] [data-field="daily-status"]'
        assert wait_for(lambda: position() == f"not reviewed, {camera} {today}: 1 of 4", 10), (
            position(),
            [e.text for e in driver.find_elements("css selector", daily_status)],  # what the page said instead
        )
        driver.find_element("id", "review-by").send_keys("operator 9")
        driver.find_element("id", "review-false-reject").click()
        assert wait_for(lambda: position().endswith(": 2 of 4"), 5), position()
        assert "3 left" in driver.find_element("id", "review-status").text
        ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()  # one skipped
        assert wait_for(lambda: position().endswith(": 3 of 4"), 5), position()
        driver.find_element("id", "review-defect").click()
        assert wait_for(lambda: position().endswith(": 4 of 4"), 5), position()
        ActionChains(driver).send_keys("d").perform()  # the verdict's key, as its button
        status = lambda: driver.find_element("id", "review-status").text  # noqa: E731
        assert wait_for(lambda: "That was the last of the day's unreviewed rejects but 1 skipped" in status(), 5)
        left = [r["frame_id"] for r in _json(base + query + today)[1]["results"]]
        reviewed = Record(line["url"]).results(camera=camera, reviewed=True)
        assert left == [2] and sorted((r["frame_id"], r["reviews"][0]["verdict"]) for r in reviewed) == [
            (0, "defect"), (1, "defect"), (3, "false_reject")
        ]  # fmt: skip
        driver.find_element("css selector", "#detail .close button").click()
        assert wait_for(lambda: [b.text for b in driver.find_elements("css selector", button)] == ["1"], 10)
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        # The same for programs; a day is a period of its own.
        yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
        assert _json(base + query + yesterday)[1]["results"] == []
        for bad in ("reviewed=maybe", "day=today", f"day={today}&since=2026-01-01"):
            assert _json(base + "/api/results?" + bad)[0] == 400, bad


def test_a_queue_reviewed_meanwhile_on_another_screen_says_so_under_the_tally(line):
    """Two screens work down the same day: one clicks a "not reviewed" count that the other has
    just worked down. The click found nothing, refreshed the tally and said nothing, and a
    message of the click's (a failure to read the rejects) was wiped by that refresh."""
    camera = f"other-{uuid.uuid4().hex[:6]}"
    with _rejects_to_review(line, camera, 2) as (driver, button):
        for frame_id in range(2):  # the other screen
            Record(line["url"]).review(camera, frame_id, "defect", by="operator 2")
        driver.find_element("css selector", button).click()
        status = f'[data-camera="{camera}"] [data-field="daily-status"]'
        said = lambda: driver.find_element("css selector", status).text  # noqa: E731
        assert wait_for(lambda: "left to review: reviewed meanwhile" in said(), 30), said()  # niced, as above
        time.sleep(2)  # the tally's refresh the click started has come back (its answer is held up to 20 s)
        assert "reviewed meanwhile" in said()  # that refresh used to wipe what the click said
        assert not driver.execute_script("return document.getElementById('detail').open")


def test_a_reject_reviewed_on_another_screen_while_shown_is_not_reviewed_over_unseen(line):
    """Two screens on one queue: the dialog shows a reject, and another person records a verdict
    on it meanwhile. The dialog's verdict had been recorded after it, unseen, and the latest
    review decides what the export learns. Now it is not recorded: the dialog shows the other
    review and why; a second click records it after that one, as the person chose."""
    camera = f"both-{uuid.uuid4().hex[:6]}"
    with _rejects_to_review(line, camera, 2) as (driver, button):
        driver.find_element("css selector", button).click()
        position = lambda: driver.find_element("id", "detail-position").text  # noqa: E731
        assert wait_for(lambda: position().endswith(": 1 of 2"), 10), position()
        meta = lambda: driver.find_element("id", "detail-meta").text  # noqa: E731
        shown = int(meta().split("frame\n", 1)[1].split("\n")[0])
        Record(line["url"]).review(camera, shown, "defect", kind="crack", by="operator 2")  # the other screen
        driver.find_element("id", "review-by").send_keys("operator 1")
        driver.find_element("id", "review-false-reject").click()
        status = lambda: driver.find_element("id", "review-status").text  # noqa: E731
        assert wait_for(lambda: "reviewed since you saw it" in status(), 5), status()
        assert status().startswith(f"Not recorded: camera '{camera}', frame {shown} was reviewed since you saw it: "
                                   "defect (crack) by operator 2 at "), status()  # fmt: skip
        assert "reviews\ndefect (crack) by operator 2" in meta() and position().endswith(": 1 of 2"), meta()
        driver.find_element("id", "review-false-reject").click()  # seen, and chosen again
        assert wait_for(lambda: position().endswith(": 2 of 2"), 5), (position(), status())
        (result,) = Record(line["url"]).results(camera=camera, frame_id=shown)
        assert [(r["verdict"], r["reviewer"]) for r in result["reviews"]] == [
            ("defect", "operator 2"), ("false_reject", "operator 1"),
        ]  # fmt: skip
        # A program names the newest review it saw the same way; one that names none is not checked.
        review = {"camera_id": camera, "frame_id": shown, "verdict": "defect", "after_review_id": 0}
        code, body = _json(line["dashboard"].url + "/api/review", {"Content-Type": "application/json"},
                           json.dumps(review).encode())  # fmt: skip
        assert code == 412 and [r["reviewer"] for r in body["reviews"]] == ["operator 2", "operator 1"], body
        review["after_review_id"] = body["reviews"][-1]["id"]
        code, body = _json(line["dashboard"].url + "/api/review", {"Content-Type": "application/json"},
                           json.dumps(review).encode())  # fmt: skip
        assert code == 201, body


def _status(url, headers=None, data=None):
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _daemon_pill(driver) -> Callable[[], str]:
    """The header's daemon pill's text, to poll."""
    return lambda: driver.find_element("css selector", '[data-field="daemon-state"]').text


def _daemon_summary(dashboard: DashboardProcess) -> Callable[[], dict]:
    """The summary's daemon part, to poll."""
    return lambda: _json(dashboard.url + "/api/summary")[1]["daemon"]


def _json(url, headers=None, data=None):
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


OPENAPI_ID = "urn:vqad:dashboard-api"


def _openapi_validator(document: dict, path: str, method: str, status: int) -> Callable[[object], list[str]]:
    """The errors of a JSON answer against the OpenAPI document's schema of that answer."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource(OPENAPI_ID, Resource.from_contents(document, DRAFT202012))
    pointer = "/".join(
        p.replace("~", "~0").replace("/", "~1") for p in ("paths", path, method, "responses", str(status))
    )
    response = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:  # a shared answer (an error's), by name
        pointer = response["$ref"].removeprefix("#/")
    validator = Draft202012Validator(
        {"$ref": f"{OPENAPI_ID}#/{pointer}/content/application~1json/schema"}, registry=registry
    )
    return lambda answer: [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(answer)]


def test_the_openapi_description_names_every_route_and_no_other():
    from openapi_spec_validator import validate

    from edge.dashboard.app import OPENAPI, create_app

    app = create_app(DashboardConfig(), LiveView(), (), None)
    routes = {route.path for route in app.routes if route.path.startswith("/api/")}
    document = json.loads(OPENAPI.read_text())
    assert set(document["paths"]) == routes
    assert document["openapi"].startswith("3.1")
    validate(document)  # a valid OpenAPI 3.1 document, which a client generator takes


def test_the_apis_answers_hold_to_its_openapi_description(line):
    """What a program reads from each route, ok or refused, is what the OpenAPI document the
    dashboard serves says it is."""
    base = line["dashboard"].url
    status, document = _json(base + "/api/openapi.json")
    assert status == 200
    camera = f"openapi-{uuid.uuid4().hex[:6]}"
    cam = Camera(line["daemon"].frames)
    try:
        for frame_id, image in enumerate(line["images"][:3]):
            cam.send(frame_message(camera, frame_id, cv2.imread(str(image)), "raw", part_id=f"SN-{frame_id}"))
        assert wait_for(lambda: len(_json(f"{base}/api/results?camera={camera}")[1]["results"]) == 3, 20)
    finally:
        cam.close()
    status, row = _json(f"{base}/api/results?camera={camera}&limit=1")
    frame_id = row["results"][0]["frame_id"]
    review = json.dumps({"camera_id": camera, "frame_id": frame_id, "verdict": "defect", "by": "qa"}).encode()
    json_type = {"Content-Type": "application/json"}
    answers = [  # (path in the document, method, the request's URL, body, headers)
        ("/api/summary", "get", "/api/summary", None, None),
        ("/api/rejects", "get", f"/api/rejects?camera={camera}", None, None),
        ("/api/rejects", "get", "/api/rejects?limit=many", None, None),
        ("/api/results", "get", f"/api/results?camera={camera}&part_id=SN-1", None, None),
        ("/api/results", "get", f"/api/results?run={row['results'][0]['run']}&after_seq=0", None, None),
        ("/api/results", "get", "/api/results?limit=0", None, None),
        ("/api/results", "get", f"/api/results?camera={camera}&decision=fail&reviewed=false&mask=none", None, None),
        ("/api/daily", "get", f"/api/daily?camera={camera}&days=2", None, None),
        ("/api/daily", "get", "/api/daily?days=400", None, None),
        ("/api/review", "post", "/api/review", review, json_type),
        ("/api/review", "post", "/api/review", b'{"camera_id": "x"}', json_type),
        ("/api/review", "post", "/api/review", review, {"Content-Type": "text/plain"}),
        ("/api/review", "post", "/api/review", review.replace(b'"qa"', b'"qa", "result_id": 999999999'), json_type),
        ("/api/image/{camera}/{frame}/{kind}", "get", f"/api/image/{camera}/{frame_id}/picture", None, None),
    ]
    statuses = set()
    for path, method, url, body, headers in answers:
        status, answer = _json(base + url, headers=headers, data=body)
        statuses.add((path, status))
        assert str(status) in document["paths"][path][method]["responses"], (url, status, answer)
        assert _openapi_validator(document, path, method, status)(answer) == [], (url, status, answer)
    assert {s for _, s in statuses} == {200, 201, 400, 404, 415}, statuses
    with urllib.request.urlopen(f"{base}/api/image/{camera}/latest/overlay", timeout=5) as response:
        assert response.headers["content-type"] in document["paths"]["/api/image/{camera}/{frame}/{kind}"]["get"][
            "responses"]["200"]["content"]  # fmt: skip


def test_the_api_serves_programs_too(line):
    base = line["dashboard"].url
    daemon, cam = line["daemon"], Camera(line["daemon"].frames)
    try:
        cam.send(frame_message("api", 1, cv2.imread(str(line["images"][0])), "raw"))
        cam.send(frame_message("api", 2, cv2.imread(str(line["images"][1])), "raw", part_id="SN-7"))
        status, summary = wait_for(lambda: (s := _json(base + "/api/summary")) and "api" in s[1]["cameras"] and s, 10)
    finally:
        cam.close()
    camera = summary["cameras"]["api"]
    for key in ("frames", "pass", "fail", "error", "dropped", "last_ts_ns", "fail_rate_5min"):
        assert key in camera, key
    assert status == 200 and camera["frames"] >= 1 and summary["daemon"]["up"] is True
    assert summary["daemon"]["ready"] is True and daemon.alive()
    assert summary["daemon"]["vqad_version"] == vqad_version()  # from its heartbeat
    assert summary["daemon"]["inspection"] == {"mask_sha256": None, "inspected_share": 1.0, "given": None}  # whole
    assert summary["daemon"]["record_behind"] is False and summary["daemon"]["record_behind_s"] < 60  # its metric
    status, body = _json(base + "/api/rejects?limit=3")
    assert status == 200 and len(body["rejects"]) <= 3 and body["record"] is True
    assert _json(base + "/api/rejects?limit=many")[0] == 400
    # Both frames in the record first: the tally is held for the pages for 20 s once read.
    wait_for(lambda: len(_json(base + "/api/results?camera=api")[1]["results"]) == 2, 10)
    status, daily = _json(base + "/api/daily?camera=api&days=1")
    assert status == 200 and [(d["camera_id"], d["results"]) for d in daily["days"]] == [("api", 2)], daily
    today = ProductionDays.parse(LINE_ZONE, LINE_DAY_STARTS).today().isoformat()
    assert (daily["days"][0]["day"], daily["timezone"], daily["day_starts"]) == (today, LINE_ZONE, LINE_DAY_STARTS)
    _results_left(line["url"], time.time_ns())  # what left the record, and the line's day it reaches
    removed = _json(base + "/api/daily?camera=api&days=1")[1]["removed"]
    assert removed["up_to_day"] == today and removed["for_space"] >= 1 and removed["past_keep_days"] == 0
    # What became of a part, as an MES asks: the record's row, with links to what evidence it kept.
    status, part = _json(base + "/api/results?part_id=SN-7")
    assert status == 200 and [(r["camera_id"], r["frame_id"], r["part_id"]) for r in part["results"]] == [
        ("api", 2, "SN-7")
    ]
    found = part["results"][0]
    assert found["status"] == "ok" and found["decision"] in ("pass", "fail") and not part["limit_reached"]
    for link in filter(None, found["images"].values()):
        assert _status(base + link) == 200
    status, both = _json(base + "/api/results?camera=api&limit=1")
    assert status == 200 and [r["frame_id"] for r in both["results"]] == [2] and both["limit_reached"]
    # A subscriber's catch-up: what its daemon run published after the result of frame 1.
    first = _json(base + "/api/results?camera=api&frame_id=1")[1]["results"][0]
    assert isinstance(first["run"], str) and isinstance(first["seq"], int)
    caught_up = _json(base + f"/api/results?run={first['run']}&after_seq={first['seq']}&camera=api")[1]
    after = caught_up["results"]
    assert [(r["frame_id"], r["run"]) for r in after] == [(2, first["run"])] and after[0]["seq"] > first["seq"]
    assert caught_up["run_published"] is None  # the run serves on: it has no stop row yet
    for bad in (
        "limit=0",
        "limit=x",
        "frame_id=x",
        "since=yesterday",
        "decision=maybe",
        "after_seq=3",
        "after_seq=x&run=r",
        "model=ab",  # too few digits to name a model
        "mask=xyz1",
    ):
        assert _json(base + "/api/results?" + bad)[0] == 400, bad
    assert _json(base + "/api/daily?days=0")[0] == 400 and _json(base + "/api/daily?days=x")[0] == 400
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert _json(base + "/api/review", form, b"camera_id=api&frame_id=1&verdict=defect")[0] == 415
    missing = json.dumps({"camera_id": "api", "frame_id": 999999, "verdict": "defect"}).encode()
    assert _json(base + "/api/review", {"content-type": "application/json"}, missing)[0] == 404
    wrong = json.dumps({"camera_id": "api", "frame_id": 1, "verdict": "maybe"}).encode()
    assert _json(base + "/api/review", {"content-type": "application/json"}, wrong)[0] == 400
    # Ids of another type or range, and bodies that are no review, are the request's error (400),
    # not the server's (500), and a fractional frame id is not read as another frame.
    not_reviews = [
        {"camera_id": "api", "frame_id": 1.5, "verdict": "defect"},
        {"camera_id": ["api"], "frame_id": 1, "verdict": "defect"},
        {"camera_id": "api", "frame_id": 2**70, "verdict": "defect"},
        [1, 2],
        None,
    ]
    for bad in not_reviews:
        status, body = _json(base + "/api/review", {"content-type": "application/json"}, json.dumps(bad).encode())
        assert status == 400 and body["error"], (bad, status, body)
    assert _json(base + "/api/review", {"content-type": "application/json"}, b"{not json")[0] == 400
    assert _json(base + f"/api/image/api/{2**70}/overlay")[0] == 404
    # The sender starts again and sends frame 9 twice: two results, each with its own pictures
    # (both fail, so both keep them), and a review names the one it is of by the record's
    # result_id (the newest without one).
    cam = Camera(line["daemon"].frames)
    run_vqad("ctl", line["control"], "set-threshold", "1e-9", "--reason", "api test", "--by", "test")
    try:
        for image in line["images"][2:4]:
            cam.send(frame_message("api", 9, cv2.imread(str(image)), "raw"))
        twice = wait_for(lambda: (r := _json(base + "/api/results?camera=api&frame_id=9")[1]["results"]) and
                         len(r) == 2 and r, 10)  # fmt: skip
    finally:
        run_vqad("ctl", line["control"], "set-threshold", "1.0", "--reason", "api test done", check=False)
        cam.close()
    newer, older = twice
    assert newer["result_id"] > older["result_id"] and newer["images"]["overlay"] != older["images"]["overlay"]
    assert all(_status(base + r["images"]["overlay"]) == 200 for r in twice)
    # The gallery shows both, each once: the stream's rejects are the record's rows.
    gallery = [r for r in _json(base + "/api/rejects?camera=api")[1]["rejects"] if r["frame_id"] == 9]
    assert [r["result_id"] for r in gallery] == [newer["result_id"], older["result_id"]], gallery
    json_type = {"content-type": "application/json"}
    review = {"camera_id": "api", "frame_id": 9, "verdict": "false_reject", "result_id": str(older["result_id"])}
    status, body = _json(base + "/api/review", json_type, json.dumps(review).encode())
    assert status == 201 and body["review"]["result_id"] == older["result_id"], body
    reviewed = {
        r["result_id"]: len(r["reviews"]) for r in _json(base + "/api/results?camera=api&frame_id=9")[1]["results"]
    }
    assert reviewed == {older["result_id"]: 1, newer["result_id"]: 0}
    other = dict(review, frame_id=2)  # the result of frame 9 is not frame 2's
    assert _json(base + "/api/review", json_type, json.dumps(other).encode())[0] == 404
    assert _json(base + "/api/review", json_type, json.dumps(dict(review, result_id="x")).encode())[0] == 400
    assert _json(base + "/api/results?frame_id=-1")[0] == 400
    assert _status(base + "/api/summary", {"Host": "dashboard.example.com"}) == 400  # no DNS rebinding
    with urllib.request.urlopen(base + "/api/summary", timeout=5) as response:
        assert "access-control-allow-origin" not in {k.lower() for k in response.headers}
        assert "default-src 'self'" in response.headers["content-security-policy"]


def test_a_reject_the_camera_health_gate_caused_says_so_from_the_stream_and_the_record(line):
    """A frame of another shape fails whatever its score. Its reject named no reason, and the
    page's detail said "no fault found": an operator looked for a defect on a camera's fault."""
    base = line["dashboard"].url
    wide = cv2.resize(cv2.imread(str(line["images"][0])), (256, 32))  # the model trained on squares
    cam = Camera(line["daemon"].frames)
    try:
        cam.send(frame_message("wide", 1, wide, "raw"))
        streamed = wait_for(lambda: _json(base + "/api/rejects?camera=wide")[1]["rejects"], 10)
    finally:
        cam.close()
    assert streamed and streamed[0]["unfit"] == "aspect" and streamed[0]["decision"] == "fail"
    recorded = wait_for(
        lambda: [r for r in _json(base + "/api/rejects?camera=wide")[1]["rejects"] if r["recorded"]], 10
    )
    assert recorded and recorded[0]["unfit"] == "aspect"
    assert _json(base + "/api/results?camera=wide")[1]["results"][0]["unfit"] == "aspect"


def test_a_camera_paused_by_the_lines_control_says_so_on_its_card_and_its_tile(line):
    """`vqad ctl pause CAMERA` answers its frames with error results: the card showed errors
    rising and nothing said why, so an operator took a paused camera for a broken one, or did
    not see that its parts went uninspected. Its card and its tile say so until it is resumed."""
    base = line["dashboard"].url
    frame = cv2.imread(str(line["images"][0]))
    pill = 'return document.querySelector(\'[data-camera="paused-cam"].camera [data-field="paused"]\')?.hidden'
    driver, cam = headless_chromium(), Camera(line["daemon"].frames)
    try:
        frame_ids = iter(range(1, 1000))

        def sending(check):  # the cameras send on, so that neither is silent however slow the CPU
            frame_id = next(frame_ids)
            for camera in ("paused-cam", "running-cam"):
                cam.send(frame_message(camera, frame_id, frame, "raw"))
            return check()

        run_vqad("ctl", line["control"], "pause", "paused-cam", "--by", "test")
        driver.get(base + "/")
        shown = wait_for(lambda: sending(lambda: driver.execute_script(pill) is False), 30, every=0.5)
        assert shown, _json(base + "/api/summary")[1]["cameras"]
        cameras = _json(base + "/api/summary")[1]["cameras"]
        assert cameras["paused-cam"]["paused"] is True and cameras["running-cam"]["paused"] is False
        tile = driver.find_element("css selector", '#overview a[data-glance="paused-cam"]')
        assert "warn" in tile.get_attribute("class") and "paused: not inspected" in tile.text, tile.text
        run_vqad("ctl", line["control"], "resume", "paused-cam", "--by", "test")
        assert wait_for(lambda: sending(lambda: driver.execute_script(pill) is True), 30, every=0.5)
    finally:
        run_vqad("ctl", line["control"], "resume", "paused-cam", check=False)
        cam.close()
        driver.quit()


def test_a_paused_camera_that_falls_silent_is_paused_not_down(tmp_path):
    """A camera paused for a changeover stops sending while its line is stopped. Shown red and
    "silent", as a broken camera is, it would teach operators to look away from red: while it is
    paused, its silence is amber; another camera's silence stays red."""
    config = tmp_path / "dashboard.yaml"
    config.write_text("silent_after_s: 1.5\n")
    glance = """const tile = (c) => document.querySelector('#overview a[data-glance="' + c + '"]');
                const card = (c) => document.querySelector('[data-camera="' + c + '"].camera');
                return ["cam1", "cam5"].map((c) => tile(c) && [tile(c).className, tile(c).innerText,
                  card(c).className, card(c).querySelector('[data-field="liveness"]').className])"""
    with _page_of_published_results(tmp_path, "--config", str(config)) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)

        def beating(check):  # the daemon beats on; the cameras sent once and then nothing
            beat = {"ts_ns": time.time_ns(), "every_s": 0.2, "run": "r", "published": 2, "threshold": 1.0,
                    "stalled": False, "record": None, "paused": ["cam1"]}  # fmt: skip
            sock.send_multipart(heartbeat_message(beat))
            return check()

        _beat_with_two_cameras(sock, paused=["cam1"])
        cam5_silent = lambda: "silent: last frame" in (driver.execute_script(glance)[1] or ["", ""])[1]  # noqa: E731
        assert wait_for(lambda: beating(cam5_silent), 20, every=0.2), driver.execute_script(glance)
        (paused_tile, paused_text, paused_card, paused_pill), (tile, text, card, pill) = driver.execute_script(glance)
        assert "warn" in paused_tile and "paused: not inspected, last frame" in paused_text, paused_text
        assert "silent" not in paused_card.split() and "warn" in paused_pill and "bad" not in paused_pill
        assert "bad" in tile and "silent" in card.split() and "bad" in pill


def test_each_cameras_tile_says_how_many_of_its_fails_wait_for_a_review(line):
    """The review work of a line of cameras was in each card's tally, 900 px apart: the tiles
    above the cards say where it waits."""
    base = line["dashboard"].url
    threshold = json.loads(run_vqad("ctl", line["control"], "status").stdout)["threshold"]
    driver, cam = headless_chromium(), Camera(line["daemon"].frames)

    def unreviewed(camera):
        days = _json(f"{base}/api/daily?camera={camera}&days=7")[1]["days"]
        return sum(d["unreviewed"] for d in days)

    def recorded(camera):
        return len(Record(line["url"]).results(camera=camera))

    try:
        run_vqad("ctl", line["control"], "set-threshold", "1e-9", "--reason", "tiles", "--by", "test")
        for frame_id, image in enumerate(line["images"][:3]):  # of other parts: not a frozen camera
            cam.send(frame_message("review-a", frame_id, cv2.imread(str(image)), "raw"))
        cam.send(frame_message("review-b", 0, cv2.imread(str(line["images"][3])), "raw"))
        # Asked once the record holds them: the tally's answer is shared for FRESH_S.
        assert wait_for(lambda: (recorded("review-a"), recorded("review-b")) == (3, 1), 30)
        assert (unreviewed("review-a"), unreviewed("review-b")) == (3, 1)
        driver.get(base + "/")
        tile = "return document.querySelector('#overview a[data-glance=\"{}\"] [data-field=unreviewed]')?.textContent"
        tiles = {"review-a": "3 not reviewed (7 days)", "review-b": "1 not reviewed (7 days)"}
        said = wait_for(lambda: all(driver.execute_script(tile.format(c)) == t for c, t in tiles.items()), 15)
        assert said, [driver.execute_script(tile.format(c)) for c in tiles]
    finally:
        run_vqad("ctl", line["control"], "set-threshold", str(threshold), "--reason", "tiles done", check=False)
        cam.close()
        driver.quit()


def test_with_a_token_every_request_needs_it_and_a_browser_keeps_it_in_a_cookie(line, tmp_path):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    review = json.dumps({"camera_id": "line1", "frame_id": 0, "verdict": "false_reject"}).encode()
    dashboard = DashboardProcess(
        "--results", line["daemon"].results, "--record", line["url"], log_path=tmp_path / "dashboard.log",
        env={"VQAD_DASHBOARD_TOKEN": TOKEN},
    ).start(headers=bearer)  # fmt: skip
    driver = headless_chromium()
    try:
        base = dashboard.url
        assert _status(base + "/api/summary") == 401
        assert _status(base + "/api/summary", {"Authorization": "Bearer not-the-token-at-all"}) == 401
        assert _status(base + "/") == 401 and _status(base + "/dashboard.js") == 401
        assert _status(base + "/api/review", {"content-type": "application/json"}, review) == 401
        assert _status(base + "/api/summary", bearer) == 200
        driver.get(base + "/?token=" + TOKEN)
        assert driver.current_url.rstrip("/") == base  # the token left the address bar for a cookie
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
        cookie = driver.get_cookie("vqad_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        driver.quit()
        dashboard.stop()


def _recorded_fails(url: str, evidence, camera: str, n: int) -> list[dict]:
    """n fails of `camera` in a new record, each with its frame and heat map kept, oldest first."""
    from edge.record import RecordWriter
    from edge.results import Result

    writer = RecordWriter(url, evidence).start()
    for frame_id in range(n):
        header = result_header(camera, frame_id, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32},
                               score=2.0, decision="fail", batch_size=1)  # fmt: skip
        frame = np.full((64, 64, 3), 40 * (frame_id + 1), np.uint8)
        info = {"shape": [64, 64], "dtype": "uint8", "scale": 0.01}
        writer.put(Result(header, bytes(64 * 64), recv_ns=time.time_ns(), frame=frame, map_info=info), time.time_ns())
        time.sleep(0.01)
    wait_for(lambda: writer.recorded == n, 10)
    writer.close()
    return sorted(Record(url).results(camera=camera), key=lambda r: r["frame_id"])


def test_a_mask_set_midday_gives_the_tally_a_row_of_its_own_with_its_own_review_queue(tmp_path):
    """A quality engineer who left a date code out an hour ago read the day's fail rate with the
    whole frame's fails in it, and the day's "not reviewed" opened both. The day has a row of the
    model through the mask, marked so, whose count opens its own rejects."""
    from edge.record import RecordWriter
    from edge.results import Result

    url, mask, now = f"sqlite:///{tmp_path / 'line.db'}", "cd" * 32, time.time_ns()
    writer = RecordWriter(url, tmp_path / "evidence").start()
    for frame_id, masked in enumerate((False, False, True)):  # two fails through the whole frame, then one
        model = {"name": "m", "sha256": "ab" * 32, **({"mask_sha256": mask} if masked else {})}
        ts = now - (60 - 20 * frame_id) * 10**9
        header = result_header("cam", frame_id, ts, "ok", 1.0, model, score=2.0, decision="fail", batch_size=1)
        writer.put(Result(header, recv_ns=ts, frame=np.full((32, 32, 3), 90, np.uint8)), ts)
    assert wait_for(lambda: writer.recorded == 3, 10)
    writer.close()
    with DashboardProcess("--record", url, "--results", "", log_path=tmp_path / "dashboard.log") as dashboard:
        days = _json(dashboard.url + "/api/daily?camera=cam&days=1")[1]["days"]
        assert [(d["mask_sha256"], d["fail"], d["unreviewed"]) for d in days] == [(None, 2, 2), (mask, 1, 1)], days
        # A sha256 as a table shows it, its first 12 digits, finds what the whole one does.
        for asked, frames in (
            ("none", [1, 0]),
            (mask, [2]),
            (mask[:12], [2]),
            (mask[:12].upper() + "&model=ABAB", [2]),
        ):
            found = _json(f"{dashboard.url}/api/results?camera=cam&decision=fail&reviewed=false&mask={asked}")[1]
            assert [r["frame_id"] for r in found["results"]] == frames, (asked, found)
        driver = headless_chromium()
        try:
            driver.get(dashboard.url + "/")
            daily = lambda: driver.find_elements("css selector", '[data-field="daily"] tr')  # noqa: E731
            rows = wait_for(lambda: len(r := daily()) == 2 and r, 10)
            cells = [row.find_elements("css selector", "td") for row in rows]  # the newest first
            assert [c[1].text for c in cells] == ["abababababab+mask", "abababababab"], [c[1].text for c in cells]
            assert cells[0][1].get_attribute("title") == f"judged through inspection mask {mask}"
            cells[0][7].find_element("css selector", "button").click()  # the masked row's one not reviewed
            position = lambda: driver.find_element("id", "detail-position").text  # noqa: E731
            assert wait_for(lambda: position().endswith(": 1 of 1"), 10), position()
            assert driver.find_element("css selector", "#detail-meta").text.count("frame\n2") == 1
        finally:
            driver.quit()


def test_a_parts_results_open_from_its_id_and_a_pass_is_reviewed_as_a_miss(tmp_path):
    """An operator with a part in hand (or a customer's complaint) asked what the line decided of
    it: the page showed the latest rejects and the tally, never a part. Its id typed or scanned
    opens its results, newest first and passes too, each camera's; a pass found defective is
    reviewed there as a defect."""
    from edge.record import RecordWriter
    from edge.results import Result

    url = f"sqlite:///{tmp_path / 'line.db'}"
    writer = RecordWriter(url, tmp_path / "evidence").start()
    model = {"name": "m", "sha256": "ab" * 32}
    for camera, frame_id, part, decision in (("top", 0, "SN-7", "fail"), ("side", 0, "SN-7", "pass"),
                                             ("top", 1, "SN-8", "fail")):  # fmt: skip
        header = result_header(camera, frame_id, time.time_ns(), "ok", 1.0, model, score=2.0 if decision == "fail"
                               else 0.4, decision=decision, batch_size=1, part_id=part)  # fmt: skip
        info = {"shape": [32, 32], "dtype": "uint8", "scale": 0.01}  # a fail's heat map, as the daemon hands it
        result = Result(header, bytes(32 * 32), recv_ns=time.time_ns(), frame=np.full((32, 32, 3), 90, np.uint8),
                        map_info=info)  # fmt: skip
        writer.put(result, time.time_ns())
        time.sleep(0.01)
    assert wait_for(lambda: writer.recorded == 3, 10)
    writer.close()
    with DashboardProcess("--record", url, "--results", "", log_path=tmp_path / "dashboard.log") as dashboard:
        driver = headless_chromium()
        try:
            driver.get(dashboard.url + "/")
            query, status = driver.find_element("id", "part-query"), driver.find_element("id", "part-status")
            position = lambda: driver.find_element("id", "detail-position").text  # noqa: E731
            meta = lambda: driver.find_element("id", "detail-meta").text  # noqa: E731
            query.send_keys("SN-7", Keys.ENTER)
            assert wait_for(lambda: position() == "part SN-7: 1 of 2", 10), (position(), status.text)
            assert status.text == "2 results" and "side" in meta() and "pass" in meta() and "SN-7" in meta()
            overlay = driver.find_element("id", "detail-overlay")
            assert wait_for(lambda: driver.execute_script("return arguments[0].naturalWidth", overlay) > 0, 5)
            driver.find_element("id", "review-by").send_keys("ann")
            driver.find_element("id", "review-kind").send_keys("crack")
            driver.find_element("id", "review-defect").click()
            assert wait_for(lambda: "Recorded: defect" in driver.find_element("id", "review-status").text, 5)
            assert position() == "part SN-7: 1 of 2"  # a review stays on the result it is of
            ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
            assert wait_for(lambda: position().endswith("2 of 2") and "top" in meta() and "fail" in meta(), 5), meta()
            driver.find_element("css selector", "#detail .close button").click()
            query.clear()
            query.send_keys("SN-404", Keys.ENTER)
            pill = driver.execute_script(
                "const el = document.createElement('span'); drawRecordState(el, {record_set_aside: "
                "{at_ns: 1e18, damaged: '/var/lib/vqad/line.db.damaged-X'}}); return [el.hidden, el.textContent];"
            )  # the header's record pill for a damaged file the daemon set aside
            assert pill[0] is False and "damaged file set aside" in pill[1] and "line.db.damaged-X" in pill[1], pill
            assert wait_for(lambda: status.text == "no result for part SN-404", 5), status.text
            assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        finally:
            driver.quit()
    (miss,) = Record(url).results(part_id="SN-7", reviewed=True)
    assert (miss["camera_id"], miss["decision"]) == ("side", "pass")
    assert [(v["verdict"], v["kind"], v["reviewer"]) for v in miss["reviews"]] == [("defect", "crack", "ann")]
    assert [row["missed"] for row in Record(url).daily(camera="side")] == [1]  # the tally's "misses found"


def test_a_record_this_dashboard_cannot_write_is_shown_and_its_reviews_are_off_saying_why(tmp_path):
    """A plant's view of a backup on a read-only share: the dashboard refused to start ("attempt
    to write a readonly database"). It shows the record's rejects; the review buttons are off,
    saying why, and the API refuses a review with the cause."""
    folder = tmp_path / "share"
    url = f"sqlite:///{folder / 'line.db'}"
    _recorded_fails(url, tmp_path / "evidence", "ro-cam", 2)
    nowhere = f"ipc://{tmp_path}/no-daemon"
    with write_protected(folder / "line.db", folder):
        with DashboardProcess("--record", url, "--results", nowhere, log_path=tmp_path / "ro.log") as dashboard:
            summary = lambda: _json(dashboard.url + "/api/summary")[1]  # noqa: E731
            assert wait_for(lambda: "ro-cam" in summary()["cameras"], 10)
            assert summary()["daemon"]["record_read_only"] is True
            review = json.dumps({"camera_id": "ro-cam", "frame_id": 1, "verdict": "defect"}).encode()
            status, body = _json(dashboard.url + "/api/review", {"Content-Type": "application/json"}, review)
            assert status >= 400 and "cannot be written" in body["error"], body
            driver = headless_chromium()
            try:
                driver.get(dashboard.url + "/")
                tiles = wait_for(lambda: driver.find_elements("css selector", '[data-camera="ro-cam"] .reject'), 10)
                assert tiles and len(tiles) == 2
                tiles[0].click()
                said = wait_for(lambda: driver.find_element("id", "review-status").text, 5)
                assert "cannot be written here" in said, said
                assert not driver.find_element("id", "review-defect").is_enabled()
                assert not driver.find_element("id", "review-false-reject").is_enabled()
            finally:
                driver.quit()


def test_a_dashboard_started_while_the_line_stands_shows_the_records_rejects_and_says_why_a_picture_is_missing(
    tmp_path,
):
    """A dashboard started while no camera sends (a night, a weekend, a box restarted) showed
    "No results yet" over a record of rejects waiting for their review. A picture that was not
    on this machine (a record shared by boxes) showed as a broken image, and a reject whose
    pictures the quota had removed showed the previous reject's heat map in its detail."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    rows = _recorded_fails(url, tmp_path / "evidence", "standing", 3)
    engine = create_engine(url)
    with engine.begin() as conn:  # frame 0's pictures on another box's disk; frame 1's removed by the quota
        conn.execute(sa.text("UPDATE results SET evidence_overlay = '/elsewhere/0_overlay.jpg', "
                             "evidence_frame = '/elsewhere/0.png' WHERE frame_id = 0"))  # fmt: skip
        conn.execute(sa.text("UPDATE results SET evidence_removed = true WHERE frame_id = 1"))
    engine.dispose()
    (other_line,) = _recorded_fails(url, tmp_path / "evidence", "line4-cam", 1)  # another line's, on a shared record
    with engine.begin() as conn:  # its images never written: a row put back from a killed daemon's journal
        put_back_ns = other_line["ts_ns"] + 60 * 10**9
        conn.execute(sa.text("UPDATE results SET evidence_overlay = NULL, evidence_frame = NULL, "
                             f"recovered_ns = {put_back_ns} WHERE camera_id = 'line4-cam'"))  # fmt: skip
    engine.dispose()
    nowhere = f"ipc://{tmp_path}/no-daemon"
    with DashboardProcess("--record", url, "--results", nowhere, log_path=tmp_path / "every.log") as dashboard:
        every = wait_for(lambda: len(c := _json(dashboard.url + "/api/summary")[1]["cameras"]) == 2 and c, 10)
        assert set(every) == {"standing", "line4-cam"}  # read in the background, after the first summary
        driver = headless_chromium()
        try:  # nothing changed on the daemon yet: a word, not a table's header over no rows
            driver.get(dashboard.url + "/")
            assert wait_for(lambda: _field(driver, "line4-cam", "changes-note") == "none", 10)
            assert not driver.find_element("css selector", '[data-camera="line4-cam"] [data-field="changes-table"]'
                                           ).is_displayed()  # fmt: skip
            # A row put back from its run's journal says why it has no picture, and when it came back.
            wait_for(lambda: driver.find_elements("css selector", '[data-camera="line4-cam"] .reject'), 10)[0].click()
            journal = lambda: "journal" in driver.find_element("id", "detail-missing").text  # noqa: E731
            why = wait_for(journal, 5) and driver.find_element("id", "detail-missing").text  # the API's answer
            assert why == "no picture kept: its row came back from the journal of a run that ended first", why
            meta = driver.find_element("id", "detail-meta").text
            assert "put back from its run's journal" in meta.splitlines()[-1], meta
        finally:
            driver.quit()
    from edge.record import RecordWriter

    writer = RecordWriter(url, tmp_path / "evidence").start()  # what was changed on the daemon meanwhile
    model = {"name": "m", "sha256": "ab" * 32}
    for _ in range(20):  # a deploy script's reloads, before the changes a person made
        writer.event("reload", {"from": model, "to": model, "threshold": {"from": 1.0, "to": 1.0}}, "SIGHUP")
    writer.event("set-threshold", {"from": 1.0, "to": 1.25, "reason": "audit 42", "model": model}, "ann")
    writer.event("pause", {"camera": "line4-cam", "model": model}, "bob")  # another camera's: not in this section
    other = {"name": "other-part", "sha256": "cd" * 32}  # another line's daemon on the shared record
    writer.event("set-threshold", {"from": 2.0, "to": 2.5, "reason": "line 4", "model": other}, "carl")
    writer.event("reload", {"from": other, "to": other, "threshold": {"from": 2.5, "to": 2.0}}, "SIGHUP")
    writer.event("reload", {"from": model, "to": model, "threshold": {"from": 1.25, "to": 0.9}}, "SIGHUP")
    run = {"model": model, "threshold": 0.9, "run": "5f0c" * 8}  # the daemon's own start and stop, as it records them
    writer.event("start", {**run, "previous_exit": "unclean", "pid": 41}, "vqad serve")
    writer.event("stop", {**run, "cause": "SIGTERM", "accepted": 12, "published": 12, "pid": 41}, "vqad serve")
    for i in range(120):  # a plant's master parts since: checks, not changes, and more than the API reads
        check = {"camera": "standing", "part_id": f"RR-{i % 5}", "frame_id": i, "expected": "fail", "decision": "fail",
                 "score": 2.0, "ok": True, "model": model}  # fmt: skip
        writer.event("master-part", check, "vqad serve")
    writer.close()
    with DashboardProcess(
        "--record", url, "--results", nowhere, "--record-cameras", "stand*,line3-*", log_path=tmp_path / "dashboard.log"
    ) as dashboard:
        base = dashboard.url
        assert wait_for(lambda: _json(base + "/api/summary")[1]["cameras"], 10)  # read in the background
        cameras = _json(base + "/api/summary")[1]["cameras"]
        assert list(cameras) == ["standing"], cameras  # the line's own
        assert cameras["standing"]["recorded_only"] is True and cameras["standing"]["frames"] == 0
        status, body = _json(base + f"/api/image/standing/0/overlay?result={rows[0]['id']}")
        assert status == 404 and body["error"] == "not on this machine's disk: /elsewhere/0_overlay.jpg"
        status, body = _json(base + f"/api/image/line4-cam/0/overlay?result={other_line['id']}")
        assert status == 404 and body["error"].startswith("no picture kept: its row came back from the journal"), body
        driver = headless_chromium()
        try:
            driver.get(base + "/")
            tiles = wait_for(lambda: len(t := driver.find_elements("css selector", ".reject")) == 3 and t, 10)
            assert "from the record" in _field(driver, "standing", "liveness")
            assert "no --metrics" in _field(driver, "standing", "drift")  # not "not measured yet", for good
            border = driver.execute_script("""const n = document.querySelector('[data-camera="standing"]');
                return [getComputedStyle(n).borderLeftColor, n.className]""")
            assert border[0] == "rgb(210, 153, 34)", border  # the pill's amber, not a silent camera's red
            assert not driver.find_element("css selector", '[data-field="latest-image"]').is_displayed()
            # No zero counts nor empty charts of a stream it never sent on: its rejects and days are the record's.
            shown = {part: driver.find_element("css selector", f'[data-camera="standing"] {part}').is_displayed()
                     for part in (".counts", ".panels", '[data-field="gallery"]')}  # fmt: skip
            assert shown == {".counts": False, ".panels": False, '[data-field="gallery"]': True}, shown
            assert driver.find_element("css selector", '[data-field="throughput"]').is_displayed()  # a stream followed
            assert wait_for(lambda: "not on this machine's disk" in tiles[2].text, 5), tiles[2].text  # the oldest
            assert wait_for(lambda: "removed by the disk quota" in tiles[1].text, 5), tiles[1].text
            loaded = "return document.querySelector('.reject img')?.className"
            assert wait_for(lambda: driver.execute_script(loaded) == "", 5)  # frame 2's: grey until it loaded
            assert wait_for(lambda: _field(driver, "standing", "daily").split()[2] == "3", 10)  # results that day
            changes = [row.text for row in driver.find_elements("css selector", '[data-camera="standing"] '
                                                                             '[data-field="changes"] tr')]  # fmt: skip
            assert len(changes) == 20, changes  # the newest 20; line4-cam's pause in its own section
            assert not any("other-part" in c or "line 4" in c for c in changes), changes  # nor line 4's model
            assert _field(driver, "standing", "changes-note") == "and 4 more: vqad records --daily"
            # The changes in the words of `vqad records --daily` (edge.changes), from /api/daily's `said`.
            run = "vqad serve run 5f0c5f0c5f0c"
            assert f"{run} stopped (SIGTERM) after 12 results vqad serve on " in changes[0], changes
            assert f"{run} started: model m abababababab, threshold 0.9; the run before it ended without stopping " \
                   "(killed, crashed or the power lost)" in changes[1], changes  # fmt: skip
            assert "model m abababababab reloaded SIGHUP on " in changes[4]  # the same threshold: not named
            assert "model m abababababab reloaded, threshold 1.25 → 0.9" in changes[2], changes
            assert "threshold 1 → 1.25: audit 42" in changes[3] and "ann on " in changes[3], changes
            tiles[0].click()  # frame 2, whose heat map loads
            assert wait_for(lambda: driver.execute_script(
                "return document.getElementById('detail-overlay').naturalWidth") > 0, 5)  # fmt: skip
            full = driver.find_element("id", "detail-frame-full").get_attribute("href")  # the frame's own pixels
            with urllib.request.urlopen(full, timeout=5) as response:
                kept = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_UNCHANGED)
            assert kept.shape[:2] == (64, 64) and int(kept.max()) == 120, full  # frame 2 of _recorded_fails
            driver.find_element("id", "detail-older").click()  # frame 1: its pictures removed
            time.sleep(1)
            shown = driver.execute_script("""const o = document.getElementById('detail-overlay');
                const why = document.getElementById('detail-missing').textContent;
                const figure = document.getElementById('detail-mapped');  // the picture and its caption
                return [getComputedStyle(figure).display, o.naturalWidth, why]""")
            assert shown[:2] == ["none", 0] and "removed by the" in shown[2], shown  # not frame 2's heat map
        finally:
            driver.quit()


class _CountingPeer:
    """An HTTP server on loopback that answers 404 to everything and counts what it is asked."""

    def __init__(self):
        import http.server
        import threading

        asked = self.asked = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                asked.append(self.path)
                self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_picture_on_another_boxs_disk_is_fetched_from_that_boxs_dashboard(tmp_path):
    """On a record that boxes share, each box keeps its evidence on its own disk: a plant's
    dashboard showed another line's rejects with "not on this machine's disk" where their
    pictures belonged, so they could not be reviewed there. With `peers`, it asks the other
    boxes' dashboards (real processes here; each box's disk is its working folder, the row's path
    relative to it) and sends on the picture of the one that has it."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    rows = _recorded_fails(url, tmp_path / "evidence", "line4-cam", 2)
    box_b, box_a = tmp_path / "box-b", tmp_path / "box-a"
    on_b = box_b / "evidence" / "line4-cam" / "0_overlay.jpg"
    on_b.parent.mkdir(parents=True)
    shutil.copy(rows[0]["evidence_overlay"], on_b)
    box_a.mkdir()
    engine = create_engine(url)
    with engine.begin() as conn:  # frame 0's overlay on box B's disk alone; frame 1's on no box's
        conn.execute(sa.text("UPDATE results SET evidence_overlay = 'evidence/line4-cam/0_overlay.jpg' "
                             "WHERE frame_id = 0"))  # fmt: skip
        conn.execute(sa.text("UPDATE results SET evidence_overlay = 'evidence/line4-cam/1_overlay.jpg' "
                             "WHERE frame_id = 1"))  # fmt: skip
    engine.dispose()
    token = "plant-token-0123456789"
    nowhere = f"ipc://{tmp_path}/no-daemon"
    dead = f"http://127.0.0.1:{free_loopback_port()}"  # a box switched off
    counting = _CountingPeer()  # box B's own peer: a peer's request must never reach it
    try:
        with (
            DashboardProcess("--record", url, "--results", nowhere, "--token", token, "--peers", counting.url,
                             log_path=tmp_path / "b.log", cwd=box_b) as b,
            DashboardProcess("--record", url, "--results", "", "--peers", f"{dead},{b.url}",
                             log_path=tmp_path / "a.log", cwd=box_a, env={"VQAD_PEERS_TOKEN": token}) as a,
        ):  # fmt: skip
            picture = f"/api/image/line4-cam/0/overlay?result={rows[0]['id']}"
            with urllib.request.urlopen(a.url + picture, timeout=10) as response:
                assert response.status == 200 and response.headers["content-type"] == "image/jpeg"
                assert response.read() == on_b.read_bytes()
            status, body = _json(a.url + f"/api/image/line4-cam/1/overlay?result={rows[1]['id']}")
            assert status == 404, body
            here = "not on this machine's disk: evidence/line4-cam/1_overlay.jpg, nor on its peers' ("
            assert body["error"].startswith(here), body
            assert f"{b.url}: not on its disk either" in body["error"], body
            assert f"{dead}: not asked: it did not answer within the last 30 s" in body["error"], body
            assert counting.asked == [], counting.asked  # B answered A from its own disk alone
            # A follows no daemon's stream (a plant's view): its page says so, not "not heard from yet"
            assert _json(a.url + "/api/summary")[1]["daemon"]["streamed"] is False
            assert _json(b.url + "/api/summary", headers={"Authorization": f"Bearer {token}"})[1]["daemon"]["streamed"]
            driver = headless_chromium()
            try:
                driver.get(a.url + "/")
                pill = driver.find_element("css selector", '[data-field="daemon-state"]')
                assert wait_for(lambda: "the record alone" in pill.text, 10), pill.text
                # No daemon's throughput, queue, threshold nor reloads where no daemon is followed.
                live = driver.find_elements("css selector", "#daemon .stat.live")
                assert len(live) == 4 and not any(stat.is_displayed() for stat in live), [s.text for s in live]
            finally:
                driver.quit()
            status, body = _json(b.url + picture)  # without the token: B's gate stands
            assert status == 401, body
            # B's own page asks its peer for what is not on its disk
            status, body = _json(b.url + f"/api/image/line4-cam/1/overlay?result={rows[1]['id']}",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert status == 404 and counting.asked == [f"/api/image/line4-cam/1/overlay?result={rows[1]['id']}"]
        assert "dashboard peer " + dead + " did not answer" in (tmp_path / "a.log").read_text()
    finally:
        counting.close()


def test_reviewed_evidence_on_another_boxs_disk_is_exported_from_that_boxs_dashboard(tmp_path):
    """`vqad records --export-reviewed` on a record that boxes share left out the reviewed
    results of other lines as if their files were gone. With --peers it asks those boxes'
    dashboards for the frames, and names what none of them has."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    rows = _recorded_fails(url, tmp_path / "evidence", "line4-cam", 3)
    Record(url).review("line4-cam", 0, "defect", kind="scratch", by="ann")
    Record(url).review("line4-cam", 1, "false_reject", by="ann")
    Record(url).review("line4-cam", 2, "false_reject", by="ann")
    box_b, folder = tmp_path / "box-b", f"evidence-{uuid.uuid4().hex}/line4-cam"  # relative: each box's own
    (box_b / folder).mkdir(parents=True)
    shutil.copy(rows[0]["evidence_frame"], box_b / folder / "0.png")
    engine = create_engine(url)
    with engine.begin() as conn:  # frames 0 and 1 on box B's disk alone (1 removed there); 2 on this one's
        for frame_id in (0, 1):
            conn.execute(sa.text(f"UPDATE results SET evidence_frame = '{folder}/{frame_id}.png' "
                                 f"WHERE frame_id = {frame_id}"))  # fmt: skip
    engine.dispose()
    token = "plant-token-0123456789"
    nowhere = f"ipc://{tmp_path}/no-daemon"
    alone = run_vqad("records", url, "--export-reviewed", tmp_path / "alone")
    assert "2 whose evidence file is not on this machine's disk (a copy of the evidence folder: --evidence-dir; " \
           "on a record that boxes share, another box's: --peers)" in alone.stderr, alone.stderr  # fmt: skip
    with DashboardProcess("--record", url, "--results", nowhere, "--token", token, log_path=tmp_path / "b.log",
                          cwd=box_b) as b:  # fmt: skip
        done = run_vqad("records", url, "--export-reviewed", tmp_path / "out", "--peers", b.url,
                        env={"VQAD_PEERS_TOKEN": token})  # fmt: skip
        refused = run_vqad("records", url, "--export-reviewed", tmp_path / "refused", "--peers", b.url, check=False)
    assert (tmp_path / "out" / "test" / "scratch" / "line4-cam_0.png").read_bytes() == (box_b / folder / "0.png"
                                                                                       ).read_bytes()  # fmt: skip
    assert (tmp_path / "out" / "train" / "good" / "line4-cam_2.png").is_file()  # this box's own
    assert "1 image -> " in done.stdout and "2 images -> " not in done.stdout, done.stdout
    assert f"line4-cam frame 1 (result {rows[1]['id']}): {b.url}: not on its disk either" in done.stderr
    assert "1 reviewed result left out: 1 whose evidence file is on neither this machine's disk nor a peer's" \
           in done.stderr, done.stderr  # fmt: skip
    assert refused.returncode == 0 and f"{b.url}: a token is required" in refused.stderr, refused.stderr
    bad = run_vqad("records", url, "--peers", b.url, check=False)
    assert bad.returncode != 0 and "--peers fetches the evidence that --export-reviewed writes" in bad.stderr


def test_a_dashboards_peers_are_urls_and_one_without_a_stream_needs_a_record():
    with pytest.raises(ValueError, match="peers: each a dashboard's http"):
        DashboardConfig(peers=("line4-box:8080",))
    with pytest.raises(ValueError, match="without a results endpoint needs a record"):
        DashboardConfig(results="")
    assert DashboardConfig(results="", record="sqlite:///line.db").results == ()


def test_the_page_and_its_links_work_behind_a_proxy_that_serves_it_under_a_path(line, tmp_path):
    """A plant's gateway serves each line's dashboard under a path of its own (/line3/) and takes
    it off before passing the request on: the page streams, draws a reject's overlay and takes
    the token from the address bar; the API's image links carry the path."""
    daemon, prefix = line["daemon"], "/line3"
    dashboard = DashboardProcess(
        "--results", daemon.results, "--record", line["url"], "--root-path", prefix,
        log_path=tmp_path / "dashboard.log", env={"VQAD_DASHBOARD_TOKEN": TOKEN},
    ).start(headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    driver = headless_chromium()
    sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
    try:
        with PrefixProxy(prefix, dashboard.port) as proxy:
            base = proxy.url + prefix
            driver.get(f"{base}/?token={TOKEN}")
            assert driver.current_url == base + "/"  # the token left the address bar, the path stayed
            assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
            run_vqad("ctl", line["control"], "set-threshold", "1e-9", "--reason", "proxy test", "--by", "test")
            cam.send(frame_message("line3cam", 1, cv2.imread(str(line["images"][0])), "raw"))
            assert [h["decision"] for h, _ in sub.collect(1, timeout=30)] == ["fail"]
            drawn = (  # in view: the tiles load lazily, and the record's other cameras come first
                'document.querySelector("[data-camera=line3cam]")?.scrollIntoView();'
                'return [...document.querySelectorAll("[data-camera=line3cam] .reject img")].map(i => i.naturalWidth)'
            )
            assert wait_for(lambda: (widths := driver.execute_script(drawn)) and all(widths), timeout=10)
            status, body = _json(f"{base}/api/rejects?camera=line3cam", {"Authorization": f"Bearer {TOKEN}"})
            overlay = body["rejects"][0]["images"]["overlay"]
            assert status == 200 and overlay.startswith(f"{prefix}/api/image/line3cam/1/overlay"), overlay
            assert _status(proxy.url + overlay, {"Authorization": f"Bearer {TOKEN}"}) == 200
            described = _json(f"{base}/api/openapi.json", {"Authorization": f"Bearer {TOKEN}"})[1]
            assert described["servers"] == [{"url": prefix}]  # a client generated from it finds the API
            assert driver.get_cookie("vqad_token")["path"] == prefix
            assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert "GET /api/events" in proxy.requests and "GET /" in proxy.requests and not proxy.refused, proxy.refused
    finally:
        run_vqad("ctl", line["control"], "set-threshold", "1.0", "--reason", "proxy test done", check=False)
        sub.close()
        cam.close()
        driver.quit()
        dashboard.stop()


def _publish_rejects(sock, start: int, n: int, rate: float = 100.0, cameras: int = 0, maps: bool = True) -> None:
    """n results at `rate` a second, every one a reject with a small map (`maps`, else without
    one): of camera "storm", or with `cameras`, of cameras "cam<i>" for i from `start`."""
    amap = bytes(16 * 16) if maps else b""
    map_info = {"shape": [16, 16], "dtype": "uint8", "scale": 0.01} if maps else None
    for i in range(start, start + n):
        header = result_header(f"cam{i}" if cameras else "storm", i, time.time_ns(), "ok", 1.0,
                               {"name": "m", "sha256": "ab" * 32}, score=2.0, decision="fail", batch_size=1,
                               map_info=map_info)  # fmt: skip
        sock.send_multipart(result_message(header, amap))
        time.sleep(1 / rate)


@contextlib.contextmanager
def _page_of_published_results(tmp_path: Path, *args: str) -> Iterator[tuple[zmq.Socket, object]]:
    """(a PUB socket the dashboard, with `args`, takes its results from, a headless browser
    showing its page)."""
    endpoint = f"ipc://{tmp_path}/results"
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind(endpoint)
    dashboard = DashboardProcess("--results", endpoint, *args, log_path=tmp_path / "dashboard.log").start()
    driver = headless_chromium()
    try:
        driver.get(dashboard.url + "/")
        yield sock, driver
    finally:
        driver.quit()
        dashboard.stop()
        sock.close(linger=0)


def _recorded_master_parts(url: str, evidence: Path, camera: str, parts: list[tuple[str, str]]) -> None:
    """Red rabbits of `camera` in a new record: (part_id, decision), each one that must fail; a
    decision "unfit" is a fail of the camera health gate (a frozen frame)."""
    from edge.record import RecordWriter
    from edge.results import Result

    writer = RecordWriter(url, evidence).start()
    for frame_id, (part_id, decision) in enumerate(parts):
        unfit, decision = decision == "unfit", "fail" if decision == "unfit" else decision
        header = result_header(camera, frame_id, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32},
                               score=2.0, decision=decision, batch_size=1, part_id=part_id)  # fmt: skip
        header["master"] = {"expected": "fail", "ok": decision == "fail" and not unfit}
        if unfit:
            header["health"] = {"ok": False, "reasons": ["frozen"]}
        writer.put(Result(header, recv_ns=time.time_ns()), time.time_ns())
    assert wait_for(lambda: writer.recorded == len(parts), 10)
    writer.close()


def test_a_reject_streamed_without_a_picture_says_so_on_its_tile(tmp_path):
    """`publish_maps: false` and `publish_frames: false`: a reject has no picture to draw. Its
    tile was a black square, the same as a picture still loading."""
    with _page_of_published_results(tmp_path) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
        _publish_rejects(sock, 0, 3, maps=False)
        tiles = wait_for(lambda: len(t := driver.find_elements("css selector", ".reject")) == 3 and t, 10)
        assert all("no picture kept" in tile.text for tile in tiles), [tile.text for tile in tiles]
        assert not driver.find_elements("css selector", ".reject img")


def test_a_cameras_fail_rate_alarm_turns_its_tile_and_card_red_and_says_since_when(tmp_path):
    """A camera that fails part after part showed a rising fail rate among the other figures:
    nothing on the page told an operator across the room that its daemon had raised the
    fail-rate alarm. Its tile and card turn red and say so while the heartbeat names it."""
    since_ns = time.time_ns() - 60 * 10**9
    alarm = {"limit": 0.2, "window": 100, "alarms": {"cam1": {"fails": 23, "of": 100, "since_ns": since_ns}}}
    tiles = """return [...document.querySelectorAll('#overview a.glance')]
               .map(t => [t.dataset.glance, t.className, t.innerText])"""
    card = """const card = document.querySelector('[data-camera="' + arguments[0] + '"].camera');
              const pill = card.querySelector('[data-field="fail-rate-alarm"]');
              return [card.className, pill.hidden, pill.textContent]"""
    with _page_of_published_results(tmp_path) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)

        def beating(fail_rate, check):
            _beat_with_two_cameras(sock, fail_rate=fail_rate)
            return check()

        red = lambda t: len(t) == 2 and "bad" in t[0][1]  # noqa: E731
        shown = wait_for(lambda: beating(alarm, lambda: red(t := driver.execute_script(tiles)) and t), 20, every=0.2)
        assert shown, driver.execute_script(tiles)
        (cam1, cam1_class, cam1_text), (cam5, cam5_class, cam5_text) = shown
        assert "fail-rate alarm: 23 of the last 100 failed (limit 20%) since" in cam1_text, cam1_text
        assert "ok" in cam5_class and "fail-rate" not in cam5_text, cam5_text
        classes, hidden, text = driver.execute_script(card, "cam1")
        assert "fail-rate-alarm" in classes and not hidden and text.startswith("fail-rate alarm: 23 of the last 100")
        assert driver.execute_script(card, "cam5")[1] is True
        summary = _json(dashboard_url(driver) + "/api/summary")[1]["cameras"]
        assert summary["cam1"]["fail_rate_alarm"] == {
            "fails": 23, "of": 100, "since_ns": since_ns, "window": 100, "limit": 0.2, "mostly_unfit": False,
        }  # fmt: skip
        assert summary["cam5"]["fail_rate_alarm"] is None
        title = 'return document.querySelector(\'[data-camera="cam1"] [data-field="fail-rate-alarm"]\').title'
        assert driver.execute_script(title).endswith("see to the process (a tool, the material), then to the camera "
                                                     "and its threshold")  # fmt: skip
        dark = {**alarm, "alarms": {"cam1": {"fails": 23, "of": 100, "since_ns": since_ns, "unfit": 20}}}  # a lamp out
        assert wait_for(lambda: beating(dark, lambda: "see to the camera" in driver.execute_script(title)), 20,
                        every=0.2), driver.execute_script(title)  # fmt: skip
        assert "23 of the last 100 failed, 20 of them unfit frames" in driver.execute_script(card, "cam1")[2]
        cleared = {**alarm, "alarms": {}}
        assert wait_for(lambda: beating(cleared, lambda: driver.execute_script(card, "cam1")[1] is True), 20, every=0.2)
        assert "ok" in driver.execute_script(tiles)[0][1]
        text = driver.execute_script("return failRateAlarmText(arguments[0])", {**summary["cam1"]["fail_rate_alarm"],
                                                                                "unfit": 20})  # fmt: skip
        assert text.startswith("fail-rate alarm: 23 of the last 100 failed, 20 of them unfit frames (limit 20%)"), text


def test_a_master_part_that_missed_its_verdict_turns_its_camera_red_until_it_gets_it(tmp_path):
    """A red rabbit that passed is the line's proof that its inspection lets that defect through.
    The camera's card says which master part got what, and its tile and card stay red until
    that master part gets its verdict: another one's right check proves nothing of it."""
    card = """const card = document.querySelector('[data-camera="' + arguments[0] + '"].camera');
              const pill = card.querySelector('[data-field="master-parts"]');
              return [card.className, pill.hidden, pill.className, pill.textContent]"""
    tile = "return document.querySelector('#overview a[data-glance=\"cam1\"]')?.className || ''"
    wrong = {"camera": "cam1", "part_id": "RR-3", "frame_id": 4, "expected": "fail", "decision": "pass",
             "score": 0.8, "ok": False, "ts_ns": time.time_ns(), "named_by": "ann"}  # fmt: skip
    other = {**wrong, "part_id": "RR-4", "frame_id": 5, "decision": "fail", "score": 3.1, "ok": True}
    url = f"sqlite:///{tmp_path / 'line.db'}"
    _recorded_master_parts(url, tmp_path / "evidence", "cam5", [("RR-1", "pass"), ("RR-2", "fail"), ("RR-3", "unfit")])
    with _page_of_published_results(tmp_path, "--record", url) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)

        def beating(checks, check, threshold=1.0):
            _beat_with_two_cameras(sock, master_parts={"cam1": {c["part_id"]: c for c in checks}},
                                   model={"name": "m", "sha256": "ab" * 32}, threshold=threshold)  # fmt: skip
            return check()

        shown = lambda: driver.execute_script(card, "cam1")  # noqa: E731
        red = lambda: "bad" in driver.execute_script(tile)  # noqa: E731
        assert wait_for(lambda: beating([wrong, other], red), 20, every=0.2)
        classes, hidden, pill_class, text = shown()
        assert "master-wrong" in classes and not hidden and "bad" in pill_class, shown()
        # In the daemon's log's words (edge.master.master_words), who named its frame included.
        assert text.startswith("master part RR-3 (named by ann) on camera cam1: pass, expected fail ("), text
        assert "master part RR-3 (named by ann) on camera cam1: pass, expected fail" in driver.execute_script(
            tile.replace("className", "innerText")
        )
        assert driver.execute_script(card, "cam5")[1] is True  # no master part seen: no pill
        summary = _json(dashboard_url(driver) + "/api/summary")[1]["cameras"]
        # The outcome a daemon that did not name it leaves out, worked out (edge.master.outcome_of).
        said = {m["part_id"]: m.pop("said") for m in summary["cam1"]["master_parts"]}  # as the daemon's log says it
        assert said == {"RR-3": "master part RR-3 (named by ann) on camera cam1: pass, expected fail",
                        "RR-4": "master part RR-4 (named by ann) on camera cam1: fail, as expected"}  # fmt: skip
        assert summary["cam1"]["master_parts"] == [{**wrong, "proves_now": True, "outcome": "wrong"},
                                                   {**other, "proves_now": True, "outcome": "right"}]  # fmt: skip
        assert summary["cam5"]["master_parts"] is None
        # A check whose frame got no decision (its camera paused), or that the camera health gate
        # failed, is no proof either way: amber, not the red of a wrong one, and it says why.
        errored = {**wrong, "decision": None, "score": None, "error": "camera paused by the line's control"}
        unfit = {**other, "decision": "fail", "ok": False, "unfit": "frozen"}
        assert wait_for(lambda: beating([errored, unfit], lambda: "no decision" in shown()[3]), 20, every=0.2), shown()
        assert shown()[3].startswith("master part RR-3 (named by ann) on camera cam1: no decision (camera paused "
                                     "by the line's control), expected fail (")  # fmt: skip
        assert shown()[3].endswith(") and 1 more not judged"), shown()
        assert "warn" in shown()[2] and "master-wrong" not in shown()[0], shown()
        assert "warn" in driver.execute_script(tile) and not red(), driver.execute_script(tile)
        title = 'return document.querySelector(\'[data-camera="cam1"].camera [data-field="master-parts"]\').title'
        assert driver.execute_script(title).startswith("the master part's frame was not judged by the model: no proof")
        # A wrong check among them is said first, in red.
        assert wait_for(lambda: beating([errored, unfit, {**wrong, "part_id": "RR-5"}], red), 20, every=0.2)
        assert shown()[3].startswith("master part RR-5 (named by ann) on camera cam1: pass, expected fail (")
        assert not shown()[3].endswith("more wrong"), shown()  # the two not judged are not wrong
        # A right check whose master part was run since on a paused camera: that run, in amber; a
        # wrong one stands, whatever came since (edge.master keeps such a run as `unjudged`).
        attempt = {**errored, "ts_ns": time.time_ns(), "outcome": "unproven"}
        right_then = {**wrong, "decision": "fail", "ok": True, "unjudged": attempt}
        assert wait_for(lambda: beating([right_then, other], lambda: "warn" in shown()[2]), 20, every=0.2), shown()
        assert "RR-3 (named by ann) on camera cam1: no decision (camera paused by the line's" in shown()[3], shown()
        assert wait_for(lambda: beating([{**wrong, "unjudged": attempt}, other], red), 20, every=0.2)
        assert shown()[3].startswith("master part RR-3 (named by ann) on camera cam1: pass, expected fail (")
        assert "bad" in shown()[2], shown()
        right = {**wrong, "decision": "fail", "ok": True}
        assert wait_for(lambda: beating([right, other], lambda: "ok" in shown()[2]), 20, every=0.2), shown()
        assert "master-wrong" not in shown()[0] and shown()[3].startswith("master parts right: 2, the latest at ")
        # A check proves the model and threshold it was made on: the daemon serves model abab… at
        # 1.0, then at 1.2 (vqad ctl set-threshold: cam1's results since, if any, would say so).
        before = {**right, "model_sha256": "cd" * 32, "threshold": 1.0}
        now = {**other, "model_sha256": "ab" * 32, "threshold": 1.0}
        assert wait_for(lambda: beating([before, now], lambda: "warn" in shown()[2], threshold=1.2), 20,
                        every=0.2), shown()  # fmt: skip
        assert shown()[3].startswith(
            "master parts not run since the model, threshold or inspection mask changed (the last at "
        )
        assert wait_for(lambda: beating([before, now], lambda: "ok" in shown()[2]), 20, every=0.2), shown()
        assert shown()[3].endswith(" (1 more before the model, threshold or inspection mask changed)"), shown()
        # The day's tally counts a camera's master parts, and says in red that one was wrong.
        cell = """const row = document.querySelector('[data-camera="cam5"] [data-field="daily"] tr');
                  return row ? [row.children[10].textContent, row.children[10].className] : null"""
        said = ["3 (1 wrong, 1 not judged)", "bad"]  # RR-3's frame came frozen: the gate's fail proves nothing
        assert wait_for(lambda: driver.execute_script(cell) == said, 20), driver.execute_script(cell)
        # Its fails name the master parts' among them: RR-2 failed as it must, and is no reject
        # of the line's (the fail rate beside it counts products alone; RR-3's is the gate's).
        fails = cell.replace("children[10]", "children[3]").replace(".className", ".title")
        shown_fails = driver.execute_script(fails)
        assert shown_fails[0] == "2 (1 master part)" and "not the line's rejects" in shown_fails[1], shown_fails
        # A master part's reject says its known decision, for the review dialog.
        header = result_header("cam1", 99, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32}, score=2.0,
                               decision="fail", batch_size=1, part_id="RR-4")  # fmt: skip
        sock.send_multipart(result_message({**header, "master": {"expected": "fail", "ok": True}}, b""))
        rejects = lambda: _json(dashboard_url(driver) + "/api/rejects?camera=cam1")[1]["rejects"]  # noqa: E731
        shown = wait_for(lambda: [r for r in rejects() if r["part_id"] == "RR-4"], 10)
        assert shown and shown[0]["master"] == "fail" and all(r["master"] is None for r in rejects()[1:]), shown
        assert shown[0]["master_outcome"] == "right" and rejects()[1]["master_outcome"] is None, shown
        recorded = _json(dashboard_url(driver) + "/api/results?camera=cam5")[1]["results"]
        assert [(r["part_id"], r["master_outcome"]) for r in recorded] == [
            ("RR-3", "unproven"), ("RR-2", "right"), ("RR-1", "wrong")], recorded  # fmt: skip
        captions = lambda: driver.execute_script(  # noqa: E731 (the gallery's tiles' captions)
            "return [...document.querySelectorAll('[data-camera=\"cam1\"] .reject span')].map(s => s.textContent)"
        )
        marked = lambda: any(c.startswith("RR-4 ") and c.endswith(" master") for c in captions())  # noqa: E731
        assert wait_for(marked, 10), captions()
        label = 'return document.querySelector(\'[data-camera="cam1"] [data-field="fail-label"]\').textContent'
        assert wait_for(lambda: driver.execute_script(label) == "fail, 1 master part", 10), driver.execute_script(label)
        # Its verdict is known: the dialog takes no review of it, nor does the record.
        driver.execute_script("[...document.querySelectorAll('[data-camera=\"cam1\"] .reject')]"
                              ".find((t) => t.textContent.includes('RR-4 ')).click()")  # fmt: skip
        said = wait_for(lambda: driver.find_element("id", "review-status").text, 5)
        assert said == "A master part's verdict is known (it must fail): it is not reviewed.", said
        assert not driver.find_element("id", "review-false-reject").is_enabled()
        review = json.dumps({"camera_id": "cam5", "frame_id": 1, "verdict": "false_reject"}).encode()
        status, body = _json(dashboard_url(driver) + "/api/review", {"Content-Type": "application/json"}, review)
        assert status == 400 and "is master part RR-2, whose verdict is known" in body["error"], (status, body)


def test_a_camera_known_from_the_record_shows_what_its_daemons_heartbeat_says_of_it(tmp_path):
    """A line at rest, or a dashboard started since its camera last sent: the card came from the
    record, and the heartbeat's word on that camera (a wrong master part, which stands until it
    is checked right; a pause) was not shown, since no result had named its daemon."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    _recorded_master_parts(url, tmp_path / "evidence", "standing", [("RR-1", "pass")])
    wrong = {"camera": "standing", "part_id": "RR-1", "frame_id": 0, "expected": "fail", "decision": "pass",
             "score": 0.8, "ok": False, "ts_ns": time.time_ns()}  # fmt: skip
    beat = {"ts_ns": time.time_ns(), "every_s": 0.2, "run": "r", "published": 1, "threshold": 1.0, "stalled": False,
            "record": None, "paused": ["standing"], "master_parts": {"standing": {"RR-1": wrong}}}  # fmt: skip
    pill = """const card = document.querySelector('[data-camera="standing"].camera');
              const pill = card && card.querySelector('[data-field="master-parts"]');
              return pill && !pill.hidden ? [pill.className, pill.textContent, card.className] : null"""
    with _page_of_published_results(tmp_path, "--record", url) as (sock, driver):

        def shown():
            sock.send_multipart(heartbeat_message({**beat, "ts_ns": time.time_ns()}))
            return driver.execute_script(pill)

        said = wait_for(shown, 20, every=0.2)
        assert said and "bad" in said[0], said
        assert said[1].startswith("master part RR-1 on camera standing: pass, expected fail"), said
        assert "paused" in said[2], said
        cameras = _json(dashboard_url(driver) + "/api/summary")[1]["cameras"]
        assert cameras["standing"]["recorded_only"] and cameras["standing"]["paused"]


def test_a_reject_its_killed_run_never_recorded_says_so_and_is_not_asked_for_again(tmp_path):
    """A daemon killed before its writer committed its last rejects: the page showed them as
    "not recorded yet" for good, asked the record for them twice a second for as long as they
    stayed in the gallery, and their review was a 404. Once the daemon's next run beats, such a
    reject says why it will never be recorded, and the page neither asks again nor offers a
    review."""
    url = f"sqlite:///{tmp_path / 'line.db'}"
    from edge.record import Record

    Record(url).close()  # a record that holds none of the stream's results
    recording = {"pending": 0, "behind_s": 0.0, "unrecorded": 0, "error": None, "set_aside": None}
    beat = {"ts_ns": 0, "every_s": 0.2, "published": 1, "threshold": 1.0, "stalled": False, "record": recording,
            "paused": []}  # fmt: skip
    header = result_header("cam1", 7, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32}, score=2.0,
                           decision="fail", batch_size=1, part_id="SN-7")  # fmt: skip
    rejects_asked = "return window.vqadStats.galleryFetches"
    caption = "return document.querySelector('[data-camera=\"cam1\"] .reject .reviewed')?.textContent"
    with _page_of_published_results(tmp_path, "--record", url) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
        rejects = lambda: _json(dashboard_url(driver) + "/api/rejects?camera=cam1")[1]["rejects"]  # noqa: E731

        def beating(run: str) -> bool:
            sock.send_multipart(heartbeat_message({**beat, "ts_ns": time.time_ns(), "run": run}))
            return _json(dashboard_url(driver) + "/api/summary")[1]["daemon"].get("up")

        assert wait_for(lambda: beating("killed"), 10)
        sock.send_multipart(result_message({**header, "run": "killed", "seq": 0}, b""))
        (shown,) = wait_for(rejects, 10)
        assert not shown["recorded"] and shown["unrecordable"] is None, shown  # its writer may yet commit it
        # Another daemon's run on the same socket (not one that follows it) proves nothing lost.
        sock.send_multipart(heartbeat_message({**beat, "ts_ns": time.time_ns(), "run": "other"}))
        time.sleep(1.0)
        assert rejects()[0]["unrecordable"] is None, rejects()
        follows = {"run": "next", "previous_runs": ["earlier", "killed"]}
        sock.send_multipart(heartbeat_message({**beat, "ts_ns": time.time_ns(), **follows}))
        assert wait_for(lambda: rejects()[0]["unrecordable"], 10), rejects()
        assert rejects()[0]["unrecordable"].startswith("the daemon run that decided it ended before recording it")
        # The page's next look marks its tile, then stops asking.
        assert wait_for(lambda: driver.execute_script(caption) == "not recorded", 10), driver.execute_script(caption)
        asked = driver.execute_script(rejects_asked)
        time.sleep(2.0)  # four of the page's half-second looks, were it still waiting for the record
        assert driver.execute_script(rejects_asked) - asked <= 1, (asked, driver.execute_script(rejects_asked))
        driver.execute_script("document.querySelector('[data-camera=\"cam1\"] .reject').click()")
        said = wait_for(lambda: driver.find_element("id", "review-status").text, 5)
        assert said.startswith("Not in the record: the daemon run that decided it ended before recording it"), said
        assert not driver.find_element("id", "review-defect").is_enabled()
        driver.find_element("css selector", "#detail .close button").click()
        # A search for its part finds it, though the record has no row of it.
        driver.find_element("id", "part-query").send_keys("SN-7", Keys.ENTER)
        status = lambda: driver.find_element("id", "part-status").text  # noqa: E731
        assert wait_for(lambda: status() == "1 result (1 not in the record)", 10), status()
        said = driver.find_element("id", "review-status").text
        assert said.startswith("Not in the record: the daemon run that decided it ended"), said
        driver.find_element("css selector", "#detail .close button").click()
        # A daemon started without a record: none of its rejects will be in the page's record.
        sock.send_multipart(heartbeat_message({**beat, "ts_ns": time.time_ns(), "run": "bare", "record": None}))
        sock.send_multipart(result_message({**header, "frame_id": 9, "run": "bare", "seq": 0}, b""))
        newest = lambda: rejects()[0]  # noqa: E731
        assert wait_for(lambda: newest()["frame_id"] == 9 and newest()["unrecordable"], 10), newest()
        assert newest()["unrecordable"].startswith("its daemon keeps no record (vqad serve --record)"), newest()


def _beat_with_two_cameras(sock: zmq.Socket, **state) -> None:
    """A daemon's heartbeat saying `state`, and a reject of cam1 and of cam5: one turn of a line
    polled every 0.2 s, as the daemon beats."""
    beat = {"ts_ns": time.time_ns(), "every_s": 0.2, "run": "r", "published": 2, "threshold": 1.0,
            "stalled": False, "record": None, "paused": [], **state}  # fmt: skip
    sock.send_multipart(heartbeat_message(beat))
    _publish_rejects(sock, 1, 1, cameras=1)
    _publish_rejects(sock, 5, 1, cameras=1)


def dashboard_url(driver) -> str:
    """The page's origin, from the browser that shows it."""
    return driver.execute_script("return location.origin")


def test_the_cameras_cards_stand_in_the_order_of_their_ids_however_late_one_first_sent(tmp_path):
    """A card was appended when its camera first appeared on the page: a camera that started
    after the page was opened, or a record's camera known a moment later, stood last, and
    elsewhere on the next visit. The cards follow the summary's order (by id)."""
    sections = "return [...document.querySelectorAll('section.camera')].map(e => e.dataset.camera)"
    with _page_of_published_results(tmp_path) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
        _publish_rejects(sock, 5, 1, cameras=1)
        assert wait_for(lambda: driver.execute_script(sections) == ["cam5"], 10), driver.execute_script(sections)
        _publish_rejects(sock, 1, 1, cameras=1)
        _publish_rejects(sock, 8, 1, cameras=1)
        shown = wait_for(lambda: len(ids := driver.execute_script(sections)) == 3 and ids, 10)
        assert shown == ["cam1", "cam5", "cam8"], shown


def test_a_line_of_cameras_at_a_glance_leads_to_each_card_and_a_stations_screen_keeps_to_its_own(tmp_path):
    """A line of 12 cameras was 12 cards of about 900 px each: an operator scrolled 10,000 px to
    find the camera that failed or went silent. A tile per camera above the cards gives its
    latest decision, fail rate and last frame, and a click brings its card under the header;
    `?camera=ID,PATTERN*` keeps a station's screen to its own cameras."""
    tiles = "return [...document.querySelectorAll('#overview a.glance')].map(t => [t.dataset.glance, t.innerText])"
    sections = "return [...document.querySelectorAll('section.camera')].map(e => e.dataset.camera)"
    # How far under the header cam8's card begins, and whether the page is scrolled to its end
    # (which a last card may reach before its top reaches the header).
    card_top = """const header = document.querySelector('header').getBoundingClientRect().bottom;
                  const end = window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 1;
                  const card = document.querySelector('[data-camera="cam8"].camera');
                  return [card ? card.getBoundingClientRect().top - header : -1, end, window.scrollY]"""
    with _page_of_published_results(tmp_path) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
        _publish_rejects(sock, 8, 1, cameras=1)
        assert wait_for(lambda: driver.execute_script(sections) == ["cam8"], 10)
        assert not driver.find_element("id", "overview").is_displayed()  # one camera: its card says it all
        _publish_rejects(sock, 1, 1, cameras=1)
        _publish_rejects(sock, 5, 1, cameras=1)
        shown = wait_for(lambda: len(t := driver.execute_script(tiles)) == 3 and t, 10)
        assert [camera for camera, _ in shown] == ["cam1", "cam5", "cam8"], shown
        assert all("FAIL 2.00" in text and "fail rate 5 min 100.0%" in text and "last frame" in text
                   for _, text in shown), shown  # fmt: skip
        assert driver.execute_script(card_top)[2] == 0
        driver.find_element("css selector", '#overview a[data-glance="cam8"]').click()
        went = wait_for(lambda: (at := driver.execute_script(card_top))[2] > 0 and (0 <= at[0] < 40 or at[1]), 5)
        assert went, driver.execute_script(card_top)
        assert 0 <= driver.execute_script(card_top)[0] < driver.execute_script("return window.innerHeight") / 2
        assert driver.execute_script("return location.hash") == "#cam8"
        driver.refresh()  # the link kept: the page opens at that card
        went = wait_for(lambda: (at := driver.execute_script(card_top))[2] > 0 and (0 <= at[0] < 40 or at[1]), 10)
        assert went, driver.execute_script(card_top)

        driver.get(driver.current_url.split("#")[0] + "?camera=cam5,cam8")
        assert wait_for(lambda: driver.execute_script(sections) == ["cam5", "cam8"], 10), driver.execute_script(
            sections
        )
        note = driver.find_element("id", "overview-filter")
        assert note.text == "2 of 3 cameras (?camera=cam5,cam8) · show all" and driver.title == "vqad: cam5,cam8"
        driver.get(driver.current_url.split("?")[0] + "?camera=cam1*")
        assert wait_for(lambda: driver.execute_script(sections) == ["cam1"], 10), driver.execute_script(sections)
        driver.get(driver.current_url.split("?")[0] + "?camera=line9")
        empty = driver.find_element("id", "no-cameras")
        assert wait_for(lambda: empty.text == "None of the 3 cameras is one of ?camera=line9.", 10), empty.text
        driver.find_element("link text", "show all").click()
        assert wait_for(lambda: driver.execute_script(sections) == ["cam1", "cam5", "cam8"], 10)


# Each camera's latest picture and reject tiles as the page draws them: {camera: [[w, h] of the
# latest, [w, h] of each tile's picture, whether the latest stays inside its card]}.
PICTURE_BOXES = """
const boxes = {};
for (const card of document.querySelectorAll("[data-camera]")) {
  const latest = card.querySelector('[data-field="latest-image"]').getBoundingClientRect();
  const tiles = [...card.querySelectorAll(".reject img")].map((i) => [i.clientWidth, i.clientHeight]);
  boxes[card.dataset.camera] = [[latest.width, latest.height], tiles,
                                latest.right <= card.getBoundingClientRect().right];
}
return boxes;
"""


def test_a_tall_part_and_a_line_scan_strip_fill_their_pictures_boxes(tmp_path):
    """A commutator 2.5 times as tall as wide, and a line-scan strip of 256 x 4096: in the square
    boxes of the latest picture and the reject tiles they were slivers between black bars (a
    strip 8 px high in a tile of 128). Each box now covers about the same area in its frame's
    shape, up to 16:1."""
    shapes = {"tall": ([1250, 500], [128, 48]), "strip": ([256, 4096], [16, 256])}  # frame, map: [h, w]
    with _page_of_published_results(tmp_path) as (sock, driver):
        assert wait_for(lambda: driver.execute_script("return window.vqadStats && window.vqadStats.events"), 10)
        for i in range(4):
            for camera, (frame_shape, map_shape) in shapes.items():
                header = result_header(camera, i, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32},
                                       score=2.0, decision="fail", batch_size=1,
                                       map_info={"shape": map_shape, "dtype": "uint8", "scale": 0.01})  # fmt: skip
                header["frame_shape"] = frame_shape
                sock.send_multipart(result_message(header, bytes(map_shape[0] * map_shape[1])))
            time.sleep(0.05)

        def drawn():
            boxes = driver.execute_script(PICTURE_BOXES)
            loaded = driver.execute_script("return document.querySelectorAll('.reject img.loading').length") == 0
            sized = all(c in boxes and len(boxes[c][1]) == 4 and boxes[c][0][1] > 30 for c in shapes)
            return loaded and sized and boxes

        boxes = wait_for(drawn, 15)
        assert boxes, driver.execute_script(PICTURE_BOXES)
        (latest_w, latest_h), tiles, inside = boxes["tall"]
        assert abs(latest_h / latest_w - 2.5) < 0.1 and 380 < latest_h < 420 and inside, boxes
        assert all(abs(h / w - 2.5) < 0.2 and 190 < h < 215 for w, h in tiles), boxes
        (latest_w, latest_h), tiles, inside = boxes["strip"]
        assert abs(latest_w / latest_h - 16) < 0.5 and inside, boxes
        assert all(abs(w / h - 16) < 0.5 and w == 512 for w, h in tiles), boxes


def test_a_page_left_open_through_a_storm_of_rejects_does_not_grow(tmp_path):
    """The line's monitor shows the page for months. Each gallery refresh kept the tiles it
    replaced (a click handler's closure held them): 60 DOM nodes a refresh, for good. And a
    camera the dashboard no longer keeps kept its section, frozen at its last state."""
    from edge.dashboard.browser import page_footprint

    # Measured where the gallery holds its 12 tiles with their pictures loaded: a refresh
    # caught halfway (on a busy machine) holds tiles it is about to drop.
    settled = (
        "return document.querySelectorAll('[data-camera=\"storm\"] .reject').length === 12"
        " && document.querySelectorAll('.reject img.loading').length === 0"
    )
    with _page_of_published_results(tmp_path) as (sock, driver):
        _publish_rejects(sock, 0, 300)  # 3 s: the gallery full, the page settled
        assert wait_for(lambda: driver.execute_script(settled), 15)
        before, fetches = page_footprint(driver), driver.execute_script("return window.vqadStats.galleryFetches")
        _publish_rejects(sock, 300, 800)  # 8 s: a refresh every 1.5 s at most, 12 new tiles each
        assert wait_for(lambda: driver.execute_script(settled), 15)
        after = page_footprint(driver)
        refreshes = driver.execute_script("return window.vqadStats.galleryFetches") - fetches
        assert refreshes >= 4, refreshes
        assert after["nodes"] - before["nodes"] < 60 and after["listeners"] - before["listeners"] < 12, (before, after)
        # A sender that names its parts as cameras: the dashboard keeps the newest CAMERAS_SHOWN,
        # and the page drops the others' sections instead of showing their last state for good.
        _publish_rejects(sock, 0, CAMERAS_SHOWN, rate=400.0, cameras=CAMERAS_SHOWN)
        sections = "return [...document.querySelectorAll('section.camera')].map(e => e.dataset.camera)"
        shown = wait_for(
            lambda: "storm" not in (ids := driver.execute_script(sections)) and len(ids) == CAMERAS_SHOWN and ids, 10
        )
        assert shown and set(shown) == {f"cam{i}" for i in range(CAMERAS_SHOWN)}, driver.execute_script(sections)


def test_a_record_server_that_does_not_answer_costs_the_page_its_record_not_the_page(postgres_url, tmp_path):
    """The box boots before the plant's database server: the dashboard serves, says why the
    record is missing, refuses reviews for now (503), and uses the record once it answers."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
        conn.execute(sa.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
    url = postgres_url.replace("@/postgres?", f"@/{name}?")
    dashboard = DashboardProcess("--record", url, log_path=tmp_path / "dashboard.log").start()
    review = json.dumps({"camera_id": "c", "frame_id": 1, "verdict": "defect"}).encode()
    json_type = {"content-type": "application/json"}
    try:
        status, body = _json(dashboard.url + "/api/rejects")
        assert status == 200 and body["rejects"] == [] and "cannot open the record" in body["record_error"]
        status, answer = _json(dashboard.url + "/api/review", json_type, review)
        assert status == 503 and "cannot open the record" in answer["error"]
        assert _json(dashboard.url + "/api/daily")[0] == 503
        with admin.connect() as conn:
            conn.execute(sa.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        answered = wait_for(lambda: _json(dashboard.url + "/api/rejects")[1]["record_error"] is None, 15, 0.5)
        assert answered and _json(dashboard.url + "/api/review", json_type, review)[0] == 404  # no such result yet
    finally:
        dashboard.stop()
        admin.dispose()


def test_a_dashboard_makes_no_record_and_uses_the_one_its_daemon_makes(tmp_path):
    """A mistyped --record path made an empty record (and its folder): the page showed no rejects
    and no tally, and its reviews went to a file nobody reads. A box whose dashboard starts before
    its daemon's first start waits for the daemon's record instead."""
    from edge.record import RecordWriter

    database = tmp_path / "state" / "line.db"
    url = f"sqlite:///{database}"
    dashboard = DashboardProcess("--record", url, log_path=tmp_path / "dashboard.log").start()
    try:
        status, body = _json(dashboard.url + "/api/rejects")
        assert status == 200 and body["rejects"] == [], body
        assert body["record_error"] == f"no record at {database}: the daemon creates it (vqad serve --record)"
        review = json.dumps({"camera_id": "c", "frame_id": 1, "verdict": "defect"}).encode()
        assert _json(dashboard.url + "/api/review", {"content-type": "application/json"}, review)[0] == 503
        assert not database.parent.exists()  # neither the file nor its folder
        RecordWriter(url, tmp_path / "evidence").start().close()  # the daemon's first start
        assert wait_for(lambda: _json(dashboard.url + "/api/rejects")[1]["record_error"] is None, 15, 0.5)
    finally:
        dashboard.stop()
    assert "no record at" in (tmp_path / "dashboard.log").read_text()


def test_without_a_metrics_endpoint_the_heartbeat_says_whether_the_daemon_is_up(tiny_model, tmp_path):
    """The daemon's metrics are off by default: its heartbeat tells the page that it serves,
    and its silence that it is gone."""
    daemon = DaemonProcess(tiny_model, "--set", "edge.heartbeat_s=0.2").start()
    dashboard = DashboardProcess("--results", daemon.results, log_path=tmp_path / "dashboard.log").start()
    try:
        up = wait_for(lambda: (d := _json(dashboard.url + "/api/summary")[1]["daemon"])["up"] and d, 10)
        assert up and up["ready"] and up["threshold"] > 0 and up["heartbeat_age_s"] < 1.0
        source = load_package(tiny_model).meta["threshold"]  # where the threshold came from
        assert up["threshold_source"] == {
            "by": "vqad eval", "calibrated": source["calibrated"], "n_images": source["n_val"],
            "frr_upper_bound_95": source["frr_upper_bound_95"],
        }  # fmt: skip
        daemon.stop()
        down = wait_for(lambda: (d := _json(dashboard.url + "/api/summary")[1]["daemon"])["up"] is False and d, 10)
        assert down and down["heartbeat_age_s"] >= 0.6  # three intervals of 0.2 s without a beat
    finally:
        dashboard.stop()
        daemon.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_each_part_and_exits_0(sig, tmp_path):
    """systemd stops the dashboard with SIGTERM, a person with Ctrl-C. uvicorn raised the signal
    again after its shutdown, which killed the process (143) before the feed and the record
    were stopped."""
    log_path = tmp_path / "dashboard.log"
    dashboard = DashboardProcess("--record", str(tmp_path / "line.db"), log_path=log_path).start()
    assert stop_process(dashboard.proc, dashboard.log, sig, timeout=15) == 0, log_path.read_text()
    assert f"stopping on {sig.name}" in log_path.read_text() and "dashboard stopped" in log_path.read_text()


def test_the_page_says_when_the_daemon_stalls_and_when_it_runs_again(tiny_model, tmp_path):
    """An inference call that does not return (here the test backend sleeping 5 s over one
    frame) turns the header's pill red within seconds, from the heartbeat alone, and back."""
    hang = np.full((48, 48, 3), 77, np.uint8)  # tests/faulty_backend.py's "hang" frame
    env = {"WATCHDOG_USEC": "1000000", "VQAD_HANG_S": "5"}  # a stall after 0.5 s without a turn
    driver = headless_chromium()  # first: without one the test skips, and leaves no process behind
    backend = ("--backend", "tests.faulty_backend:FaultyBackend", "--set", "edge.heartbeat_s=0.2")
    try:
        with (
            DaemonProcess(tiny_model, *backend, env=env) as daemon,
            DashboardProcess("--results", daemon.results, log_path=tmp_path / "dashboard.log") as dashboard,
        ):
            state = _daemon_pill(driver)
            driver.get(dashboard.url + "/")
            assert wait_for(lambda: state() == "daemon ready", timeout=10), state()
            cam = Camera(daemon.frames)
            try:
                cam.send(frame_message("s", 0, hang, "raw"))
                assert wait_for(lambda: "daemon stalled" in state(), timeout=4), state()
                assert wait_for(lambda: state() == "daemon ready", timeout=15), state()
            finally:
                cam.close()
    finally:
        driver.quit()


class _LineDaemon:
    """A line's daemon as its results socket shows it: a real PUB socket on loopback sending
    heartbeats every 0.2 s from a thread (for at most 60 s) until `fall_silent()`, and results
    when asked."""

    def __init__(self, name: str, endpoint: str = ""):
        self.endpoint = endpoint or f"tcp://127.0.0.1:{free_loopback_port()}"
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.bind(self.endpoint)
        self.run, self.seq, self.lock = f"run-{name}", 0, threading.Lock()
        self.beating = threading.Event()
        self.beating.set()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        deadline = time.monotonic() + 60
        while self.beating.is_set() and time.monotonic() < deadline:
            beat = {"ts_ns": time.time_ns(), "every_s": 0.2, "run": self.run, "published": self.seq, "threshold": 1.0,
                    "stalled": False, "record": None, "model": {"name": "m", "sha256": "ab" * 32}}  # fmt: skip
            with self.lock:
                self.sock.send_multipart(heartbeat_message(beat))
            time.sleep(0.2)

    def publish(self, camera: str, score: float) -> None:
        header = result_header(camera, self.seq, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32},
                               score=score, decision="fail" if score > 1.0 else "pass", batch_size=1,
                               map_info={"shape": [16, 16], "dtype": "uint8", "scale": 0.01})  # fmt: skip
        with self.lock:
            self.sock.send_multipart(result_message({**header, "run": self.run, "seq": self.seq}, bytes(256)))
            self.seq += 1

    def fall_silent(self) -> None:
        self.beating.clear()
        self.thread.join(2)

    def close(self) -> None:
        self.fall_silent()
        self.sock.close(linger=0)


def test_one_page_follows_several_lines_daemons_each_named_with_its_state(tmp_path):
    """A plant's screen: `--results A,B` follows two daemons. Each camera is counted from its
    own daemon's stream and says which that is; the header has a pill per daemon from its own
    heartbeat, and one for all of them: a daemon that falls silent turns its pill and that one
    red, while the other stays ready."""
    lines = [_LineDaemon("line1"), _LineDaemon("line2")]
    driver = headless_chromium()
    dashboard = DashboardProcess("--results", ",".join(d.endpoint for d in lines), log_path=tmp_path / "d.log")
    try:
        dashboard.start()
        summary = lambda: _json(dashboard.url + "/api/summary")[1]  # noqa: E731
        assert wait_for(lambda: summary()["daemon"]["up"], 10), summary()["daemon"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(summary()["cameras"]) < 2:  # past the subscribers' slow join
            lines[0].publish("line1-cam", 0.5)
            lines[1].publish("line2-cam", 2.0)
            time.sleep(0.3)
        cameras = summary()["cameras"]
        assert cameras["line1-cam"]["daemon"] == lines[0].endpoint and cameras["line1-cam"]["fail"] == 0
        assert cameras["line2-cam"]["daemon"] == lines[1].endpoint and cameras["line2-cam"]["fail"] >= 1
        daemon = summary()["daemon"]
        assert [d["endpoint"] for d in daemon["daemons"]] == [d.endpoint for d in lines]
        assert all(d["up"] and d["ready"] for d in daemon["daemons"]) and daemon["results_missed"] == 0
        driver.get(dashboard.url + "/")
        state = _daemon_pill(driver)
        each = "return [...document.querySelectorAll('[data-field=daemons] .pill')].map(e => e.textContent)"
        assert wait_for(lambda: state() == "2 daemons ready", 10), state()
        threshold = driver.find_element("css selector", '[data-field="threshold"]').text
        assert threshold == "per camera"  # each daemon's own, on each camera's histogram
        names = [d.endpoint.removeprefix("tcp://") for d in lines]
        assert driver.execute_script(each) == [f"{names[0]}: ready", f"{names[1]}: ready"]
        model = "return document.querySelector('section[data-camera=line2-cam] [data-field=model]').textContent"
        assert driver.execute_script(model).endswith(f"· from {names[1]}")
        lines[1].fall_silent()
        assert wait_for(lambda: state() == "1 down of 2 daemons", 5), state()
        assert driver.execute_script(each) == [f"{names[0]}: ready", f"{names[1]}: down"]
        daemon = summary()["daemon"]
        assert daemon["up"] is False and [d["up"] for d in daemon["daemons"]] == [True, False]
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        dashboard.stop()
        for line in lines:
            line.close()


def test_a_daemon_never_heard_from_is_down_after_silent_after_s_and_ready_once_it_beats(tmp_path):
    """A plant's screen started while one line's box is off: that daemon sends nothing at all.
    After `silent_after_s` without a message from it, its pill is red and says for how long it
    was never heard from, as a daemon that fell silent is; once it starts, it is ready."""
    config = tmp_path / "dashboard.yaml"
    config.write_text("silent_after_s: 1.5\n")
    on, later = _LineDaemon("line1"), f"tcp://127.0.0.1:{free_loopback_port()}"
    driver = headless_chromium()
    dashboard = DashboardProcess("--config", str(config), "--results", f"{on.endpoint},{later}",
                                 log_path=tmp_path / "d.log")  # fmt: skip
    off = None
    try:
        dashboard.start()
        summary = _daemon_summary(dashboard)
        driver.get(dashboard.url + "/")
        state = _daemon_pill(driver)
        assert wait_for(lambda: state() == "1 down of 2 daemons", 10), state()
        unheard = summary()["daemons"][1]
        assert unheard["up"] is False and unheard["never_heard_s"] >= 1.5 and unheard["heartbeat_age_s"] is None
        each = "return [...document.querySelectorAll('[data-field=daemons] .pill')].map(e => e.textContent)"
        pill = driver.execute_script(each)[1]
        assert re.fullmatch(rf"{later.removeprefix('tcp://')}: down: never heard from in \d+ s", pill), pill
        assert summary()["daemons"][0]["up"] is True and "never_heard_s" not in summary()["daemons"][0]
        off = _LineDaemon("line2", later)  # the box comes up
        assert wait_for(lambda: state() == "2 daemons ready", 10), state()
        assert "never_heard_s" not in summary()["daemons"][1]
    finally:
        driver.quit()
        dashboard.stop()
        for line in (on, off):
            if line is not None:
                line.close()


class _MetricsEndpoint:
    """A daemon's Prometheus endpoint on loopback: its DaemonMetrics' text, as the daemon serves it."""

    def __init__(self, metrics: DaemonMetrics):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.metrics, endpoint = metrics, self  # replaced: a daemon restarted

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(endpoint.metrics.registry)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_several_daemons_metrics_each_give_their_own_cameras_drift_and_queue(tmp_path):
    """`--metrics` with several `--results`: one per daemon, in the same order. Each daemon's
    pill, queue and reloads are its metrics', a camera's drift alarm its own daemon's, and the
    header adds their queues."""
    lines = [_LineDaemon("line1"), _LineDaemon("line2")]
    endpoints = []
    for i, camera in enumerate(("line1-cam", "line2-cam")):
        m = DaemonMetrics()
        m.ready.set(1)
        m.queue_depth.set(2 + i)
        m.reloads.inc(i)
        m.drift_ks.labels(camera).set(0.1 + 0.3 * i)
        m.drift_alarm.labels(camera).set(i)
        endpoints.append(_MetricsEndpoint(m))
    dashboard = DashboardProcess(
        "--results", ",".join(d.endpoint for d in lines), "--metrics", ",".join(e.url for e in endpoints),
        log_path=tmp_path / "d.log",
    )  # fmt: skip
    try:
        dashboard.start()
        summary = lambda: _json(dashboard.url + "/api/summary")[1]  # noqa: E731
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(summary()["cameras"]) < 2:  # past the subscribers' slow join
            lines[0].publish("line1-cam", 0.5)
            lines[1].publish("line2-cam", 0.5)
            time.sleep(0.3)
        daemon = wait_for(lambda: (d := summary()["daemon"])["queue_depth"] == 5 and d, 10)
        assert daemon, summary()["daemon"]
        assert [(d["up"], d["ready"], d["queue_depth"], d["reloads"]) for d in daemon["daemons"]] == [
            (True, True, 2, 0), (True, True, 3, 1)
        ]  # fmt: skip
        assert daemon["metrics"] == [e.url for e in endpoints] and daemon["reloads"] == 1
        cameras = summary()["cameras"]
        assert cameras["line1-cam"]["drift"] == {"ks": 0.1, "alarm": False}
        assert cameras["line2-cam"]["drift"] == {"ks": 0.4, "alarm": True}
        endpoints[1].close()
        down = wait_for(lambda: (d := summary()["daemon"])["up"] is False and d, 10)
        assert down and [d["up"] for d in down["daemons"]] == [True, False], down
    finally:
        dashboard.stop()
        for line in lines:
            line.close()
        endpoints[0].close()


def test_the_probe_counts_the_results_published_since_it_began_and_all_of_a_restarted_daemons():
    m = DaemonMetrics()
    m.results.labels("ok", "pass").inc(7)
    m.results.labels("ok", "fail").inc(3)
    endpoint = _MetricsEndpoint(m)
    probe = MetricsProbe(endpoint.url)
    probe.start()
    try:
        assert wait_for(lambda: probe.snapshot().get("published") == 10, 5), probe.snapshot()
        assert probe.snapshot()["published_since_start"] == 0
        m.results.labels("error", "error").inc(2)
        assert wait_for(lambda: probe.snapshot().get("published_since_start") == 2, 5), probe.snapshot()
        restarted = DaemonMetrics()  # its counters begin again at 0
        restarted.results.labels("ok", "pass").inc(4)
        endpoint.metrics = restarted
        assert wait_for(lambda: probe.snapshot().get("published_since_start") == 4, 5), probe.snapshot()
    finally:
        probe.stop()
        endpoint.close()


def test_a_daemon_whose_results_do_not_reach_the_page_is_named_in_the_header_and_the_log(tmp_path):
    """The dashboard's `--results` is not where the daemon publishes (its metrics are right): the
    page said "daemon ready" over cameras that never sent. Once the daemon's metrics count
    results published since the page started and nothing came from the endpoint for
    `silent_after_s`, the pill says so in red, the log once; a stream heard there ends it."""
    config = tmp_path / "dashboard.yaml"
    config.write_text("silent_after_s: 1.5\n")
    m = DaemonMetrics()
    m.ready.set(1)
    metrics, results = _MetricsEndpoint(m), f"tcp://127.0.0.1:{free_loopback_port()}"
    log_path = tmp_path / "d.log"
    dashboard = DashboardProcess("--config", str(config), "--results", results, "--metrics", metrics.url,
                                 log_path=log_path)  # fmt: skip
    driver = headless_chromium()
    line = None
    try:
        dashboard.start()
        summary = _daemon_summary(dashboard)
        driver.get(dashboard.url + "/")
        state = _daemon_pill(driver)
        assert wait_for(lambda: state() == "daemon ready", 10), state()
        time.sleep(2)  # past silent_after_s: nothing published, nothing to say
        assert state() == "daemon ready" and summary()["results_unheard"] is None
        m.results.labels("ok", "pass").inc(5)
        said = f"daemon up, but none of its 5 results since this page started came from {results[6:]}"
        assert wait_for(lambda: state() == f"{said}: check the dashboard's --results", 10), state()
        assert summary()["results_unheard"] == {"published": 5, "endpoint": results}
        line = _LineDaemon("line1", results)  # the daemon's results, where the page listens
        assert wait_for(lambda: state() == "daemon ready", 10), state()
        assert summary()["results_unheard"] is None
    finally:
        driver.quit()
        dashboard.stop()
        metrics.close()
        if line is not None:
            line.close()
    warned = [row for row in log_path.read_text().splitlines() if "none came from" in row]
    assert len(warned) == 1 and "has published 5 results since this dashboard started" in warned[0], warned


def test_a_dashboards_results_are_one_endpoint_or_several_each_once():
    assert DashboardConfig(results="tcp://a:1").results == ("tcp://a:1",)
    assert DashboardConfig(results=("tcp://a:1", "tcp://b:1")).results == ("tcp://a:1", "tcp://b:1")
    with pytest.raises(ValueError, match="an endpoint given twice"):
        DashboardConfig(results=("tcp://a:1", "tcp://a:1"))
    from edge.config import config_from

    assert config_from(DashboardConfig, {"results": "tcp://a:1,tcp://b:2"}).results == ("tcp://a:1", "tcp://b:2")
    assert config_from(DashboardConfig, {"results": "", "record": "sqlite:///x.db"}).results == ()
    both = ("tcp://a:1", "tcp://b:1")
    assert DashboardConfig(results=both, metrics="http://a:9/metrics,http://b:9/metrics").metrics == (
        "http://a:9/metrics", "http://b:9/metrics"
    )  # fmt: skip
    with pytest.raises(ValueError, match="one Prometheus endpoint per results endpoint"):
        DashboardConfig(results=both, metrics="http://a:9/metrics")
    with pytest.raises(ValueError, match="one Prometheus endpoint per results endpoint"):
        DashboardConfig(metrics="http://a:9/metrics,http://b:9/metrics")


def test_the_browser_leaves_nothing_in_the_temporary_folder(monkeypatch):
    """`make demo`'s screenshot starts Chromium once a run, and the tests dozens of times:
    left to itself, Chromium leaves a folder in /tmp at every start."""
    # A short path: Chromium's socket in it must fit a socket address's 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="b"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        driver = headless_chromium(width=500, height=900)
        try:
            driver.get("about:blank")
            assert list(folder.iterdir()), "the browser's profile is not under the temporary folder"
        finally:
            driver.quit()
        assert list(folder.iterdir()) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)
