import csv
import html
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.errors import CheckpointError
from tests.conftest import ROOT, TINY_MODEL, TINY_TRAIN, VQAD, run_vqad
from train.checkpoint import load_checkpoint, state_hash
from train.pipeline import score_frames
from train.run import load_run


def test_synth_train_eval_writes_metrics_and_pictures(tiny_run):
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == 4 + 5 * 2
    crowd = metrics["good_peaks_crowd"]  # the highest validation images peaking in one place, said; or null
    assert crowd is None or "highest good validation images peak at" in crowd, crowd
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0
    assert (tiny_run / "curves.png").stat().st_size > 1000  # vqad train --plot
    for picture in ("histogram.png", "roc.png", "codebook.png", "curves.png"):
        assert (tiny_run / "eval" / picture).stat().st_size > 1000
    panels = list((tiny_run / "eval" / "images").glob("*.png"))
    calibration = [p for p in panels if p.name.startswith("calibration_")]
    assert len(panels) - len(calibration) == metrics["n_images"]
    threshold = json.loads((tiny_run / "threshold.json").read_text())
    # 16 good images: 25% would hold out 4; the split grows it to 5, while training keeps 11.
    assert threshold["value"] == metrics["threshold"] and threshold["n_val"] == 5
    # The good images that set the threshold are named, highest first, and drawn.
    highest = threshold["highest_images"]
    assert [h["score"] for h in highest] == sorted(threshold["scores"], reverse=True)[:5]
    assert {h["image"] for h in highest} <= set(json.loads((tiny_run / "split.json").read_text())["val"])
    assert sorted(p.name for p in calibration) == sorted(
        f"calibration_{rank}_{Path(h['image']).stem}.png" for rank, h in enumerate(highest, start=1)
    )


def test_eval_gives_the_trade_each_target_frr_would_make_on_the_test_images(tiny_run):
    """`--target-frr` trades false rejects for misses: for 1%, 2%, 3% and 5%, eval sets the
    threshold on the validation images as it sets its own, and says what each rejects and misses
    of the test images, in metrics.json, its last closing line and the report."""
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    validation = np.array(json.loads((tiny_run / "threshold.json").read_text())["scores"])
    with open(tiny_run / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    good = np.array([float(r["score"]) for r in rows if r["label"] == "0"])
    defects = np.array([float(r["score"]) for r in rows if r["label"] == "1"])
    choices = metrics["target_frr_choices"]
    assert [c["target_frr"] for c in choices] == [0.01, 0.02, 0.03, 0.05]
    for c in choices:
        at = np.quantile(validation, 1 - c["target_frr"], method="higher")
        assert c["threshold"] == pytest.approx(at * 1.01, rel=1e-5)  # the quantile + 1%, as calibrated
        assert c["false_reject_rate"] == pytest.approx((good >= c["threshold"]).mean())
        assert c["miss_rate"] == pytest.approx((defects < c["threshold"]).mean())
    assert [c["threshold"] for c in choices] == sorted((c["threshold"] for c in choices), reverse=True)
    shipped = choices[0]  # the run's own target: the threshold eval set
    assert (shipped["threshold"], shipped["false_reject_rate"], shipped["miss_rate"]) == (
        metrics["threshold"], metrics["false_reject_rate"], metrics["miss_rate"])  # fmt: skip
    said = (tiny_run / "eval" / "stdout.txt").read_text().splitlines()
    assert said[2].startswith("--target-frr, its threshold set on the validation images: 1% rejects "), said
    assert f"5% rejects {choices[3]['false_reject_rate']:.1%} and misses {choices[3]['miss_rate']:.1%}" in said[2]
    assert "--target-frr 0.05: false rejects / misses" in (tiny_run / "eval" / "report.html").read_text()


class _Sections(HTMLParser):
    """A page's pictures by the heading (h2) they stand under: {heading: [img src, ...]}."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[str]] = {"": []}
        self._heading: str | None = None
        self._current = ""

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._heading = ""
        elif tag == "img":
            self.sections[self._current].append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if tag == "h2":
            self._current, self._heading = self._heading, None
            self.sections[self._current] = []


def test_the_report_page_shows_what_the_threshold_rejects_and_lets_pass(tiny_run):
    """report.html: the good test images rejected, highest first, and the defects that pass,
    lowest first, as scores.csv decided them; every picture it shows is in the folder."""
    report = tiny_run / "eval"
    page = (report / "report.html").read_text()
    parser = _Sections()
    parser.feed(page)
    with open(report / "scores.csv") as f:
        rows = [{**r, "score": float(r["score"])} for r in csv.DictReader(f)]

    def panels(label, decision, highest_first):
        chosen = sorted((r for r in rows if r["label"] == label and r["decision"] == decision),
                        key=lambda r: r["score"], reverse=highest_first)  # fmt: skip
        return [f"images/{r['kind']}_{Path(r['path']).stem}.png" for r in chosen]

    rejected, missed = panels("0", "fail", True), panels("1", "pass", False)
    assert parser.sections[f"Good test images rejected ({len(rejected)})"] == rejected
    assert parser.sections[f"Defects that pass ({len(missed)})"] == missed
    metrics = json.loads((report / "metrics.json").read_text())
    # Which kinds of defect pass: by kind, as scores.csv decided them, and on the page.
    kinds = sorted({r["kind"] for r in rows} - {"good"})
    assert kinds and sorted(metrics["per_kind_misses"]) == kinds
    for kind in kinds:
        of_kind = [r for r in rows if r["kind"] == kind]
        passed = sum(r["decision"] == "pass" for r in of_kind)
        assert metrics["per_kind_misses"][kind] == {"passed": passed, "of": len(of_kind), "rate": passed / len(of_kind)}
        assert f'<th>{kind} that pass</th><td class="n">{passed} of {len(of_kind)}: ' in page
    peaks = metrics["defect_peaks"]  # every defect counted once, passed or caught as scores.csv says
    defects = [r for r in rows if r["label"] == "1"]
    assert sum(peaks["passed"].values()) + sum(peaks["caught"].values()) + peaks["without_mask"] == len(defects)
    assert "defects that pass, peaking on the defect / elsewhere" in page
    printed = (report / "stdout.txt").read_text()  # the closing line says it where a defect passes
    said = f"the misses' maps peak on the defect in {peaks['passed']['on_defect']}, elsewhere in "
    assert (said in printed) == (sum(peaks["passed"].values()) > 0), printed
    assert ("When too many defects pass" in printed) == (metrics["miss_rate"] > 0), printed
    assert "What to do for each: docs/new-product.md, &quot;When too many defects pass&quot;." in page
    threshold = metrics["threshold"]
    assert f"{threshold:.6g}" in page
    highest = json.loads((tiny_run / "threshold.json").read_text())["highest_images"]
    assert parser.sections["The good images that set the threshold"] == [
        *(f"images/calibration_{rank}_{Path(h['image']).stem}.png" for rank, h in enumerate(highest, start=1)),
        "peaks.png",  # where each of them scores highest, over the first at the model's 32 px, drawn 15 times as large
    ]
    assert cv2.imread(str(report / "peaks.png")).shape[1] == 480
    shown = [src for srcs in parser.sections.values() for src in srcs]
    assert len(shown) >= len(rows) + len(highest) and all((report / src).is_file() for src in shown)


def _strict_json(path):
    """json.loads that refuses NaN and Infinity, as browsers and jq do."""

    def refuse(constant):
        raise ValueError(f"{path.name} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_scores_csv_keeps_its_columns_for_a_product_named_with_a_comma(tmp_path):
    """scores.csv was written by hand: a folder "Bügel, Typ 2" or a kind "crack, small" shifted
    every column after it, and the report and the decisions were read from the wrong ones."""
    from train.data import TestSample
    from train.evaluate import _write_scores_csv

    image = np.zeros((4, 4, 3), np.uint8)
    folder = tmp_path / "Bügel, Typ 2" / "test"
    test = [TestSample(folder / "crack, small" / "0.png", "crack, small", "0", image, None, 1),
            TestSample(folder / "good" / '"1".png', "good", "1", image, None, 0)]  # fmt: skip
    _write_scores_csv(tmp_path / "scores.csv", test, np.array([0.25, 1e-7]), np.array([False, True]))
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["kind"], r["label"], float(r["score"]), r["decision"]) for r in rows] == [
        (str(test[0].path), "crack, small", "1", 0.25, "pass"),
        (str(test[1].path), "good", "0", 1e-7, "fail"),
    ]


@pytest.mark.parametrize(
    "kinds", [("good", "scratch"), ("good",), ()], ids=["labels-without-masks", "good-only", "no-test-folder"]
)
def test_a_figure_that_cannot_be_computed_is_null_in_metrics_json(tiny_run, synth_root, tmp_path, kinds):
    """A test set with image labels and no masks has no pixel AUROC; one of good images only has
    no AUROC at all; a category without a test folder (a new product) only calibrates the
    threshold. metrics.json says null, and the command still reports what it can."""
    category = tmp_path / "line"
    category.mkdir()
    for kind in kinds:
        shutil.copytree(synth_root / "bracket" / "test" / kind, category / "test" / kind)
    proc = run_vqad("eval", tiny_run, category, "--out", tmp_path / "eval")
    metrics = _strict_json(tmp_path / "eval" / "metrics.json")
    named = json.loads((tiny_run / "threshold.json").read_text())["highest_images"]
    drawn = sorted(p.name for p in (tmp_path / "eval" / "images").glob("calibration_*.png"))
    assert len(drawn) == len(named) > 0  # the good images that set the threshold, with or without a test set
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    assert "pixel AUROC -" in proc.stdout and "false rejects" in proc.stdout
    assert "good test images rejected" in (tmp_path / "eval" / "report.html").read_text()
    assert "would be unfit on the line" not in proc.stderr  # the run's own product
    assert "would be unfit on the line" not in (tmp_path / "eval" / "report.html").read_text()
    if kinds in [("good",), ()]:
        assert metrics["image_auroc"] is None and metrics["f1_max"] is None and metrics["miss_rate"] is None
    if not kinds:
        assert metrics["n_images"] == 0 and metrics["false_reject_rate"] is None
        assert metrics["threshold"] == json.loads((tiny_run / "threshold.json").read_text())["value"]
        assert "no test images" in proc.stderr
    elif "scratch" in kinds:
        assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["per_kind_image_auroc"]["scratch"] is not None
        scratch = metrics["per_kind_misses"]["scratch"]  # one kind: the closing line's figure is its figure
        assert f"of {scratch['of']} defects;" in proc.stdout and "(scratch" not in proc.stdout
        assert "maps peak" not in proc.stdout  # no masks: where a peak lies says nothing


def test_a_test_set_of_another_product_is_warned_of(tiny_run, synth_root, tmp_path):
    """A bracket run evaluated on the weave's folder (a category mistyped) measured the weave and
    said nothing: the camera health gate calls most of its good images unfit, and eval says so."""
    proc = run_vqad("eval", tiny_run, synth_root / "weave", "--out", tmp_path / "eval")
    n = len(list((synth_root / "weave" / "test" / "good").iterdir()))
    assert re.search(rf"(\d+) of {n} good test images under {re.escape(str(synth_root / 'weave'))} would be unfit "
                     r"on the line \(", proc.stderr), proc.stderr  # fmt: skip
    assert "are they this run's product, camera and lighting?" in proc.stderr
    found = json.loads((tmp_path / "eval" / "metrics.json").read_text())["good_test_unfit"]
    assert found["of"] == n and found["unfit"] * 2 >= n and found["examples"][0]["reasons"]
    assert "good test images would be unfit on the line" in (tmp_path / "eval" / "report.html").read_text()


def test_eval_measures_leaving_out_where_the_highest_validation_images_crowd(tiny_run, synth_root, tmp_path):
    """The same white label on three of the five validation images: the report says they peak
    there, and what leaving that place out of the package would do, measured on the run's own
    maps: the threshold the validation images would set without it, and the test images' false
    rejects and misses at it."""
    from edge.inspection import InspectionMask, keep_outside
    from train.data import load_images

    run, category = tmp_path / "run", tmp_path / "bracket"
    shutil.copytree(tiny_run, run)
    shutil.copytree(synth_root / "bracket", category)
    for kept in run.glob("*.json"):  # the run's images are the copy's
        kept.write_text(kept.read_text().replace(str(synth_root / "bracket"), str(category)))
    for name in sorted(Path(p).name for p in json.loads((run / "split.json").read_text())["val"])[:3]:
        image = cv2.imread(str(category / "train" / "good" / name))
        image[28:36, 40:48] = 255
        cv2.imwrite(str(category / "train" / "good" / name), image)
    said = run_vqad("eval", run, category, "--out", tmp_path / "eval").stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    found, words = metrics["good_peaks_left_out"], metrics["good_peaks_crowd"]
    top, left, bottom, right = found["box"]
    assert top <= 28 / 64 and left <= 40 / 64 and bottom >= 36 / 64 and right >= 48 / 64, found  # the label
    assert (bottom - top) * (right - left) < 0.25 and found["threshold"] < metrics["threshold"], found
    assert words.startswith("3 of the 5 highest good validation images peak at one place, ") and words in said
    assert (cv2.imread(str(tmp_path / "eval" / "peaks.png")) == (255, 255, 0)).all(axis=2).any()  # outlined
    assert f"would set the threshold at {found['threshold']:.4g} instead of {metrics['threshold']:.4g}" in words
    # The test images' figures are their maps' maxima outside the place, at that threshold.
    scores = {row["path"]: row for row in csv.DictReader((tmp_path / "eval" / "scores.csv").open())}
    run_loaded = load_run(run, category)
    good = [p for p, row in scores.items() if row["label"] == "0"]
    _, maps, _ = score_frames(run_loaded.model, load_images(good, run_loaded.model_cfg.input_format))
    cfg = run_loaded.model_cfg
    mask = InspectionMask(keep_outside(found["box"], tuple(cfg.image_size)), cfg.score.border, "")
    rejected = (mask.apply(maps[:, None], np.zeros(len(maps)))[1] >= found["threshold"]).mean()
    assert np.isclose(found["false_reject_rate"], rejected), (found, rejected)
    assert 0.0 <= found["miss_rate"] <= 1.0 and f"let {found['miss_rate']:.1%} of the defects pass" in words


def test_the_place_left_out_of_a_runs_maps_is_their_spots_over_the_rest():
    """left_out_of_run on maps made by hand: the place, its threshold from the validation maps
    without it, and the test maps' false rejects and misses there."""
    from types import SimpleNamespace

    from edge.peaks import Crowd
    from train.evaluate import left_out_of_run, left_out_of_run_words

    run = SimpleNamespace(model_cfg=SimpleNamespace(image_size=(20, 20), score=SimpleNamespace(border=1)),
                          train_cfg=SimpleNamespace(target_frr=0.01))  # fmt: skip
    val = np.full((5, 20, 20), 0.1, np.float32)
    val[:3, 8:11, 8:11] = 2.0  # three at one place
    val[3, 15, 15], val[4, 4, 4] = 0.5, 0.4  # the rest: 0.5 at most
    test = np.full((3, 20, 20), 0.1, np.float32)
    test[0, 9, 9] = 3.0  # a good image over the place: no longer rejected
    test[1, 2, 2] = 0.6  # a good image elsewhere over 0.505: rejected
    test[2, 16, 4] = 0.52  # a defect elsewhere: caught
    found = left_out_of_run(run, Crowd(3, "one place", (0, 1, 2), None), val, val.max(axis=(1, 2)), test,
                            np.array([0, 0, 1]))  # fmt: skip
    assert found["box"] == [8 / 20, 8 / 20, 11 / 20, 11 / 20]
    assert np.isclose(found["threshold"], 0.505) and found["inspected_share"] == 1 - 9 / 18**2
    assert found["false_reject_rate"] == 0.5 and found["miss_rate"] == 0.0
    crowded = Crowd(3, "one place", (0, 1, 2), None)
    figures = {"threshold": 2.02, "false_reject_rate": 0.5, "miss_rate": 1.0}
    said = left_out_of_run_words(crowded, found, figures)
    assert said.endswith("would set the threshold at 0.505 instead of 2.02, and on the test images reject 50.0% of "
                         "the good and let 0.0% of the defects pass, instead of 50.0% and 100.0%"), said  # fmt: skip
    same = left_out_of_run_words(crowded, {**found, "threshold": 2.02}, figures)  # the highest is not the crowd's
    assert same.endswith("would not lower the threshold: good images score as high elsewhere"), same


def test_a_training_its_disk_cannot_hold_is_refused_at_the_start_not_at_its_first_save(tmp_path, monkeypatch):
    """A run folder on a nearly full disk trained for its whole budget and then failed to write
    its checkpoint: an hour lost on this CPU. The room two checkpoints need is checked first."""
    import collections

    from train import loop
    from train.checkpoint import save_checkpoint
    from train.config import ModelConfig
    from train.pipeline import InspectionModel

    model = InspectionModel(ModelConfig(image_size=(320, 128)))  # the shipped model, at KolektorSDD's size
    opt = loop.torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda _path: Usage(10**9, 10**9, 2**20))
    with pytest.raises(OSError) as full:
        loop.check_room_for_checkpoints(tmp_path, model)
    assert full.value.errno == 28 and full.value.filename == str(tmp_path)
    assert "its disk has 1.0 MiB free, and the training needs about" in full.value.strerror
    needed = float(full.value.strerror.split("needs about ")[1].split(" MiB")[0]) * 2**20
    monkeypatch.setattr(loop.shutil, "disk_usage", lambda _path: Usage(10**9, 0, int(needed) + 2**20))
    loop.check_room_for_checkpoints(tmp_path, model)  # room enough
    for p in model.parameters():  # AdamW's moments, as after a step
        p.grad = loop.torch.zeros_like(p)
    opt.step()
    save_checkpoint(tmp_path / "checkpoint.pt", model.state_dict(), {}, opt.state_dict())
    written = (tmp_path / "checkpoint.pt").stat().st_size
    assert abs((needed - loop.RUN_MARGIN_BYTES) - 2 * written) <= 0.03 * 2 * written  # the file's size, near enough


def test_metrics_csv_has_the_training_scalars(tiny_run):
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 201, 5))
    for key in ("loss", "recon_l2", "vq_loss", "perplexity", "dead_restarted", "lr", "images_per_s"):
        assert all(r[key] != "" for r in rows), key
    assert rows[-1]["val_l2"] != ""


def test_checkpoint_describes_itself(tiny_run):
    ckpt = load_checkpoint(tiny_run / "checkpoint.pt")
    meta = ckpt["meta"]
    assert meta["step"] == 200 and meta["model_config"]["image_size"] == [32, 32]
    assert len(meta["content_sha256"]) == 64 and "val_l2" in meta["metrics"]
    assert meta["metrics"]["ended_by"] == "steps"  # not cut short by train.max_minutes
    run = load_run(tiny_run)
    assert run.model_cfg.codebook_size == 32 and not run.model.training
    # The bracket is a fixtured part: training's end fitted the golden template and switched it
    # on (score.reference auto), registered, so the export tests run the graph with both.
    template = run.model.scorer.terms["template"].plan
    assert meta["scoring"]["terms"][-1]["plan"]["gain"] == template.gain > 0
    assert template.aligned and template.alignment > 0.5 and run.model.scorer.weights["template"] > 0
    assert template.shift > 0 and template.blob_sigma > 0  # registered, with the blob filter
    assert template.lighting and template.band[0] < template.band[1] / 16  # the gain plane, the aligned band


def test_a_checkpoint_cut_short_is_named_as_such(tiny_run, tmp_path):
    """A run copied off the training machine by a copy that stopped early: it read "not a safe
    vqad checkpoint", as if it held code, and the message ended mid-sentence."""
    whole = (tiny_run / "checkpoint.pt").read_bytes()
    cut = tmp_path / "checkpoint.pt"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        CheckpointError, match=r"the file is damaged or cut short \([\d,]+ bytes, not a whole checkpoint"
    ):
        load_checkpoint(cut)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vqad-pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "vqad-checkpoint", "version": 1, "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load .*: not a safe vqad checkpoint"):
        load_checkpoint(path)
    with open(tmp_path / "raw.pt", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "raw.pt")
    assert not os.path.exists("/tmp/vqad-pwned")


LEGACY = ROOT / "tests" / "fixtures" / "legacy_v1"


def _legacy_scores(run_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    expected = np.load(LEGACY / "bracket" / "expected.npz")
    _, maps, scores = score_frames(load_run(run_dir).model, expected["frames"])
    return maps, scores, expected["scores"]


@pytest.mark.parametrize("category", ["bracket", "weave"])
def test_a_run_saved_in_format_1_scores_as_it_did(category):
    """Format-1 runs (the scorer's settings in its config, its decisions in buffers), saved with
    the shipped defaults of their day: the upgraded run's maps and scores are the ones it gave,
    except the map's margin, which now repeats its nearest scored pixel where it read 0."""
    expected = np.load(LEGACY / category / "expected.npz")
    run = load_run(LEGACY / category)
    _, maps, scores = score_frames(run.model, expected["frames"])
    b = run.model.scorer.border
    inner = expected["maps"][..., b:-b, b:-b]
    filled = np.pad(inner, [(0, 0)] * (inner.ndim - 2) + [(b, b), (b, b)], mode="edge")
    assert b > 0 and not np.allclose(filled, expected["maps"])  # the margin did change
    assert np.allclose(maps, filled, rtol=1e-5, atol=1e-6)
    assert np.allclose(scores, expected["scores"], rtol=1e-5, atol=1e-6)
    assert run.model_cfg.score.terms == ("head", "errors", "template")
    template = run.model.scorer.terms["template"].plan
    assert template.aligned == (category == "bracket") and (template.shift > 0) == (category == "bracket")
    assert run.meta["train_config_v1"]["head_loss"] == "bce"  # how it was trained, kept as saved


def test_recalibrating_a_format_1_run_fits_the_same_golden_template():
    """The template term, calibrated afresh on the run's own good images, finds what the
    format-1 scorer found: the same template, blob filter and gain (the fixture's runs were
    trained at 32 px with smoothing sigma 1; its training and validation images are stored
    beside it, as `vqad synth` drew them then)."""
    import dataclasses

    from train.model import uint8_nhwc_to_float
    from train.scoring import GoodImages
    from train.scoring.template import GoldenTemplate, TemplatePlan, TemplateSettings

    for category in ("bracket", "weave"):
        run = load_run(LEGACY / category)
        stored = np.load(LEGACY / category / "calibration_images.npz")
        train_images, val_images = stored["train"], stored["val"]
        batches = [uint8_nhwc_to_float(torch.from_numpy(train_images))]
        val = uint8_nhwc_to_float(torch.from_numpy(val_images))
        settings = dataclasses.replace(TemplateSettings.for_size(32), sigma=1.0)
        fresh = GoldenTemplate(TemplatePlan(), 3, (32, 32), 4, settings)
        plan = fresh.calibrate(GoodImages(train=lambda b=batches: b, val=val, val_recon=val))
        saved = run.model.scorer.terms["template"]
        assert (plan.band, plan.shift, plan.lighting, plan.blob_sigma) == (
            saved.plan.band,
            saved.plan.shift,
            saved.plan.lighting,
            saved.plan.blob_sigma,
        ), category
        assert torch.allclose(fresh.mean, saved.mean, atol=1e-6) and torch.allclose(fresh.std, saved.std, atol=1e-6)
        if plan.blob_sigma > 0:
            assert torch.allclose(fresh.blob_spectrum, saved.blob_spectrum, rtol=1e-4)
        # Format 1 kept weight / peak as one gain.
        assert abs(plan.weight * plan.gain - saved.plan.gain) < 1e-5 * saved.plan.gain, category


def _save_format_1(path, state: dict, meta: dict) -> None:
    meta = dict(meta, content_sha256=state_hash(state))
    torch.save({"format": "vqad-checkpoint", "version": 1, "meta_json": json.dumps(meta), "model": state}, path)


def test_format_1_runs_from_before_each_scoring_feature_load_without_it(tmp_path):
    """Runs older still: before the golden template, the blob filter, the gain plane and its
    band, and train.head_loss. Each loads as it was scored then."""
    payload = torch.load(LEGACY / "bracket" / "checkpoint.pt", weights_only=True)
    meta, state = json.loads(payload["meta_json"]), payload["model"]
    score = meta["model_config"]["score"]
    old = tmp_path / "old"
    shutil.copytree(LEGACY / "bracket", old)

    def load(score_cfg: dict, drop=lambda key: False, train_cfg=None, **model_cfg):
        m = dict(meta, model_config=dict(meta["model_config"], score=score_cfg, **model_cfg))
        m["train_config"] = train_cfg or meta["train_config"]
        _save_format_1(old / "checkpoint.pt", {k: v for k, v in state.items() if not drop(k)}, m)
        return load_run(old)

    before_template = {k: v for k, v in score.items() if not k.startswith("reference") and k != "head_smoothing_sigma"}
    run = load(before_template, drop=lambda k: k.startswith("scorer.ref_"))
    assert "template" not in run.model.scorer.terms and run.model_cfg.score.terms == ("head", "errors")
    assert run.model.scorer.terms["head"].plan.sigma == score["smoothing_sigma"]  # smoothed like the maps
    run = load({k: v for k, v in score.items() if k != "reference_blob_sigma"}, drop=lambda k: "blob" in k)
    assert run.model.scorer.terms["template"].plan.blob_sigma == 0 and run.model.scorer.terms["template"].plan.shift > 0
    before_plane = {k: v for k, v in score.items() if k not in ("reference_lighting", "reference_aligned_sigmas")}
    run = load(before_plane, drop=lambda k: k in ("scorer.ref_lighting", "scorer.ref_aligned_band"))
    template = run.model.scorer.terms["template"].plan
    assert not template.lighting and template.band == tuple(score["reference_sigmas"]) and template.blob_sigma > 0
    run = load(score, train_cfg={k: v for k, v in meta["train_config"].items() if k != "head_loss"})
    assert run.meta["train_config_v1"]["head_loss"] == "focal"  # its head was trained with the focal loss
    with pytest.raises(CheckpointError, match="model.restore=position"):
        load(score, restore="position")  # restoration changed what the model computes; removed
    with pytest.raises(CheckpointError, match="score.normalize=pixel"):
        load(dict(score, normalize="pixel"))
    maps, scores, expected = _legacy_scores(LEGACY / "bracket")
    assert np.allclose(scores, expected, rtol=1e-5, atol=1e-6)  # the fixture itself is untouched


def test_corrupt_checkpoint_is_refused(tiny_run, tmp_path):
    data = bytearray((tiny_run / "checkpoint.pt").read_bytes())
    for i in range(len(data) // 10, len(data) * 9 // 10, 997):  # damage spread over the whole file
        data[i] ^= 0xFF
    (tmp_path / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_checkpoint_is_on_the_disk_before_it_replaces_the_last(tiny_run, tmp_path, monkeypatch):
    """A training box switched off after a save must resume from the last checkpoint or the one
    before, never from an empty file that replaced a good one."""
    import torch

    from train.checkpoint import save_checkpoint

    done: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        done.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr("edge.durable.os.fsync", fsync)
    path = tmp_path / "checkpoint.pt"
    digest = save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    assert done == [str(path) + ".tmp", str(tmp_path)] and not (tmp_path / "checkpoint.pt.tmp").exists()
    loaded = load_checkpoint(path)
    assert loaded["meta"]["content_sha256"] == digest and torch.equal(loaded["model"]["w"], torch.ones(3))


def test_a_product_with_good_images_only_trains_calibrates_and_exports(synth_root, tmp_path):
    """No test folder yet: the line has not shown the product a defect. Training, the
    threshold and the model package need none."""
    category = tmp_path / "new_product"
    shutil.copytree(synth_root / "bracket" / "train" / "good", category / "train" / "good")
    run = tmp_path / "run"
    trained = run_vqad("train", category, "--out", run, "--steps", "5", *TINY_MODEL, *TINY_TRAIN)
    assert "no test folder" in trained.stderr
    run_vqad("eval", run, category, "--out", run / "eval", "--no-pictures")
    run_vqad("export", run, "--out", tmp_path / "model")
    package = json.loads((tmp_path / "model" / "model.json").read_text())
    assert package["threshold"]["value"] == json.loads((run / "threshold.json").read_text())["value"]


def test_resume_continues_the_run(synth_root, tmp_path):
    run = tmp_path / "run"
    run_vqad("train", synth_root / "weave", "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN)
    refused = run_vqad(
        "train", synth_root / "weave", "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN, check=False
    )
    assert refused.returncode != 0 and "--resume" in refused.stderr
    split = (run / "split.json").read_text()
    # The resumed run keeps its saved split, even under another split policy.
    another_split = ("--set", "train.val_fraction=0.45")
    resumed = ("--steps", "15", "--resume", *TINY_MODEL, *TINY_TRAIN, *another_split)
    warned = run_vqad("train", synth_root / "weave", "--out", run, *resumed)
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["step"] == 15
    assert (run / "split.json").read_text() == split
    assert "keeps the run's saved split; train.val_fraction changed" in warned.stderr
    # config.json keeps the train config that drew the split and records the resume's.
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["val_fraction"] != 0.45
    assert [(r["from_step"], r["train"]["val_fraction"]) for r in config["resumes"]] == [(10, 0.45)]
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert steps == [5, 10, 15]
    # A resume continues the run as it was saved: the flags it was trained with need not be
    # given again (the shipped model config was refused as "a different model config").
    run_vqad("train", synth_root / "weave", "--out", run, "--resume", "--steps", "20")
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert meta["step"] == 20 and meta["model_config"]["width"] == 8 and meta["train_config"]["batch_size"] == 8
    changed = run_vqad("train", synth_root / "weave", "--out", run, "--resume", "--set", "model.width=16", check=False)
    assert changed.returncode == 6 and "different model config (it has model.width=8)" in changed.stderr


def test_a_resume_names_the_images_added_since_its_split_and_refuses_one_gone(synth_root, tmp_path):
    """Good images added to the folder after the run's split were left out of a resume without a
    word; one removed stopped it with "cannot read image", which does not say why it was read."""
    import shutil

    category, run = tmp_path / "weave", tmp_path / "run"
    shutil.copytree(synth_root / "weave", category)
    run_vqad("train", category, "--out", run, "--steps", "5", *TINY_MODEL, *TINY_TRAIN)
    good = category / "train" / "good"
    shutil.copy(good / sorted(p.name for p in good.iterdir())[0], good / "added_later.png")
    resumed = run_vqad("train", category, "--out", run, "--steps", "6", "--resume")
    assert "1 good image(s) in" in resumed.stderr and "(e.g. added_later.png) and are left out" in resumed.stderr
    gone = Path(json.loads((run / "split.json").read_text())["train"][0])
    gone.unlink()
    refused = run_vqad("train", category, "--out", run, "--steps", "7", "--resume", check=False)
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert f"names 1 good image(s) that are gone (e.g. {gone})" in refused.stderr


def test_a_run_whose_data_folder_moved_is_evaluated_exported_and_calibrated_where_it_is_now(synth_root, tmp_path):
    """split.json names the images where training read them, and a folder given relative named
    them relative: a data folder moved since, a run taken to another machine or a command run
    from another directory stopped eval and export with every image unreadable. Eval's DATA
    and --data say where the folder is now; what training found of its training images is kept
    in the run, so that export and calibrate do not read them again."""
    from edge.frames import load_images
    from edge.health import training_stats
    from edge.recalibrate import fingerprints

    category, run, model = tmp_path / "weave", tmp_path / "run", tmp_path / "model"
    shutil.copytree(synth_root / "weave", category)
    run_vqad("train", os.path.relpath(category, ROOT), "--out", run, "--steps", "3", *TINY_MODEL, *TINY_TRAIN)
    split = json.loads((run / "split.json").read_text())
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in split["train"] + split["val"])
    kept = json.loads((run / "training_images.json").read_text())
    assert kept["fingerprints"] == fingerprints(split["train"])
    shapes: list = []
    images = load_images([Path(p) for p in split["train"]], load_run(run).model_cfg.input_format, shapes)
    assert kept["camera_health"] == json.loads(json.dumps(training_stats(images, shapes)))

    moved = tmp_path / "elsewhere" / "weave"
    shutil.move(category, moved)
    evaluated = run_vqad("eval", run, moved, "--out", tmp_path / "eval", "--no-pictures")
    n_val = len(split["val"])
    n = len(split["train"]) + n_val
    assert f"{n} of the run's {n} good images are gone from {category}: read from {moved}" in evaluated.stderr
    refused = run_vqad("export", run, "--out", model, check=False)
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert f"{n_val} of the run's {n_val} validation images are gone" in refused.stderr
    assert "(--data CAT)" in refused.stderr
    run_vqad("export", run, "--out", model, "--data", moved)
    meta = json.loads((model / "model.json").read_text())
    assert meta["source"]["training_images"] == kept["fingerprints"]
    assert meta["camera_health"] == kept["camera_health"]
    # The training images themselves are not needed: calibrate leaves them out by their
    # fingerprints and checks the good images against the kept figures.
    calibrated = run_vqad("calibrate", run, moved / "train" / "good")
    threshold = json.loads((run / "threshold.json").read_text())
    assert threshold["source"]["training_images_left_out"] == len(split["train"])
    assert threshold["n_val"] == n_val and threshold["health"] is not None
    assert "not checked against the line's camera health gate" not in calibrated.stderr
    package = run_vqad("calibrate", model, moved / "train" / "good", "--data", moved, check=False)
    assert package.returncode == 3 and "a model package: it needs no training data" in package.stderr
    resumed = run_vqad("train", moved, "--out", run, "--steps", "4", "--resume")
    assert f"read from {moved}" in resumed.stderr and "are gone" in resumed.stderr
    # The resumed run names its images where they are now: no DATA needed after it.
    assert json.loads((run / "split.json").read_text()) == {
        part: [str(moved / Path(p).relative_to(category)) for p in paths] for part, paths in split.items()
    }
    run_vqad("calibrate", run, moved / "train" / "good")  # for the weights the resume trained
    run_vqad("export", run, "--out", model, "--force")


def test_a_threshold_calibrated_for_weights_trained_further_is_not_exported(synth_root, tmp_path):
    """threshold.json outlived a resume: export packaged a threshold (and the drift alarm's
    reference scores) of the weights before it, and vqad eval kept one that vqad calibrate had
    set on the line's images. A threshold names its checkpoint now."""
    run, model = tmp_path / "run", tmp_path / "model"
    run_vqad("train", synth_root / "weave", "--out", run, "--steps", "3", *TINY_MODEL, *TINY_TRAIN)
    run_vqad("calibrate", run, synth_root / "weave" / "train" / "good")  # the validation images are new to it
    calibrated = json.loads((run / "threshold.json").read_text())
    assert calibrated["checkpoint_sha256"] == load_checkpoint(run / "checkpoint.pt")["meta"]["content_sha256"]
    kept = run_vqad("eval", run, synth_root / "weave", "--out", tmp_path / "eval", "--no-pictures")
    assert "keeping the threshold vqad calibrate set on" in kept.stderr
    run_vqad("train", synth_root / "weave", "--out", run, "--steps", "5", "--resume")
    refused = run_vqad("export", run, "--out", model, check=False)
    assert refused.returncode == 4 and "Traceback" not in refused.stderr, refused.stderr
    assert "threshold.json was calibrated for its weights before it was trained further" in refused.stderr
    again = run_vqad("eval", run, synth_root / "weave", "--out", tmp_path / "eval", "--no-pictures")
    assert "was for the run's weights before it was trained further" in again.stderr
    assert json.loads((run / "threshold.json").read_text())["source"]["by"] == "vqad eval"
    run_vqad("export", run, "--out", model)


def test_ctrl_c_saves_a_loadable_checkpoint_then_resume(synth_root, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vqad.cli",
            "train",
            str(synth_root / "bracket"),
            "--out",
            str(run),
            "--steps",
            "100000",
            *TINY_MODEL,
            *TINY_TRAIN,
            "--set",
            "train.checkpoint_every=100000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    csv_path = run / "metrics.csv"
    # Interrupt mid-training: once the first scalars are written, the loop is running.
    while time.monotonic() < deadline and not (csv_path.exists() and len(csv_path.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    # The same run started again (a --resume from another terminal) while it trains is refused.
    second = run_vqad("train", synth_root / "bracket", "--out", run, "--resume", *TINY_TRAIN, check=False)
    assert second.returncode == 2 and f"{run} is being trained by another vqad train (pid {proc.pid})" in second.stderr
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert meta["reason"] == "interrupted" and meta["step"] > 0
    stopped_at = meta["step"]
    # Its map was never calibrated: eval says so, export and calibrate refuse it.
    evaluated = run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval")
    assert (
        f"it stopped at step {stopped_at} of 100000 (interrupted) and its map was never calibrated" in evaluated.stderr
    )
    assert json.loads((run / "eval" / "metrics.json").read_text())["unfinished"].startswith("it stopped at step")
    assert "Unfinished: it stopped at step" in (run / "eval" / "report.html").read_text()
    for args in (("export", run, "--out", run / "model"), ("calibrate", run, synth_root / "bracket" / "test" / "good")):
        refused = run_vqad(*args, check=False)
        assert refused.returncode == 3 and f"{run} cannot be" in refused.stderr and "--resume" in refused.stderr
    assert not (run / "model").exists()
    run_vqad(
        "train",
        synth_root / "bracket",
        "--out",
        run,
        "--steps",
        str(stopped_at + 3),
        "--resume",
        *TINY_MODEL,
        *TINY_TRAIN,
        "--set",
        "train.checkpoint_every=100000",
    )
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["step"] == stopped_at + 3
    assert load_run(run).unfinished() is None


def test_a_training_stopped_by_sigterm_saves_its_checkpoint(synth_root, tmp_path):
    """`kill`, a job scheduler's or a container's stop: SIGTERM ends the training at a step's end
    with a checkpoint, as Ctrl-C does, not with the last periodic one (250 steps back at most)."""
    run = tmp_path / "run"
    args = ["train", synth_root / "bracket", "--out", run, "--steps", "100000", *TINY_MODEL, *TINY_TRAIN]
    proc = subprocess.Popen([*VQAD, *map(str, args)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "metrics.csv").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "saving a checkpoint" in err, err
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert meta["reason"] == "interrupted" and meta["step"] > 0


def test_bad_data_stops_before_anything_is_written(synth_root, tmp_path):
    import shutil

    cat = tmp_path / "cat"
    shutil.copytree(synth_root / "bracket", cat)
    (cat / "train" / "good" / "broken.png").write_bytes(b"not an image")
    proc = run_vqad("train", cat, "--out", tmp_path / "run", "--steps", "2", *TINY_MODEL, *TINY_TRAIN, check=False)
    assert proc.returncode != 0
    assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_distributed_training_on_two_cpu_processes(synth_root, tmp_path):
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "vqad.cli",
            "train",
            str(synth_root / "bracket"),
            "--out",
            str(run),
            "--steps",
            "6",
            *TINY_MODEL,
            *TINY_TRAIN,
            "--set",
            "train.log_every=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        # torchrun keeps its workers' logs in a folder of TMPDIR, which it leaves behind.
        env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert meta["step"] == 6
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6]  # only rank 0 writes


def test_fine_tuning_starts_from_another_runs_weights(tiny_run, synth_root, tmp_path):
    """vqad train --init-from RUN: a new run that starts where RUN ended (the codebook already
    initialised, the weights RUN's), calibrated afresh on its own data; another model is refused."""
    run = tmp_path / "tuned"
    # RUN's model config is the new run's: its flags need not be given again.
    proc = run_vqad("train", synth_root / "bracket", "--out", run, "--steps", "1", "--init-from", tiny_run, *TINY_TRAIN)
    assert "fine-tuning from" in proc.stderr
    before, after = load_run(tiny_run).model, load_run(run).model
    for name in ("head.out.weight", "vqvae.decoder.net.0.weight", "vqvae.encoder.net.0.weight"):
        a, b = before.state_dict()[name], after.state_dict()[name]
        assert (a - b).abs().max() < 0.05 * a.abs().max(), name  # one step from RUN, not from scratch
    # The codebook too: one EMA step moves most codes by a small share of their length (the
    # codes that went unused are restarted from the batch and move further).
    moved = (before.vqvae.quantizer.embed - after.vqvae.quantizer.embed).norm(dim=1)
    length = before.vqvae.quantizer.embed.norm(dim=1)
    assert float((moved < 0.05 * length).float().mean()) > 0.5
    assert bool(after.vqvae.quantizer.initted)
    other = [*TINY_MODEL, *TINY_TRAIN, "--set", "model.width=12"]
    bad = run_vqad(
        "train", synth_root / "bracket", "--out", tmp_path / "bad", "--steps", "1", "--init-from", tiny_run, *other,
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "another model (it has model.width=8)" in bad.stderr
    package = tmp_path / "package"  # an exported model holds no weights to train on
    package.mkdir()
    (package / "model.json").write_text(json.dumps({"source": {"run": str(tiny_run)}}))
    bad = run_vqad("train", synth_root / "bracket", "--out", tmp_path / "p", "--init-from", package, check=False)
    assert (
        bad.returncode == 3
        and f"is a model package, not a training run: give the run it was exported from ({tiny_run})" in bad.stderr
    )
    assert not (tmp_path / "p").exists()


def test_a_fine_tune_holds_out_none_of_the_images_its_source_was_trained_on(tiny_run, synth_root, tmp_path):
    """The fine-tune's data: the source's folder copied elsewhere, with two new good images. Its
    threshold is calibrated on images the source's weights never saw (they would score as
    learned), and what it says it was trained on (for vqad calibrate) includes the source's."""
    from edge.recalibrate import fingerprints

    data = tmp_path / "data"
    shutil.copytree(synth_root / "bracket", data)
    for new in sorted((data / "test" / "good").iterdir())[:2]:
        shutil.copy(new, data / "train" / "good" / f"new_{new.name}")
    source_split = json.loads((tiny_run / "split.json").read_text())
    learned = data / "train" / "good" / Path(source_split["train"][0]).name
    learned.rename(data / "test" / "good" / "learned.png")  # a test image the source's weights learned
    source = set(json.loads((tiny_run / "training_images.json").read_text())["fingerprints"])
    run = tmp_path / "tuned"
    proc = run_vqad("train", data, "--out", run, "--steps", "1", "--init-from", tiny_run, *TINY_TRAIN)
    assert "were trained on by the weights the fine-tune starts from: not held out" in proc.stderr
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 5 and not source & set(fingerprints(split["val"]))  # 5 held out before, 2 new
    kept = json.loads((run / "training_images.json").read_text())["fingerprints"]
    assert kept[: len(split["train"])] == fingerprints(split["train"]) and source <= set(kept)
    assert source <= set(load_run(run).training_fingerprints())  # what export and calibrate leave out
    lineage = load_run(run).meta["fine_tuned_from"]
    assert lineage == {"run": str(tiny_run.resolve()), "step": 200,
                       "checkpoint_sha256": load_run(tiny_run).meta["content_sha256"]}  # fmt: skip
    # The same command given again with --resume goes on from the run's own weights, not its source's.
    again = run_vqad("train", data, "--out", run, "--steps", "2", "--init-from", tiny_run, "--resume", *TINY_TRAIN)
    assert "--resume goes on from its own checkpoint" in again.stderr and "fine-tuning from" not in again.stderr
    after = load_run(run)
    assert after.meta["step"] == 2 and after.meta["fine_tuned_from"] == lineage
    other = run_vqad("train", data, "--out", run, "--init-from", run, "--resume", *TINY_TRAIN, check=False)
    assert (
        other.returncode == 2 and "it was fine-tuned from" in other.stderr and "Leave out --init-from" in other.stderr
    )
    run_vqad("eval", run, data, "--out", run / "eval")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert str(data / "test" / "good" / "learned.png") in metrics["left_out_copies"]
    assert metrics["fine_tuned_from"] == lineage
    assert f"(fine-tuned from {tiny_run.resolve()}, step 200)" in (run / "eval" / "report.html").read_text()
    run_vqad("export", run, "--out", tmp_path / "model")
    source_of = json.loads((tmp_path / "model" / "model.json").read_text())["source"]
    assert source_of["fine_tuned_from"] == lineage and source <= set(source_of["training_images"])


@pytest.mark.parametrize(("max_minutes", "expected"), [(60.0, "about 25 min"), (5.0, "near step 600 of 3000")])
def test_the_pace_says_how_long_the_steps_take_or_where_the_time_budget_ends(caplog, max_minutes, expected):
    from types import SimpleNamespace

    from train.config import TrainConfig
    from train.loop import log_pace

    # 20 steps in 10 s: 0.5 s a step, 2,980 left (about 25 min); 5 minutes end near step 600.
    session = SimpleNamespace(
        train_cfg=TrainConfig(steps=3000, max_minutes=max_minutes), step=20, start_step=0, elapsed_before=0.0,
        elapsed=lambda: 10.0,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="train.loop"):
        log_pace(session)
    (record,) = caplog.records
    assert expected in record.getMessage()
    assert record.levelno == (logging.INFO if max_minutes == 60.0 else logging.WARNING)


def test_without_a_terminal_training_logs_lines_not_a_bar(synth_root, tmp_path, caplog):
    """Under systemd, CI or `> train.log`, tqdm's bar redrew itself with carriage returns: one
    log line of megabytes. Without a terminal, a line a minute says the same."""
    from types import SimpleNamespace

    import torch

    from train.config import TrainConfig
    from train.loop import _progress_line

    proc = run_vqad(
        "train", synth_root / "bracket", "--out", tmp_path / "run", "--steps", "6", *TINY_MODEL, *TINY_TRAIN
    )
    assert "\r" not in proc.stderr and "step/s" not in proc.stderr  # a pipe: no bar
    losses = {"loss": torch.tensor(0.5), "l2": torch.tensor(0.01), "head": torch.tensor(0.3)}
    session = SimpleNamespace(
        train_cfg=TrainConfig(steps=3000), step=1200, start_step=0, t0=time.monotonic() - 600,
        category=Path("kolektor"), progress_at=0.0, elapsed=lambda: 600.0,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="train.loop"):
        _progress_line(session, losses)
    assert "train kolektor: step 1200 of 3000 (40%), 2.00 steps/s, about 15 min left; loss 0.5000" in caplog.text
    assert session.progress_at > 0
    # A 12-minute budget ends it first: 2 minutes left, not the 15 its steps would take.
    session.train_cfg = TrainConfig(steps=3000, max_minutes=12.0)
    with caplog.at_level(logging.INFO, logger="train.loop"):
        _progress_line(session, losses)
    assert "2.00 steps/s, about 2 min left (train.max_minutes ends it); loss" in caplog.text
    # A short training's time left is in seconds: "about 0 min" read as done.
    session.train_cfg, session.step, session.t0 = TrainConfig(steps=1300), 1220, time.monotonic() - 610
    with caplog.at_level(logging.INFO, logger="train.loop"):
        _progress_line(session, losses)
    assert "step 1220 of 1300 (94%), 2.00 steps/s, about 40 s left; loss" in caplog.text


def test_random_crops_cut_a_larger_input_and_leave_a_fitting_one_alone():
    from train.loop import random_crops

    images = np.arange(2 * 40 * 24 * 3, dtype=np.uint8).reshape(2, 40, 24, 3)
    rng = np.random.default_rng(0)
    crops = random_crops(images, rng, crop=16)
    assert crops.shape == (2, 16, 16, 3)
    for image, crop in zip(images, crops, strict=True):  # each crop is a window of its own image
        windows = np.lib.stride_tricks.sliding_window_view(image, (16, 16, 3))[..., 0, :, :, :]
        assert (windows == crop).all(axis=(-3, -2, -1)).any()
    state = rng.bit_generator.state
    assert random_crops(images, rng, crop=40) is images and rng.bit_generator.state == state


def test_an_input_larger_than_the_training_crop_trains_on_crops_and_scores_whole(synth_root, tmp_path, monkeypatch):
    """A 32 x 64 input with 16-pixel training crops: the steps see 16 x 16 windows, the
    calibration and the evaluation the whole input."""
    import train.loop
    from edge.config import load_config
    from train.config import ModelConfig, TrainConfig
    from train.evaluate import evaluate

    seen = []
    painter = train.loop.paint_anomalies
    monkeypatch.setattr(train.loop, "TRAIN_CROP", 16)
    monkeypatch.setattr(
        train.loop, "paint_anomalies", lambda batch, *a, **k: seen.append(batch.shape) or painter(batch, *a, **k)
    )
    model_cfg = load_config(
        ModelConfig,
        ROOT / "configs" / "model.yaml",
        {"image_size": [32, 64], "width": 8, "code_dim": 8, "codebook_size": 16, "head_width": 4},
    )
    train_cfg = load_config(TrainConfig, ROOT / "configs" / "train.yaml", {"steps": 3, "batch_size": 4})
    run = tmp_path / "run"
    train.loop.train(synth_root / "bracket", run, model_cfg, train_cfg, progress=False)
    assert seen == [(4, 16, 16, 3)] * 3
    metrics = evaluate(run, synth_root / "bracket", run / "eval", pictures=False)
    assert metrics["image_size"] == [32, 64] and 0.0 <= metrics["image_auroc"] <= 1.0


@pytest.mark.parametrize(
    "size,picture",
    [((32, 32), (256, 1024)), ((128, 128), (256, 1024)), ((320, 128), (320, 512)), ((64, 1024), (256, 1024))],
)
def test_a_reports_picture_is_as_large_as_it_needs_and_a_strip_stacks_its_tiles(size, picture):
    """A 64 x 1024 line-scan strip was enlarged 4 times in a row of four: a picture 16,384
    pixels wide, its labels over most of its height."""
    from train.evaluate import _panel

    h, w = size
    image = np.full((h, w, 3), 128, np.uint8)
    recon = np.full((h, w, 3), 0.5, np.float32).transpose(2, 0, 1)  # (3, H, W), as the model gives it
    panel = _panel(image, recon, np.zeros((h, w), np.float32), None, 0.5, 1.0)
    assert panel.shape == (*picture, 3)


def test_a_panel_rings_the_maps_peak_where_no_colour_shows_it():
    """A defect that passes scores far under the threshold, where the overlay has no colour: the
    panel rings the map's peak on the overlay and the ground truth, so the engineer sees whether
    the model looked at the defect. A peak on the scored region's edge is ringed there, not in
    the margin that repeats it."""
    from edge.overlay import map_peak
    from train.evaluate import _panel

    amap = np.zeros((32, 32), np.float32)
    amap[20, 10] = 0.2  # a fifth of the threshold
    assert map_peak(amap) == (20, 10)
    margin = np.zeros((28, 28), np.float32)
    margin[0, 27] = 1.0  # the peak at the scored region's top-right corner, repeated into a 2-px margin
    assert map_peak(np.pad(margin, 2, mode="edge")) == (2, 29)

    image = np.full((32, 32, 3), 128, np.uint8)
    recon = np.full((3, 32, 32), 0.5, np.float32)
    mask = np.zeros((32, 32), bool)
    mask[18:23, 8:13] = True
    panel = _panel(image, recon, amap, mask, 0.2, 1.0)  # four 256-px tiles in a row
    ring_row = panel[(20 * 8 + 4) - 11 : (20 * 8 + 4) + 12, :]  # the ring's span around the peak's row (8x)
    for tile in range(4):
        x = tile * 256 + 10 * 8 + 4  # the peak's column in this tile
        ringed = (ring_row[:, x - 12 : x + 13] > 230).all(axis=2).any()  # white
        assert ringed == (tile >= 2), tile  # the overlay and the ground truth; not input or reconstruction
    flat = _panel(image, recon, np.zeros((32, 32), np.float32), mask, 0.0, 1.0)
    assert not (flat > 230).all(axis=2)[40:, :].any()  # a flat map: no ring (the labels are at the top)


def test_a_defects_peak_on_it_or_elsewhere_is_counted_by_whether_it_passes():
    """Of the defects that pass, those whose map peaks on the defect are a threshold question,
    the others a defect the model does not see; a caught defect peaking elsewhere was rejected
    for something else. A peak beside a thin defect's mask, within PEAK_ON_DEFECT_PX, is on it."""
    from train.data import TestSample
    from train.evaluate import PEAK_ON_DEFECT_PX, defect_peaks

    def sample(label, mask_at=None):
        mask = None
        if mask_at is not None:
            mask = np.zeros((32, 32), bool)
            mask[mask_at, 10:20] = True  # a crack a pixel wide, along row mask_at
        kind = "crack" if label else "good"
        return TestSample(Path("x.png"), kind, "x", np.zeros((32, 32, 3), np.uint8), mask, label)

    def peaking_at(y, x):
        amap = np.zeros((32, 32), np.float32)
        amap[y, x] = 1.0
        return amap

    test = [
        sample(0),  # a good image: not counted
        sample(1, 12),  # passes, peak on the crack
        sample(1, 12 - PEAK_ON_DEFECT_PX),  # passes, peak beside it: on it
        sample(1, 2),  # passes, peak far from it
        sample(1, 20),  # caught, peak elsewhere
        sample(1),  # no mask
    ]
    maps = np.stack([peaking_at(12, 15)] * 6)
    decisions = np.array([False, False, False, False, True, True])
    assert defect_peaks(test, maps, decisions) == {
        "passed": {"on_defect": 2, "elsewhere": 1},
        "caught": {"on_defect": 0, "elsewhere": 1},
        "without_mask": 1,
        "within_px": PEAK_ON_DEFECT_PX,
    }


def test_test_images_that_are_copies_of_the_runs_own_are_left_out_of_the_figures(tiny_run, synth_root, tmp_path):
    """A good test image saved twice, once among the training images, is not a new part: eval
    leaves it out and says so. A defect copied among the training images stays, with a warning."""
    category = tmp_path / "line"
    shutil.copytree(synth_root / "bracket" / "test", category / "test")
    split = json.loads((tiny_run / "split.json").read_text())
    n_good = len(list((category / "test" / "good").iterdir()))
    n_defect = sum(len(list(k.iterdir())) for k in (category / "test").iterdir() if k.name != "good")
    shutil.copy(split["train"][0], category / "test" / "good" / "trained_on.png")
    shutil.copy(split["val"][0], category / "test" / "good" / "calibrated_on.png")
    shutil.copy(split["train"][1], category / "test" / "scratch" / "a_training_image.png")
    proc = run_vqad("eval", tiny_run, category, "--out", tmp_path / "eval", "--no-pictures")
    metrics = _strict_json(tmp_path / "eval" / "metrics.json")
    assert (metrics["n_good"], metrics["n_defect"]) == (n_good, n_defect + 1)
    assert metrics["n_left_out_copies"] == 2
    assert sorted(Path(p).name for p in metrics["left_out_copies"]) == ["calibrated_on.png", "trained_on.png"]
    assert (
        "2 good test images are copies of the images the run's weights were trained on or its threshold" in proc.stderr
    )
    assert "1 defect test image is a copy of the run's good training images" in proc.stderr
    page = html.unescape((tmp_path / "eval" / "report.html").read_text())
    assert "(2 more left out: copies of the run's own good images)" in page


def test_a_set_of_one_defect_kind_is_not_broken_down_by_kind():
    """KolektorSDD's defects are one kind: its row by kind would repeat the whole's figure."""
    from train.report_page import _at_threshold_rows, _ranking_rows

    labels, decisions = np.array([0, 0, 1, 1]), np.array([False, True, True, False])
    metrics = {"threshold": 1.0, "threshold_calibration": {}, "false_reject_rate": 0.5, "miss_rate": 0.5,
               "miss_rate_at_1pct_frr": 0.5,
               "miss_rate_at_5pct_frr": 0.5, "image_auroc": 0.5, "pixel_auroc": None, "aupro": None,
               "per_kind_misses": {"crack": {"passed": 1, "of": 2, "rate": 0.5}},
               "per_kind_image_auroc": {"crack": 0.5}}  # fmt: skip
    shown = [name for name, _ in _at_threshold_rows(metrics, labels, decisions) + _ranking_rows(metrics, labels)]
    assert "defects that pass" in shown and "image AUROC" in shown and not any("crack" in name for name in shown)
    metrics["per_kind_misses"]["pit"] = {"passed": 0, "of": 1, "rate": 0.0}
    metrics["per_kind_image_auroc"]["pit"] = 1.0
    shown = [name for name, _ in _at_threshold_rows(metrics, labels, decisions) + _ranking_rows(metrics, labels)]
    assert {"crack that pass", "pit that pass", "image AUROC, crack against good"} <= set(shown)


def test_crops_corrupted_in_code_space_are_the_vqvaes_repair_target_and_leave_the_heads_loss(
    synth_root, tmp_path, monkeypatch
):
    """Every unpainted crop corrupted in code space (REPAIR_SHARE 1) once the codebook is
    initialised: the VQ-VAE sees the corrupted crop and the head's loss only the others."""
    import train.anomalies
    import train.loop
    from edge.config import load_config
    from train.anomalies import MIN_CHANGE
    from train.config import ModelConfig, TrainConfig

    head_batches, moved_per_step, batches = [], [], []
    loss, paste, picker = train.loop.head_loss, train.loop.paste_repair, train.anomalies.pick_for_repair
    painter = train.loop.paint_anomalies

    def painted(batch, *args):
        corrupted, masks = painter(batch, *args)
        batches.append((batch, corrupted, masks))  # corrupted is what the VQ-VAE is given
        return corrupted, masks

    def pasted(*args):
        out, moved = paste(*args)
        moved_per_step[-1] += moved
        return out, moved

    def pick(masks, rng):
        moved_per_step.append(0)
        return picker(masks, rng, share=1.0)

    monkeypatch.setattr(
        train.loop, "head_loss", lambda logits, target: head_batches.append(len(logits)) or loss(logits, target)
    )
    monkeypatch.setattr(train.loop, "paste_repair", pasted)
    monkeypatch.setattr(train.loop, "pick_for_repair", pick)
    monkeypatch.setattr(train.loop, "paint_anomalies", painted)
    model_cfg = load_config(
        ModelConfig,
        ROOT / "configs" / "model.yaml",
        {"image_size": 32, "width": 8, "code_dim": 8, "codebook_size": 16, "head_width": 4},
    )
    train_cfg = load_config(TrainConfig, ROOT / "configs" / "train.yaml", {"steps": 4, "batch_size": 8})
    train.loop.train(synth_root / "bracket", tmp_path / "run", model_cfg, train_cfg, progress=False)
    assert len(moved_per_step) == 3  # steps 2-4: step 1 initialises the codebook
    assert sum(moved_per_step) > 0
    assert head_batches[1:] == [8 - moved for moved in moved_per_step if moved < 8]
    for (batch, corrupted, masks), moved_count in zip(batches[1:], moved_per_step, strict=True):
        unpainted = ~masks.reshape(8, -1).any(axis=1)
        moved = np.abs(corrupted - batch / 255.0).max(axis=(1, 2, 3)) >= MIN_CHANGE
        assert moved[unpainted].sum() == moved_count  # the VQ-VAE is given the corrupted crops
