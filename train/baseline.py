"""The per-pixel Gaussian baseline: mean and std of the good training images at each
pixel; the anomaly map is the largest |x - mean| / std over channels, the score its max.
It is the reference that `vqad synth` defects must defeat (image AUROC < 0.85)."""

from __future__ import annotations

import numpy as np


class PixelGaussian:
    def fit(self, images: np.ndarray) -> PixelGaussian:
        """images: (M, H, W, C) uint8 good images."""
        x = images.astype(np.float32)
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0) + 1.0  # +1 grey level: a constant pixel must not divide by zero
        return self

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (maps (M, H, W), scores (M,))."""
        z = np.abs(images.astype(np.float32) - self.mean) / self.std
        maps = z.max(axis=3)
        return maps, maps.reshape(len(maps), -1).max(axis=1)
