"""Inception Score: ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean prediction of each split.

It lies in ``[1, K]`` for ``K`` classes: 1 when every prediction is the same, ``K`` when predictions
are one-hot and spread evenly over the classes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def inception_score(probs: Tensor, splits: int = 1) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` equal parts of the IS of ``probs`` ``[N, K]`` (rows sum to 1)."""
    p = probs.detach().double().cpu()
    if p.dim() != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"need probabilities [N, K] with N >= splits >= 1, got {tuple(p.shape)} and {splits}")
    values = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal.expand_as(part))).sum(1)
        values.append(float(torch.exp(kl.mean())))
    scores = torch.tensor(values, dtype=torch.float64)
    std = float(scores.std(correction=0)) if len(values) > 1 else 0.0
    return float(scores.mean()), std


def inception_score_from_logits(logits: Tensor, splits: int = 1) -> tuple[float, float]:
    """:func:`inception_score` of ``softmax(logits)`` (computed in float64)."""
    return inception_score(torch.softmax(logits.detach().double(), dim=1), splits)
