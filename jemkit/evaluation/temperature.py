"""Temperature scaling (Guo et al. 2017): one scalar ``T > 0`` dividing the logits, fitted by NLL.

``softmax(z / T)`` keeps every prediction and only changes confidences: ``T > 1`` softens an
over-confident model, ``T < 1`` sharpens an under-confident one. ``T`` is fitted on held-out
inputs by minimising the mean negative log-likelihood (nats), which is convex in ``1 / T``.

Without a validation split the fit is cross-validated on the test inputs (two folds from a seeded
permutation): each half is scaled with the temperature fitted on the other half, so no input is
scored with a temperature fitted on itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor

from jemkit.evaluation.calibration import expected_calibration_error

#: Search range of ``log T`` (T from about 0.007 to 150).
LOG_T_RANGE = (-5.0, 5.0)


def log_probs_as_logits(probs: Tensor) -> Tensor:
    """Logits equivalent to ``probs`` under softmax (``log p``, float64, zeros clamped to 1e-300)."""
    return probs.double().clamp_min(1e-300).log()


def mean_nll(logits: Tensor, y: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood (nats) of ``softmax(logits / temperature)`` at labels ``y``."""
    return float(F.cross_entropy(logits.double() / temperature, y))


def fit_temperature(logits: Tensor, y: Tensor) -> float:
    """The ``T`` minimising :func:`mean_nll` on ``(logits, y)`` (bounded search over ``log T``)."""
    if len(y) == 0:
        raise ValueError("temperature scaling needs at least one labelled input")
    logits = logits.double()
    result = minimize_scalar(
        lambda log_t: mean_nll(logits, y, math.exp(log_t)),
        bounds=LOG_T_RANGE,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return math.exp(float(result.x))


def scaled_probs(logits: Tensor, temperature: float) -> Tensor:
    """``softmax(logits / temperature)`` in float64."""
    return torch.softmax(logits.double() / temperature, dim=1)


def cross_fitted_temperatures(logits: Tensor, y: Tensor, seed: int = 0) -> tuple[Tensor, list[float]]:
    """Per-input temperatures from a two-fold cross-fit, and the two fitted values.

    Inputs of one fold get the temperature fitted on the other fold (seeded permutation).
    """
    n = len(y)
    if n < 4:
        raise ValueError(f"a cross-fitted temperature needs at least 4 inputs, got {n}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    folds = (order[: n // 2], order[n // 2 :])
    per_input = torch.empty(n, dtype=torch.float64)
    fitted = []
    for fit_on, apply_to in ((folds[1], folds[0]), (folds[0], folds[1])):
        t = fit_temperature(logits[fit_on], y[fit_on])
        per_input[apply_to] = t
        fitted.append(t)
    return per_input, fitted


def temperature_scaled_ece(
    probs: Tensor,
    y: Tensor,
    bins: int,
    val_probs: Tensor | None = None,
    val_y: Tensor | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """ECE (probability units, in ``[0, 1]``) after temperature scaling, and how it was fitted.

    With ``val_probs``/``val_y`` the temperature is fitted there; otherwise it is cross-fitted on
    the test inputs (:func:`cross_fitted_temperatures`). Returns ``{"ece", "temperature",
    "fitted_on", "probs"}`` where ``probs`` are the scaled test probabilities (float64).
    """
    logits = log_probs_as_logits(probs)
    if val_probs is not None and val_y is not None and len(val_y) > 0:
        t = fit_temperature(log_probs_as_logits(val_probs), val_y)
        scaled = scaled_probs(logits, t)
        temperature: object = t
        fitted_on = f"validation split ({len(val_y)} inputs)"
    else:
        per_input, fitted = cross_fitted_temperatures(logits, y, seed)
        scaled = torch.softmax(logits / per_input[:, None], dim=1)
        temperature = fitted
        fitted_on = f"test inputs, two-fold cross-fit (seed {seed}): each half scaled with the other half's T"
    ece = expected_calibration_error(scaled.float(), y, bins)
    return {"ece": ece, "temperature": temperature, "fitted_on": fitted_on, "probs": scaled}


__all__ = [
    "cross_fitted_temperatures",
    "fit_temperature",
    "log_probs_as_logits",
    "mean_nll",
    "scaled_probs",
    "temperature_scaled_ece",
]
