"""Report pictures: ROC, codebook usage and PCA, training curves (the score histogram is
edge.histogram's, which `vqad calibrate` draws too)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def roc_plot(path: Path, fpr: np.ndarray, tpr: np.ndarray, auroc: float) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def codebook_plot(path: Path, counts: np.ndarray, codebook: np.ndarray) -> None:
    """Left: usage per code (dead codes in red). Right: PCA of the codes, sized by usage."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    dead = counts == 0
    order = np.argsort(-counts)
    a.bar(np.arange(len(counts)), counts[order], color=np.where(dead[order], "tab:red", "tab:blue"), width=1.0)
    p = counts / max(1, counts.sum())
    perplexity = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    a.set_title(
        f"code usage: {int((~dead).sum())}/{len(counts)} used, {int(dead.sum())} dead, perplexity {perplexity:.1f}"
    )
    a.set_xlabel("code (sorted by usage)")
    a.set_ylabel("count")
    centred = codebook - codebook.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    sizes = 5 + 200 * counts / max(1, counts.max())
    b.scatter(xy[~dead, 0], xy[~dead, 1], s=sizes[~dead], alpha=0.6, label="used")
    b.scatter(xy[dead, 0], xy[dead, 1], s=8, color="tab:red", marker="x", label="dead")
    b.set_title("codebook PCA (size = usage)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_plot(metrics_csv: Path, path: Path) -> bool:
    """Render training curves from metrics.csv; False when there is nothing to plot."""
    if not metrics_csv.is_file():
        return False
    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return False
    step = np.array([float(r["step"]) for r in rows])

    def col(name: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(float(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        return (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])) if pairs else (step[:0], step[:0])

    panels = [
        ("loss", ["loss", "vq_loss"]),
        ("reconstruction", ["recon_l2", "val_l2"]),
        ("SSIM loss", ["recon_ssim"]),
        ("codebook", ["perplexity", "used_codes"]),
        ("dead codes restarted", ["dead_restarted"]),
        ("learning rate", ["lr"]),
        ("images / s", ["images_per_s"]),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, (title, names) in zip(axes.ravel(), panels, strict=False):
        for name in names:
            x, y = col(name)
            if len(x):
                ax.plot(x, y, label=name, marker="." if name == "val_l2" else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title in ("loss", "reconstruction"):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes.ravel()[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
