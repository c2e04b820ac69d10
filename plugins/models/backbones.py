"""Built-in backbones: the JEM Wide-ResNet, a small conv net for tiny images, and an MLP.

Every backbone maps ``[N, *context.input_shape]`` to features ``[N, feature_dim]`` and works
for any channel count and image size (global pooling is adaptive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor, nn

from jemkit import hookimpl
from jemkit.contracts import Backbone, BuildContext

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: Normalisation layers a backbone may use between convolutions.
NORMS: tuple[str, ...] = ("none", "batch", "group", "layer", "instance")
#: Activations the MLP backbone accepts.
ACTIVATIONS: tuple[str, ...] = ("swish", "leaky_relu", "elu", "tanh")


def check_norm(norm: str) -> None:
    """Raise a ``ValueError`` naming the choices unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups`` and leaves at least
    ``min_per_group`` channels per group (1 when none does)."""
    limit = min(max_groups, channels // min_per_group)
    return next((g for g in range(limit, 0, -1) if channels % g == 0), 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer for ``[N, channels, H, W]`` feature maps.

    ``group`` uses :func:`group_count` groups (at most 32, at least 4 channels each, so narrow
    layers do not degenerate into instance norm), ``layer`` is ``GroupNorm(1, C)`` and
    ``instance`` is ``GroupNorm(C, C)`` (per-channel, per-sample, affine, no running stats).
    """
    check_norm(kind)
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.GroupNorm(channels, channels)


def _image_shape(context: BuildContext, name: str) -> tuple[int, int, int]:
    shape = context.input_shape
    if shape is None or len(shape) != 3:
        raise ValueError(f"backbone {name!r} needs an image input_shape (C, H, W), got {shape!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")


# --------------------------------------------------------------------------- Wide-ResNet


@dataclass
class WideResNetParams:
    """Wide-ResNet size and regularisation (JEM default: WRN-28-10, no norm, no dropout)."""

    #: Layers, 6n+4 (10, 16, 22, 28, ...): n pre-activation blocks in each of the 3 groups.
    depth: int = 28
    #: Channel multiplier: groups of 16k, 32k and 64k channels (features: 64 * widen_factor).
    widen_factor: int = 10
    #: Normalisation: none (JEM), batch (JEM++), group, layer or instance.
    norm: str = "none"
    #: Dropout probability between the two convolutions of a block.
    dropout: float = 0.0
    #: Negative slope of the LeakyReLU activations (JEM: 0.2).
    leak: float = 0.2

    def __post_init__(self) -> None:
        if self.depth < 10 or (self.depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {self.depth}")
        if self.widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {self.widen_factor}")
        check_norm(self.norm)
        _check_dropout(self.dropout)


class WideBasic(nn.Module):
    """Pre-activation basic block: norm, act, conv3x3, dropout, norm, act, conv3x3 (strided), plus shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, dropout: float, leak: float) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm2 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1)
        self.act = nn.LeakyReLU(leak)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.conv1(self.act(self.norm1(x))))
        out = self.conv2(self.act(self.norm2(out)))
        return out + self.shortcut(x)


class WideResNet(Backbone):
    """The JEM Wide-ResNet: stem conv, three groups of pre-activation blocks, norm, act, average pool.

    ``depth = 6n + 4`` gives ``n`` blocks per group; widths are 16, 16k, 32k, 64k with group strides
    1, 2, 2, so ``feature_dim = 64 * widen_factor`` (640 for WRN-28-10).
    """

    def __init__(self, in_channels: int, params: WideResNetParams) -> None:
        super().__init__()
        n = (params.depth - 4) // 6
        k = params.widen_factor
        widths = [16, 16 * k, 32 * k, 64 * k]
        #: The stem convolution (PYLD-style samplers step through it separately).
        self.first_layer = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        groups: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(WideBasic(in_planes, planes, stride if i == 0 else 1, params.norm, params.dropout, params.leak))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        self.final_norm = make_norm(params.norm, widths[3])
        self.act = nn.LeakyReLU(params.leak)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[3]

    def forward(self, x: Tensor) -> Tensor:
        out = self.first_layer(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.act(self.final_norm(out))
        return self.pool(out).flatten(1)


def build_wide_resnet(params: WideResNetParams, context: BuildContext) -> WideResNet:
    """JEM Wide-ResNet (pre-activation, LeakyReLU, optional norm); 640-d features for WRN-28-10."""
    channels, _, _ = _image_shape(context, "wrn")
    return WideResNet(channels, params)


# --------------------------------------------------------------------------- small conv net


@dataclass
class ConvNetParams:
    """Widths of the conv stages (the first at full resolution, each later one halves it)."""

    channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    feature_dim: int = 256
    norm: str = "none"
    leak: float = 0.2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(self.channels)}")
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {self.feature_dim}")
        check_norm(self.norm)
        _check_dropout(self.dropout)


class ConvNet(Backbone):
    """Conv3x3 stages (stride 1, then stride 2 each), each conv-norm-act; average pool; linear; act."""

    def __init__(self, in_channels: int, params: ConvNetParams) -> None:
        super().__init__()
        widths = [int(c) for c in params.channels]
        #: The stem convolution (PYLD-style samplers step through it separately).
        self.first_layer = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = [make_norm(params.norm, widths[0]), nn.LeakyReLU(params.leak)]
        prev = widths[0]
        for width in widths[1:]:
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), make_norm(params.norm, width), nn.LeakyReLU(params.leak)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(params.dropout) if params.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(prev, params.feature_dim)
        self.act = nn.LeakyReLU(params.leak)
        self.feature_dim = params.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.features(self.first_layer(x))).flatten(1)
        return self.act(self.fc(self.dropout(out)))


def build_convnet(params: ConvNetParams, context: BuildContext) -> ConvNet:
    """Small LeakyReLU conv net for tiny images such as 8x8 digits; fast on CPU."""
    channels, _, _ = _image_shape(context, "convnet")
    return ConvNet(channels, params)


# --------------------------------------------------------------------------- MLP


@dataclass
class MLPParams:
    """Hidden widths (the last one is the feature width) and the activation after each layer."""

    hidden: list[int] = field(default_factory=lambda: [128, 128, 128])
    activation: str = "swish"

    def __post_init__(self) -> None:
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name == "swish":
        return nn.SiLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "elu":
        return nn.ELU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class MLP(Backbone):
    """Flattens the input, then linear + activation per hidden width; features are the last hidden layer."""

    def __init__(self, in_features: int, params: MLPParams) -> None:
        super().__init__()
        widths = [int(h) for h in params.hidden]
        self.first_layer = nn.Linear(in_features, widths[0])
        layers: list[nn.Module] = [make_activation(params.activation)]
        for prev, width in zip(widths, widths[1:]):
            layers += [nn.Linear(prev, width), make_activation(params.activation)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.first_layer(x.flatten(1)))


def build_mlp(params: MLPParams, context: BuildContext) -> MLP:
    """MLP on flattened inputs of any shape (2-D toy data, vectors); swish by default."""
    if context.input_shape is None:
        raise ValueError("backbone 'mlp' needs context.input_shape")
    return MLP(math.prod(context.input_shape), params)


# --------------------------------------------------------------------------- registration


@hookimpl
def jemkit_register_backbones(registry: Registry) -> None:
    registry.register(
        "wrn",
        build_wide_resnet,
        params=WideResNetParams,
        description="JEM Wide-ResNet (pre-activation, LeakyReLU 0.2, optional norm); 64*widen_factor features",
    )
    registry.register(
        "convnet",
        build_convnet,
        params=ConvNetParams,
        description="Small LeakyReLU conv net for tiny images (8x8 digits); fast on CPU",
    )
    registry.register(
        "mlp",
        build_mlp,
        params=MLPParams,
        description="MLP on flattened inputs (2-D toy data, vectors); last hidden width is the feature width",
    )
