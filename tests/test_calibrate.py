"""`vqad calibrate`: a run's or a model package's threshold from new good images, with its
provenance, without retraining; a package keeps its ONNX files and parity proof."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.package import load_package, sha256_file
from tests.conftest import run_vqad


def _close(a: object, b: object) -> bool:
    """Equal, floats to 1e-5: a plan measured again on the same images may differ in its last
    bits (a gain moved by 2e-7 of itself on a 2-core AVX2 CPU, where oneDNN sums in another order)."""
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and _close(dataclasses.astuple(a), dataclasses.astuple(b))
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float):
        return isinstance(b, float) and math.isclose(a, b, rel_tol=1e-5)
    return a == b


def test_calibrating_a_model_package_rewrites_only_its_threshold(tiny_model, synth_root, tmp_path, line_good):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    before = load_package(model)
    good = line_good
    proc = run_vqad("calibrate", model, good, "--target-frr", "0.05")
    after = load_package(model)
    t = after.meta["threshold"]
    assert t["source"] == {"by": "vqad calibrate", "folder": str(good.resolve()), "n_images": 16}
    assert t["n_val"] == 16 and t["quantile"] == 0.95 and t["calibrated"] and t["frr_upper_bound_95"] > 0
    assert "95% confidence" in t["frr_bound_note"] and "with 16 good images" in proc.stdout
    assert after.meta["threshold_history"][-1]["value"] == before.threshold
    # The graphs are untouched: same files, same hashes, same parity proof; decisions re-measured.
    for name in ("model.onnx", "model_fp16.onnx"):
        assert sha256_file(model / name) == before.meta["files"][name] == after.meta["files"][name]
    assert after.meta["parity"] == before.meta["parity"]
    assert t["parity"]["fp16_vs_fp32_decision_agreement"] >= 0.99 and "unchanged" in t["parity"]["note"]
    # The map bytes keep their meaning relative to the threshold.
    assert np.isclose(after.map_scale / after.threshold, before.map_scale / before.threshold)


def test_good_images_unlike_the_models_are_refused_unless_forced(tiny_model, tiny_run, synth_root, tmp_path, line_good):
    """Another product's images (weave for a bracket model) as the line's good ones: the line's
    camera health gate would call each unfit, so they are refused, and nothing is written.
    Forced, they are calibrated on; every one scores over the threshold they replace, which is
    warned of and kept in the provenance."""
    model, run = tmp_path / "model", tmp_path / "run"
    shutil.copytree(tiny_model, model)
    shutil.copytree(tiny_run, run)
    weave = synth_root / "weave" / "train" / "good"
    for target, kept in ((model, "model.json"), (run, "threshold.json")):
        before = (target / kept).read_text()
        proc = run_vqad("calibrate", target, weave, check=False)
        assert proc.returncode == 3 and "16 of 16 good images would be unfit on the line" in proc.stderr
        assert "--force" in proc.stderr and (target / kept).read_text() == before
        proc = run_vqad("calibrate", target, weave, "--force")
        assert "score over the threshold they replace" in proc.stderr
    threshold = load_package(model).meta["threshold"]
    assert threshold["health"]["unfit"] == 16
    check = threshold["against_previous"]
    assert check["share_over_previous"] >= 0.2 and "this product's" in check["warning"]
    assert json.loads((run / "threshold.json").read_text())["health"]["unfit"] == 16
    shutil.rmtree(model)
    shutil.copytree(tiny_model, model)
    same = run_vqad("calibrate", model, line_good)
    assert "threshold they replace" not in same.stderr
    assert load_package(model).meta["threshold"]["against_previous"]["share_over_previous"] < 0.2


def test_a_threshold_raised_many_times_over_is_refused_unless_forced(tiny_model, tmp_path):
    """A package without the health gate's figures (exported before them) cannot tell another
    product's images by the gate (here noise); the threshold they would set, many times the one
    it replaces, is refused all the same."""
    from edge.threshold import RAISED_REFUSED

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "model.json").read_text())
    del meta["camera_health"]
    (model / "model.json").write_text(json.dumps(meta))
    before = (model / "model.json").read_text()
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(noise / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    proc = run_vqad("calibrate", model, noise, check=False)
    assert proc.returncode == 3 and "times the one it replaces" in proc.stderr, proc.stderr
    assert (model / "model.json").read_text() == before
    run_vqad("calibrate", model, noise, "--force")
    assert load_package(model).meta["threshold"]["against_previous"]["ratio"] >= RAISED_REFUSED


def test_the_package_is_calibrated_without_torch(tiny_model, synth_root, tmp_path, line_good):
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.edge_helpers import BLOCKED_LAUNCH  # as on a Jetson: no torch, no train/

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    good = line_good
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_LAUNCH, "calibrate", str(model), str(good)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_package(model).meta["threshold"]["source"]["n_images"] == 16


def test_calibrating_a_run_is_kept_by_eval_and_exported(tiny_run, synth_root, tmp_path, line_good):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    good = line_good
    run_vqad("calibrate", run, good)
    saved = json.loads((run / "threshold.json").read_text())
    assert saved["source"]["by"] == "vqad calibrate" and saved["n_val"] == 16
    assert saved["previous"]["source"]["by"] == "vqad eval"
    run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval2")
    metrics = json.loads((run / "eval2" / "metrics.json").read_text())
    assert metrics["threshold"] == saved["value"]  # eval keeps the line's threshold
    # Its calibration panels are the line's images that set that threshold.
    named = [Path(h["image"]) for h in saved["highest_images"]]
    assert named and all(p.parent.resolve() == good.resolve() for p in named)
    panels = {p.name for p in (run / "eval2" / "images").glob("calibration_*.png")}
    assert panels == {f"calibration_{rank}_{p.stem}.png" for rank, p in enumerate(named, start=1)}
    for key in ("miss_rate_at_1pct_frr", "miss_rate_at_5pct_frr", "threshold_margin_over_val_max"):
        assert key in metrics
    run_vqad("export", run, "--out", tmp_path / "model")
    assert load_package(tmp_path / "model").threshold == saved["value"]


def test_calibrating_with_confirmed_defects_reports_those_that_would_pass(tiny_model, synth_root, tmp_path, line_good):
    from edge.recalibrate import good_frames, graph_scores

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    previous = load_package(model).threshold
    defects = synth_root / "bracket" / "test"  # test/<kind>, as vqad records --export-reviewed writes, and test/good
    good = line_good
    proc = run_vqad("calibrate", model, good, "--defects", defects)
    t = load_package(model).meta["threshold"]
    d = t["defects"]
    pkg = load_package(model)
    frames, paths = good_frames(defects, pkg.input_format)
    kept = np.array([p.parent.name != "good" for p in paths])  # test/good is not a defect
    frames, paths = frames[kept], [p for p, k in zip(paths, kept, strict=True) if k]
    scores = graph_scores(model / "model.onnx", frames)  # the line's own graph, scored here independently
    assert d["source"] == {"folder": str(defects.resolve()), "n_images": len(paths)} and d["n_images"] == len(paths)
    assert d["missed"] == int((scores < t["value"]).sum()) and d["miss_rate"] == d["missed"] / len(paths)
    assert d["at_previous_threshold"] == {
        "value": previous,
        "missed": int((scores < previous).sum()),
        "miss_rate": float((scores < previous).mean()),
    }
    assert d["miss_rate"] <= d["miss_rate_upper_bound_95"] < 1.0
    lowest = sorted(scores)[: min(d["missed"], 5)]
    assert [m["score"] for m in d["lowest_missed"]] == [round(float(s), 6) for s in lowest]
    assert f"{d['missed']} of {len(paths)} score under the threshold" in proc.stdout
    # The trade --target-frr makes: each target's threshold on these good images, and how many
    # of the confirmed defects it lets pass.
    trade, good_scores = d["target_frr_choices"], np.array(t["scores"])
    assert [c["target_frr"] for c in trade] == [0.01, 0.02, 0.03, 0.05]
    for c in trade:
        at = np.quantile(good_scores, 1 - c["target_frr"], method="higher")
        assert c["threshold"] == pytest.approx(at * 1.01, rel=1e-5) and c["false_reject_rate"] is None
        assert c["miss_rate"] == pytest.approx((scores < c["threshold"]).mean())
    assert trade[0]["threshold"] == pytest.approx(t["value"]) and t["target_frr"] == 0.01  # the package's own
    said = f"1% lets {d['missed']} pass ({t['value']:.5g})"
    assert f"--target-frr, its threshold set on these good images: {said}" in proc.stdout, proc.stdout
    assert ('"When too many defects pass"' in proc.stdout) == (d["missed"] > 0), proc.stdout
    # The defects given as good images are refused, as a test set is: a threshold over them
    # would pass them.
    for given in (defects, defects.parent):
        proc = run_vqad("calibrate", model, given, "--defects", defects, check=False)
        assert proc.returncode == 3 and f"{defects} holds foreign/, hole/" in proc.stderr, proc.stderr
    inside = tmp_path / "line_good_and_a_defect"
    shutil.copytree(good, inside)
    shutil.copy(paths[0], inside / "copied.png")
    proc = run_vqad("calibrate", model, inside, "--defects", defects, check=False)
    assert proc.returncode == 3 and "good images under" in proc.stderr and "copied.png" in proc.stderr
    assert "is a confirmed defect under" in proc.stderr
    assert load_package(model).meta["threshold"] == t
    # A threshold above every defect lets them all pass, and says which: the same pixels in
    # other files (PNGs written again) are no copies, and set one (forced: it may be many times
    # the one it replaces).
    rewritten = tmp_path / "rewritten"
    rewritten.mkdir()
    for i, path in enumerate(paths):
        cv2.imwrite(str(rewritten / f"{i:03d}.png"), cv2.imread(str(path)), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    proc = run_vqad("calibrate", model, rewritten, "--defects", defects, "--target-frr", "0.01", "--force")
    d = load_package(model).meta["threshold"]["defects"]
    assert d["missed"] == len(paths) and len(d["lowest_missed"]) == min(len(paths), 5)
    assert "lowest: " in proc.stdout and "would pass" in proc.stderr
    assert 'what to do for each kind of miss: docs/new-product.md, "When too many defects pass"' in proc.stdout


def test_calibrating_a_run_with_confirmed_defects(tiny_run, synth_root, tmp_path, line_good):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    defects = synth_root / "bracket" / "test"
    kinds = [p for p in defects.iterdir() if p.name != "good"]
    run_vqad("calibrate", run, line_good, "--defects", kinds[0])
    d = json.loads((run / "threshold.json").read_text())["defects"]
    assert d["n_images"] == len(list(kinds[0].glob("*.png"))) and "at_previous_threshold" in d
    assert [c["target_frr"] for c in d["target_frr_choices"]] == [0.01, 0.02, 0.03, 0.05]


def test_the_models_own_training_images_are_left_out_of_a_calibration(tiny_model, tiny_run, synth_root, tmp_path):
    """The training folder given as the line's good images: a model scores the images it learned
    from low, and a threshold on them would reject good parts on the line. Those images are
    left out by their fingerprint (model.json's, or the run's split), said and kept in the
    provenance; with nothing else left, refused."""
    trained = json.loads((tiny_run / "split.json").read_text())["train"]
    folder = synth_root / "bracket" / "train" / "good"
    found = len(list(folder.glob("*.png")))
    model, run = tmp_path / "model", tmp_path / "run"
    shutil.copytree(tiny_model, model)
    shutil.copytree(tiny_run, run)
    assert len(load_package(model).meta["source"]["training_images"]) == len(trained) < found
    for target, saved in ((model, lambda: load_package(model).meta["threshold"]),
                          (run, lambda: json.loads((run / "threshold.json").read_text()))):  # fmt: skip
        proc = run_vqad("calibrate", target, folder)
        assert f"{len(trained)} of {found} good images trained the model and are left out" in proc.stderr
        assert f"{found - len(trained)} good images under {folder}, {len(trained)} the model trained on left out" in (
            proc.stdout
        )
        source = saved()["source"]
        assert (source["n_images"], source["training_images_left_out"]) == (found - len(trained), len(trained))
    only = tmp_path / "only_trained"
    only.mkdir()
    for path in trained:
        shutil.copy(path, only / f"copy_{Path(path).name}")  # a copy is the same image
    before = (model / "model.json").read_text()
    proc = run_vqad("calibrate", model, only, check=False)
    assert proc.returncode == 3 and "good images the model did not train on" in proc.stderr, proc.stderr
    assert f"({len(trained)} more trained it)" in proc.stderr and (model / "model.json").read_text() == before


def test_a_good_image_saved_many_times_is_calibrated_on_once(tiny_model, tmp_path, line_good):
    """A line stopped under the camera saves one good part five more times: it counts once, so the
    threshold's quantile and its false-reject bound rest on the images that are different."""
    good = tmp_path / "good"
    shutil.copytree(line_good, good)
    first = sorted(good.iterdir())[0]
    for i in range(5):
        shutil.copy(first, good / f"again_{i}.png")
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    proc = run_vqad("calibrate", model, good)
    n = len(list(line_good.iterdir()))
    assert f"5 of {n + 5} good images are copies of another" in proc.stderr
    assert f"{n} good images under {good}, 5 copies of others left out" in proc.stdout
    source = load_package(model).meta["threshold"]["source"]
    assert (source["n_images"], source["copies_left_out"]) == (n, 5)


def test_one_copy_is_said_in_the_singular(tmp_path, caplog):
    from edge.recalibrate import distinct_images

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path, body in zip(paths, (b"a", b"b", b"a"), strict=True):
        path.write_bytes(body)
    with caplog.at_level("WARNING"):
        assert distinct_images(paths) == paths[:2]
    assert "1 of 3 good images is a copy of another" in caplog.text


def test_calibrate_refuses_what_it_cannot_use(tiny_model, synth_root, tmp_path, line_good):
    proc = run_vqad("calibrate", tmp_path, tmp_path, check=False)
    assert proc.returncode != 0 and "neither a run" in proc.stderr
    (tmp_path / "one").mkdir()
    proc = run_vqad("calibrate", tiny_model, tmp_path / "one", check=False)
    assert proc.returncode != 0 and "at least 2 good images" in proc.stderr
    proc = run_vqad("calibrate", tiny_model, tmp_path / "mistyped", check=False)
    assert proc.returncode == 3 and "no such folder" in proc.stderr
    proc = run_vqad("calibrate", tiny_model, tmp_path, "--target-frr", "0.7", check=False)
    assert proc.returncode == 2 and "--target-frr" in proc.stderr
    before = (tiny_model / "model.json").read_text()
    good = line_good
    proc = run_vqad("calibrate", tiny_model, good, "--defects", tmp_path / "one", check=False)
    assert proc.returncode != 0 and "at least 1 defect image" in proc.stderr
    assert (tiny_model / "model.json").read_text() == before  # nothing written


def test_a_package_on_a_read_only_mount_is_refused_before_its_images_are_scored(tmp_path, monkeypatch):
    """The new threshold goes into the package's model.json: on a read-only mount (an image-based
    update of an edge box), the calibration scored every image (minutes there) and then failed
    to write it. The refusal comes first now, naming the folder and what to do."""
    import errno
    import types

    from edge import durable
    from vqad.commands import model as model_commands

    def read_only(*args, **kwargs):  # what creating a file on a read-only mount raises
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(durable, "tempfile", types.SimpleNamespace(TemporaryFile=read_only))
    with pytest.raises(OSError) as refused:
        model_commands._writable_before_scoring(tmp_path)
    assert refused.value.filename == str(tmp_path)
    assert refused.value.strerror.startswith("the new threshold is written there, and it is read-only: calibrate")
    monkeypatch.undo()
    model_commands._writable_before_scoring(tmp_path)  # a writable folder passes


def test_choosing_the_map_scale_from_confirmed_defects(tiny_run, synth_root, tmp_path, line_good):
    from train.recalibrate import SCALES
    from train.run import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    good, defects = line_good, synth_root / "bracket" / "test"
    before = load_run(run)
    proc = run_vqad("calibrate", run, good, "--defects", defects, "--choose-scale")
    t = json.loads((run / "threshold.json").read_text())
    choice = t["scale"]
    assert [r["scale"] for r in choice["compared"]] == list(SCALES) and choice["before"] == 1.0
    fewest = min(r["missed"] for r in choice["compared"])
    first_fewest = next(r for r in choice["compared"] if r["missed"] == fewest)  # a tie keeps the coarser
    assert choice["chosen"] == first_fewest["scale"] and t["defects"]["missed"] == fewest
    assert t["value"] == first_fewest["threshold"] and f"map scale {choice['chosen']:g}" in proc.stdout
    # The checkpoint holds the chosen map: its config, its plan's smoothing, and the weights untouched.
    after = load_run(run)
    assert after.model_cfg.score.scale == choice["chosen"] and after.meta["scale_choice"]["chosen"] == choice["chosen"]
    head = lambda r: dict((n, p) for n, _, p in r.model.scorer.plan.terms)["head"].sigma  # noqa: E731
    assert head(after) == head(before) * choice["chosen"]
    # The fused maps follow at the config's factors of the chosen scale.
    factors = (1.0, *after.model_cfg.score.fuse_scales)
    assert len(factors) > 1 and after.model_cfg.score.fuse_scales == before.model_cfg.score.fuse_scales
    assert [m.scale for m in after.model.scorer.maps()] == pytest.approx([choice["chosen"] * f for f in factors])
    state_a, state_b = before.model.state_dict(), after.model.state_dict()
    assert all((state_a[k] == state_b[k]).all() for k in state_a if not k.startswith("scorer."))
    assert json.loads((run / "config.json").read_text())["model"]["score"]["scale"] == choice["chosen"]
    # The package exported afterwards is built from it (export proves its graph against this scorer).
    run_vqad("export", run, "--out", tmp_path / "model")
    pkg = load_package(tmp_path / "model")
    assert pkg.threshold == t["value"]
    assert pkg.meta["model_config"]["score"]["scale"] == choice["chosen"]
    assert pkg.meta["scoring"]["rebuilt"]["scale_choice"]["chosen"] == choice["chosen"]  # its provenance
    run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval2", "--no-pictures")
    metrics = json.loads((run / "eval2" / "metrics.json").read_text())
    assert metrics["score_scale"] == choice["chosen"] and metrics["score_fuse_scales"] == list(factors[1:])


def test_a_scale_is_chosen_on_a_run_with_defects_only(tiny_model, tiny_run, synth_root, line_good):
    good, defects = line_good, synth_root / "bracket" / "test"
    proc = run_vqad("calibrate", tiny_run, good, "--choose-scale", check=False)
    assert proc.returncode != 0 and "--choose-scale needs confirmed defects" in proc.stderr
    before = (tiny_model / "model.json").read_text()
    proc = run_vqad("calibrate", tiny_model, good, "--defects", defects, "--choose-scale", check=False)
    assert proc.returncode != 0 and "another map scale is another graph" in proc.stderr
    assert (tiny_model / "model.json").read_text() == before


def test_fusing_a_runs_maps_without_retraining(tiny_run, tiny_model, synth_root, tmp_path, line_good):
    from train.data import load_images
    from train.pipeline import score_frames
    from train.run import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    good, defects = line_good, synth_root / "bracket" / "test"
    before = load_run(run)
    assert len(before.model.scorer.maps()) == 2  # trained under the shipped fused map
    frames = load_images(sorted(defects.rglob("*.png")), before.model_cfg.input_format)
    # No factors: one map, the run's coarse map alone, recalibrated to the very plan it had.
    proc = run_vqad("calibrate", run, good, "--defects", defects, "--fuse-scales")
    one = load_run(run)
    assert one.model_cfg.score.fuse_scales == () and one.model.scorer.maps() == [one.model.scorer]
    assert _close(one.model.scorer.plan.terms, before.model.scorer.plan.terms)
    coarse = before.model.scorer
    coarse.finer = torch.nn.ModuleList()
    assert np.allclose(score_frames(one.model, frames)[2], score_frames(before.model, frames)[2], rtol=1e-5)
    t = json.loads((run / "threshold.json").read_text())
    assert t["fused"]["fuse_scales"] == [] and t["fused"]["before"] == [0.7]
    assert "at_previous_threshold" not in t["defects"]  # another map: the old threshold says nothing of it
    assert "fused map scales none (one map)" in proc.stdout
    # Fused again at another factor: the checkpoint and the run's config record follow; weights untouched.
    run_vqad("calibrate", run, good, "--fuse-scales", "0.5")
    fused = load_run(run)
    assert [m.scale for m in fused.model.scorer.maps()] == [1.0, 0.5] and fused.meta["fuse_choice"]["before"] == []
    assert json.loads((run / "config.json").read_text())["model"]["score"]["fuse_scales"] == [0.5]
    state_a, state_b = before.model.state_dict(), fused.model.state_dict()
    assert all((state_a[k] == state_b[k]).all() for k in state_a if not k.startswith("scorer."))
    run_vqad("eval", run, synth_root / "bracket", "--out", run / "eval2", "--no-pictures")
    assert json.loads((run / "eval2" / "metrics.json").read_text())["score_fuse_scales"] == [0.5]
    # A factor the config refuses, and a package, whose map is its graph, are refused; nothing written.
    proc = run_vqad("calibrate", run, good, "--fuse-scales", "1.5", check=False)
    assert proc.returncode == 2 and "score.fuse_scales" in proc.stderr
    assert load_run(run).model_cfg.score.fuse_scales == (0.5,)
    proc = run_vqad("calibrate", tiny_model, good, "--fuse-scales", "0.5", check=False)
    assert proc.returncode != 0 and "--fuse-scales" in proc.stderr


def test_the_calibration_is_drawn_beside_the_threshold(tiny_model, synth_root, tmp_path, line_good):
    """TARGET/calibration.png: the good scores, the confirmed defects' and both thresholds; a
    picture that cannot be written is warned of, and the threshold stands."""
    import cv2

    from edge.histogram import CHOICE, DEFECT, GOOD, HEIGHT, WIDTH

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    good, defects = line_good, synth_root / "bracket" / "test"
    proc = run_vqad("calibrate", model, good, "--defects", defects)
    assert f"picture: {model / 'calibration.png'}" in proc.stdout
    t = load_package(model).meta["threshold"]
    assert len(t["defects"]["scores"]) == t["defects"]["n_images"] and min(t["defects"]["scores"]) == pytest.approx(
        t["defects"]["score_min"], abs=1e-6
    )
    picture = cv2.imread(str(model / "calibration.png"))
    assert picture.shape == (HEIGHT, WIDTH, 3)

    def shows(colour) -> bool:  # bars are blended 60/40 over white
        tint = np.array([0.6 * c + 0.4 * 255 for c in colour])
        return bool((np.abs(picture.astype(float) - tint).max(axis=2) < 3).any())

    assert shows(GOOD) and shows(DEFECT)
    # The other --target-frr choices dashed where their thresholds differ from this one.
    other = [c for c in t["defects"]["target_frr_choices"] if abs(c["threshold"] - t["value"]) > 1e-9]
    assert bool((picture == CHOICE).all(axis=2).any()) == bool(other), other
    assert load_package(model).threshold == t["value"]
    elsewhere = tmp_path / "pictures" / "line.png"
    elsewhere.parent.mkdir()
    proc = run_vqad("calibrate", model, good, "--picture", elsewhere)
    assert elsewhere.is_file() and f"picture: {elsewhere}" in proc.stdout
    made = tmp_path / "missing" / "x.png"  # its folder made, as eval's --out is
    proc = run_vqad("calibrate", model, good, "--picture", made)
    assert made.is_file() and f"picture: {made}" in proc.stdout
    full = tmp_path / "full.png"  # a disk that refuses the write after the scoring: warned of
    full.symlink_to("/dev/full")
    proc = run_vqad("calibrate", model, good, "--picture", full)
    assert "its picture could not be written" in proc.stderr and "picture:" not in proc.stdout
    assert load_package(model).meta["threshold"]["calibrated"]
    before = load_package(model).meta["threshold"]
    refused = run_vqad("calibrate", model, good, "--picture", "/proc/sub/x.png", check=False)
    assert refused.returncode == 7 and "cannot use /proc/sub/x.png: /proc cannot be written (" in refused.stderr
    assert load_package(model).meta["threshold"] == before  # refused before the scoring
    refused = run_vqad("calibrate", model, good, "--picture", tmp_path / "line.txt", check=False)
    assert refused.returncode == 2 and "--picture is an image file (png, jpg" in refused.stderr  # before scoring
    assert load_package(model).meta["threshold"] == before


def test_the_histogram_draws_each_threshold_where_its_score_is():
    from edge.histogram import LEFT, PREVIOUS, RIGHT, THRESHOLD, TOP, WIDTH, score_histogram

    good = np.linspace(0.0, 1.0, 50)
    picture = score_histogram(good, threshold=2.0, previous=1.0)  # the axis spans 0 to 2.1
    x_of = lambda s: round(LEFT + s / 2.1 * (WIDTH - RIGHT - LEFT))  # noqa: E731
    row = TOP + 40
    assert (picture[row, x_of(2.0)] == THRESHOLD).all() and (picture[row, x_of(1.0)] == PREVIOUS).all()
    assert (score_histogram(good, threshold=2.0)[row, x_of(1.0)] == 255).all()  # no previous: no line
    # A defect at 500 times the threshold does not squeeze the threshold into a corner: the
    # axis ends at 3 times it (+5%), and the defect is counted in the last bin.
    far = score_histogram(good, threshold=2.0, defects=[1000.0])
    x_far = round(LEFT + 2.0 / 6.3 * (WIDTH - RIGHT - LEFT))
    assert (far[row, x_far] == THRESHOLD).all()


def test_the_histogram_draws_each_target_frr_choice_dashed_with_labels_that_never_meet(monkeypatch):
    """Where the thresholds of the other --target-frr choices fall among the scores: a dashed line
    each, labelled with its target; one equal to the threshold (the fused maps often give 1% and
    2% one) is the threshold's own line; three close together keep their labels apart."""
    import cv2

    from edge import histogram

    good = np.linspace(0.0, 1.0, 50)
    x_of = lambda s: round(histogram.LEFT + s / 2.1 * (histogram.WIDTH - histogram.RIGHT - histogram.LEFT))  # noqa: E731
    choices = [{"target_frr": t, "threshold": v} for t, v in ((0.01, 2.0), (0.02, 2.0), (0.03, 1.5), (0.05, 1.46),
                                                             (0.1, 1.42))]  # fmt: skip
    picture = histogram.score_histogram(good, threshold=2.0, choices=choices)
    column = picture[histogram.TOP : histogram.HEIGHT - histogram.BOTTOM, x_of(1.5)]
    dashed = (column == histogram.CHOICE).all(axis=1)
    assert 0.3 < dashed.mean() < 0.8, dashed.mean()  # dashed, not solid
    assert (picture[histogram.TOP + 40, x_of(1.0)] == 255).all()  # no line where no choice is
    drawn = []
    monkeypatch.setattr(histogram.cv2, "putText", lambda image, text, org, *a, **k: drawn.append((text, org)))
    histogram.score_histogram(good, threshold=2.0, choices=choices)
    labels = {text: org for text, org in drawn if text.endswith("%") and " " not in text}
    assert sorted(labels) == ["10%", "3%", "5%"], labels  # 2% is the threshold's own
    boxes = [(x, y - 9, x + cv2.getTextSize(t, histogram.FONT, 0.38, 1)[0][0], y) for t, (x, y) in labels.items()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], boxes
    assert "dashed: --target-frr 3%, 5%, 10%" in [text for text, _ in drawn]
    drawn.clear()  # two targets of one threshold: one line, its label naming both
    histogram.score_histogram(good, threshold=2.0, choices=[*choices[:3], {"target_frr": 0.05, "threshold": 1.5}])
    assert [text for text, _ in drawn if text.endswith("%")] == ["3%, 5%", "dashed: --target-frr 3%, 5%"], drawn
    drawn.clear()
    histogram.score_histogram(good, threshold=2.0)
    assert not [text for text, _ in drawn if text.startswith("dashed")]  # no choices given: none drawn


def test_a_long_title_keeps_its_start_and_its_end_inside_the_picture(monkeypatch):
    """A calibration on a deep folder ran its title past the picture's right edge, and the
    target it was calibrated for was cut off."""
    import cv2

    from edge import histogram

    drawn = []
    monkeypatch.setattr(histogram.cv2, "putText", lambda image, text, org, font, scale, *a, **k: drawn.append(
        (text, org, scale)
    ))  # fmt: skip
    title = f"p1: 65 good images under /mnt/line/{'station-7/' * 8}good, target 1.0% false rejects"
    histogram.score_histogram(np.linspace(0, 1, 65), 1.01, title=title)
    shown, (x, _), scale = next(d for d in drawn if d[0].startswith("p1: "))
    assert shown.startswith("p1: 65 good images under /mnt/line/") and shown.endswith("target 1.0% false rejects")
    assert "..." in shown and x + cv2.getTextSize(shown, histogram.FONT, scale, 1)[0][0] <= histogram.WIDTH
    assert histogram.fitted("p1: 65 good images", scale, histogram.WIDTH) == "p1: 65 good images"  # short: as it is


@pytest.mark.parametrize("threshold, previous", [(0.9904, 1.01), (1.01, 0.9904), (0.5, 1.0), (0.02, 0.025)])
def test_the_thresholds_labels_never_meet(threshold, previous, monkeypatch):
    """Two thresholds near the picture's right edge both took their label on the left, one over
    the other: "threshold 0.9904" printed across "previous 1.01"."""
    import cv2

    from edge import histogram

    drawn = []
    monkeypatch.setattr(histogram.cv2, "putText", lambda image, text, org, *a, **k: drawn.append((text, org)))
    good = np.r_[np.linspace(0.5, 0.6, 40), [0.93, 0.97]] * max(threshold, previous)
    histogram.score_histogram(good, threshold, previous)
    boxes = []
    for text, (x, y) in drawn:
        if text.startswith(("threshold ", "previous ")):
            (w, h), _ = cv2.getTextSize(text, histogram.FONT, 0.42, 1)
            boxes.append((x, y - h, x + w, y))
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
    assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0, boxes
    assert all(0 <= x0 and x1 <= histogram.WIDTH for x0, _, x1, _ in boxes)


def test_good_images_the_line_would_call_unfit_are_refused_or_warned_of(tiny_model, synth_root, tmp_path, line_good):
    """Images from another camera (here turned on their side: another shape) are not what the
    line will score as good: the camera health gate's verdict on each is kept and warned of, and
    when they are most of the folder the calibration is refused unless forced."""
    import cv2

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    good = line_good
    proc = run_vqad("calibrate", model, good)
    assert load_package(model).meta["threshold"]["health"] == {"unfit": 0, "reasons": {}, "examples": []}
    assert "unfit on the line" not in proc.stderr
    mixed = tmp_path / "mixed"
    shutil.copytree(good, mixed)
    for path in sorted(mixed.glob("*.png"))[:6]:  # 6 of 16 turned: under half
        image = cv2.imread(str(path))
        cv2.imwrite(str(path), cv2.resize(image, (image.shape[1] // 3, image.shape[0])))
    proc = run_vqad("calibrate", model, mixed)
    health = load_package(model).meta["threshold"]["health"]
    assert health["unfit"] == 6 and health["reasons"]["aspect"] == 6 and len(health["examples"]) == 5
    assert "6 of 16 good images would be unfit on the line (aspect 6" in proc.stderr
    assert "sends" not in proc.stderr  # one warning, not the line's per-camera one besides
    turned = tmp_path / "turned"
    turned.mkdir()
    for path in sorted(mixed.glob("*.png"))[:6]:
        shutil.copy(path, turned / path.name)
    proc = run_vqad("calibrate", model, turned, check=False)
    assert proc.returncode == 3 and "6 of 6 good images would be unfit on the line" in proc.stderr


def test_a_threshold_the_fp16_graph_would_decide_otherwise_is_refused(tmp_path, monkeypatch):
    """At the new threshold the FP16 graph (the GPU's engine) must decide as the FP32 graph on
    the calibration images, within the package's bound; under it nothing is changed."""
    from types import SimpleNamespace

    import edge.recalibrate as recalibrate
    from edge.errors import PackageError

    (tmp_path / "model_fp16.onnx").write_bytes(b"")
    pkg = SimpleNamespace(root=tmp_path, meta={"parity": {"fp16_vs_fp32": {"bound_decision_agreement": 0.99}}})
    scores = np.array([0.5, 0.9, 0.98, 1.2])
    fp16 = scores.copy()
    monkeypatch.setattr(recalibrate, "graph_scores", lambda path, frames, mask=None: fp16)
    assert recalibrate.parity_at(pkg, np.zeros(4), None, scores, 1.0)["fp16_vs_fp32_decision_agreement"] == 1.0
    fp16[2] = 1.01  # over the threshold in FP16 only
    with pytest.raises(PackageError, match="agree on 75.0% of the calibration images, under the package's bound 99%"):
        recalibrate.parity_at(pkg, np.zeros(4), None, scores, 1.0)


def test_where_each_good_image_scores_highest_is_kept_and_drawn(tiny_model, tmp_path, line_good):
    """A threshold set by one place of the part (a frame's edge, a label) lets every defect
    elsewhere that scores under it pass. `vqad calibrate` keeps where each good image's score
    came from, and draws it: the place to leave out shows as a cluster of red dots."""
    import onnxruntime as ort

    from edge.frames import find_images, read_image, to_model_input
    from edge.inspection import InspectionMask, load_mask
    from edge.peaks import peak_colour

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    proc = run_vqad("calibrate", model, line_good)
    assert f"where each good image scores highest: {model / 'peaks.png'}" in proc.stdout
    pkg = load_package(model)
    t, border = pkg.meta["threshold"], pkg.meta["scoring"]["border"]
    assert len(t["peaks"]) == len(t["scores"]) == t["n_val"]
    # The highest good image's peak, found here from its map as the graph gives it.
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    image = read_image(Path(t["highest_images"][0]["image"]))
    (amap,) = session.run(None, {"frames": to_model_input(image, 32, 3)[None]})[0][:, 0]
    inner = np.full_like(amap, -np.inf)
    inner[border:-border, border:-border] = amap[border:-border, border:-border]
    row, col = np.unravel_index(inner.argmax(), inner.shape)
    top = int(np.argmax(t["scores"]))
    assert t["peaks"][top] == [round((row + 0.5) / 32, 4), round((col + 0.5) / 32, 4)], (t["peaks"][top], row, col)
    # Drawn over the first good image, under its caption: the highest a dot of its colour where it peaks.
    picture = cv2.imread(str(model / "peaks.png"))
    first = read_image(find_images(line_good)[0])  # 64 x 64: drawn 8 times as large
    caption = picture.shape[0] - 8 * first.shape[0]
    assert picture.shape[1] == 8 * first.shape[1] and 20 < caption < 100, picture.shape
    y, x = caption + int(t["peaks"][top][0] * 512), int(t["peaks"][top][1] * 512)
    drawn = picture[y, x].astype(int)
    assert np.abs(drawn - peak_colour(t["scores"][top], t["value"])).max() <= 40, (drawn, t["scores"][top], t["value"])

    # The frame's left half left out: every peak is in what is still judged.
    run_vqad("calibrate", model, line_good, "--ignore", "0,0,32,64")
    pkg = load_package(model)
    keep = load_mask(pkg).keep
    peaks = np.array(pkg.meta["threshold"]["peaks"])
    assert (peaks[:, 1] > 0.5).all() and all(keep[int(r * 32), int(c * 32)] for r, c in peaks), peaks
    assert isinstance(load_mask(pkg), InspectionMask)


def test_the_peaks_picture_numbers_the_highest_and_refuses_a_peak_without_a_score():
    from edge.peaks import NUMBERED, peak_colour, peaks_picture

    image = np.full((120, 500, 3), 128, np.uint8)
    peaks = [[0.1, 0.1], [0.5, 0.5], [0.9, 0.95]] + [[0.5, 0.2]] * 4
    scores = [0.1, 0.5, 1.0, 0.2, 0.2, 0.2, 0.2]
    picture = peaks_picture(image, peaks, scores, threshold=1.0)
    caption = picture.shape[0] - 120
    assert picture.shape[1] == 500 and caption > 0
    assert tuple(picture[caption + int(0.9 * 120), int(0.95 * 500)]) == peak_colour(1.0, 1.0) == (0, 0, 230)
    assert tuple(picture[caption + 12, 50]) == peak_colour(0.1, 1.0) == (0, 200, 0)  # far under: green
    rings = int(((picture[caption:] == 255).all(axis=2)).sum())
    assert rings > 0 and NUMBERED == 5  # white rings and numbers around the highest
    left = np.ones((12, 20), bool)
    left[:, :10] = False
    hatched = peaks_picture(image, [[0.5, 0.75]], [0.5], threshold=1.0, keep=left)
    assert hatched[caption:, :250].mean() < hatched[caption:, 250:].mean()  # the left-out half darkened
    assert peaks_picture(image[:, :100], [[0.5, 0.5]], [0.5], 1.0).shape[1] == 500  # a narrow frame enlarged
    with pytest.raises(ValueError, match="2 peaks for 1 scores"):
        peaks_picture(image, [[0.5, 0.5], [0.1, 0.1]], [0.3], threshold=1.0)


def _labelled(line_good: Path, good: Path) -> Path:
    """`line_good` copied to `good`, three of its images with the same white label at one place."""
    shutil.copytree(line_good, good)
    for path in sorted(good.rglob("*.png"))[:3]:
        image = cv2.imread(str(path))
        image[28:36, 40:48] = 255
        cv2.imwrite(str(path), image)
    return good


def test_the_highest_good_images_peaking_in_one_place_are_said_to(tiny_model, synth_root, tmp_path, line_good):
    """A label stuck on some good parts, in one place: the calibration says that the highest peak
    there, the --ignore that leaves it out, and what that would do, measured: the threshold it
    sets, and the confirmed defects that then pass; calibrated so, it is that threshold. Good
    images peaking all over are not said to."""
    model, good, defects = tmp_path / "model", _labelled(line_good, tmp_path / "good"), synth_root / "bracket" / "test"
    shutil.copytree(tiny_model, model)
    said = run_vqad("calibrate", model, good, "--force", "--defects", defects).stdout
    t = load_package(model).meta["threshold"]
    highest = np.argsort(t["scores"])[::-1][:3]
    assert all(abs(t["peaks"][i][0] - 0.5) < 0.1 and abs(t["peaks"][i][1] - 0.69) < 0.1 for i in highest), t["peaks"]
    found = t["crowd"]
    assert found["count"] == 3 and found["where"].startswith("one place, ") and "mask" not in found
    x, y, w, h = found["ignore"][0]
    assert len(found["ignore"]) == 1 and x <= 40 and y <= 28 and x + w >= 48 and y + h >= 36, found  # the label
    assert w * h < 64 * 64 / 4 and np.allclose([y / 64, x / 64, (y + h) / 64, (x + w) / 64], found["box"], atol=1e-4)
    assert found["threshold"] < t["value"] and found["defects_missed"] <= t["defects"]["missed"], found
    assert (f"3 of the 5 highest good images peak at {found['where']}: if no defect can be there, leaving it out "
            f"(--ignore {x},{y},{w},{h}; {found['inspected_share']:.1%} of the frame judged) would set the threshold "
            f"at {found['threshold']:.4g} instead of "
            f"{t['value']:.4g}, and let {found['defects_missed']} of {t['defects']['n_images']} confirmed defects "
            f"pass instead of {t['defects']['missed']}") in said, said  # fmt: skip
    drawn = cv2.imread(str(model / "peaks.png"))  # the place outlined in cyan on the 64-px frame drawn 512 wide
    ys, xs = np.nonzero((drawn[drawn.shape[0] - 512 :] == (255, 255, 0)).all(axis=2))
    assert abs(xs.min() - x * 8) <= 1 and abs(xs.max() + 1 - (x + w) * 8) <= 1 and abs(ys.min() - y * 8) <= 1, (xs, ys)
    card = run_vqad("info", model).stdout  # an audit of the package reads it in its threshold's line
    line = card.split("threshold  ", 1)[1].splitlines()[0]
    assert "3 of its 5 highest peak at one place, " in line and f"would be {found['threshold']:.4g})" in line, card

    run_vqad("calibrate", model, good, "--force", "--defects", defects, "--ignore", f"{x},{y},{w},{h}")
    done = load_package(model).meta["threshold"]
    assert math.isclose(done["value"], found["threshold"], rel_tol=1e-6), (done["value"], found)
    assert done["defects"]["missed"] == found["defects_missed"] and "crowd" not in done, done.get("crowd")
    plain = run_vqad("calibrate", model, line_good, "--inspect-all").stdout
    assert "highest good images peak at" not in plain
    assert not (cv2.imread(str(model / "peaks.png")) == (255, 255, 0)).all(axis=2).any()  # no place outlined


def test_a_place_left_out_of_frames_of_several_sizes_is_a_mask_image(tiny_model, tmp_path, line_good):
    """Good images of two sizes take no --ignore (its pixels are one frame's): the place is drawn
    into a mask image in the package, over the package's own mask, and calibrated with it the
    threshold is the one measured. A later calibration that finds no crowd removes the image."""
    model, good = tmp_path / "model", _labelled(line_good, tmp_path / "good")
    shutil.copytree(tiny_model, model)
    for path in sorted(good.rglob("*.png"))[-4:]:  # four unlabelled ones from a camera of twice the resolution
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (128, 128), interpolation=cv2.INTER_CUBIC))
    run_vqad("calibrate", model, line_good, "--ignore", "0,0,8,64")  # the package's own mask: the left 8 columns
    run_vqad("calibrate", model, good, "--force")
    found = load_package(model).meta["threshold"]["crowd"]
    suggested = model / "leave_out.png"
    assert "ignore" not in found and found["mask"] == str(suggested), found
    drawn = cv2.imread(str(suggested), cv2.IMREAD_GRAYSCALE)
    assert drawn.shape == (64, 64) and set(np.unique(drawn)) == {0, 255}, drawn.shape
    assert (drawn[:, :8] == 0).all() and (drawn[28:36, 40:48] == 0).all() and drawn[10:20, 15:25].all()
    run_vqad("calibrate", model, good, "--force", "--mask", suggested)
    t = load_package(model).meta["threshold"]
    assert math.isclose(t["value"], found["threshold"], rel_tol=1e-6) and suggested.is_file(), (t["value"], found)
    run_vqad("calibrate", model, line_good, "--inspect-all")
    assert not suggested.exists()
    for path in sorted(good.rglob("*.png"))[-4:]:  # 64 wide and 80 high: no one mask image fits both aspects
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (64, 80), interpolation=cv2.INTER_CUBIC))
    proc = run_vqad("calibrate", model, good, "--force")
    assert "what leaving out one place, " in proc.stderr and "no one --mask image fits them all" in proc.stderr
    assert "crowd" not in load_package(model).meta["threshold"] and not suggested.exists()
    assert "3 of the 5 highest good images peak at one place, " in proc.stdout  # said, not measured


def test_five_peaks_crowd_at_an_edge_or_a_place_or_not_at_all():
    from edge.peaks import Crowd, crowd

    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    top_edge = [[0.01, 0.2], [0.03, 0.9], [0.02, 0.5], [0.5, 0.5], [0.8, 0.1], [0.02, 0.6]]
    assert crowd(top_edge, scores) == Crowd(3, "the frame's top edge", (0, 1, 2), "top")
    place = [[0.4, 0.7], [0.42, 0.72], [0.9, 0.1], [0.41, 0.69], [0.2, 0.3], [0.4, 0.7]]
    assert crowd(place, scores) == Crowd(3, "one place, 70% across and 41% down", (0, 1, 3), None)
    spread = [[0.1, 0.1], [0.9, 0.9], [0.5, 0.5], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]]
    assert crowd(spread, scores) is None  # the sixth, lowest, is no matter
    assert crowd([[0.5, 0.5]] * 2, [1.0, 0.9]) is None  # too few to crowd


def test_a_crowds_place_holds_each_of_its_spots_over_the_rest_of_the_good_images():
    """The place is where each crowded image's map stays over the highest score of the other good
    images around its peak: left out, none of them scores more than those do there. An edge's
    crowd takes the whole band along the edge."""
    from edge.peaks import Crowd, crowd_box

    maps = np.zeros((2, 20, 40), np.float32)
    maps[0, 0:3, 30:36] = 0.6  # a spot at the top edge, 0.6 around a peak of 1.0
    maps[0, 1, 32] = 1.0
    maps[1, 0:2, 5:9] = 0.4  # under 0.5: not of the spot
    maps[1, 0:2, 9:12] = 0.8
    maps[1, 1, 10] = 0.9
    maps[1, 10, 20] = 0.45  # elsewhere, under the rest's level: left in
    scores = [1.0, 0.9, 0.5, 0.2]  # the members' first, then the rest's: at most 0.5
    at_top = Crowd(2, "the frame's top edge", (0, 1), "top")
    assert crowd_box(at_top, maps, scores) == (0.0, 0.0, 3 / 20, 1.0)
    place = Crowd(2, "one place", (0, 1), None)
    assert crowd_box(place, maps, scores) == (0.0, 9 / 40, 3 / 20, 36 / 40)
    assert crowd_box(place, maps, [1.0, 0.9, 0.3]) == (0.0, 5 / 40, 3 / 20, 36 / 40)  # a lower level, a wider place
    over = Crowd(2, "one place", (1, 2), None)  # the rest (image 0) over every peak: the peaks alone
    assert crowd_box(over, maps, [2.0, 0.9, 1.0]) == (1 / 20, 10 / 40, 2 / 20, 33 / 40)
