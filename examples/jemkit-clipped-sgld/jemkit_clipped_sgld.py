"""A jemkit transition plugin: SGLD whose per-chain gradient is clipped to a maximum L2 norm."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext, EnergyFn, StepResult, Transition, energy_and_grad
from jemkit.errors import JemkitError


@dataclass
class ClippedSGLDParams:
    """``x <- x - step_size * clip(dE/dx) + noise * N(0, I)``, clip: per-chain L2 norm <= max_grad_norm."""

    step_size: float = 1.0
    noise: float = 0.01
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.step_size < 0 or self.noise < 0:
            raise ValueError(f"step_size and noise must be non-negative, got {self.step_size}, {self.noise}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")


class ClippedSGLD(Transition):
    """SGLD step with each chain's ``dE/dx`` rescaled down to L2 norm at most ``max_grad_norm``."""

    def __init__(self, step_size: float, noise: float, max_grad_norm: float) -> None:
        self.step_size = step_size
        self.noise = noise
        self.max_grad_norm = max_grad_norm

    def step(self, x: Tensor, energy_fn: EnergyFn) -> StepResult:
        energy, grad = energy_and_grad(energy_fn, x)
        norms = grad.flatten(1).norm(dim=1)  # [N], one norm per chain
        scale = (self.max_grad_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
        clipped = grad * scale.view(-1, *([1] * (grad.dim() - 1)))
        x_new = x - self.step_size * clipped
        if self.noise > 0:
            x_new = x_new + self.noise * torch.randn_like(x)
        # grad_norm reports the unclipped gradient, so logs show how hard the clip bites.
        return StepResult(x=x_new, energy=energy, grad_norm=norms.mean())


def build_clipped_sgld(params: ClippedSGLDParams, context: BuildContext) -> ClippedSGLD:
    """SGLD with per-chain gradient-norm clipping (max_grad_norm) before each step."""
    return ClippedSGLD(params.step_size, params.noise, params.max_grad_norm)


@hookimpl
def jemkit_register_transitions(registry) -> None:
    registry.register("clipped_sgld", build_clipped_sgld, params=ClippedSGLDParams)


@hookimpl
def jemkit_register_commands(subparsers: Any) -> None:
    """Add ``jemkit clipped-sgld-demo``: one noiseless chain on a 2-D Gaussian, step by step."""
    demo = subparsers.add_parser(
        "clipped-sgld-demo",
        help="run clipped_sgld without noise on E(x) = |x|^2 / 2 and print the distance to the mode per step",
    )
    demo.add_argument("--steps", type=int, default=10, help="transition steps (default 10)")
    demo.add_argument("--step-size", type=float, default=1.0, help="step_size (default 1.0)")
    demo.add_argument("--max-grad-norm", type=float, default=1.0, help="max_grad_norm (default 1.0)")
    demo.add_argument("--start", type=float, default=10.0, help="distance of the start from the mode (default 10)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace, console: Any, errors: Any) -> int:
    """Print ``step distance energy`` rows: far from the mode each step moves by step_size * max_grad_norm."""
    try:
        params = ClippedSGLDParams(step_size=args.step_size, noise=0.0, max_grad_norm=args.max_grad_norm)
    except ValueError as exc:
        raise JemkitError(f"clipped-sgld-demo: {exc}. Pass positive --step-size and --max-grad-norm.") from None
    if args.steps < 1:
        raise JemkitError(f"clipped-sgld-demo: --steps must be at least 1, got {args.steps}.")
    transition = build_clipped_sgld(params, BuildContext())

    def energy(x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(1)

    x = torch.tensor([[args.start, 0.0]], dtype=torch.float64)
    console.print("step distance energy", highlight=False)
    for step in range(1, args.steps + 1):
        x = transition.step(x, energy).x
        console.print(f"{step} {x.norm().item():.6f} {energy(x).item():.6f}", highlight=False)
    return 0
