"""The scoring ablation (`python -m benchmarks.scoring RUN CAT`): choices on the real sets are
made with it, each variant a scorer built and calibrated as training builds the run's own, on
passes of the network computed once. So its row of the run's own terms must read what
`vqad eval` read, and the halves it chooses and reports on must split the test set."""

from __future__ import annotations

import json

import pytest

from benchmarks.scoring import main, scoring_ablation

FIGURES = ("image_auroc", "pixel_auroc", "aupro", "false_reject_rate", "miss_rate")


def test_the_runs_own_terms_read_what_vqad_eval_read_and_other_terms_differ(tiny_run, synth_root):
    rows = scoring_ablation(tiny_run, synth_root / "bracket", "all", ["the run's terms", "errors"])["variants"]
    evaluated = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert {k: rows["the run's terms"][k] for k in FIGURES} == pytest.approx({k: evaluated[k] for k in FIGURES})
    own_terms = [t["name"] for t in rows["the run's terms"]["terms"]]
    assert "head" in own_terms and [t["name"] for t in rows["errors"]["terms"]] == ["errors"]
    assert rows["errors"]["pixel_auroc"] != rows["the run's terms"]["pixel_auroc"]


def test_the_select_and_report_halves_split_the_test_set(tiny_run, synth_root, capsys):
    category = synth_root / "bracket"
    counts = {half: scoring_ablation(tiny_run, category, half, ["errors"])["n_test"] for half in ("select", "report")}
    assert min(counts.values()) > 0
    assert sum(counts.values()) == scoring_ablation(tiny_run, category, "all", ["errors"])["n_test"]
    capsys.readouterr()
    main([str(tiny_run), str(category), "--half", "select", "--variant", "errors"])  # the command's table
    table = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[scoring]")]
    assert len(table) == 1 and table[0].startswith("errors ") and "misses at 5% FRR" in table[0]
