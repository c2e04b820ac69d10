"""Projected gradient descent (PGD) attacks under L-inf and L2 norms, for inputs in ``[-1, 1]``.

Epsilons and step sizes are in the units of the model's inputs, ``[-1, 1]``: an L-inf budget of
``8/255`` in the common ``[0, 1]`` convention is ``16/255`` here. The attack maximises the
cross-entropy of the classifier's logits for the true labels; each step moves along the gradient
sign (L-inf) or the L2-normalised gradient (L2), then projects back onto the eps-ball around the
clean input and onto the input box ``[-1, 1]`` (widened per coordinate to include the clean
value, since input noise may put a clean coordinate slightly outside). The last iterate is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

NORMS: tuple[str, ...] = ("linf", "l2")

#: Default step size as a multiple of ``eps / steps`` (Madry et al. use about 2.5).
STEP_FACTOR = 2.5

Classifier = Callable[[Tensor], Tensor]


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: Tensor, norm: str, eps: float) -> Tensor:
    """``delta`` projected onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        scale = (eps / _per_sample_norm(delta).clamp(min=1e-12)).clamp(max=1.0)
        return delta * scale
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def pgd_attack(
    classifier: Classifier,
    x: Tensor,
    y: Tensor,
    norm: str,
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    random_start: bool = False,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial inputs within ``eps`` (``norm``) of ``x`` that raise the cross-entropy of ``classifier``.

    ``classifier`` maps inputs to logits ``[N, C]``; ``step_size`` defaults to
    ``2.5 * eps / steps``. ``clamp=None`` leaves the input box unbounded. ``eps = 0`` returns ``x``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if eps < 0 or steps < 0:
        raise ValueError(f"eps and steps must be non-negative, got eps={eps}, steps={steps}")
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = STEP_FACTOR * eps / steps if step_size is None else step_size
    if clamp is not None:
        low, high = torch.minimum(x, torch.full_like(x, clamp[0])), torch.maximum(x, torch.full_like(x, clamp[1]))

    def to_box(candidate: Tensor) -> Tensor:
        return candidate if clamp is None else torch.maximum(torch.minimum(candidate, high), low)

    delta = torch.zeros_like(x)
    if random_start:  # uniform in the L-inf box; for L2 a uniform direction at a uniform radius
        if norm == "linf":
            delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
        else:
            direction = torch.randn(x.shape, generator=generator).to(x)
            radius = torch.rand(len(x), generator=generator).to(x).view(-1, *([1] * (x.dim() - 1))) * eps
            delta = direction / _per_sample_norm(direction).clamp(min=1e-12) * radius
    x_adv = to_box(x + delta)
    for _ in range(steps):
        with torch.enable_grad():
            x_adv = x_adv.detach().requires_grad_(True)
            loss = F.cross_entropy(classifier(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        if norm == "linf":
            step = grad.sign()
        else:
            step = grad / _per_sample_norm(grad).clamp(min=1e-12)
        x_adv = to_box(x + project(x_adv.detach() + alpha * step - x, norm, eps))
    return x_adv.detach()


def accuracy(classifier: Classifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` that ``classifier`` labels ``y`` (no gradients)."""
    with torch.no_grad():
        return float((classifier(x).argmax(1) == y).double().mean())
