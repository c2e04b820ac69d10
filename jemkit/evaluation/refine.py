"""Input refinement by a sampler transition on ``E(x)`` and the JEM defence built on it.

Refinement runs ``steps`` transitions of a sampler transition (the run's own, or SGLD with given
step size and noise) on the marginal energy ``E(x) = -logsumexp f(x)``: it moves inputs downhill in
energy, i.e. towards higher ``log p(x)``.

The defence (:class:`DefendedClassifier`, Grathwohl et al. 2020) classifies the average of the
logits of ``copies`` refined noisy copies ``x + N(0, noise^2)``. Every forward pass draws fresh
noise, so an attack's gradient is an expectation over transformations (EOT, Athalye et al. 2018).
How the gradient passes the refinement is the ``attack`` mode:

- ``end_to_end``: the refinement's own steps (for SGLD ``x <- x - step_size * dE/dx + noise *
  N(0, I)``) are differentiated exactly through the transition's
  :meth:`~jemkit.contracts.Transition.differentiable_step` (second-order autograd through every
  energy gradient). Needs a transition that declares ``differentiable = True``.
- ``bpda``: Backward Pass Differentiable Approximation: the refinement counts as the identity in the
  backward pass (the gradient of the logits at the refined point). Works with any transition, but
  can mask gradients when refinement moves inputs far (a plain classifier's chains run away).
"""

from __future__ import annotations

import torch
from torch import Tensor

from jemkit.contracts import JointEnergyModel, Transition
from jemkit.sampler import model_mode, run_chains

#: Ways an attack differentiates through the defence's refinement.
ATTACKS: tuple[str, ...] = ("end_to_end", "bpda")


def refine(model: JointEnergyModel, x: Tensor, transition: Transition, steps: int, mode: str = "eval") -> Tensor:
    """``x`` after ``steps`` transitions on ``E(x)`` (model in ``mode`` meanwhile); detached."""
    return run_chains(model, transition, x, None, max(steps, 0), mode=mode).x


def refine_differentiable(
    model: JointEnergyModel, x: Tensor, transition: Transition, steps: int, mode: str = "eval"
) -> Tensor:
    """``x`` after ``steps`` :meth:`~jemkit.contracts.Transition.differentiable_step` calls on ``E(x)``,
    kept differentiable in ``x`` (model in ``mode`` meanwhile); the same random draws as :func:`refine`."""
    if not getattr(transition, "differentiable", False):
        raise ValueError(f"{type(transition).__name__} declares no differentiable step (differentiable = False)")
    bind = getattr(transition, "bind", None)
    if callable(bind):  # the optional protocol of run_chains: transitions that need the model
        bind(model, None)
    with model_mode(model, mode), torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        for _ in range(max(steps, 0)):
            x = transition.differentiable_step(x, model.energy)
    return x


class DefendedClassifier:
    """Logits ``[N, C]`` averaged over ``copies`` noisy, refined copies of the input.

    ``attack="end_to_end"`` differentiates through the refinement with ``transition``'s
    differentiable step (it must declare ``differentiable = True``); ``"bpda"`` refines with
    ``transition`` and passes gradients straight through. Without a gradient to compute, both
    refine with ``transition.step``.
    """

    def __init__(
        self,
        model: JointEnergyModel,
        transition: Transition,
        steps: int,
        copies: int,
        noise: float,
        mode: str = "eval",
        attack: str = "bpda",
    ) -> None:
        if copies < 1 or steps < 0 or noise < 0:
            raise ValueError(f"need copies >= 1, steps >= 0, noise >= 0; got {copies}, {steps}, {noise}")
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        if attack == "end_to_end" and not getattr(transition, "differentiable", False):
            raise ValueError(
                f"the end_to_end attack differentiates the refinement, but {type(transition).__name__} "
                "declares no differentiable step; use attack='bpda'"
            )
        self.model = model
        self.transition = transition
        self.steps = steps
        self.copies = copies
        self.noise = noise
        self.mode = mode
        self.attack = attack

    def _one_copy(self, x: Tensor) -> Tensor:
        noisy = x + self.noise * torch.randn_like(x) if self.noise > 0 else x
        if self.attack == "end_to_end" and x.requires_grad and torch.is_grad_enabled():
            refined = refine_differentiable(self.model, noisy, self.transition, self.steps, self.mode)
            return self.model(refined)
        refined = refine(self.model, noisy, self.transition, self.steps, self.mode)
        return self.model(noisy + (refined - noisy).detach())  # BPDA: identity in the backward pass

    def __call__(self, x: Tensor) -> Tensor:
        total = self._one_copy(x)
        for _ in range(self.copies - 1):
            total = total + self._one_copy(x)
        return total / self.copies
