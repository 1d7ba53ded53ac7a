"""`make bench REAL=DIR` (benchmarks.run --real DIR): every real category under DIR trained with
the shipped defaults and reported beside the per-pixel Gaussian, with the rates at the
calibrated threshold. Here on one tiny category for a few seconds of training."""

from __future__ import annotations

import shutil

from benchmarks.accuracy import bench_real
from benchmarks.run import real_markdown


def test_real_categories_are_measured_at_the_calibrated_threshold(synth_root, tmp_path):
    root = tmp_path / "real"
    shutil.copytree(synth_root / "bracket", root / "part")
    (root / "notes").mkdir()  # not a category: no train/good
    acc = bench_real(root, minutes=0.02, image_size="32", workdir=tmp_path / "work")
    assert list(acc["categories"]) == ["part"]
    ours = acc["categories"]["part"]["ours (configs/)"]
    for key in ("image_auroc", "false_reject_rate", "miss_rate", "miss_rate_at_1pct_frr", "frr_upper_bound_95"):
        assert ours[key] is not None, key
    assert ours["input_size"] == [32, 32]
    table = "\n".join(real_markdown(acc))
    assert "| part | ours (configs/) | 32 x 32 |" in table and "| part | per-pixel Gaussian |" in table
    assert "false rejects" in table and "%" in table
