"""The deployment files name what the daemon has: the alert rules' metrics are the daemon's."""

from __future__ import annotations

import re

import promql_parser
import yaml
from prometheus_client import generate_latest

from edge.metrics import DaemonMetrics
from tests.conftest import ROOT


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
