"""Features and logits of a batch of inputs from a feature extractor (FID, Inception Score).

The ``feature_extractor`` contract itself, :class:`~jemkit.contracts.FeatureExtractor`, lives in
:mod:`jemkit.contracts` with the other contracts; it is re-exported here for older imports.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jemkit.contracts import FeatureExtractor

__all__ = ["FeatureExtractor", "extract"]


def extract(extractor: FeatureExtractor, x: Tensor, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Features and logits (float64, CPU) of ``x`` ``[N, ...]`` in batches of ``batch_size``."""
    extractor.eval()
    feats, logits = [], []
    with torch.no_grad():
        for chunk in torch.split(x, batch_size):
            chunk_features, chunk_logits = extractor.features_and_logits(chunk.to(device))
            feats.append(chunk_features.double().cpu())
            logits.append(chunk_logits.double().cpu())
    return torch.cat(feats), torch.cat(logits)
