"""Built-in losses: the JEM hybrid objective and plain cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import Batch, BuildContext, JointEnergyModel, Loss, LossOutput


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == y).float().mean()


@dataclass
class JEMLossParams:
    """Weights of the JEM terms: ``pyx * CE + px * L_p(x) + pxy * L_p(x,y) + energy_l2 * (E_d^2 + E_s^2)``."""

    #: Weight of the cross-entropy term ``-log p(y|x)``.
    pyx: float = 1.0
    #: Weight of the maximum-likelihood term ``E(x_data) - E(x_samples)`` for ``log p(x)``.
    px: float = 1.0
    #: Weight of the class-conditional term ``E(x_data, y) - E(x_samples_y, y)`` for ``log p(x, y)``.
    pxy: float = 0.0
    #: Coefficient of the energy L2 regulariser ``mean(E(x_data)^2) + mean(E(x_samples)^2)`` (0.1-0.5 stabilises).
    energy_l2: float = 0.0
    #: Run data and negatives through the model in one forward pass (only exact without batch norm).
    fuse_forward: bool = False

    def __post_init__(self) -> None:
        for key in ("pyx", "px", "pxy", "energy_l2"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be non-negative, got {getattr(self, key)}")
        if self.pyx == self.px == self.pxy == 0:
            raise ValueError("at least one of pyx, px, pxy must be positive")


class JEMLoss(Loss):
    """JEM hybrid loss; negatives come from the sampler (model in its sampling mode)."""

    def __init__(self, params: JEMLossParams) -> None:
        self.params = params
        self.needs_sampler = params.px > 0 or params.pxy > 0

    def __call__(self, model: JointEnergyModel, batch: Batch, sampler) -> LossOutput:
        p = self.params
        x, y = batch.x, batch.y
        n = x.shape[0]
        x_neg = sampler.sample(model, n) if p.px > 0 else None
        x_neg_y = sampler.sample(model, n, y=y) if p.pxy > 0 else None

        if p.fuse_forward and (x_neg is not None or x_neg_y is not None):
            parts = [x] + [t for t in (x_neg, x_neg_y) if t is not None]
            all_logits = model(torch.cat(parts)).split([t.shape[0] for t in parts])
            logits = all_logits[0]
            rest = list(all_logits[1:])
            logits_neg = rest.pop(0) if x_neg is not None else None
            logits_neg_y = rest.pop(0) if x_neg_y is not None else None
        else:
            logits = model(x)
            logits_neg = model(x_neg) if x_neg is not None else None
            logits_neg_y = model(x_neg_y) if x_neg_y is not None else None

        ce = F.cross_entropy(logits, y)
        energy_data = model.energy_from_logits(logits)
        loss = p.pyx * ce
        metrics: dict[str, Tensor] = {"ce": ce.detach(), "acc": _accuracy(logits.detach(), y)}
        metrics["energy_data"] = energy_data.detach().mean()
        energy_terms = [energy_data]
        if logits_neg is not None:
            energy_samples = model.energy_from_logits(logits_neg)
            px_term = energy_data.mean() - energy_samples.mean()
            loss = loss + p.px * px_term
            metrics["px"] = px_term.detach()
            metrics["energy_samples"] = energy_samples.detach().mean()
            energy_terms.append(energy_samples)
        if logits_neg_y is not None:
            energy_data_y = model.energy_from_logits(logits, y)
            energy_samples_y = model.energy_from_logits(logits_neg_y, y)
            pxy_term = energy_data_y.mean() - energy_samples_y.mean()
            loss = loss + p.pxy * pxy_term
            metrics["pxy"] = pxy_term.detach()
            metrics.setdefault("energy_samples", energy_samples_y.detach().mean())
            energy_terms.append(energy_samples_y)
        if p.energy_l2 > 0:
            l2 = sum(e.pow(2).mean() for e in energy_terms)
            loss = loss + p.energy_l2 * l2
            metrics["energy_l2"] = l2.detach()
        metrics["loss"] = loss.detach()
        return LossOutput(loss=loss, metrics=metrics)


def build_jem_loss(params: JEMLossParams, context: BuildContext) -> JEMLoss:
    """JEM hybrid: weighted p(y|x) cross-entropy, p(x) and p(x,y) likelihood, optional energy L2."""
    return JEMLoss(params)


class CrossEntropyLoss(Loss):
    """Plain classifier training: cross-entropy on ``p(y|x)`` only."""

    needs_sampler = False

    def __call__(self, model: JointEnergyModel, batch: Batch, sampler) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        metrics = {
            "ce": ce.detach(),
            "acc": _accuracy(logits.detach(), batch.y),
            "energy_data": model.energy_from_logits(logits.detach()).mean(),
            "loss": ce.detach(),
        }
        return LossOutput(loss=ce, metrics=metrics)


def build_cross_entropy(params: None, context: BuildContext) -> CrossEntropyLoss:
    """Plain cross-entropy classifier (the baseline): no sampling."""
    return CrossEntropyLoss()


@hookimpl
def jemkit_register_losses(registry) -> None:
    registry.register("jem", build_jem_loss, params=JEMLossParams)
    registry.register("cross_entropy", build_cross_entropy)
