"""The fail-rate alarm: a camera whose fails among its last 100 decisions pass the line's limit
raises it, once, and clears it once they fall back; a line's usual rejects raise nothing."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge.fail_rate import WINDOW, FailRateAlarm, end_left_raised, fail_rate_words
from edge.metrics import DaemonMetrics


def _gauges(metrics: DaemonMetrics) -> dict[tuple[str, str], float]:
    return {(m.name, s.labels["camera"]): s.value for g in (metrics.fail_rate, metrics.fail_rate_alarm)
            for m in g.collect() for s in m.samples}  # fmt: skip


def test_a_camera_that_fails_every_part_raises_the_alarm_at_its_21st_fail_and_clears_it_once(caplog):
    metrics, changes = DaemonMetrics(), []
    alarm = FailRateAlarm(0.2, metrics, lambda change, detail: changes.append((change, detail)))
    with caplog.at_level(logging.INFO, logger="edge.fail_rate"):
        for i in range(30):
            alarm.add("press1", "fail")
            assert ("press1" in alarm.raised) == (i >= 20), i  # more than 20 of 100
        state = alarm.state()
        assert state["limit"] == 0.2 and state["window"] == WINDOW and state["limits"] == {}
        assert state["alarms"]["press1"]["limit"] == 0.2
        assert state["alarms"]["press1"]["fails"] == 30 and state["alarms"]["press1"]["of"] == 30
        assert state["alarms"]["press1"]["since_ns"] > 0
        assert _gauges(metrics) == {("vqad_fail_rate", "press1"): 1.0, ("vqad_fail_rate_alarm", "press1"): 1.0}
        for i in range(WINDOW):  # the line put right: passes push the fails out of the window
            alarm.add("press1", "pass")
            assert ("press1" in alarm.raised) == (i < WINDOW - 16 - 1), i  # cleared at 16 fails, not 20
    assert alarm.state()["alarms"] == {}
    assert _gauges(metrics) == {("vqad_fail_rate", "press1"): 0.0, ("vqad_fail_rate_alarm", "press1"): 0.0}
    assert changes == [
        ("raised", {"camera": "press1", "fails": 21, "of": 21, "limit": 0.2, "unfit": 0}),
        ("cleared", {"camera": "press1", "fails": 16, "of": WINDOW, "limit": 0.2, "unfit": 0}),
    ]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("fail-rate alarm: camera press1 failed 21 of its last 21 decisions, over the line's")
    assert "limit of 20%: see to the process" in lines[0]
    assert lines[1] == "fail-rate alarm cleared: camera press1 failed 16 of its last 100 decisions"


def test_the_cameras_a_run_leaves_raised_are_named_at_the_next_start(tmp_path, caplog):
    """A run killed while an alarm was raised left its "raised" row with nothing after it: the
    state folder keeps the raised cameras, and the next start takes them (its decisions counted
    anew), once."""
    kept = tmp_path / "vqad-serve.fail-rate.json"
    run = FailRateAlarm(0.2, kept=kept)
    assert run.take_left_raised() == []  # no file: a first start
    for camera in ("press2", "press1", "trim"):
        for _ in range(25):
            run.add(camera, "fail")
    run.start_again("trim", "camera resumed")  # cleared: not left raised
    next_run = FailRateAlarm(0.2, kept=kept)  # the run killed now
    with caplog.at_level(logging.INFO, logger="edge.fail_rate"):
        assert next_run.take_left_raised() == ["press1", "press2"]
    assert "the fail-rate alarm the run before left raised on press1, press2: its decisions are counted anew" in (
        caplog.text
    )
    assert FailRateAlarm(0.2, kept=kept).take_left_raised() == []  # taken: the next run left none
    kept.write_text("{not json")
    assert FailRateAlarm(0.2, kept=kept).take_left_raised() == [] and "is unreadable" in caplog.text


def test_a_run_with_the_alarm_off_ends_the_alarms_the_run_before_left_raised(tmp_path, caplog):
    """The run before left press1 raised; this one has the alarm off: press1's alarm ends here,
    and its file goes, or a later run with the alarm on would name press1 again."""
    kept = tmp_path / "vqad-serve.fail-rate.json"
    run = FailRateAlarm(0.2, kept=kept)
    for _ in range(25):
        run.add("press1", "fail")
    with caplog.at_level(logging.INFO, logger="edge.fail_rate"):
        assert end_left_raised(kept) == ["press1"]
    assert "the fail-rate alarm the run before left raised on press1 ends: the alarm is off in this run" in caplog.text
    assert not kept.exists() and end_left_raised(kept) == []
    assert FailRateAlarm(0.2, kept=kept).take_left_raised() == []


def test_a_lines_usual_rejects_and_a_short_burst_raise_nothing_and_errors_are_not_decisions():
    rng = np.random.default_rng(0)
    alarm = FailRateAlarm(0.2)
    for failed in rng.random(20_000) < 0.05:  # 5% rejects, 200 windows' worth
        alarm.add("steady", "fail" if failed else "pass")
    for _ in range(20):  # a burst of 20 fails in a row: the limit, not over it
        alarm.add("burst", "fail")
    for _ in range(1000):  # a paused camera's errors and a storm's drops decide nothing
        alarm.add("burst", None)
        alarm.add("paused", None)
    assert alarm.raised == {} and "paused" not in alarm.windows
    for _ in range(5):  # a shift's red rabbits, failed as they must: not the line's rejects
        alarm.count({"camera_id": "burst", "decision": "fail", "master": {"expected": "fail", "ok": True}})
    assert alarm.raised == {}
    alarm.count({"camera_id": "burst", "decision": "fail", "part_id": "SN-1"})
    assert set(alarm.raised) == {"burst"}


def test_a_camera_dropped_for_newer_ones_takes_its_alarm_and_gauges_with_it():
    metrics = DaemonMetrics()
    alarm = FailRateAlarm(0.5, metrics, window=4)
    alarm.windows.capacity = 2
    for camera in ("a", "b"):
        for _ in range(3):
            alarm.add(camera, "fail")
    assert set(alarm.raised) == {"a", "b"}
    alarm.add("c", "pass")  # a third camera: "a", seen longest ago, goes
    assert set(alarm.raised) == {"b"} and set(alarm.state()["alarms"]) == {"b"}
    assert {camera for _, camera in _gauges(metrics)} == {"b", "c"}


def test_an_alarm_of_mostly_unfit_frames_says_to_see_to_the_camera(caplog):
    """A lamp out: every frame too dark, failed by the camera health gate. The alarm came within
    21 frames and sent a person to the process; the gate's own alert waits 5 minutes."""
    changes = []
    alarm = FailRateAlarm(0.2, on_change=lambda change, detail: changes.append(detail))
    dark = {"camera_id": "press1", "decision": "fail", "health": {"ok": False, "reasons": ["exposure"]}}
    with caplog.at_level(logging.WARNING, logger="edge.fail_rate"):
        for _ in range(15):
            alarm.count(dark)
        for _ in range(6):
            alarm.count({"camera_id": "press1", "decision": "fail", "health": {"ok": True, "reasons": []}})
    assert changes == [{"camera": "press1", "fails": 21, "of": 21, "limit": 0.2, "unfit": 15}]
    assert alarm.state()["alarms"]["press1"]["unfit"] == 15
    assert [r.getMessage() for r in caplog.records] == [
        "fail-rate alarm: camera press1 failed 21 of its last 21 decisions (15 of them frames the camera health gate "
        "found unfit), over the line's limit of 20%: see to the camera: most of its frames are unfit"
    ]
    for _ in range(WINDOW):  # the lamp replaced: the unfit frames leave the window with their fails
        alarm.count({"camera_id": "press1", "decision": "pass"})
    assert alarm.windows["press1"].unfit == alarm.windows["press1"].fails == 0


def test_a_camera_of_its_own_limit_is_held_to_it_and_one_at_0_is_not_counted(caplog):
    """A sorter that rejects 1 part in 200 on a line whose limit is set for a press that rejects
    8%: at the line's 20% its rejects could climb twentyfold unseen."""
    changes = []
    alarm = FailRateAlarm(0.2, on_change=lambda change, detail: changes.append(detail),
                          limits={"sorter": 0.05, "trim": 0.0})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="edge.fail_rate"):
        for i in range(25):
            for camera in ("sorter", "press1", "trim"):
                alarm.add(camera, "fail")
            assert ("sorter" in alarm.raised) == (i >= 5) and ("press1" in alarm.raised) == (i >= 20), i
    assert "trim" not in alarm.windows  # its limit 0: not counted at all
    state = alarm.state()
    assert state["limits"] == {"sorter": 0.05, "trim": 0.0}
    assert {camera: a["limit"] for camera, a in state["alarms"].items()} == {"press1": 0.2, "sorter": 0.05}
    assert [(d["camera"], d["fails"], d["limit"]) for d in changes] == [("sorter", 6, 0.05), ("press1", 21, 0.2)]
    said = [r.getMessage() for r in caplog.records]
    assert "camera sorter failed 6 of its last 6 decisions, over its own limit of 5%" in said[0], said
    assert "camera press1 failed 21 of its last 21 decisions, over the line's limit of 20%" in said[1], said
    only = FailRateAlarm(0.0, limits={"sorter": 0.05})  # the line's off, one camera's on
    for _ in range(10):
        only.add("sorter", "fail")
        only.add("press1", "fail")
    assert set(only.raised) == {"sorter"} and set(only.windows) == {"sorter"}


@pytest.mark.parametrize("limit", [1.0, -0.1, 1.5])
def test_a_limit_that_is_not_a_share_is_refused(limit):
    with pytest.raises(ValueError, match="share in"):
        FailRateAlarm(limit)
    with pytest.raises(ValueError, match="share in"):
        FailRateAlarm(0.2, limits={"press1": limit})


def _send_and_collect(daemon, image, n: int, start: int = 0) -> None:
    """`n` frames of camera press1 (ids from `start`) into the daemon, and their `n` results out."""
    from edge.protocol import frame_message
    from tests.edge_helpers import Camera, Subscriber

    sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
    try:
        for i in range(start, start + n):
            cam.send(frame_message("press1", i, image, "raw"))
        assert len(sub.collect(n, timeout=60)) == n
    finally:
        sub.close()
        cam.close()


def test_a_daemon_whose_camera_fails_every_part_says_so_everywhere_the_line_looks(tiny_model, synth_root, tmp_path):
    """The whole path: a daemon process at a threshold that fails every part of one camera and
    none of another. The alarm is in the log, the metrics, each heartbeat (for a PLC bridge or
    the dashboard) and the record's changes, which `vqad records --daily` reads out."""
    import json

    import cv2

    from edge.record import Record
    from edge.transport import free_loopback_port
    from tests.conftest import run_vqad
    from tests.edge_helpers import DaemonProcess, metrics_text, next_heartbeat
    from tests.test_schema import _errors

    image = cv2.imread(str(sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[0]))
    url, port = f"sqlite:///{tmp_path / 'line.db'}", free_loopback_port()
    # A threshold no score reaches fails every part; the gate's own verdict stays out of it.
    args = ("--threshold", "1e-9", "--record", url, "--metrics-port", str(port), "--set", "edge.heartbeat_s=0.2",
            "--set", "edge.health.enabled=false", "--set", "edge.fail_rate_alarm_cameras.press9=0.5")  # fmt: skip
    with DaemonProcess(tiny_model, *args) as daemon:
        _send_and_collect(daemon, image, 25)
        beat, metrics = next_heartbeat(daemon.results), metrics_text(port)
        log_text = daemon.log_text()
    assert beat["fail_rate"]["limit"] == 0.2 and beat["fail_rate"]["window"] == WINDOW
    assert beat["fail_rate"]["limits"] == {"press9": 0.5} and beat["fail_rate"]["alarms"]["press1"]["limit"] == 0.2
    assert list(beat["fail_rate"]["alarms"]) == ["press1"]
    assert (beat["fail_rate"]["alarms"]["press1"]["fails"], beat["fail_rate"]["alarms"]["press1"]["of"]) == (25, 25)
    assert 'vqad_fail_rate_alarm{camera="press1"} 1.0' in metrics and 'vqad_fail_rate{camera="press1"} 1.0' in metrics
    assert "fail-rate alarm: camera press1 failed 21 of its last 21 decisions" in log_text
    changes = [e for e in Record(url).events() if e["kind"] == "fail-rate-alarm"]
    assert len(changes) == 1 and changes[0]["by"] == "vqad serve", changes
    detail = changes[0]["detail"]
    assert (detail["state"], detail["camera"], detail["fails"], detail["of"]) == ("raised", "press1", 21, 21)
    assert detail["threshold"] == 1e-9 and detail["model"]["sha256"]  # the audit's when, on what
    (stop,) = [e["detail"] for e in Record(url).events() if e["kind"] == "stop"]
    assert stop["fail_rate_alarms"] == ["press1"]  # raised still when the run ended: its interval closes there
    daily = run_vqad("records", url, "--daily").stdout
    assert "fail-rate-alarm by vqad serve" in daily and "camera press1 failed 21 of its last 21 decisions" in daily
    assert "after 25 results, the fail-rate alarm raised on press1" in daily, daily
    assert "over the limit of 20%" in daily, daily
    off = run_vqad("serve", tiny_model, "--check", "--set", "edge.fail_rate_alarm=1", check=False)
    assert off.returncode != 0 and "edge.fail_rate_alarm must be a share in [0, 1)" in off.stderr
    check = run_vqad("serve", tiny_model, "--check", "--set", "edge.fail_rate_alarm=0.05").stdout
    assert "fail-rate alarm over 5% of a camera's last 100 decisions" in check, check
    own = ("--set", "edge.fail_rate_alarm=0", "--set", "edge.fail_rate_alarm_cameras.trim=0",
           "--set", "edge.fail_rate_alarm_cameras.sorter=0.05")  # fmt: skip
    check = run_vqad("serve", tiny_model, "--check", *own).stdout
    assert "fail-rate alarm off; cameras of their own: sorter 5%, trim off" in check, check
    bad = run_vqad("serve", tiny_model, "--check", "--set", "edge.fail_rate_alarm_cameras.sorter=5", check=False)
    assert bad.returncode != 0 and "edge.fail_rate_alarm_cameras.sorter must be a share in [0, 1)" in bad.stderr
    # The heartbeat's schema (docs/schema/heartbeat.json) describes the alarm as the daemon sends it.
    assert _errors("heartbeat", beat) == []
    broken = json.loads(json.dumps(beat))
    broken["fail_rate"]["alarms"]["press1"]["fails"] = "25"
    assert _errors("heartbeat", broken)


def test_a_run_killed_while_its_alarm_was_raised_is_named_at_the_next_start(tiny_model, synth_root, tmp_path):
    """The record held the alarm's "raised" row, then the next run's start, and nothing between:
    an audit could not tell whether press1's parts still failed. The start's row names the
    cameras the killed run left raised, counted anew, and `vqad records --daily` says so."""
    import signal

    import cv2

    from edge.record import Record
    from tests.conftest import run_vqad
    from tests.edge_helpers import DaemonProcess, short_ipc_dir

    image = cv2.imread(str(sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[0]))
    url, folder = f"sqlite:///{tmp_path / 'line.db'}", short_ipc_dir()  # one record and state folder
    args = ("--threshold", "1e-9", "--record", url, "--set", "edge.health.enabled=false")
    with DaemonProcess(tiny_model, *args, ipc_dir=folder) as daemon:
        _send_and_collect(daemon, image, 22)
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    with DaemonProcess(tiny_model, *args, ipc_dir=folder) as daemon:
        log_text = daemon.log_text()
    first, second = [e["detail"] for e in Record(url).events() if e["kind"] == "start"][::-1]
    assert "fail_rate_alarms_left" not in first and second["fail_rate_alarms_left"] == ["press1"], second
    assert "the fail-rate alarm the run before left raised on press1: its decisions are counted anew" in log_text
    daily = run_vqad("records", url, "--daily").stdout
    assert "; the fail-rate alarm it left raised on press1 counted anew" in daily, daily
    # Killed again with it raised, then a run with the alarm off: the alarm ends there, and a
    # later run with it on names no camera that an earlier run left raised.
    with DaemonProcess(tiny_model, *args, ipc_dir=folder) as daemon:
        _send_and_collect(daemon, image, 22)
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    with DaemonProcess(tiny_model, *args, "--set", "edge.fail_rate_alarm=0", ipc_dir=folder) as daemon:
        assert "fail-rate alarm the run before left raised on press1 ends: the alarm is off" in daemon.log_text()
    with DaemonProcess(tiny_model, *args, ipc_dir=folder):
        pass
    third, off, on = [e["detail"] for e in Record(url).events() if e["kind"] == "start"][2::-1]
    assert "fail_rate_alarms_left" not in third, third  # the run before it stopped cleanly with none raised
    assert off["fail_rate_alarms_ended"] == ["press1"] and "fail_rate_alarms_left" not in off, off
    assert "fail_rate_alarms_left" not in on and "fail_rate_alarms_ended" not in on, on
    daily = run_vqad("records", url, "--daily").stdout
    assert "; the fail-rate alarm it left raised on press1 ended: the alarm is off" in daily, daily


def test_a_camera_resumed_after_a_repair_counts_its_decisions_anew(caplog):
    """An alarm raised, the camera paused while its tool is changed, then resumed: the fails from
    before the repair would hold the alarm for up to a window of good parts. Its decisions are
    counted anew, and the alarm clears saying why; a camera that still fails raises it again."""
    metrics, changes = DaemonMetrics(), []
    alarm = FailRateAlarm(0.2, metrics, lambda change, detail: changes.append((change, detail)))
    for _ in range(30):
        alarm.add("press1", "fail")
    alarm.add("press2", "pass")
    caplog.clear()  # the raise's warning
    with caplog.at_level(logging.INFO, logger="edge.fail_rate"):
        alarm.start_again("press1", "camera resumed")
        alarm.start_again("press2", "camera resumed")  # nothing raised: nothing said
    assert alarm.raised == {} and "press1" not in alarm.windows and "press2" not in alarm.windows
    assert changes[-1] == ("cleared", {"camera": "press1", "fails": 30, "of": 30, "limit": 0.2, "unfit": 0,
                                       "why": "camera resumed"})  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "fail-rate alarm cleared, camera resumed: its decisions are counted anew (camera press1 failed 30 of its last "
        "30 decisions)"
    ]
    assert ("vqad_fail_rate_alarm", "press1") not in _gauges(metrics)
    assert fail_rate_words({**changes[-1][1], "state": "cleared"}).startswith("cleared, camera resumed: counted anew")
    for _ in range(21):
        alarm.add("press1", "fail")
    assert "press1" in alarm.raised and changes[-1][1]["fails"] == 21


def test_vqad_ctl_resume_or_a_new_threshold_clears_a_raised_alarm_and_the_record_says_why(
    tiny_model, synth_root, tmp_path
):
    """A resume after a repair, and a threshold set to end false rejects: the fails before say
    nothing of the line after, and a camera that still fails raises the alarm again."""
    import cv2

    from edge.record import Record
    from tests.conftest import run_vqad
    from tests.edge_helpers import DaemonProcess, next_heartbeat, short_ipc_dir

    image = cv2.imread(str(sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[0]))
    url, control = f"sqlite:///{tmp_path / 'line.db'}", f"ipc://{short_ipc_dir()}/ctl"
    args = ("--threshold", "1e-9", "--record", url, "--control", control, "--set", "edge.heartbeat_s=0.2",
            "--set", "edge.health.enabled=false")  # fmt: skip
    alarms = lambda: list(next_heartbeat(daemon.results)["fail_rate"]["alarms"])  # noqa: E731
    with DaemonProcess(tiny_model, *args) as daemon:
        _send_and_collect(daemon, image, 25)
        assert alarms() == ["press1"]
        run_vqad("ctl", control, "pause", "press1", "--reason", "tool change")
        run_vqad("ctl", control, "resume", "press1")
        assert alarms() == []
        _send_and_collect(daemon, image, 25, start=25)  # the tool still marks every part
        assert alarms() == ["press1"]
        run_vqad("ctl", control, "set-threshold", "2e-9", "--reason", "a new inspection")
        assert alarms() == []
        log_text = daemon.log_text()
    assert "fail-rate alarm cleared, camera resumed: its decisions are counted anew (camera press1" in log_text
    assert "fail-rate alarm cleared, the model or threshold changed: its decisions are counted anew" in log_text
    changes = [(e["kind"], e["detail"].get("state"), e["detail"].get("why")) for e in Record(url).events()[::-1]
               if e["kind"] in ("fail-rate-alarm", "resume", "set-threshold")]  # fmt: skip
    assert changes == [("fail-rate-alarm", "raised", None), ("resume", None, None),
                       ("fail-rate-alarm", "cleared", "camera resumed"), ("fail-rate-alarm", "raised", None),
                       ("set-threshold", None, None),  # each change before the clear it causes
                       ("fail-rate-alarm", "cleared", "the model or threshold changed")]  # fmt: skip


def test_the_reason_for_counting_anew_names_a_mask_changed_alone():
    """A reload that changed only the inspection mask is said to be one; a new model or threshold
    keeps the words that programs already match, whether or not the mask changed with it."""
    from edge.daemon import _what_changed

    whole, masked = ("ab" * 32, 1.2, None), ("ab" * 32, 1.2, "ef" * 32)
    assert _what_changed(whole, masked) == "the inspection mask changed"
    assert _what_changed(masked, ("ab" * 32, 1.3, "ef" * 32)) == "the model or threshold changed"
    assert _what_changed(whole, ("cd" * 32, 1.3, "ef" * 32)) == "the model or threshold changed"
