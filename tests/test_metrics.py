import numpy as np
import pytest
from scipy import ndimage

from train.metrics import aupro, f1_max, image_auroc, pixel_auroc


def brute_force_aupro(masks, maps, fpr_limit=0.3, steps=4000):
    """Reference: sweep thresholds, measure per-region overlap and FPR directly, integrate."""
    per_image_regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        per_image_regions += [(i, lab == r) for r in range(1, n + 1)]
    neg = ~masks
    thresholds = np.linspace(maps.max() + 1e-9, maps.min() - 1e-9, steps)
    fprs, pros = [], []
    for t in thresholds:
        above = maps >= t
        fprs.append((above & neg).sum() / neg.sum())
        pros.append(np.mean([above[i][r].mean() for i, r in per_image_regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x, y = fprs[keep], pros[keep]
    y_lim = np.interp(fpr_limit, fprs, pros)
    x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return np.trapezoid(y, x) / fpr_limit


def test_aupro_matches_brute_force():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 24, 24), bool)
    masks[0, 3:8, 3:8] = True
    masks[0, 15:20, 10:22] = True  # two regions in one image
    masks[1, 10:13, 2:20] = True
    maps = rng.random((4, 24, 24)) + 0.8 * masks + 0.3 * rng.random((4, 24, 24)) * masks
    ours = aupro(masks, maps)
    ref = brute_force_aupro(masks, maps)
    assert ours == pytest.approx(ref, abs=2e-3)
    assert 0.0 < ours < 1.0


def test_aupro_perfect_and_useless_maps():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    # A constant map is one operating point (0,0)->(1,1): chance, the diagonal, area 0.3^2/2 / 0.3.
    assert aupro(masks, np.zeros((2, 16, 16))) == pytest.approx(0.15)


def test_auroc_and_f1_against_pairwise_and_exhaustive_references():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = rng.random(60) + 0.5 * labels
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert image_auroc(labels, scores) == pytest.approx(pairwise)
    best = 0.0
    for t in scores:
        pred = scores >= t
        tp = (pred & (labels == 1)).sum()
        prec, rec = tp / max(pred.sum(), 1), tp / (labels == 1).sum()
        best = max(best, 2 * prec * rec / max(prec + rec, 1e-12))
    assert f1_max(labels, scores)[0] == pytest.approx(best)
    masks = rng.random((3, 8, 8)) > 0.8
    maps = rng.random((3, 8, 8)) + masks
    y, s = masks.ravel(), maps.ravel()
    ref = np.mean([(p > n) for p in s[y] for n in s[~y]])
    assert pixel_auroc(masks, maps) == pytest.approx(ref)


def test_threshold_sits_clear_of_the_validation_quantile():
    """The quantile image must pass in FP16 too: the threshold keeps a margin above it larger
    than the FP16 graph's score error (about 0.2%)."""
    import numpy as np

    from edge.threshold import calibrate_threshold

    scores = np.linspace(1.0, 2.0, 101)
    cal = calibrate_threshold(scores, target_frr=0.01, source={"by": "test"})
    assert cal["score_at_quantile"] == 1.99
    assert cal["value"] >= cal["score_at_quantile"] * 1.005
    assert (scores >= cal["value"]).sum() <= 1  # at most the single image above the quantile fails


def test_a_threshold_set_on_too_few_images_is_warned_of(caplog):
    """Three good images set a threshold whose false-reject bound is 63%: the calibration says so
    in a warning with how many would do (29); 29 images, none over the threshold, are quiet."""
    import numpy as np

    from edge.threshold import calibrate_threshold

    with caplog.at_level("WARNING", logger="edge.threshold"):
        calibrate_threshold(np.array([1.0, 1.1, 1.2]), target_frr=0.01, source={"by": "test"})
    assert "only 3 good images set the threshold" in caplog.text and "up to 63%" in caplog.text
    assert "29 or more, none over it, bound that under 10%" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="edge.threshold"):
        calibrate_threshold(np.linspace(1.0, 1.1, 29), target_frr=0.01, source={"by": "test"})
    assert not caplog.records, caplog.text


def test_a_good_image_that_alone_sets_the_threshold_is_named(caplog):
    """One good image far above the rest sets the threshold: it is named, with its ratio to the
    next, and a warning says so; a tail without such an image names none."""
    import numpy as np

    from edge.threshold import calibrate_threshold

    scores = np.concatenate([np.linspace(1.0, 3.0, 91), [9.0]])
    names = [f"good_{i:03d}.png" for i in range(92)]
    with caplog.at_level("WARNING", logger="edge.threshold"):
        cal = calibrate_threshold(scores, target_frr=0.01, source={"by": "test"}, names=names)
    assert cal["score_at_quantile"] == 9.0
    assert cal["lone_image"]["image"] == "good_091.png" and cal["lone_image"]["ratio"] == 3.0
    assert "good_091.png" in caplog.text and "higher --target-frr" in cal["lone_image"]["note"]
    assert [h["image"] for h in cal["highest_images"]] == [
        "good_091.png",
        *(f"good_{i:03d}.png" for i in (90, 89, 88, 87)),
    ]
    even = calibrate_threshold(scores[:91], target_frr=0.01, source={"by": "test"})
    assert even["lone_image"] is None and even["highest_images"][0] == {"image": "#90", "score": 3.0}
    with pytest.raises(ValueError, match="names"):
        calibrate_threshold(scores, target_frr=0.01, source={"by": "test"}, names=names[:3])


def test_a_score_that_is_not_a_number_calibrates_nothing():
    """A NaN threshold would pass every frame, and a NaN defect is neither caught nor missed:
    the images without a finite score are named instead."""
    import numpy as np

    from edge.errors import DataError
    from edge.threshold import calibrate_threshold, defect_check

    scores = np.array([1.0, np.nan, 2.0, np.inf])
    names = ["a.png", "b.png", "c.png", "d.png"]
    with pytest.raises(DataError, match=r"2 good images got no finite score from the model \(b.png, d.png\)"):
        calibrate_threshold(scores, target_frr=0.01, source={"by": "test"}, names=names)
    with pytest.raises(DataError, match=r"2 defect images .*\(#1, #3\)"):
        defect_check(scores, 1.5, source={"by": "test"})


def test_the_false_reject_bound_is_clopper_pearson():
    from edge.threshold import frr_upper_bound

    assert abs(frr_upper_bound(24, 0) - (1 - 0.05 ** (1 / 24))) < 1e-12  # about 3 / n
    assert frr_upper_bound(300, 0) < 0.01 < frr_upper_bound(100, 0)
    assert abs(frr_upper_bound(100, 1) - 0.0466) < 5e-4 and abs(frr_upper_bound(100, 5) - 0.1023) < 5e-4
    assert frr_upper_bound(10, 10) == 1.0 and frr_upper_bound(0, 0) == 1.0


def test_miss_rate_at_a_false_reject_rate():
    import numpy as np

    from train.evaluate import miss_rate_at_frr

    labels = np.array([0] * 100 + [1] * 10)
    scores = np.concatenate([np.arange(100.0), [5, 50, 95, 98.5, 99.5, 200, 300, 400, 500, 600]])
    # 1% of 100 good: cut at 99 -> defects at or below it pass: 5, 50, 95, 98.5 -> 40%.
    assert miss_rate_at_frr(labels, scores, 0.01) == 0.4
    # 5%: cut at 95 -> 5, 50, 95 pass -> 30%.
    assert miss_rate_at_frr(labels, scores, 0.05) == 0.3
    assert miss_rate_at_frr(np.zeros(3, int), np.ones(3), 0.01) is None


def test_a_figure_that_cannot_be_computed_is_none():
    good_only = np.zeros(6, int)
    scores = np.linspace(0.0, 1.0, 6)
    assert image_auroc(good_only, scores) is None and f1_max(good_only, scores) == (None, None)
    no_defect_pixels = np.zeros((2, 8, 8), bool)
    assert pixel_auroc(no_defect_pixels, np.random.default_rng(0).random((2, 8, 8))) is None
    assert aupro(no_defect_pixels, np.random.default_rng(0).random((2, 8, 8))) is None
    assert pixel_auroc(np.zeros((0, 8, 8), bool), np.zeros((0, 8, 8))) is None  # no masks at all
