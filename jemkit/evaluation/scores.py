"""What a JEM says about each input: class probabilities and the three OOD scores.

Scores are oriented so that higher means "more in-distribution":

- ``log_px``: ``log p(x) = -E(x) = logsumexp_y f(x)[y]`` (up to the unknown constant ``log Z``);
- ``max_pyx``: ``max_y p(y|x)``, the classifier's confidence;
- ``grad_norm``: ``-|| d log p(x) / dx ||_2``, minus the input-gradient norm (JEM's "approximate
  mass" score: likely inputs sit where the density is flat).
"""

from __future__ import annotations

import torch
from torch import Tensor

from jemkit.contracts import JointEnergyModel

SCORES: tuple[str, ...] = ("log_px", "max_pyx", "grad_norm")


def predict_probs(model: JointEnergyModel, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """``p(y|x)`` ``[N, C]`` (float64, CPU) of inputs ``x`` in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for chunk in torch.split(x, batch_size):
            out.append(torch.softmax(model(chunk.to(device)).double(), dim=1).cpu())
    return torch.cat(out)


def ood_scores(model: JointEnergyModel, x: Tensor, batch_size: int, device: torch.device) -> dict[str, Tensor]:
    """The three scores of :data:`SCORES`, each ``[N]`` float64 on the CPU."""
    model.eval()
    parts: dict[str, list[Tensor]] = {name: [] for name in SCORES}
    for chunk in torch.split(x, batch_size):
        with torch.enable_grad():
            inputs = chunk.to(device).detach().requires_grad_(True)
            logits = model(inputs)
            log_px = torch.logsumexp(logits, dim=1)
            (grad,) = torch.autograd.grad(log_px.sum(), inputs)
        logits, log_px = logits.detach().double(), log_px.detach().double()
        parts["log_px"].append(log_px.cpu())
        parts["max_pyx"].append(torch.softmax(logits, dim=1).max(dim=1).values.cpu())
        parts["grad_norm"].append(-grad.double().flatten(1).norm(dim=1).cpu())
    return {name: torch.cat(values) for name, values in parts.items()}
