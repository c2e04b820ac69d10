"""JEM++ transitions (Yang & Ji, ICCV 2021): proximal SGLD and PYLD.

Both descend the energy (lower = more likely) with the input gradient clamped element-wise to
``[-grad_clamp, grad_clamp]`` and keep every sample inside the box ``[low, high]`` (the data
range, ``[-1, 1]``). JEM++ runs them without noise; ``noise`` adds ``N(0, noise^2)`` per update.

PYLD ("YOPO"-style Langevin) splits the model at its first layer ``z1 = first_layer(x)``: one
full backward pass gives ``p = dE/dz1``; then ``inner_steps`` cheap updates of ``x`` use only the
first layer's vector-Jacobian product ``(dz1/dx)^T p`` with ``p`` held fixed. It needs the
model, which the sampler hands over through the transition's ``bind(model, y)`` method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from jemkit import hookimpl
from jemkit.contracts import (
    BuildContext,
    EnergyFn,
    JointEnergyModel,
    StepResult,
    Transition,
    energy_and_grad,
    energy_grad_in_graph,
)
from jemkit.errors import RecipeError


class MissingFirstLayerError(RecipeError, ValueError):
    """PYLD was asked to sample from a backbone without a ``first_layer`` module."""


def proximal_update(
    x: Tensor, grad: Tensor, step_size: float, grad_clamp: float, low: float, high: float, noise: float
) -> Tensor:
    """``clamp(x - step_size * clamp(grad, -c, c) + noise * N(0, I), low, high)`` (a descent step on E)."""
    x_new = x - step_size * grad.clamp(-grad_clamp, grad_clamp)
    if noise > 0:
        x_new = x_new + noise * torch.randn_like(x)
    return x_new.clamp(low, high)


# --------------------------------------------------------------------------- proximal SGLD


@dataclass
class ProximalSGLDParams:
    """JEM++ proximal SGLD: gradient clamped to ``[-grad_clamp, grad_clamp]``, samples to ``[low, high]``."""

    step_size: float = 1.0
    grad_clamp: float = 1.0
    low: float = -1.0
    high: float = 1.0
    #: Std of Gaussian noise added per step, in input units (JEM++: 0, no noise).
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.step_size < 0:
            raise ValueError(f"step_size must be non-negative, got {self.step_size}")
        if not self.grad_clamp > 0:
            raise ValueError(f"grad_clamp must be positive, got {self.grad_clamp}")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")
        if self.noise < 0:
            raise ValueError(f"noise must be non-negative, got {self.noise}")


class ProximalSGLD(Transition):
    """``x <- clamp(x - step_size * clamp(dE/dx, -c, c) + noise * N(0, I), low, high)``."""

    graph_safe = True
    differentiable = True

    def __init__(self, params: ProximalSGLDParams) -> None:
        self.params = params

    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        p = self.params
        energy, grad = energy_and_grad(energy_fn, x)
        x_new = proximal_update(x.detach(), grad, p.step_size, p.grad_clamp, p.low, p.high, p.noise)
        # grad_norm reports the unclamped gradient, so logs show how hard the clamp bites.
        return StepResult(x=x_new, energy=energy, grad_norm=grad.flatten(1).norm(dim=1).mean())

    def differentiable_step(self, x: Tensor, energy_fn: EnergyFn) -> Tensor:
        """The update of :meth:`step` as a function of ``x``; both clamps pass zero gradient where they bind."""
        p = self.params
        grad = energy_grad_in_graph(energy_fn, x)
        return proximal_update(x, grad, p.step_size, p.grad_clamp, p.low, p.high, p.noise)


def build_proximal_sgld(params: ProximalSGLDParams, context: BuildContext) -> ProximalSGLD:
    """JEM++ proximal SGLD: clamped gradient step, samples clamped to [low, high], noise off by default."""
    return ProximalSGLD(params)


# --------------------------------------------------------------------------- PYLD


@dataclass
class PYLDParams(ProximalSGLDParams):
    """JEM++ PYLD: per outer step one full backward, then ``inner_steps`` first-layer-only updates
    (each a proximal step with the settings of :class:`ProximalSGLDParams`)."""

    #: Std of Gaussian noise added per inner update, in input units (JEM++: 0).
    noise: float = 0.0
    #: Updates of x per full backward pass (the first uses the exact dE/dx), at least 1.
    inner_steps: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be at least 1, got {self.inner_steps}")


class PYLD(Transition):
    """PYLD outer step: ``p = dE/dz1`` once, then ``inner_steps`` proximal updates along ``(dz1/dx)^T p``.

    Bound to a model (``bind``), ``z1`` is the output of ``model.backbone.first_layer``. Unbound,
    the first layer is the identity, so the inner updates reuse ``dE/dx`` (projected gradient
    descent with a frozen gradient); that is what the contract tests exercise.
    """

    def __init__(self, params: PYLDParams) -> None:
        self.params = params
        self.first_layer: nn.Module | None = None

    def bind(self, model: JointEnergyModel, y: Tensor | None) -> None:
        """Use ``model.backbone.first_layer`` as the cheap layer; raise if the backbone has none."""
        backbone = getattr(model, "backbone", None)
        layer = getattr(backbone, "first_layer", None)
        if not isinstance(layer, nn.Module):
            raise MissingFirstLayerError(
                f"Transition 'pyld' needs a backbone with a `first_layer` module (the layer its cheap "
                f"inner steps differentiate through), but {type(backbone).__name__} has none. Use a "
                "backbone that exposes one (wrn, convnet, mlp), or choose sampler.transition.name="
                "proximal_sgld."
            )
        self.first_layer = layer

    def _full_backward(self, x: Tensor, energy_fn: EnergyFn) -> tuple[Tensor, Tensor, Tensor]:
        """Energies ``[N]``, ``dE/dx`` and ``p = dE/dz1`` at ``x`` (all detached)."""
        layer = self.first_layer
        if layer is None:
            energy, grad = energy_and_grad(energy_fn, x)
            return energy, grad, grad
        outputs: list[Tensor] = []
        handle = layer.register_forward_hook(lambda module, args, out: outputs.append(out))
        try:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                energy = energy_fn(x_in)
        finally:
            handle.remove()
        if len(outputs) != 1:
            raise RuntimeError(
                f"PYLD expects the backbone to call first_layer once per forward pass, saw {len(outputs)} calls"
            )
        grad_x, p = torch.autograd.grad(energy.sum(), [x_in, outputs[0]])
        return energy.detach(), grad_x.detach(), p.detach()

    def _first_layer_vjp(self, x: Tensor, p: Tensor) -> Tensor:
        """``(d first_layer(x) / dx)^T p`` at ``x``."""
        if self.first_layer is None:
            return p
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.first_layer(x_in), x_in, grad_outputs=p)
        return grad.detach()

    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        q = self.params
        energy, grad_x, p = self._full_backward(x, energy_fn)
        x_cur = x.detach()
        for k in range(q.inner_steps):
            grad = grad_x if k == 0 else self._first_layer_vjp(x_cur, p)
            x_cur = proximal_update(x_cur, grad, q.step_size, q.grad_clamp, q.low, q.high, q.noise)
        return StepResult(x=x_cur, energy=energy, grad_norm=grad_x.flatten(1).norm(dim=1).mean())


def build_pyld(params: PYLDParams, context: BuildContext) -> PYLD:
    """JEM++ PYLD: one full backward per step, then cheap first-layer-only inner updates (needs first_layer)."""
    return PYLD(params)


@hookimpl
def jemkit_register_transitions(registry) -> None:
    registry.register("proximal_sgld", build_proximal_sgld, params=ProximalSGLDParams)
    registry.register("pyld", build_pyld, params=PYLDParams)
