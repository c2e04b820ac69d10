"""Built-in backbones and the linear head: shapes, sizes, validation, energy sign convention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jemkit.contracts import Backbone, BuildContext, EnergyHead, JointEnergyModel
from jemkit.registry import Registry
from jemkit_plugins.models import backbones, heads
from jemkit_plugins.models.backbones import (
    NORMS,
    ConvNetParams,
    MLPParams,
    WideResNetParams,
    build_convnet,
    build_mlp,
    build_wide_resnet,
    make_norm,
)
from jemkit_plugins.models.heads import LinearHeadParams, build_linear_head

SHAPES = [(1, 8, 8), (3, 32, 32), (3, 16, 16)]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_features(backbone: Backbone, shape: tuple[int, ...], n: int = 3) -> None:
    """Output ``[n, feature_dim]``, finite, and differentiable with respect to the input."""
    x = torch.randn(n, *shape, requires_grad=True)
    out = backbone(x)
    assert out.shape == (n, backbone.feature_dim)
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_registration() -> None:
    backbone_registry, head_registry = Registry("backbone"), Registry("head")
    backbones.jemkit_register_backbones(registry=backbone_registry)
    heads.jemkit_register_heads(registry=head_registry)
    assert backbone_registry.names() == ["convnet", "mlp", "wrn"]
    assert backbone_registry.get("wrn").params is WideResNetParams
    assert head_registry.names() == ["linear"]


def test_wrn_28_10_size() -> None:
    wrn = build_wide_resnet(WideResNetParams(), BuildContext(input_shape=(3, 32, 32)))
    assert isinstance(wrn, Backbone)
    assert wrn.feature_dim == 640
    # JEM WRN-28-10 without norm (conv biases, 1x1 shortcuts where the shape changes), by hand:
    # stem 448; group 1: 1,639,840; group 2: 6,966,080; group 3: 27,858,560.
    assert n_params(wrn) == 36_464_928
    assert isinstance(wrn.first_layer, nn.Conv2d) and wrn.first_layer.in_channels == 3
    # Stem + 3 groups x 4 blocks x 2 convs = 25 3x3 convs, plus three 1x1 shortcut convs.
    convs = [m for m in wrn.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 25 and len(convs) == 28


def test_wrn_uses_leaky_relu_0_2() -> None:
    wrn = build_wide_resnet(WideResNetParams(depth=10, widen_factor=1), BuildContext(input_shape=(3, 8, 8)))
    slopes = {m.negative_slope for m in wrn.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d, nn.GroupNorm)) for m in wrn.modules())


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_small_wrn_any_shape_any_norm(norm: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    wrn = build_wide_resnet(
        WideResNetParams(depth=10, widen_factor=2, norm=norm, dropout=0.1), BuildContext(input_shape=shape)
    )
    assert wrn.feature_dim == 128
    check_features(wrn, shape)
    wrn.eval()
    check_features(wrn, shape)


@pytest.mark.parametrize("norm", NORMS)
def test_make_norm(norm: str) -> None:
    layer = make_norm(norm, 160)
    x = torch.randn(4, 160, 5, 5)
    assert layer(x).shape == x.shape
    if norm == "none":
        assert isinstance(layer, nn.Identity)
    if norm == "group":
        assert isinstance(layer, nn.GroupNorm) and 160 % layer.num_groups == 0 and layer.num_groups > 1


@pytest.mark.parametrize("depth", [27, 26, 4, 0])
def test_wrn_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNetParams(depth=depth)


@pytest.mark.parametrize("params", [WideResNetParams, ConvNetParams])
def test_bad_norm_lists_choices(params: type) -> None:
    with pytest.raises(ValueError) as info:
        params(norm="batchnorm")
    assert all(choice in str(info.value) for choice in NORMS)


def test_bad_activation_and_sizes() -> None:
    with pytest.raises(ValueError, match="swish, leaky_relu, elu, tanh"):
        MLPParams(activation="relu")
    with pytest.raises(ValueError):
        MLPParams(hidden=[])
    with pytest.raises(ValueError):
        ConvNetParams(channels=[])
    with pytest.raises(ValueError):
        WideResNetParams(dropout=1.0)
    with pytest.raises(ValueError, match="input_shape"):
        build_wide_resnet(WideResNetParams(depth=10, widen_factor=1), BuildContext(input_shape=(2,)))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_convnet(norm: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = build_convnet(ConvNetParams(channels=[8, 16, 32], feature_dim=24, norm=norm), BuildContext(input_shape=shape))
    assert net.feature_dim == 24 and isinstance(net.first_layer, nn.Conv2d)
    check_features(net, shape)


def test_convnet_default() -> None:
    net = build_convnet(ConvNetParams(), BuildContext(input_shape=(1, 8, 8)))
    assert net.feature_dim == 256
    check_features(net, (1, 8, 8), n=64)


@pytest.mark.parametrize("activation", ["swish", "leaky_relu", "elu", "tanh"])
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (3, 4, 5)])
def test_mlp(activation: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = build_mlp(MLPParams(hidden=[16, 32], activation=activation), BuildContext(input_shape=shape))
    assert net.feature_dim == 32
    check_features(net, shape)


def test_state_dict_has_no_aliased_entries() -> None:
    """Each tensor appears once (safetensors refuses shared storage)."""
    ctx = BuildContext(input_shape=(1, 8, 8))
    for net in (
        build_wide_resnet(WideResNetParams(depth=10, widen_factor=1), ctx),
        build_convnet(ConvNetParams(channels=[4, 8]), ctx),
        build_mlp(MLPParams(hidden=[4]), ctx),
    ):
        ptrs = [t.data_ptr() for t in net.state_dict().values() if t.numel() > 0]
        assert len(ptrs) == len(set(ptrs))


def test_linear_head_energy_by_hand() -> None:
    head = build_linear_head(LinearHeadParams(), BuildContext(feature_dim=2, num_classes=3))
    assert isinstance(head, EnergyHead) and head.num_classes == 3
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.fc.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    features = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    logits = head(features)
    # Row 0: logits (0, 0, -1); row 1: (1, 2, 2).
    torch.testing.assert_close(logits, torch.tensor([[0.0, 0.0, -1.0], [1.0, 2.0, 2.0]]))
    expected = torch.tensor([-math.log(2 + math.exp(-1)), -math.log(math.e + 2 * math.e**2)])
    torch.testing.assert_close(head.energy(logits), expected)
    torch.testing.assert_close(head.energy(logits, torch.tensor([2, 0])), torch.tensor([1.0, -1.0]))


def test_linear_head_without_bias_and_missing_context() -> None:
    head = build_linear_head(LinearHeadParams(bias=False), BuildContext(feature_dim=5, num_classes=4))
    assert head.fc.bias is None and head(torch.zeros(2, 5)).shape == (2, 4)
    with pytest.raises(ValueError, match="feature_dim"):
        build_linear_head(LinearHeadParams(), BuildContext(num_classes=4))


def test_joint_energy_model_matches_head() -> None:
    torch.manual_seed(0)
    ctx = BuildContext(input_shape=(1, 8, 8), num_classes=10)
    backbone = build_convnet(ConvNetParams(channels=[8, 16], feature_dim=12), ctx)
    ctx.feature_dim = backbone.feature_dim
    model = JointEnergyModel(backbone, build_linear_head(LinearHeadParams(), ctx))
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 3, 9, 3, 1])
    logits = model.logits(x)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(model.energy(x), -torch.logsumexp(logits, dim=1))
    torch.testing.assert_close(model.energy(x, y), -logits[torch.arange(5), y])
    assert (model.energy(x) <= model.energy(x, y)).all()


def test_group_norm_never_degenerates_into_instance_norm():
    from jemkit_plugins.models.backbones import group_count

    assert group_count(640) == 32 and group_count(160) == 32
    assert group_count(16) == 4 and group_count(8) == 2 and group_count(32) == 8
    assert group_count(3) == 1 and group_count(6) == 1
    for channels in range(1, 700):
        groups = group_count(channels)
        assert channels % groups == 0 and groups <= 32
        assert groups == 1 or channels // groups >= 4
