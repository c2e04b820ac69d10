"""95% intervals for set-vs-set sample metrics: a seeded two-sample block (delete-d) jackknife.

FID, KID, precision/recall and (class) diversity compare a set of generated samples ``X`` (``n``
rows of features) with a set of real reference images ``Y`` (``m`` rows). Both are random draws:
more chains give other samples, another split other real images. The percentile bootstrap of
:mod:`~jemkit.evaluation.bootstrap` is wrong for these statistics: a resample drawn with
replacement repeats points, and repeated points sit at distance 0 from each other, which shrinks
covariances, k-NN radii and mean pairwise distances; FID of a resample is biased upward on top of
FID's own small-sample bias, so the percentile interval lies above the truth.

Method (Quenouille-Tukey jackknife, grouped; two-sample form of Arvesen 1969). Each set is split
at random (seeded) into ``G = min(BLOCKS, rows)`` blocks of nearly equal size (class-stratified
when labels are given). The statistic ``T`` is recomputed with one block of ``X`` left out
(``T_x,g``, ``g = 1..G``), then with one block of ``Y`` left out (``T_y,h``), always without
replacement, so no point is ever repeated. Per set,

- variance ``V = (G - 1) / G * sum_g (T_g - mean T_.)^2``,
- bias ``b = (G - 1) * (mean T_. - T)``,

and the interval is ``c ± t_{nu, 0.975} * sqrt(V_x + V_y)`` with Welch-Satterthwaite degrees of
freedom ``nu``, clipped to the statistic's range (FID, diversity ``>= 0``; precision/recall in
``[0, 1]``). The centre ``c`` is the bias-corrected ``T - b_x - b_y`` for FID, whose bias is of
order ``1/n + 1/m`` and large for wide features, so its interval may lie *below* the reported
FID, which is biased upward; for KID (an unbiased U-statistic), diversity (a ratio of
U-statistics) and precision/recall (whose target is defined at the evaluated set sizes) the centre
is the reported value itself. Leaving out a fraction ``1/G`` of a set is a delete-d jackknife
with ``d`` proportional to the set size, which stays consistent for the non-smooth k-NN
statistics (Shao & Wu 1989) as well as for smooth functions of moments (FID) and U-statistics
(KID, diversity). KID's reported value is a mean over random subset pairs; its interval adds the
subset noise, ``sd^2 / subsets``, to the jackknife variance of the full-set U-statistic.

Why not subsampling (m-out-of-n without replacement, Politis & Romano 1994)? It is valid too, but
it needs a choice of ``m``, many more evaluations (hundreds of subsets against ``2 G``), and its
``sqrt(m / n)`` rescaling assumes the statistic is centred at the truth: FID's ``1/m`` bias makes
subsample values sit far above it. The jackknife both removes that bias and estimates the
variance from the same ``2 G`` leave-out values. On Gaussian features with a closed-form
Fréchet distance (tests/test_eval_intervals.py: 8-d, 200 + 200 draws, 50 seeded trials) the
nominal 95% interval covered the truth in 50 of 50 trials (48 of 50 with other seeds), the
with-replacement percentile bootstrap in 0 of 50 (1 of 50): its intervals sat wholly above it.

Units are those of the statistic. What is held fixed: the generator, the feature extractor and
the evaluation's settings; the interval describes the noise of the finite sample and reference
sets, not of training. Seed: set ``i`` (samples 0, reference 1) is split with ``seed + i``, the
evaluation's ``--seed``; the split depends only on the set sizes, the labels and the seed, so a
run and its baseline evaluated with the same settings are split the same way. The global RNGs are
not touched. Cost: distances and kernels are computed once (block sums, sorted neighbour lists);
FID then solves ``2 G`` symmetric eigenvalue problems of the feature width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from jemkit.evaluation.frechet import feature_fid, sqrtm_psd
from jemkit.evaluation.kid import polynomial_kernel

#: Jackknife blocks per set (fewer when a set has fewer rows).
BLOCKS = 20

#: Coverage of every interval.
LEVEL = 0.95

#: Rows of a pairwise matrix (distances, kernels) computed at once.
_ROWS = 1024

#: ``statistic(*kept) -> float``, ``kept[i]`` the indices (``long [k_i]``) kept of set ``i``.
SetStatistic = Callable[..., float]


def describe(seed: int) -> str:
    """One sentence for the report's protocol: how the set-vs-set intervals were computed."""
    return (
        f" Intervals of FID, KID, precision, recall and (class) diversity: 95% two-sample block jackknife "
        f"(each of the samples and the reference images split into {BLOCKS} random blocks, seed {seed}, one block "
        "left out at a time, never resampling with replacement; mean ± t * jackknife standard error, FID's "
        "interval centred on its bias-corrected value, so it may lie below the reported FID, which is biased upward)."
    )


def block_ids(n: int, blocks: int = BLOCKS, seed: int = 0, strata: Tensor | None = None) -> Tensor:
    """Block of each of ``n`` rows, ``long [n]`` in ``0 .. min(blocks, n) - 1``, sizes differing by at most one.

    A seeded random permutation is dealt out round-robin; with ``strata`` (``[n]`` labels) the rows
    are dealt class by class, so every block holds about ``1/G`` of each class.
    """
    if n < 2 or blocks < 2:
        raise ValueError(f"a jackknife needs at least 2 rows and 2 blocks, got {n} rows and {blocks} blocks")
    g = min(blocks, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if strata is not None:
        labels = torch.as_tensor(strata).detach().cpu().long()
        if labels.shape != (n,):
            raise ValueError(f"strata need one label per row ([{n}]), got shape {tuple(labels.shape)}")
        order = order[torch.sort(labels[order], stable=True).indices]
    ids = torch.empty(n, dtype=torch.long)
    ids[order] = torch.arange(n) % g
    return ids


@dataclass(frozen=True)
class Jackknife:
    """A statistic's value and its jackknife bias, variance and degrees of freedom (units of the statistic)."""

    estimate: float
    #: ``b_x + b_y``: estimated bias of ``estimate`` (positive: it overstates the truth).
    bias: float
    #: ``V_x + V_y``: variance of the estimate.
    variance: float
    #: Welch-Satterthwaite degrees of freedom of ``variance`` (``inf`` when it is 0).
    dof: float

    def interval(
        self,
        level: float = LEVEL,
        bias_correct: bool = False,
        bounds: tuple[float, float] = (-math.inf, math.inf),
        extra_variance: float = 0.0,
    ) -> list[float]:
        """``[low, high]``: ``centre ± t_{dof, (1 + level) / 2} * sqrt(variance + extra_variance)``,
        clipped to ``bounds``; ``centre`` is ``estimate - bias`` with ``bias_correct``, else ``estimate``.

        ``extra_variance`` is an independent noise term (KID's subsets); the degrees of freedom stay
        those of the jackknife variance.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
        centre = self.estimate - self.bias if bias_correct else self.estimate
        variance = self.variance + max(0.0, extra_variance)
        half = 0.0
        if variance > 0.0:
            from scipy.special import stdtrit  # Student's t quantile (scipy is a dependency; loaded on first use)

            dof = self.dof if self.variance > 0.0 else math.inf
            half = float(stdtrit(dof, 0.5 + level / 2.0)) * math.sqrt(variance)
        low, high = bounds
        return [min(max(centre - half, low), high), max(min(centre + half, high), low)]


def _combine(estimate: float, leave_outs: Sequence[Tensor]) -> Jackknife:
    """Per set, the leave-one-block-out values ``[G]``: the grouped-jackknife bias and variance, summed over sets."""
    bias = variance = 0.0
    parts: list[tuple[float, int]] = []
    for values in leave_outs:
        v = values.detach().double().cpu()
        g = len(v)
        if g < 2:
            raise ValueError(f"a jackknife needs at least 2 blocks per set, got {g}")
        mean = float(v.mean())
        part = (g - 1) / g * float((v - mean).pow(2).sum())
        bias += (g - 1) * (mean - estimate)
        variance += part
        parts.append((part, g - 1))
    denominator = sum(p * p / d for p, d in parts)
    dof = variance * variance / denominator if denominator > 0.0 else math.inf
    return Jackknife(estimate=float(estimate), bias=bias, variance=variance, dof=dof)


def jackknife_many(
    statistic: Callable[..., Sequence[float]],
    sizes: Sequence[int],
    blocks: int = BLOCKS,
    seed: int = 0,
    strata: Sequence[Tensor | None] | None = None,
) -> list[Jackknife]:
    """:func:`jackknife` of a statistic that returns several numbers at once (one :class:`Jackknife` each)."""
    if not sizes:
        raise ValueError("a jackknife needs at least one set")
    strata = list(strata) if strata is not None else [None] * len(sizes)
    full = [torch.arange(n) for n in sizes]
    estimate = [float(v) for v in statistic(*full)]
    leave_outs: list[list[Tensor]] = [[] for _ in estimate]
    for i, n in enumerate(sizes):
        ids = block_ids(n, blocks, seed + i, strata[i])
        values = []
        for g in range(int(ids.max()) + 1):
            kept = list(full)
            kept[i] = torch.nonzero(ids != g).flatten()
            values.append([float(v) for v in statistic(*kept)])
        table = torch.tensor(values, dtype=torch.float64)
        for j in range(len(estimate)):
            leave_outs[j].append(table[:, j])
    return [_combine(e, parts) for e, parts in zip(estimate, leave_outs)]


def jackknife(
    statistic: SetStatistic,
    sizes: Sequence[int],
    blocks: int = BLOCKS,
    seed: int = 0,
    strata: Sequence[Tensor | None] | None = None,
) -> Jackknife:
    """Two-sample (or k-sample) block jackknife of ``statistic`` over sets of ``sizes`` rows.

    ``statistic(*kept)`` receives, per set, the indices it keeps (all of them for the estimate);
    each set is split with :func:`block_ids` (seed ``seed + i`` for set ``i``, ``strata[i]`` its
    labels or ``None``) and its blocks are left out one at a time while the other sets stay whole.
    A set held fixed is simply not passed: let the statistic close over it.
    """
    return jackknife_many(lambda *kept: (statistic(*kept),), sizes, blocks, seed, strata)[0]


# --------------------------------------------------------------------------- block sums


def _block_pair_sums(
    a: Tensor,
    b: Tensor,
    ids_a: Tensor,
    ids_b: Tensor,
    pair: Callable[[Tensor, Tensor], Tensor],
    shape: tuple[int, int] | None = None,
) -> Tensor:
    """``S[g, h] = sum_{i in block g of a, j in block h of b} pair(a_i, b_j)``, ``[G_a, G_b]`` float64
    (``shape`` when some blocks may hold none of the rows)."""
    ga, gb = shape if shape is not None else (int(ids_a.max()) + 1, int(ids_b.max()) + 1)
    ids_a, ids_b = ids_a.to(a.device), ids_b.to(a.device)
    columns = torch.nn.functional.one_hot(ids_b, gb).double()
    out = torch.zeros(ga, gb, dtype=torch.float64, device=a.device)
    for start in range(0, len(a), _ROWS):
        values = pair(a[start : start + _ROWS], b).double()
        out.index_add_(0, ids_a[start : start + _ROWS], values @ columns)
    return out.cpu()


def _block_counts(ids: Tensor) -> Tensor:
    return torch.bincount(ids.cpu(), minlength=int(ids.max()) + 1).double()


def _within_leave_outs(sums: Tensor, diagonal: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over ordered pairs ``i != j`` of a set, and their number, with each block left out (``[G]`` each)."""
    total, diag_total, n = float(sums.sum()), float(diagonal.sum()), float(counts.sum())
    rows = sums.sum(dim=1)
    kept_sum = total - 2.0 * rows + sums.diagonal() - (diag_total - diagonal)
    kept_n = n - counts
    return kept_sum, kept_n * (kept_n - 1.0)


def _check_pair(samples: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    x = samples.detach().double()
    y = reference.detach().double().to(x.device)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"need features [n, D] and [m, D] with n, m >= 2, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


# --------------------------------------------------------------------------- the metrics


def fid_jackknife(samples: Tensor, reference: Tensor, blocks: int = BLOCKS, seed: int = 0) -> Jackknife:
    """Jackknife of FID (:func:`~jemkit.evaluation.frechet.feature_fid`, squared feature units) of
    ``samples`` ``[n, D]`` against ``reference`` ``[m, D]``.

    Leave-one-block-out means and covariances come from block sums; the cross term
    ``tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})`` keeps the whole other set's root ``S_a^{1/2}``, so each
    left-out block costs one symmetric eigenvalue problem. Needs at least ``G + 2`` rows per set.
    """
    x, y = _check_pair(samples, reference)
    shift = x.mean(0)  # a common translation leaves FID unchanged and keeps the sums well conditioned
    x, y = x - shift, y - shift
    estimate = feature_fid(x, y)

    def moments(f: Tensor, set_seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        ids = block_ids(len(f), blocks, set_seed).to(f.device)
        counts = _block_counts(ids).to(f.device)
        sums = torch.zeros(len(counts), f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, ids, f)
        return ids, counts, sums, f.sum(0), f.T @ f

    def stats(n: float, total: Tensor, outer: Tensor) -> tuple[Tensor, Tensor]:
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1.0)
        return mean, 0.5 * (cov + cov.T)

    def fd(mean_a: Tensor, cov_a: Tensor, root_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
        inner = root_a @ cov_b @ root_a
        cross = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp(min=0.0).sqrt().sum()
        return float((mean_a - mean_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * cross)

    leave_outs = []
    for own, other, set_seed in ((x, y, seed), (y, x, seed + 1)):
        ids, counts, sums, total, outer = moments(own, set_seed)
        if float(len(own) - counts.max()) < 2.0:
            raise ValueError(f"FID's jackknife needs at least {len(counts) + 2} rows per set, got {len(own)}")
        mean_o, cov_o = stats(float(len(other)), other.sum(0), other.T @ other)
        root_o = sqrtm_psd(cov_o).to(own.device)
        values = []
        for g in range(len(counts)):
            block = own[ids == g]
            mean_k, cov_k = stats(float(len(own) - counts[g]), total - sums[g], outer - block.T @ block)
            values.append(fd(mean_o, cov_o, root_o, mean_k, cov_k))
        leave_outs.append(torch.tensor(values, dtype=torch.float64))
    return _combine(estimate, leave_outs)


def kid_jackknife(samples: Tensor, reference: Tensor, blocks: int = BLOCKS, seed: int = 0) -> Jackknife:
    """Jackknife of the full-set unbiased MMD^2 with KID's cubic kernel (:mod:`~jemkit.evaluation.kid`).

    The estimate is the U-statistic on all rows (what the mean over random subsets estimates);
    pass the subsets' ``sd^2 / subsets`` as ``extra_variance`` to :meth:`Jackknife.interval` for
    KID's reported subset mean. Kernel sums are accumulated per block pair, so every leave-out
    value is exact and the kernel matrices are computed once.
    """
    x, y = _check_pair(samples, reference)
    ids_x, ids_y = block_ids(len(x), blocks, seed), block_ids(len(y), blocks, seed + 1)
    n_x, n_y = _block_counts(ids_x), _block_counts(ids_y)
    k_xx = _block_pair_sums(x, x, ids_x, ids_x, polynomial_kernel)
    k_yy = _block_pair_sums(y, y, ids_y, ids_y, polynomial_kernel)
    k_xy = _block_pair_sums(x, y, ids_x, ids_y, polynomial_kernel)

    def self_kernel(f: Tensor, ids: Tensor) -> Tensor:
        values = (f.pow(2).sum(1) / f.shape[1] + 1.0) ** 3
        return torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids, values.cpu())

    d_x, d_y = self_kernel(x, ids_x), self_kernel(y, ids_y)
    m, n = float(len(x)), float(len(y))
    xx = (float(k_xx.sum()) - float(d_x.sum())) / (m * (m - 1.0))
    yy = (float(k_yy.sum()) - float(d_y.sum())) / (n * (n - 1.0))
    cross_total = float(k_xy.sum())
    estimate = xx + yy - 2.0 * cross_total / (m * n)
    if float(min(m - n_x.max(), n - n_y.max())) < 2.0:
        raise ValueError(f"KID's jackknife needs at least {len(n_x) + 2} rows per set")
    kept_xx, pairs_x = _within_leave_outs(k_xx, d_x, n_x)
    kept_yy, pairs_y = _within_leave_outs(k_yy, d_y, n_y)
    without_x = kept_xx / pairs_x + yy - 2.0 * (cross_total - k_xy.sum(1)) / ((m - n_x) * n)
    without_y = xx + kept_yy / pairs_y - 2.0 * (cross_total - k_xy.sum(0)) / (m * (n - n_y))
    return _combine(estimate, [without_x, without_y])


def diversity_jackknife(samples: Tensor, reference: Tensor, blocks: int = BLOCKS, seed: int = 0) -> Jackknife:
    """Jackknife of :func:`~jemkit.evaluation.diversity.relative_diversity` (a ratio, no units):
    mean pairwise distance of the samples over that of the reference, from block sums of distances."""
    x, y = _check_pair(samples, reference)
    ids_x, ids_y = block_ids(len(x), blocks, seed), block_ids(len(y), blocks, seed + 1)
    n_x, n_y = _block_counts(ids_x), _block_counts(ids_y)
    if float(min(len(x) - n_x.max(), len(y) - n_y.max())) < 2.0:
        raise ValueError(f"diversity's jackknife needs at least {len(n_x) + 2} rows per set")
    d_xx = _block_pair_sums(x, x, ids_x, ids_x, torch.cdist)
    d_yy = _block_pair_sums(y, y, ids_y, ids_y, torch.cdist)
    zero_x, zero_y = torch.zeros(len(n_x), dtype=torch.float64), torch.zeros(len(n_y), dtype=torch.float64)
    m, n = float(len(x)), float(len(y))
    spread_x, spread_y = float(d_xx.sum()) / (m * (m - 1.0)), float(d_yy.sum()) / (n * (n - 1.0))
    if spread_y <= 0.0:
        raise ValueError("the real features are all identical, so diversity relative to them is undefined")
    kept_x, pairs_x = _within_leave_outs(d_xx, zero_x, n_x)
    kept_y, pairs_y = _within_leave_outs(d_yy, zero_y, n_y)
    return _combine(spread_x / spread_y, [kept_x / pairs_x / spread_y, spread_x / (kept_y / pairs_y)])


def _neighbours(f: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row of ``f``, the ascending distances to its ``k + 1 + d`` nearest rows (itself included;
    ``d`` the largest block) and the blocks of those rows: enough to find the ``k``-th nearest other
    row with any one block left out."""
    size = min(len(f), k + 1 + int(torch.bincount(ids).max()))
    values, blocks = [], []
    for start in range(0, len(f), _ROWS):
        distances, index = torch.cdist(f[start : start + _ROWS], f).topk(size, dim=1, largest=False)
        values.append(distances)
        blocks.append(ids[index])
    return torch.cat(values), torch.cat(blocks)


def _radii_without_blocks(values: Tensor, blocks: Tensor, ids: Tensor, k: int) -> Tensor:
    """``[G, n]``: each row's ``k``-NN radius among the rows kept when block ``g`` is left out;
    ``-inf`` for the rows of block ``g`` themselves (their balls are gone)."""
    out = []
    for g in range(int(ids.max()) + 1):
        kept = blocks != g
        position = ((kept.cumsum(dim=1) == k + 1) & kept).int().argmax(dim=1, keepdim=True)
        radius = values.gather(1, position).squeeze(1)
        out.append(radius.masked_fill(ids == g, -math.inf))
    return torch.stack(out)


def precision_recall_jackknife(
    reference: Tensor, samples: Tensor, k: int = 3, blocks: int = BLOCKS, seed: int = 0
) -> tuple[Jackknife, Jackknife]:
    """Jackknifes of generative precision and recall (:func:`~jemkit.evaluation.diversity.precision_recall`,
    fractions in ``[0, 1]``), each block left out of the samples and of the reference in turn with
    the k-NN manifolds rebuilt on what is kept. The distances are computed once: sorted neighbour
    lists give every left-out radius, and the sample-to-reference distances are visited in chunks.
    Needs more than ``k`` rows per set after a block is left out (blocks seeded as :func:`jackknife`)."""
    y, x = _check_pair(reference, samples)
    ids_x = block_ids(len(x), blocks, seed).to(x.device)
    ids_y = block_ids(len(y), blocks, seed + 1).to(x.device)
    g_x, g_y = int(ids_x.max()) + 1, int(ids_y.max()) + 1
    if min(len(x) - int(torch.bincount(ids_x).max()), len(y) - int(torch.bincount(ids_y).max())) <= k:
        raise ValueError(f"precision/recall jackknife needs more than {k} rows per set with a block left out")
    values_x, blocks_x = _neighbours(x, ids_x, k)
    values_y, blocks_y = _neighbours(y, ids_y, k)
    radius_x, radius_y = values_x[:, k], values_y[:, k]  # as knn_radii
    radii_x = _radii_without_blocks(values_x, blocks_x, ids_x, k)
    radii_y = _radii_without_blocks(values_y, blocks_y, ids_y, k)
    in_real = torch.zeros(len(x), dtype=torch.bool, device=x.device)  # sample inside the reference manifold
    in_real_without = torch.zeros(g_y, len(x), dtype=torch.bool, device=x.device)  # ... with a reference block left out
    in_fake = torch.zeros(len(y), dtype=torch.bool, device=x.device)  # reference image inside the samples' manifold
    in_fake_without = torch.zeros(g_x, len(y), dtype=torch.bool, device=x.device)  # ... with a sample block left out
    rows = max(1, (1 << 22) // (max(g_x, g_y) * len(y)))
    for start in range(0, len(x), rows):
        part = slice(start, start + rows)
        distances = torch.cdist(x[part], y)  # [c, m]
        in_real[part] = (distances <= radius_y).any(dim=1)
        in_real_without[:, part] = (distances.unsqueeze(0) <= radii_y.unsqueeze(1)).any(dim=2)
        in_fake |= (distances <= radius_x[part].unsqueeze(1)).any(dim=0)
        in_fake_without |= (distances.unsqueeze(0) <= radii_x[:, part].unsqueeze(2)).any(dim=1)
    kept_x = torch.stack([ids_x != g for g in range(g_x)]).double()  # [G_x, n]
    kept_y = torch.stack([ids_y != g for g in range(g_y)]).double()  # [G_y, m]
    precision = _combine(
        float(in_real.double().mean()),
        [(kept_x @ in_real.double()) / kept_x.sum(1), in_real_without.double().mean(1)],
    )
    recall = _combine(
        float(in_fake.double().mean()),
        [in_fake_without.double().mean(1), (kept_y @ in_fake.double()) / kept_y.sum(1)],
    )
    return precision, recall


def class_diversity_jackknife(
    samples: Tensor,
    sample_labels: Tensor,
    reference: Tensor,
    reference_labels: Tensor,
    num_classes: int,
    blocks: int = BLOCKS,
    seed: int = 0,
) -> Jackknife | None:
    """Jackknife of the mean over classes of :func:`~jemkit.evaluation.diversity.class_diversity`
    (a ratio, no units), with class-stratified blocks (seeded as :func:`jackknife`) and per-class
    block sums of distances; ``None`` when some left-out block leaves no class defined. A class
    counts while it keeps two samples and two distinct real images, as in ``class_diversity``."""
    x, y = _check_pair(samples, reference)
    ys, yr = sample_labels.detach().cpu().long(), reference_labels.detach().cpu().long()
    if len(ys) != len(x) or len(yr) != len(y):
        raise ValueError("each feature row needs one label")
    ids_x, ids_y = block_ids(len(x), blocks, seed, ys), block_ids(len(y), blocks, seed + 1, yr)

    def per_class(f: Tensor, labels: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``[K, 1 + G]`` sums of distances over ordered pairs and pair counts: the whole set, then block g left out."""
        g = int(ids.max()) + 1
        sums = torch.zeros(num_classes, 1 + g, dtype=torch.float64)
        pairs = torch.zeros(num_classes, 1 + g, dtype=torch.float64)
        for k in range(num_classes):
            members = labels == k
            ids_k = ids[members]
            counts = torch.bincount(ids_k, minlength=g).double()
            block_sums = torch.zeros(g, g, dtype=torch.float64)
            if len(ids_k) >= 2:
                f_k = f[members.to(f.device)]
                block_sums = _block_pair_sums(f_k, f_k, ids_k, ids_k, torch.cdist, (g, g))
            kept_sum, kept_pairs = _within_leave_outs(block_sums, torch.zeros(g, dtype=torch.float64), counts)
            n_k = float(len(ids_k))
            sums[k, 0], pairs[k, 0] = float(block_sums.sum()), n_k * (n_k - 1.0)
            sums[k, 1:], pairs[k, 1:] = kept_sum, kept_pairs
        return sums, pairs

    def mean_ratio(sum_x: Tensor, pairs_x: Tensor, sum_y: Tensor, pairs_y: Tensor) -> float:
        defined = (pairs_x > 0) & (pairs_y > 0) & (sum_y > 0)
        if not bool(defined.any()):
            return math.nan
        ratio = (sum_x[defined] / pairs_x[defined]) / (sum_y[defined] / pairs_y[defined])
        return float(ratio.mean())

    sx, px = per_class(x, ys, ids_x)
    sy, py = per_class(y, yr, ids_y)
    estimate = mean_ratio(sx[:, 0], px[:, 0], sy[:, 0], py[:, 0])
    without_x = [mean_ratio(sx[:, 1 + g], px[:, 1 + g], sy[:, 0], py[:, 0]) for g in range(sx.shape[1] - 1)]
    without_y = [mean_ratio(sx[:, 0], px[:, 0], sy[:, 1 + h], py[:, 1 + h]) for h in range(sy.shape[1] - 1)]
    values = [estimate, *without_x, *without_y]
    if not all(map(math.isfinite, values)):
        return None
    return _combine(estimate, [torch.tensor(v, dtype=torch.float64) for v in (without_x, without_y)])


# --------------------------------------------------------------------------- the generation section


def _min_kept(n: int, blocks: int = BLOCKS) -> int:
    """Rows a set of ``n`` keeps when its largest block is left out."""
    return n - math.ceil(n / min(blocks, n)) if n >= 2 else 0


def add_set_intervals(
    result: dict[str, Any],
    samples: Tensor,
    reference: Tensor,
    k: int,
    kid_subsets: int,
    seed: int = 0,
    sample_labels: Tensor | None = None,
    reference_labels: Tensor | None = None,
    num_classes: int = 1,
) -> None:
    """Add ``<key>_ci95: [low, high]`` beside the set-vs-set numbers of one sample set's ``result``:
    ``fid``, ``kid.mean``, ``precision``, ``recall``, ``diversity`` and ``class_diversity.mean``,
    for each that is present and whose sets are large enough (jackknife described in the module doc).

    ``samples`` ``[n, D]`` and ``reference`` ``[m, D]`` are the features the numbers were measured
    on; ``sample_labels`` and ``reference_labels`` (class-conditional samples) stratify the blocks of
    class diversity. ``kid_subsets`` is the number of subset pairs KID averaged over.
    """
    n, m = len(samples), len(reference)
    if min(_min_kept(n), _min_kept(m)) < 2:
        return

    def put(target: dict[str, Any], key: str, interval: list[float]) -> None:
        if all(map(math.isfinite, interval)):  # a degenerate leave-out gets no interval rather than NaN
            target[f"{key}_ci95"] = interval

    if "fid" in result:
        fid = fid_jackknife(samples, reference, seed=seed)
        put(result, "fid", fid.interval(bias_correct=True, bounds=(0.0, math.inf)))
    kid = result.get("kid")
    if isinstance(kid, dict) and "mean" in kid:
        jack = kid_jackknife(samples, reference, seed=seed)
        jack = Jackknife(float(kid["mean"]), jack.bias, jack.variance, jack.dof)  # centred on the subset mean
        put(kid, "mean", jack.interval(extra_variance=float(kid.get("std", 0.0)) ** 2 / max(1, kid_subsets)))
    if "diversity" in result:
        put(result, "diversity", diversity_jackknife(samples, reference, seed=seed).interval(bounds=(0.0, math.inf)))
    if "precision" in result and min(_min_kept(n), _min_kept(m)) > k:
        precision, recall = precision_recall_jackknife(reference, samples, k, seed=seed)
        put(result, "precision", precision.interval(bounds=(0.0, 1.0)))
        put(result, "recall", recall.interval(bounds=(0.0, 1.0)))
    classes = result.get("class_diversity")
    if isinstance(classes, dict) and classes.get("mean") is not None:
        if sample_labels is None or reference_labels is None:
            return
        jack_or_none = class_diversity_jackknife(
            samples, sample_labels, reference, reference_labels, num_classes, seed=seed
        )
        if jack_or_none is not None:
            put(classes, "mean", jack_or_none.interval(bounds=(0.0, math.inf)))
