"""Samplers on analytic energies, and the replay buffer's bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jemkit.contracts import BuildContext, JointEnergyModel, energy_and_grad
from jemkit.sampler import Sampler, frozen_weights
from jemkit_plugins.samplers.sampling import SGLD, ReplayBuffer, UniformNoise

from conftest import gaussian_classes_model


def quadratic(center: torch.Tensor, precision: float = 1.0):
    """E(x) = precision/2 * |x - center|^2, i.e. N(center, I / precision)."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * precision * (x - center).pow(2).flatten(1).sum(1)

    return energy


def test_energy_and_grad_matches_hand_computation():
    center = torch.tensor([1.0, -2.0])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    energy, grad = energy_and_grad(quadratic(center, 2.0), x)
    assert torch.allclose(energy, torch.tensor([5.0, 9.0]))
    assert torch.allclose(grad, 2.0 * (x - center))


def test_sgld_lowers_energy_on_quadratic():
    torch.manual_seed(0)
    energy = quadratic(torch.tensor([0.5, -0.5, 0.25]))
    sgld = SGLD(step_size=0.1, noise=0.01)
    x = torch.rand(256, 3) * 2 - 1 + 3.0
    start = energy(x).mean().item()
    for _ in range(20):
        x = sgld.step(x, energy).x
    end = energy(x).mean().item()
    # Gradient descent with contraction 0.9 per step: energy falls by about 0.9^40 ~ 0.015x.
    assert end < 0.05 * start
    assert end == pytest.approx(0.9**40 * start, rel=0.5, abs=0.01)


def test_sgld_step_is_exact_descent_without_noise():
    center = torch.tensor([1.0, 2.0])
    x = torch.zeros(4, 2)
    result = SGLD(step_size=0.25, noise=0.0).step(x, quadratic(center))
    assert torch.allclose(result.x, 0.25 * center.expand(4, 2))
    assert result.grad_norm.item() == pytest.approx(math.sqrt(5.0))


def test_sgld_noise_has_the_requested_std():
    torch.manual_seed(0)
    flat = lambda x: torch.zeros(x.shape[0]) + 0.0 * x.sum(1)  # noqa: E731
    x = torch.zeros(20000, 2)
    moved = SGLD(step_size=1.0, noise=0.03).step(x, flat).x
    assert moved.std().item() == pytest.approx(0.03, rel=0.03)


def test_langevin_samples_unit_gaussian():
    """Textbook Langevin (noise sqrt(2 eps)) on N(mu, I): moments within small-step bias."""
    from jemkit_plugins.samplers.sampling import LangevinParams, build_langevin

    torch.manual_seed(0)
    mu = torch.tensor([1.0, -1.0])
    transition = build_langevin(LangevinParams(step_size=0.01), BuildContext())
    x = torch.randn(4000, 2) * 3
    for _ in range(600):
        x = transition.step(x, quadratic(mu)).x
    assert torch.allclose(x.mean(0), mu, atol=0.08)
    # ULA's stationary variance on a unit Gaussian is 1/(1 - eps/2) ~ 1.005.
    assert torch.allclose(x.var(0), torch.full((2,), 1.0 / (1 - 0.005)), atol=0.08)


def test_replay_buffer_reinit_rate_within_tolerance():
    torch.manual_seed(0)
    buffer = ReplayBuffer((1, 4, 4), size=1000, reinit_freq=0.05)
    buffer.buffer.fill_(5.0)  # stored states are recognisable; fresh noise lies in [-1, 1]
    n, rounds = 500, 40
    fresh = 0
    for _ in range(rounds):
        start = buffer.start(n, None, torch.device("cpu"))
        fresh += int((start.x.flatten(1).abs().max(1).values <= 1.0).sum())
    rate = fresh / (n * rounds)
    std = math.sqrt(0.05 * 0.95 / (n * rounds))
    assert abs(rate - 0.05) < 4 * std


def test_replay_buffer_writes_final_states_back_to_their_slots():
    torch.manual_seed(0)
    buffer = ReplayBuffer((2,), size=50, reinit_freq=0.0)
    start = buffer.start(10, None, torch.device("cpu"))
    final = torch.full((10, 2), 7.0) + torch.arange(10.0).view(10, 1)
    buffer.finish(start, final)
    for slot in start.slots.tolist():
        # with replacement, a repeated slot keeps one of the values written to it
        assert buffer.buffer[slot, 0].item() in {7.0 + j for j, s in enumerate(start.slots.tolist()) if s == slot}
    untouched = sorted(set(range(50)) - set(start.slots.tolist()))
    assert buffer.buffer[untouched].abs().max() <= 1.0


def test_class_conditional_buffer_uses_class_blocks():
    torch.manual_seed(0)
    buffer = ReplayBuffer((1,), size=100, reinit_freq=0.0, num_classes=10)
    buffer.buffer = torch.arange(100.0).view(100, 1)
    y = torch.tensor([0, 3, 9, 9])
    start = buffer.start(4, y, torch.device("cpu"))
    blocks = (start.x.view(-1) // 10).long()
    assert torch.equal(blocks, y)


def test_replay_buffer_state_round_trip_and_shape_check():
    a = ReplayBuffer((3,), size=20, reinit_freq=0.1)
    b = ReplayBuffer((3,), size=20, reinit_freq=0.1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.buffer, b.buffer)
    with pytest.raises(ValueError, match="shape mismatch"):
        ReplayBuffer((4,), size=20, reinit_freq=0.1).load_state_dict(a.state_dict())


def _gaussian_classes_model() -> JointEnergyModel:
    return gaussian_classes_model([[2.0, 0.0], [-2.0, 0.0]])


def test_sampler_class_conditional_moves_to_class_mode_and_freezes_weights():
    torch.manual_seed(0)
    model = _gaussian_classes_model()
    sampler = Sampler(UniformNoise((2,)), SGLD(step_size=0.2, noise=0.0), steps=60)
    y = torch.tensor([0] * 8 + [1] * 8)
    x = sampler.sample(model, 16, y=y)
    assert torch.allclose(x[:8], torch.tensor([2.0, 0.0]).expand(8, 2), atol=1e-3)
    assert torch.allclose(x[8:], torch.tensor([-2.0, 0.0]).expand(8, 2), atol=1e-3)
    assert all(p.grad is None for p in model.parameters()), "sampling must not compute weight gradients"
    assert all(p.requires_grad for p in model.parameters()), "weights are unfrozen afterwards"
    d = sampler.last_diagnostics
    assert d["energy_end"] < d["energy_start"] and d["reinit_fraction"] == 1.0
    # kept as 0-dim tensors (no wait for the device inside a sampler call); floats on demand
    tensors = sampler.last_diagnostic_tensors
    assert set(tensors) == set(d) and all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in tensors.values())
    assert all(float(tensors[k]) == v for k, v in d.items())
    sampler.clear_diagnostics()
    assert sampler.last_diagnostics == {}


def test_frozen_weights_restores_requires_grad():
    layer = nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    with frozen_weights(layer):
        assert not any(p.requires_grad for p in layer.parameters())
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_sample_without_persist_leaves_buffer_untouched():
    torch.manual_seed(0)
    model = _gaussian_classes_model()
    buffer = ReplayBuffer((2,), size=30, reinit_freq=0.0)
    before = buffer.buffer.clone()
    Sampler(buffer, SGLD(0.1, 0.01), steps=3).sample(model, 10, persist=False)
    assert torch.equal(buffer.buffer, before)
    Sampler(buffer, SGLD(0.1, 0.01), steps=3).sample(model, 10)
    assert not torch.equal(buffer.buffer, before)
