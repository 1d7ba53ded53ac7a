"""Detection metrics: image and pixel AUROC (scikit-learn), F1-max, and AUPRO (our own,
checked against a brute-force reference in tests/test_metrics.py)."""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


def figure(value: float | None, digits: int = 3) -> str:
    """A metric for a person to read: `digits` decimals, or "-" where it cannot be computed."""
    return "-" if value is None else f"{value:.{digits}f}"


def percent(rate: float | None) -> str:
    """A rate for a person to read, e.g. "2.5%", or "-" where it cannot be computed."""
    return "-" if rate is None else f"{rate:.1%}"


def _both_classes(labels: np.ndarray) -> bool:
    labels = np.asarray(labels)
    return labels.size > 0 and labels.min() != labels.max()


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of image scores; None when only one class is present (a figure that cannot be
    computed is null in every report, never NaN, which strict JSON readers refuse)."""
    if not _both_classes(labels):
        return None
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """ROC AUC over all pixels of the given (M, H, W) masks and maps; None without both
    defect and good pixels (no masks, or no defect among the masked images)."""
    y = np.asarray(masks).ravel().astype(np.uint8)
    if not _both_classes(y):
        return None
    return float(roc_auc_score(y, np.asarray(maps, dtype=np.float64).ravel()))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """The best F1 over all thresholds on image scores, and the threshold that reaches it;
    (None, None) when only one class is present."""
    if not _both_classes(labels):
        return None, None
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # with both classes there is at least one threshold
    return float(f1[best]), float(thresholds[best])


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Area under the per-region-overlap curve up to `fpr_limit`, normalised by it; None
    without a defect region or an anomaly-free pixel.

    Every 8-connected component of every ground-truth mask is one region. As the
    threshold falls, PRO is the mean over regions of the fraction of the region above
    the threshold, and FPR the fraction of anomaly-free pixels above it. Exact in the
    thresholds: all distinct map values are used, ties processed together.
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    weights = np.zeros(masks.shape, dtype=np.float64)  # PRO weight of each region pixel
    n_regions = 0
    for i in range(masks.shape[0]):
        n, labels = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
        for r in range(1, n):
            region = labels == r
            weights[i][region] = 1.0 / region.sum()
            n_regions += 1
    negatives = ~masks
    n_neg = int(negatives.sum())
    if n_regions == 0 or n_neg == 0:
        return None
    scores = maps.ravel()
    order = np.argsort(-scores, kind="mergesort")
    s_sorted = scores[order]
    pro = np.cumsum(weights.ravel()[order]) / n_regions
    fpr = np.cumsum(negatives.ravel()[order]) / n_neg
    # Keep the last index of each run of equal scores: a threshold takes all ties at once.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    fpr, pro = np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]
    if fpr[-1] < fpr_limit:
        fpr, pro = np.r_[fpr, fpr_limit], np.r_[pro, pro[-1]]
    cut = np.searchsorted(fpr, fpr_limit, side="right")
    pro_at_limit = np.interp(fpr_limit, fpr[cut - 1 : cut + 1], pro[cut - 1 : cut + 1]) if cut < len(fpr) else pro[-1]
    x = np.r_[fpr[:cut], fpr_limit]
    y = np.r_[pro[:cut], pro_at_limit]
    return float(np.trapezoid(y, x) / fpr_limit)
