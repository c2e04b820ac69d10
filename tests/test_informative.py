"""Informative initialisation: the per-class Gaussian fit, its draws, and the run-directory cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from jemkit.rng import rng_state
from jemkit.contracts import BuildContext
from jemkit_plugins.data.data_digits import DigitsParams, build_digits
from jemkit_plugins.samplers.informative import (
    CACHE_FILE,
    InformativeBuffer,
    InformativeBufferParams,
    InformativeInit,
    InformativeParams,
    build_informative,
    build_informative_buffer,
    fit_class_gaussians,
)

#: Standard errors allowed per statistic.
Z = 4.5


def _digits_context(run_dir=None) -> BuildContext:
    data = build_digits(DigitsParams(noise_std=0.0), BuildContext())
    return BuildContext(input_shape=(1, 8, 8), num_classes=10, train_data=data.train, run_dir=run_dir)


def test_fit_matches_numpy_class_mean_and_covariance_on_digits():
    context = _digits_context()
    fit = fit_class_gaussians(context.train_data, 10, (1, 8, 8), eps=1e-4)
    x = context.train_data.x.flatten(1).double().numpy()
    y = context.train_data.targets.numpy()
    for c in (0, 3, 9):
        rows = x[y == c]
        np.testing.assert_allclose(fit.mean[c].numpy(), rows.mean(0), atol=1e-6)
        expected = np.cov(rows, rowvar=False) + 1e-4 * np.eye(64)
        np.testing.assert_allclose(fit.covariance(c).numpy(), expected, atol=2e-5)
        assert int(fit.counts[c]) == len(rows)
    assert torch.equal(fit.scale_tril, torch.tril(fit.scale_tril)), "factors are lower triangular"


class _TwoClassGaussians(Dataset):
    """Class 0 ~ N(m0, S0), class 1 ~ N(m1, S1) in 4-d (well inside [-1, 1], so clamping is negligible)."""

    M = torch.tensor([[0.3, -0.2, 0.0, 0.1], [-0.3, 0.2, 0.1, -0.1]])
    A = torch.tensor([[0.10, 0.0, 0.0, 0.0], [0.05, 0.08, 0.0, 0.0], [0.0, -0.04, 0.09, 0.0], [0.02, 0.0, 0.03, 0.06]])

    def __init__(self, n: int = 6000) -> None:
        g = torch.Generator().manual_seed(0)
        self.targets = torch.arange(n) % 2
        z = torch.randn(n, 4, generator=g)
        scale = torch.stack([self.A, 1.5 * self.A])[self.targets]
        self.x = (self.M[self.targets] + torch.einsum("nij,nj->ni", scale, z)).view(n, 1, 2, 2)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


def test_draws_reproduce_the_class_mean_and_covariance():
    data = _TwoClassGaussians()
    init = build_informative(InformativeParams(), BuildContext(input_shape=(1, 2, 2), num_classes=2, train_data=data))
    torch.manual_seed(0)
    n = 20000
    for c in (0, 1):
        rows = data.x[data.targets == c].flatten(1).double()
        data_mean, data_cov = rows.mean(0), torch.cov(rows.T)
        start = init.start(n, torch.full((n,), c), torch.device("cpu"))
        assert start.x.shape == (n, 1, 2, 2) and start.reinit_fraction == 1.0
        draws = start.x.flatten(1).double()
        # The target of the draws is N(data_mean, data_cov + eps I); standard errors of Gaussian moments.
        target_cov = data_cov + 1e-4 * torch.eye(4, dtype=torch.float64)
        var = target_cov.diagonal()
        z_mean = (draws.mean(0) - data_mean).abs() / (var / n).sqrt()
        cov_se = ((var[:, None] * var[None, :] + target_cov.pow(2)) / n).sqrt()
        z_cov = (torch.cov(draws.T) - target_cov).abs() / cov_se
        assert (z_mean < Z).all(), z_mean
        assert (z_cov < Z).all(), z_cov
        assert draws.abs().max() <= 1.0


def test_unlabelled_draws_follow_the_class_frequencies_and_are_clamped():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([0.9 + 0.3 * torch.randn(300, 3, generator=g), -0.5 + 0.1 * torch.randn(100, 3, generator=g)])
    y = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    context = BuildContext(input_shape=(3,), num_classes=2, train_data=TensorDataset(x, y))
    init = build_informative(InformativeParams(), context)
    torch.manual_seed(1)
    n = 8000
    draws = init.start(n, None, torch.device("cpu")).x
    assert draws.min() >= -1.0 and draws.max() <= 1.0, "draws are clamped to [-1, 1]"
    share = float((draws.mean(1) > 0.2).float().mean())  # class 0 sits near +0.9, class 1 near -0.5
    assert abs(share - 0.75) < Z * math.sqrt(0.75 * 0.25 / n)


class _Unreadable(Dataset):
    """Same length and labels as another data set, but reading an input fails (proves no refit)."""

    def __init__(self, like: Dataset) -> None:
        self.targets = like.targets
        self.n = len(like)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        raise AssertionError("the cached fit must be loaded, not recomputed")


def test_fit_is_cached_in_the_run_directory_and_reused(tmp_path):
    context = _digits_context(run_dir=tmp_path)
    first = build_informative(InformativeParams(), context)
    cache = tmp_path / CACHE_FILE
    assert not first.gaussians.loaded_from_cache
    assert not cache.exists(), "nothing is written until chains start (a failed build leaves no file)"
    first.start(2, None, torch.device("cpu"))
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns

    unreadable = _Unreadable(context.train_data)
    again = BuildContext(input_shape=(1, 8, 8), num_classes=10, train_data=unreadable, run_dir=tmp_path)
    second = build_informative(InformativeParams(), again)
    assert second.gaussians.loaded_from_cache and cache.stat().st_mtime_ns == stamp
    assert torch.equal(first.gaussians.mean, second.gaussians.mean)
    assert torch.equal(first.gaussians.scale_tril, second.gaussians.scale_tril)
    buffer = build_informative_buffer(InformativeBufferParams(size=50), again)
    assert buffer.gaussians.loaded_from_cache

    # A cache that does not match the request (another eps) is refitted and overwritten.
    third = build_informative(InformativeParams(eps=1e-3), context)
    assert not third.gaussians.loaded_from_cache
    third.start(1, torch.tensor([4]), torch.device("cpu"))
    assert build_informative(InformativeParams(eps=1e-3), again).gaussians.loaded_from_cache


def test_no_cache_outside_a_run_and_with_cache_off(tmp_path):
    for init in (
        build_informative(InformativeParams(), _digits_context(run_dir=None)),
        build_informative(InformativeParams(cache=False), _digits_context(run_dir=tmp_path)),
    ):
        init.start(2, None, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_cache_is_refitted(tmp_path):
    (tmp_path / CACHE_FILE).write_bytes(b"not a safetensors file")
    init = build_informative(InformativeParams(), _digits_context(run_dir=tmp_path))
    assert not init.gaussians.loaded_from_cache
    init.start(2, None, torch.device("cpu"))
    assert build_informative(InformativeParams(), _digits_context(run_dir=tmp_path)).gaussians.loaded_from_cache


def test_fitting_leaves_the_global_rng_untouched():
    noisy = build_digits(DigitsParams(noise_std=0.05), BuildContext()).train  # draws noise on each read
    torch.manual_seed(3)
    before = rng_state()["torch"]
    fit_class_gaussians(noisy, 10, (1, 8, 8))
    assert torch.equal(rng_state()["torch"], before)


def test_informative_buffer_fills_class_blocks_and_reinitialises_from_the_class():
    data = _TwoClassGaussians(2000)
    context = BuildContext(input_shape=(1, 2, 2), num_classes=2, train_data=data)
    torch.manual_seed(4)
    params = InformativeBufferParams(size=2000, reinit_freq=0.0, class_conditional=True)
    buffer = build_informative_buffer(params, context)
    assert isinstance(buffer, InformativeBuffer)
    means = buffer.buffer.view(2, 1000, 4).mean(1)
    assert torch.allclose(means, _TwoClassGaussians.M, atol=0.02), means

    buffer.buffer.fill_(5.0)  # recognisable stored states; fresh draws lie in [-1, 1]
    buffer.reinit_freq = 1.0
    y = torch.tensor([0] * 500 + [1] * 500)
    start = buffer.start(1000, y, torch.device("cpu"))
    assert start.reinit_fraction == 1.0 and start.x.abs().max() <= 1.0
    x = start.x.flatten(1)
    assert torch.allclose(x[:500].mean(0), _TwoClassGaussians.M[0], atol=0.03)
    assert torch.allclose(x[500:].mean(0), _TwoClassGaussians.M[1], atol=0.03)

    buffer.reinit_freq = 0.0
    kept = buffer.start(100, None, torch.device("cpu"))
    assert kept.reinit_fraction == 0.0 and (kept.x == 5.0).all()


def test_missing_training_data_is_a_clear_error():
    with pytest.raises(ValueError, match="training data"):
        build_informative(InformativeParams(), BuildContext(input_shape=(2,), num_classes=2))
    with pytest.raises(ValueError, match="eps"):
        InformativeParams(eps=0.0)


def test_class_without_examples_is_a_clear_error():
    data = TensorDataset(torch.zeros(4, 2), torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="class 1 has no training examples"):
        build_informative(InformativeParams(), BuildContext(input_shape=(2,), num_classes=3, train_data=data))


def test_informative_init_is_a_chain_init():
    init = build_informative(InformativeParams(), _digits_context())
    assert isinstance(init, InformativeInit) and init.state_dict() == {}
