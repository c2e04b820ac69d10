"""Contract checks for jemkit components: the checks jemkit runs on its own, for any plugin.

One call per component kind runs every check of that kind's contract and raises a
:class:`ContractViolation` (an ``AssertionError``, so pytest shows it as a failed test) whose
message names the component and what it got wrong::

    import pytest
    import jemkit_mala
    from jemkit.testing import check_component, contract_cases

    @pytest.mark.parametrize("component", contract_cases(jemkit_mala))
    def test_contract(component):
        check_component(component)

:func:`contract_cases` registers the plugin alone through jemkit's own plugin manager (so its
hooks and parameter dataclasses are checked too) and returns one ``pytest.param`` per
component. ``check_transition(factory, params)`` and friends take a bare factory as well.

What is checked, by kind (``context`` defaults to :func:`tiny_context`):

* every kind: the factory returns the contract's class; outputs have the documented shapes and
  are finite; building and running twice under the same seed gives identical results;
* ``backbone``, ``head``: input gradients flow (backbones); ``state_dict`` round trip into a
  copy built under another seed; ``.to(torch.float64)`` and, when CUDA is available,
  ``.to("cuda")`` move every tensor the module computes with;
* ``head``: ``E(x) = -logsumexp(logits)`` and ``E(x, y) = -logits[y]`` (the sign convention);
* ``chain_init``: starts in the context's input shape, conditional and unconditional;
  ``reinit_fraction`` in ``[0, 1]``; ``state_dict`` holds only tensors and a copy loaded from it
  continues identically;
* ``transition``: 20 steps on ``E(x) = |x - 0.3|^2 / 2`` from ``x = 3`` lower the mean energy;
  ``grad_norm`` (and ``accept_rate``) are 0-dim tensors; nothing requires grad; the dtype and
  device of ``x`` are kept; ``graph_safe = True`` is honoured: the step runs on ``meta`` tensors
  (no ``.item()``, no Python branch on values, no tensor made on another device) and keeps no
  state between calls; ``differentiable = True`` is honoured: ``differentiable_step`` returns
  what ``step`` does and gradients flow back to ``x``;
* ``loss``: a 0-dim finite loss whose gradient reaches every weight; ``metrics`` has ``loss``
  and ``acc``, string keys, and values that are numbers or 0-dim tensors, all finite;
* ``data``, ``ood``: items of the declared shape, ``float32``, in ``[-1, 1]`` plus a little
  noise, integer labels in range;
* ``importer``: an empty file and one of random bytes are refused with a ``JemkitError``;
* ``optimizer``, ``schedule``, ``feature_extractor``: what ``tests/test_contracts.py`` of jemkit
  checks (descent on a quadratic, learning rates in range, state round trips, feature shapes).

The checks seed the RNGs themselves and restore the caller's RNG states afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from jemkit.config import build_params
from jemkit.contracts import (
    Backbone,
    Batch,
    BuildContext,
    ChainInit,
    ChainStart,
    DataSplits,
    EnergyHead,
    FeatureExtractor,
    JointEnergyModel,
    Loss,
    StepResult,
    Transition,
    energy_and_grad,
)
from jemkit.registry import Component

__all__ = [
    "ContractViolation",
    "check_backbone",
    "check_built",
    "check_chain_init",
    "check_component",
    "check_data",
    "check_feature_extractor",
    "check_head",
    "check_importer",
    "check_loss",
    "check_ood",
    "check_optimizer",
    "check_schedule",
    "check_transition",
    "contract_cases",
    "plugin_components",
    "quadratic_energy",
    "tiny_context",
    "tiny_model",
]

#: A registered factory, or the :class:`~jemkit.registry.Component` that holds one.
ComponentLike = Component | Callable[..., Any]

#: Input shapes a backbone is tried with: digits-sized and a small RGB image.
BACKBONE_SHAPES: tuple[tuple[int, ...], ...] = ((1, 8, 8), (3, 16, 16))
#: Input shapes an OOD set or feature extractor is tried with: digits-sized and CIFAR-sized.
EVAL_SHAPES: tuple[tuple[int, ...], ...] = ((1, 8, 8), (3, 32, 32))
#: How far outside ``[-1, 1]`` inputs may lie (the input noise data sets add).
INPUT_SLACK = 0.5


class ContractViolation(AssertionError):
    """A component breaks its kind's contract; the message names the component and the problem."""


# --------------------------------------------------------------------------- fixtures


def quadratic_energy(x: Tensor, centre: float = 0.3) -> Tensor:
    """``E(x) = |x - centre|^2 / 2`` per chain ``[N]``: a unit Gaussian around ``centre``."""
    return 0.5 * (x - centre).pow(2).flatten(1).sum(1)


def _small_split(n: int, shape: Sequence[int], num_classes: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, *shape, generator=generator) * 2 - 1, torch.arange(n) % num_classes)


def tiny_context(**overrides: Any) -> BuildContext:
    """A :class:`BuildContext` for checks: 1x8x8 inputs, 10 classes, 16 features, 10 steps per
    epoch of 100, forty training and ten test items in ``[-1, 1]``; ``overrides`` replace fields
    (a new ``input_shape`` also reshapes the default splits)."""
    shape = tuple(overrides.get("input_shape") or (1, 8, 8))
    classes = overrides.get("num_classes") or 10
    values: dict[str, Any] = dict(
        input_shape=(1, 8, 8), num_classes=10, feature_dim=16, steps_per_epoch=10, total_steps=100,
        train_data=_small_split(40, shape, classes, 0), test_data=_small_split(10, shape, classes, 1),
    )
    values.update(overrides)
    return BuildContext(**values)


class _TinyBackbone(Backbone):
    """Flatten, one linear layer to 16 features, leaky ReLU."""

    def __init__(self, input_shape: Sequence[int] = (1, 8, 8), feature_dim: int = 16) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), feature_dim), nn.LeakyReLU(0.2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _TinyHead(EnergyHead):
    """One linear layer from features to logits."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)


def tiny_model(input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, seed: int = 0) -> JointEnergyModel:
    """A small :class:`JointEnergyModel` (linear features, linear head) built under ``seed``."""
    with _isolated_rng():
        torch.manual_seed(seed)
        return JointEnergyModel(_TinyBackbone(input_shape), _TinyHead(16, num_classes))


class _UniformInit(ChainInit):
    """Chains start uniform in ``[-1, 1]``."""

    def __init__(self, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)

    def start(self, n: int, y: Tensor | None, device: torch.device) -> ChainStart:
        return ChainStart(x=torch.rand(n, *self.input_shape, device=device) * 2 - 1)


class _PlainSGLD(Transition):
    """``x <- x - step_size * dE/dx + noise * N(0, I)``."""

    graph_safe = True

    def __init__(self, step_size: float = 1.0, noise: float = 0.01) -> None:
        self.step_size, self.noise = step_size, noise

    def step(self, x: Tensor, energy_fn: Callable[[Tensor], Tensor]) -> StepResult:
        energy, grad = energy_and_grad(energy_fn, x)
        x_new = x - self.step_size * grad + self.noise * torch.randn_like(x)
        return StepResult(x=x_new, energy=energy, grad_norm=grad.flatten(1).norm(dim=1).mean())


class _CountingSampler:
    """What a loss receives as ``sampler``: ``sample(model, n, y=None, **kwargs) -> [n, ...]``
    (a uniform start and two SGLD steps); counts the calls."""

    def __init__(self, input_shape: Sequence[int], steps: int = 2) -> None:
        from jemkit.sampler import Sampler

        self.sampler = Sampler(_UniformInit(input_shape), _PlainSGLD(), steps=steps)
        self.calls = 0

    def sample(self, model: JointEnergyModel, n: int, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.sampler.sample(model, n, y, **kwargs)

    @property
    def last_diagnostics(self) -> dict[str, float]:
        return self.sampler.last_diagnostics

    @property
    def last_diagnostic_tensors(self) -> dict[str, Tensor]:
        return self.sampler.last_diagnostic_tensors


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Restore the Python, numpy and torch (CPU and initialised CUDA) RNG states on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Subject:
    """The component under test: a label for messages, the factory and its parameters."""

    def __init__(self, kind: str, component: ComponentLike, params: Any) -> None:
        if isinstance(component, Component):
            if component.kind != kind:
                raise ContractViolation(
                    f"{component.kind} {component.name!r} was passed to the {kind} check; use "
                    f"check_component(component) or the check of its own kind."
                )
            self.label = f"{kind} {component.name!r} (plugin {component.plugin!r})"
            self.factory = component.factory
            if params is None or isinstance(params, Mapping):
                params = build_params(component.params, dict(params or {}), f"{kind}.{component.name}")
        else:
            if not callable(component):
                raise TypeError(f"expected a jemkit Component or a factory, got {component!r}")
            name = getattr(component, "__qualname__", None) or repr(component)
            self.label = f"{kind} factory {name}"
            self.factory = component
            if isinstance(params, Mapping):
                raise TypeError(
                    f"{self.label}: pass its parameters as the params dataclass instance "
                    "(raw recipe mappings need the registered Component, which knows the dataclass)"
                )
        self.kind = kind
        self.params = params

    def fail(self, problem: str) -> ContractViolation:
        return ContractViolation(f"{self.label}: {problem}")

    def require(self, condition: Any, problem: str) -> None:
        if not condition:
            raise self.fail(problem)

    def build(self, context: BuildContext, *extra: Any, seed: int = 0) -> Any:
        """The factory's product, built with every RNG seeded with ``seed``."""
        _seed(seed)
        try:
            return self.factory(self.params, context, *extra)
        except ContractViolation:
            raise
        except Exception as exc:
            raise self.fail(f"the factory raised {type(exc).__name__}: {exc}") from exc


def _finite(value: Tensor) -> bool:
    return bool(torch.isfinite(value).all())


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two state dicts (tensors compared exactly)."""
    keys = sorted(set(a) | set(b), key=str)
    differ = []
    for key in keys:
        if key not in a or key not in b:
            differ.append(str(key))
        elif isinstance(a[key], Tensor) and isinstance(b[key], Tensor):
            if a[key].shape != b[key].shape or not torch.equal(a[key], b[key]):
                differ.append(str(key))
        elif a[key] != b[key]:
            differ.append(str(key))
    return differ


def _extra_devices(devices: Sequence[str | torch.device] | None) -> list[torch.device]:
    """Devices besides the CPU to move modules to: ``devices``, else CUDA when available."""
    if devices is None:
        devices = ["cuda"] if torch.cuda.is_available() else []
    return [torch.device(d) for d in devices if torch.device(d).type != "cpu"]


def _check_module_moves(
    subject: _Subject, module: nn.Module, run: Callable[[nn.Module, torch.dtype, torch.device], Tensor],
    devices: Sequence[str | torch.device] | None,
) -> None:
    """``run(module, dtype, device)`` after ``.to(float64)`` and ``.to(device)`` matches float32/CPU."""
    module.eval()
    with torch.no_grad():
        reference = run(module, torch.float32, torch.device("cpu")).double()
        as_double = copy.deepcopy(module).to(torch.float64)
        try:
            out = run(as_double, torch.float64, torch.device("cpu"))
        except RuntimeError as exc:
            raise subject.fail(
                f"fails after .to(torch.float64) ({exc}); keep every tensor it computes with in a "
                "registered parameter or buffer (register_buffer), not a plain attribute"
            ) from exc
        subject.require(out.dtype == torch.float64, f".to(torch.float64) gave {out.dtype} outputs, not float64")
        subject.require(
            torch.allclose(out, reference, rtol=1e-3, atol=1e-4),
            "float64 outputs differ from float32 ones by more than rounding "
            f"(max |diff| {float((out - reference).abs().max()):.3g})",
        )
        for device in _extra_devices(devices):
            moved = copy.deepcopy(module).to(device)
            try:
                out = run(moved, torch.float32, device)
            except RuntimeError as exc:
                raise subject.fail(f"fails after .to({str(device)!r}) ({exc})") from exc
            subject.require(out.device.type == device.type, f".to({str(device)!r}) gave outputs on {out.device}")
            subject.require(
                torch.allclose(out.cpu().double(), reference, rtol=1e-2, atol=1e-3),
                f"outputs on {device} differ from CPU ones (max |diff| "
                f"{float((out.cpu().double() - reference).abs().max()):.3g})",
            )


# --------------------------------------------------------------------------- model kinds


def check_backbone(
    component: ComponentLike,
    params: Any = None,
    *,
    context: BuildContext | None = None,
    input_shapes: Sequence[Sequence[int]] = BACKBONE_SHAPES,
    seed: int = 0,
    devices: Sequence[str | torch.device] | None = None,
) -> None:
    """Check the ``backbone`` contract: ``[N, *input_shape] -> [N, feature_dim]`` for each of
    ``input_shapes``, finite, with input gradients; deterministic under a seed; ``state_dict``
    round trip; float64 and device moves (CUDA when available, or ``devices``)."""
    subject = _Subject("backbone", component, params)
    base = context or tiny_context()
    with _isolated_rng():
        for index, shape in enumerate(tuple(s) for s in input_shapes):
            ctx = dataclasses.replace(base, input_shape=shape)
            backbone = subject.build(ctx, seed=seed)
            subject.require(
                isinstance(backbone, Backbone), f"returned {type(backbone).__name__}, not a jemkit.contracts.Backbone"
            )
            subject.require(
                isinstance(backbone.feature_dim, int) and backbone.feature_dim > 0,
                f"feature_dim must be a positive int, got {getattr(backbone, 'feature_dim', None)!r}",
            )
            x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed), requires_grad=True)
            features = backbone(x)
            subject.require(
                tuple(features.shape) == (4, backbone.feature_dim),
                f"maps inputs {tuple(x.shape)} to {tuple(features.shape)}, expected (4, {backbone.feature_dim})",
            )
            subject.require(_finite(features), f"gives non-finite features for inputs of shape {shape}")
            (grad,) = torch.autograd.grad(features.sum(), x)
            subject.require(grad.abs().sum() > 0, "the input gradient (what SGLD needs) must flow")
            if index:
                continue  # the slower checks once, on the first shape
            _check_model_state(subject, backbone, ctx, seed, lambda m, xs=x.detach(): m(xs))
            _check_module_moves(subject, backbone, lambda m, dtype, device, xs=x.detach(): m(xs.to(device, dtype)), devices)


def _check_model_state(
    subject: _Subject, module: nn.Module, ctx: BuildContext, seed: int, forward: Callable[[nn.Module], Tensor]
) -> None:
    """Same seed, same weights and outputs; a copy built under another seed that loads the state
    of ``module`` (already run, so batch-norm statistics have moved) gives its outputs."""
    first, second = subject.build(ctx, seed=seed).eval(), subject.build(ctx, seed=seed).eval()
    differ = _differing_keys(first.state_dict(), second.state_dict())
    subject.require(not differ, f"two builds under the same seed differ in {differ[:5]}; seed all randomness with torch")
    module.eval()
    with torch.no_grad():
        subject.require(torch.equal(forward(first), forward(second)), "two builds under the same seed give different outputs")
        expected = forward(module)
        other = subject.build(ctx, seed=seed + 1).eval()
        try:
            other.load_state_dict(module.state_dict())
        except RuntimeError as exc:
            raise subject.fail(f"cannot load its own state_dict into a fresh build ({exc})") from exc
        subject.require(
            torch.equal(forward(other), expected),
            "a fresh build that loaded its state_dict gives different outputs; keep every tensor that "
            "matters in a parameter or a persistent buffer",
        )


def check_head(
    component: ComponentLike,
    params: Any = None,
    *,
    context: BuildContext | None = None,
    feature_dim: int = 16,
    num_classes: int = 5,
    seed: int = 0,
    devices: Sequence[str | torch.device] | None = None,
) -> None:
    """Check the ``head`` contract: features ``[N, feature_dim]`` to finite logits
    ``[N, num_classes]``; the sign convention ``E(x) = -logsumexp``, ``E(x, y) = -logits[y]``;
    determinism, ``state_dict`` round trip and moves as for backbones."""
    subject = _Subject("head", component, params)
    ctx = dataclasses.replace(context or tiny_context(), feature_dim=feature_dim, num_classes=num_classes)
    with _isolated_rng():
        head = subject.build(ctx, seed=seed)
        subject.require(isinstance(head, EnergyHead), f"returned {type(head).__name__}, not a jemkit.contracts.EnergyHead")
        features = torch.randn(6, feature_dim, generator=torch.Generator().manual_seed(seed))
        logits = head(features)
        subject.require(
            tuple(logits.shape) == (6, num_classes), f"maps features (6, {feature_dim}) to {tuple(logits.shape)}, expected (6, {num_classes})"
        )
        subject.require(_finite(logits), "gives non-finite logits")
        declared = getattr(head, "num_classes", num_classes)
        subject.require(declared == num_classes, f"num_classes is {declared!r}, but the context asked for {num_classes}")
        energy = head.energy(logits)
        subject.require(tuple(energy.shape) == (6,), f"energy(logits) has shape {tuple(energy.shape)}, expected (6,)")
        subject.require(
            torch.allclose(energy, -torch.logsumexp(logits, 1)),
            "energy(logits) must be -logsumexp(logits) (lower energy = more likely)",
        )
        y = torch.arange(6) % num_classes
        subject.require(
            torch.allclose(head.energy(logits, y), -logits[torch.arange(6), y]),
            "energy(logits, y) must be -logits[y] (lower energy = more likely)",
        )
        _check_model_state(subject, head, ctx, seed, lambda m: m(features))
        _check_module_moves(subject, head, lambda m, dtype, device: m(features.to(device, dtype)), devices)


# --------------------------------------------------------------------------- sampling kinds


def check_chain_init(
    component: ComponentLike,
    params: Any = None,
    *,
    context: BuildContext | None = None,
    seed: int = 0,
    devices: Sequence[str | torch.device] | None = None,
) -> None:
    """Check the ``chain_init`` contract: ``start`` gives finite chains of the context's input
    shape (with labels and without) and a ``reinit_fraction`` in ``[0, 1]``; ``finish`` takes
    chains back; ``state_dict`` holds tensors only and a copy loaded from it continues
    identically; same seed, same starts; starts on the device asked for."""
    subject = _Subject("chain_init", component, params)
    ctx = context or tiny_context()
    shape = tuple(ctx.input_shape or ())
    classes = ctx.num_classes or 10
    cpu = torch.device("cpu")
    with _isolated_rng():
        init = subject.build(ctx, seed=seed)
        subject.require(isinstance(init, ChainInit), f"returned {type(init).__name__}, not a jemkit.contracts.ChainInit")
        y = torch.arange(6) % classes
        for labels in (y, None):
            start = init.start(6, labels, cpu)
            what = "start(6, y)" if labels is not None else "start(6, None)"
            subject.require(
                tuple(start.x.shape) == (6, *shape), f"{what} gave chains {tuple(start.x.shape)}, expected {(6, *shape)}"
            )
            subject.require(start.x.is_floating_point() and _finite(start.x), f"{what} gave non-finite or non-float chains")
            fraction = float(start.reinit_fraction)
            subject.require(0.0 <= fraction <= 1.0, f"{what} reported reinit_fraction {fraction}, outside [0, 1]")
            init.finish(start, start.x + 0.5)
        state = init.state_dict()
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
        subject.require(not bad, f"state_dict() must map names to tensors (checkpoints are safetensors); bad entries {bad[:5]}")
        clone = subject.build(ctx, seed=seed + 1)
        clone.load_state_dict(state)
        restored = clone.state_dict()
        for key, value in state.items():
            subject.require(key in restored and torch.equal(restored[key], value), f"state_dict round trip changed {key!r}")
        _seed(seed + 2)
        expected = init.start(6, y, cpu).x
        _seed(seed + 2)
        subject.require(
            torch.equal(clone.start(6, y, cpu).x, expected),
            "a copy that loaded its state_dict starts different chains under the same seed",
        )
        first = subject.build(ctx, seed=seed)
        second = subject.build(ctx, seed=seed)
        _seed(seed + 3)
        a = first.start(6, y, cpu).x
        _seed(seed + 3)
        subject.require(torch.equal(second.start(6, y, cpu).x, a), "two builds under the same seed start different chains")
        for device in _extra_devices(devices):
            x = init.start(6, y.to(device), device).x
            subject.require(x.device.type == device.type, f"start(..., device={str(device)!r}) gave chains on {x.device}")


def check_transition(
    component: ComponentLike,
    params: Any = None,
    *,
    context: BuildContext | None = None,
    seed: int = 0,
    devices: Sequence[str | torch.device] | None = None,
) -> None:
    """Check the ``transition`` contract on ``E(x) = |x - 0.3|^2 / 2``: 20 steps from ``x = 3``
    lower the mean energy; shapes, finiteness, 0-dim diagnostics, nothing left requiring grad;
    same seed, same step; dtype and device of ``x`` kept; ``graph_safe`` and ``differentiable``
    claims honoured (see the module docstring)."""
    subject = _Subject("transition", component, params)
    ctx = context or tiny_context()
    shape = tuple(ctx.input_shape or (1, 8, 8))
    energy = quadratic_energy
    with _isolated_rng():
        transition = subject.build(ctx, seed=seed)
        subject.require(
            isinstance(transition, Transition), f"returned {type(transition).__name__}, not a jemkit.contracts.Transition"
        )
        x = torch.full((6, *shape), 3.0)
        start = energy(x).mean()
        for index in range(20):
            result = transition.step(x, energy)
            _check_step_result(subject, result, x, f"step {index + 1}")
            x = result.x
        subject.require(
            energy(x).mean() < start,
            f"20 steps from x = 3 did not lower the mean energy of E(x) = |x - 0.3|^2 / 2 "
            f"({float(start):.4g} -> {float(energy(x).mean()):.4g}); the step must descend the energy",
        )
        x0 = torch.full((6, *shape), 3.0) + torch.randn(6, *shape, generator=torch.Generator().manual_seed(seed))
        first, fresh = subject.build(ctx, seed=seed), subject.build(ctx, seed=seed)
        _seed(seed + 1)
        expected = first.step(x0, energy)
        _seed(seed + 1)
        again = fresh.step(x0, energy)
        subject.require(
            torch.equal(again.x, expected.x),
            "two steps from the same x under the same seed differ; draw random numbers from torch's generator",
        )
        as_double = transition.step(x0.double(), energy)
        subject.require(as_double.x.dtype == torch.float64, f"a float64 x came back as {as_double.x.dtype}; keep x's dtype")
        subject.require(_finite(as_double.x), "a float64 step gave non-finite chains")
        for device in _extra_devices(devices):
            moved = transition.step(x0.to(device), energy)
            subject.require(moved.x.device.type == device.type, f"chains on {device} came back on {moved.x.device}")
        if getattr(transition, "graph_safe", False):
            _check_graph_safe(subject, ctx, x0, expected, seed)
        if getattr(transition, "differentiable", False):
            _check_differentiable(subject, transition, x0, seed)


def _check_step_result(subject: _Subject, result: Any, x: Tensor, where: str) -> None:
    subject.require(isinstance(result, StepResult), f"{where} returned {type(result).__name__}, not a StepResult")
    subject.require(result.x.shape == x.shape, f"{where} changed the chains' shape {tuple(x.shape)} -> {tuple(result.x.shape)}")
    subject.require(
        tuple(result.energy.shape) == (x.shape[0],), f"{where}: energy has shape {tuple(result.energy.shape)}, expected ({x.shape[0]},)"
    )
    subject.require(
        isinstance(result.grad_norm, Tensor) and result.grad_norm.dim() == 0,
        f"{where}: grad_norm must be a 0-dim tensor (no device sync), got {result.grad_norm!r}",
    )
    subject.require(not result.x.requires_grad, f"{where} returned chains that require grad; detach them")
    subject.require(
        _finite(result.x) and _finite(result.energy) and _finite(result.grad_norm), f"{where} gave non-finite values"
    )
    if result.accept_rate is not None:
        rate = result.accept_rate
        subject.require(
            isinstance(rate, Tensor) and rate.dim() == 0 and 0.0 <= float(rate) <= 1.0,
            f"{where}: accept_rate must be a 0-dim tensor in [0, 1] or None, got {rate!r}",
        )


def _check_graph_safe(subject: _Subject, ctx: BuildContext, x0: Tensor, expected: StepResult, seed: int) -> None:
    """``graph_safe = True``: runs on meta tensors, and keeps no state from one call to the next."""
    transition = subject.build(ctx, seed=seed)
    try:
        meta = transition.step(x0.to("meta"), quadratic_energy)
    except (RuntimeError, NotImplementedError) as exc:
        raise subject.fail(
            "declares graph_safe = True, but its step cannot run without reading tensor values or "
            f"mixing devices (on meta tensors: {type(exc).__name__}: {str(exc).splitlines()[0]}); remove "
            ".item(), Python branches on tensor values and tensors made without device=x.device, "
            "or set graph_safe = False"
        ) from exc
    subject.require(meta.x.device.type == "meta", "declares graph_safe = True, but its step returns tensors not made from x")
    warmed = subject.build(ctx, seed=seed)
    warmed.step(x0 * -2.0, quadratic_energy)
    _seed(seed + 1)
    after = warmed.step(x0, quadratic_energy)
    subject.require(
        torch.equal(after.x, expected.x),
        "declares graph_safe = True, but a step depends on the calls before it (state kept between "
        "calls); keep no state, or set graph_safe = False",
    )


def _curved_energy(x: Tensor) -> Tensor:
    """``E(x) = |x - 0.3|^2 / 4 + |x|^4 / 100`` per chain: a step on it depends on ``x`` whatever the step size."""
    flat = x.flatten(1)
    return 0.25 * (flat - 0.3).pow(2).sum(1) + 0.01 * flat.pow(4).sum(1)


def _check_differentiable(subject: _Subject, transition: Transition, x0: Tensor, seed: int) -> None:
    """``differentiable = True``: ``differentiable_step`` makes the update of ``step`` (same random
    numbers under the same seed) and its gradient matches a central finite difference in float64."""
    _seed(seed + 1)
    expected = transition.step(x0, _curved_energy).x

    def run(x: Tensor) -> Tensor:
        """``differentiable_step`` from ``x`` (which requires grad) under the seed of ``expected``."""
        _seed(seed + 1)
        with torch.enable_grad():
            return transition.differentiable_step(x, _curved_energy)

    x = x0.clone().requires_grad_(True)
    out = run(x)
    subject.require(
        isinstance(out, Tensor) and out.shape == x.shape and out.requires_grad,
        "declares differentiable = True, but differentiable_step does not return chains in x's autograd graph",
    )
    subject.require(
        torch.allclose(out.detach(), expected, rtol=1e-5, atol=1e-5),
        "differentiable_step differs from step under the same seed; make the same update with the same random numbers",
    )
    x64 = x0.double().requires_grad_(True)
    direction = torch.randn(x64.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    (grad,) = torch.autograd.grad(run(x64).sum(), x64)
    subject.require(_finite(grad), "gradients through differentiable_step are not finite")
    eps = 1e-4
    ahead = (x0.double() + eps * direction).requires_grad_(True)
    behind = (x0.double() - eps * direction).requires_grad_(True)
    finite_difference = float((run(ahead).sum() - run(behind).sum()).detach() / (2 * eps))
    autograd_value = float((grad * direction).sum())
    subject.require(
        math.isclose(autograd_value, finite_difference, rel_tol=1e-3, abs_tol=1e-6),
        "gradients through differentiable_step do not match finite differences "
        f"({autograd_value:.6g} vs {finite_difference:.6g}); keep the energy's input gradient in the "
        "graph (create_graph=True, see jemkit.contracts.energy_grad_in_graph)",
    )


# --------------------------------------------------------------------------- training kinds


def check_loss(
    component: ComponentLike,
    params: Any = None,
    *,
    context: BuildContext | None = None,
    model: Callable[[], JointEnergyModel] | None = None,
    seed: int = 0,
) -> None:
    """Check the ``loss`` contract on a tiny model and an 8-item batch: a 0-dim finite loss whose
    gradient reaches every weight; ``metrics`` with ``loss`` and ``acc``, string keys and values
    that are numbers or 0-dim tensors, all finite; ``histograms`` (if any) detached, finite 1-D
    tensors; same seed, same loss. ``model`` builds the model (default :func:`tiny_model` for the
    context's input shape and classes)."""
    subject = _Subject("loss", component, params)
    ctx = context or tiny_context()
    shape = tuple(ctx.input_shape or (1, 8, 8))
    classes = ctx.num_classes or 10
    make_model = model or (lambda: tiny_model(shape, classes, seed))

    def evaluate() -> tuple[Any, Loss, JointEnergyModel, _CountingSampler]:
        net = make_model()
        loss = subject.build(ctx, seed=seed)
        subject.require(isinstance(loss, Loss), f"returned {type(loss).__name__}, not a jemkit.contracts.Loss")
        sampler = _CountingSampler(shape)
        generator = torch.Generator().manual_seed(seed)
        batch = Batch(x=torch.rand(8, *shape, generator=generator) * 2 - 1, y=torch.arange(8) % classes)
        _seed(seed + 1)
        return loss(net, batch, sampler), loss, net, sampler

    with _isolated_rng():
        output, loss, net, sampler = evaluate()
        subject.require(
            hasattr(output, "loss") and hasattr(output, "metrics"), f"returned {type(output).__name__}, not a LossOutput"
        )
        subject.require(
            isinstance(output.loss, Tensor) and output.loss.dim() == 0 and _finite(output.loss),
            f"loss must be a finite 0-dim tensor, got {output.loss!r}",
        )
        metrics = output.metrics
        subject.require(isinstance(metrics, Mapping), f"metrics must be a dict, got {type(metrics).__name__}")
        subject.require("loss" in metrics and "acc" in metrics, f"metrics must hold 'loss' and 'acc', got {sorted(metrics)}")
        for key, value in metrics.items():
            subject.require(isinstance(key, str) and key, f"metric keys are non-empty strings, got {key!r}")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            scalar = isinstance(value, Tensor) and value.dim() == 0
            subject.require(
                number or scalar,
                f"metric {key!r} must be a float or a 0-dim tensor, got {type(value).__name__}"
                + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else ""),
            )
            subject.require(math.isfinite(float(value)), f"metric {key!r} is not finite ({float(value)})")
        histograms = getattr(output, "histograms", None) or {}
        subject.require(isinstance(histograms, Mapping), f"histograms must be a dict, got {type(histograms).__name__}")
        for key, values in histograms.items():
            subject.require(isinstance(key, str) and key, f"histogram names are non-empty strings, got {key!r}")
            subject.require(
                isinstance(values, Tensor) and values.dim() == 1 and not values.requires_grad,
                f"histogram {key!r} must be a detached 1-D tensor of per-input values, got "
                + (f"shape {tuple(values.shape)}, requires_grad={values.requires_grad}" if isinstance(values, Tensor) else type(values).__name__),
            )
            subject.require(_finite(values), f"histogram {key!r} has non-finite values")
        output.loss.backward()
        missing = [name for name, p in net.named_parameters() if p.grad is None]
        subject.require(not missing, f"the loss's gradient does not reach {missing[:5]}")
        again = evaluate()[0]
        subject.require(
            torch.equal(again.loss.detach(), output.loss.detach()),
            "two evaluations under the same seed give different losses; draw random numbers from torch",
        )
        subject.require(
            not sampler.calls or loss.needs_sampler,
            "draws from the sampler but does not declare needs_sampler = True (its sampler diagnostics go unlogged)",
        )


def check_optimizer(component: ComponentLike, params: Any = None, *, context: BuildContext | None = None, seed: int = 0) -> None:
    """Check the ``optimizer`` contract: 20 steps on ``|w|^2`` from ``w = (2, -3)`` lower it; a
    fresh optimiser that loads the state dict continues identically."""
    subject = _Subject("optimizer", component, params)
    ctx = context or tiny_context()
    with _isolated_rng():
        weight = nn.Parameter(torch.tensor([2.0, -3.0]))
        optimizer = subject.build(ctx, [weight], seed=seed)
        subject.require(
            isinstance(optimizer, torch.optim.Optimizer), f"returned {type(optimizer).__name__}, not a torch.optim.Optimizer"
        )
        before = weight.pow(2).sum().item()

        def descend(opt: torch.optim.Optimizer, w: nn.Parameter, steps: int) -> None:
            for _ in range(steps):
                opt.zero_grad()
                w.pow(2).sum().backward()
                opt.step()

        descend(optimizer, weight, 20)
        subject.require(weight.pow(2).sum().item() < before, f"20 steps did not lower |w|^2 (from {before})")
        twin_weight = nn.Parameter(weight.detach().clone())
        twin = subject.build(ctx, [twin_weight], seed=seed)
        twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as a checkpoint round trip would
        descend(optimizer, weight, 3)
        descend(twin, twin_weight, 3)
        subject.require(torch.equal(weight, twin_weight), "an optimiser that loaded the state dict continues differently")


def check_schedule(component: ComponentLike, params: Any = None, *, context: BuildContext | None = None, seed: int = 0) -> None:
    """Check the ``schedule`` contract: over 30 steps the learning rate stays in ``(0, base]``
    (base 0.1); a fresh schedule that loads the state dict is at the same step."""
    subject = _Subject("schedule", component, params)
    ctx = context or tiny_context()
    with _isolated_rng():
        weight = nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        schedule = subject.build(ctx, optimizer, seed=seed)
        lrs = []
        for _ in range(30):
            optimizer.step()
            schedule.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        subject.require(all(0 < lr <= 0.1 + 1e-12 for lr in lrs), f"learning rates leave (0, 0.1]: {lrs}")
        fresh = subject.build(ctx, torch.optim.SGD([weight], lr=0.1), seed=seed)
        fresh.load_state_dict(schedule.state_dict())
        subject.require(fresh.last_epoch == schedule.last_epoch, "a schedule that loaded the state dict is at another step")


# --------------------------------------------------------------------------- data kinds


def _check_item(subject: _Subject, item: Any, shape: tuple[int, ...], classes: int | None, where: str) -> None:
    x, y = item[:2]
    subject.require(isinstance(x, Tensor), f"{where}: inputs must be tensors, got {type(x).__name__}")
    subject.require(tuple(x.shape) == shape, f"{where}: input of shape {tuple(x.shape)}, expected {shape}")
    subject.require(x.dtype == torch.float32, f"{where}: inputs must be float32, got {x.dtype}")
    subject.require(_finite(x), f"{where}: non-finite inputs")
    low, high = float(x.min()), float(x.max())
    subject.require(
        low >= -1 - INPUT_SLACK and high <= 1 + INPUT_SLACK,
        f"{where}: inputs span [{low:.3g}, {high:.3g}]; inputs are scaled to [-1, 1] (plus a little noise)",
    )
    subject.require(int(y) == y, f"{where}: label {y!r} is not an integer")
    if classes is not None:
        subject.require(int(y) in range(classes), f"{where}: label {int(y)} outside [0, {classes})")


def check_data(component: ComponentLike, params: Any = None, *, context: BuildContext | None = None, seed: int = 0) -> None:
    """Check the ``data`` contract: :class:`DataSplits` whose train and test items are float32
    inputs of ``input_shape`` in ``[-1, 1]`` (plus noise) with labels in ``[0, num_classes)``;
    two builds under the same seed give the same first items."""
    subject = _Subject("data", component, params)
    ctx = context or tiny_context(input_shape=None, num_classes=None, train_data=None, test_data=None)
    with _isolated_rng():
        data = subject.build(ctx, seed=seed)
        subject.require(isinstance(data, DataSplits), f"returned {type(data).__name__}, not jemkit.contracts.DataSplits")
        shape = tuple(data.input_shape)
        subject.require(data.num_classes >= 1, f"num_classes must be at least 1, got {data.num_classes}")
        for split_name in ("train", "test"):
            split = getattr(data, split_name)
            subject.require(len(split) > 0, f"the {split_name} split is empty")
            _check_item(subject, split[0], shape, data.num_classes, f"{split_name}[0]")
        twin = subject.build(ctx, seed=seed)
        for split_name in ("train", "test"):
            _seed(seed + 1)  # augmentation and input noise draw from torch's generator (see jemkit.item_seeds)
            a = getattr(data, split_name)[0]
            _seed(seed + 1)
            b = getattr(twin, split_name)[0]
            subject.require(
                torch.equal(torch.as_tensor(a[0]), torch.as_tensor(b[0])),
                f"two builds under the same seed give different {split_name}[0] inputs when read under the "
                "same seed; draw augmentation and noise from torch's generator",
            )


def check_ood(
    component: ComponentLike,
    params: Any = None,
    *,
    shapes: Sequence[Sequence[int]] = EVAL_SHAPES,
    context: BuildContext | None = None,
) -> None:
    """Check the ``ood`` contract: built for each of ``shapes`` it supports (a ``ValueError``
    means unsupported), first and last items have that shape, float32, in ``[-1, 1]`` (plus
    noise), integer labels; at least one shape must be supported."""
    subject = _Subject("ood", component, params)
    built = 0
    with _isolated_rng():
        for shape in (tuple(s) for s in shapes):
            ctx = context or tiny_context(input_shape=shape)
            ctx = dataclasses.replace(ctx, input_shape=shape, test_data=_small_split(10, shape, 10, 1))
            _seed(0)
            try:
                dataset = subject.factory(subject.params, ctx)
            except ValueError:
                continue  # a set made for other input shapes (SVHN for digits models)
            built += 1
            subject.require(isinstance(dataset, Dataset) or hasattr(dataset, "__getitem__"), "must return a Dataset")
            subject.require(len(dataset) > 0, f"is empty for input shape {shape}")
            for index in (0, len(dataset) - 1):
                _check_item(subject, dataset[index], shape, None, f"item {index} for input shape {shape}")
    subject.require(built, f"supports none of the input shapes {list(shapes)} (its factory raised ValueError for each)")


def check_feature_extractor(
    component: ComponentLike,
    params: Any = None,
    *,
    shapes: Sequence[Sequence[int]] = EVAL_SHAPES,
    context: BuildContext | None = None,
) -> None:
    """Check the ``feature_extractor`` contract: for each of ``shapes`` it supports (a
    ``ValueError`` means unsupported), a ``FeatureExtractor`` with a ``weights`` note whose
    features ``[N, feature_dim]`` and logits ``[N, num_classes]`` are finite."""
    subject = _Subject("feature_extractor", component, params)
    built = 0
    with _isolated_rng():
        for shape in (tuple(s) for s in shapes):
            ctx = dataclasses.replace(context or tiny_context(), input_shape=shape)
            _seed(0)
            try:
                extractor = subject.factory(subject.params, ctx)
            except ValueError:
                continue
            built += 1
            subject.require(
                isinstance(extractor, FeatureExtractor) and extractor.weights,
                "must return a FeatureExtractor whose `weights` says where its weights come from",
            )
            with torch.no_grad():
                features, logits = extractor.eval().features_and_logits(torch.rand(3, *shape) * 2 - 1)
            subject.require(
                tuple(features.shape) == (3, extractor.feature_dim) and tuple(logits.shape) == (3, extractor.num_classes),
                f"gave features {tuple(features.shape)} and logits {tuple(logits.shape)} for 3 inputs of shape {shape}",
            )
            subject.require(_finite(features) and _finite(logits), f"non-finite features or logits for shape {shape}")
    subject.require(built, f"supports none of the input shapes {list(shapes)}")


def check_importer(component: ComponentLike, params: Any = None, *, context: BuildContext | None = None) -> None:
    """Check the ``importer`` contract: the factory returns a :class:`jemkit.importing.Importer`,
    and reading an empty file or one of random bytes raises a ``JemkitError`` (one clear
    paragraph), never another exception and never a run."""
    import tempfile
    from pathlib import Path

    from jemkit.errors import JemkitError
    from jemkit.importing import Importer

    subject = _Subject("importer", component, params)
    with _isolated_rng():
        importer = subject.build(context or tiny_context())
        subject.require(isinstance(importer, Importer), f"must return a jemkit.importing.Importer, got {type(importer).__name__}")
        with tempfile.TemporaryDirectory() as folder:
            for what, data in (("empty", b""), ("random-bytes", np.random.default_rng(0).bytes(4096))):
                path = Path(folder) / f"{what}.ckpt"
                path.write_bytes(data)
                try:
                    importer.read(path)
                except JemkitError:
                    continue
                except Exception as exc:
                    raise subject.fail(f"reading an {what} file raised {type(exc).__name__} ({exc}), not a JemkitError") from exc
                raise subject.fail(f"reading an {what} file returned a run instead of raising a JemkitError")


# --------------------------------------------------------------------------- dispatch


#: The check of each component kind.
CHECKS: dict[str, Callable[..., None]] = {
    "backbone": check_backbone,
    "head": check_head,
    "chain_init": check_chain_init,
    "transition": check_transition,
    "loss": check_loss,
    "data": check_data,
    "optimizer": check_optimizer,
    "schedule": check_schedule,
    "ood": check_ood,
    "feature_extractor": check_feature_extractor,
    "importer": check_importer,
}


def check_built(component: Component, params: Any = None, *, context: BuildContext | None = None, seed: int = 0) -> None:
    """The check of a kind without its own (see :data:`CHECKS`): the factory builds something
    from its parameters and :func:`tiny_context`, and two builds under the same seed are of one type."""
    subject = _Subject(component.kind, component, params)
    ctx = context or tiny_context()
    with _isolated_rng():
        first, second = subject.build(ctx, seed=seed), subject.build(ctx, seed=seed)
    subject.require(first is not None, "the factory returned None")
    subject.require(type(first) is type(second), "two builds under the same seed return objects of different types")


def check_component(component: Component, params: Any = None, **options: Any) -> None:
    """Run the contract check of ``component``'s kind (:func:`check_built` for a kind without
    one, of :data:`~jemkit.registry.KINDS`); ``params`` is a mapping of recipe values
    (validated like a recipe section) or a params instance; ``options`` go to that check."""
    if not isinstance(component, Component):
        raise TypeError(
            f"check_component needs a registered jemkit Component (see plugin_components), got {component!r}; "
            "for a bare factory call the check of its kind, e.g. check_transition(factory, params)"
        )
    CHECKS.get(component.kind, check_built)(component, params, **options)


def plugin_components(plugin: ModuleType | object | str, name: str | None = None) -> list[Component]:
    """Register ``plugin`` (a module, an object with hook functions, or a module's import name)
    alone through jemkit's plugin manager and return its components, in kind order.

    Raises :class:`ContractViolation` when it fails to load or register, with jemkit's reason.
    """
    import importlib

    from jemkit.plugin_manager import load_plugins

    if isinstance(plugin, str):
        plugin = importlib.import_module(plugin)
    label = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    loaded = load_plugins([(label, plugin)], builtins=(), entry_points=False)
    if loaded.failures:
        raise ContractViolation(" ".join(f.message() for f in loaded.failures))
    return loaded.registries.components()


def contract_cases(plugin: ModuleType | object | str | Sequence[Component], kinds: Sequence[str] | None = None) -> list[Any]:
    """One ``pytest.param(component, id="kind:name")`` per component of ``plugin`` (as
    :func:`plugin_components` registers it) or of a list of components, for
    ``@pytest.mark.parametrize("component", contract_cases(...))``; ``kinds`` filters."""
    import pytest

    if isinstance(plugin, Sequence) and not isinstance(plugin, str):
        components = list(plugin)
    else:
        components = plugin_components(plugin)
    return [
        pytest.param(c, id=f"{c.kind}:{c.name}") for c in components if kinds is None or c.kind in kinds
    ]
