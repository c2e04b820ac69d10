"""Block-jackknife intervals of the set-vs-set sample metrics (FID, KID, precision/recall, diversity):
coverage of a known truth, the bias of a with-replacement bootstrap they avoid, seeding, exact
block sums, and the ``_ci95`` keys of a real ``jemkit eval``."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from jemkit.evaluation import bootstrap as bs
from jemkit.evaluation import intervals as iv
from jemkit.evaluation.diversity import class_diversity, precision_recall, relative_diversity
from jemkit.evaluation.frechet import feature_fid, frechet_distance
from jemkit.evaluation.kid import mmd2_unbiased

from conftest import ROOT, run_cli

TRIALS = 50
DIM, N = 8, 200


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Small matrices: on a shared CPU a second thread only adds waiting."""
    yield


def _gaussians(seed: int, n: int = N, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws of ``N(0, I)`` and of ``N(0.5 e_1, diag(1.5 .. 0.5))`` in ``dim`` dimensions."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.linspace(1.5, 0.5, dim, dtype=torch.float64)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    y = torch.randn(n, dim, generator=generator, dtype=torch.float64) * scale.sqrt()
    y[:, 0] += 0.5
    return x, y


def _true_fid(dim: int = DIM) -> float:
    mean = torch.zeros(dim, dtype=torch.float64)
    shifted = mean.clone()
    shifted[0] = 0.5
    covariance = torch.diag(torch.linspace(1.5, 0.5, dim, dtype=torch.float64))
    return frechet_distance(mean, torch.eye(dim, dtype=torch.float64), shifted, covariance)


@pytest.fixture(scope="module")
def fid_trials():
    """Per seeded trial: FID, its jackknife interval, and the percentile bootstrap's (with replacement)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on a shared machine
    try:
        rows = []
        for trial in range(TRIALS):
            x, y = _gaussians(100 + trial)
            jack = iv.fid_jackknife(x, y, seed=trial).interval(bias_correct=True, bounds=(0.0, math.inf))
            boot = bs.bootstrap_ci(bs.per_replicate(feature_fid), x, y, n_boot=100, seed=trial, groups=(0, 1))
            rows.append((feature_fid(x, y), jack, boot))
        return rows
    finally:
        torch.set_num_threads(previous)


def _covered(truth: float, interval) -> bool:
    return interval[0] <= truth <= interval[1]


def test_fid_jackknife_interval_covers_the_true_frechet_distance(fid_trials):
    truth = _true_fid()
    estimates = torch.tensor([row[0] for row in fid_trials])
    assert float(estimates.mean()) > truth + 0.15, "FID of 200 + 200 draws in 8-d is biased upward by about 0.2"
    coverage = sum(_covered(truth, row[1]) for row in fid_trials) / TRIALS
    # 43 of 50: a calibrated 95% interval falls below that with probability 1%; without the bias
    # correction these trials reach 40 of 50, the bootstrap with replacement none
    assert coverage >= 0.86, f"nominal 95% interval covered the truth in only {coverage:.0%} of {TRIALS} trials"
    widths = torch.tensor([row[1][1] - row[1][0] for row in fid_trials])
    assert float(widths.median()) < 1.5 * truth, "an interval that covers by being huge proves nothing"


def test_bootstrap_with_replacement_misses_the_truth(fid_trials):
    truth = _true_fid()
    jackknife = sum(_covered(truth, row[1]) for row in fid_trials) / TRIALS
    bootstrap = sum(_covered(truth, row[2]) for row in fid_trials) / TRIALS
    assert bootstrap <= 0.3 and jackknife - bootstrap >= 0.5, (jackknife, bootstrap)
    # the reason: a resample repeats points, so its FID is biased upward again on top of FID's own bias
    above = sum(row[2][0] > truth for row in fid_trials) / TRIALS
    assert above >= 0.7, f"the bootstrap interval lay wholly above the truth in {above:.0%} of trials"
    centre_shift = torch.tensor([(row[2][0] + row[2][1]) / 2 - row[0] for row in fid_trials])
    assert float(centre_shift.mean()) > 0.1, "bootstrap intervals sit above the point estimate"


def test_diversity_interval_covers_the_ratio_of_scales():
    """Mean pairwise distances of ``N(0, a^2 I)`` and ``N(0, b^2 I)`` are in the ratio ``a / b`` exactly."""
    a, b = 0.7, 1.0
    hits = 0
    for trial in range(TRIALS):
        generator = torch.Generator().manual_seed(500 + trial)
        x = a * torch.randn(150, 6, generator=generator, dtype=torch.float64)
        y = b * torch.randn(120, 6, generator=generator, dtype=torch.float64)
        hits += _covered(a / b, iv.diversity_jackknife(x, y, seed=trial).interval(bounds=(0.0, math.inf)))
    assert hits / TRIALS >= 0.8, f"covered a / b in {hits} of {TRIALS} trials"


def test_same_seed_same_interval_and_another_seed_differs():
    x, y = _gaussians(7, n=120)
    first = iv.fid_jackknife(x, y, seed=3).interval(bias_correct=True)
    assert iv.fid_jackknife(x, y, seed=3).interval(bias_correct=True) == first
    assert iv.fid_jackknife(x, y, seed=4).interval(bias_correct=True) != first
    precision = iv.precision_recall_jackknife(y, x, 3, seed=3)[0].interval()
    assert iv.precision_recall_jackknife(y, x, 3, seed=3)[0].interval() == precision
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    iv.kid_jackknife(x, y, seed=3)
    assert torch.equal(torch.rand(1), before), "the global RNG is untouched"


def test_blocks_are_balanced_and_stratified():
    ids = iv.block_ids(103, 20, seed=1)
    counts = torch.bincount(ids)
    assert len(counts) == 20 and int(counts.max()) - int(counts.min()) <= 1
    labels = torch.arange(10).repeat_interleave(40)
    ids = iv.block_ids(400, 20, seed=1, strata=labels)
    per_block_and_class = torch.zeros(20, 10, dtype=torch.long)
    per_block_and_class.index_put_((ids, labels), torch.ones(400, dtype=torch.long), accumulate=True)
    assert int(per_block_and_class.max()) == 2 and int(per_block_and_class.min()) == 2
    assert len(iv.block_ids(5, 20)) == 5 and int(iv.block_ids(5, 20).max()) == 4, "at most one block per row"


@pytest.mark.parametrize(
    ("fast", "slow"),
    [(iv.fid_jackknife, feature_fid), (iv.kid_jackknife, mmd2_unbiased), (iv.diversity_jackknife, relative_diversity)],
)
def test_block_sums_equal_recomputing_on_what_is_kept(fast, slow):
    x, y = _gaussians(11, n=97)
    y = y[:61]
    quick = fast(x, y, seed=5)
    direct = iv.jackknife(lambda keep_x, keep_y: slow(x[keep_x], y[keep_y]), (len(x), len(y)), seed=5)
    assert quick.estimate == pytest.approx(direct.estimate, rel=1e-9)
    assert quick.variance == pytest.approx(direct.variance, rel=1e-7)
    assert quick.bias == pytest.approx(direct.bias, rel=1e-6, abs=1e-12)
    assert quick.variance > 0


def test_precision_recall_neighbour_lists_equal_rebuilding_the_manifolds():
    x, y = _gaussians(13, n=97)
    y = y[:61]
    x[:5] = x[5]  # repeated samples: ties in the neighbour lists
    quick = iv.precision_recall_jackknife(y, x, 3, seed=2)
    direct = iv.jackknife_many(lambda keep_x, keep_y: precision_recall(y[keep_y], x[keep_x], 3), (97, 61), seed=2)
    for fast, slow in zip(quick, direct):
        assert fast.estimate == slow.estimate and 0.0 < fast.estimate < 1.0
        assert fast.variance == pytest.approx(slow.variance, rel=1e-9) and fast.variance > 0
        assert fast.bias == pytest.approx(slow.bias, rel=1e-9, abs=1e-12)


def test_class_diversity_block_sums_equal_recomputing_per_class():
    generator = torch.Generator().manual_seed(4)
    x, y = _gaussians(17, n=90)
    x_labels = torch.randint(0, 4, (90,), generator=generator)
    y_labels = torch.randint(0, 4, (90,), generator=generator)
    y_labels[:3] = 3  # unequal classes

    def direct_statistic(keep_x, keep_y):
        value = class_diversity(x[keep_x], x_labels[keep_x], y[keep_y], y_labels[keep_y], 5)["mean"]
        return math.nan if value is None else value

    quick = iv.class_diversity_jackknife(x, x_labels, y, y_labels, 5, seed=4)  # class 4 has no rows: left out
    direct = iv.jackknife(direct_statistic, (90, 90), seed=4, strata=(x_labels, y_labels))
    assert quick is not None and quick.estimate == pytest.approx(direct.estimate, rel=1e-12)
    assert quick.variance == pytest.approx(direct.variance, rel=1e-9) and quick.variance > 0
    assert quick.bias == pytest.approx(direct.bias, abs=1e-9)  # sums minus a block: rounding of 1e-11


def test_intervals_contain_the_reported_numbers_on_a_fixed_example():
    generator = torch.Generator().manual_seed(3)
    real = torch.randn(90, 5, generator=generator, dtype=torch.float64)
    real_labels = torch.arange(3).repeat_interleave(30)
    real[:, 0] += 3.0 * real_labels
    fake_labels = torch.arange(3).repeat_interleave(40)
    fake = 0.8 * torch.randn(120, 5, generator=generator, dtype=torch.float64) + 0.3
    fake[:, 0] += 3.0 * fake_labels
    precision, recall = precision_recall(real, fake, 3)
    kid = {"mean": mmd2_unbiased(fake, real), "std": 0.01}
    result = {
        "fid": feature_fid(fake, real),
        "kid": kid,
        "precision": precision,
        "recall": recall,
        "diversity": relative_diversity(fake, real),
        "class_diversity": class_diversity(fake, fake_labels, real, real_labels, 3),
    }
    labels = {"sample_labels": fake_labels, "reference_labels": real_labels, "num_classes": 3}
    iv.add_set_intervals(result, fake, real, 3, 10, seed=0, **labels)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
    for key in ("precision", "recall", "diversity"):
        low, high = result[f"{key}_ci95"]
        assert low < result[key] < high, (key, result[key], low, high)
    assert 0.0 <= result["precision_ci95"][0] and result["recall_ci95"][1] <= 1.0
    low, high = result["class_diversity"]["mean_ci95"]
    assert low < result["class_diversity"]["mean"] < high
    assert kid["mean_ci95"][0] < kid["mean"] < kid["mean_ci95"][1]
    low, high = result["fid_ci95"]
    assert 0.0 <= low < high and (low + high) / 2 < result["fid"], "centred on the bias-corrected FID, below the value"


def test_interval_width_shrinks_with_more_samples():
    widths = []
    for n in (60, 480):
        x, y = _gaussians(21, n=n)
        low, high = iv.diversity_jackknife(x, y, seed=0).interval()
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0], widths  # about 1 / sqrt(8) of the width with 8 times the rows


def test_collapsed_samples_get_a_zero_width_diversity_interval():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    copies = real[:1].repeat(64, 1)
    assert iv.diversity_jackknife(copies, real).interval(bounds=(0.0, math.inf)) == [0.0, 0.0]
    distinct = iv.diversity_jackknife(real.flip(0), real).interval()
    assert distinct[0] < 1.0 < distinct[1]


def test_eval_report_has_the_set_intervals(tmp_path, monkeypatch):
    """``jemkit eval --only generation`` on the stored tiny digits run (no training): ``_ci95`` keys
    beside FID, KID, precision, recall, diversity and class diversity, shown in ``report.md``;
    ``--bootstrap 0`` leaves them out."""
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "fixtures" / "run_before_refactor", run)
    small = ["--only", "generation", "--max-test", "60", "--n-samples", "30", "--sgld-steps", "2"]
    small += ["--grid-per-class", "2", "--batch-size", "64"]
    result = run_cli("eval", run, *small, "--out", tmp_path / "with")
    assert result.code == 0, result.output
    report = json.loads((tmp_path / "with" / "report.json").read_text())
    generation = report["runs"]["run"]["generation"]
    qualities = [generation["fresh"]["conditional"], generation["fresh"]["unconditional"], generation["buffer"]]
    for quality in qualities:
        for key in ("fid", "precision", "recall", "diversity"):
            low, high = quality[f"{key}_ci95"]
            assert low <= high and (key == "fid" or low - 1e-9 <= quality[key] <= high + 1e-9), (key, quality)
        assert quality["fid_ci95"][0] >= 0.0 and quality["fid_ci95"][1] > quality["fid_ci95"][0]
        low, high = quality["kid"]["mean_ci95"]
        assert low < quality["kid"]["mean"] < high
    classes = generation["fresh"]["conditional"]["class_diversity"]
    assert classes["mean_ci95"][0] <= classes["mean"] <= classes["mean_ci95"][1]
    markdown = (tmp_path / "with" / "report.md").read_text()
    fid = generation["fresh"]["conditional"]["fid_ci95"]
    assert f"[{fid[0]:.4f}, {fid[1]:.4f}]" in markdown
    kid = generation["fresh"]["conditional"]["kid"]
    assert f"± {kid['std']:.4f} [{kid['mean_ci95'][0]:.4f}, {kid['mean_ci95'][1]:.4f}]" in markdown
    assert "block jackknife" in report["protocol"]["generation"]

    result = run_cli("eval", run, *small, "--bootstrap", "0", "--out", tmp_path / "without")
    assert result.code == 0, result.output
    quiet = json.loads((tmp_path / "without" / "report.json").read_text())["runs"]["run"]["generation"]
    conditional = quiet["fresh"]["conditional"]
    assert not [key for key in conditional if key.endswith("_ci95")]
    assert "mean_ci95" not in conditional["kid"] and "mean_ci95" not in conditional["class_diversity"]
    assert conditional["fid"] == pytest.approx(generation["fresh"]["conditional"]["fid"])
