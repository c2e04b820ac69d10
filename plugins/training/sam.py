"""Sharpness-aware minimisation (SAM, Foret et al. 2021; adaptive ASAM, Kwon et al. 2021), as used by SADA-JEM.

One SAM step with gradient ``g`` at weights ``w``:

1. ascend to the worst nearby weights ``w + e``, ``e = rho * T^2 g / ||T g||`` with ``T = 1``
   (SAM) or ``T = |w|`` element-wise (adaptive, ASAM), norms over all parameters;
2. recompute the loss and gradient there (the kernel's ``closure``: same batch, same negatives);
3. step the base optimiser (SGD or Adam) from the original ``w`` with that gradient.

The optimiser declares ``requires_closure = True``; the training loop then calls
``step(closure)`` after computing the gradients at ``w``. Called without a closure, it is a
plain step of its base optimiser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext

#: Base optimisers SAM can wrap.
BASES: tuple[str, ...] = ("sgd", "adam")


class SAM(torch.optim.Optimizer):
    """SAM/ASAM around a base ``torch.optim`` optimiser sharing its parameter groups.

    The learning rate lives in the shared groups, so LR schedules on this optimiser drive the
    base. ``state_dict`` is the base optimiser's (momentum buffers included) plus ``rho`` and
    ``adaptive`` in each group.
    """

    requires_closure = True

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        base: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _perturbation(self) -> list[tuple[Tensor, Tensor]]:
        """``(parameter, e)`` for every parameter with a gradient (``e`` as in the module docstring)."""
        scaled_norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    scaled = p.grad * p.abs() if group["adaptive"] else p.grad
                    scaled_norms.append(scaled.norm(2))
        if not scaled_norms:
            return []
        norm = torch.stack(scaled_norms).norm(2)
        out = []
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad * scale
                if group["adaptive"]:
                    e = e * p.pow(2)
                out.append((p, e))
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """SAM step given gradients at the current weights; ``closure`` recomputes them at the given weights."""
        if closure is None:
            return self.base_optimizer.step()
        perturbation = self._perturbation()
        for p, e in perturbation:
            p.add_(e)
        with torch.enable_grad():
            loss = closure()
        for p, e in perturbation:
            p.sub_(e)
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # torch replaces the group list on load; keep sharing it with the base optimiser.
        self.param_groups = self.base_optimizer.param_groups


@dataclass
class SAMParams:
    """SAM/ASAM (SADA-JEM: rho 2, adaptive) wrapping SGD or Adam; base settings sit beside rho."""

    #: Radius of the weight perturbation (ASAM's rho is larger: 0.5-2).
    rho: float = 0.05
    #: ASAM: scale the perturbation element-wise by |w| (scale-invariant sharpness).
    adaptive: bool = False
    #: Base optimiser: sgd or adam.
    base: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0
    #: SGD only.
    momentum: float = 0.9
    nesterov: bool = False
    #: Adam only.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8

    def __post_init__(self) -> None:
        if self.rho < 0:
            raise ValueError(f"rho must be non-negative, got {self.rho}")
        if self.base not in BASES:
            raise ValueError(f"unknown base optimizer {self.base!r}; choose one of {', '.join(BASES)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


def build_sam(params: SAMParams, context: BuildContext, parameters: Iterable[torch.nn.Parameter]) -> SAM:
    """Sharpness-aware minimisation (SAM, or ASAM with adaptive) around SGD or Adam; two passes per step."""
    if params.base == "sgd":
        kwargs: dict[str, Any] = dict(
            lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay, nesterov=params.nesterov
        )
        return SAM(parameters, torch.optim.SGD, params.rho, params.adaptive, **kwargs)
    kwargs = dict(lr=params.lr, betas=tuple(params.betas), eps=params.eps, weight_decay=params.weight_decay)
    return SAM(parameters, torch.optim.Adam, params.rho, params.adaptive, **kwargs)


@hookimpl
def jemkit_register_optimizers(registry) -> None:
    registry.register("sam", build_sam, params=SAMParams)
