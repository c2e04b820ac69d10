"""The ``feature_extractor`` contract: inputs to features (for FID) and class logits (for IS).

A registered factory ``factory(params, context) -> FeatureExtractor`` receives the evaluated
model's ``context.input_shape``; inputs are ``[N, *input_shape]`` in ``[-1, 1]``, and the extractor
does any resizing or channel conversion itself.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn


class FeatureExtractor(nn.Module, abc.ABC):
    """Maps inputs in ``[-1, 1]`` to features ``[N, feature_dim]`` and logits ``[N, num_classes]``."""

    feature_dim: int
    num_classes: int
    #: Where the weights came from (file and checksum, or how they were trained), for the report.
    weights: str = ""
    #: Data set whose classes the logits name (``digits``, ``imagenet``); class-conditional sample
    #: accuracy is measured only when it equals the evaluated run's data set.
    data_set: str | None = None

    @abc.abstractmethod
    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``[N, feature_dim]`` and class logits ``[N, num_classes]`` in one pass."""

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[N, feature_dim]``."""
        return self.features_and_logits(x)[0]


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
