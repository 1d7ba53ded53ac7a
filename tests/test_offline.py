"""`vqad score`: the line's decision on image files, without a daemon (edge.offline)."""

from __future__ import annotations

import csv
import json
import re
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
    table = _score(tiny_model, images).stdout  # known good parts beside each defect kind: a line per folder
    for kind in sorted(p.name for p in images.iterdir()):
        n = len(list((images / kind).iterdir()))
        assert re.search(rf"^{re.escape(str(images / kind))}: {n} images: \d+ pass, \d+ fail", table, re.M), table
    table = _score(tiny_model, images / "good", "--threshold", "1e-9").stdout
    assert "FAIL" in table and "PASS" not in table and "threshold 1e-09" in table
    refused = _score(tiny_model, tmp_path / "nothing_here", check=False)
    assert refused.returncode == 3 and "nothing_here: no such file or folder" in refused.stderr
    lot = tmp_path / "lot 7, line 2"  # a comma in a path keeps the CSV's columns
    shutil.copytree(images / "good", lot)
    as_csv = list(csv.DictReader(_score(tiny_model, lot, "--format", "csv").stdout.splitlines()))
    as_json = json.loads(_score(tiny_model, lot, "--format", "json").stdout)
    assert [(r["image"], float(r["score"]), r["decision"]) for r in as_csv] == [
        (r["image"], r["score"], r["decision"]) for r in as_json
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    refused = _score(tiny_model, tmp_path / "notes.txt", check=False)
    assert refused.returncode == 3 and "notes.txt: neither an image file" in refused.stderr


def test_pictures_are_drawn_over_each_image_at_its_own_size_whatever_its_channels(tiny_model, synth_root, tmp_path):
    """--out draws the map over the image file as the camera took it (the record's evidence does
    the same), not over the model's 32-pixel input: colour, grey and BGRA files alike."""
    import cv2

    defect = sorted((synth_root / "bracket" / "test").glob("[!g]*/*.png"))[0]
    colour = cv2.resize(cv2.imread(str(defect), cv2.IMREAD_COLOR), (400, 320), interpolation=cv2.INTER_LINEAR)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "colour.png"), colour)
    cv2.imwrite(str(images / "grey.png"), cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(images / "alpha.png"), cv2.cvtColor(colour, cv2.COLOR_BGR2BGRA))
    scored = _score(tiny_model, images, "--format", "json", "--threshold", "1e-9", "--out", tmp_path / "p")
    rows = json.loads(scored.stdout)
    assert {r["decision"] for r in rows} == {"fail"}
    for row in rows:
        stem = row["image"].rsplit("/", 1)[1].removesuffix(".png")
        (picture,) = (tmp_path / "p").glob(f"{stem}_*.png")
        drawn = cv2.imread(str(picture), cv2.IMREAD_UNCHANGED)
        assert drawn.shape == (320, 400, 3), stem
        x, y, w, h = (row["result"]["regions"][0][k] for k in "xywh")  # frame pixels: the picture's own
        left_edge = drawn[y + h // 4 : y + 3 * h // 4, x]  # below the label, and mostly clear of the peak's ring
        assert (left_edge == [0, 0, 255]).all(axis=1).mean() > 0.8, stem
