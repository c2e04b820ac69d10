"""jemkit.testing, the public contract kit: correct components pass, each kind of broken one fails
with a message naming the component and the problem, and the kit leaves the caller's RNGs alone."""

from __future__ import annotations

import itertools
import math
import types
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jemkit import hookimpl
from jemkit.contracts import (
    Backbone,
    ChainInit,
    ChainStart,
    DataSplits,
    EnergyHead,
    LossOutput,
    Loss,
    StepResult,
    Transition,
    energy_and_grad,
)
from jemkit.testing import (
    ContractViolation,
    check_backbone,
    check_chain_init,
    check_component,
    check_data,
    check_head,
    check_loss,
    check_transition,
    contract_cases,
    plugin_components,
)

# --------------------------------------------------------------------------- transitions


class GoodSGLD(Transition):
    graph_safe = True

    def step(self, x, energy_fn):
        energy, grad = energy_and_grad(energy_fn, x)
        return StepResult(x - 0.1 * grad + 0.01 * torch.randn_like(x), energy, grad.flatten(1).norm(dim=1).mean())


def good_sgld(params, context):
    """A correct SGLD step."""
    return GoodSGLD()


def test_a_correct_transition_passes_and_the_rng_is_left_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    check_transition(good_sgld)
    assert torch.equal(torch.get_rng_state(), state)


_BUILDS = itertools.count()


class UnseededNoise(GoodSGLD):
    graph_safe = False

    def __init__(self):
        self.generator = torch.Generator().manual_seed(next(_BUILDS))  # a different stream per build

    def step(self, x, energy_fn):
        result = super().step(x, energy_fn)
        result.x = result.x + 0.01 * torch.randn(x.shape, generator=self.generator)
        return result


class ItemInStep(GoodSGLD):
    def step(self, x, energy_fn):
        result = super().step(x, energy_fn)
        if result.grad_norm.item() > 1e6:  # a host sync and a Python branch on a tensor value
            result.x = result.x.clamp(-1, 1)
        return result


class Momentum(GoodSGLD):
    def __init__(self):
        self.velocity = None

    def step(self, x, energy_fn):
        energy, grad = energy_and_grad(energy_fn, x)
        self.velocity = grad if self.velocity is None else 0.9 * self.velocity + grad
        return StepResult(x - 0.1 * self.velocity, energy, grad.flatten(1).norm(dim=1).mean())


class ReturnsNaN(GoodSGLD):
    graph_safe = False

    def step(self, x, energy_fn):
        result = super().step(x, energy_fn)
        result.x = result.x * float("nan")
        return result


class KeepsGraph(GoodSGLD):
    graph_safe = False

    def step(self, x, energy_fn):
        x = x.detach().requires_grad_(True)
        energy = energy_fn(x)
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
        return StepResult(x - 0.1 * grad, energy.detach(), grad.detach().flatten(1).norm(dim=1).mean())


class CastsToFloat32(GoodSGLD):
    def step(self, x, energy_fn):
        result = super().step(x, energy_fn)
        result.x = result.x.float()
        return result


class Climbs(GoodSGLD):
    def step(self, x, energy_fn):
        energy, grad = energy_and_grad(energy_fn, x)
        return StepResult(x + 0.1 * grad, energy, grad.flatten(1).norm(dim=1).mean())


class FalselyDifferentiable(GoodSGLD):
    differentiable = True

    def differentiable_step(self, x, energy_fn):
        return self.step(x, energy_fn).x  # detached: no gradient reaches x


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (UnseededNoise, "two steps from the same x under the same seed differ"),
        (ItemInStep, "declares graph_safe = True, but its step cannot run without reading tensor values"),
        (Momentum, "a step depends on the calls before it"),
        (ReturnsNaN, "non-finite"),
        (KeepsGraph, "require grad"),
        (CastsToFloat32, "a float64 x came back as torch.float32"),
        (Climbs, "did not lower the mean energy"),
        (FalselyDifferentiable, "do not match finite differences"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_broken_transitions_fail_naming_the_problem(cls, message):
    def factory(params, context):
        return cls()

    with pytest.raises(ContractViolation, match="transition factory") as info:
        check_transition(factory)
    assert message in str(info.value)


# --------------------------------------------------------------------------- model kinds


class GoodBackbone(Backbone):
    def __init__(self, shape):
        super().__init__()
        self.feature_dim = 6
        self.fc = nn.Linear(math.prod(shape), 6)

    def forward(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


class WrongWidth(GoodBackbone):
    def forward(self, x):
        return super().forward(x)[:, :5]


class ProjectionNotInState(GoodBackbone):
    def __init__(self, shape):
        super().__init__(shape)
        self.projection = torch.randn(6, 6)  # random, and not a buffer: lost by state_dict

    def forward(self, x):
        return super().forward(x) @ self.projection


class ScaleNotMoved(GoodBackbone):
    def __init__(self, shape):
        super().__init__(shape)
        self.scale = torch.eye(6)  # constant, but not a buffer: .to(float64) leaves it float32

    def forward(self, x):
        return super().forward(x) @ self.scale


def _backbone_factory(cls):
    def factory(params, context):
        return cls(context.input_shape)

    return factory


def test_a_correct_backbone_passes():
    check_backbone(_backbone_factory(GoodBackbone))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (WrongWidth, "expected (4, 6)"),
        (ProjectionNotInState, "loaded its state_dict gives different outputs"),
        (ScaleNotMoved, "fails after .to(torch.float64)"),
    ],
    ids=["wrong-width", "state-not-saved", "tensor-not-moved"],
)
def test_broken_backbones_fail_naming_the_problem(cls, message):
    with pytest.raises(ContractViolation) as info:
        check_backbone(_backbone_factory(cls))
    assert message in str(info.value)


class FlippedSign(EnergyHead):
    def __init__(self, feature_dim, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, features):
        return self.fc(features)

    def energy(self, logits, y=None):
        return torch.logsumexp(logits, dim=1)  # higher energy = more likely: the wrong sign


def test_a_head_with_the_wrong_sign_fails():
    with pytest.raises(ContractViolation, match=r"energy\(logits\) must be -logsumexp"):
        check_head(lambda params, context: FlippedSign(context.feature_dim, context.num_classes))


# --------------------------------------------------------------------------- chain initialisers


class Memory(ChainInit):
    """Starts chains from a stored batch; ``ignore_loads`` forgets what load_state_dict gives."""

    def __init__(self, shape, ignore_loads=False, counter=False):
        self.memory = torch.rand(8, *shape) * 2 - 1
        self.ignore_loads = ignore_loads
        self.counter = counter

    def start(self, n, y, device):
        index = torch.randint(0, 8, (n,))
        return ChainStart(self.memory[index].to(device), slots=index, reinit_fraction=0.0)

    def finish(self, start, x_final):
        self.memory[start.slots] = x_final.detach().cpu()

    def state_dict(self):
        state = {"memory": self.memory.clone()}
        if self.counter:
            state["calls"] = 3  # not a tensor: safetensors cannot hold it
        return state

    def load_state_dict(self, state):
        if not self.ignore_loads:
            self.memory = state["memory"].clone()


def test_a_correct_stateful_initialiser_passes():
    check_chain_init(lambda params, context: Memory(context.input_shape))


def test_an_initialiser_that_ignores_its_state_fails():
    with pytest.raises(ContractViolation, match="state_dict round trip changed 'memory'"):
        check_chain_init(lambda params, context: Memory(context.input_shape, ignore_loads=True))


def test_an_initialiser_state_must_be_tensors():
    with pytest.raises(ContractViolation, match=r"state_dict\(\) must map names to tensors.*'calls'"):
        check_chain_init(lambda params, context: Memory(context.input_shape, counter=True))


# --------------------------------------------------------------------------- losses and metrics


class CrossEntropy(Loss):
    def __init__(self, metric):
        self.metric = metric

    def __call__(self, model, batch, sampler):
        logits = model.logits(batch.x)
        loss = nn.functional.cross_entropy(logits, batch.y)
        acc = (logits.argmax(1) == batch.y).float().mean()
        return LossOutput(loss, {"loss": self.metric(loss.detach()), "acc": self.metric(acc)})


@pytest.mark.parametrize(
    "metric", [float, lambda t: t, lambda t: t.detach()], ids=["python-float", "0-dim-tensor", "detached-tensor"]
)
def test_metrics_may_be_floats_or_0_dim_tensors(metric):
    check_loss(lambda params, context: CrossEntropy(metric))


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (lambda t: [float(t)], "metric 'loss' must be a float or a 0-dim tensor, got list"),
        (lambda t: t.reshape(1), "metric 'loss' must be a float or a 0-dim tensor, got Tensor of shape (1,)"),
        (lambda t: str(float(t)), "got str"),
        (lambda t: t * float("inf"), "metric 'loss' is not finite"),
    ],
    ids=["list", "1-dim", "str", "inf"],
)
def test_bad_metrics_fail(metric, message):
    with pytest.raises(ContractViolation) as info:
        check_loss(lambda params, context: CrossEntropy(metric))
    assert message in str(info.value)


class SamplesWithoutSaying(CrossEntropy):
    needs_sampler = False

    def __call__(self, model, batch, sampler):
        output = super().__call__(model, batch, sampler)
        negatives = sampler.sample(model, 4)
        return LossOutput(output.loss + 0.0 * model.energy(negatives).mean(), output.metrics)


def test_a_loss_that_samples_must_say_so():
    with pytest.raises(ContractViolation, match="needs_sampler = True"):
        check_loss(lambda params, context: SamplesWithoutSaying(lambda t: t))


# --------------------------------------------------------------------------- data


def _splits(scale):
    x = torch.linspace(-1, 1, 40).reshape(20, 2) * scale
    data = TensorDataset(x, torch.arange(20) % 2)
    return DataSplits(train=data, test=data, num_classes=2, input_shape=(2,))


def test_data_in_range_passes_and_raw_pixel_values_fail():
    check_data(lambda params, context: _splits(1.0))
    with pytest.raises(ContractViolation, match=r"train\[0\]: inputs span \[-255, -242\]; inputs are scaled to \[-1, 1\]"):
        check_data(lambda params, context: _splits(255.0))


# --------------------------------------------------------------------------- plugins and parameters


@dataclass
class StepParams:
    #: Step size.
    step_size: float = 0.1

    def __post_init__(self):
        if self.step_size <= 0:
            raise ValueError("step_size must be positive")


def _plugin(hook_name="jemkit_register_transitions"):
    def register(registry):
        registry.register("good_sgld", lambda params, context: GoodSGLD(), params=StepParams, description="Good.")

    register.__name__ = hook_name
    return types.SimpleNamespace(**{hook_name: hookimpl(register)})


def test_plugin_components_registers_the_plugin_alone():
    components = plugin_components(_plugin(), name="probe")
    assert [(c.kind, c.name, c.plugin) for c in components] == [("transition", "good_sgld", "probe")]
    cases = contract_cases(components)
    assert [case.id for case in cases] == ["transition:good_sgld"]
    check_component(components[0], {"step_size": 0.2})  # recipe values, validated like a recipe


def test_recipe_values_are_validated_like_a_recipe():
    (component,) = plugin_components(_plugin())
    with pytest.raises(Exception, match="step_size must be positive"):
        check_component(component, {"step_size": -1.0})


def test_a_plugin_with_a_misspelled_hook_is_reported():
    with pytest.raises(ContractViolation, match="jemkit_register_transition"):
        plugin_components(_plugin("jemkit_register_transition"), name="typo")


def test_check_component_needs_a_component_and_checks_its_kind():
    with pytest.raises(TypeError, match="check_transition"):
        check_component(good_sgld)
    (component,) = plugin_components(_plugin())
    with pytest.raises(ContractViolation, match="was passed to the backbone check"):
        check_backbone(component)


class WithBatchNorm(GoodBackbone):
    def __init__(self, shape):
        super().__init__(shape)
        self.norm = nn.BatchNorm1d(6)

    def forward(self, x):
        return torch.tanh(self.norm(self.fc(x.flatten(1))))


def test_a_backbone_with_batch_norm_passes():
    """Running statistics move in the first (training-mode) forward; the round trip carries them."""
    check_backbone(_backbone_factory(WithBatchNorm))
