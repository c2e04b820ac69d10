"""Seeded percentile-bootstrap confidence intervals over test inputs.

A *statistic* is vectorised over bootstrap replicates: it receives every per-input array
resampled as ``[B, n, ...]`` (replicate first, input second) and returns ``[B]``. The interval
is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the statistic over ``n_boot``
replicates, each drawing ``n`` inputs with replacement (Efron's percentile bootstrap). Arrays
that describe the same inputs share one draw; independent sets (in-distribution vs OOD inputs)
are resampled separately, in the same replicate, by giving them different ``groups``.

The percentile interval is honest about sampling noise but inherits a statistic's bias: for
ECE, which is biased upward on small samples, the interval can lie above the point estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

#: ``statistic(*resampled) -> [B]``, each resampled array ``[B, n, ...]``.
Statistic = Callable[..., Tensor]

#: Largest number of gathered elements held at once (replicates are processed in chunks).
_CHUNK_ELEMENTS = 1 << 23


def _as_tensor(array: Any) -> Tensor:
    tensor = torch.as_tensor(array).detach().cpu()
    if tensor.dim() == 0 or len(tensor) == 0:
        raise ValueError(f"per-input arrays need at least one input on their first axis, got {tuple(tensor.shape)}")
    return tensor


def bootstrap_replicates(
    statistic: Statistic,
    *per_input_arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> Tensor:
    """The statistic on ``n_boot`` seeded resamples, ``[n_boot]`` float64.

    ``groups[i]`` names the resampling group of array ``i`` (default: one group, all arrays the
    same length and resampled with the same indices, i.e. paired). The result depends only on
    the arrays, ``n_boot``, ``seed`` and ``groups``; the global RNGs are not touched.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not per_input_arrays:
        raise ValueError("bootstrap needs at least one per-input array")
    arrays = [_as_tensor(a) for a in per_input_arrays]
    group_of = list(groups) if groups is not None else [0] * len(arrays)
    if len(group_of) != len(arrays):
        raise ValueError(f"groups names {len(group_of)} arrays, but {len(arrays)} were given")
    sizes: dict[int, int] = {}
    for g, a in zip(group_of, arrays):
        if sizes.setdefault(g, len(a)) != len(a):
            raise ValueError(
                f"arrays of resampling group {g} differ in length ({sizes[g]} vs {len(a)}); arrays in one group "
                "are paired (they describe the same inputs)"
            )
    per_replicate = sum(a.numel() for a in arrays)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // max(1, per_replicate)))
    # One generator per group, drawn in sequence chunk after chunk: the indices, and so the
    # result, do not depend on the chunk size.
    master = torch.Generator().manual_seed(seed)
    generators = {
        g: torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=master))) for g in sorted(sizes)
    }
    values = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        index = {g: torch.randint(0, sizes[g], (b, sizes[g]), generator=gen) for g, gen in generators.items()}
        resampled = [a[index[g]] for g, a in zip(group_of, arrays)]
        out = torch.as_tensor(statistic(*resampled)).double().reshape(-1)
        if out.numel() != b:
            raise ValueError(f"the statistic must return one value per replicate ([{b}]), got shape {tuple(out.shape)}")
        values.append(out)
    return torch.cat(values)


def bootstrap_ci(
    statistic: Statistic,
    *per_input_arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[int] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of ``statistic`` at confidence ``level``.

    Replicates where the statistic is undefined (NaN) are left out of the quantiles. See
    :func:`bootstrap_replicates` for ``groups``. Units are those of the statistic.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    values = bootstrap_replicates(statistic, *per_input_arrays, n_boot=n_boot, seed=seed, groups=groups)
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        raise ValueError("the statistic is undefined (NaN) on every bootstrap replicate")
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return float(low), float(high)


def point_estimate(statistic: Statistic, *per_input_arrays: Any) -> float:
    """The statistic on the arrays themselves (one replicate, no resampling)."""
    arrays = [_as_tensor(a).unsqueeze(0) for a in per_input_arrays]
    return float(torch.as_tensor(statistic(*arrays)).double().reshape(-1)[0])


def with_ci(
    statistic: Statistic,
    *per_input_arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[int] | None = None,
) -> tuple[float, list[float]]:
    """``(point estimate, [low, high])``: the value and its percentile-bootstrap interval."""
    low, high = bootstrap_ci(statistic, *per_input_arrays, n_boot=n_boot, seed=seed, level=level, groups=groups)
    return point_estimate(statistic, *per_input_arrays), [low, high]


# --------------------------------------------------------------------------- vectorised statistics


def mean(values: Tensor) -> Tensor:
    """Mean over inputs, ``[B, n] -> [B]``: accuracy of per-input 0/1 hits, NLL of per-input nats."""
    return values.double().mean(dim=1)


def ece(bins: int = 15) -> Statistic:
    """``(confidence [B, n], correct [B, n]) -> ECE [B]`` with ``bins`` equal-width bins of ``[0, 1]``.

    The binning of :func:`jemkit.evaluation.calibration.reliability_bins` (bin ``b`` holds
    ``[b/bins, (b+1)/bins)``, a confidence of 1 joins the last bin); ECE in ``[0, 1]`` is
    ``sum_b |acc_b - conf_b| * n_b / n``, as torchmetrics computes it.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")

    def statistic(confidence: Tensor, correct: Tensor) -> Tensor:
        confidence, correct = confidence.double(), correct.double()
        edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
        index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
        zeros = torch.zeros(confidence.shape[0], bins, dtype=torch.float64)
        gap = zeros.scatter_add(1, index, confidence - correct)
        return gap.abs().sum(dim=1) / confidence.shape[1]

    return statistic


def auroc(scores_in: Tensor, scores_out: Tensor) -> Tensor:
    """AUROC ``[B]`` of in-distribution scores ``[B, n_in]`` against OOD scores ``[B, n_out]``.

    In-distribution is the positive class, higher scores mean more in-distribution, ties count
    one half (the Mann-Whitney form of :func:`jemkit.evaluation.detection.auroc`). Resample the
    two sets in separate groups: ``bootstrap_ci(auroc, s_in, s_out, groups=(0, 1))``.
    """
    s_in, s_out = scores_in.double(), scores_out.double().sort(dim=1).values
    below = torch.searchsorted(s_out, s_in, right=False)
    at_or_below = torch.searchsorted(s_out, s_in, right=True)
    wins = below.double() + 0.5 * (at_or_below - below).double()
    return wins.mean(dim=1) / s_out.shape[1]


def fpr_at_tpr(tpr: float = 0.95) -> Statistic:
    """``(scores_in [B, n_in], scores_out [B, n_out]) -> FPR [B]`` at true-positive rate ``tpr``.

    The threshold of :func:`jemkit.evaluation.detection.fpr_at_tpr`: the ``ceil(tpr * n_in)``-th
    largest in-distribution score; the FPR is the fraction of OOD scores at or above it.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")

    def statistic(scores_in: Tensor, scores_out: Tensor) -> Tensor:
        k = max(1, math.ceil(tpr * scores_in.shape[1] - 1e-9))
        threshold = scores_in.double().sort(dim=1, descending=True).values[:, k - 1 : k]
        return (scores_out.double() >= threshold).double().mean(dim=1)

    return statistic


def per_replicate(function: Callable[..., float]) -> Statistic:
    """A statistic from ``function(*arrays) -> float`` on one resample (a loop; for FID and the like)."""

    def statistic(*resampled: Tensor) -> Tensor:
        count = resampled[0].shape[0]
        return torch.tensor([function(*(a[b] for a in resampled)) for b in range(count)], dtype=torch.float64)

    return statistic


def inception_score(splits: int = 1) -> Statistic:
    """``logits [B, n, K] -> IS [B]``: the Inception Score of each replicate's ``softmax(logits)``,
    the mean over ``splits`` consecutive parts as :func:`jemkit.evaluation.inception_score.inception_score`
    computes it (``exp(E KL(p(y|x) || p(y)))`` per part, ``p(y)`` the part's mean prediction)."""
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")

    def statistic(logits: Tensor) -> Tensor:
        p = torch.softmax(logits.double(), dim=-1)
        scores = []
        for part in torch.tensor_split(p, splits, dim=1):
            marginal = part.mean(dim=1, keepdim=True).expand_as(part)
            kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(dim=-1)
            scores.append(torch.exp(kl.mean(dim=1)))
        return torch.stack(scores, dim=1).mean(dim=1)

    return statistic
