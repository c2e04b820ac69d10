"""Generation helpers: replay-buffer contents, sample-quality numbers, grid order, fresh chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jemkit.contracts import Backbone, EnergyHead, JointEnergyModel
from jemkit.evaluation.frechet import gaussian_stats
from jemkit.evaluation.generation import buffer_contents, fresh_samples, grid_order, sample_quality
from jemkit.sampler import Sampler
from jemkit_plugins.samplers.sampling import SGLD, ReplayBuffer, UniformNoise


def test_buffer_contents_and_class_blocks():
    plain = Sampler(ReplayBuffer((1, 4, 4), 30, 0.05), SGLD(1.0, 0.01), steps=1)
    x, labels = buffer_contents(plain)
    assert x.shape == (30, 1, 4, 4) and labels is None
    conditional = Sampler(ReplayBuffer((1, 4, 4), 30, 0.05, num_classes=3), SGLD(1.0, 0.01), steps=1)
    x, labels = buffer_contents(conditional)
    assert labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert buffer_contents(Sampler(UniformNoise((1, 4, 4)), SGLD(1.0, 0.01), steps=1)) is None


def test_sample_quality_numbers():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 4, generator=generator, dtype=torch.float64)
    y = torch.arange(4).repeat_interleave(50)
    logits = torch.nn.functional.one_hot(y, 4).double() * 50.0
    logits[:25] = torch.tensor([0.0, 50.0, 0.0, 0.0], dtype=torch.float64)  # half of class 0 labelled 1
    quality = sample_quality(features, logits, gaussian_stats(features), is_splits=1, y=y)
    assert quality["fid"] == pytest.approx(0.0, abs=1e-9)
    assert quality["class_accuracy"] == pytest.approx(175 / 200)
    assert quality["per_class_accuracy"] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert 3.0 < quality["inception_score"]["mean"] < 4.0
    assert "class_accuracy" not in sample_quality(features, logits, gaussian_stats(features), 1)


def test_grid_order_takes_the_first_of_each_class():
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    assert grid_order(y, 2).tolist() == [1, 3, 2, 5, 0, 4]


class _Quadratic(Backbone):
    """Features ``-(x - c_k)^2`` summed, so that class k's energy is lowest near the constant image c_k."""

    def __init__(self):
        super().__init__()
        self.feature_dim = 2
        self.centres = nn.Parameter(torch.tensor([-0.5, 0.5]).view(2, 1), requires_grad=False)

    def forward(self, x):
        flat = x.flatten(1)
        return -0.5 * (flat.unsqueeze(1) - self.centres).pow(2).sum(2)


class _Identity(EnergyHead):
    def __init__(self):
        super().__init__()
        self.num_classes = 2

    def forward(self, f):
        return f


def test_fresh_class_conditional_chains_reach_their_class():
    model = JointEnergyModel(_Quadratic(), _Identity())
    model.register_parameter("anchor", nn.Parameter(torch.zeros(1)))  # a parameter for the device lookup
    y = torch.tensor([0, 1] * 8)
    torch.manual_seed(0)
    x = fresh_samples(model, UniformNoise((1, 2, 2)), SGLD(0.2, 0.0), 60, "eval", 16, y, 5, torch.device("cpu"))
    assert x.shape == (16, 1, 2, 2)
    means = x.flatten(1).mean(1)
    assert torch.allclose(means[y == 0], torch.tensor(-0.5), atol=1e-3)
    assert torch.allclose(means[y == 1], torch.tensor(0.5), atol=1e-3)
