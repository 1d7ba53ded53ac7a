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


def _on_the_edge(command: str, *args, check=True) -> subprocess.CompletedProcess:
    """`vqad COMMAND ARGS` as the edge box runs it: without torch or train/."""
    proc = subprocess.run([sys.executable, "-c", BLOCKED_LAUNCH, command, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _score(*args, check=True) -> subprocess.CompletedProcess:
    return _on_the_edge("score", *args, check=check)


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
    # Each line and CSV row gives the highest region as `vqad calibrate --ignore` takes it.
    tops = {r["image"]: "{x},{y},{w},{h}".format(**max(r["result"]["regions"], key=lambda g: g["peak"])) for r in rows}
    counts = {r["image"]: len(r["result"]["regions"]) for r in rows}
    table = _score(tiny_model, images, "--threshold", "1e-9").stdout.splitlines()
    for image, top in tops.items():
        assert any(f"regions {counts[image]} (top X,Y,W,H {top})  {image}" in line for line in table), table
    as_csv = csv.DictReader(_score(tiny_model, images, "--threshold", "1e-9", "--format", "csv").stdout.splitlines())
    assert {r["image"]: r["region"] for r in as_csv} == tops


def test_a_new_package_is_scored_against_the_one_in_service(tiny_model, synth_root, tmp_path):
    """--against: each image's decision by both packages, each at its own threshold, and the
    decisions that change, per folder and in all; a recalibrated copy stands for the new one."""
    from edge.package import write_model_json

    images = synth_root / "bracket" / "test"
    in_service = json.loads(_score(tiny_model, images, "--format", "json").stdout)
    good_scores = sorted(r["score"] for r in in_service if "/good/" in r["image"])
    new = tmp_path / "recalibrated"
    shutil.copytree(tiny_model, new)
    meta = json.loads((new / "model.json").read_text())
    meta["threshold"]["value"] = good_scores[len(good_scores) // 2]  # half the good parts now fail
    write_model_json(new, meta)
    alone = json.loads(_score(new, images, "--format", "json").stdout)
    both = json.loads(_score(new, images, "--format", "json", "--against", tiny_model).stdout)
    assert [(r["image"], r["decision"]) for r in both] == [(r["image"], r["decision"]) for r in alone]
    assert [(r["against"]["decision"], r["against"]["score"]) for r in both] == [
        (r["decision"], r["score"]) for r in in_service
    ]
    flips = [(r["against"]["decision"], r["decision"]) for r in both if r["against"]["decision"] != r["decision"]]
    to_fail, to_pass = flips.count(("pass", "fail")), flips.count(("fail", "pass"))
    assert to_fail >= len(good_scores) // 3 and to_pass == 0, flips  # a lower threshold passes nothing it failed

    table = _score(new, images, "--against", tiny_model).stdout.splitlines()
    assert sum("(was PASS " in line for line in table) == to_fail
    old_threshold = json.loads((tiny_model / "model.json").read_text())["threshold"]["value"]
    assert table[-1] == (
        f"against {tiny_model} (threshold {old_threshold:.6g}): "
        f"{to_fail} of {len(both)} decisions change: {to_fail} pass → fail, 0 fail → pass"
    )
    good_flips = sum(1 for r in both if "/good/" in r["image"] and r["against"]["decision"] != r["decision"])
    assert any(line.startswith(f"{images / 'good'}: ") and f"; {good_flips} of " in line for line in table), table
    rows = list(csv.DictReader(_score(new, images, "--format", "csv", "--against", tiny_model).stdout.splitlines()))
    assert [r["against_decision"] for r in rows] == [r["decision"] for r in in_service]

    unchanged = _score(tiny_model, images / "good", "--against", tiny_model).stdout.splitlines()
    assert unchanged[-1].endswith(f": no decision of {len(good_scores)} changes")
    refused = _score(new, images, "--against", tmp_path / "models" / "p0", check=False)
    assert refused.returncode == 4 and "model package folder not found" in refused.stderr
    assert "scoring" not in refused.stdout


def _info(*args, check=True) -> subprocess.CompletedProcess:
    return _on_the_edge("info", *args, check=check)


def test_a_packages_card_says_what_it_is_and_whether_its_graphs_are_whole(tiny_model, tmp_path):
    """`vqad info`: where the package came from, its input, each graph's sha256 (the record
    names a result's model by model.onnx's) checked against the file, the threshold with its
    provenance and the ones before it, the evaluation and the parity; exit 4 for a graph changed
    since the export, on the edge box."""
    from edge.package import write_model_json

    meta = json.loads((tiny_model / "model.json").read_text())
    card = _info(tiny_model).stdout.splitlines()
    assert card[0].startswith(f"{tiny_model}: model {meta['name']}, version {meta['version']}, exported ")
    assert f"step {meta['source']['step']}" in card[0]
    assert "input      32x32 (HxW) x 3 channels (BGR)" in card[1]
    assert f"graph      model.onnx: sha256 {meta['files']['model.onnx']} verified" in card
    threshold = meta["threshold"]
    assert any(line.startswith(f"threshold  {threshold['value']:.6g}: vqad eval ") for line in card), card
    evaluation = next(line for line in card if line.startswith("evaluation "))
    assert f"image AUROC {meta['metrics']['evaluation']['image_auroc']:.3f}" in evaluation
    assert any(line.startswith("parity     ") and "decisions agree" in line for line in card)

    copy = tmp_path / "recalibrated"
    shutil.copytree(tiny_model, copy)
    meta["threshold_history"] = [*meta.get("threshold_history", []), threshold]
    meta["threshold"] = {**threshold, "value": 0.5, "source": {"by": "vqad calibrate", "folder": "/line/good"}}
    write_model_json(copy, meta)
    card = _info(copy).stdout.splitlines()
    at = next(i for i, line in enumerate(card) if line.startswith("threshold  0.5: vqad calibrate"))
    assert "from /line/good" in card[at] and card[at + 1].startswith(f"  before   {threshold['value']:.6g}: vqad eval")
    as_json = json.loads(_info(copy, "--format", "json").stdout)
    assert as_json["threshold"]["value"] == 0.5 and as_json["graphs"] == {
        "model.onnx": "verified",
        "model_fp16.onnx": "verified",
    }

    assert not any(line.startswith(("served at", "paused", "note")) for line in card), card

    # A daemon's state folder keeps what vqad ctl changed over the package: the card says what
    # the line serves. The package's folder by default, as edge.state_dir.
    from edge.package import load_package
    from edge.state import Overrides

    source = {
        "by": "vqad ctl set-threshold",
        "who": "ann",
        "reason": "lamp replaced",
        "at": "2026-12-07T06:00:00+00:00",
    }
    kept = {"value": 0.7, "source": source, "model_sha256": load_package(copy).sha256, "replaces": 0.5}
    Overrides(copy / Overrides.FILE_NAME, kept, ["cam7"]).save()
    card = _info(copy).stdout.splitlines()
    assert card[-2].startswith("served at  0.7: vqad ctl set-threshold by ann at 2026-12-07T06:00:00+00:00 (lamp "
                               "replaced), kept in "), card  # fmt: skip
    assert card[-2].endswith("serves it, not 0.5 (unless edge.threshold is set: vqad info --config)"), card
    assert card[-1].startswith("paused     cam7: with vqad ctl pause")
    served = json.loads(_info(copy, "--format", "json").stdout)["served"]
    assert served["threshold"]["value"] == 0.7 and served["threshold_applies"] and served["paused"] == ["cam7"]
    elsewhere = tmp_path / "state"  # a box's /var/lib/vqad; there, a threshold of another calibration
    elsewhere.mkdir()
    Overrides(elsewhere / Overrides.FILE_NAME, {**kept, "replaces": 0.9}, []).save()
    card = _info(copy, "--state-dir", elsewhere).stdout.splitlines()
    assert card[-1].startswith("note       0.7: vqad ctl set-threshold by ann") and "drops it" in card[-1], card
    # The config the daemon runs with: its edge.threshold is what the line serves, and the
    # threshold kept with vqad ctl replaced that one, on its state folder.
    config = tmp_path / "edge.yaml"
    config.write_text(f"threshold: 0.9\nstate_dir: {elsewhere}\n")
    card = _info(copy, "--config", config).stdout.splitlines()
    assert card[-2] == "configured 0.9: edge.threshold in the config, served instead of the package's 0.5", card
    assert card[-1].startswith("served at  0.7: vqad ctl") and card[-1].endswith("serves it, not 0.9"), card
    served = json.loads(_info(copy, "--config", config, "--format", "json").stdout)["served"]
    assert served["state_dir"] == str(elsewhere) and served["configured_threshold"] == 0.9, served
    assert served["threshold_applies"] is True, served
    card = _info(copy, "--config", config, "--set", "edge.threshold=0.8").stdout.splitlines()
    assert card[-2].startswith("configured 0.8") and card[-1].startswith("note       0.7"), card  # it replaced 0.9

    with open(copy / "model_fp16.onnx", "ab") as graph:
        graph.write(b"\0")  # a copy cut or changed on its way to the box
    changed = _info(copy, check=False)
    assert changed.returncode == 4 and "model_fp16.onnx: sha256" in changed.stdout and "DIFFERS" in changed.stdout
    assert "not the file(s) it was exported with" in changed.stderr
    refused = _info(tmp_path / "nothing", check=False)
    assert refused.returncode == 4 and "model package folder not found" in refused.stderr
