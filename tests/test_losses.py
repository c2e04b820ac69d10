"""Losses and schedules against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jemkit.contracts import Batch, BuildContext
from jemkit_plugins.training.losses import CrossEntropyLoss, JEMLoss, JEMLossParams
from jemkit_plugins.training.optim import WarmupMultiStepParams, build_warmup_multistep, warmup_multistep_factor

from jemkit.testing import tiny_model as _tiny_model


class FixedSampler:
    """Returns preset negatives; records the labels it was asked for."""

    def __init__(self, x_neg: torch.Tensor) -> None:
        self.x_neg = x_neg
        self.calls: list = []
        self.last_diagnostics: dict = {}

    def sample(self, model, n, y=None, **kwargs):
        self.calls.append(None if y is None else y.clone())
        return self.x_neg[:n]


def _setup():
    torch.manual_seed(0)
    model = _tiny_model()
    x = torch.randn(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    x_neg = torch.randn(6, 1, 8, 8) * 2
    return model, Batch(x=x, y=y), FixedSampler(x_neg)


def test_jem_loss_matches_hand_computation():
    model, batch, sampler = _setup()
    loss = JEMLoss(JEMLossParams(pyx=1.0, px=1.0, pxy=0.5, energy_l2=0.2))
    out = loss(model, batch, sampler)
    logits, logits_neg = model(batch.x), model(sampler.x_neg)
    e_data = -torch.logsumexp(logits, 1)
    e_neg = -torch.logsumexp(logits_neg, 1)
    e_data_y = -logits[torch.arange(6), batch.y]
    e_neg_y = -logits_neg[torch.arange(6), batch.y]
    expected = (
        F.cross_entropy(logits, batch.y)
        + (e_data.mean() - e_neg.mean())
        + 0.5 * (e_data_y.mean() - e_neg_y.mean())
        + 0.2 * (e_data.pow(2).mean() + e_neg.pow(2).mean() + e_neg_y.pow(2).mean())
    )
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["energy_data"].item() == pytest.approx(e_data.mean().item(), rel=1e-5)
    assert out.metrics["energy_samples"].item() == pytest.approx(e_neg.mean().item(), rel=1e-5)
    assert sampler.calls[0] is None and torch.equal(sampler.calls[1], batch.y)


def test_px_gradient_lowers_data_energy_and_raises_sample_energy():
    model, batch, sampler = _setup()
    loss = JEMLoss(JEMLossParams(pyx=0.0, px=1.0))
    out = loss(model, batch, sampler)
    out.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    assert model.energy(batch.x).mean() < out.metrics["energy_data"]
    assert model.energy(sampler.x_neg).mean() > out.metrics["energy_samples"]


def test_fused_forward_is_numerically_identical():
    model, batch, sampler = _setup()
    plain = JEMLoss(JEMLossParams(pxy=1.0))(model, batch, sampler)
    fused = JEMLoss(JEMLossParams(pxy=1.0, fuse_forward=True))(model, batch, sampler)
    assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)


def test_cross_entropy_needs_no_sampler():
    model, batch, _ = _setup()
    out = CrossEntropyLoss()(model, batch, sampler=None)
    assert out.loss.item() == pytest.approx(F.cross_entropy(model(batch.x), batch.y).item(), rel=1e-6)
    assert CrossEntropyLoss.needs_sampler is False


def test_jem_loss_rejects_all_zero_weights():
    with pytest.raises(ValueError):
        JEMLossParams(pyx=0.0, px=0.0, pxy=0.0)


def test_warmup_multistep_factor_by_hand():
    # 10 warm-up iterations, 5 iterations per epoch, milestones at epochs 4 and 6, gamma 0.3.
    milestones = [20, 30]
    assert warmup_multistep_factor(0, 10, milestones, 0.3) == pytest.approx(0.1)
    assert warmup_multistep_factor(4, 10, milestones, 0.3) == pytest.approx(0.5)
    assert warmup_multistep_factor(9, 10, milestones, 0.3) == pytest.approx(1.0)
    assert warmup_multistep_factor(19, 10, milestones, 0.3) == pytest.approx(1.0)
    assert warmup_multistep_factor(20, 10, milestones, 0.3) == pytest.approx(0.3)
    assert warmup_multistep_factor(30, 10, milestones, 0.3) == pytest.approx(0.09)


def test_warmup_multistep_schedule_drives_the_optimizer():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    params = WarmupMultiStepParams(warmup_steps=4, milestones=[2], gamma=0.5)
    schedule = build_warmup_multistep(params, BuildContext(steps_per_epoch=5), optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(11):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(5e-4)
