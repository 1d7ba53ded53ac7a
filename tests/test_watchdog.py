"""The daemon and its supervisor: systemd's notifications and watchdog, and the exit code of a
daemon whose thread failed. The notify socket is a real unix datagram socket, the daemon a
real process."""

from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np
import pytest

from edge.protocol import HEARTBEAT_TOPIC, frame_message, heartbeat_message, parse_heartbeat
from edge.watchdog import Liveness, Watchdog, notify, watchdog_interval_s
from tests.edge_helpers import Camera, DaemonProcess, Subscriber, short_ipc_dir

pytestmark = pytest.mark.timeout(180)
FRAME = np.random.default_rng(2).integers(0, 255, (48, 48, 3), dtype=np.uint8)


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.05)
    return sock


def _messages(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """(monotonic time, message) for what arrives within `seconds`."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            pass
    return out


def _pings(messages: list[tuple[float, str]]) -> list[float]:
    return [t for t, m in messages if "WATCHDOG=1" in m.split("\n")]


def test_notify_reaches_a_path_or_an_abstract_socket_and_is_silent_without_one(monkeypatch):
    path = str(short_ipc_dir() / "notify")
    with _listener(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1\nSTATUS=up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
    name = f"vqad-test-{os.getpid()}"
    with _listener("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1") and sock.recv(100) == b"WATCHDOG=1"
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # its listener is gone: not sent, no error
    assert not notify("WATCHDOG=1")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


def test_the_watchdog_interval_is_systemds_for_this_process_only(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # set for the process that started us
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval_s() is None


def test_a_loop_that_stops_coming_round_stops_the_pings_until_it_comes_round(monkeypatch, caplog):
    path = str(short_ipc_dir() / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    liveness, stalls = Liveness(), []
    watchdog = Watchdog(liveness, lambda: "serving m: accepted 3", stalls.append)
    assert watchdog.limit_s == 1.0
    with _listener(path) as sock, caplog.at_level(logging.INFO, "edge.watchdog"):
        liveness.beat("receiver")
        assert watchdog.check() and sock.recv(200) == b"WATCHDOG=1\nSTATUS=serving m: accepted 3"
        liveness._last["receiver"] -= 1.5  # its last turn was 1.5 s ago
        assert not watchdog.check() and not watchdog.check()
        assert sock.recv(200).startswith(b"STATUS=stalled: not come round: receiver for 2 s")
        assert stalls == [True] and caplog.text.count("stalled: not come round: receiver") == 1  # logged once
        liveness.beat("receiver")
        sock.recv(200)
        assert watchdog.check() and stalls == [True, False] and "the stall is over" in caplog.text
        liveness._last["receiver"] -= 1.5
        liveness.ended("receiver")  # a loop that ended on purpose is no stall
        assert watchdog.check()


def test_systemd_hears_ready_pings_and_stopping_and_no_ping_while_inference_hangs(tiny_model):
    folder = short_ipc_dir()
    env = {"NOTIFY_SOCKET": str(folder / "notify"), "WATCHDOG_USEC": "1000000", "VQAD_HANG_S": "3"}
    hang = np.full((48, 48, 3), 77, np.uint8)
    with _listener(str(folder / "notify")) as sock:
        daemon = DaemonProcess(
            tiny_model, "--backend", "tests.faulty_backend:FaultyBackend", "--set", "edge.heartbeat_s=0.2", env=env
        ).start()
        try:
            before = _messages(sock, 1.0)
            sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
            beats = Subscriber(daemon.results, HEARTBEAT_TOPIC)
            cam.send(frame_message("w", 0, FRAME))
            cam.send(frame_message("w", 1, hang))
            hung = _messages(sock, 2.5)  # the backend sleeps 3 s over frame 1
            results = sub.collect(2, timeout=20)
            after = _messages(sock, 1.0)
            heard = []
            while beats.sock.poll(0) and len(heard) < 200:  # 5 s of heartbeats at most
                heard.append(parse_heartbeat(beats.sock.recv_multipart()))
            cam.close()
            sub.close()
            beats.close()
        finally:
            code = daemon.stop()
        stopping = _messages(sock, 0.5)
    assert any(m.startswith("READY=1\nSTATUS=serving ") for _, m in before) and len(_pings(before)) >= 3
    pings = _pings(hung)
    gaps = np.diff([hung[0][0], *pings, hung[-1][0]])
    assert gaps.max() >= 1.2, f"the watchdog was fed while inference hung: {pings}"
    assert any(m.startswith("STATUS=stalled: not come round: inference-") for _, m in hung)
    assert len(_pings(after)) >= 3  # fed again once the call returned
    assert [(h["frame_id"], h["status"]) for h, _ in results] == [(0, "ok"), (1, "ok")]  # nothing lost
    # The heartbeat kept coming while inference hung, and said so (docs/protocol.md).
    stalled = [b for b in heard if b["stalled"]]
    assert stalled and stalled[0]["published"] < 2 and not heard[-1]["stalled"] and heard[-1]["queue"] == 0
    assert any(m == "STOPPING=1" for _, m in stopping) and code == 0
    log = daemon.log_text()
    assert "stalled: not come round: inference-" in log and "the stall is over" in log


def test_a_failed_thread_stops_the_daemon_with_exit_code_8_for_its_supervisor(tiny_model):
    """A publisher that raises used to end its thread alone: the daemon stayed up, accepted
    frames and published nothing, with exit code 0 at its stop (systemd's Restart=on-failure
    would not have restarted it)."""
    daemon = DaemonProcess(
        tiny_model, "--backend", "tests.faulty_backend:FaultyBackend", env={"VQAD_BREAK_PUBLISHER": "1"}
    ).start()
    cam = Camera(daemon.frames)
    try:
        cam.send(frame_message("p", 0, FRAME))
        deadline = time.monotonic() + 30
        while daemon.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not daemon.alive(), "the daemon stayed up without its publisher"
    finally:
        cam.close()
        code = daemon.stop()
    log = daemon.log_text()
    assert code == 8, log
    assert "the publisher thread failed; stopping the daemon" in log and "injected fault" in log
    assert "stopped after the failure of its publisher thread" in log


def test_a_backend_that_fails_every_batch_for_the_limit_stops_the_daemon_for_a_restart(tiny_model):
    """A CUDA error leaves the process's context unusable; a batch that works in between starts
    the count again."""
    poison = np.full((48, 48, 3), 13, np.uint8)
    daemon = DaemonProcess(
        tiny_model, "--backend", "tests.faulty_backend:FaultyBackend", "--max-batch", "1",
        "--set", "edge.backend_failure_exit_s=1",
    ).start()  # fmt: skip
    sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
    try:
        cam.send(frame_message("b", 0, poison))
        time.sleep(0.6)
        cam.send(frame_message("b", 1, FRAME))  # works: the failures start again from here
        early = sub.collect(2, timeout=20)
        sent, first_failing = 2, time.monotonic()
        while daemon.alive() and sent < 200:  # 200 frames at 0.05 s: 10 s at most
            cam.send(frame_message("b", sent, poison))
            sent += 1
            time.sleep(0.05)
        stopped_after = time.monotonic() - first_failing
        late = sub.collect(sent - 2, timeout=5, idle=1.0)
    finally:
        cam.close()
        sub.close()
        code = daemon.stop()
    log = daemon.log_text()
    assert code == 8, log
    assert [(h["frame_id"], h["status"]) for h, _ in early] == [(0, "error"), (1, "ok")]
    assert len(late) >= 3 and all(h["status"] == "error" and "injected fault" in h["error"] for h, _ in late)
    assert 1.0 <= stopped_after < 10, stopped_after
    assert "every batch has failed for 1 s" in log and "the failure of its inference backend" in log


def test_watch_says_once_when_the_heartbeat_says_inference_stalled_the_record_or_clock_behind_an_alarm_or_a_pause(
    caplog,
):
    from edge.watch import DaemonSilence

    silence = DaemonSilence("tcp://127.0.0.1:5556")
    beat = {"ts_ns": 1, "every_s": 1.0, "queue": 0, "stalled": False}
    with caplog.at_level(logging.INFO, "edge.watch"):
        for stalled, queue in ((False, 0), (True, 9), (True, 17), (False, 0), (False, 0)):
            silence.beat(heartbeat_message({**beat, "stalled": stalled, "queue": queue}))
        for behind_s, pending in ((0.2, 1), (61.0, 1800), (95.0, 2900), (0.0, 0)):  # the record's, once each way
            silence.beat(heartbeat_message({**beat, "record": {"pending": pending, "behind_s": behind_s}}))
        silence.beat(heartbeat_message({**beat, "record": None}))  # a daemon without a record
        refused = {"pending": 1900, "behind_s": 62.0, "error": "disk I/O error (is its disk read-only? …)"}
        silence.beat(heartbeat_message({**beat, "record": refused}))  # behind, and the database says why
        behind = {"behind": "the model package's export", "behind_at": "2026-12-05T23:07:00Z",
                  "behind_s": 1795981582.5, "reads": "1970-01-07T03:20:33Z"}  # fmt: skip
        for clock in (None, behind, behind, None, None):  # the box's clock, once each way
            silence.beat(heartbeat_message({**beat, "record": refused, "clock": clock}))
        aside = {"damaged": "/var/lib/vqad/line.db.damaged-20261206T085844Z", "evidence": None,
                 "reason": "database disk image is malformed", "at_ns": 5}  # fmt: skip
        for _ in range(3):  # a damaged record set aside: once, though every heartbeat says it
            silence.beat(heartbeat_message({**beat, "record": {"pending": 0, "behind_s": 0.0, "set_aside": aside}}))
        rate = {"limit": 0.2, "window": 100, "alarms": {}}
        press1 = {"fails": 21, "of": 21, "since_ns": 5, "unfit": 2}
        press2 = {"fails": 30, "of": 100, "since_ns": 6, "unfit": 28}
        for alarms in ({}, {"press1": press1}, {"press1": {**press1, "fails": 25}}, {"press2": press2}, {}, {}):
            silence.beat(heartbeat_message({**beat, "fail_rate": {**rate, "alarms": alarms}}))  # once each way
        for paused in ([], ["press1"], ["press1"], ["press1", "press2"], ["press2"], []):  # once each way
            silence.beat(heartbeat_message({**beat, "paused": paused}))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "the daemon at tcp://127.0.0.1:5556 says its inference has stalled (9 frames wait)",
        "the daemon at tcp://127.0.0.1:5556 says its inference runs again",
        "the daemon at tcp://127.0.0.1:5556 says its record is 61 s behind (1800 results wait for their rows)",
        "the daemon at tcp://127.0.0.1:5556 says its record has caught up",
        "the daemon at tcp://127.0.0.1:5556 says its record is 62 s behind (1900 results wait for their rows; "
        "the record's last error: disk I/O error (is its disk read-only? …))",
        "the daemon at tcp://127.0.0.1:5556 says its box's clock reads 1970-01-07T03:20:33Z, 20,787 days before "
        "the model package's export (2026-12-05T23:07:00Z): its record files results at that clock's time",
        "the daemon at tcp://127.0.0.1:5556 says its box's clock reads after what it had passed again",
        "the daemon at tcp://127.0.0.1:5556 says its record has caught up",
        "the daemon at tcp://127.0.0.1:5556 says its record was damaged (database disk image is malformed) and set "
        "aside as /var/lib/vqad/line.db.damaged-20261206T085844Z; it records on a new one (docs/deploy.md, "
        '"A damaged record")',
        "the daemon at tcp://127.0.0.1:5556 raised camera press1's fail-rate alarm: 21 of its last 21 decisions "
        "failed (2 of them unfit frames), over the limit of 20%",
        "the daemon at tcp://127.0.0.1:5556 raised camera press2's fail-rate alarm: 30 of its last 100 decisions "
        "failed (28 of them unfit frames: see to the camera), over the limit of 20%",
        "the daemon at tcp://127.0.0.1:5556 cleared camera press1's fail-rate alarm",
        "the daemon at tcp://127.0.0.1:5556 cleared camera press2's fail-rate alarm",
        "the daemon at tcp://127.0.0.1:5556 says camera press1 is paused by the line's control: its parts are not "
        "inspected until vqad ctl ENDPOINT resume press1",
        "the daemon at tcp://127.0.0.1:5556 says camera press2 is paused by the line's control: its parts are not "
        "inspected until vqad ctl ENDPOINT resume press2",
        "the daemon at tcp://127.0.0.1:5556 says camera press1 is resumed",
        "the daemon at tcp://127.0.0.1:5556 says camera press2 is resumed",
    ]


def test_watch_says_once_when_nothing_comes_from_the_daemon_and_once_when_something_does(monkeypatch, caplog):
    """A reader started against a daemon that is not running (or on another port) printed
    nothing and said nothing, for ever. A real PUB socket that stays silent, then publishes."""
    import threading

    import zmq

    from edge import watch
    from edge.protocol import result_header, result_message
    from edge.transport import free_loopback_port

    monkeypatch.setattr(watch, "NEVER_HEARD_S", 0.5)
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(endpoint)
    reader_done = threading.Event()

    def publish_once_warned() -> None:  # one result after the warning, sent until the reader has it
        deadline = time.monotonic() + 10
        while "nothing from the daemon" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        header = result_header("c", 0, time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32}, score=0.5,
                               decision="pass", batch_size=1, map_info={"shape": [4, 4], "dtype": "uint8",
                               "scale": 0.01})  # fmt: skip
        while not reader_done.is_set() and time.monotonic() < deadline:
            pub.send_multipart(result_message({**header, "run": "r", "seq": 0}, bytes(16)))
            reader_done.wait(0.1)

    sender = threading.Thread(target=publish_once_warned, daemon=True)
    try:
        with caplog.at_level(logging.INFO, "edge.watch"):
            sender.start()
            until = time.monotonic() + 10
            watch.run_watch(endpoint, count=1, quiet=True, stop=lambda: time.monotonic() > until)
            reader_done.set()
    finally:
        sender.join(2)
        pub.close(linger=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.watch"]
    never = [line for line in lines if line.startswith("nothing from the daemon")]
    assert len(never) == 1 and endpoint in never[0] and "is it running" in never[0], lines
    assert f"the daemon at {endpoint} is heard from" in lines
    # A reader that gives up before NEVER_HEARD_S (its --timeout) says so as it ends.
    monkeypatch.setattr(watch, "NEVER_HEARD_S", 60.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, "edge.watch"):
        watch.run_watch(f"tcp://127.0.0.1:{free_loopback_port()}", count=1, timeout_s=0.3, quiet=True)
    assert "nothing from the daemon at tcp://127.0.0.1:" in caplog.text, caplog.text
