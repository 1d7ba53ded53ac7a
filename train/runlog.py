"""A run's training curves: metrics.csv (always) and TensorBoard events (when installed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

CSV_FIELDS = (
    "step",
    "elapsed_s",
    "loss",
    "recon_l2",
    "recon_ssim",
    "vq_loss",
    "perplexity",
    "used_codes",
    "dead_restarted",
    "lr",
    "images_per_s",
    "val_l2",
    "head_loss",
)


class MetricsLog:
    """metrics.csv (always) and TensorBoard events (when tensorboard is installed)."""

    def __init__(self, run_dir: Path, append: bool):
        self.path = run_dir / "metrics.csv"
        new = not (append and self.path.exists())
        self.fh = open(self.path, "w" if new else "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=CSV_FIELDS)
        if new:
            self.writer.writeheader()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - tensorboard is an optional extra
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        self.fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()
