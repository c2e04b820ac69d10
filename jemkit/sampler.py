"""The sampler: a chain initialiser composed with a transition, run for K steps.

"Short-run" (chains start from noise every call) and "persistent" (chains start from a replay
buffer) are choices of initialiser in the recipe, not separate classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from jemkit.contracts import ChainInit, JointEnergyModel, Transition


@contextlib.contextmanager
def frozen_weights(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter for the duration (restored afterwards).

    Sampling needs only input gradients; frozen weights spare the weight-gradient work.
    """
    if not enabled:
        yield
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def model_mode(module: nn.Module, mode: str) -> Iterator[None]:
    """Put ``module`` in ``train`` or ``eval`` mode for the duration, restoring the previous mode."""
    was_training = module.training
    module.train(mode == "train")
    try:
        yield
    finally:
        module.train(was_training)


class Sampler:
    """Draws approximate samples of ``p(x) ∝ exp(-E(x))`` (or ``p(x|y)``) from a model."""

    def __init__(
        self,
        init: ChainInit,
        transition: Transition,
        steps: int,
        model_mode: str = "eval",
        freeze_weights: bool = True,
        track_final_energy: bool = False,
    ) -> None:
        self.init = init
        self.transition = transition
        self.steps = steps
        self.model_mode = model_mode
        self.freeze_weights = freeze_weights
        #: Compute the energy after the final step for diagnostics (costs one forward pass).
        self.track_final_energy = track_final_energy
        #: Diagnostics of the latest call (plain floats), logged under ``sampler/``.
        self.last_diagnostics: dict[str, float] = {}

    def sample(
        self,
        model: JointEnergyModel,
        n: int,
        y: Tensor | None = None,
        *,
        steps: int | None = None,
        device: torch.device | None = None,
        persist: bool = True,
    ) -> Tensor:
        """Run ``n`` chains for ``steps`` (default: the recipe's K) transitions; returns ``[n, ...]``.

        With labels ``y`` the chains target ``p(x|y)`` through ``E(x, y)``. ``persist=False`` leaves
        a replay buffer untouched (for sample grids that must not disturb training).
        """
        device = device or next(model.parameters()).device
        if y is not None:
            y = y.to(device)
        bind = getattr(self.transition, "bind", None)
        if callable(bind):  # optional protocol: transitions that need the model (PYLD)
            bind(model, y)
        start = self.init.start(n, y, device)
        x = start.x
        steps = self.steps if steps is None else steps

        def energy_fn(inputs: Tensor) -> Tensor:
            return model.energy(inputs, y)

        first_energy: Tensor | None = None
        last_energy: Tensor | None = None
        grad_norms: list[Tensor] = []
        accepts: list[Tensor] = []
        with model_mode(model, self.model_mode), frozen_weights(model, self.freeze_weights):
            for _ in range(steps):
                result = self.transition.step(x, energy_fn)
                x = result.x.detach()
                if first_energy is None:
                    first_energy = result.energy.mean()
                last_energy = result.energy.mean()
                grad_norms.append(result.grad_norm)
                if result.accept_rate is not None:
                    accepts.append(result.accept_rate)
            if steps and self.track_final_energy:
                with torch.no_grad():
                    last_energy = energy_fn(x).mean()
        if persist:
            self.init.finish(start, x)
        diagnostics = {"reinit_fraction": float(start.reinit_fraction)}
        if first_energy is not None and last_energy is not None:
            diagnostics["energy_start"] = float(first_energy)
            diagnostics["energy_end"] = float(last_energy)
        if grad_norms:
            diagnostics["grad_norm"] = float(torch.stack(grad_norms).mean())
        if accepts:
            diagnostics["accept_rate"] = float(torch.stack(accepts).mean())
        self.last_diagnostics = diagnostics
        return x.detach()

    def state_dict(self) -> dict[str, Tensor]:
        """The initialiser's state (a replay buffer), for checkpoints."""
        return dict(self.init.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.init.load_state_dict(dict(state))


class RecordingSampler:
    """Wraps a :class:`Sampler` and records what each ``sample`` call returned.

    Used when an optimiser (SAM) re-evaluates the loss at perturbed weights: the second
    evaluation must see the same negatives, not draw new ones.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.samples: list[Tensor] = []

    def sample(self, model: JointEnergyModel, n: int, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        x = self.sampler.sample(model, n, y, **kwargs)
        self.samples.append(x)
        return x

    @property
    def last_diagnostics(self) -> dict[str, float]:
        return self.sampler.last_diagnostics

    def replay(self) -> ReplayedSamples:
        """A sampler stand-in that returns the recorded samples again, in the same order."""
        return ReplayedSamples(self.samples)


class ReplayedSamples:
    """Returns previously recorded samples in order (see :class:`RecordingSampler`)."""

    def __init__(self, samples: list[Tensor]) -> None:
        self.samples = samples
        self.index = 0
        self.last_diagnostics: dict[str, float] = {}

    def sample(self, model: JointEnergyModel, n: int, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        if self.index >= len(self.samples):
            raise RuntimeError("the loss drew more samples when re-evaluated than on its first evaluation")
        x = self.samples[self.index]
        self.index += 1
        return x
