"""Evaluation metrics against hand computations and reference implementations on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jemkit.evaluation.calibration import expected_calibration_error, reliability_bins
from jemkit.evaluation.detection import auroc, fpr_at_tpr
from jemkit.evaluation.frechet import feature_fid, frechet_distance, gaussian_stats, sqrtm_psd
from jemkit.evaluation.inception_score import inception_score, inception_score_from_logits

# --------------------------------------------------------------------------- calibration

#: Four predictions over three classes: confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.35 (wrong).
PROBS = torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.35, 0.33, 0.32]], dtype=torch.float64)
LABELS = torch.tensor([0, 1, 1, 2])


def test_ece_matches_hand_computation():
    # 10 bins: every prediction alone in its bin, so ECE = mean |correct - confidence|.
    assert expected_calibration_error(PROBS, LABELS, bins=10) == pytest.approx((0.1 + 0.6 + 0.3 + 0.35) / 4)
    # 2 bins: [0, .5) holds 0.35 (acc 0); [.5, 1) holds .9, .6, .7 (acc 2/3, mean conf 0.7333...).
    hand = 0.25 * 0.35 + 0.75 * abs(2 / 3 - (0.9 + 0.6 + 0.7) / 3)
    assert expected_calibration_error(PROBS, LABELS, bins=2) == pytest.approx(hand)


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1]), bins=15) == pytest.approx(0.0, abs=1e-12)


def test_reliability_bins_reproduce_torchmetrics_ece():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 10, generator=generator, dtype=torch.float64) * 2, dim=1)
    labels = torch.randint(0, 10, (500,), generator=generator)
    table = reliability_bins(probs, labels, bins=15)
    assert sum(table["count"]) == 500 and len(table["accuracy"]) == 15
    from_bins = sum(abs(a - c) * n for a, c, n in zip(table["accuracy"], table["confidence"], table["count"])) / 500
    assert from_bins == pytest.approx(
        expected_calibration_error(probs, labels, bins=15), abs=1e-6
    )  # torchmetrics works in float32


# --------------------------------------------------------------------------- OOD detection


def test_auroc_hand_computation_and_ties():
    # pairs (in, out): 3>2.5, 3>.5, 2<2.5, 2>.5, 1<2.5, 1>.5  -> 4 of 6
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.5, 0.5])) == pytest.approx(4 / 6)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == pytest.approx(0.5)
    assert auroc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0])) == 0.0


def test_auroc_matches_sklearn_even_for_large_scores():
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(1)
    # log p(x) values are often large; a sigmoid would squash all of them to 1.0
    inside = 500.0 + torch.randn(300, generator=generator, dtype=torch.float64)
    outside = 499.5 + torch.randn(200, generator=generator, dtype=torch.float64)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[inside.numpy(), outside.numpy()])
    assert auroc(inside, outside) == pytest.approx(expected, abs=1e-6)
    assert 0.55 < expected < 0.75


def test_fpr95_hand_computation():
    inside = torch.arange(1.0, 21.0)  # 20 scores; 95% of them (19) are >= 2
    outside = torch.tensor([0.0, 1.5, 2.0, 3.0])
    assert fpr_at_tpr(inside, outside) == pytest.approx(0.5)  # 2.0 and 3.0 pass the threshold 2
    assert fpr_at_tpr(inside, torch.tensor([-1.0, 0.0])) == 0.0
    assert fpr_at_tpr(inside, outside, tpr=1.0) == pytest.approx(0.75)  # threshold 1


def test_fpr95_matches_sklearn_roc_curve():
    from sklearn.metrics import roc_curve

    generator = torch.Generator().manual_seed(2)
    inside = torch.randn(400, generator=generator, dtype=torch.float64) + 1.0
    outside = torch.randn(300, generator=generator, dtype=torch.float64)
    fpr, tpr, _ = roc_curve(
        np.r_[np.ones(400), np.zeros(300)], np.r_[inside.numpy(), outside.numpy()], drop_intermediate=False
    )
    expected = fpr[np.searchsorted(tpr, 0.95, side="left")]
    assert fpr_at_tpr(inside, outside) == pytest.approx(expected)


# --------------------------------------------------------------------------- Fréchet distance


def _psd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_sqrtm_psd_matches_scipy():
    from scipy.linalg import sqrtm

    a = _psd(6, 3)
    root = sqrtm_psd(a)
    assert torch.allclose(root, torch.from_numpy(np.real(sqrtm(a.numpy()))), atol=1e-8)
    assert torch.allclose(root @ root, a, atol=1e-8)


def test_frechet_distance_matches_scipy_formula():
    from scipy.linalg import sqrtm

    s1, s2 = _psd(5, 4), _psd(5, 5)
    mu1 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    mu2 = torch.linspace(0, 2, 5, dtype=torch.float64)
    covmean = np.real(sqrtm(s1.numpy() @ s2.numpy()))
    expected = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_hand_cases():
    one = torch.ones(1, 1, dtype=torch.float64)
    # N(0, 1) vs N(1, 4): (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2
    assert frechet_distance(torch.zeros(1), one, torch.ones(1), 4 * one) == pytest.approx(2.0)
    s = _psd(4, 6)
    assert frechet_distance(torch.zeros(4), s, torch.zeros(4), s) == pytest.approx(0.0, abs=1e-9)


def test_feature_fid_of_shifted_features():
    generator = torch.Generator().manual_seed(7)
    f = torch.randn(1000, 3, generator=generator, dtype=torch.float64)
    assert feature_fid(f, f) == pytest.approx(0.0, abs=1e-9)
    # shifting every feature by 2 moves only the means: FID = 3 * 2^2
    assert feature_fid(f, f + 2.0) == pytest.approx(12.0, rel=1e-9)
    mu, sigma = gaussian_stats(f)
    assert torch.allclose(sigma, torch.from_numpy(np.cov(f.numpy().T)), atol=1e-12)


# --------------------------------------------------------------------------- Inception Score


def test_inception_score_hand_cases():
    assert inception_score(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))[0] == pytest.approx(2.0)
    assert inception_score(torch.full((5, 4), 0.25))[0] == pytest.approx(1.0)
    # p1 = (.8, .2), p2 = (.2, .8): p(y) = (.5, .5); KL = .8 ln 1.6 + .2 ln .4 for both
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert inception_score(torch.tensor([[0.8, 0.2], [0.2, 0.8]]))[0] == pytest.approx(math.exp(kl))


def test_inception_score_splits_and_logits():
    one_hot = torch.eye(10).repeat(4, 1)  # 40 confident predictions, evenly over 10 classes
    mean, std = inception_score(one_hot, splits=4)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-12)
    mean, _ = inception_score_from_logits(torch.eye(10).repeat(2, 1) * 100.0, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-6)
