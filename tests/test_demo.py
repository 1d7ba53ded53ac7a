"""`vqad demo`, the README's first command, end to end on a short training: every step runs as
its own process and the line's record, review, export and recalibration come out whole."""

from __future__ import annotations

import json
import os
import shutil

from edge.transport import free_loopback_port
from tests.conftest import run_vqad
from vqad.demo import CAMERA_FPS


def test_the_demo_runs_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    frames, results = (f"tcp://127.0.0.1:{free_loopback_port()}" for _ in range(2))
    # A 64-pixel input: the whole chain at a fraction of the shipped 128-pixel one's cost.
    proc = run_vqad("demo", "--workdir", workdir, "--minutes", "0.1", "--image-size", "64", "--frames", frames,
                    "--results", results)  # fmt: skip
    summary = json.loads((workdir / "demo-summary.json").read_text())
    assert summary["results"] == summary["frames"] == summary["record"]["rows"] > 0, summary
    assert summary["daemon_exit_code"] == 0 and summary["by_status"] == {"ok": summary["frames"]}
    # At the camera's pace, not a burst, so the latency shown is a line's, not a queue's.
    assert summary["throughput_fps"] <= 1.1 * CAMERA_FPS and summary["latency_ms"]["p50"] > 0
    assert summary["record"]["reviews"] and summary["record"]["exported"]
    assert summary["record"]["threshold_source"]["by"] == "vqad calibrate"
    for made in ("report/report.html", "model/model.onnx", "model/model_fp16.onnx"):
        assert (workdir / made).is_file(), made
    if os.environ.get("CI") or shutil.which("chromium"):  # .ci/run installs it; elsewhere the demo says it has none
        assert (workdir / "dashboard.png").is_file()
    assert "live results against the ground truth" in proc.stdout
