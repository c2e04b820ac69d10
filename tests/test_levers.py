"""Speed levers that must not change the maths: same energies and gradients, on or off."""

from __future__ import annotations

import pytest
import torch

from jemkit.config import load_recipe
from jemkit.contracts import Batch, energy_and_grad
from jemkit.performance import PerformanceParams, autocast, prepare_input
from jemkit.plugin_manager import load_plugins
from jemkit.sampler import Sampler
from jemkit.train import Trainer
from jemkit_plugins.samplers.sampling import SGLD, UniformNoise

from conftest import RECIPES

PLUGINS = load_plugins(entry_points=False)
SMALL_WRN = [
    "model.backbone.depth=10", "model.backbone.widen_factor=1", "sampler.steps=3", "sampler.init.size=64",
    "data.val_size=0", "data.download=false", "train.batch_size=8",
]


def _digits_trainer(tmp_path, *extra: str) -> Trainer:
    overrides = ["model.backbone.channels=[8,16]", "model.backbone.feature_dim=16", "sampler.steps=3", *extra]
    return Trainer(PLUGINS, load_recipe(RECIPES / "jem_digits.yaml", overrides), tmp_path)


def _batch(n: int = 8, shape=(1, 8, 8)) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(x=torch.rand(n, *shape, generator=g) * 2 - 1, y=torch.arange(n) % 10)


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_frozen_weights_give_the_same_samples_without_weight_graphs(tmp_path):
    trainer = _digits_trainer(tmp_path)
    model = trainer.model
    energy = model.energy
    seen: list[bool] = []

    def spying_energy(x, y=None):
        seen.append(any(p.requires_grad for p in model.parameters()))
        out = energy(x, y)
        seen.append(out.grad_fn is not None and any(p.requires_grad for p in model.parameters()))
        return out

    model.energy = spying_energy
    results = {}
    for freeze in (True, False):
        seen.clear()
        torch.manual_seed(3)
        sampler = Sampler(UniformNoise((1, 8, 8)), SGLD(1.0, 0.01), steps=5, freeze_weights=freeze)
        results[freeze] = (sampler.sample(model, 6), list(seen))
    assert torch.allclose(results[True][0], results[False][0], atol=1e-6)
    assert not any(results[True][1]), "frozen: no parameter takes part in the sampling graph"
    assert all(results[False][1]), "unfrozen: parameters are in the graph (the cost the lever removes)"
    assert all(p.requires_grad for p in model.parameters()), "weights are trainable again afterwards"
    assert all(p.grad is None for p in model.parameters())


def test_fused_forward_gives_the_same_loss_and_gradients(tmp_path):
    fused = _digits_trainer(tmp_path / "b", "loss.fuse_forward=true", "loss.pxy=0.5")
    plain = _digits_trainer(tmp_path / "c", "loss.pxy=0.5")
    fused.model.load_state_dict(plain.model.state_dict())
    batch = _batch()
    outputs = []
    for trainer in (plain, fused):
        torch.manual_seed(5)
        trainer.model.zero_grad(set_to_none=True)
        out = trainer.experiment.loss(trainer.model, batch, trainer.sampler)
        out.loss.backward()
        outputs.append((out.loss.item(), _grads(trainer.model)))
    assert outputs[0][0] == pytest.approx(outputs[1][0], rel=1e-5)
    for a, b in zip(outputs[0][1], outputs[1][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_channels_last_gives_the_same_energies_and_gradients(tmp_path):
    from fakedata import write_fake_cifar10

    write_fake_cifar10(tmp_path / "data", n_per_batch=8)
    overrides = [*SMALL_WRN, f"data.root={tmp_path / 'data'}"]
    reference = Trainer(PLUGINS, load_recipe(RECIPES / "jem_cifar10.yaml", overrides), tmp_path / "a")
    fast = Trainer(PLUGINS, load_recipe(RECIPES / "jem_cifar10.yaml", [*overrides, "performance.channels_last=true"]), tmp_path / "b")
    fast.model.load_state_dict(reference.model.state_dict())
    assert fast.model.backbone.first_layer.weight.is_contiguous(memory_format=torch.channels_last)
    x = _batch(4, (3, 32, 32)).x
    e_ref, g_ref = energy_and_grad(reference.model.energy, x)
    e_fast, g_fast = energy_and_grad(fast.model.energy, prepare_input(x, fast.experiment.performance))
    assert torch.allclose(e_ref, e_fast, atol=1e-4, rtol=1e-4)
    assert torch.allclose(g_ref, g_fast, atol=1e-5, rtol=1e-3)
    for trainer, inputs in ((reference, x), (fast, prepare_input(x, fast.experiment.performance))):
        trainer.model.zero_grad(set_to_none=True)
        trainer.model(inputs).logsumexp(1).sum().backward()
    for a, b in zip(reference.model.parameters(), fast.model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-3)


def test_bf16_autocast_stays_close_to_fp32(tmp_path):
    trainer = _digits_trainer(tmp_path)
    x = _batch().x
    reference = trainer.model.energy(x)
    with autocast(torch.device("cpu"), PerformanceParams(autocast="bf16")):
        low = trainer.model.energy(x)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(reference, low.float(), atol=0.05, rtol=0.02)


def test_sampling_keeps_no_autograd_graph_alive(tmp_path):
    trainer = _digits_trainer(tmp_path)
    x = trainer.sampler.sample(trainer.model, 4)
    assert x.grad_fn is None and not x.requires_grad


@pytest.mark.slow
def test_compiled_backbone_gives_the_same_energies(tmp_path):
    eager = _digits_trainer(tmp_path / "a")
    compiled = _digits_trainer(tmp_path / "b", "performance.compile=true")
    compiled.model.load_state_dict(eager.model.state_dict())
    x = _batch().x
    assert torch.allclose(eager.model.energy(x), compiled.model.energy(x), atol=1e-5)


def test_performance_section_is_validated(cli):
    result = cli("run", RECIPES / "jem_digits.yaml", "performance.autocast=fp8")
    assert result.code == 2 and "autocast must be one of" in result.err
