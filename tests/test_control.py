"""Running a line for months: the control socket (`vqad ctl`), a threshold changed at runtime,
a model swapped without a stop (on `reload` and on SIGHUP), a failed swap that keeps the old
model serving, paused cameras; every change in the record."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import urllib.request

import cv2
import numpy as np
import onnx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge import serving as serving_module
from edge.metrics import DaemonMetrics
from edge.package import load_package, sha256_file, write_model_json
from edge.protocol import frame_message
from edge.record import Record
from edge.serving import load_serving
from edge.settings import EdgeConfig
from edge.transport import free_loopback_port
from tests.conftest import run_vqad
from tests.edge_helpers import Camera, DaemonProcess, Subscriber, short_ipc_dir


def _twin(package, out):
    """The same model under another identity: a doc string in its graphs changes their sha256."""
    shutil.copytree(package, out)
    meta = json.loads((out / "model.json").read_text())
    for name in ("model.onnx", "model_fp16.onnx"):
        graph = onnx.load(str(out / name))
        graph.doc_string = "twin"
        onnx.save(graph, str(out / name))
        meta["files"][name] = sha256_file(out / name)
    write_model_json(out, meta)
    return out


def _ctl(endpoint, *args):
    return json.loads(run_vqad("ctl", endpoint, *args, "--by", "test").stdout)


def test_a_swap_during_a_stream_loses_nothing_and_changes_the_model_once_per_camera(tiny_model, tmp_path):
    a = tiny_model
    b = _twin(tiny_model, tmp_path / "b")
    broken = _twin(tiny_model, tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not the graph model.json names")
    current = tmp_path / "current"
    current.symlink_to(a)
    url = f"sqlite:///{tmp_path / 'line.db'}"
    with DaemonProcess(current, "--control", f"ipc://{tmp_path}/ctl", "--record", url) as daemon:
        control = f"ipc://{tmp_path}/ctl"
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        frame = np.full((48, 48, 3), 90, np.uint8)
        n = 120
        try:
            for i in range(n):
                for camera in ("left", "right"):
                    cam.send(frame_message(camera, i, frame, "raw"))
                time.sleep(0.01)
                if i == 40:
                    current.unlink()
                    current.symlink_to(broken)  # a bad package: refused, the old one serves on
                    pending = run_vqad("ctl", control, "status", "--by", "test")
                    refused = run_vqad("ctl", control, "reload", check=False)
                    current.unlink()
                    current.symlink_to(b)
                    swapped = _ctl(control, "reload")
            results = sub.collect(2 * n, timeout=60)
        finally:
            sub.close()
            cam.close()
        status = _ctl(control, "status")
    assert refused.returncode != 0 and "refused" in refused.stderr
    assert swapped["ok"] and swapped["to"]["sha256"] == load_package(b).sha256
    assert swapped["threshold"] == {"from": load_package(a).threshold, "to": load_package(b).threshold}
    assert status["model"]["sha256"] == load_package(b).sha256 and status["stalled"] is False
    # Where the package is: the symlink as given, the folder serving, and a repointed symlink
    # that no reload has followed (the broken package's, while `a` served on).
    assert status["model_dir"] == str(current) and status["serving_from"] == str(b.resolve())
    assert status["reload_pending"] is False and status["reload_would_load"] == []
    said = json.loads(pending.stdout)
    assert said["serving_from"] == str(a.resolve()) and said["reload_pending"] is True
    assert said["reload_would_load"] == ["another folder", "another model"]
    assert f"a reload would load another folder and another model ({current} -> {broken.resolve()}" in pending.stderr
    assert status["recording"] and status["record"]["unrecorded"] == 0 and status["record"]["behind_s"] < 60
    keys = [(h["camera_id"], h["frame_id"]) for h, _ in results]
    assert len(keys) == 2 * n and len(set(keys)) == 2 * n  # none lost, none answered twice
    for camera in ("left", "right"):
        shas = [
            h["model"]["sha256"] for h, _ in sorted(results, key=lambda r: r[0]["frame_id"]) if h["camera_id"] == camera
        ]
        changes = sum(1 for x, y in zip(shas, shas[1:], strict=False) if x != y)
        assert changes == 1 and shas[0] == load_package(a).sha256 and shas[-1] == load_package(b).sha256, camera
    kinds = [e["kind"] for e in Record(url).events()]
    assert kinds.count("reload") == 1  # the refused one changed nothing
    assert "reload of" in daemon.log_text() and "failed, the old model keeps serving" in daemon.log_text()


def _paused_in_metrics(port: int) -> dict[str, float]:
    """vqad_camera_paused's samples on the daemon's metrics endpoint, {camera: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        families = text_string_to_metric_families(response.read().decode())
    return {s.labels["camera"]: s.value for f in families if f.name == "vqad_camera_paused" for s in f.samples}


def test_a_new_threshold_applies_from_the_next_batch_and_is_recorded(tiny_model, synth_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'line.db'}"
    control = f"ipc://{tmp_path}/ctl"
    goods = [cv2.imread(str(p)) for p in sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))]
    metrics_port = free_loopback_port()
    with DaemonProcess(
        tiny_model, "--control", control, "--record", url, "--metrics-port", str(metrics_port)
    ) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            cam.send(frame_message("c", 0, goods[0], "raw"))
            before = sub.collect(1)[0][0]
            before_source = _ctl(control, "status")["threshold_source"]
            # A threshold that would pass every defect is a slip until said otherwise.
            slip = run_vqad("ctl", control, "set-threshold", "123.5", "--reason", "audit 42", check=False)
            unchanged = _ctl(control, "status")["threshold"]
            reply = _ctl(control, "set-threshold", "123.5", "--reason", "audit 42", "--force")
            source = _ctl(control, "status")["threshold_source"]
            cam.send(frame_message("c", 1, goods[1], "raw"))
            after = sub.collect(1)[0][0]
            paused_reply = _ctl(control, "pause", "c")
            cam.send(frame_message("c", 2, goods[2], "raw"))
            paused = sub.collect(1)[0][0]
            paused_metrics = _paused_in_metrics(metrics_port)
            resumed_reply = _ctl(control, "resume", "c")
            resumed_metrics = _paused_in_metrics(metrics_port)
            cam.send(frame_message("c", 3, goods[3], "raw"))
            resumed = sub.collect(1)[0][0]
        finally:
            sub.close()
            cam.close()
        # A mistyped id pauses nothing that runs, and a resume of a camera that was not paused
        # resumes nothing: the reply says so, and ctl warns.
        mistyped = run_vqad("ctl", control, "resume", "C")
        bad = run_vqad("ctl", control, "set-threshold", "1.0", check=False)  # no reason: refused
        endless = run_vqad("ctl", control, "set-threshold", "inf", "--reason", "x", check=False)  # passes all
        kept = _ctl(control, "status")["threshold"]
    assert slip.returncode == 1 and "times the calibrated threshold" in slip.stderr and "--force" in slip.stderr
    assert unchanged == before["threshold"]
    assert reply["previous"] == before["threshold"] and after["threshold"] == 123.5 and after["decision"] == "pass"
    assert paused["status"] == "error" and "paused" in paused["error"] and resumed["status"] == "ok"
    assert {k: paused_reply[k] for k in ("paused", "changed", "seen")} == {
        "paused": ["c"],
        "changed": True,
        "seen": True,
    }
    assert (resumed_reply["paused"], resumed_reply["changed"]) == ([], True)
    assert (paused_metrics, resumed_metrics) == ({"c": 1.0}, {})  # for VqadCameraPaused
    assert json.loads(mistyped.stdout) == {"ok": True, "paused": [], "changed": False, "seen": False, "kept": True}
    assert "camera 'C' was not paused" in mistyped.stderr and "'C' has sent no frame" in mistyped.stderr
    assert bad.returncode != 0 and "--reason" in bad.stderr
    assert endless.returncode == 1 and "finite" in endless.stderr and kept == 123.5
    assert before_source["by"] == "vqad eval" and before_source["n_images"] >= 2
    assert {k: source[k] for k in ("by", "who", "reason")} == {
        "by": "vqad ctl set-threshold",
        "who": "test",
        "reason": "audit 42",
    }
    assert source["at"].startswith(time.strftime("%Y-", time.gmtime()))
    events = Record(url).events()
    assert [e["kind"] for e in events][::-1] == ["start", "set-threshold", "pause", "resume", "resume", "stop"]
    assert events[-2]["by"] == "test" and events[-2]["detail"]["reason"] == "audit 42"
    # Boxes on several lines may share a record: each change names its box, its run and its model.
    assert {e["detail"]["daemon"]["host"] for e in events} == {socket.gethostname()}
    assert len({e["detail"]["daemon"]["run"] for e in events}) == 1
    package = load_package(tiny_model)
    assert events[-1]["detail"]["model"]["sha256"] == package.sha256
    daily = run_vqad("records", url, "--daily").stdout  # for a person: the box and the model, shortly
    said = f"set-threshold by test on {socket.gethostname()} (model {package.name} {package.sha256[:12]}): threshold "
    assert said in daily and " → 123.5: audit 42\n" in daily, daily
    changes = json.loads(run_vqad("records", url, "--daily", "--format", "json").stdout)["changes"]
    (threshold,) = [c for c in changes if c["kind"] == "set-threshold"]  # for a program, the same words
    assert threshold["said"].startswith("threshold ") and threshold["said"].endswith(" → 123.5: audit 42"), threshold


def test_what_ctl_changed_outlives_a_restart_until_a_newer_decision(tiny_model, tmp_path):
    """A power cut or systemd restarts the daemon: the threshold set with vqad ctl and the paused
    camera are still in force. The kept threshold gives way to a newer decision: the daemon
    started on another configured threshold (edge.threshold here; a recalibrated package alike),
    or a reload, which serves the package's threshold in the running daemon too."""
    from edge.state import Overrides

    control, state = f"ipc://{tmp_path}/ctl", short_ipc_dir()
    daemon = DaemonProcess(tiny_model, "--control", control, ipc_dir=state)
    with daemon:
        configured = _ctl(control, "status")["threshold"]
        _ctl(control, "set-threshold", "123.5", "--reason", "audit 42", "--force")
        _ctl(control, "pause", "left")
    check = run_vqad("serve", tiny_model, "--check", "--set", f"edge.state_dir={state}").stdout
    assert "threshold 123.5, set with vqad ctl by test (audit 42), kept over" in check, check
    assert "paused with vqad ctl, and kept paused: left" in check
    check = run_vqad("serve", tiny_model, "--check", "--threshold", "50", "--set", f"edge.state_dir={state}").stdout
    assert "note: the threshold 123.5 set with vqad ctl by test (audit 42) is dropped at the start" in check, check
    with daemon:
        kept = _ctl(control, "status")
    assert kept["threshold"] == 123.5 and kept["paused"] == ["left"]
    assert {k: kept["threshold_source"][k] for k in ("who", "reason")} == {"who": "test", "reason": "audit 42"}
    assert "threshold 123.5 kept from before the restart (set by test: audit 42)" in daemon.log_text()
    url = f"sqlite:///{tmp_path / 'line.db'}"
    metrics_port = free_loopback_port()
    reconfigured = DaemonProcess(tiny_model, "--control", control, "--threshold", "50", "--record", url,
                                 "--metrics-port", str(metrics_port), ipc_dir=state)  # fmt: skip
    with reconfigured:
        status = _ctl(control, "status")
        paused_metrics = _paused_in_metrics(metrics_port)
    assert status["threshold"] == 50 and status["paused"] == ["left"] and paused_metrics == {"left": 1.0}
    start, event = [e for e in Record(url).events() if e["kind"] != "stop"]  # why the line's threshold changed
    assert (start["kind"], start["detail"]["threshold"]) == ("start", 50)  # after the drop: the one it serves
    assert (event["kind"], event["by"]) == ("threshold-dropped", "vqad serve (start)")
    package = load_package(tiny_model)
    model = {"name": package.name, "sha256": package.sha256}
    assert event["detail"] == {
        "from": 123.5,
        "to": 50,
        "set_by": "test",
        "reason": "audit 42",
        "model": model,
        "daemon": {"host": socket.gethostname(), "run": event["detail"]["daemon"]["run"]},
    }
    assert "the threshold 123.5 set with vqad ctl before the restart (by test: audit 42) is dropped" in (
        reconfigured.log_text()
    )
    with daemon:  # on the package's threshold again: the dropped one does not come back
        assert _ctl(control, "status")["threshold"] == configured
        _ctl(control, "set-threshold", "99", "--reason", "x", "--force")
        _ctl(control, "resume", "left")
        _ctl(control, "reload")
    kept = Overrides.load(state)  # what the next start would put back
    assert kept.threshold is None and kept.paused == []


def test_a_way_back_to_the_calibrated_threshold_is_never_refused(tiny_model, tmp_path):
    """A daemon started at a trial threshold far under the package's (`--threshold`,
    edge.threshold): `ctl set-threshold` back to the calibration's was refused as "100 times the
    calibrated threshold", which named the trial one. Three times the higher of the two is
    refused, and the refusal names which it is."""
    calibrated = load_package(tiny_model).threshold
    control = f"ipc://{tmp_path}/ctl"
    with DaemonProcess(tiny_model, "--control", control, "--threshold", str(calibrated / 100)):
        back = _ctl(control, "set-threshold", str(calibrated), "--reason", "the trial is over")
        slip = run_vqad("ctl", control, "set-threshold", str(3 * calibrated), "--reason", "x", check=False)
    assert back["threshold"] == calibrated
    assert slip.returncode == 1 and f"3 times the calibrated threshold ({calibrated:.6g})" in slip.stderr
    with DaemonProcess(tiny_model, "--control", control, "--threshold", str(2 * calibrated)):
        up = run_vqad("ctl", control, "set-threshold", str(7 * calibrated), "--reason", "x", check=False)
    assert up.returncode == 1 and f"3.5 times edge.threshold ({2 * calibrated:.6g})" in up.stderr, up.stderr


def test_a_package_recalibrated_in_place_is_a_reload_pending_until_reloaded(tiny_model, line_good, tmp_path):
    """`vqad calibrate MODEL_DIR` on the serving package rewrites its threshold; the daemon
    decides by the one it loaded until a reload, and nothing said so: `vqad ctl status` named the
    model alone, which had not changed."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    control = f"ipc://{tmp_path}/ctl"
    with DaemonProcess(model, "--control", control):
        before = _ctl(control, "status")
        assert before["reload_pending"] is False and before["model_dir_error"] is None
        calibrated = run_vqad("calibrate", model, line_good, "--target-frr", "0.2", "--force")
        assert f"a daemon serving {model} decides by the threshold it loaded until" in calibrated.stdout
        said = run_vqad("ctl", control, "status", "--by", "test")
        status = json.loads(said.stdout)
        assert status["reload_would_load"] == ["another calibration"] and status["threshold"] == before["threshold"]
        assert "a reload would load another calibration" in said.stderr, said.stderr
        _ctl(control, "reload")
        after, loaded = _ctl(control, "status"), load_package(model).threshold
        run_vqad("calibrate", model, line_good, "--target-frr", "0.2", "--force", "--ignore", "0,0,16,16")
        masked = _ctl(control, "status")["reload_would_load"]
        _ctl(control, "reload")
        served = _ctl(control, "status")
        time.sleep(1.1)  # a calibration is stamped to the second: the same images, a second later, differ
        run_vqad("calibrate", model, line_good, "--target-frr", "0.2", "--force")  # the same images again
        again = _ctl(control, "status")
        shutil.copy(tiny_model / "model.json", model / "model.json")  # the package as exported: no mask
        unmasked = _ctl(control, "status")
    assert after["reload_pending"] is False and after["threshold"] == loaded != before["threshold"]
    assert masked == ["another calibration", "another inspection mask"], masked
    assert served["reload_pending"] is False and served["inspection"]["mask_sha256"] is not None
    # The same threshold, calibrated anew: another calibration all the same (its time, its images).
    assert again["reload_would_load"] == ["another calibration"] and again["threshold"] == served["threshold"]
    assert unmasked["reload_would_load"] == ["another calibration", "no inspection mask"]


def test_a_model_folder_that_hangs_costs_status_two_seconds_not_its_answer(tiny_model, monkeypatch):
    """The look at MODEL_DIR runs in a thread of its own: a network mount that hangs must not
    leave `status` unanswered (docs/decisions.md, "`vqad ctl status` answers while a reload
    loads"), nor start a thread a call."""
    from edge import control

    release = threading.Event()
    looks = []

    def hanging(root):
        looks.append(root)
        release.wait(10)
        return load_package(root)

    monkeypatch.setattr(control, "load_package", hanging)
    monkeypatch.setattr(control, "PACKAGE_LOOK_S", 0.3)
    look = control.PackageLook(tiny_model)
    for _ in range(2):
        t0 = time.monotonic()
        assert "did not answer within 0.3 s" in look.now()["error"]
        assert time.monotonic() - t0 < 2
    assert len(looks) == 1  # the hung look waited on again
    release.set()
    monkeypatch.setattr(control, "PACKAGE_LOOK_S", 30.0)  # a loaded CPU's thread start and read
    assert look.now()["sha256"] == load_package(tiny_model).sha256


def test_a_state_folder_that_keeps_nothing_is_said_to_ctl_and_a_stop_is_still_clean(tiny_model, tmp_path):
    """A model folder on a read-only root filesystem, as the state folder: the daemon serves. A
    SIGTERM then ended in "cannot use …/vqad-serve.running" and exit 7 (the marker it never
    wrote could not be removed), and systemd counted a failure. A threshold set with vqad ctl
    was answered ok, silent that a restart would drop it. (Names taken by folders stand in for
    a read-only disk, which root's tests cannot make.)"""
    control, state = f"ipc://{tmp_path}/ctl", short_ipc_dir()
    for name in ("vqad-serve.running", "vqad-serve.overrides.json"):
        (state / name).mkdir()
        (state / name / "in the way").write_text("")
    daemon = DaemonProcess(tiny_model, "--control", control, ipc_dir=state).start()
    try:
        said = run_vqad("ctl", control, "set-threshold", "2.5", "--reason", "audit", "--by", "test")
        assert json.loads(said.stdout)["kept"] is False and json.loads(said.stdout)["threshold"] == 2.5
        assert "could not keep this for its next start" in said.stderr, said.stderr
        paused = run_vqad("ctl", control, "pause", "left", "--by", "test")
        assert json.loads(paused.stdout)["kept"] is False and "could not keep this" in paused.stderr
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_text()
    assert "shut down cleanly" in daemon.log_text() and "cannot use" not in daemon.log_text()
    assert "edge.state_dir names another folder" in daemon.log_text()
    (tmp_path / "a file").write_text("")  # a folder under it cannot be made
    check = run_vqad("serve", tiny_model, "--check", "--set", f"edge.state_dir={tmp_path / 'a file' / 'state'}",
                     check=False)  # fmt: skip
    assert check.returncode == 3 and "cannot be written" in check.stderr, check.stderr
    assert "edge.state_dir names another folder" in check.stderr


def test_an_overrides_file_cut_short_is_no_reason_not_to_start(tmp_path, caplog):
    """A file cut short, or one of the wrong shape (edited by hand), is warned of, and the start
    goes on without it; what is written next reads back."""
    from edge.state import Overrides

    for text in ('{"threshold": {"value": 1.5, "sour', '{"paused": "left"}',
                 '{"threshold": {"value": 1.5, "source": "x", "model_sha256": "ab", "replaces": 1.0}}'):  # fmt: skip
        (tmp_path / Overrides.FILE_NAME).write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edge.state"):
            overrides = Overrides.load(tmp_path)
        assert overrides.threshold is None and overrides.paused == [] and "is unreadable" in caplog.text, text
    overrides.paused = ["left"]
    overrides.save()
    assert Overrides.load(tmp_path).paused == ["left"]


def test_vqad_ctl_offers_the_commands_the_daemon_answers():
    """The command line keeps its own list (edge.control is too heavy to import for every vqad
    command's parser): the two must not drift apart."""
    from edge.control import COMMANDS
    from vqad.commands.line import CTL_COMMANDS

    assert CTL_COMMANDS == COMMANDS


def test_a_malformed_control_request_is_refused_and_the_daemon_goes_on(tiny_model, tmp_path):
    """A request missing an argument, or with one of another type, is answered with the reason;
    it ended the control thread, and the daemon with it (exit 8), before."""
    import zmq

    control = f"ipc://{tmp_path}/ctl"
    malformed = [
        ({"command": "set-threshold", "args": {"threshold": 2.0, "reason": "x"}}, "missing argument 'value'"),
        ({"command": "set-threshold", "args": {"value": 2.0, "reason": ["x"]}}, "argument 'reason' must be str"),
        ({"command": "set-threshold", "args": {"value": True, "reason": "x"}}, "argument 'value' must be"),
        ({"command": "set-threshold", "args": {"value": 2.0, "reason": "x", "force": "yes"}}, "'force' must be true"),
        ({"command": "pause", "args": {"camera": ["a"]}}, "argument 'camera' must be str"),
        ({"command": "resume", "args": {}}, "missing argument 'camera'"),
        ({"command": "pause", "args": {"camera": ""}}, "argument 'camera' must be 1..128 printable characters"),
        ({"command": "pause", "args": ["a"]}, "a command's args are a JSON object"),
        ({"command": ["status"]}, "unknown command"),
    ]
    ctx = zmq.Context.instance()
    with DaemonProcess(tiny_model, "--control", control) as daemon:
        for request, why in malformed:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(control)
            try:
                sock.send(json.dumps(request).encode())
                assert sock.poll(10_000), f"no answer to {request}"
                reply = json.loads(sock.recv())
            finally:
                sock.close()
            assert reply["ok"] is False and why in reply["error"], (request, reply)
        assert daemon.alive() and _ctl(control, "status")["paused"] == []


def test_ctl_names_a_daemon_that_does_not_answer(tmp_path):
    started = time.monotonic()
    proc = run_vqad("ctl", f"ipc://{tmp_path}/nobody", "status", "--timeout", "1", check=False)
    assert proc.returncode != 0 and "no answer from" in proc.stderr
    assert time.monotonic() - started < 10  # the wait asked for, not the default 10 s


@pytest.mark.parametrize("command", ["reload", "status"])
def test_ctl_refuses_an_argument_the_command_would_ignore(command, tmp_path):
    """`reload NEW_DIR` would reload the daemon's own MODEL_DIR: refused before anything is sent."""
    proc = run_vqad("ctl", f"ipc://{tmp_path}/nobody", command, str(tmp_path / "new_model"), check=False)
    assert proc.returncode != 0 and "takes no argument" in proc.stderr and "no answer" not in proc.stderr


def test_sighup_reloads_the_model_the_symlink_points_to(tiny_model, tmp_path):
    b = _twin(tiny_model, tmp_path / "b")
    current = tmp_path / "current"
    current.symlink_to(tiny_model)
    with DaemonProcess(current, "--control", f"ipc://{tmp_path}/ctl") as daemon:
        current.unlink()
        current.symlink_to(b)
        os.kill(daemon.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        status = {}
        while time.monotonic() < deadline:
            status = _ctl(f"ipc://{tmp_path}/ctl", "status")
            if status["model"]["sha256"] == load_package(b).sha256:
                break
            time.sleep(0.2)
    assert status["model"]["sha256"] == load_package(b).sha256


def test_status_is_answered_while_a_slow_reload_loads_and_changes_wait_for_it(tiny_model, tmp_path):
    """A reload loads beside the serving model; one that takes long (a slow disk, a hung
    filesystem) left the control socket silent: `vqad ctl status` said the daemon did not answer.
    Now status names the reload at once, a change is refused until it is done, and a `ctl
    reload` that stops waiting says that the reload goes on."""
    control, slow = f"ipc://{tmp_path}/ctl", tmp_path / "slow"
    env = {"VQAD_SLOW_LOAD_FILE": str(slow), "VQAD_SLOW_LOAD_S": "6"}
    backend = ("--backend", "tests.faulty_backend:FaultyBackend")
    with DaemonProcess(tiny_model, *backend, "--control", control, env=env) as daemon:
        slow.touch()  # from now on each backend takes 6 s to load: the reload's two, 12 s
        waited = run_vqad("ctl", control, "reload", "--timeout", "1", "--by", "test", check=False)
        assert waited.returncode != 0 and "goes on past 1 s" in waited.stderr, waited.stderr
        status = json.loads(run_vqad("ctl", control, "status", "--timeout", "2").stdout)
        assert status["reloading"]["by"] == "test" and status["model"]["sha256"] == load_package(tiny_model).sha256
        refused = run_vqad("ctl", control, "pause", "cam0", check=False)
        assert refused.returncode != 0 and "a reload is under way" in refused.stderr, refused.stderr
        again = run_vqad("ctl", control, "reload", check=False)
        assert again.returncode != 0 and "a reload is under way" in again.stderr
        assert _ctl(control, "status")["reloading"] is not None  # each of them answered while it loads
        slow.unlink()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and status["reloading"] is not None:
            time.sleep(0.5)
            status = _ctl(control, "status")
        assert status["reloading"] is None and daemon.alive()
        assert _ctl(control, "pause", "cam0")["paused"] == ["cam0"]


def test_a_reload_that_hangs_is_given_up_and_its_late_model_is_never_swapped_in(tiny_model, tmp_path):
    """A reload whose load never returned (a stalled network filesystem) kept every change
    refused until the daemon restarted. Past edge.reload_timeout_s it is given up: its requester
    is told, the old model serves on, changes are taken again, and the model it loads, should
    it return after all, is closed, not swapped in."""
    control, slow = f"ipc://{tmp_path}/ctl", tmp_path / "slow"
    b = _twin(tiny_model, tmp_path / "b")
    current = tmp_path / "current"
    current.symlink_to(tiny_model)
    env = {"VQAD_SLOW_LOAD_FILE": str(slow), "VQAD_SLOW_LOAD_S": "6"}
    backend = ("--backend", "tests.faulty_backend:FaultyBackend", "--set", "edge.reload_timeout_s=2")
    with DaemonProcess(current, *backend, "--control", control, env=env) as daemon:
        current.unlink()
        current.symlink_to(b)
        slow.touch()  # each backend takes 6 s to load from now on: the reload's two, 12 s
        started = time.monotonic()
        given_up = run_vqad("ctl", control, "reload", "--timeout", "20", "--by", "test", check=False)
        assert given_up.returncode != 0 and "did not finish within 2 s (edge.reload_timeout_s): given up" in \
            given_up.stderr, given_up.stderr  # fmt: skip
        assert time.monotonic() - started < 10  # answered at the deadline (and ctl's start), not the load's end
        status = _ctl(control, "status")
        assert status["reloading"] is None and status["model"]["sha256"] == load_package(tiny_model).sha256
        assert _ctl(control, "pause", "cam0")["paused"] == ["cam0"]  # changes are taken again
        slow.unlink()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "returned after all" not in daemon.log_text():
            time.sleep(0.2)
        assert "the reload given up earlier returned after all" in daemon.log_text()
        status = _ctl(control, "status")
        assert status["model"]["sha256"] == load_package(tiny_model).sha256  # b never served
        assert _ctl(control, "reload")["to"]["sha256"] == load_package(b).sha256  # the next one does
        assert daemon.alive()


@pytest.mark.skipif(serving_module._MALLOC_TRIM is None, reason="glibc's malloc_trim only")
def test_a_closed_model_gives_the_heap_back(tiny_model):
    """A reload closes the old model; the heap freed meanwhile goes back to the system. glibc
    keeps it otherwise: a daemon that reloaded the demo's model 40 times held twice its RSS."""
    serving = load_serving(tiny_model, EdgeConfig(), DaemonMetrics())
    pieces = [np.ones(8192) for _ in range(4096)]  # 256 MiB in 64 KiB pieces: on the heap, not mapped
    last = pieces[-1]  # held at the heap's top, so the rest cannot just be cut off its end
    del pieces
    freed = psutil.Process().memory_info().rss
    serving.close()
    assert psutil.Process().memory_info().rss < freed - 200 * 2**20
    assert last.sum() == 8192


def test_a_configured_threshold_far_over_the_calibrated_one_is_warned_of_at_each_start(tiny_model, caplog):
    """edge.threshold (or --threshold) is the integrator's decision and serves; three times the
    package's calibrated threshold or more is said, since every defect between the two passes."""
    calibrated = load_package(tiny_model).threshold
    with caplog.at_level(logging.WARNING, logger="edge.serving"):
        for threshold in (None, 2.9 * calibrated, 10 * calibrated):
            serving = load_serving(tiny_model, EdgeConfig(threshold=threshold), DaemonMetrics())
            assert serving.scoring.threshold == (threshold or calibrated)
            serving.close()
    warnings = [r.getMessage() for r in caplog.records if "calibrated threshold" in r.getMessage()]
    assert len(warnings) == 1 and "is 10 times the package's calibrated threshold" in warnings[0], warnings
