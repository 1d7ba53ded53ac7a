"""The line's box as JetPack 6 has it: Python 3.10 and `vqad[edge]` alone, without torch, onnx or
scikit-learn. `make test` makes that environment where this machine has a Python 3.10 and names
its interpreter in VQAD_EDGE_PYTHON; the line's commands run in it here, on a model package made
by this environment. Elsewhere these tests are skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

import cv2
import numpy as np
import pytest

from edge.package import load_package
from edge.protocol import frame_message
from tests.browser import DashboardProcess
from tests.conftest import ROOT
from tests.edge_helpers import Camera, DaemonProcess, Subscriber

EDGE_PYTHON = os.environ.get("VQAD_EDGE_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not EDGE_PYTHON, reason="no Python 3.10 with vqad[edge] alone (make test makes one where a Python 3.10 exists)"
)


def _vqad(*args: str) -> subprocess.CompletedProcess:
    """`vqad ARGS` on the box's interpreter."""
    return subprocess.run(
        [EDGE_PYTHON, "-m", "vqad.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_the_box_is_python_3_10_without_the_training_packages():
    code = "import sys, importlib.util as u; "
    code += "print(sys.version_info[:2], [m for m in ('torch', 'onnx', 'sklearn') if u.find_spec(m)])"
    proc = subprocess.run([EDGE_PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "(3, 10) []", proc.stdout + proc.stderr


def test_a_shift_on_the_box(tiny_model, line_good, tmp_path):
    """Calibrate the package on the line's good parts, serve it with a record and a control
    socket, stream frames (one of them a defect), ask the daemon, the record and the dashboard
    what happened, with a time as programs write it (a trailing Z), and decide image files
    offline."""
    model, db, ctl = tmp_path / "model", tmp_path / "line.db", f"ipc://{tmp_path}/ctl"
    shutil.copytree(tiny_model, model)
    proc = _vqad("calibrate", model, line_good)
    assert proc.returncode == 0 and load_package(model).meta["threshold"]["source"]["n_images"] == 16, proc.stderr
    frames = [cv2.imread(str(p)) for p in sorted(line_good.glob("*.png"))[:6]]
    frames[2] = 255 - frames[2]  # a part nothing like the good ones
    with DaemonProcess(model, "--record", str(db), "--control", ctl, python=EDGE_PYTHON) as daemon:
        sub, cam = Subscriber(daemon.results), Camera(daemon.frames)
        try:
            for i, frame in enumerate(frames):
                cam.send(frame_message("box", i, frame, "raw"))
            results = sorted(sub.collect(len(frames)), key=lambda r: r[0]["frame_id"])
        finally:
            sub.close()
            cam.close()
        status = _vqad("ctl", ctl, "status")
        assert status.returncode == 0 and json.loads(status.stdout)["model"]["sha256"] == load_package(model).sha256
    assert [h["status"] for h, _ in results] == ["ok"] * 6 and results[2][0]["decision"] == "fail"
    records = _vqad("records", db, "--since", "2000-01-01T00:00:00Z", "--format", "json")
    assert records.returncode == 0, records.stderr
    assert sorted(r["frame_id"] for r in json.loads(records.stdout)) == list(range(6))
    with DashboardProcess("--record", str(db), log_path=tmp_path / "dashboard.log", python=EDGE_PYTHON) as page:
        with urllib.request.urlopen(f"{page.url}/api/results?decision=fail&since=2000-01-01T00:00:00Z") as answer:
            assert [r["frame_id"] for r in json.load(answer)["results"]] == [2]
        with urllib.request.urlopen(f"{page.url}/") as answer:
            assert answer.status == 200 and b"<html" in answer.read().lower()
    scored = _vqad("score", model, line_good, "--format", "json")
    assert scored.returncode == 0 and len(json.loads(scored.stdout)) == 16, scored.stderr
    assert np.isfinite([r["score"] for r in json.loads(scored.stdout)]).all()
