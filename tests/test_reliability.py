"""Faults, accounting under overload, and security, against a real daemon process."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import zmq

from edge.errors import ConfigError
from edge.protocol import frame_message
from edge.security import authorized_keys, create_keys, make_curve_client
from edge.transport import free_loopback_port
from tests.browser import DashboardProcess, wait_for
from tests.conftest import ROOT, run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber, short_ipc_dir

pytestmark = pytest.mark.timeout(240)
FRAME = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)


def test_backend_failure_fails_only_that_batch(tiny_model):
    poison = np.full((48, 48, 3), 13, np.uint8)
    with DaemonProcess(
        tiny_model,
        "--backend",
        "tests.faulty_backend:FaultyBackend",
        "--max-batch",
        "2",
        "--max-delay-ms",
        "300",
    ) as daemon:
        sub = Subscriber(daemon.results)
        cam = Camera(daemon.frames)
        cam.send(frame_message("f", 0, FRAME))
        cam.send(frame_message("f", 1, poison))  # batch {0, 1} fails
        time.sleep(0.6)
        cam.send(frame_message("f", 2, FRAME))
        cam.send(frame_message("f", 3, FRAME))  # the next batch is fine
        got = {h["frame_id"]: h for h, _ in sub.collect(4)}
        cam.close()
        assert daemon.alive()
    assert [got[i]["status"] for i in range(4)] == ["error", "error", "ok", "ok"]
    assert "injected fault" in got[1]["error"] and got[0]["batch_size"] == 0


def test_a_frame_without_a_finite_score_is_an_error_with_its_evidence(tiny_model, tmp_path):
    """NaN compares as a pass and is no JSON: a frame the model gives no finite score gets an
    error result, in strict JSON, and the record keeps the frame; its batch-mates are judged. A
    batch with no finite score at all is a failed batch."""
    nan_frame = np.full((48, 48, 3), 31, np.uint8)
    db = tmp_path / "line.db"
    args = ["--backend", "tests.faulty_backend:FaultyBackend", "--max-batch", "2", "--max-delay-ms", "300"]
    with DaemonProcess(tiny_model, *args, "--record", f"sqlite:///{db}") as daemon:
        sub = Subscriber(daemon.results)
        cam = Camera(daemon.frames)
        cam.send(frame_message("n", 0, FRAME))
        cam.send(frame_message("n", 1, nan_frame))  # one batch: one scored, one not
        got = {h["frame_id"]: h for h, _ in sub.collect(2)}
        cam.send(frame_message("n", 2, nan_frame))  # a batch of its own: no finite score at all
        got.update({h["frame_id"]: h for h, _ in sub.collect(1)})
        cam.close()
        assert daemon.alive()
    assert [got[i]["status"] for i in range(3)] == ["ok", "error", "error"]
    assert got[0]["decision"] in ("pass", "fail") and got[0]["batch_size"] == 2
    assert got[1]["score"] is None and got[1]["decision"] is None and "no finite score" in got[1]["error"]
    assert got[2]["error"].startswith("inference failed: backend returned no finite score")
    for header in got.values():
        json.dumps(header, allow_nan=False)  # what strict readers (browsers, jq) accept
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT frame_id, evidence_frame FROM results WHERE camera_id = 'n'").fetchall())
    assert rows[1] and Path(rows[1]).is_file()  # the unjudged frame is kept for a look
    assert (cv2.imread(rows[1]) == 31).all()
    # A backend that gives even a blank frame no score is broken: the start says so (exit 5).
    broken = DaemonProcess(tiny_model, *args, env={"VQAD_NAN_VALUE": "0"})
    with pytest.raises(AssertionError, match="exited 5"):
        broken.start(timeout=60)
    assert "gives a blank frame no finite score" in broken.log_text()


def test_two_workers_publish_in_batch_order_when_a_later_batch_finishes_first(tiny_model):
    """Batch 0 (a slow frame) is still running on one worker while the other finishes
    batches 1-5: every result is held back until batch 0 is out, so frame ids stay in order."""
    slow = np.full((48, 48, 3), 200, np.uint8)
    with DaemonProcess(
        tiny_model,
        "--backend",
        "tests.faulty_backend:FaultyBackend",
        "--max-batch",
        "1",
        "--set",
        "edge.inference_workers=2",
    ) as daemon:
        sub = Subscriber(daemon.results)
        cam = Camera(daemon.frames)
        cam.send(frame_message("o", 0, slow))
        for i in range(1, 6):
            cam.send(frame_message("o", i, FRAME))
        results = sub.collect(6)
        cam.close()
    assert [h["frame_id"] for h, _ in results] == list(range(6))
    assert all(h["status"] == "ok" for h, _ in results)
    # the fast frames ran beside the slow one (one worker would have queued them behind it)
    assert results[0][0]["latency_ms"]["infer"] >= 400 > max(h["latency_ms"]["queue"] for h, _ in results[1:])


def test_subscriber_disconnects_and_reconnects(tiny_model):
    with DaemonProcess(tiny_model) as daemon:
        cam = Camera(daemon.frames)
        sub = Subscriber(daemon.results)
        cam.send(frame_message("s", 0, FRAME))
        assert [h["frame_id"] for h, _ in sub.collect(1)] == [0]
        sub.close()
        cam.send(frame_message("s", 1, FRAME))  # nobody listening: published into the void
        time.sleep(0.5)
        sub = Subscriber(daemon.results)
        cam.send(frame_message("s", 2, FRAME))
        assert [h["frame_id"] for h, _ in sub.collect(1)] == [2]
        cam.close()


def test_camera_process_killed_and_restarted(tiny_model, synth_root):
    folder = synth_root / "bracket" / "test" / "good"
    with DaemonProcess(tiny_model) as daemon:
        sub = Subscriber(daemon.results)
        cmd = [
            sys.executable,
            "-m",
            "vqad.cli",
            "camera",
            str(folder),
            "--to",
            daemon.frames,
            "--loop",
            "--fps",
            "20",
            "--camera-id",
            "k",
        ]
        first = subprocess.Popen(cmd, cwd=ROOT)
        first_results = sub.collect(5, timeout=30)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        sub.collect(1000, timeout=3, idle=1.0)  # whatever was in flight
        second = subprocess.Popen([*cmd, "--start-id", "100000", "--count", "5"], cwd=ROOT)
        second.wait(timeout=60)
        second_results = sub.collect(5, timeout=30)
        assert daemon.alive()
    assert len(first_results) == 5
    assert sorted(h["frame_id"] for h, _ in second_results) == list(range(100000, 100005))


def test_sigkill_then_restart_is_clean_and_reported(tiny_model):
    ipc = short_ipc_dir()
    port = free_loopback_port()
    first = DaemonProcess(tiny_model, ipc_dir=ipc).start()
    cam = Camera(first.frames)
    cam.send(frame_message("x", 0, FRAME))
    time.sleep(0.5)
    first.stop(signal.SIGKILL)
    cam.close()
    # The state file as a power cut mid-write leaves it: the next start says so and goes on.
    (ipc / "vqad-serve.state.json").write_text('{"unclean_ex')
    with DaemonProcess(tiny_model, "--metrics-port", str(port), ipc_dir=ipc) as second:
        sub = Subscriber(second.results)
        cam = Camera(second.frames)
        cam.send(frame_message("x", 1, FRAME))
        assert [h["status"] for h, _ in sub.collect(1)] == ["ok"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        cam.close()
    assert "vqad_previous_exit_unclean 1.0" in metrics
    assert "vqad_unclean_exits 1.0" in metrics
    assert 'vqad_results_total{decision="' in metrics and "vqad_frames_in_total 1.0" in metrics
    assert "did not shut down cleanly" in second.log_text()
    assert "vqad-serve.state.json is unreadable" in second.log_text()
    assert json.loads((ipc / "vqad-serve.state.json").read_text()) == {"unclean_exits": 1}


def test_a_file_written_to_a_full_disk_is_named_and_left_out(tmp_path):
    """A full disk fails the write to an open file, which names no file ("No space left on
    device" of what?), and its close flushes and fails again, hiding the first error. The
    error names the file now, and no part of it is left. /dev/full answers every write so."""
    from edge.durable import replace_synced, write_synced

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    target = tmp_path / "checkpoint.pt"
    target.symlink_to("/dev/full")  # a file on a disk with no room left
    for data in (b"x" * 100, b"x" * 2**20):  # held in the file's buffer until its close, or written at once
        with pytest.raises(OSError) as full:
            write_synced(target, data)
        assert full.value.errno == errno.ENOSPC and full.value.filename == str(target)
        assert not os.path.lexists(target)
        target.symlink_to("/dev/full")
    (tmp_path / "model.json.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left") as full:
        replace_synced(tmp_path / "model.json", b"{}")
    assert full.value.filename == str(tmp_path / "model.json.tmp") and not (tmp_path / "model.json").exists()


def test_a_full_state_folder_is_an_error_in_the_log_not_a_start_refused(tmp_path, monkeypatch, caplog):
    """Every write to the state folder fails for want of space: the previous run's unclean exit
    is still counted and reported, and the start goes on with one error line. A refused start
    is refused again by systemd every 2 s, and the line would stand for the sake of a marker."""
    import errno

    from edge.metrics import DaemonMetrics
    from edge.state import mark_running

    (tmp_path / "vqad-serve.running").write_text("pid 41 started 2026-12-03T08:00:00")  # killed

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setattr("edge.state.replace_synced", lambda *args: full(None))
    metrics = DaemonMetrics()
    with caplog.at_level(logging.WARNING, logger="edge.state"):
        marker, _unclean = mark_running(tmp_path, metrics)
    assert marker == tmp_path / "vqad-serve.running"
    assert "the previous daemon (pid 41 started" in caplog.text and metrics.unclean_exits._value.get() == 1
    assert f"the state folder {tmp_path} cannot be written (No space left on device): the daemon serves" in (
        caplog.text
    )


def test_the_state_folder_names_the_runs_before_this_one_and_forgets_the_oldest(tmp_path, monkeypatch, caplog):
    """Each start adds its run; the heartbeat's `previous_runs` is the 15 before it, oldest
    first. A list that cannot be read starts again, and a full disk leaves the start going on;
    each with a warning."""
    import errno

    from edge.state import RUNS_FILE, RUNS_KEPT, follow_runs

    runs = [f"{i:032x}" for i in range(RUNS_KEPT + 3)]
    told = [follow_runs(tmp_path, run) for run in runs]
    assert told[0] == [] and told[1] == runs[:1] and told[2] == runs[:2]
    assert told[-1] == runs[-RUNS_KEPT:-1] and len(told[-1]) == RUNS_KEPT - 1
    (tmp_path / RUNS_FILE).write_text('{"runs": ["a", "b"')  # a power cut while an older version wrote it
    with caplog.at_level(logging.WARNING, logger="edge.state"):
        assert follow_runs(tmp_path, "c" * 32) == []
        assert follow_runs(tmp_path, "d" * 32) == ["c" * 32]

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("edge.state.replace_synced", full)
        assert follow_runs(tmp_path, "e" * 32) == ["c" * 32, "d" * 32]
    assert "is unreadable" in caplog.text and "the heartbeat names no run before this one" in caplog.text
    assert "cannot be written (No space left on device): the next start's heartbeat will not name" in caplog.text


def test_files_the_next_start_reads_are_replaced_whole_through_a_power_cut(tiny_model, tmp_path, monkeypatch):
    """model.json (a calibration on the line's box), the engine and the daemon's state: the new
    content is synced before it takes the name, and the rename is synced too. A write that fails
    leaves the old file as it was and no part of the new one."""
    import errno

    from edge.durable import replace_synced
    from edge.metrics import DaemonMetrics
    from edge.package import load_package, write_model_json
    from edge.state import mark_running

    done: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        done.append(("sync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(self: Path, target: Path) -> Path:
        done.append(("rename", str(self)))
        return real_replace(self, target)

    monkeypatch.setattr("edge.durable.os.fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    package = tmp_path / "model"
    package.mkdir()
    (package / "model.json").write_text((tiny_model / "model.json").read_text())
    meta = load_package(tiny_model).meta
    write_model_json(package, {**meta, "threshold": 7.5})
    tmp = str(package / "model.json.tmp")
    assert done == [("sync", tmp), ("rename", tmp), ("sync", str(package))]
    assert json.loads((package / "model.json").read_text())["threshold"] == 7.5
    done.clear()
    state = tmp_path / "state"
    mark_running(state, DaemonMetrics())  # the marker a power cut leaves, so the next start knows
    marker = str(state / "vqad-serve.running")
    assert done == [("sync", marker + ".tmp"), ("rename", marker + ".tmp"), ("sync", str(state))]

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edge.durable.os.fsync", full)
    with pytest.raises(OSError, match="No space"):
        replace_synced(package / "model.json", b"{}")
    assert json.loads((package / "model.json").read_text())["threshold"] == 7.5
    assert sorted(p.name for p in package.iterdir()) == ["model.json"]


def test_two_threads_replacing_one_file_never_leave_it_half_written(tmp_path):
    """The record writer's state file is replaced by its thread before each transaction, and by
    close() on the way out; a writer held by its database past close()'s wait is still saving.
    Both wrote the same file beside it, and one renamed the other's while it was half written:
    readers found broken JSON, and the writer's next save failed."""
    import threading

    from edge.durable import replace_synced

    state = tmp_path / "vqad-serve.record.json"
    failures: list[BaseException] = []
    broken = 0

    def replace(n: int) -> None:
        for i in range(200):
            try:
                replace_synced(state, json.dumps({"writer": n, "save": i, "pad": "x" * 4096}).encode())
            except OSError as exc:
                failures.append(exc)

    writers = [threading.Thread(target=replace, args=(n,)) for n in range(2)]
    for writer in writers:
        writer.start()
    while any(w.is_alive() for w in writers):
        try:
            json.loads(state.read_text())
        except FileNotFoundError:
            pass
        except json.JSONDecodeError:
            broken += 1
    for writer in writers:
        writer.join()
    assert broken == 0 and failures == [], (broken, failures[:3])
    assert json.loads(state.read_text())["save"] == 199


def test_a_state_folder_is_held_by_one_holder_and_served_unlocked_where_it_cannot_be_locked(
    tmp_path, monkeypatch, caplog
):
    """The lock refuses a second holder and names the first, lets go with its holder, holds on a
    full disk, and on a filesystem without locks (ENOLCK on some network mounts) is a warning,
    not a start refused."""
    import errno
    import fcntl

    from edge.errors import ConfigError
    from edge.state import hold_state_folder, state_folder_holder

    held = hold_state_folder(tmp_path)
    assert held is not None and state_folder_holder(tmp_path) == f"pid {os.getpid()}"
    with pytest.raises(ConfigError, match=f"in use by a running daemon \\(pid {os.getpid()}\\)"):
        hold_state_folder(tmp_path)
    held.close()
    assert state_folder_holder(tmp_path) is None

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as disk:
        disk.setattr(os, "write", full)
        held = hold_state_folder(tmp_path)  # held, though its holder cannot be written down
    assert held is not None and state_folder_holder(tmp_path) == "another process"
    held.close()

    def no_locks(*_args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="edge.state"):
        assert hold_state_folder(tmp_path) is None
    assert "cannot be locked (No locks available): a second daemon on it would not be refused" in caplog.text


def test_a_second_daemon_on_taken_endpoints_or_folder_stops_with_one_line_and_leaves_the_first_alone(tiny_model):
    ipc = short_ipc_dir()
    frames, results = (f"tcp://127.0.0.1:{free_loopback_port()}" for _ in range(2))
    port = str(free_loopback_port())
    with DaemonProcess(
        tiny_model, "--frames", frames, "--results", results, "--metrics-port", port, ipc_dir=ipc
    ) as first:
        marker = ipc / "vqad-serve.running"
        before = marker.read_text()
        for taken in (["--frames", frames], ["--control", results], ["--metrics-port", port]):
            second = DaemonProcess(tiny_model, *taken, ipc_dir=ipc)
            second.log_path = ipc / "second.log"
            with pytest.raises(AssertionError, match="daemon exited 2"):
                second.start(timeout=60)
            text = second.log_text()
            assert re.search("cannot (bind its|serve metrics)", text) and "Traceback" not in text, text
            assert "did not shut down cleanly" not in text  # the running daemon's marker untouched
            assert marker.read_text() == before and not (ipc / "vqad-serve.state.json").exists()
            second.log_path.unlink()
        beside = DaemonProcess(tiny_model, "--set", f"edge.state_dir={ipc}")  # its own endpoints, the first's folder
        try:
            with pytest.raises(AssertionError, match="daemon exited 2"):
                beside.start(timeout=60)
        finally:
            beside.stop()
        text = beside.log_text()
        assert f"the state folder {ipc} is in use by a running daemon (pid {first.proc.pid})" in text, text
        assert "did not shut down cleanly" not in text and "Traceback" not in text
        assert marker.read_text() == before and not (ipc / "vqad-serve.state.json").exists()
        sub, cam = Subscriber(results), Camera(frames)
        cam.send(frame_message("x", 0, FRAME))
        assert [h["status"] for h, _ in sub.collect(1)] == ["ok"]  # the first still serves
        cam.close()
        sub.close()
    assert first.proc.returncode == 0 and not marker.exists()


def test_an_ipc_path_in_use_is_refused_and_a_stale_one_reused(tiny_model):
    with DaemonProcess(tiny_model) as first:
        second = DaemonProcess(tiny_model, "--frames", first.frames)
        with pytest.raises(AssertionError, match="daemon exited 2"):
            second.start(timeout=60)
        assert "in use by another process" in second.log_text()
        sub, cam = Subscriber(first.results), Camera(first.frames)
        cam.send(frame_message("x", 0, FRAME))
        assert [h["status"] for h, _ in sub.collect(1)] == ["ok"]  # the first still has its frames
        cam.close()
        sub.close()
    first.stop(signal.SIGKILL)  # already stopped: its socket files may stay behind
    (first.dir / "frames").touch()  # a file where a socket was, nobody listening
    with DaemonProcess(tiny_model, ipc_dir=first.dir) as again:
        assert again.alive()


def _throughput(daemon: DaemonProcess, n: int = 40) -> float:
    sub = Subscriber(daemon.results)
    cam = Camera(daemon.frames)
    t0 = time.monotonic()
    for i in range(n):
        cam.send(frame_message("probe", i, FRAME))
    results = sub.collect(n, timeout=60)
    rate = len(results) / (time.monotonic() - t0)
    cam.close()
    sub.close()
    return rate


@pytest.mark.parametrize("policy", ["backpressure", "drop_oldest"])
def test_every_frame_accounted_for_under_a_5x_burst(tiny_model, policy):
    with DaemonProcess(
        tiny_model,
        "--overload",
        policy,
        "--max-batch",
        "4",
        "--set",
        "edge.queue_size=8",
        "--set",
        "edge.rcvhwm=8",
    ) as daemon:
        rate = _throughput(daemon)
        sub = Subscriber(daemon.results)
        cams = [Camera(daemon.frames) for _ in range(2)]
        n, period = 300, 1.0 / (5 * rate)
        t0 = time.monotonic()
        for i in range(n):
            cams[i % 2].send(frame_message(f"cam{i % 2}", i, FRAME))
            time.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
        results = sub.collect(n, timeout=120)
        for c in cams:
            c.close()
    keys = [(h["camera_id"], h["frame_id"]) for h, _ in results]
    assert len(keys) == len(set(keys)) == n  # exactly one result per frame
    assert set(keys) == {(f"cam{i % 2}", i) for i in range(n)}
    statuses = {h["status"] for h, _ in results}
    assert statuses == {"ok"} if policy == "backpressure" else statuses <= {"ok", "dropped"}
    if policy == "drop_oldest":
        assert "dropped" in statuses


def test_sockets_bind_to_loopback_by_default(tiny_model):
    from edge.settings import EdgeConfig

    cfg = EdgeConfig()
    assert cfg.frames_endpoint.startswith("tcp://127.0.0.1:") and cfg.results_endpoint.startswith("tcp://127.0.0.1:")
    fp, rp = free_loopback_port(), free_loopback_port()
    daemon = DaemonProcess(tiny_model)
    # Only the ports are given: the host part comes from the defaults' loopback.
    daemon.args = [
        a.replace(daemon.frames, f"tcp://127.0.0.1:{fp}").replace(daemon.results, f"tcp://127.0.0.1:{rp}")
        for a in daemon.args
    ]
    with daemon:
        listening = {
            c.laddr
            for c in psutil.Process(daemon.proc.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
    assert {addr.port for addr in listening} >= {fp, rp}
    assert all(addr.ip == "127.0.0.1" for addr in listening)


def test_maximum_message_size_is_enforced(tiny_model):
    # 64 x 64 pixels max: ZMQ_MAXMSGSIZE = 64*64*8 (the largest raw pixel, 16-bit BGRA) + the header
    # limit; a 256 x 256 frame is refused by ZeroMQ, a 64 x 64 one of the largest pixels is read.
    with DaemonProcess(tiny_model, "--set", "edge.max_frame_pixels=4096", "--set", "edge.max_header_bytes=1024") as d:
        sub = Subscriber(d.results)
        big = Camera(d.frames)
        big.send(frame_message("big", 0, np.zeros((256, 256, 3), np.uint8)))
        assert sub.collect(1, timeout=3) == []
        big.close()
        small = Camera(d.frames)
        small.send(frame_message("small", 1, np.zeros((64, 64, 3), np.uint8)))
        small.send(frame_message("small", 2, np.zeros((65, 65, 3), np.uint8)))  # within bytes, over pixels
        small.send(frame_message("small", 3, np.full((64, 64, 4), 40000, np.uint16)))
        got = {h["frame_id"]: h for h, _ in sub.collect(3)}
        small.close()
        assert d.alive()
    assert got[1]["status"] == "ok" and got[3]["status"] == "ok"
    assert got[2]["status"] == "error"


def test_a_key_pair_is_never_replaced_unasked(tmp_path):
    """A new server key would lock out every camera that trusts the old one."""
    public, secret = create_keys(tmp_path, "server")
    before = secret.read_bytes()
    proc = run_vqad("keys", tmp_path, "--name", "server", check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr and secret.read_bytes() == before
    run_vqad("keys", tmp_path, "--name", "server", "--force")
    assert secret.read_bytes() != before and oct(secret.stat().st_mode)[-3:] == "600"
    assert run_vqad("keys", tmp_path, "--name", "../elsewhere", check=False).returncode == 2


def _folder_of_one(tmp_path: Path) -> Path:
    """A folder holding one frame, for `vqad camera`."""
    folder = tmp_path / "one_frame"
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "0.png"), FRAME)
    return folder


# What a client without keys says of a daemon with CURVE on: the daemon's "mechanism mismatch",
# or, where the daemon's side read the client's greeting first and closed, a failure without
# detail whose causes the line names.
_NO_KEYS = r"it uses CURVE, and this {who} has no keys \({keys}|closed this {who}'s connection in its handshake: " \
           r"does it use CURVE \(then give {keys}"  # fmt: skip


def _summary(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/summary", timeout=5) as response:
        return json.loads(response.read())


def test_curve_refuses_unknown_peers(tiny_model, tmp_path):
    """With CURVE on, only the authorized keys send frames, read results and control the daemon
    (`vqad ctl --curve-secret --curve-server-key`). A client it refuses says why and exits 1: a
    camera said "sent 1 frames" of a frame the daemon never had, a reader and a dashboard
    waited in silence."""
    create_keys(tmp_path / "server", "server")
    create_keys(tmp_path / "clients", "cam")
    create_keys(tmp_path / "clients", "dashboard")
    create_keys(tmp_path / "clients", "integrator")
    create_keys(tmp_path / "strangers", "mallory")
    server_secret = tmp_path / "server" / "server.key_secret"
    server_public = tmp_path / "server" / "server.key"
    control = f"tcp://127.0.0.1:{free_loopback_port()}"
    with DaemonProcess(
        tiny_model,
        "--control",
        control,
        "--set",
        "edge.curve.enabled=true",
        "--set",
        f"edge.curve.server_secret_key={server_secret}",
        "--set",
        f"edge.curve.authorized_keys_dir={tmp_path / 'clients'}",
    ) as daemon:
        ctx = zmq.Context.instance()

        def sub_with(key):
            s = ctx.socket(zmq.SUB)
            if key:
                make_curve_client(s, key, server_public)
            s.setsockopt(zmq.SUBSCRIBE, b"result.")
            s.connect(daemon.results)
            return s

        def push_with(key):
            p = ctx.socket(zmq.PUSH)
            p.setsockopt(zmq.LINGER, 0)
            p.setsockopt(zmq.SNDTIMEO, 2000)
            if key:
                make_curve_client(p, key, server_public)
            p.connect(daemon.frames)
            return p

        good_sub = sub_with(tmp_path / "clients" / "dashboard.key_secret")
        bad_sub = sub_with(tmp_path / "strangers" / "mallory.key_secret")
        plain_sub = sub_with(None)
        time.sleep(0.5)
        bad_push = push_with(tmp_path / "strangers" / "mallory.key_secret")
        for i in range(3):
            try:
                bad_push.send_multipart(frame_message("mallory", i, FRAME), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        good_push = push_with(tmp_path / "clients" / "cam.key_secret")
        good_push.send_multipart(frame_message("cam", 7, FRAME))

        def drain(s, seconds, until=None):
            out, end = [], time.monotonic() + seconds
            while time.monotonic() < end and len(out) != until:
                if s.poll(50):
                    out.append(s.recv_multipart())
            return out

        good = drain(good_sub, 10, until=1) + drain(good_sub, 0.5)  # its result, then none after it
        bad, plain_results = drain(bad_sub, 0.5), drain(plain_sub, 0.5)
        for s in (good_sub, bad_sub, plain_sub, bad_push, good_push):
            s.close(linger=0)

        def ctl(*keys):
            return run_vqad("ctl", control, "status", "--timeout", "2", *keys, check=False, timeout=60)

        allowed = ctl("--curve-secret", tmp_path / "clients" / "integrator.key_secret", "--curve-server-key",
                      server_public)  # fmt: skip
        stranger = ctl("--curve-secret", tmp_path / "strangers" / "mallory.key_secret", "--curve-server-key",
                       server_public)  # fmt: skip
        plain, half = ctl(), ctl("--curve-secret", tmp_path / "clients" / "integrator.key_secret")
        stranger_keys = ("--curve-secret", tmp_path / "strangers" / "mallory.key_secret", "--curve-server-key",
                         server_public)  # fmt: skip
        wrong_server = ("--curve-secret", tmp_path / "clients" / "cam.key_secret", "--curve-server-key",
                        tmp_path / "clients" / "dashboard.key")  # fmt: skip
        one = _folder_of_one(tmp_path)
        keys_of = {"plain": (), "stranger": stranger_keys, "wrong server": wrong_server}
        cameras = {name: run_vqad("camera", one, "--to", daemon.frames, "--linger-s", "10", *keys, check=False,
                                  timeout=60) for name, keys in keys_of.items()}  # fmt: skip
        reader = run_vqad("watch", daemon.results, "--count", "1", check=False, timeout=60)
        dashboard = DashboardProcess("--results", daemon.results, log_path=tmp_path / "dashboard.log").start()
        try:
            refused = wait_for(lambda: _summary(dashboard.url)["daemon"]["results_refused"], 10)
        finally:
            dashboard.stop()
        log = daemon.log_text()
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["ok"] is True, allowed.stderr
    assert stranger.returncode == 1 and "refused this client's CURVE key (status 400)" in stranger.stderr
    assert plain.returncode == 1 and re.search(_NO_KEYS.format(who="client", keys="--curve-secret"), plain.stderr)
    assert all(c.returncode == 1 and "sent 1 frames" not in c.stdout for c in cameras.values()), cameras
    assert re.search(_NO_KEYS.format(who="camera", keys="--curve-secret"), cameras["plain"].stderr)
    assert "refused this camera's CURVE key (status 400): is its public key in" in cameras["stranger"].stderr
    assert "is --curve-server-key the daemon's public key (its server.key)" in cameras["wrong server"].stderr
    assert reader.returncode == 1 and re.search(_NO_KEYS.format(who="reader", keys="--curve-secret"), reader.stderr)
    assert "summary: 0 results" in reader.stdout
    assert refused.startswith(f"the daemon at {daemon.results} ")
    assert re.search(_NO_KEYS.format(who="dashboard", keys="curve_secret"), refused), refused
    assert half.returncode == 2 and "needs both" in half.stderr
    # The same rule for every client, in one place: a server key alone would read in the clear.
    for command in (("watch", "tcp://127.0.0.1:1", "--count", "1"), ("camera", tmp_path, "--to", "tcp://127.0.0.1:1")):
        alone = run_vqad(*command, "--curve-server-key", server_public, check=False, timeout=60)
        assert alone.returncode == 2 and "needs both" in alone.stderr, alone.stderr
    missing = run_vqad("watch", "tcp://127.0.0.1:1", "--curve-secret", tmp_path / "clients" / "integrator.key_secret",
                       "--curve-server-key", tmp_path / "server.key", check=False, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and f"CURVE key file not found: {tmp_path / 'server.key'}" in missing.stderr
    topics = [m[0] for m in good]
    assert topics == [b"result.cam"]  # the stranger's frames were never accepted
    assert bad == [] and plain_results == []
    assert "refused a peer" in log
    # A peer refused before the authenticator is asked is in the daemon's log too: one with
    # another server key always (it tries again), one without keys when the daemon's side reads
    # its greeting first (else the peer's own side closes).
    assert f"CURVE: the frames socket ({daemon.frames}) refused a peer whose CURVE hello it cannot read" in log, log
    without = re.findall(r"CURVE: the (\w+) socket \(.*\) refused a peer without CURVE keys", log)
    assert set(without) <= {"frames", "results", "control"}, without


def test_a_key_removed_while_its_clients_are_connected_cuts_them_off(tiny_model, tmp_path):
    """A camera retired, or whose key left the plant, is cut off when its key leaves
    authorized_keys_dir: CURVE checks a key at the handshake only, and the connections it held
    went on sending frames, reading results and controlling the daemon until a restart stopped
    the line. Now its frames get no result, its subscriber stops hearing, and its control
    requests are refused; the other clients go on."""
    keys = {name: create_keys(tmp_path / "clients", name)[1] for name in ("kept", "gone")}
    server_public = create_keys(tmp_path / "server", "server")[0]
    control = f"tcp://127.0.0.1:{free_loopback_port()}"
    curve = ("edge.curve.enabled=true", f"edge.curve.server_secret_key={tmp_path / 'server' / 'server.key_secret'}",
             f"edge.curve.authorized_keys_dir={tmp_path / 'clients'}")  # fmt: skip
    with DaemonProcess(tiny_model, "--control", control, *[a for kv in curve for a in ("--set", kv)]) as daemon:
        cameras = {name: Camera(daemon.frames, (key, server_public)) for name, key in keys.items()}
        readers = {name: Subscriber(daemon.results, curve=(key, server_public)) for name, key in keys.items()}
        operator = zmq.Context.instance().socket(zmq.REQ)  # a program that keeps its control connection
        operator.linger, operator.rcvtimeo = 0, 10000
        make_curve_client(operator, keys["gone"], server_public)
        operator.connect(control)

        def ask_status() -> dict:
            operator.send_json({"command": "status", "by": "mes"})
            return operator.recv_json()

        def heard(first_id: int) -> dict[str, set[tuple[str, int]]]:
            """Each reader's results of frames from `first_id` on, while each camera sends one
            every 0.2 s: until the kept reader hears the kept camera's (10 s at most), and 1 s more."""
            got = {name: set() for name in readers}
            end, frame_id = time.monotonic() + 10, first_id
            while time.monotonic() < end:
                for name, camera in cameras.items():
                    camera.send(frame_message(name, frame_id, FRAME))
                frame_id += 1
                for name, reader in readers.items():
                    got[name] |= {(h["camera_id"], h["frame_id"]) for h, _ in reader.collect(10, timeout=0.2)
                                  if h["frame_id"] >= first_id}  # fmt: skip
                if any(camera == "kept" for camera, _ in got["kept"]):
                    end = min(end, time.monotonic() + 1.0)
            return got

        before = heard(0)
        status_before = ask_status()
        (tmp_path / "clients" / "gone.key").unlink()
        cut = wait_for(lambda: "the results socket" in daemon.log_text() and "was bound again" in daemon.log_text())
        after = heard(1000)
        status_after = ask_status()
        for client in (*cameras.values(), *readers.values(), operator):
            client.close()
        assert daemon.alive()
        log = daemon.log_text()
    assert {camera for camera, _ in before["kept"]} == {camera for camera, _ in before["gone"]} == {"kept", "gone"}
    assert status_before["ok"] is True
    assert cut, log
    assert after["gone"] == set(), after  # the removed subscriber hears nothing more
    assert {camera for camera, _ in after["kept"]} == {"kept"}, after  # the removed camera's frames get no result
    assert status_after["ok"] is False and "CURVE key was removed" in status_after["error"]
    assert "CURVE: refused frames from a client whose key" in log and "(0 added, 1 removed)" in log


def test_a_camera_with_keys_to_a_daemon_without_curve_says_so(tmp_path):
    """The reverse of a camera without keys: ZeroMQ refuses a CURVE client on a plain socket."""
    from edge.camera import run_camera
    from edge.errors import HandshakeError

    create_keys(tmp_path / "keys", "server")
    create_keys(tmp_path / "keys", "cam")
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"
    plain = zmq.Context.instance().socket(zmq.PULL)
    plain.bind(endpoint)
    try:
        keys = {"curve_secret": str(tmp_path / "keys" / "cam.key_secret"),
                "curve_server_key": str(tmp_path / "keys" / "server.key")}  # fmt: skip
        # Whichever side reads the other's greeting first says so: the daemon's side closes without a word.
        said = r"does not use CURVE, and this camera does: leave out --curve-secret|does the daemon use CURVE"
        with pytest.raises(HandshakeError, match=said):
            run_camera(str(_folder_of_one(tmp_path)), endpoint, linger_s=10, **keys)
        assert not plain.poll(200)  # nothing came through in the clear
    finally:
        plain.close(linger=0)


def test_a_client_pointed_at_another_of_the_daemons_sockets_says_so_at_once(tiny_model, tmp_path):
    """A camera given the results endpoint, a reader given the frames endpoint and `vqad ctl` the
    frames endpoint: the daemon's socket closes the connection in its handshake (the socket
    types do not pair), without an event on the client's side, and ZeroMQ does not connect
    again. The camera waited with "is that its frames endpoint?" and then said "sent 0 frames",
    the reader heard nothing, and ctl said "no answer". Each now names the endpoint and exits 1."""
    with DaemonProcess(tiny_model) as daemon:
        camera = run_vqad("camera", _folder_of_one(tmp_path), "--to", daemon.results, check=False, timeout=60)
        reader = run_vqad("watch", daemon.frames, "--count", "1", check=False, timeout=60)
        ctl = run_vqad("ctl", daemon.frames, "status", check=False, timeout=60)
        assert daemon.alive()
    said = "closed this {who}'s connection in its handshake: does it use CURVE (then give --curve-secret and " \
           "--curve-server-key), and is {endpoint} its {kind} endpoint?"  # fmt: skip
    assert camera.returncode == 1 and said.format(who="camera", endpoint=daemon.results, kind="frames") in camera.stderr
    assert "sent 0 frames" not in camera.stdout
    assert reader.returncode == 1 and said.format(who="reader", endpoint=daemon.frames, kind="results") in reader.stderr
    assert ctl.returncode == 1 and said.format(who="client", endpoint=daemon.frames, kind="control") in ctl.stderr


def test_a_connection_closed_in_its_handshake_is_a_refusal_only_before_one_got_through():
    """A live camera bridge must not end on the moment a restarting daemon closes a connection
    it had just made: once a handshake got through, the endpoint is the right one."""
    from edge.transport import HandshakeWatch

    connected, closed = {"event": zmq.EVENT_CONNECTED, "value": 0}, {"event": zmq.EVENT_DISCONNECTED, "value": 0}
    succeeded = {"event": zmq.EVENT_HANDSHAKE_SUCCEEDED, "value": 0}
    sock = zmq.Context.instance().socket(zmq.PUSH)
    watch = HandshakeWatch(sock, "tcp://box:5556", "camera", "frames", curve=False)
    try:
        first = [watch._outcome(e) for e in (connected, closed)]
        later = [watch._outcome(e) for e in (connected, succeeded, closed, connected, closed)]
    finally:
        watch.close()
        sock.close(linger=0)
    assert first == [(None, 0, False), (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0, False)]
    assert [event for event, _, _ in later] == [None, zmq.EVENT_HANDSHAKE_SUCCEEDED, None, None, None]


def test_a_refused_handshake_is_named_by_what_the_monitor_says():
    """The monitor's event and this side's keys name the cause; a failure without detail, whose
    causes are several, names them all, the endpoint's kind among them (a camera pointed at the
    results socket is closed without detail too)."""
    from edge.transport import HandshakeWatch

    sock = zmq.Context.instance().socket(zmq.PUSH)
    plain = HandshakeWatch(sock, "tcp://box:5556", "camera", "frames", curve=False)
    keyed = HandshakeWatch(sock, "tcp://box:5556", "camera", "frames", curve=True)
    try:
        said = {
            (watch is keyed, event): watch._reason(event, value)
            for watch in (plain, keyed)
            for event, value in ((zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400), (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32),
                                 (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH))
        }  # fmt: skip
    finally:
        plain.close()
        keyed.close()
        sock.close(linger=0)
    no_detail, mismatch = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    assert said[(True, zmq.EVENT_HANDSHAKE_FAILED_AUTH)].startswith(
        "the daemon at tcp://box:5556 refused this camera's CURVE key (status 400)"
    )
    assert said[(False, mismatch)] == (
        "the daemon at tcp://box:5556 refused this camera's connection: it uses CURVE, and this camera has no keys "
        "(--curve-secret, --curve-server-key)"
    )
    assert said[(True, mismatch)].startswith("the daemon at tcp://box:5556 does not use CURVE, and this camera does")
    assert said[(False, no_detail)] == (
        "the daemon at tcp://box:5556 closed this camera's connection in its handshake: does it use CURVE (then "
        "give --curve-secret and --curve-server-key), and is tcp://box:5556 its frames endpoint?"
    )
    assert said[(True, no_detail)].endswith(
        "is --curve-server-key the daemon's public key (its server.key), does the daemon use CURVE (edge.curve), "
        "and is tcp://box:5556 its frames endpoint?"
    )


def test_an_authorized_keys_dir_without_a_key_is_refused(tmp_path):
    """A daemon that would refuse every client, and read its keys only at its start, is not started."""
    keys = tmp_path / "clients"
    keys.mkdir()
    create_keys(tmp_path / "server", "server")  # a pair elsewhere: not an allowed client
    with pytest.raises(ConfigError, match=r"clients holds no public key \(\*\.key\): every camera and subscriber"):
        authorized_keys(keys)
    create_keys(keys, "cam0")
    assert len(authorized_keys(keys)) == 1


def test_with_curve_a_daemon_that_subscribes_to_cameras_takes_frames_only_from_authorized_keys(tiny_model, tmp_path):
    """`frames_mode: sub` with CURVE on (docs/protocol.md, "Security"): the daemon stays the
    CURVE server on the SUB it connects, and a publishing camera is a CURVE client of its key,
    though it binds. A camera whose key is not authorized is heard by nobody."""
    create_keys(tmp_path / "server", "server")
    create_keys(tmp_path / "clients", "cam")
    create_keys(tmp_path / "strangers", "mallory")
    server_public = tmp_path / "server" / "server.key"
    ctx = zmq.Context.instance()
    cameras = {}
    for name, secret in (("cam", tmp_path / "clients" / "cam.key_secret"),
                         ("mallory", tmp_path / "strangers" / "mallory.key_secret")):  # fmt: skip
        pub = ctx.socket(zmq.PUB)
        make_curve_client(pub, secret, server_public)
        pub.bind(endpoint := f"tcp://127.0.0.1:{free_loopback_port()}")
        cameras[name] = (pub, endpoint)
    try:
        with DaemonProcess(
            tiny_model,
            "--set", "edge.frames_mode=sub",
            "--set", f"edge.camera_endpoints={cameras['cam'][1]},{cameras['mallory'][1]}",
            "--set", "edge.curve.enabled=true",
            "--set", f"edge.curve.server_secret_key={tmp_path / 'server' / 'server.key_secret'}",
            "--set", f"edge.curve.authorized_keys_dir={tmp_path / 'clients'}",
        ) as daemon:  # fmt: skip
            sub = Subscriber(daemon.results, curve=(tmp_path / "clients" / "cam.key_secret", server_public))
            time.sleep(1.0)  # the daemon's SUB joins both cameras' PUBs, and this subscriber the results
            for i in range(3):
                for name, (pub, _) in cameras.items():
                    pub.send_multipart(frame_message(name, i, FRAME))
            results = sub.collect(3, timeout=30)
            late = sub.collect(1, timeout=1.0)
            sub.close()
            log = daemon.log_text()
    finally:
        for pub, _ in cameras.values():
            pub.close(linger=0)
    assert sorted((h["camera_id"], h["frame_id"]) for h, _ in results) == [("cam", 0), ("cam", 1), ("cam", 2)]
    assert late == [] and "refused a peer" in log


def test_a_camera_without_a_daemon_says_what_it_waits_for(tmp_path, monkeypatch, caplog):
    """No daemon at the endpoint: the frames queue up to the high-water mark, the camera waits,
    says so once, and stops when asked."""
    from edge import camera

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16), np.uint8))
    monkeypatch.setattr(camera, "WAIT_HINT_S", 0.2)
    deadline = time.monotonic() + 2.0
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"  # nobody listens
    with caplog.at_level(logging.WARNING, logger="edge.camera"):
        sent = camera.run_camera(
            str(tmp_path), endpoint, loop=True, sndhwm=1, linger_s=0, stop=lambda: time.monotonic() > deadline
        )
    waits = [r for r in caplog.records if "to take a frame: is it running, and is that its frames" in r.getMessage()]
    assert len(waits) == 1 and endpoint in waits[0].getMessage() and sent.frames >= 1


def test_a_part_id_from_a_file_name_is_the_name_a_person_types():
    """`vqad camera --part-id-from-name`: a photo of master part RR-SCRATCH-1 named
    RR-SCRATCH-1.png was sent as part "RR-SCRATCH-1.png", which the record's part lookup did
    not find under RR-SCRATCH-1."""
    from edge.camera import part_id_of

    assert part_id_of("/line/masters/RR-SCRATCH-1.png") == "RR-SCRATCH-1"
    assert part_id_of("SN.2026.0042.TIFF") == "SN.2026.0042"  # only an image suffix goes
    assert part_id_of("run.mp4#12") == "run.mp4#12"  # a video's frame keeps its number
    assert part_id_of("x" * 200 + ".png") == "x" * 128


def test_a_camera_whose_frames_cannot_leave_says_so_on_the_way_out(tmp_path):
    """Frames still queued when the linger runs out are dropped: the camera names the endpoint,
    does not claim to have sent them, and exits 1. It printed "sent 1 frames" and exited 0."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16), np.uint8))
    endpoint = f"tcp://127.0.0.1:{free_loopback_port()}"  # nobody listens
    started = time.monotonic()
    proc = run_vqad("camera", tmp_path, "--to", endpoint, "--count", "1", "--camera-id", "cam7", "--linger-s", "0.3",
                    check=False, timeout=60)  # fmt: skip
    assert 0.25 < time.monotonic() - started < 30.0
    assert proc.returncode == 1 and "sent 1 frames" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "1 frames handed over; the last of them (at most --hwm 4) could not leave" in proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "frames still queued after 0.3 s were dropped" in line]
    assert len(warned) == 1 and "camera cam7" in warned[0] and endpoint in warned[0]


def test_the_pacer_holds_the_rate_and_catches_up_by_two_frames_only(monkeypatch):
    from edge import camera

    now = [100.0]
    slept: list[float] = []
    monkeypatch.setattr(camera.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(camera.time, "sleep", lambda s: (slept.append(s), now.__setitem__(0, now[0] + s)))
    pace = camera.Pacer(10.0)
    pace.wait()  # the first frame goes at once
    pace.wait()
    assert slept == [pytest.approx(0.1)]
    now[0] += 5.0  # the sender stalled for 50 periods
    stalled_at = now[0]
    for _ in range(10):
        pace.wait()
    # Two frames go early to catch up, not the 50 it missed: 10 frames take 7 periods.
    assert now[0] - stalled_at == pytest.approx(0.7)
    assert camera.Pacer(0).period == 0.0


def test_inorder_hands_results_on_in_the_order_they_came_and_bounds_what_is_in_flight():
    """Decoding side by side (edge.inorder): an item whose work finishes last still goes on
    first; a full window holds the submitter back; a hand-on that fails stops the submitter."""
    import threading

    from edge.inorder import InOrder

    handed: list[int] = []
    release = threading.Event()

    def work(i: int) -> int:
        if i == 0:
            release.wait(5)  # the first item finishes after every other
        return i

    waited: list[int] = []
    pool = InOrder(3, work, handed.append, window=4, name="t-order")
    for i in range(5):  # item 0 awaited, 1-4 in the window
        pool.submit(i)
    blocked = threading.Thread(target=lambda: pool.submit(5, waiting=lambda: waited.append(1)))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive() and waited and handed == []  # the window of 4 is full behind item 0
    release.set()
    blocked.join(5)
    for i in range(6, 40):
        pool.submit(i)
    pool.close(timeout=10)
    assert handed == list(range(40))

    def broken(_: int) -> None:
        raise RuntimeError("a bug")

    failing = InOrder(2, work, broken, window=1, name="t-broken", guard=lambda run: lambda: _swallow(run))
    release.set()
    with pytest.raises(RuntimeError, match="t-broken thread has stopped"):
        for i in range(1, 50):  # bounded: the first hand-on fails, then the window stays full
            failing.submit(i)
    failing.close(timeout=1)


def _swallow(run) -> None:
    try:
        run()
    except RuntimeError:
        pass


def test_frames_decoded_side_by_side_keep_each_cameras_order_and_every_check(tiny_model):
    """`edge.decode_workers` 3: large PNG frames (slow to decode) between small raw ones, two
    cameras, a malformed frame and a camera that repeats its frame. Each camera's results come
    in the order it sent them, none is taken for an id that went back, and the repeated frame is
    still found frozen."""
    rng = np.random.default_rng(7)
    big = rng.integers(0, 255, (960, 1280, 3), dtype=np.uint8)
    messages, sent = [], {"a": [], "b": []}
    for i in range(24):
        camera = "ab"[i % 2]
        image = big if i % 3 == 0 else FRAME
        encoding = "png" if image is big else "raw"
        messages.append(frame_message(camera, i, image, encoding))
        sent[camera].append(i)
    short = {"v": 1, "camera_id": "a", "frame_id": 100, "ts_ns": 0, "encoding": "raw", "shape": [4, 4, 3]}
    messages.insert(5, [json.dumps({**short, "dtype": "uint8"}).encode(), b"too short"])
    messages += [frame_message("c", 0, FRAME), frame_message("c", 1, FRAME)]  # frozen: the same frame again
    port = free_loopback_port()
    args = ("--set", "edge.decode_workers=3", "--max-batch", "4", "--metrics-port", str(port))
    with DaemonProcess(tiny_model, *args) as daemon:
        sub = Subscriber(daemon.results)
        cam = Camera(daemon.frames)
        for message in messages:
            cam.send(message)
        results = [h for h, _ in sub.collect(len(messages), timeout=60)]
        cam.close()
        log_text = daemon.log_text()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert len(results) == len(messages)
    for camera, ids in sent.items():
        assert [h["frame_id"] for h in results if h["camera_id"] == camera and h["status"] == "ok"] == ids
    malformed = [h for h in results if h["frame_id"] == 100]
    assert malformed[0]["status"] == "error" and "bytes" in malformed[0]["error"]
    repeated = [h for h in results if h["camera_id"] == "c"]
    assert "frozen" in repeated[1]["health"]["reasons"] and "frozen" not in repeated[0]["health"]["reasons"]
    assert "sent frame id" not in log_text and "decoders 3" in log_text
    # The time the decoding threads took, for the alert that says they set the daemon's pace.
    assert re.search(r"^vqad_decode_workers 3\.0$", metrics, re.M)
    assert 0 < float(re.search(r"^vqad_decode_seconds_total (\S+)$", metrics, re.M).group(1)) < 60


def test_a_camera_sends_jpeg_and_png_files_as_they_are_in_their_own_encoding(tmp_path, monkeypatch):
    """`vqad camera DIR --encoding jpeg|png`: a file of that encoding travels as its own bytes,
    not decoded by the camera, so the daemon decodes the pixels training and `vqad score` read
    (a JPEG encoded again would be compressed twice); a 16-bit PNG, read by its pixel_bits, and
    a file of the other encoding are decoded and encoded from the frame."""
    from edge import camera
    from edge.frames import read_image
    from edge.protocol import decode_image

    decoded: list[str] = []
    monkeypatch.setattr(camera, "read_image", lambda path, *a: decoded.append(path.name) or read_image(path, *a))

    rng = np.random.default_rng(3)
    colour = cv2.GaussianBlur(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "a.jpg"), colour, [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(tmp_path / "b.png"), colour[:, :, 0])
    cv2.imwrite(str(tmp_path / "c.png"), (rng.integers(0, 4096, (60, 80)) * 16).astype(np.uint16))
    for encoding, own in (("jpeg", {"a.jpg"}), ("png", {"b.png"})):
        decoded.clear()
        ctx = zmq.Context.instance()
        pull = ctx.socket(zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        try:
            camera.run_camera(str(tmp_path), f"tcp://127.0.0.1:{port}", encoding=encoding, linger_s=5)
            received = [pull.recv_multipart() for _ in range(3) if pull.poll(5000)]
        finally:
            pull.close(linger=0)
        assert len(received) == 3
        assert sorted(decoded) == sorted({"a.jpg", "b.png", "c.png"} - own), encoding
        for (head, payload), name in zip(received, ("a.jpg", "b.png", "c.png"), strict=True):
            assert json.loads(head)["encoding"] == encoding and json.loads(head)["shape"][:2] == [60, 80]
            file = tmp_path / name
            assert (payload == file.read_bytes()) == (name in own), (encoding, name)
            if name in own or encoding == "png":  # what the daemon decodes is what training reads
                np.testing.assert_array_equal(decode_image(payload), read_image(file))
