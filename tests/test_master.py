"""Master parts: a part of known verdict, named by its part_id, is checked against the decision it
must get, and the line is told whether its inspection still works."""

from __future__ import annotations

import json
import logging
import re

import pytest

from edge.config import load_config
from edge.master import MasterParts, master_words, proves
from edge.metrics import DaemonMetrics
from edge.settings import EdgeConfig


def _header(part_id: str | None, decision: str | None, camera: str = "press1") -> dict:
    error = "camera paused by the line's control" if decision is None else None  # an error result's
    return {"camera_id": camera, "frame_id": 7, "part_id": part_id, "decision": decision,
            "score": None if decision is None else 1.5, "model": {"name": "m", "sha256": "ab" * 32},
            "threshold": 1.2, "error": error}  # fmt: skip


def test_a_master_part_is_checked_against_its_expected_decision_and_other_parts_are_left_alone(caplog):
    metrics, checks = DaemonMetrics(), []
    masters = MasterParts(["OK-*"], ["RR-*", "OK-SCRATCHED"], metrics, checks.append)
    # A defective pattern wins over a good one: OK-SCRATCHED is a red rabbit.
    expected = [masters.expected(p) for p in ("OK-1", "RR-7", "OK-SCRATCHED", "SN-1", None, "")]
    assert expected == ["pass", "fail", "fail", None, None, None]
    product, error = _header("SN-1", "fail"), _header("RR-2", None, camera="press2")
    with caplog.at_level(logging.INFO, logger="edge.master"):
        masters.check(product)
        for header in (right := _header("RR-1", "fail"), wrong := _header("OK-1", "fail"), error):
            masters.check(header)
    assert "master" not in product
    assert right["master"] == {"expected": "fail", "ok": True, "outcome": "right"}
    assert wrong["master"] == {"expected": "pass", "ok": False, "outcome": "wrong"}
    assert error["master"] == {"expected": "fail", "ok": False, "outcome": "unproven"}  # no decision is no proof
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("INFO", "master part RR-1 on camera press1: fail, as expected"),
        ("ERROR", "master part OK-1 on camera press1: fail, expected pass: the inspection does not decide it as it "
                  "must; the parts since this master part's last right check are suspect"),
        # The frame was not judged: nothing is said of the parts since.
        ("WARNING", "master part RR-2 on camera press2: no decision (camera paused by the line's control), expected "
                  "fail: no proof of the inspection; run this master part again once the camera's frames are judged"),
    ]  # fmt: skip
    state = masters.state()  # each master part's latest, per camera
    assert {camera: {part: check["ok"] for part, check in parts.items()} for camera, parts in state.items()} == {
        "press1": {"OK-1": False, "RR-1": True}, "press2": {"RR-2": False},
    }  # fmt: skip
    assert state["press1"]["OK-1"]["ts_ns"] > 0 and state["press2"]["RR-2"]["decision"] is None
    assert state["press2"]["RR-2"]["error"] == "camera paused by the line's control"
    assert [state["press1"]["OK-1"]["outcome"], state["press2"]["RR-2"]["outcome"]] == ["wrong", "unproven"]
    assert "error" not in state["press1"]["OK-1"]
    assert (state["press1"]["RR-1"]["model_sha256"], state["press1"]["RR-1"]["threshold"]) == ("ab" * 32, 1.2)
    masters.check(_header("RR-1", "fail"))  # another master's right check does not undo OK-1's wrong one
    assert not masters.state()["press1"]["OK-1"]["ok"]
    masters.check(_header("OK-1", "pass"))  # that master part's own does
    assert masters.state()["press1"]["OK-1"]["ok"]
    assert [c["part_id"] for c in checks] == ["RR-1", "OK-1", "RR-2", "RR-1", "OK-1"]
    counts = {tuple(s.labels.values()): s.value for m in metrics.master_parts.collect() for s in m.samples
              if s.name.endswith("_total")}  # fmt: skip
    assert counts == {("press1", "right"): 3.0, ("press1", "wrong"): 1.0, ("press2", "unproven"): 1.0}
    assert master_words({**checks[0], "camera": "press1"}) == "master part RR-1 on camera press1: fail, as expected"


def test_a_check_proves_the_inspection_mask_it_was_judged_through_and_no_other():
    """A red rabbit whose defect lies where a new inspection mask leaves out would pass: its
    check on the whole frame proves nothing of the masked inspection, at the same model and
    threshold (a threshold set in the config, or a calibration that came out at the same value)."""
    metrics, mask = DaemonMetrics(), "ef" * 32
    masters = MasterParts(["OK-*"], ["RR-*"], metrics)
    masters.check(_header("RR-1", "fail"))  # judged on the whole frame
    whole = masters.state()["press1"]["RR-1"]
    assert "mask_sha256" not in whole and proves(whole, "ab" * 32, 1.2) and not proves(whole, "ab" * 32, 1.2, mask)
    masters.show_current("ab" * 32, 1.2, mask)
    assert metrics.master_current.labels("press1")._value.get() == 0.0
    masked = _header("RR-1", "fail")
    masked["model"] = {**masked["model"], "mask_sha256": mask}
    masters.check(masked)
    check = masters.state()["press1"]["RR-1"]
    assert check["mask_sha256"] == mask and proves(check, "ab" * 32, 1.2, mask) and not proves(check, "ab" * 32, 1.2)
    assert metrics.master_current.labels("press1")._value.get() == 1.0
    assert proves({"part_id": "RR-1", "ok": True}, "ab" * 32, 1.2, mask)  # kept by a vqad that named no model


def test_a_run_the_model_did_not_judge_undoes_no_judged_check():
    """A red rabbit that passed (wrong), run again while its camera was paused: the unproven
    run had replaced the wrong check, and the heartbeat, the page and a restart forgot that the
    parts since were suspect. It is kept beside the judged check instead, as its `unjudged`;
    nor does it count as a check of the inspection in the gauges."""
    metrics = DaemonMetrics()
    masters = MasterParts(["OK-*"], ["RR-*"], metrics)
    masters.check(_header("RR-1", "pass"))  # wrong
    masters.check(_header("OK-1", "pass"))  # right
    checked_at = metrics.master_checked.labels("press1")._value.get()
    masters.show_current("cd" * 32, 1.2)  # another model: nothing proves it
    paused = "camera paused by the line's control"
    for part in ("RR-1", "OK-1", "RR-2"):  # RR-2: run for the first time, while paused
        masters.check(_header(part, None))
    state = masters.state()["press1"]
    assert [state["RR-1"]["outcome"], state["RR-1"]["decision"], state["RR-1"]["unjudged"]["error"]] == [
        "wrong", "pass", paused,
    ]  # fmt: skip
    assert state["OK-1"]["outcome"] == "right" and state["OK-1"]["unjudged"]["outcome"] == "unproven"
    assert state["RR-2"]["outcome"] == "unproven" and "unjudged" not in state["RR-2"]
    assert metrics.master_checked.labels("press1")._value.get() == checked_at  # no check of the inspection
    assert metrics.master_current.labels("press1")._value.get() == 0.0
    masters.show_current("ab" * 32, 1.2)  # the model they were judged on
    assert metrics.master_current.labels("press1")._value.get() == 1.0
    masters.check(_header("RR-1", "fail"))  # judged again: the attempt is gone with the wrong check
    judged = masters.state()["press1"]["RR-1"]
    assert judged["outcome"] == "right" and "unjudged" not in judged


def test_a_master_part_failed_by_the_camera_health_gate_proves_nothing(caplog):
    """A red rabbit whose frame came frozen (a camera that sent its last frame again) failed as
    it must, and was counted a right check: the gate's fail, not the model's, and the model's
    score on a dark or frozen frame says nothing of the part."""
    metrics = DaemonMetrics()
    masters = MasterParts(["OK-*"], ["RR-*"], metrics)
    frozen = {**_header("RR-1", "fail"), "health": {"ok": False, "reasons": ["frozen"]}}
    fit = {**_header("RR-2", "fail"), "health": {"ok": True, "reasons": []}}
    with caplog.at_level(logging.WARNING, logger="edge.master"):  # a warning, as VqadMasterPartUnproven
        masters.check(frozen)
        masters.check(fit)
    assert frozen["master"] == {"expected": "fail", "ok": False, "outcome": "unproven"} and fit["master"]["ok"]
    assert masters.state()["press1"]["RR-1"]["unfit"] == "frozen" and "unfit" not in masters.state()["press1"]["RR-2"]
    assert [r.getMessage() for r in caplog.records] == [
        "master part RR-1 on camera press1: failed by the camera health gate (frozen), not by the model: no proof of "
        "the inspection; see to the camera, then run this master part again"
    ]
    outcomes = {s.labels["outcome"]: s.value for m in metrics.master_parts.collect() for s in m.samples
                if s.name.endswith("_total")}  # fmt: skip
    assert outcomes == {"unproven": 1.0, "right": 1.0}  # VqadMasterPartUnproven, not VqadMasterPartWrong


@pytest.mark.parametrize(
    ("good", "defective", "said"),
    [
        (["RR-*"], ["RR-*"], "both name ['RR-*']"),
        ([""], [], "take patterns, not empty text"),
    ],
)
def test_master_part_patterns_that_cannot_be_meant_are_refused(tmp_path, good, defective, said):
    path = tmp_path / "edge.yaml"
    path.write_text(json.dumps({"master_good_parts": good, "master_defective_parts": defective}))
    with pytest.raises(ValueError, match=re.escape(said)):
        load_config(EdgeConfig, path)


def test_a_daemon_checks_each_master_part_and_says_so_in_its_result_heartbeat_metrics_and_record(
    tiny_model, synth_root, tmp_path
):
    """A daemon process whose threshold fails every part: the defective master fails, as it
    must; the good master fails too, which the result, the log, the metrics, the heartbeat, the
    record's changes and `vqad records --daily` each say; a product is left alone."""
    import cv2

    from edge.protocol import frame_message
    from edge.record import Record
    from edge.transport import free_loopback_port
    from tests.conftest import run_vqad
    from tests.edge_helpers import Camera, DaemonProcess, Subscriber, metrics_text, next_heartbeat
    from tests.test_schema import _errors

    # Three parts, three pictures: one frame sent again would be a frozen camera's, unfit.
    images = [cv2.imread(str(p)) for p in sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[:3]]
    url, port = f"sqlite:///{tmp_path / 'line.db'}", free_loopback_port()
    args = ("--threshold", "1e-9", "--record", url, "--metrics-port", str(port), "--set", "edge.heartbeat_s=0.2",
            "--set", "edge.master_good_parts=[MASTER-OK-*]", "--set", "edge.master_defective_parts=[RR-*]")  # fmt: skip
    with DaemonProcess(tiny_model, *args) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            for i, (part, image) in enumerate(zip(("RR-1", "SN-100", "MASTER-OK-1"), images, strict=True)):
                cam.send(frame_message("press1", i, image, "raw", part_id=part))
            results = {h["part_id"]: h for h, _ in sub.collect(3, timeout=60)}
        finally:
            sub.close()
            cam.close()
        beat, metrics = next_heartbeat(daemon.results), metrics_text(port)
        log_text = daemon.log_text()
    assert results["RR-1"]["master"] == {"expected": "fail", "ok": True, "outcome": "right"}
    assert results["MASTER-OK-1"]["master"] == {"expected": "pass", "ok": False, "outcome": "wrong"}
    assert "master" not in results["SN-100"]
    assert all(_errors("result-header", h) == [] for h in results.values())
    checked = beat["master_parts"]["press1"]
    latest_ns = max(c["ts_ns"] for c in checked.values())
    assert {part: (c["decision"], c["ok"], c["outcome"]) for part, c in checked.items()} == {
        "MASTER-OK-1": ("fail", False, "wrong"), "RR-1": ("fail", True, "right"),
    }  # fmt: skip
    assert _errors("heartbeat", beat) == []
    assert 'vqad_master_parts_total{camera="press1",outcome="right"} 1.0' in metrics
    assert 'vqad_master_parts_total{camera="press1",outcome="wrong"} 1.0' in metrics
    checked = re.search(r'^vqad_master_parts_checked_timestamp_seconds\{camera="press1"\} (\S+)$', metrics, re.M)
    assert checked and abs(float(checked.group(1)) - latest_ns / 1e9) < 1, metrics
    assert "master part RR-1 on camera press1: fail, as expected" in log_text
    assert "master part MASTER-OK-1 on camera press1: fail, expected pass: the inspection does not" in log_text
    kept = {r["part_id"]: r["master"] for r in Record(url).results(camera="press1")}
    assert kept == {"RR-1": "fail", "SN-100": None, "MASTER-OK-1": "pass"}  # the record knows its masters
    changes = [e["detail"] for e in Record(url).events() if e["kind"] == "master-part"][::-1]
    assert [(c["part_id"], c["ok"], c["threshold"]) for c in changes] == [
        ("RR-1", True, 1e-9),
        ("MASTER-OK-1", False, 1e-9),
    ]
    check = run_vqad("serve", tiny_model, "--check", "--set", "edge.master_defective_parts=[RR-*, SCRAP-*]").stdout
    assert "master parts: RR-*, SCRAP-* must fail\n" in check, check
    # The day's checks counted, not listed among the changes made to the daemon (hundreds a day).
    daily = run_vqad("records", url, "--daily").stdout
    assert "master-part by" not in daily and "2 master part(s) run through, 1 decided wrongly, 0 not judged" in daily
    (day,) = json.loads(run_vqad("records", url, "--daily", "--format", "json").stdout)["days"]
    assert (day["master"], day["master_wrong"]) == (2, 1)
    assert not [c for c in json.loads(run_vqad("records", url, "--daily", "--format", "json").stdout)["changes"]
                if c["kind"] == "master-part"]  # fmt: skip


def test_watch_says_which_results_are_master_parts_and_whether_they_got_their_verdict():
    from edge.protocol import result_header
    from edge.watch import format_line

    h = result_header("press1", 7, 1, "ok", 2.0, {"name": "m", "sha256": "0"}, score=0.4, decision="pass")
    h["part_id"], h["master"] = "RR-3", {"expected": "fail", "ok": False}
    assert format_line(h).startswith("press1 #7 part RR-3 (master: WRONG, expected fail) PASS score 0.4")
    h["decision"], h["master"] = "fail", {"expected": "fail", "ok": True}
    assert format_line(h).startswith("press1 #7 part RR-3 (master: as expected) FAIL")
    h["health"], h["master"] = {"ok": False, "reasons": ["frozen"]}, {"expected": "fail", "ok": False}
    assert format_line(h).startswith("press1 #7 part RR-3 (master: UNPROVEN, expected fail) FAIL")  # the gate's
    # Its summary counts a shift's master parts by outcome, as their results name it (or, from a
    # daemon that did not, as it works it out).
    from edge.watch import Summary

    summary = Summary()
    made = lambda decision, **master: {  # noqa: E731
        **result_header("press1", 9, 1, "ok", 2.0, {"name": "m", "sha256": "0"}, score=0.4, decision=decision),
        "part_id": "RR-3", "master": {"expected": "fail", **master},
    }  # fmt: skip
    for header in (made("fail", ok=True, outcome="right"), made("pass", ok=False, outcome="wrong"), h):
        summary.add(header)  # h, the frozen one: its outcome worked out
    summary.add(result_header("press1", 10, 1, "ok", 2.0, {"name": "m", "sha256": "0"}, score=0.4, decision="pass"))
    assert summary.as_dict()["master_parts"] == {"right": 1, "wrong": 1, "unproven": 1}
    assert "; master parts right 1, unproven 1, wrong 1; latency " in summary.text(), summary.text()


def test_a_wrong_check_stands_over_a_restart_of_the_daemon(tiny_model, synth_root, tmp_path):
    """Restarting the daemon is no proof that the line catches the defect its red rabbit
    missed: the checks are kept in the state folder, and the wrong one is said again."""
    import cv2

    from edge.protocol import frame_message
    from edge.transport import free_loopback_port
    from tests.edge_helpers import Camera, DaemonProcess, Subscriber, metrics_text, next_heartbeat, short_ipc_dir

    image = cv2.imread(str(sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[0]))
    args = ("--threshold", "1e9", "--set", "edge.heartbeat_s=0.2", "--set", "edge.master_defective_parts=[RR-*]")
    folder = short_ipc_dir()  # the state folder of both runs
    with DaemonProcess(tiny_model, *args, ipc_dir=folder) as daemon:  # a threshold no part reaches: RR-1 passes
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            cam.send(frame_message("press1", 0, image, "raw", part_id="RR-1"))
            assert sub.collect(1, timeout=60)[0][0]["master"] == {"expected": "fail", "ok": False, "outcome": "wrong"}
        finally:
            sub.close()
            cam.close()
    port = free_loopback_port()
    with DaemonProcess(tiny_model, *args, "--metrics-port", str(port), ipc_dir=folder) as again:
        beat, log_text, metrics = next_heartbeat(again.results), again.log_text(), metrics_text(port)
    kept = beat["master_parts"]["press1"]["RR-1"]
    assert (kept["decision"], kept["ok"]) == ("pass", False), beat["master_parts"]
    assert "master part RR-1 on camera press1: pass, expected fail, before the restart: it stands" in log_text
    checked = re.search(r'^vqad_master_parts_checked_timestamp_seconds\{camera="press1"\} (\S+)$', metrics, re.M)
    assert checked and float(checked.group(1)) == pytest.approx(kept["ts_ns"] / 1e9), metrics
    assert 'vqad_master_parts_current{camera="press1"} 1.0' in metrics  # the same model and threshold
    with DaemonProcess(tiny_model, "--threshold", "2e9", *args[2:], "--metrics-port", str(port), ipc_dir=folder):
        assert 'vqad_master_parts_current{camera="press1"} 0.0' in metrics_text(port)  # another threshold
    # A pattern no longer configured names no master part: its checks are not put back.
    with DaemonProcess(tiny_model, "--set", "edge.master_defective_parts=[SCRAP-*]", ipc_dir=folder) as other:
        assert next_heartbeat(other.results)["master_parts"] == {}


def test_checks_kept_without_their_outcome_are_restored_with_it(tmp_path):
    """A state folder whose checks were kept before the checks named their outcome: the
    heartbeat still tells a wrong check from one whose frame the model did not judge."""
    kept = tmp_path / "vqad-serve.masters.json"
    old = {"RR-1": {**_header("RR-1", "pass"), "expected": "fail", "ok": False},
           "RR-2": {**_header("RR-2", None), "expected": "fail", "ok": False},
           "RR-3": {**_header("RR-3", "fail"), "expected": "fail", "ok": False, "unfit": "frozen"},
           "RR-4": {**_header("RR-4", "fail"), "expected": "fail", "ok": True}}  # fmt: skip
    for part, check in old.items():
        check.update(camera="press1", ts_ns=1 + len(part), part_id=part)
    kept.write_text(json.dumps({"press1": old}))
    masters = MasterParts([], ["RR-*"], kept=kept)
    masters.restore()
    outcomes = {part: check["outcome"] for part, check in masters.state()["press1"].items()}
    assert outcomes == {"RR-1": "wrong", "RR-2": "unproven", "RR-3": "unproven", "RR-4": "right"}


def test_an_unreadable_file_of_checks_is_warned_of_and_the_daemon_starts_without_them(tmp_path, caplog):
    kept = tmp_path / "vqad-serve.masters.json"
    kept.write_text('{"press1": ["not a check"]}')
    masters = MasterParts([], ["RR-*"], kept=kept)
    with caplog.at_level(logging.WARNING, logger="edge.master"):
        masters.restore()
    assert masters.state() == {} and "is unreadable" in caplog.text
    masters.check(_header("RR-1", "fail"))  # and it keeps them anew
    assert json.loads(kept.read_text())["press1"]["RR-1"]["ok"] is True


def test_a_state_folder_that_refuses_the_checks_is_said_once_and_the_checks_go_on(tmp_path, caplog):
    masters = MasterParts([], ["RR-*"], kept=tmp_path / "gone" / "vqad-serve.masters.json")
    with caplog.at_level(logging.ERROR, logger="edge.master"):
        for i in range(3):
            masters.check(_header(f"RR-{i}", "fail"))
    refusals = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(refusals) == 1 and "not kept over a restart" in refusals[0], refusals
    assert sorted(masters.state()["press1"]) == ["RR-0", "RR-1", "RR-2"]


def test_a_master_part_named_for_a_cameras_next_frame_is_taken_once_and_not_after_its_time(monkeypatch, caplog):
    """Its check says who named it; a name that came too early is said, since the frame taken for
    a product then may show the master part, put under the camera late."""
    from edge import master

    checks = []
    masters = MasterParts(["OK-*"], ["RR-*"], on_check=checks.append)
    with pytest.raises(ValueError, match="'SN-1' names no master part .*RR-\\*, OK-\\*"):
        masters.tag("press1", "SN-1")
    assert masters.tag("press1", "RR-HOLE-1", "ann") == "fail"
    assert masters.take_tag("press2") is None  # another camera's frame
    assert masters.take_tag("press1") == "RR-HOLE-1"
    assert masters.take_tag("press1") is None  # once: the frame after it is a product
    masters.check(_header("RR-HOLE-1", "fail"))
    masters.check(_header("RR-HOLE-1", "fail"))  # the same master part, its id sent by the camera
    assert [c.get("named_by") for c in checks] == ["ann", None]
    assert masters.state()["press1"]["RR-HOLE-1"].get("named_by") is None  # the latest check's
    monkeypatch.setattr(master, "TAG_S", -1.0)  # named longer ago than a person takes to put it down
    masters.tag("press1", "OK-1", "bob")
    with caplog.at_level(logging.WARNING, logger="edge.master"):
        assert masters.take_tag("press1") is None
    assert [r.getMessage() for r in caplog.records] == [
        "master part OK-1, named by bob for camera press1's next frame, was not seen within -1 s: the frame that came "
        "now is taken for a product; name the master part again, then put it under the camera"
    ]


def test_vqad_ctl_master_names_the_next_frame_of_a_camera_that_sends_no_part_ids(tiny_model, synth_root):
    """A line whose camera sends no part ids (a plain `vqad camera 0`) runs its master parts by
    naming each before it goes under the camera: `vqad ctl EP master CAMERA --part-id ID`."""
    import cv2

    from edge.protocol import frame_message
    from edge.transport import free_loopback_port
    from tests.conftest import run_vqad
    from tests.edge_helpers import Camera, DaemonProcess, Subscriber, metrics_text, next_heartbeat, short_ipc_dir
    from tests.test_schema import _errors

    image = cv2.imread(str(sorted((synth_root / "bracket" / "test" / "good").glob("*.png"))[0]))
    control, port = f"ipc://{short_ipc_dir()}/ctl", free_loopback_port()
    args = ("--threshold", "1e-9", "--control", control, "--set", "edge.master_defective_parts=[RR-*]",
            "--set", "edge.health.enabled=false", "--metrics-port", str(port))  # fmt: skip
    with DaemonProcess(tiny_model, *args) as daemon:
        told = run_vqad("ctl", control, "master", "press1", "--part-id", "RR-HOLE-1", "--by", "ann")
        reply = json.loads(told.stdout)
        assert (reply["ok"], reply["part_id"], reply["expected"], reply["for_s"]) == (True, "RR-HOLE-1", "fail", 60.0)
        assert "camera 'press1' has sent no frame since the daemon started: is its id right?" in told.stderr
        refused = run_vqad("ctl", control, "master", "press1", "--part-id", "SN-1", check=False)
        assert refused.returncode != 0 and "names no master part" in refused.stdout + refused.stderr
        missing = run_vqad("ctl", control, "master", "press1", check=False)
        assert missing.returncode != 0 and "master needs CAMERA and --part-id ID" in missing.stderr
        # A paused camera's next frame gets an error result, which would prove nothing: a name
        # waiting for it is dropped by the pause, and none is taken while it lasts.
        run_vqad("ctl", control, "master", "press2", "--part-id", "RR-HOLE-2")
        pause = run_vqad("ctl", control, "pause", "press2")
        assert json.loads(pause.stdout)["master_dropped"] == "RR-HOLE-2"
        assert "master part RR-HOLE-2, named for the next frame of camera 'press2', is dropped" in pause.stderr
        paused = run_vqad("ctl", control, "master", "press2", "--part-id", "RR-HOLE-1", check=False)
        assert paused.returncode != 0 and "camera 'press2' is paused" in paused.stdout + paused.stderr
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            for i in range(2):
                cam.send(frame_message("press1", i, image, "raw"))
            got = [h for h, _ in sub.collect(2, timeout=60)]
        finally:
            sub.close()
            cam.close()
        beat = next_heartbeat(daemon.results)
        current = 'vqad_master_parts_current{camera="press1"}'
        assert f"{current} 1.0" in metrics_text(port)  # the inspection served is proved
        run_vqad("ctl", control, "set-threshold", "2e-9", "--reason", "a new inspection", "--by", "ann")
        assert f"{current} 0.0" in metrics_text(port)  # another one, until they are run again
        log_text = daemon.log_text()
    assert got[0]["part_id"] == "RR-HOLE-1" and got[0]["master"] == {"expected": "fail", "ok": True, "outcome": "right"}
    assert beat["master_parts"]["press1"]["RR-HOLE-1"]["named_by"] == "ann"  # who named the frame, for the audit
    assert _errors("heartbeat", beat) == []
    assert "part_id" not in got[1] and "master" not in got[1]  # named once: the next frame is a product
    assert "control: master part RR-HOLE-1 for camera press1's next frame (it must fail), by ann" in log_text
    assert "the master parts' checks so far were made on the model, threshold or inspection mask before: run them " \
           "again" in log_text  # fmt: skip
