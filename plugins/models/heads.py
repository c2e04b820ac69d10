"""Built-in energy heads: features to class logits (the energy comes from :class:`EnergyHead`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor, nn

from jemkit import hookimpl
from jemkit.contracts import BuildContext, EnergyHead

if TYPE_CHECKING:
    from jemkit.registry import Registry


@dataclass
class LinearHeadParams:
    """Whether the linear layer has a bias."""

    bias: bool = True


class LinearHead(EnergyHead):
    """One linear layer ``feature_dim -> num_classes``; ``E(x) = -logsumexp(logits)``."""

    def __init__(self, feature_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(feature_dim, num_classes, bias=bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)


def build_linear_head(params: LinearHeadParams, context: BuildContext) -> LinearHead:
    """Linear classifier head: features to class logits."""
    if context.feature_dim is None or context.num_classes is None:
        raise ValueError(
            "head 'linear' needs context.feature_dim and context.num_classes, got "
            f"{context.feature_dim!r} and {context.num_classes!r}"
        )
    return LinearHead(context.feature_dim, context.num_classes, bias=params.bias)


@hookimpl
def jemkit_register_heads(registry: Registry) -> None:
    registry.register(
        "linear",
        build_linear_head,
        params=LinearHeadParams,
        description="Linear layer feature_dim -> num_classes; E(x) = -logsumexp(logits)",
    )
