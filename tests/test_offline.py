"""`vqad score`: the line's decision on image files, without a daemon (edge.offline)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.edge_helpers import BLOCKED_LAUNCH


def _score(*args, check=True) -> subprocess.CompletedProcess:
    """`vqad score ARGS` as the edge box runs it: without torch or train/."""
    proc = subprocess.run([sys.executable, "-c", BLOCKED_LAUNCH, "score", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_image_files_are_decided_as_the_line_decides_them_and_drawn(tiny_model, tiny_run, synth_root, tmp_path):
    """Every test image's score and decision are eval's (the same graph the daemon runs); an
    unreadable file is an error result among them; --out draws each scored image."""
    expected = {row["path"]: row for row in csv.DictReader(open(tiny_run / "eval" / "scores.csv"))}
    images = tmp_path / "images"
    shutil.copytree(synth_root / "bracket" / "test", images)
    (images / "good" / "broken.png").write_bytes(b"\x89PNG not quite")
    proc = _score(tiny_model, images, "--format", "json", "--out", tmp_path / "pictures", check=False)
    assert proc.returncode == 3 and "1 of" in proc.stderr and "broken.png" in proc.stderr  # all written, then said
    rows = json.loads(proc.stdout)
    assert len(rows) == len(expected) + 1
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)  # in the order found
    broken = next(r for r in rows if r["image"].endswith("broken.png"))
    assert broken["status"] == "error" and "unreadable image" in broken["error"]
    for row in rows:
        if row is broken:
            continue
        ref = expected[str(synth_root / "bracket" / "test" / row["image"].split("images/", 1)[1])]
        assert row["score"] == pytest.approx(float(ref["score"]), rel=1e-4, abs=1e-5)
        assert row["decision"] == ref["decision"] and row["result"]["model"]["sha256"]
    assert len(list((tmp_path / "pictures").glob("*.png"))) == len(expected)
    (images / "good" / "broken.png").unlink()
    table = _score(tiny_model, images / "good", "--threshold", "1e-9").stdout
    assert "FAIL" in table and "PASS" not in table and "threshold 1e-09" in table
    refused = _score(tiny_model, tmp_path / "nothing_here", check=False)
    assert refused.returncode == 3 and "nothing_here: no such file or folder" in refused.stderr
    (tmp_path / "notes.txt").write_text("not an image")
    refused = _score(tiny_model, tmp_path / "notes.txt", check=False)
    assert refused.returncode == 3 and "notes.txt: neither an image file" in refused.stderr
