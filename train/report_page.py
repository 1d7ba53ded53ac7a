"""`report.html`: the evaluation on one page, in the order a quality engineer reads it.

The figures at the threshold first (the line lives there), then the good images that set the
threshold, the good test images it rejects, the defects it lets pass, the score histogram, and
every other picture of REPORT_DIR. Plain HTML beside the pictures it links (relative paths):
the folder can be copied, zipped or opened from a share, with nothing fetched from outside.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.recalibrate import UNFIT_REFUSED
from edge.threshold import MISSES_GUIDE
from train.data import TestSample
from train.metrics import figure, percent

PAGE = "report.html"
PANELS = "images"  # the folder of REPORT_DIR that holds the panels


# Where each good validation image scores highest (edge.peaks), beside the report.
PEAKS_PICTURE = "peaks.png"


def panel_path(sample: TestSample) -> str:
    """A test image's panel, relative to REPORT_DIR: images/<kind>_<name>.png, a subfolder's `/`
    in its name written `__` (`hole_day1__001.png`)."""
    return f"{PANELS}/{sample.kind}_{sample.name.replace('/', '__')}.png"


def calibration_panel_path(rank: int, image: str | Path) -> str:
    """The panel of the calibration image that scores `rank`-th highest (from 1), relative to
    REPORT_DIR: images/calibration_<rank>_<stem>.png. The rank keeps apart two images of one
    name in two folders (train/good/day1/001.png and day2/001.png)."""
    return f"{PANELS}/calibration_{rank}_{Path(str(image)).stem}.png"


def _shown_name(image: str | Path) -> str:
    """A calibration image's name as a panel's caption shows it: with its folder, as two of one
    name in two folders are told apart (`day1/001.png`)."""
    path = Path(str(image))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


# The most pictures a gallery shows before the rest is folded away: a browser opens a page of
# 40 panels at once, and a long list of misses is read from its worst.
GALLERY_SHOWN = 40

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2430; background: #fff; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 6px; }
.sub { color: #5a6270; margin: 0 0 16px; } .warn { background: #fff4d6; padding: 8px 12px; border-radius: 6px; }
table { border-collapse: collapse; margin: 6px 0; } td, th { padding: 3px 12px 3px 0; text-align: left; }
th { color: #5a6270; font-weight: 500; } td.n { font-variant-numeric: tabular-nums; }
figure { display: inline-block; width: min(100%, 560px); margin: 0 12px 12px 0; vertical-align: top; }
figure img { width: 100%; border: 1px solid #d9dde3; } figcaption { color: #5a6270; font-size: 12px; }
.plots figure { width: auto; } .plots img { width: auto; max-height: 320px; } .none { color: #5a6270; }
"""


def write_report_page(
    out: Path,
    metrics: dict[str, Any],
    test: Sequence[TestSample],
    scores: np.ndarray,
    title: str,
    pictures: bool,
) -> Path:
    """Write out/report.html from `metrics` (metrics.json's dict) and the test images' scores;
    with `pictures`, it shows the panels that `vqad eval` drew under out/images/."""
    threshold = metrics["threshold_calibration"]
    value = float(metrics["threshold"])
    labels = np.array([s.label for s in test], dtype=int)
    decisions = np.asarray(scores) >= value
    rejected = [i for i in np.argsort(-np.asarray(scores), kind="stable") if labels[i] == 0 and decisions[i]]
    missed = [i for i in np.argsort(np.asarray(scores), kind="stable") if labels[i] == 1 and not decisions[i]]
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(_measured_on(metrics))}</p>',
        _unfinished_warning(metrics),
        _another_product_warning(metrics),
        "<h2>At the threshold</h2>",
        _table(_at_threshold_rows(metrics, labels, decisions)),
        _lone_warning(threshold),
        f'<p class="warn">{_e(metrics["good_peaks_crowd"])}.</p>' if metrics.get("good_peaks_crowd") else "",
        "<h2>Ranking</h2>",
        _table(_ranking_rows(metrics, labels)),
    ]
    if pictures:
        body += _picture_sections(out, threshold, test, scores, rejected, missed)
    page = out / PAGE
    page.write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n",
        encoding="utf-8",
    )
    return page


def _picture_sections(
    out: Path,
    threshold: dict[str, Any],
    test: Sequence[TestSample],
    scores: np.ndarray,
    rejected: list[int],
    missed: list[int],
) -> list[str]:
    """The page's pictures: the good images that set the threshold, the good test images rejected
    (`rejected`, indices into `test`), the defects that pass (`missed`), the plots, and every
    test image by kind."""
    calibration = [
        (calibration_panel_path(rank, e["image"]), f"{_shown_name(e['image'])}: {e['score']:#.4g}")
        for rank, e in enumerate(threshold.get("highest_images") or [], start=1)
    ]
    return [
        "<h2>The good images that set the threshold</h2>",
        "<p>The highest-scoring good calibration images. A defect among them raises the threshold over every "
        "defect that scores less: leave it out and calibrate again.</p>",
        _gallery(out, calibration),
        "<p>Where each good validation image scores highest, over the first of them at the model's size: red "
        "near the threshold, the five highest numbered. Where the red crowd one place no defect can reach (the "
        "frame's edge, a label), that place sets the threshold; leave it out of the exported package: "
        "<code>vqad calibrate MODEL_DIR GOOD_DIR --ignore X,Y,W,H</code>. Where 3 of the 5 highest crowd, the "
        'place is outlined, and the line under "At the threshold" says what leaving it out would do.</p>',
        _gallery(out, [(PEAKS_PICTURE, "where each good validation image scores highest")]),
        f"<h2>Good test images rejected ({len(rejected)})</h2>",
        _gallery(out, [_panel_entry(test[i], scores[i]) for i in rejected]),
        f"<h2>Defects that pass ({len(missed)})</h2>",
        "<p>Lowest score first. The ring marks the map's peak, where the score comes from. A peak on the "
        "defect but under the threshold is a threshold question; a peak elsewhere, a defect the model does "
        f"not see. What to do for each: {_e(MISSES_GUIDE)}.</p>",
        _gallery(out, [_panel_entry(test[i], scores[i]) for i in missed]),
        "<h2>Scores, ROC, training, codebook</h2>",
        '<div class="plots">'
        + _gallery(out, [(n, "") for n in ("histogram.png", "roc.png", "curves.png", "codebook.png")])
        + "</div>",
        "<h2>Every test image</h2>",
        "<details><summary>by kind, highest score first</summary>",
        _gallery(out, [_panel_entry(test[i], scores[i]) for i in _by_kind(test, scores)], fold=False),
        "</details>",
    ]


def _measured_on(metrics: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in metrics["image_size"])
    sha = str(metrics.get("checkpoint_sha256") or "")[:12]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    copies = metrics.get("n_left_out_copies") or 0
    left_out = f" ({copies} more left out: copies of the run's own good images)" if copies else ""
    bits = metrics.get("pixel_bits", 16)
    read_by = f", a 16-bit image read by its low {bits} bits" if bits != 16 else ""
    origin = metrics.get("fine_tuned_from")
    tuned = f" (fine-tuned from {origin['run']}, step {origin['step']})" if origin else ""
    return (
        f"{metrics['n_good']} good and {metrics['n_defect']} defect test images{left_out} at {size} px (HxW){read_by}; "
        f"run {metrics['run']}, step {metrics['step']}{tuned}, checkpoint {sha or 'unknown'}; written {when}"
    )


def _at_threshold_rows(metrics: dict[str, Any], labels: np.ndarray, decisions: np.ndarray) -> list[tuple[str, str]]:
    t = metrics["threshold_calibration"]
    source = t.get("source") or {}
    good, defects = labels == 0, labels == 1
    return [
        ("threshold", f"{metrics['threshold']:.6g}"),
        (
            "calibrated on",
            f"{t.get('n_val')} good images: {source.get('folder') or source.get('images') or '?'}; by "
            f"{source.get('by', '?')}, {t.get('calibrated', '?')}, at their {t.get('quantile', 0):.3g} quantile",
        ),
        ("false rejects the calibration allows", f"at most {percent(t.get('frr_upper_bound_95'))} (95% confidence)"),
        ("good test images rejected", f"{int(decisions[good].sum())} of {int(good.sum())}: "
                                      f"{percent(metrics['false_reject_rate'])}"),
        ("defects that pass", f"{int((~decisions[defects]).sum())} of {int(defects.sum())}: "
                              f"{percent(metrics['miss_rate'])}"),
        *[(f"{kind} that pass", f"{m['passed']} of {m['of']}: {percent(m['rate'])}")
          for kind, m in _apart(metrics.get("per_kind_misses", {})).items()],
        *_peak_rows(metrics.get("defect_peaks")),
        ("defects that pass at 1% / 5% false rejects",
         f"{percent(metrics['miss_rate_at_1pct_frr'])} / {percent(metrics['miss_rate_at_5pct_frr'])}"),
        ("the threshold over the highest calibration score", percent(metrics.get("threshold_margin_over_val_max"))),
        *_choice_rows(metrics.get("target_frr_choices") or []),
    ]  # fmt: skip


def _choice_rows(choices: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What each false-reject target would give, its threshold set on the validation images as
    vqad eval sets it (vqad calibrate --target-frr): the trade a quality engineer chooses from."""
    return [
        (f"--target-frr {c['target_frr']:g}: false rejects / misses",
         f"{percent(c['false_reject_rate'])} / {percent(c['miss_rate'])} (threshold {c['threshold']:.5g})")
        for c in choices
    ]  # fmt: skip


def _peak_rows(peaks: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Where the defects' maps peak, passed and caught (metrics.json's defect_peaks), where any
    defect has a mask."""
    if not peaks or not any(sum(peaks[k].values()) for k in ("passed", "caught")):
        return []
    near = f"the map's peak within {peaks['within_px']} px of it"
    return [
        ("defects that pass, peaking on the defect / elsewhere",
         f"{peaks['passed']['on_defect']} / {peaks['passed']['elsewhere']} ({near})"),
        ("defects caught, peaking on the defect / elsewhere",
         f"{peaks['caught']['on_defect']} / {peaks['caught']['elsewhere']}"),
    ]  # fmt: skip


def _ranking_rows(metrics: dict[str, Any], labels: np.ndarray) -> list[tuple[str, str]]:
    rows = [
        ("image AUROC", figure(metrics["image_auroc"])),
        ("pixel AUROC", figure(metrics["pixel_auroc"])),
        ("AUPRO (to 30% FPR)", figure(metrics["aupro"])),
    ]
    by_kind = _apart(metrics["per_kind_image_auroc"])
    rows += [(f"image AUROC, {kind} against good", figure(v)) for kind, v in by_kind.items()]
    return rows


def _apart(by_kind: dict[str, Any]) -> dict[str, Any]:
    """Figures by defect kind, where there are two kinds or more: one kind's repeat the whole's."""
    return by_kind if len(by_kind) > 1 else {}


def _unfinished_warning(metrics: dict[str, Any]) -> str:
    if not metrics.get("unfinished"):
        return ""
    return (
        f'<p class="warn">Unfinished: {_e(metrics["unfinished"])}. These are not the finished model\'s figures, '
        "and vqad export refuses it: finish it with vqad train --resume.</p>"
    )


def _another_product_warning(metrics: dict[str, Any]) -> str:
    found = metrics.get("good_test_unfit") or {}
    if not found.get("of") or found["unfit"] < UNFIT_REFUSED * found["of"]:
        return ""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(found["reasons"].items(), key=lambda kv: -kv[1]))
    return (
        f'<p class="warn">{found["unfit"]} of {found["of"]} good test images would be unfit on the line '
        f"({_e(reasons)}): are they this run's product, camera and lighting? These figures measure another one.</p>"
    )


def _lone_warning(threshold: dict[str, Any]) -> str:
    lone = threshold.get("lone_image")
    if not lone:
        return ""
    return (
        f'<p class="warn">{_e(_shown_name(lone["image"]))} scores {lone["score"]:#.4g}, {lone["ratio"]:.1f} times '
        f"the next good image ({lone['next_score']:#.4g}): {_e(lone['note'])}.</p>"
    )


def _panel_entry(sample: TestSample, score: float) -> tuple[str, str]:
    return panel_path(sample), f"{sample.kind}/{sample.name}{sample.path.suffix}: {float(score):#.4g}"


def _by_kind(test: Sequence[TestSample], scores: np.ndarray) -> list[int]:
    return sorted(range(len(test)), key=lambda i: (test[i].kind != "good", test[i].kind, -float(scores[i])))


def _gallery(out: Path, entries: list[tuple[str, str]], fold: bool = True) -> str:
    """Figures for the pictures of `entries` (path under out, caption) that exist; past
    GALLERY_SHOWN, the rest folded away."""
    figures = [
        f'<figure><a href="{_e(path)}"><img src="{_e(path)}" loading="lazy" alt="{_e(caption)}"></a>'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
        for path, caption in entries
        if (out / path).is_file()
    ]
    if not figures:
        return '<p class="none">none</p>'
    if not fold or len(figures) <= GALLERY_SHOWN:
        return "".join(figures)
    shown, rest = "".join(figures[:GALLERY_SHOWN]), "".join(figures[GALLERY_SHOWN:])
    return f"{shown}<details><summary>{len(figures) - GALLERY_SHOWN} more</summary>{rest}</details>"


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f'<tr><th>{_e(k)}</th><td class="n">{_e(v)}</td></tr>' for k, v in rows) + "</table>"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
