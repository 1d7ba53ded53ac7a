"""Scoring: input, reconstruction and head probability -> anomaly map and image score, as a
weighted sum of terms (`scorer.py`), each a small module with calibrate / forward / describe."""

from train.scoring.base import GoodImages, Term, TermInputs
from train.scoring.filters import (
    SSIM,
    GaussianBlur,
    circular_filter,
    dft_matrix,
    gaussian_kernel1d,
    gms_map,
    separable_filter,
    separable_kernels,
    ssim_map,
)
from train.scoring.scorer import TERMS, AnomalyScorer, ScorerPlan, initial_plan, template_settings

__all__ = [
    "SSIM",
    "TERMS",
    "AnomalyScorer",
    "GaussianBlur",
    "GoodImages",
    "ScorerPlan",
    "Term",
    "TermInputs",
    "circular_filter",
    "dft_matrix",
    "gaussian_kernel1d",
    "gms_map",
    "initial_plan",
    "separable_filter",
    "separable_kernels",
    "ssim_map",
    "template_settings",
]
