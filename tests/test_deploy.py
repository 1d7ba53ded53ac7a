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
    assert page.record == f"sqlite:///{tmp_path}/line.db" and page.metrics.endswith(":9108/metrics")


def test_the_systemd_units_verify(tmp_path):
    """systemd's own check of the units (a key misspelt is ignored by systemd, with a warning in
    the journal only), with vqad at this checkout's path."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            raise RuntimeError("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    vqad = Path(sys.executable).with_name("vqad")
    for unit in sorted((ROOT / "deploy").glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/vqad/venv/bin/vqad", str(vqad)))
        done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert done.returncode == 0 and not said, (unit.name, said)
