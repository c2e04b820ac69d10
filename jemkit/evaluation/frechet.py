"""Fréchet distance between Gaussians fitted to feature sets (the FID formula).

``d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})``, computed in float64
with symmetric matrix square roots (eigendecomposition); ``tr((S_1 S_2)^{1/2})`` equals the trace
of that symmetric form.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sqrtm_psd(matrix: Tensor) -> Tensor:
    """The symmetric positive semi-definite square root of a symmetric PSD matrix (float64).

    Tiny negative eigenvalues from rounding are clipped to zero.
    """
    a = matrix.detach().double()
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"sqrtm_psd needs a square matrix, got shape {tuple(a.shape)}")
    a = 0.5 * (a + a.T)
    values, vectors = torch.linalg.eigh(a)
    root = values.clamp(min=0.0).sqrt()
    return (vectors * root) @ vectors.T


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, ``N >= 2``."""
    f = features.detach().double().cpu()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N, D] with N >= 2, got shape {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Squared Fréchet distance (>= 0) between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``."""
    mu1, mu2, sigma1, sigma2 = (t.detach().double().cpu() for t in (mu1, mu2, sigma1, sigma2))
    root1 = sqrtm_psd(sigma1)
    cross = sqrtm_psd(root1 @ sigma2 @ root1)
    value = (mu1 - mu2).pow(2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2.0 * torch.trace(cross)
    return max(float(value), 0.0)


def feature_fid(features1: Tensor, features2: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N1, D]`` and ``[N2, D]``."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
