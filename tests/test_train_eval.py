import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from edge.errors import CheckpointError
from tests.conftest import ROOT, TINY_MODEL, TINY_TRAIN, run_vqad
from train.checkpoint import load_checkpoint, save_checkpoint
from train.run import load_run


def test_synth_train_eval_writes_metrics_and_pictures(tiny_run):
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == 4 + 5 * 2
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0
    assert (tiny_run / "curves.png").stat().st_size > 1000  # vqad train --plot
    for picture in ("histogram.png", "roc.png", "codebook.png", "curves.png"):
        assert (tiny_run / "eval" / picture).stat().st_size > 1000
    panels = list((tiny_run / "eval" / "images").glob("*.png"))
    assert len(panels) == metrics["n_images"]
    threshold = json.loads((tiny_run / "threshold.json").read_text())
    assert threshold["value"] == metrics["threshold"] and threshold["n_val"] == 4


def test_metrics_csv_has_the_training_scalars(tiny_run):
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    for key in ("loss", "recon_l2", "vq_loss", "perplexity", "dead_restarted", "lr", "images_per_s"):
        assert all(r[key] != "" for r in rows), key
    assert rows[-1]["val_l2"] != ""


def test_checkpoint_describes_itself(tiny_run):
    ckpt = load_checkpoint(tiny_run / "checkpoint.pt")
    meta = ckpt["meta"]
    assert meta["step"] == 20 and meta["model_config"]["image_size"] == 32
    assert len(meta["content_sha256"]) == 64 and "val_l2" in meta["metrics"]
    run = load_run(tiny_run)
    assert run.model_cfg.codebook_size == 32 and not run.model.training
    # The bracket is a fixtured part: training's end fitted the golden template and switched it
    # on (score.reference auto), registered, so the export tests run the graph with both.
    scorer = run.model.scorer
    assert float(scorer.ref_alignment) > 0.5 and scorer.reference_active and float(scorer.ref_gain) > 0
    assert scorer.register_radius == run.model_cfg.score.reference_shift > 0
    assert scorer.blob_active and run.model_cfg.score.reference_blob_sigma > 0
    assert scorer.lighting_active and scorer.aligned_band  # the gain plane, in the aligned part's band


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vqad-pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "vqad-checkpoint", "version": 1, "evil": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    with open(tmp_path / "raw.pt", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "raw.pt")
    assert not os.path.exists("/tmp/vqad-pwned")


def test_a_run_from_before_the_golden_template_loads_with_it_off(tiny_run, tmp_path):
    """...and from before the head had its own smoothing: it keeps the maps' sigma."""
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("eval"))
    ckpt = load_checkpoint(old / "checkpoint.pt")
    meta = dict(ckpt["meta"])
    meta["model_config"] = dict(meta["model_config"])
    meta["model_config"]["score"] = {
        k: v
        for k, v in meta["model_config"]["score"].items()
        if not k.startswith("reference") and k != "head_smoothing_sigma"
    }
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("scorer.ref_")}
    save_checkpoint(old / "checkpoint.pt", state, meta)
    scorer = load_run(old).model.scorer
    assert not scorer.reference_active and float(scorer.ref_gain) == 0 and scorer.register_radius == 0
    assert scorer.cfg.head_smoothing_sigma == scorer.cfg.smoothing_sigma
    assert not scorer.blob_active and scorer.cfg.reference_blob_sigma == 0
    assert load_run(tiny_run).model.scorer.reference_active  # the same run, as saved, has it on
    # A run from before the blob filter only: its registered template as it was, no filter.
    meta["model_config"]["score"] = {
        k: v for k, v in ckpt["meta"]["model_config"]["score"].items() if k != "reference_blob_sigma"
    }
    save_checkpoint(old / "checkpoint.pt", {k: v for k, v in ckpt["model"].items() if "blob" not in k}, meta)
    scorer = load_run(old).model.scorer
    assert scorer.reference_active and scorer.register_radius > 0 and not scorer.blob_active
    # A run from before the gain plane and the aligned band: compared as is, in its one band.
    meta["model_config"]["score"] = {
        k: v
        for k, v in ckpt["meta"]["model_config"]["score"].items()
        if k not in ("reference_lighting", "reference_aligned_sigmas")
    }
    state = {k: v for k, v in ckpt["model"].items() if k not in ("scorer.ref_lighting", "scorer.ref_aligned_band")}
    save_checkpoint(old / "checkpoint.pt", state, meta)
    run = load_run(old)
    assert run.model.scorer.reference_active and run.model.scorer.blob_active
    assert not run.model.scorer.lighting_active and not run.model.scorer.aligned_band
    assert run.model_cfg.score.reference_aligned_sigmas == run.model_cfg.score.reference_sigmas
    # A run from before train.head_loss: its head was trained with the focal loss, and says so.
    meta["train_config"] = {k: v for k, v in meta["train_config"].items() if k != "head_loss"}
    save_checkpoint(old / "checkpoint.pt", state, meta)
    assert load_run(old).train_cfg.head_loss == "focal"


def test_corrupt_checkpoint_is_refused(tiny_run, tmp_path):
    data = bytearray((tiny_run / "checkpoint.pt").read_bytes())
    for i in range(len(data) // 10, len(data) * 9 // 10, 997):  # damage spread over the whole file
        data[i] ^= 0xFF
    (tmp_path / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_resume_continues_the_run(synth_root, tmp_path):
    run = tmp_path / "run"
    run_vqad("train", synth_root / "weave", "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN)
    refused = run_vqad(
        "train", synth_root / "weave", "--out", run, "--steps", "10", *TINY_MODEL, *TINY_TRAIN, check=False
    )
    assert refused.returncode != 0 and "--resume" in refused.stderr
    run_vqad("train", synth_root / "weave", "--out", run, "--steps", "15", "--resume", *TINY_MODEL, *TINY_TRAIN)
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["step"] == 15
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv"))]
    assert steps == [5, 10, 15]


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
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert meta["reason"] == "interrupted" and meta["step"] > 0
    stopped_at = meta["step"]
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
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert meta["step"] == 6
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6]  # only rank 0 writes
