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

from jemkit.chain_graphs import ChainGraphCache, ChainLoopOutput, LoopBody, loop_key
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
        cuda_graphs: bool = False,
    ) -> None:
        self.init = init
        self.transition = transition
        self.steps = steps
        self.model_mode = model_mode
        self.freeze_weights = freeze_weights
        #: Compute the energy after the final step for diagnostics (costs one forward pass).
        self.track_final_energy = track_final_energy
        #: Replay the K-step loop as a CUDA graph on CUDA devices (graph-safe transitions only).
        self.cuda_graphs = cuda_graphs
        self.graph_cache = ChainGraphCache()
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

        with model_mode(model, self.model_mode), frozen_weights(model, self.freeze_weights):
            if self._graphs_apply(x, steps):
                key = loop_key(x, y, steps, self.model_mode, self.freeze_weights)
                out = self.graph_cache.run(key, model, x, y, lambda xs, ys: self._loop_body(model, xs, ys, steps))
            else:
                out = self._loop_body(model, x, y, steps)()
        x = out.x
        if persist:
            self.init.finish(start, x)
        diagnostics = {"reinit_fraction": float(start.reinit_fraction)}
        if out.first_energy is not None and out.last_energy is not None:
            diagnostics["energy_start"] = float(out.first_energy)
            diagnostics["energy_end"] = float(out.last_energy)
        if out.grad_norm is not None:
            diagnostics["grad_norm"] = float(out.grad_norm)
        if out.accept_rate is not None:
            diagnostics["accept_rate"] = float(out.accept_rate)
        self.last_diagnostics = diagnostics
        return x.detach()

    def _graphs_apply(self, x: Tensor, steps: int) -> bool:
        """Whether this call replays a CUDA graph: enabled, on CUDA, K > 0, graph-safe transition."""
        return (
            self.cuda_graphs
            and x.device.type == "cuda"
            and steps > 0
            and getattr(self.transition, "graph_safe", False)
            and not callable(getattr(self.transition, "bind", None))
        )

    def _loop_body(self, model: JointEnergyModel, x: Tensor, y: Tensor | None, steps: int) -> LoopBody:
        """The K-step loop on chains ``x`` (read, never written) as a closure, eager or captured."""

        def energy_fn(inputs: Tensor) -> Tensor:
            return model.energy(inputs, y)

        def body() -> ChainLoopOutput:
            chains = x
            energies: list[Tensor] = []
            grad_norms: list[Tensor] = []
            accepts: list[Tensor] = []
            for _ in range(steps):
                result = self.transition.step(chains, energy_fn)
                chains = result.x.detach()
                energies.append(result.energy.mean())
                grad_norms.append(result.grad_norm)
                if result.accept_rate is not None:
                    accepts.append(result.accept_rate)
            out = ChainLoopOutput(x=chains)
            if steps:
                out.first_energy, out.last_energy = energies[0], energies[-1]
                out.grad_norm = torch.stack(grad_norms).mean()
                if self.track_final_energy:
                    with torch.no_grad():
                        out.last_energy = energy_fn(chains).mean()
            if accepts:
                out.accept_rate = torch.stack(accepts).mean()
            return out

        return body

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
