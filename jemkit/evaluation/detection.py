"""Out-of-distribution detection metrics from per-example scores.

Convention: in-distribution inputs are the *positive* class and a higher score means "more
in-distribution" (e.g. ``log p(x) = -E(x)``). AUROC is the probability that a random
in-distribution input scores above a random OOD input (ties count one half); FPR95 is the fraction
of OOD inputs accepted at the threshold that accepts 95 % of the in-distribution inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC


def _check(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    s_in = scores_in.detach().cpu().double().flatten()
    s_out = scores_out.detach().cpu().double().flatten()
    if s_in.numel() == 0 or s_out.numel() == 0:
        raise ValueError("AUROC and FPR need at least one in-distribution and one OOD score")
    if not (torch.isfinite(s_in).all() and torch.isfinite(s_out).all()):
        raise ValueError("OOD scores must be finite")
    return s_in, s_out


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve in ``[0, 1]`` (torchmetrics ``BinaryAUROC``), in-distribution positive.

    Scores are rescaled affinely to ``[0, 1]`` in float64 first: torchmetrics applies a sigmoid to
    values outside ``[0, 1]``, which would saturate large scores such as ``log p(x)`` into ties.
    """
    s_in, s_out = _check(scores_in, scores_out)
    scores = torch.cat([s_in, s_out])
    low, high = scores.min(), scores.max()
    scaled = (scores - low) / (high - low) if high > low else torch.full_like(scores, 0.5)
    target = torch.cat([torch.ones_like(s_in), torch.zeros_like(s_out)]).long()
    return float(BinaryAUROC(thresholds=None)(scaled, target))


def fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold whose true-positive rate is at least ``tpr``.

    The threshold ``t`` is the ``ceil(tpr * n_in)``-th largest in-distribution score, so that
    ``mean(scores_in >= t) >= tpr``; the result is ``mean(scores_out >= t)`` in ``[0, 1]``.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    s_in, s_out = _check(scores_in, scores_out)
    k = max(1, math.ceil(tpr * s_in.numel() - 1e-9))
    threshold = torch.sort(s_in, descending=True).values[k - 1]
    return float((s_out >= threshold).double().mean())
