"""Contract tests: every registered component, built-in or installed, is built and run on a batch.

A new component is enrolled automatically; give it small parameters in ``SMALL`` if its
defaults are too heavy for a CPU test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jemkit.config import build_params
from jemkit.contracts import (
    Backbone,
    Batch,
    BuildContext,
    ChainInit,
    DataSplits,
    EnergyHead,
    JointEnergyModel,
    Loss,
    Transition,
)
from jemkit.plugin_manager import load_plugins
from jemkit.sampler import Sampler
from jemkit_plugins.models.heads import LinearHead
from jemkit_plugins.samplers.sampling import SGLD, UniformNoise

from fakedata import write_fake_cifar10, write_fake_cifar100, write_fake_svhn

PLUGINS = load_plugins()

#: Parameters that keep heavy defaults small enough for a CPU test.
SMALL: dict[tuple[str, str], dict] = {
    ("backbone", "wrn"): {"depth": 10, "widen_factor": 1},
    ("chain_init", "replay_buffer"): {"size": 100},
    ("chain_init", "informative_buffer"): {"size": 100},
    ("ood", "uniform_noise"): {"size": 12},
    ("ood", "constant"): {"size": 12},
    ("ood", "interpolations"): {"size": 12},
    ("ood", "sklearn_patches"): {"size": 12},
    ("ood", "celeba_folder"): {"max_images": 3},
    ("feature_extractor", "digits_classifier"): {"epochs": 1},
    ("feature_extractor", "inception"): {"resize": 75},
}


def _components(kind: str):
    return [pytest.param(c, id=c.name) for c in PLUGINS.registries[kind]]


def _params(component, extra: dict | None = None):
    raw = {**SMALL.get((component.kind, component.name), {}), **(extra or {})}
    return build_params(component.params, raw, f"{component.kind}.{component.name}")


def _small_train_data() -> TensorDataset:
    """Forty labelled 1x8x8 inputs in [-1, 1], four per class (for initialisers that fit on data)."""
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(40, 1, 8, 8, generator=generator) * 2 - 1, torch.arange(40) % 10)


def _context(**kwargs) -> BuildContext:
    defaults = dict(
        input_shape=(1, 8, 8), num_classes=10, feature_dim=16, steps_per_epoch=10, total_steps=100,
        train_data=_small_train_data(),
    )
    defaults.update(kwargs)
    return BuildContext(**defaults)


class _TinyBackbone(Backbone):
    def __init__(self, input_shape=(1, 8, 8)):
        super().__init__()
        self.feature_dim = 16
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.net(x)


def _tiny_model() -> JointEnergyModel:
    torch.manual_seed(0)
    return JointEnergyModel(_TinyBackbone(), LinearHead(16, 10))


@pytest.mark.parametrize("component", _components("backbone"))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)], ids=["1x8x8", "3x16x16"])
def test_backbone_contract(component, shape):
    torch.manual_seed(0)
    backbone = component.factory(_params(component), _context(input_shape=shape))
    assert isinstance(backbone, Backbone)
    x = torch.randn(4, *shape, requires_grad=True)
    features = backbone(x)
    assert features.shape == (4, backbone.feature_dim)
    assert torch.isfinite(features).all()
    (grad,) = torch.autograd.grad(features.sum(), x)
    assert grad.abs().sum() > 0, "the input gradient (what SGLD needs) must flow"


@pytest.mark.parametrize("component", _components("head"))
def test_head_contract(component):
    head = component.factory(_params(component), _context(feature_dim=16, num_classes=5))
    assert isinstance(head, EnergyHead)
    logits = head(torch.randn(6, 16))
    assert logits.shape == (6, 5)
    energy = head.energy(logits)
    assert energy.shape == (6,)
    assert torch.allclose(energy, -torch.logsumexp(logits, 1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(head.energy(logits, y), -logits[torch.arange(6), y])


@pytest.mark.parametrize("component", _components("chain_init"))
def test_chain_init_contract(component):
    torch.manual_seed(0)
    init = component.factory(_params(component), _context())
    assert isinstance(init, ChainInit)
    y = torch.arange(6) % 10
    start = init.start(6, y, torch.device("cpu"))
    assert start.x.shape == (6, 1, 8, 8) and torch.isfinite(start.x).all()
    assert 0.0 <= start.reinit_fraction <= 1.0
    init.finish(start, start.x + 0.5)
    state = init.state_dict()
    clone = component.factory(_params(component), _context())
    clone.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(clone.state_dict()[key], value), key


@pytest.mark.parametrize("component", _components("transition"))
def test_transition_contract(component):
    """From far away, 20 steps on E(x) = |x - 0.3|^2 / 2 lower the mean energy and keep the shape."""
    torch.manual_seed(0)
    transition = component.factory(_params(component), _context())
    assert isinstance(transition, Transition)

    def energy(x):
        return 0.5 * (x - 0.3).pow(2).flatten(1).sum(1)

    x = torch.full((6, 1, 8, 8), 3.0)
    start = energy(x).mean()
    for _ in range(20):
        result = transition.step(x, energy)
        assert result.x.shape == x.shape and result.energy.shape == (6,)
        assert result.grad_norm.dim() == 0 and not result.x.requires_grad
        x = result.x
    assert energy(x).mean() < start


@pytest.mark.parametrize("component", _components("loss"))
def test_loss_contract(component):
    torch.manual_seed(0)
    model = _tiny_model()
    loss = component.factory(_params(component), _context())
    assert isinstance(loss, Loss)
    sampler = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, 0.01), steps=2)
    batch = Batch(x=torch.rand(8, 1, 8, 8) * 2 - 1, y=torch.arange(8) % 10)
    output = loss(model, batch, sampler)
    assert output.loss.dim() == 0 and torch.isfinite(output.loss)
    assert "loss" in output.metrics and "acc" in output.metrics
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def _data_params(component, tmp_path: Path) -> dict:
    writers = {"cifar10": write_fake_cifar10, "cifar100": write_fake_cifar100, "svhn": write_fake_svhn}
    if component.name in writers:
        writers[component.name](tmp_path)
        return {"root": str(tmp_path), "download": False}
    if (component.kind, component.name) == ("ood", "celeba_folder"):
        from PIL import Image

        folder = tmp_path / "celeba"
        folder.mkdir(parents=True)
        for i in range(4):  # CelebA-shaped (218x178) RGB images
            Image.fromarray(np.full((218, 178, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i:06d}.png")
        return {"root": str(folder)}
    return {}


@pytest.mark.parametrize("component", _components("data"))
def test_data_contract(component, tmp_path):
    data = component.factory(_params(component, _data_params(component, tmp_path)), _context(input_shape=None))
    assert isinstance(data, DataSplits)
    for split in (data.train, data.test):
        x, y = split[0]
        assert tuple(x.shape) == tuple(data.input_shape)
        assert x.dtype == torch.float32 and int(y) in range(data.num_classes)
        assert x.min() >= -1.5 and x.max() <= 1.5, "inputs are scaled to [-1, 1] (plus a little noise)"


@pytest.mark.parametrize("component", _components("optimizer"))
def test_optimizer_contract(component):
    torch.manual_seed(0)
    weight = nn.Parameter(torch.tensor([2.0, -3.0]))
    optimizer = component.factory(_params(component), _context(), [weight])
    before = weight.pow(2).sum().item()
    for _ in range(20):
        optimizer.zero_grad()
        weight.pow(2).sum().backward()
        optimizer.step()
    assert weight.pow(2).sum().item() < before


@pytest.mark.parametrize("component", _components("schedule"))
def test_schedule_contract(component):
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    schedule = component.factory(_params(component), _context(), optimizer)
    lrs = []
    for _ in range(30):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    fresh = component.factory(_params(component), _context(), torch.optim.SGD([weight], lr=0.1))
    fresh.load_state_dict(schedule.state_dict())
    assert fresh.last_epoch == schedule.last_epoch


#: Input shapes an OOD set or feature extractor is tried with: digits-sized and CIFAR-sized.
EVAL_SHAPES = [(1, 8, 8), (3, 32, 32)]


def _test_split(shape) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.rand(10, *shape, generator=generator) * 2 - 1, torch.arange(10))


@pytest.mark.parametrize("component", _components("ood"))
def test_ood_contract(component, tmp_path):
    """Built for each input shape it supports (``ValueError`` otherwise), items have that shape and lie in [-1, 1]."""
    built = 0
    for shape in EVAL_SHAPES:
        context = _context(input_shape=shape, test_data=_test_split(shape))
        try:
            params = _params(component, _data_params(component, tmp_path / "x".join(map(str, shape))))
            dataset = component.factory(params, context)
        except ValueError:
            continue  # a set made for other input shapes (SVHN for digits models)
        built += 1
        assert len(dataset) > 0
        for index in (0, len(dataset) - 1):
            x, y = dataset[index][:2]
            assert tuple(x.shape) == shape and x.dtype == torch.float32
            assert x.min() >= -1.5 and x.max() <= 1.5, "OOD inputs share the [-1, 1] scale (plus a little noise)"
            assert int(y) == y
    assert built, "an OOD set must support at least the digits or the CIFAR input shape"


def _inception_weights(path: Path) -> Path:
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("component", _components("feature_extractor"))
def test_feature_extractor_contract(component, tmp_path, monkeypatch):
    from jemkit.evaluation.features import FeatureExtractor

    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path / "cache"))
    extra = {}
    if component.name == "inception":
        extra = {"weights": str(_inception_weights(tmp_path / "inception.safetensors"))}
    built = 0
    for shape in EVAL_SHAPES:
        try:
            extractor = component.factory(_params(component, extra), _context(input_shape=shape))
        except ValueError:
            continue
        built += 1
        assert isinstance(extractor, FeatureExtractor) and extractor.weights
        with torch.no_grad():
            features, logits = extractor.eval().features_and_logits(torch.rand(3, *shape) * 2 - 1)
        assert features.shape == (3, extractor.feature_dim) and logits.shape == (3, extractor.num_classes)
        assert torch.isfinite(features).all() and torch.isfinite(logits).all()
    assert built, "a feature extractor must support at least the digits or the CIFAR input shape"
