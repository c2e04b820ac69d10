"""Built-in optimisers (Adam, SGD) and per-iteration LR schedules (warm-up, multi-step decay)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR

from jemkit import hookimpl
from jemkit.contracts import BuildContext


@dataclass
class AdamParams:
    """Adam (JEM: lr 1e-4, no weight decay)."""

    #: Learning rate (the schedule scales it).
    lr: float = 1.0e-4
    #: Decay rates of the first and second moment estimates.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: Added to the denominator for numerical stability.
    eps: float = 1.0e-8
    #: L2 penalty added to the gradient (Adam, not decoupled AdamW).
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class SGDParams:
    """SGD with momentum (JEM++: lr 0.1, weight decay 4e-4)."""

    #: Learning rate (the schedule scales it).
    lr: float = 0.1
    momentum: float = 0.9
    #: L2 penalty added to the gradient.
    weight_decay: float = 0.0
    #: Nesterov momentum.
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def build_adam(params: AdamParams, context: BuildContext, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Adam:
    """Adam optimiser."""
    return torch.optim.Adam(
        parameters, lr=params.lr, betas=tuple(params.betas), eps=params.eps, weight_decay=params.weight_decay
    )


def build_sgd(params: SGDParams, context: BuildContext, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.SGD:
    """SGD with momentum and weight decay."""
    return torch.optim.SGD(
        parameters, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay, nesterov=params.nesterov
    )


@dataclass
class WarmupMultiStepParams:
    """Linear warm-up over ``warmup_steps`` iterations, then LR x ``gamma`` at each milestone epoch."""

    #: Iterations of linear warm-up from 0 to the optimiser's LR (JEM: 1000).
    warmup_steps: int = 0
    #: Epochs (not iterations) at which the LR is multiplied by ``gamma``.
    milestones: list[int] = field(default_factory=list)
    #: LR factor at each milestone (JEM: 0.3).
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be non-negative, got {self.warmup_steps}")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones must be increasing epochs, got {self.milestones}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")


def warmup_multistep_factor(step: int, warmup_steps: int, milestone_steps: list[int], gamma: float) -> float:
    """LR multiplier at iteration ``step`` (0-based): linear ramp to 1, then ``gamma**k`` after k milestones."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * gamma ** bisect.bisect_right(milestone_steps, step)


def build_warmup_multistep(params: WarmupMultiStepParams, context: BuildContext, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """Linear warm-up then multi-step decay at epoch milestones (JEM: x0.3 at 160 and 180)."""
    per_epoch = context.steps_per_epoch or 1
    milestone_steps = [m * per_epoch for m in params.milestones]

    def factor(step: int) -> float:
        return warmup_multistep_factor(step, params.warmup_steps, milestone_steps, params.gamma)

    return LambdaLR(optimizer, factor)


def build_constant(params: None, context: BuildContext, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """Constant learning rate."""
    return LambdaLR(optimizer, lambda step: 1.0)


@hookimpl
def jemkit_register_optimizers(registry) -> None:
    registry.register("adam", build_adam, params=AdamParams)
    registry.register("sgd", build_sgd, params=SGDParams)


@hookimpl
def jemkit_register_schedules(registry) -> None:
    registry.register("warmup_multistep", build_warmup_multistep, params=WarmupMultiStepParams)
    registry.register("constant", build_constant)
