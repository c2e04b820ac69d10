"""Temperature scaling against hand computations (Guo et al. 2017)."""

from __future__ import annotations

import math

import pytest
import torch

from jemkit.evaluation.calibration import expected_calibration_error
from jemkit.evaluation.temperature import (
    cross_fitted_temperatures,
    fit_temperature,
    mean_nll,
    temperature_scaled_ece,
)


def _two_class(s: float, q: float, n: int = 400):
    """n inputs with logits [s, 0]; a fraction q of them labelled 0."""
    logits = torch.tensor([[s, 0.0]]).repeat(n, 1)
    y = torch.ones(n, dtype=torch.long)
    y[: round(q * n)] = 0
    return logits, y


def test_fitted_temperature_matches_the_closed_form():
    # NLL is minimal where sigmoid(s / T) = q, i.e. T = s / logit(q): for s = 2, q = 0.75, T = 2 / ln 3.
    logits, y = _two_class(2.0, 0.75)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(2.0 / math.log(3.0), rel=1e-4)
    assert mean_nll(logits, y, t) < mean_nll(logits, y, 1.0)
    # Under-confident (s small, q large) gives T < 1: scaling sharpens.
    logits, y = _two_class(0.5, 0.9)
    assert fit_temperature(logits, y) == pytest.approx(0.5 / math.log(9.0), rel=1e-4)


def test_scaling_with_the_fitted_temperature_removes_the_calibration_gap():
    logits, y = _two_class(2.0, 0.75)
    probs = torch.softmax(logits, dim=1)
    raw = expected_calibration_error(probs, y, bins=15)
    assert raw == pytest.approx(1 / (1 + math.exp(-2.0)) - 0.75, abs=1e-5)  # 0.8808 - 0.75
    result = temperature_scaled_ece(probs, y, bins=15, val_probs=probs, val_y=y)
    assert result["ece"] == pytest.approx(0.0, abs=1e-4)
    assert result["temperature"] == pytest.approx(2.0 / math.log(3.0), rel=1e-4)
    assert torch.equal(result["probs"].argmax(1), probs.argmax(1))  # predictions unchanged


def test_cross_fit_recovers_the_temperature_that_generated_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(4000, 10, generator=g)
    y = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=g).squeeze(1)
    per_input, fitted = cross_fitted_temperatures(logits, y, seed=1)
    assert all(t == pytest.approx(2.5, rel=0.08) for t in fitted)
    assert set(per_input.tolist()) == set(fitted)
    probs = torch.softmax(logits, dim=1)
    result = temperature_scaled_ece(probs, y, bins=15, seed=1)
    assert result["ece"] < 0.5 * expected_calibration_error(probs, y, bins=15)
    assert "cross-fit" in result["fitted_on"]
    with pytest.raises(ValueError):
        cross_fitted_temperatures(logits[:3], y[:3])


def test_each_half_is_scaled_with_the_temperature_fitted_on_the_other_half():
    g = torch.Generator().manual_seed(3)
    logits = 2.0 * torch.randn(200, 5, generator=g)
    y = torch.multinomial(torch.softmax(logits / 1.7, dim=1), 1, generator=g).squeeze(1)
    y[:100] = logits[:100].argmax(1)  # make the halves disagree: their temperatures differ
    per_input, _ = cross_fitted_temperatures(logits.double(), y, seed=5)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(5))
    first, second = order[:100], order[100:]
    assert torch.all(per_input[first] == fit_temperature(logits[second].double(), y[second]))
    assert torch.all(per_input[second] == fit_temperature(logits[first].double(), y[first]))
