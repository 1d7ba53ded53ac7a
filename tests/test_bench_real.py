"""`make bench REAL=DIR` (benchmarks.run --real DIR): every real category under DIR trained with
the shipped defaults and reported beside the per-pixel Gaussian, with the rates at the
calibrated threshold. Here on one tiny category for a few steps of training."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.accuracy import SPREAD_KEYS, Budget, bench_real, median_row, real_categories
from benchmarks.run import peaks_cell, real_markdown, steps_cell


def test_real_categories_are_measured_at_the_calibrated_threshold(synth_root, tmp_path, capsys):
    root = tmp_path / "real"
    shutil.copytree(synth_root / "bracket", root / "part")
    (root / "notes").mkdir()  # not a category: no train/good
    acc = bench_real(root, Budget(steps=6, minutes=5.0), image_size="32", workdir=tmp_path / "work")
    assert list(acc["categories"]) == ["part"]
    ours = acc["categories"]["part"]["ours (configs/)"]
    for key in ("image_auroc", "false_reject_rate", "miss_rate", "miss_rate_at_1pct_frr", "frr_upper_bound_95"):
        assert ours[key] is not None, key
    assert ours["input_size"] == [32, 32]
    peaks = ours["defect_peaks"]  # where the defects' maps peak, as vqad eval counted them
    assert sum(peaks["passed"].values()) + sum(peaks["caught"].values()) + peaks["without_mask"] > 0
    assert (ours["steps"], ours["ended_by"], acc["budget"]) == (6, "steps", {"steps": 6, "minutes": 5.0})
    table = "\n".join(real_markdown(acc))
    assert "6 steps (guard 5 min) per model" in table
    assert "| part | ours (configs/) | 32 x 32 | 6 |" in table and "| part | per-pixel Gaussian |" in table
    passed = peaks["passed"]
    assert f"| {passed['on_defect']} / {passed['elsewhere']} |" in table and "misses peaking on the defect" in table
    assert "false rejects" in table and "%" in table
    # What --target-frr would trade, as vqad eval gave it for this run (one seed: its own rates).
    trade = ours["target_frr_choices"]
    assert [c["target_frr"] for c in trade] == [0.01, 0.02, 0.03, 0.05] and all(c["runs"] == 1 for c in trade)
    cells = " | ".join(f"{100 * c['false_reject_rate']:.1f}% / {100 * c['miss_rate']:.1f}%" for c in trade)
    assert "| category | model | 1% | 2% | 3% | 5% |" in table and f"| part | ours (configs/) | {cells} |" in table
    # A long run shows its progress: each training's start and end, then the category's figures.
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[train] part / ours: started ")
    assert lines[1].startswith("[train] part / ours: 6 steps (ended by steps), image AUROC ")
    assert lines[2].startswith("[real] part: image AUROC ")


def test_a_rows_defect_peaks_add_up_its_runs():
    """Where the defects' maps peak is a count of defects: over three seeds, the row adds the
    three runs' counts (it kept seed 0's alone), and says how many runs counted."""

    def run(passed_on, passed_else, caught_on, caught_else, without_mask=0):
        peaks = {"passed": {"on_defect": passed_on, "elsewhere": passed_else},
                 "caught": {"on_defect": caught_on, "elsewhere": caught_else},
                 "without_mask": without_mask, "within_px": 2}  # fmt: skip
        return dict.fromkeys(SPREAD_KEYS, 0.5) | {"defect_peaks": peaks}

    row = median_row([run(13, 11, 27, 1), run(10, 9, 30, 3, 1), run(12, 10, 29, 1)])
    assert row["defect_peaks"] == {
        "passed": {"on_defect": 35, "elsewhere": 30}, "caught": {"on_defect": 86, "elsewhere": 5},
        "without_mask": 1, "within_px": 2, "runs": 3,
    }  # fmt: skip
    older = median_row([dict(run(1, 2, 3, 4), defect_peaks=None), run(1, 2, 3, 4)])  # a report before the count
    assert older["defect_peaks"]["runs"] == 1 and older["defect_peaks"]["passed"] == {"on_defect": 1, "elsewhere": 2}
    assert median_row([dict(run(1, 2, 3, 4), defect_peaks=None)])["defect_peaks"] is None
    assert peaks_cell(row) == "35 / 30 over 3 runs" and peaks_cell(older) == "1 / 2" and peaks_cell({}) == ""
    assert "defect_peaks" not in median_row([dict.fromkeys(SPREAD_KEYS, 0.5)])  # the baseline's row


def test_a_rows_target_frr_trade_is_the_median_of_its_runs_per_target():
    """`make bench REAL=` over three seeds gives, per --target-frr, the median of the seeds' false
    rejects and misses at each seed's own threshold, and a column per target in the table."""

    def run(*rates):
        trade = [{"target_frr": t, "threshold": 1.0 - t, "false_reject_rate": fr, "miss_rate": miss}
                 for t, (fr, miss) in zip((0.01, 0.02, 0.05), rates, strict=True)]  # fmt: skip
        return dict.fromkeys(SPREAD_KEYS, 0.5) | {
            "target_frr_choices": trade,
            "input_size": [32, 32],
            "budget": {"steps": 3000, "minutes": 60.0},
        }

    runs = [run((0.0, 0.7), (0.0, 0.4), (0.08, 0.3)), run((0.0, 0.9), (0.02, 0.6), (0.03, 0.5)),
            run((0.02, 0.6), (0.02, 0.5), (0.05, 0.4))]  # fmt: skip
    row = median_row(runs)
    assert row["target_frr_choices"] == [
        {"target_frr": 0.01, "runs": 3, "false_reject_rate": 0.0, "miss_rate": 0.7},
        {"target_frr": 0.02, "runs": 3, "false_reject_rate": 0.02, "miss_rate": 0.5},
        {"target_frr": 0.05, "runs": 3, "false_reject_rate": 0.05, "miss_rate": 0.4},
    ]
    at_5pct = [dict(r, miss_rate_at_5pct_frr=m) for r, m in zip(runs, (0.169, 0.056, 0.056), strict=True)]
    assert median_row(at_5pct)["miss_rate_at_5pct_frr"] == 0.056  # the seeds' median, not seed 0's
    older = median_row([dict(runs[0], target_frr_choices=None), runs[1]])  # a report before the trade
    assert [c["runs"] for c in older["target_frr_choices"]] == [1, 1, 1]
    assert median_row([dict(runs[0], target_frr_choices=None)])["target_frr_choices"] is None
    acc = {"data": "d", "image_size": "auto", "budget": {"steps": 3000, "minutes": 60.0},
           "categories": {"part": {"ours (configs/)": row}}}  # fmt: skip
    table = "\n".join(real_markdown(acc))
    assert "| part | ours (configs/) | 0.0% / 70.0% | 2.0% / 50.0% | 5.0% / 40.0% |" in table, table
    assert "What `--target-frr` would trade" not in "\n".join(real_markdown({**acc, "categories": {"part": {
        "ours (configs/)": median_row([dict(runs[0], target_frr_choices=None)])}}}))  # fmt: skip


def test_a_training_the_guard_stopped_short_is_marked():
    """A row's figures are the budget's only where every repeat reached its steps."""
    budget = {"steps": 3000, "minutes": 60.0}
    full = {"steps": 3000, "ended_by": "steps", "budget": budget}
    short = {"steps": 570, "ended_by": "max_minutes", "budget": budget}
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "train_seconds", "false_reject_rate", "miss_rate")
    rows = [dict(r, **dict.fromkeys(keys, 0.5)) for r in (full, short, full)]
    assert steps_cell(median_row(rows[:1])) == "3000"
    assert steps_cell(median_row(rows)) == "570–3000, short of 3000"
    assert steps_cell({"image_auroc": 0.7}) == ""  # the baseline does not train


def test_real_names_one_category_or_a_folder_of_them(tmp_path):
    cat = tmp_path / "sets" / "part"
    (cat / "train" / "good").mkdir(parents=True)
    assert real_categories(cat) == {"part": cat}
    assert real_categories(tmp_path / "sets") == {"part": cat}
    with pytest.raises(SystemExit, match="no category"):
        real_categories(cat / "train")
    with pytest.raises(SystemExit, match="no such folder"):
        real_categories(tmp_path / "missing")
