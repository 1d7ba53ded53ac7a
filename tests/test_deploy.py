"""The deployment files name what the daemon has: the alert rules' metrics are the daemon's, the
systemd units' flags and config keys are this vqad's, and systemd reads the units."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client import generate_latest

from edge.fail_rate import FailRateAlarm
from edge.master import MasterParts
from edge.metrics import DaemonMetrics
from tests.conftest import ROOT
from vqad.cli import build_parser
from vqad.commands.export import engine_settings
from vqad.commands.line import dashboard_config, serve_config


def _exposed_names() -> set[str]:
    """Every sample name the daemon's metrics endpoint can show (a labelled metric once used)."""
    m = DaemonMetrics()
    m.results.labels("ok", "pass").inc()
    m.latency.labels("infer").observe(1.0)
    m.drift_ks.labels("cam0").set(0.1)
    m.drift_alarm.labels("cam0").set(0)
    m.count_camera_frame("cam0", "fit")
    m.show_paused({"cam0"})
    FailRateAlarm(0.2, m).add("cam0", "pass")
    MasterParts(["OK-*"], [], m).check({"camera_id": "cam0", "frame_id": 1, "part_id": "OK-1", "decision": "pass",
                                        "score": 0.5})  # fmt: skip
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_alert_rule_is_promql_and_reads_metrics_the_daemon_exports():
    rules = yaml.safe_load((ROOT / "deploy" / "vqad-alerts.yml").read_text())["groups"][0]["rules"]
    exposed = _exposed_names()
    assert "vqad_stalled" in exposed and "vqad_unrecorded_total" in exposed
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]
        promql_parser.parse(rule["expr"])  # a ValueError names what PromQL cannot read
        used = set(re.findall(r"\bvqad_[a-z0-9_]+", rule["expr"]))
        assert used <= exposed, f"{rule['alert']} reads {used - exposed}, which the daemon does not export"
    assert len({r["alert"] for r in rules}) == len(rules)


def _exec_lines(unit: Path) -> dict[str, list[str]]:
    """A unit file's Exec*= commands that run vqad, {directive: argv after `vqad`}, its lines
    joined where they end in a backslash."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("Exec") and "/bin/vqad " in value:
            found[key] = shlex.split(value)[1:]
    return found


def _on_this_checkout(argv: list[str], tmp_path: Path) -> list[str]:
    """The unit's paths made this checkout's: its configs, a scratch folder for the state."""
    return [a.replace("/opt/vqad/configs", str(ROOT / "configs")).replace("/var/lib/vqad", str(tmp_path)) for a in argv]


def test_the_systemd_units_commands_parse_and_their_configs_load(tmp_path, monkeypatch):
    """deploy/*.service name flags and config keys of this vqad: a flag renamed or a key the
    config refuses would leave a line's daemon restarting every 2 s after an upgrade."""
    monkeypatch.setenv("VQAD_DASHBOARD_TOKEN", "x" * 32)  # the unit's EnvironmentFile gives it
    daemon = _exec_lines(ROOT / "deploy" / "vqad.service")
    dashboard = _exec_lines(ROOT / "deploy" / "vqad-dashboard.service")
    assert set(daemon) == {"ExecStartPre", "ExecStart"} and set(dashboard) == {"ExecStart"}
    parser = build_parser()
    engine = parser.parse_args(_on_this_checkout(daemon["ExecStartPre"], tmp_path))  # SystemExit(2): a flag lacking
    assert engine.command == "build-engine"
    serve_args = parser.parse_args(_on_this_checkout(daemon["ExecStart"], tmp_path))
    serve = serve_config(serve_args)
    assert serve.backend == "tensorrt" and serve.max_batch == 8 and serve.metrics_port == 9108
    # The engine built before the start is the one the daemon looks for (edge.engine_cache's key):
    # built from the config the daemon runs with, whatever an integrator sets in it.
    assert engine.config == serve_args.config and engine.model == serve_args.model
    assert engine_settings(engine) == (serve.max_batch, serve.tensorrt_workspace_mb)
    assert serve.state_dir == str(tmp_path)
    page = dashboard_config(parser.parse_args(_on_this_checkout(dashboard["ExecStart"], tmp_path)))
    assert (
        page.record == f"sqlite:///{tmp_path}/line.db"
        and page.metrics[0].endswith(":9108/metrics")
        and len(page.metrics) == 1
    )
    # The page reads the record the daemon writes: a daemon unit without one left the page of a
    # fresh install on a record that nothing made.
    assert serve.record == page.record and page.results == (serve.results_endpoint,)


@pytest.mark.parametrize("station", [None, "press1"])
def test_the_backup_unit_copies_the_record_and_the_evidence_the_daemon_writes(station, tmp_path):
    """deploy/vqad-backup.service (vqad-backup@.service for a station of vqad@.service) backs up
    the record the daemon's unit writes, and the evidence folder beside it, only while the
    backup disk is mounted."""
    suffix = "" if station is None else "@"
    daemon_argv = _exec_lines(ROOT / "deploy" / f"vqad{suffix}.service")["ExecStart"]
    unit = ROOT / "deploy" / f"vqad-backup{suffix}.service"
    backup_argv = _exec_lines(unit)["ExecStart"]
    if station is not None:
        daemon_argv = _as_station(daemon_argv, station, _station_env(), tmp_path)
        backup_argv = [a.replace("%i", station) for a in backup_argv]
    daemon = serve_config(build_parser().parse_args(_on_this_checkout(daemon_argv, tmp_path)))
    backup = build_parser().parse_args(_on_this_checkout(backup_argv, tmp_path))
    folder = "/mnt/vqad-backup/" + (f"{station}/" if station else "")
    assert backup.command == "records" and backup.url == daemon.record and backup.backup == folder + "line.db"
    text = unit.read_text().replace("%i", station or "")
    evidence = f"{daemon.record.removeprefix('sqlite:///')}.evidence/".replace(str(tmp_path), "/var/lib/vqad")
    assert f"rsync -a --delete {evidence} {folder}line.db.evidence/" in text  # the default evidence_dir
    assert "ConditionPathIsMountPoint=/mnt/vqad-backup" in text
    if station is not None:
        assert f"ExecStartPre=/bin/mkdir -p {folder.rstrip('/')}" in text  # --backup refuses a missing folder
    assert "Unit=" not in (ROOT / "deploy" / f"vqad-backup{suffix}.timer").read_text()  # it starts its namesake


def _station_env() -> dict[str, str]:
    """deploy/station.env's KEY=VALUE lines."""
    lines = (ROOT / "deploy" / "station.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _as_station(argv: list[str], station: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """A template unit's command as systemd runs it for `station`: %i and ${VAR} filled in (a
    KeyError names a variable that deploy/station.env lacks), then made this checkout's."""
    filled = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a.replace("%i", station)) for a in argv]
    return _on_this_checkout(filled, tmp_path)


def test_the_station_units_give_each_station_its_own_package_state_and_record_and_agree(tmp_path, monkeypatch):
    """deploy/vqad@.service and vqad-dashboard@.service, for several stations (one model each) on
    one box: the daemon's commands parse with deploy/station.env's values, each station keeps its
    own package, state folder and record, and its page reads what its daemon writes."""
    monkeypatch.setenv("VQAD_DASHBOARD_TOKEN", "x" * 32)  # /etc/vqad/dashboard.env gives it
    example = _station_env()
    assert set(example) == {"FRAMES", "RESULTS", "CONTROL", "METRICS_PORT", "DASHBOARD_PORT"}
    # A second station's numbers of its own: a value the units wrote instead of its variable shows.
    other = {"FRAMES": "tcp://0.0.0.0:6555", "RESULTS": "tcp://127.0.0.1:6556", "CONTROL": "tcp://127.0.0.1:6557",
             "METRICS_PORT": "9208", "DASHBOARD_PORT": "8081"}  # fmt: skip
    daemon = _exec_lines(ROOT / "deploy" / "vqad@.service")
    dashboard = _exec_lines(ROOT / "deploy" / "vqad-dashboard@.service")
    assert set(daemon) == {"ExecStartPre", "ExecStart"} and set(dashboard) == {"ExecStart"}
    parser = build_parser()
    serves = {}
    for station, env in (("press1", example), ("press2", other)):
        engine = parser.parse_args(_as_station(daemon["ExecStartPre"], station, env, tmp_path))
        serve_args = parser.parse_args(_as_station(daemon["ExecStart"], station, env, tmp_path))
        serve = serves[station] = serve_config(serve_args)
        assert engine.model == serve_args.model == Path(f"/opt/vqad/stations/{station}/current")
        assert engine.config == serve_args.config and engine_settings(engine) == (
            serve.max_batch,
            serve.tensorrt_workspace_mb,
        )
        assert (serve.frames_endpoint, serve.results_endpoint, serve.control_endpoint) == (
            env["FRAMES"],
            env["RESULTS"],
            env["CONTROL"],
        )
        assert serve.metrics_port == int(env["METRICS_PORT"]) and serve.backend == "tensorrt"
        assert serve.state_dir == str(tmp_path / station) and serve.record == f"sqlite:///{tmp_path}/{station}/line.db"
        page = dashboard_config(parser.parse_args(_as_station(dashboard["ExecStart"], station, env, tmp_path)))
        assert page.record == serve.record and page.results == (serve.results_endpoint,)
        assert page.metrics == (f"http://127.0.0.1:{serve.metrics_port}/metrics",) and page.port == int(
            env["DASHBOARD_PORT"]
        )
    assert (
        serves["press1"].state_dir != serves["press2"].state_dir and serves["press1"].record != serves["press2"].record
    )
    unit = (ROOT / "deploy" / "vqad@.service").read_text()
    assert "StateDirectory=vqad/%i" in unit and "EnvironmentFile=/etc/vqad/stations/%i.env" in unit


def test_the_systemd_units_verify(tmp_path):
    """systemd's own check of the units (a key misspelt is ignored by systemd, with a warning in
    the journal only), with vqad at this checkout's path."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            raise RuntimeError("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    vqad = Path(sys.executable).with_name("vqad")
    for unit in sorted([*(ROOT / "deploy").glob("*.service"), *(ROOT / "deploy").glob("*.timer")]):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/vqad/venv/bin/vqad", str(vqad)))
        done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert done.returncode == 0 and not said, (unit.name, said)


# Each alert: the series that should raise it within the rule's `for`, and when it is due; a
# case with due None is one that must stay quiet (a blip, or a value short of the rule's `for`).
# Samples every 15 s (`a+bxN`: promtool's expanding notation, N further samples). A series is
# (metric, its labels beside the box's, values); an alert's labels are its series' unless the
# rule aggregates (`by`), as the last item says.
BOX = {"job": "vqad", "instance": "box:9108"}
CAM0 = {"camera": "cam0"}
UNFIT, FIT = {**CAM0, "health": "unfit"}, {**CAM0, "health": "fit"}
ALERT_CASES = [
    ("VqadDown", [("up", {}, "1 1 0x10")], "1m30s"),
    ("VqadDown", [("up", {}, "1x10")], None),
    ("VqadNotReady", [("vqad_ready", {}, "0x12")], "2m"),
    ("VqadNotReady", [("vqad_ready", {}, "0 0 1x10")], None),  # the start's warm-up
    ("VqadStalled", [("vqad_stalled", {}, "0 1x6")], "45s"),
    ("VqadStalled", [("vqad_stalled", {}, "0 1 0x6")], None),  # one slow batch
    ("VqadBackendFailing", [("vqad_backend_errors_total", {}, "0 0 3x4")], "30s"),
    ("VqadRestartedUnclean", [("vqad_previous_exit_unclean", {}, "0 1x4")], "15s"),
    # A PNG camera at 35 frames/s on one decoding thread of 29 ms a frame: busy all the time from
    # the start, over 0.9 of the 5-minute rate's window at 4m45s, and 10 minutes after that.
    (
        "VqadDecodingSaturated",
        [("vqad_decode_seconds_total", {}, "0+15x80"), ("vqad_decode_workers", {}, "1x80")],
        "14m45s",
    ),
    # Two threads busy half of the time: room left.
    (
        "VqadDecodingSaturated",
        [("vqad_decode_seconds_total", {}, "0+15x80"), ("vqad_decode_workers", {}, "2x80")],
        None,
    ),
    ("VqadCameraDrift", [("vqad_drift_alarm", CAM0, "1x24")], "5m"),
    ("VqadCameraDrift", [("vqad_drift_alarm", CAM0, "1x10 0x14")], None),
    ("VqadCameraFailRate", [("vqad_fail_rate_alarm", CAM0, "0 1x10")], "1m15s"),
    ("VqadCameraFailRate", [("vqad_fail_rate_alarm", CAM0, "0 1x2 0x10")], None),  # raised and cleared at once
    # A shift's red rabbit that passes: at the next evaluation; right ones raise nothing.
    (
        "VqadMasterPartWrong",
        [("vqad_master_parts_total", {**CAM0, "outcome": "wrong"}, "0x4 1x10")],
        "1m15s",
        {**BOX, **CAM0, "outcome": "wrong"},
    ),
    ("VqadMasterPartWrong", [("vqad_master_parts_total", {**CAM0, "outcome": "right"}, "0x4 1x10 2x10")], None),
    # A red rabbit under a dark lamp: no proof, and none against the parts since.
    ("VqadMasterPartWrong", [("vqad_master_parts_total", {**CAM0, "outcome": "unproven"}, "0x4 1x10")], None),
    (
        "VqadMasterPartUnproven",
        [("vqad_master_parts_total", {**CAM0, "outcome": "unproven"}, "0x4 1x10")],
        "1m15s",
        {**BOX, **CAM0, "outcome": "unproven"},
    ),
    # A threshold set at 1 minute, and master parts not run again since.
    ("VqadMasterPartsNotRunSinceChange", [("vqad_master_parts_current", CAM0, "1x4 0x250")], "61m15s"),
    # Master parts checked at the start (t = 0), then none for a shift and an hour.
    ("VqadMasterPartsOverdue", [("vqad_master_parts_checked_timestamp_seconds", CAM0, "0x2200")], "9h15s"),
    # A camera at 4 frames/s whose lamp fails at 1 minute: from then on every frame is unfit.
    (
        "VqadCameraUnfit",
        [("vqad_camera_frames_total", FIT, "0+60x4 240x40"), ("vqad_camera_frames_total", UNFIT, "0x4 0+60x40")],
        "7m30s",
        {"instance": "box:9108", **CAM0},
    ),
    # One unfit frame in four (a part out of its fixture now and then) raises nothing.
    (
        "VqadCameraUnfit",
        [("vqad_camera_frames_total", FIT, "0+45x40"), ("vqad_camera_frames_total", UNFIT, "0+15x40")],
        None,
    ),
    # A camera paused for a changeover and left so.
    ("VqadCameraPaused", [("vqad_camera_paused", CAM0, "1x250")], "60m"),
    # Two senders left at one camera id, at 1 frame/s each: an id again every other frame.
    ("VqadFrameIdsRepeating", [("vqad_frame_ids_back_total", {}, "0 0+15x20")], "30s"),
    ("VqadFrameIdsRepeating", [("vqad_frame_ids_back_total", {}, "0 1x20 2x20")], None),  # two restarts
    # Two cameras left at one id, 1 frame/s each, taking turns: a switch back every frame.
    ("VqadCameraIdShared", [("vqad_camera_senders_mixed_total", {}, "0 0+15x20")], "30s"),
    ("VqadCameraIdShared", [("vqad_camera_senders_mixed_total", {}, "0 1x20 2x20")], None),  # one now and then
    ("VqadRecordLosingResults", [("vqad_unrecorded_total", {}, "0 0 12x4")], "30s"),
    # A database down: its writer retries every 5 s at most, each failure counted.
    ("VqadRecordUnavailable", [("vqad_record_errors_total", {}, "0 0+3x30")], "5m30s"),
    ("VqadRecordUnavailable", [("vqad_record_errors_total", {}, "0 0 1x40")], None),  # one failed write
    ("VqadRecordSetAside", [("vqad_record_set_aside_total", {}, "0 0 1x4")], "30s"),
    ("VqadRecordBehind", [("vqad_record_behind_seconds", {}, "0 30 61+15x10")], "2m30s"),
    ("VqadRecordBehind", [("vqad_record_behind_seconds", {}, "0 61 75 0x10")], None),
    ("VqadEvidenceNotWritten", [("vqad_evidence_failed_total", {}, "0 0 1x4")], "30s"),
    ("VqadRecordFull", [("vqad_results_removed_for_space_total", {}, "0 0 5000x4")], "30s"),
    ("VqadModelReloadRefused", [("vqad_model_reload_failures_total", {}, "0 0 1x4")], "30s"),
    # A box that boots in 1970 and NTP sets three minutes later; one that NTP sets within a minute.
    ("VqadClockBehind", [("vqad_clock_behind_seconds", {}, "1.79e9x11 0x10")], "2m"),
    ("VqadClockBehind", [("vqad_clock_behind_seconds", {}, "1.79e9x3 0x20")], None),
]


def _summary(rule: dict, labels: dict[str, str]) -> str:
    """The rule's summary as Prometheus renders it for these labels (only `$labels.X` is used)."""
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], rule["annotations"]["summary"])


def test_the_alert_rules_fire_when_they_should_and_not_on_a_blip(tmp_path):
    """Prometheus's own rule tests (promtool): each alert fires on the series it is for, once its
    `for` has passed, and stays quiet on a short blip; every rule has a case that fires."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            raise RuntimeError("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules_file = ROOT / "deploy" / "vqad-alerts.yml"
    rules = {r["alert"]: r for r in yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]}
    assert {case[0] for case in ALERT_CASES if case[2]} == set(rules), "an alert without a case that raises it"
    tests = []
    for alert, series, due, *aggregated in ALERT_CASES:
        inputs = [{"series": metric + "{" + ",".join(f'{k}="{v}"' for k, v in {**BOX, **extra}.items()) + "}",
                   "values": values} for metric, extra, values in series]  # fmt: skip
        if due:
            # Quiet a sample before it is due, firing from then on, with its labels and summary.
            labels = aggregated[0] if aggregated else {**BOX, **series[0][1]}
            seconds = sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", due))
            exp = {"exp_labels": {**labels, **rules[alert]["labels"]},
                   "exp_annotations": {"summary": _summary(rules[alert], labels)}}  # fmt: skip
            checks = [{"eval_time": f"{seconds - 15}s", "alertname": alert, "exp_alerts": []},
                      {"eval_time": due, "alertname": alert, "exp_alerts": [exp]}]  # fmt: skip
        else:
            checks = [{"eval_time": f"{m}m", "alertname": alert, "exp_alerts": []} for m in range(1, 11)]
        tests.append({"interval": "15s", "input_series": inputs, "alert_rule_test": checks})
    spec = tmp_path / "vqad-alerts.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules_file)], "evaluation_interval": "15s", "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
