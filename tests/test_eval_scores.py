"""p(y|x) and the three OOD scores against closed forms, oriented higher = more in-distribution."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import gaussian_classes_model
from jemkit.evaluation.scores import SCORES, ood_scores, predict_probs

CENTRES = [[-1.0, 0.0], [1.0, 0.0]]
CPU = torch.device("cpu")


def test_scores_equal_the_closed_forms_of_a_two_gaussian_model():
    # logits_k(x) = -|x - c_k|^2 / 2: log p(x) = logsumexp_k logits_k, p(y|x) their softmax, and
    # d log p(x)/dx = sum_k p(k|x) (c_k - x).
    model = gaussian_classes_model(CENTRES)
    x = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [0.3, -2.0], [4.0, 1.0]])
    scores = ood_scores(model, x, batch_size=3, device=CPU)
    c = torch.tensor(CENTRES, dtype=torch.float64)
    logits = -0.5 * (x.double()[:, None, :] - c[None]).pow(2).sum(-1)
    p = torch.softmax(logits, dim=1)
    grad = (p[:, :, None] * (c[None] - x.double()[:, None, :])).sum(1)
    assert torch.allclose(scores["log_px"], torch.logsumexp(logits, dim=1), atol=1e-5)
    assert torch.allclose(scores["max_pyx"], p.max(dim=1).values, atol=1e-6)
    assert torch.allclose(scores["grad_norm"], -grad.norm(dim=1), atol=1e-5)
    assert torch.allclose(predict_probs(model, x, batch_size=2, device=CPU), p, atol=1e-6)
    assert set(scores) == set(SCORES)


def test_inputs_at_the_modes_score_higher_than_far_ones_on_every_score():
    model = gaussian_classes_model(CENTRES)
    inside = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    far = torch.tensor([[0.0, 5.0], [-6.0, 3.0]])
    s_in, s_far = ood_scores(model, inside, 8, CPU), ood_scores(model, far, 8, CPU)
    assert (s_in["log_px"].min() > s_far["log_px"].max()).item()
    assert (s_in["grad_norm"].min() > s_far["grad_norm"].max()).item()
    # max p(y|x) is high at the modes (sigmoid(2) for unit-distance centres) ...
    assert s_in["max_pyx"][0].item() == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-6)
