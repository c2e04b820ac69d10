"""Metropolis-adjusted transitions: MALA and HMC, exact for ``p(x) ∝ exp(-E(x))`` at any step size.

Both accept or reject each chain separately and report the batch's acceptance rate in
:attr:`~jemkit.contracts.StepResult.accept_rate`. Energies are in nats (``-log p`` up to a
constant); lower energy = more likely, and the gradient moves descend ``E``.

Each transition remembers the energy and gradient of the states it returned, so a chain of
steps on the same energy function (one ``Sampler.sample`` call) spends no extra gradient
evaluation at the start of each step. The cache is keyed on the energy function object and the
exact input tensor; it assumes the function does not change between steps with the same
function object (the sampler freezes the weights for the duration of a call).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext, EnergyFn, StepResult, Transition, energy_and_grad


def _per_chain(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``[N, ...] -> [N]``."""
    return t.flatten(1).sum(1)


def _broadcast_chains(mask: Tensor, like: Tensor) -> Tensor:
    """A per-chain tensor ``[N]`` (a mask, step sizes) reshaped to broadcast against ``like`` ``[N, ...]``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


class _GradientCache:
    """Energy and ``dE/dx`` of the last returned states, reused when the next step starts there."""

    def __init__(self) -> None:
        self._fn: weakref.ref | None = None
        self._x: Tensor | None = None
        self._key: tuple | None = None
        self._value: tuple[Tensor, Tensor] | None = None

    @staticmethod
    def _fingerprint(x: Tensor) -> tuple:
        # Same storage, layout and version counter: the same values (the cache holds ``x``, so its
        # storage cannot be freed and reused meanwhile).
        return (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version)

    def energy_and_grad(self, energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor]:
        fn = self._fn() if self._fn is not None else None
        if fn is energy_fn and self._value is not None and self._key == self._fingerprint(x):
            return self._value
        return energy_and_grad(energy_fn, x)

    def store(self, energy_fn: EnergyFn, x: Tensor, energy: Tensor, grad: Tensor) -> None:
        try:
            self._fn = weakref.ref(energy_fn)
        except TypeError:  # a callable without weak-reference support: do not cache
            self._fn, self._x, self._key, self._value = None, None, None, None
            return
        self._x = x
        self._key = self._fingerprint(x)
        self._value = (energy, grad)


# --------------------------------------------------------------------------- MALA


@dataclass
class MALAParams:
    """Metropolis-adjusted Langevin: proposal ``x' = x - step_size * dE/dx + sqrt(2 * step_size) * N(0, I)``."""

    #: Langevin step size ``eps`` in input units squared (noise std ``sqrt(2 eps)``).
    step_size: float = 0.01

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")


def _metropolis(
    cache: _GradientCache,
    energy_fn: EnergyFn,
    x: Tensor,
    proposal: Tensor,
    log_alpha: Tensor,
    energies: tuple[Tensor, Tensor],
    grads: tuple[Tensor, Tensor],
) -> StepResult:
    """Move each chain to ``proposal`` with probability ``min(1, exp(log_alpha))``.

    ``energies`` and ``grads`` are (current, proposed). A NaN or ``-inf`` ``log_alpha`` (from NaN or
    infinite proposal energies) rejects. The kept energies and gradients go to ``cache`` for the
    next step, which then needs no extra forward and backward pass at its start.
    """
    (energy, energy_p), (grad, grad_p) = energies, grads
    accept = torch.log(torch.rand_like(energy)) < log_alpha
    mask = _broadcast_chains(accept, x)
    x_new = torch.where(mask, proposal, x)
    cache.store(energy_fn, x_new, torch.where(accept, energy_p, energy), torch.where(mask, grad_p, grad))
    return StepResult(
        x=x_new, energy=energy, grad_norm=grad.flatten(1).norm(dim=1).mean(), accept_rate=accept.float().mean()
    )


class MALA(Transition):
    """Langevin proposal plus a per-chain Metropolis-Hastings test with the asymmetric proposal ratio.

    With ``g = dE/dx``: ``log q(x'|x) = -|x' - x + eps g(x)|^2 / (4 eps)`` and a chain moves to
    ``x'`` with probability ``min(1, exp(E(x) - E(x') + log q(x|x') - log q(x'|x)))``.
    """

    def __init__(self, step_size: float) -> None:
        self.step_size = step_size
        self._cache = _GradientCache()

    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        eps = self.step_size
        x = x.detach()
        energy, grad = self._cache.energy_and_grad(energy_fn, x)
        noise = torch.randn_like(x)
        proposal = x - eps * grad + math.sqrt(2.0 * eps) * noise
        energy_p, grad_p = energy_and_grad(energy_fn, proposal)
        # log q(x'|x): the forward residual is exactly sqrt(2 eps) * noise.
        log_q_forward = -0.5 * _per_chain(noise.pow(2))
        log_q_reverse = -_per_chain((x - proposal + eps * grad_p).pow(2)) / (4.0 * eps)
        log_alpha = energy - energy_p + log_q_reverse - log_q_forward
        return _metropolis(self._cache, energy_fn, x, proposal, log_alpha, (energy, energy_p), (grad, grad_p))


def build_mala(params: MALAParams, context: BuildContext) -> MALA:
    """MALA: Langevin proposal with a per-chain Metropolis correction; exact at any step size."""
    return MALA(params.step_size)


# --------------------------------------------------------------------------- HMC


@dataclass
class HMCParams:
    """Hamiltonian Monte Carlo: ``leapfrog_steps`` leapfrog steps of ``step_size``, then a Metropolis test."""

    step_size: float = 0.1
    #: Leapfrog steps L per transition (gradient evaluations per transition).
    leapfrog_steps: int = 10
    #: Scalar (isotropic diagonal) mass m: momenta are drawn from ``N(0, m I)``.
    mass: float = 1.0
    #: Each chain's step size is ``step_size * (1 + step_jitter * U(-1, 1))``, drawn per transition;
    #: breaks the periodic trajectories a fixed length can hit on near-Gaussian targets (in [0, 1)).
    step_jitter: float = 0.0

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        if self.leapfrog_steps < 1:
            raise ValueError(f"leapfrog_steps must be at least 1, got {self.leapfrog_steps}")
        if not self.mass > 0:
            raise ValueError(f"mass must be positive, got {self.mass}")
        if not 0.0 <= self.step_jitter < 1.0:
            raise ValueError(f"step_jitter must lie in [0, 1), got {self.step_jitter}")


class HMC(Transition):
    """HMC with a leapfrog integrator and a per-chain Metropolis test on ``H = E(x) + |p|^2 / (2 m)``."""

    def __init__(self, step_size: float, leapfrog_steps: int, mass: float = 1.0, step_jitter: float = 0.0) -> None:
        self.step_size = step_size
        self.leapfrog_steps = leapfrog_steps
        self.mass = mass
        self.step_jitter = step_jitter
        self._cache = _GradientCache()

    def _step_sizes(self, x: Tensor) -> Tensor | float:
        """The leapfrog step size: a scalar, or one per chain (broadcast over ``x``) with jitter."""
        if self.step_jitter == 0:
            return self.step_size
        u = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) * 2 - 1
        return _broadcast_chains(self.step_size * (1 + self.step_jitter * u), x)

    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        m = self.mass
        x = x.detach()
        eps = self._step_sizes(x)
        energy, grad = self._cache.energy_and_grad(energy_fn, x)
        momentum = torch.randn_like(x) * math.sqrt(m)
        kinetic_start = _per_chain(momentum.pow(2)) / (2.0 * m)

        position = x
        p = momentum - 0.5 * eps * grad
        energy_end, grad_end = energy, grad
        for i in range(self.leapfrog_steps):
            position = position + (eps / m) * p
            energy_end, grad_end = energy_and_grad(energy_fn, position)
            if i < self.leapfrog_steps - 1:
                p = p - eps * grad_end
        p = p - 0.5 * eps * grad_end
        kinetic_end = _per_chain(p.pow(2)) / (2.0 * m)

        log_alpha = (energy + kinetic_start) - (energy_end + kinetic_end)
        return _metropolis(self._cache, energy_fn, x, position, log_alpha, (energy, energy_end), (grad, grad_end))


def build_hmc(params: HMCParams, context: BuildContext) -> HMC:
    """HMC: leapfrog trajectories (L steps, scalar mass) with a per-chain Metropolis test on the Hamiltonian."""
    return HMC(params.step_size, params.leapfrog_steps, params.mass, params.step_jitter)


@hookimpl
def jemkit_register_transitions(registry) -> None:
    registry.register("mala", build_mala, params=MALAParams)
    registry.register("hmc", build_hmc, params=HMCParams)
