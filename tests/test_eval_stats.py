"""Statistics for publishable evaluation numbers: bootstrap intervals, KID, diversity, precision/recall, labels."""

from __future__ import annotations

import math

import pytest
import torch

from jemkit.evaluation import bootstrap as bs
from jemkit.evaluation.calibration import expected_calibration_error
from jemkit.evaluation.detection import auroc, fpr_at_tpr
from jemkit.evaluation.diversity import (
    class_diversity,
    knn_radii,
    mean_pairwise_distance,
    precision_recall,
    relative_diversity,
)
from jemkit.evaluation.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from jemkit.evaluation.metric_names import metric_label


def _bernoulli(n: int, p: float, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p


# --------------------------------------------------------------------------- bootstrap


def test_accuracy_interval_contains_the_estimate_is_seeded_and_shrinks():
    widths = {}
    for n in (100, 1000):
        hits = _bernoulli(n, 0.8, seed=n)
        value, (low, high) = bs.with_ci(bs.mean, hits, n_boot=2000, seed=3)
        assert value == pytest.approx(float(hits.double().mean()))
        assert low < value < high
        assert (low, high) == bs.bootstrap_ci(bs.mean, hits, n_boot=2000, seed=3), "seeded"
        assert (low, high) != bs.bootstrap_ci(bs.mean, hits, n_boot=2000, seed=4)
        normal = 2 * 1.96 * math.sqrt(value * (1 - value) / n)  # the normal approximation's width
        assert high - low == pytest.approx(normal, rel=0.2)
        widths[n] = high - low
    assert widths[1000] < 0.45 * widths[100], widths  # about 1/sqrt(10)


def test_interval_levels_nest_and_global_rng_is_untouched():
    nll = -torch.log(torch.rand(300, generator=torch.Generator().manual_seed(0)).clamp(min=1e-3))
    state = torch.get_rng_state()
    wide = bs.bootstrap_ci(bs.mean, nll, level=0.95)
    narrow = bs.bootstrap_ci(bs.mean, nll, level=0.5)
    assert torch.equal(state, torch.get_rng_state())
    assert wide[0] < narrow[0] < float(nll.mean()) < narrow[1] < wide[1]


def test_chunking_and_the_per_replicate_loop_give_identical_intervals(monkeypatch):
    hits = _bernoulli(200, 0.7, seed=1)
    vectorised = bs.bootstrap_ci(bs.mean, hits, n_boot=300)
    looped = bs.bootstrap_ci(bs.per_replicate(lambda h: float(h.double().mean())), hits, n_boot=300)
    monkeypatch.setattr(bs, "_CHUNK_ELEMENTS", 450)  # two replicates per chunk
    chunked = bs.bootstrap_ci(bs.mean, hits, n_boot=300)
    assert vectorised == pytest.approx(looped, abs=1e-15) and vectorised == chunked


def test_ece_statistic_matches_torchmetrics_and_paired_arrays_share_indices():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(400, 5, generator=generator, dtype=torch.float64), dim=1)
    targets = torch.randint(0, 5, (400,), generator=generator)
    confidence, predicted = probs.max(dim=1)
    correct = predicted == targets
    value = bs.point_estimate(bs.ece(15), confidence, correct)
    assert value == pytest.approx(expected_calibration_error(probs, targets, 15), abs=1e-6)
    low, high = bs.bootstrap_ci(bs.ece(15), confidence, correct)
    assert 0.0 <= low < high <= 1.0
    with pytest.raises(ValueError, match="differ in length"):
        bs.bootstrap_ci(bs.ece(15), confidence, correct[:-1])


def test_auroc_and_fpr95_intervals_resample_in_and_out_sets():
    generator = torch.Generator().manual_seed(0)
    s_in = torch.round(torch.randn(300, generator=generator, dtype=torch.float64) * 4 + 4)  # ties
    s_out = torch.round(torch.randn(200, generator=generator, dtype=torch.float64) * 4)
    value = bs.point_estimate(bs.auroc, s_in, s_out)
    assert value == pytest.approx(auroc(s_in, s_out), abs=1e-6)  # torchmetrics returns float32
    assert bs.point_estimate(bs.fpr_at_tpr(0.95), s_in, s_out) == pytest.approx(fpr_at_tpr(s_in, s_out))
    with pytest.raises(ValueError, match="differ in length"):
        bs.bootstrap_ci(bs.auroc, s_in, s_out)  # two sets of different inputs need two groups
    low, high = bs.bootstrap_ci(bs.auroc, s_in, s_out, n_boot=2000, groups=(0, 1))
    assert low < value < high
    # Hanley & McNeil (1982) standard error of an AUROC from n_in positives and n_out negatives
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    se = math.sqrt((value * (1 - value) + 299 * (q1 - value**2) + 199 * (q2 - value**2)) / (300 * 200))
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.25)
    fpr_low, fpr_high = bs.bootstrap_ci(bs.fpr_at_tpr(0.95), s_in, s_out, groups=(0, 1))
    assert fpr_low <= fpr_at_tpr(s_in, s_out) <= fpr_high and fpr_high > fpr_low


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        bs.bootstrap_ci(bs.mean, torch.ones(5), level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bs.bootstrap_ci(bs.mean, torch.ones(5), n_boot=0)
    with pytest.raises(ValueError, match="one value per replicate"):
        bs.bootstrap_ci(lambda v: v.double().mean(), torch.ones(5))
    with pytest.raises(ValueError, match="at least one input"):
        bs.bootstrap_ci(bs.mean, torch.ones(0))


# --------------------------------------------------------------------------- KID


def _direct_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased estimator written out term by term."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_direct_formula():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(9, 3, generator=generator, dtype=torch.float64) + 0.3
    direct = _direct_mmd2(x, y)
    assert mmd2_unbiased(x, y) == pytest.approx(direct, rel=1e-10)
    # one subset of at least every row: a permutation of all rows, the same estimate
    mean, std = kernel_inception_distance(x[:9], y, subsets=1, subset_size=50)
    assert mean == pytest.approx(_direct_mmd2(x[:9], y), rel=1e-10) and std == 0.0
    assert polynomial_kernel(x[:2], y[:3])[1, 2] == pytest.approx((float(x[1] @ y[2]) / 3 + 1) ** 3)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(400, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    same, same_sd = kernel_inception_distance(a, b, subsets=50, subset_size=200, seed=1)
    shifted, shifted_sd = kernel_inception_distance(c + 0.5, a, subsets=50, subset_size=200, seed=1)
    assert abs(same) < 3 * same_sd and abs(same) < 0.05
    assert shifted > 10 * shifted_sd and shifted > 20 * abs(same)
    assert kernel_inception_distance(a, b, subsets=50, subset_size=200, seed=1) == (same, same_sd), "seeded"


def test_kid_is_unbiased_on_tiny_samples():
    """Averaged over many pairs of 8-row samples of one distribution, KID is 0 within its standard error,
    while the biased (V-statistic) MMD^2 that keeps the diagonal is clearly positive."""
    generator = torch.Generator().manual_seed(0)
    unbiased, biased = [], []
    for _ in range(300):
        x, y = (torch.randn(8, 4, generator=generator, dtype=torch.float64) for _ in range(2))
        unbiased.append(mmd2_unbiased(x, y))
        k = polynomial_kernel
        biased.append(float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()))
    u, v = torch.tensor(unbiased), torch.tensor(biased)
    u_se, v_se = float(u.std() / math.sqrt(len(u))), float(v.std() / math.sqrt(len(v)))
    assert abs(float(u.mean())) < 3 * u_se
    assert float(v.mean()) > 10 * v_se


# --------------------------------------------------------------------------- diversity


@pytest.fixture(scope="module")
def digits_features():
    """Shipped digits-classifier features ``[1797, 32]``, raw pixels ``[1797, 64]`` and labels of sklearn's digits."""
    from sklearn.datasets import load_digits

    from jemkit.contracts import BuildContext
    from jemkit_plugins.evaluation import feature_extractors as fx

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, 1, 8, 8) * (2 / 16) - 1
    extractor = fx.build_digits_classifier(fx.DigitsClassifierParams(), BuildContext(input_shape=(1, 8, 8)))
    with torch.no_grad():
        features = extractor.features_and_logits(x)[0].double()
    return features, x.flatten(1).double(), torch.tensor(bunch.target), x, extractor


def test_diversity_separates_64_copies_of_one_image_from_64_distinct_images(digits_features):
    features, pixels, y, x, extractor = digits_features
    threes = torch.nonzero(y == 3).flatten()
    distinct, real = threes[:64], threes[64:]
    for space in (features, pixels):
        assert relative_diversity(space[distinct], space[real]) == pytest.approx(1.0, abs=0.2)
        assert relative_diversity(space[threes[:1]].repeat(64, 1), space[real]) == 0.0
    # "nearly identical" samples: one image plus the data's input noise, in the classifier's features
    noise = 0.03 * torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        noisy = extractor.features_and_logits(x[threes[:1]] + noise)[0].double()
    assert relative_diversity(noisy, features[real]) < 0.25 * relative_diversity(features[distinct], features[real])


def test_class_diversity_per_class(digits_features):
    features, _, y, _, _ = digits_features
    samples, labels = [], []
    for k in range(9):  # no samples of class 9
        members = torch.nonzero(y == k).flatten()
        samples.append(features[members[:1]].repeat(20, 1) if k < 4 else features[members[:20]])
        labels.append(torch.full((20,), k))
    result = class_diversity(torch.cat(samples), torch.cat(labels), features, y, num_classes=10)
    per_class = result["per_class"]
    assert per_class[:4] == [0.0] * 4
    assert all(0.6 < v < 1.4 for v in per_class[4:9]) and per_class[9] is None
    assert result["mean"] == pytest.approx(sum(per_class[:9]) / 9)


def test_mean_pairwise_distance_hand_case():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert mean_pairwise_distance(points) == pytest.approx((5 + 4 + 3) / 3)


def test_knn_radii_hand_case():
    line = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(line, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(line, k=2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_precision_recall_of_identical_collapsed_and_partial_samples(digits_features):
    features, _, y, _, _ = digits_features
    real = features[::2]
    assert precision_recall(real, real) == (1.0, 1.0)
    precision, recall = precision_recall(real, real[:1].repeat(64, 1))
    assert precision == 1.0 and recall <= 2 / len(real)
    odd_threes = features[1::2][y[1::2] == 3]  # distinct real threes only: plausible, not varied
    precision, recall = precision_recall(real, odd_threes)
    assert precision > 0.85 and recall < 0.3
    held_out = precision_recall(real, features[1::2])  # other real images of every class
    assert min(held_out) > 0.8
    far = precision_recall(real, features[1::2] + 100.0)
    assert far == (0.0, 0.0)


# --------------------------------------------------------------------------- metric names


def test_metric_labels_name_their_features():
    assert metric_label("digits_classifier", "fid") == "digits-FID"
    assert metric_label("digits_classifier", "inception_score") == "digits-IS"
    assert metric_label("digits_classifier", "kid") == "digits-KID"
    assert metric_label("inception", "fid") == "Inception FID"
    assert metric_label("inception", "is") == "Inception Score"
    assert metric_label("inception", "kid") == "Inception KID"
    assert metric_label("clip", "fid") == "clip-FID"
    assert metric_label("digits_classifier", "recall") == "recall (digits features)"
    with pytest.raises(ValueError, match="unknown metric"):
        metric_label("inception", "fdi")


@pytest.mark.parametrize("splits", [1, 3])
def test_inception_score_statistic_matches_the_metric(splits):
    from jemkit.evaluation.inception_score import inception_score_from_logits

    logits = torch.randn(90, 10, generator=torch.Generator().manual_seed(splits)) * 2
    assert bs.point_estimate(bs.inception_score(splits), logits) == pytest.approx(
        inception_score_from_logits(logits, splits)[0], rel=1e-12
    )
    low, high = bs.bootstrap_ci(bs.inception_score(splits), logits, n_boot=300)
    assert 1.0 <= low < high <= 10.0
    with pytest.raises(ValueError, match="splits"):
        bs.inception_score(0)
