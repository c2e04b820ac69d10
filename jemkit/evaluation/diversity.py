"""Sample diversity and generative precision/recall, in the feature space of a feature extractor.

- Diversity: the mean Euclidean distance between the features of two different samples,
  divided by the same mean over real images (of the same class for class-conditional samples).
  1 means samples are as varied as real data; 0 means every sample is the same image (mode
  collapse); it says nothing about whether the samples look real.
- Precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for
  assessing generative models"): each set's manifold is the union of balls around its points,
  each ball's radius the distance to that point's ``k``-th nearest neighbour in the same set.
  Precision is the fraction of samples inside the real manifold (samples look real), recall the
  fraction of real images inside the samples' manifold (samples cover the real variety). Both
  lie in ``[0, 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows of a distance matrix computed at once.
_ROWS = 1024


def _check(features: Tensor, name: str, at_least: int = 2) -> Tensor:
    f = features.detach().double()
    if f.dim() != 2 or f.shape[0] < at_least:
        raise ValueError(f"{name} must be features [N, D] with N >= {at_least}, got shape {tuple(f.shape)}")
    return f


def mean_pairwise_distance(features: Tensor) -> float:
    """Mean Euclidean distance (feature units) over all pairs ``i < j`` of ``features`` ``[N, D]``, ``N >= 2``."""
    f = _check(features, "features")
    total = 0.0
    for start in range(0, len(f), _ROWS):
        total += float(torch.cdist(f[start : start + _ROWS], f).sum())
    n = len(f)
    return total / (n * (n - 1))  # the diagonal is 0, every pair is counted twice


def relative_diversity(sample_features: Tensor, real_features: Tensor) -> float:
    """Mean pairwise distance of the samples over that of the real images (``>= 0``; 1: as varied as real)."""
    real = mean_pairwise_distance(real_features)
    if real <= 0.0:
        raise ValueError("the real features are all identical, so diversity relative to them is undefined")
    return mean_pairwise_distance(sample_features) / real


def class_diversity(
    sample_features: Tensor,
    sample_labels: Tensor,
    real_features: Tensor,
    real_labels: Tensor,
    num_classes: int,
) -> dict[str, object]:
    """Per-class :func:`relative_diversity` of class-conditional samples against real images of the class.

    Returns ``{"per_class": [ratio or None], "mean": mean ratio over defined classes or None}``;
    a class's ratio is ``None`` when it has fewer than two samples or two real images.
    """
    f, r = _check(sample_features, "sample_features"), _check(real_features, "real_features").to(sample_features.device)
    ys, yr = sample_labels.detach().to(f.device).long(), real_labels.detach().to(f.device).long()
    if len(ys) != len(f) or len(yr) != len(r):
        raise ValueError("each feature row needs one label")
    per_class: list[float | None] = []
    for k in range(num_classes):
        fk, rk = f[ys == k], r[yr == k]
        real = mean_pairwise_distance(rk) if len(rk) >= 2 else 0.0
        per_class.append(mean_pairwise_distance(fk) / real if len(fk) >= 2 and real > 0.0 else None)
    defined = [v for v in per_class if v is not None]
    return {"per_class": per_class, "mean": sum(defined) / len(defined) if defined else None}


def knn_radii(features: Tensor, k: int = 3) -> Tensor:
    """Distance ``[N]`` from each row of ``features`` ``[N, D]`` to its ``k``-th nearest other row."""
    f = _check(features, "features", at_least=k + 1)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    radii = []
    for start in range(0, len(f), _ROWS):
        distances = torch.cdist(f[start : start + _ROWS], f)
        # the k+1 smallest include the point itself (distance 0): the last is the k-th other row
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """Whether each of ``points`` lies within ``radii[i]`` of some ``centres[i]`` (bool ``[N]``)."""
    hits = []
    for start in range(0, len(points), _ROWS):
        distances = torch.cdist(points[start : start + _ROWS], centres)
        hits.append((distances <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(hits)


def precision_recall(real_features: Tensor, sample_features: Tensor, k: int = 3) -> tuple[float, float]:
    """Generative ``(precision, recall)`` in ``[0, 1]`` with ``k``-NN manifolds (Kynkäänniemi et al. 2019).

    Both sets need more than ``k`` rows; the paper uses ``k = 3`` and equal set sizes.
    """
    real = _check(real_features, "real_features", at_least=k + 1)
    fake = _check(sample_features, "sample_features", at_least=k + 1).to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and sample features need the same width, got {real.shape[1]} and {fake.shape[1]}")
    precision = float(_inside(fake, real, knn_radii(real, k)).double().mean())
    recall = float(_inside(real, fake, knn_radii(fake, k)).double().mean())
    return precision, recall
