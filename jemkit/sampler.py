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


def graph_capturable(transition: Transition) -> bool:
    """Whether ``transition``'s K-step loop may be captured as a CUDA graph: it declares
    ``graph_safe`` and binds no model per call (a ``bind`` hook changes what the loop reads)."""
    return bool(getattr(transition, "graph_safe", False)) and not callable(getattr(transition, "bind", None))


def graphs_apply(transition: Transition, x: Tensor, steps: int) -> bool:
    """Whether a K-step loop may replay a CUDA graph: on CUDA, K > 0, a graph-capturable transition."""
    return x.device.type == "cuda" and steps > 0 and graph_capturable(transition)


def chain_loop(
    model: JointEnergyModel, transition: Transition, x: Tensor, y: Tensor | None, steps: int,
    track_final_energy: bool = False,
) -> LoopBody:
    """The K-step loop on chains ``x`` (read, never written) as a closure, run eagerly or captured."""

    def energy_fn(inputs: Tensor) -> Tensor:
        return model.energy(inputs, y)

    def body() -> ChainLoopOutput:
        chains = x
        energies: list[Tensor] = []
        grad_norms: list[Tensor] = []
        accepts: list[Tensor] = []
        for _ in range(steps):
            result = transition.step(chains, energy_fn)
            chains = result.x.detach()
            energies.append(result.energy.mean())
            grad_norms.append(result.grad_norm)
            if result.accept_rate is not None:
                accepts.append(result.accept_rate)
        out = ChainLoopOutput(x=chains)
        if steps:
            out.first_energy, out.last_energy = energies[0], energies[-1]
            out.grad_norm = torch.stack(grad_norms).mean()
            out.nonfinite_step = first_nonfinite_step(energies, grad_norms, chains)
            if track_final_energy:
                with torch.no_grad():
                    out.last_energy = energy_fn(chains).mean()
        if accepts:
            out.accept_rate = torch.stack(accepts).mean()
        return out

    return body


def first_nonfinite_step(energies: list[Tensor], grad_norms: list[Tensor], final: Tensor) -> Tensor:
    """The first of K steps whose output was not finite, as a 0-dim integer tensor (no device sync).

    ``energies[k]`` and ``grad_norms[k]`` are the (mean) energy and gradient norm at the input of
    step ``k + 1``, so they reveal the output of step ``k``; ``final`` is the last step's output.
    ``0``: the input of the first step was already not finite; ``k``: step ``k``'s output was not;
    ``-1``: everything was finite.
    """
    inputs = torch.stack([e.detach().float().isfinite() & g.detach().float().isfinite() for e, g in zip(energies, grad_norms)])
    ok = torch.cat([inputs, final.detach().isfinite().all().reshape(1)])
    first_bad = torch.argmin(ok.to(torch.int8))  # the first False (argmin returns the first minimum)
    return torch.where(ok.all(), torch.full_like(first_bad, -1), first_bad)


def run_chains(
    model: JointEnergyModel,
    transition: Transition,
    x: Tensor,
    y: Tensor | None,
    steps: int,
    *,
    mode: str = "eval",
    freeze_weights: bool = True,
    track_final_energy: bool = False,
    graph_cache: ChainGraphCache | None = None,
) -> ChainLoopOutput:
    """Advance chains ``x`` by ``steps`` transitions on ``E(x, y)`` (``E(x)`` when ``y`` is None).

    The model is in ``mode`` (``eval``/``train``) and, with ``freeze_weights``, has no weight
    gradients meanwhile. With a ``graph_cache`` the loop replays a CUDA graph where
    :func:`graphs_apply` allows it. The returned chains are detached; ``x`` is not modified.
    """
    bind = getattr(transition, "bind", None)
    if callable(bind):  # optional protocol: transitions that need the model (PYLD)
        bind(model, y)
    x = x.detach()
    with model_mode(model, mode), frozen_weights(model, freeze_weights):
        if graph_cache is not None and graphs_apply(transition, x, steps):
            key = loop_key(x, y, steps, mode, freeze_weights, track_final_energy)
            return graph_cache.run(
                key, model, x, y, lambda xs, ys: chain_loop(model, transition, xs, ys, steps, track_final_energy)
            )
        return chain_loop(model, transition, x, y, steps, track_final_energy)()


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
        #: Diagnostics of the latest call as 0-dim tensors on the chains' device, logged under
        #: ``sampler/``. Kept as tensors so that sampling never waits for the device.
        self.last_diagnostic_tensors: dict[str, Tensor] = {}
        #: First non-finite step of the latest call (see :func:`first_nonfinite_step`; ``None``
        #: before any call with K > 0), read by :func:`jemkit.culprit.describe_nonfinite_chains`.
        self.last_nonfinite_step: Tensor | None = None
        #: K of the latest call.
        self.last_steps: int = steps

    @property
    def last_diagnostics(self) -> dict[str, float]:
        """Diagnostics of the latest call as plain floats (reading them waits for the device)."""
        return {key: float(value) for key, value in self.last_diagnostic_tensors.items()}

    def clear_diagnostics(self) -> None:
        """Forget the latest call's diagnostics (after a call that is not part of training)."""
        self.last_diagnostic_tensors = {}

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
        start = self.init.start(n, y, device)
        self.last_steps = self.steps if steps is None else steps
        out = run_chains(
            model, self.transition, start.x, y, self.last_steps,
            mode=self.model_mode, freeze_weights=self.freeze_weights, track_final_energy=self.track_final_energy,
            graph_cache=self.graph_cache if self.cuda_graphs else None,
        )
        if persist:
            self.init.finish(start, out.x)
        diagnostics = {"reinit_fraction": torch.as_tensor(start.reinit_fraction, dtype=torch.float32)}
        if out.first_energy is not None and out.last_energy is not None:
            diagnostics["energy_start"] = out.first_energy.detach()
            diagnostics["energy_end"] = out.last_energy.detach()
        if out.grad_norm is not None:
            diagnostics["grad_norm"] = out.grad_norm.detach()
        if out.accept_rate is not None:
            diagnostics["accept_rate"] = out.accept_rate.detach()
        self.last_diagnostic_tensors = diagnostics
        self.last_nonfinite_step = out.nonfinite_step
        return out.x.detach()

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
