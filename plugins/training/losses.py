"""Built-in losses: the JEM hybrid objective and plain cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import (
    HISTOGRAM_ENERGY_DATA,
    HISTOGRAM_ENERGY_SAMPLES,
    Batch,
    BuildContext,
    JointEnergyModel,
    Loss,
    LossOutput,
    Sampler,
)


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

    def __call__(self, model: JointEnergyModel, batch: Batch, sampler: Sampler) -> LossOutput:
        p = self.params
        x, y = batch.x, batch.y
        n = x.shape[0]
        inputs: dict[str, Tensor] = {"data": x}
        if batch.x_px is not None and (p.px > 0 or p.pxy > 0):
            inputs["px"] = batch.x_px  # p(x) positives without augmentation (SADA-JEM)
        if p.px > 0:
            inputs["neg"] = sampler.sample(model, n)
        if p.pxy > 0:
            inputs["neg_y"] = sampler.sample(model, n, y=y)
        logits = _forward(model, inputs, fused=p.fuse_forward)

        ce = F.cross_entropy(logits["data"], y)
        energy_data = model.energy_from_logits(logits.get("px", logits["data"]))
        loss = p.pyx * ce
        metrics: dict[str, Tensor] = {"ce": ce.detach(), "acc": _accuracy(logits["data"].detach(), y)}
        metrics["energy_data"] = energy_data.detach().mean()
        histograms = {HISTOGRAM_ENERGY_DATA: energy_data.detach()}  # per-input energies, for loggers
        energy_terms = [energy_data]
        if "neg" in logits:
            energy_samples = model.energy_from_logits(logits["neg"])
            px_term = energy_data.mean() - energy_samples.mean()
            loss = loss + p.px * px_term
            metrics["px"] = px_term.detach()
            metrics["energy_samples"] = energy_samples.detach().mean()
            histograms[HISTOGRAM_ENERGY_SAMPLES] = energy_samples.detach()
            energy_terms.append(energy_samples)
        if "neg_y" in logits:
            energy_data_y = model.energy_from_logits(logits.get("px", logits["data"]), y)
            energy_samples_y = model.energy_from_logits(logits["neg_y"], y)
            pxy_term = energy_data_y.mean() - energy_samples_y.mean()
            loss = loss + p.pxy * pxy_term
            metrics["pxy"] = pxy_term.detach()
            metrics.setdefault("energy_samples", energy_samples_y.detach().mean())
            histograms.setdefault(HISTOGRAM_ENERGY_SAMPLES, energy_samples_y.detach())
            energy_terms.append(energy_samples_y)
        if p.energy_l2 > 0:
            l2 = sum(e.pow(2).mean() for e in energy_terms)
            loss = loss + p.energy_l2 * l2
            metrics["energy_l2"] = l2.detach()
        metrics["loss"] = loss.detach()
        return LossOutput(loss=loss, metrics=metrics, histograms=histograms)


def _forward(model: JointEnergyModel, inputs: dict[str, Tensor], fused: bool) -> dict[str, Tensor]:
    """Logits for each named batch: one forward pass over the concatenation when ``fused``."""
    if not fused or len(inputs) == 1:
        return {name: model(x) for name, x in inputs.items()}
    outputs = model(torch.cat(list(inputs.values()))).split([x.shape[0] for x in inputs.values()])
    return dict(zip(inputs, outputs))


def build_jem_loss(params: JEMLossParams, context: BuildContext) -> JEMLoss:
    """JEM hybrid: weighted p(y|x) cross-entropy, p(x) and p(x,y) likelihood, optional energy L2."""
    return JEMLoss(params)


class CrossEntropyLoss(Loss):
    """Plain classifier training: cross-entropy on ``p(y|x)`` only."""

    needs_sampler = False

    def __call__(self, model: JointEnergyModel, batch: Batch, sampler: Sampler) -> LossOutput:
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
