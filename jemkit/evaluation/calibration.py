"""Calibration of ``p(y|x)``: expected calibration error (torchmetrics) and reliability-diagram bins.

Bins split the top-1 confidence ``max_y p(y|x)`` into ``bins`` equal-width intervals of ``[0, 1]``;
ECE is ``sum_b |acc_b - conf_b| * n_b / n`` (the L1 calibration error).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassCalibrationError


def expected_calibration_error(probs: Tensor, targets: Tensor, bins: int = 15) -> float:
    """ECE in ``[0, 1]`` of class probabilities ``probs`` ``[N, C]`` (rows sum to 1) for labels ``targets`` ``[N]``."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=bins, norm="l1")
    return float(metric(probs.detach().cpu().double(), targets.detach().cpu().long()))


def reliability_bins(probs: Tensor, targets: Tensor, bins: int = 15) -> dict[str, list[float]]:
    """Per-bin ``lower``/``upper`` edges, mean ``confidence``, ``accuracy`` and ``count`` (for the diagram).

    Bin ``b`` holds confidences in ``[b/bins, (b+1)/bins)``; a confidence of exactly 1 joins the last
    bin. Empty bins report confidence and accuracy 0 with count 0.
    """
    probs = probs.detach().cpu().double()
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets.detach().cpu().long()).double()
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).scatter_add_(0, index, correct)
    safe = count.clamp(min=1.0)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
        "count": count.tolist(),
    }
