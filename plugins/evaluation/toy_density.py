"""Density quality of a 2-D model: its normalised ``exp(-E)`` on a grid against the true density.

All densities here are *cell masses* on a regular grid over a square box: non-negative values that
sum to 1 (the density times the cell area, normalised over the box). Energies are in nats (lower =
more likely), so the model's mass of cell ``i`` is ``exp(-E(x_i)) / sum_j exp(-E(x_j))``.

- Total variation ``TV = 0.5 * sum_i |p_model(i) - p_true(i)|`` lies in ``[0, 1]`` (0: identical).
- Mode masses: the grid cells are split into regions (for the toys, one region per class: each
  cell belongs to the class of its nearest data point), and each region's total mass is reported
  for the model and for the truth; for ``eight_gaussians`` each should be 1/8.
- Samples against data: the unbiased squared maximum mean discrepancy (Gaussian kernel).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``E(x) [N]`` for points ``x [N, 2]`` (nats).
EnergyFn = Callable[[Tensor], Tensor]


def grid_points(extent: float, resolution: int) -> tuple[Tensor, float]:
    """Cell centres ``[resolution^2, 2]`` of a ``resolution x resolution`` grid on ``[-extent, extent]^2``
    (row-major, y outer), and the cell area."""
    step = 2 * extent / resolution
    centres = -extent + step * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), step * step


@torch.no_grad()
def model_cell_mass(energy_fn: EnergyFn, points: Tensor, batch_size: int = 4096) -> Tensor:
    """``exp(-E)`` at ``points`` normalised to sum 1 (float64; computed stably from the energies)."""
    energies = torch.cat([energy_fn(points[i : i + batch_size].float()).double() for i in range(0, len(points), batch_size)])
    if not torch.isfinite(energies).all():
        raise ValueError("the model's energy is not finite everywhere on the grid")
    return torch.softmax(-energies, dim=0)


def gaussian_mixture_cell_mass(points: Tensor, centres: Tensor, std: float, weights: Tensor | None = None) -> Tensor:
    """True cell masses of a mixture of isotropic Gaussians ``N(c_k, std^2 I)`` (equal weights by default)."""
    centres = centres.double()
    weights = torch.full((len(centres),), 1.0 / len(centres), dtype=torch.float64) if weights is None else weights.double()
    sq = torch.cdist(points.double(), centres).pow(2)  # [P, K]
    log_density = torch.logsumexp(weights.log() - sq / (2 * std * std), dim=1)
    return torch.softmax(log_density, dim=0)


def histogram_cell_mass(samples: Tensor, extent: float, resolution: int) -> Tensor:
    """Cell masses of a fine histogram of ``samples [N, 2]`` (points outside the box are dropped)."""
    step = 2 * extent / resolution
    index = torch.floor((samples.double() + extent) / step).long()
    inside = ((index >= 0) & (index < resolution)).all(dim=1)
    flat = index[inside, 1] * resolution + index[inside, 0]
    counts = torch.bincount(flat, minlength=resolution * resolution).double()
    if counts.sum() == 0:
        raise ValueError("no sample falls inside the grid")
    return counts / counts.sum()


def total_variation(p: Tensor, q: Tensor) -> float:
    """``0.5 * sum |p - q|`` of two cell-mass vectors (each summing to 1); in ``[0, 1]``."""
    return 0.5 * float((p.double() - q.double()).abs().sum())


def nearest_label_regions(points: Tensor, data_x: Tensor, data_y: Tensor, batch_size: int = 4096) -> Tensor:
    """For every grid point, the label of its nearest data point (``[P]`` int64)."""
    labels = []
    for i in range(0, len(points), batch_size):
        nearest = torch.cdist(points[i : i + batch_size].double(), data_x.double()).argmin(dim=1)
        labels.append(data_y[nearest])
    return torch.cat(labels).long()


def region_masses(mass: Tensor, regions: Tensor, num_regions: int) -> list[float]:
    """Total mass of each region (``regions[i]`` is the region of cell ``i``)."""
    return torch.zeros(num_regions, dtype=torch.float64).scatter_add_(0, regions, mass.double()).tolist()


def mmd2_gaussian(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD between point sets ``x [N, d]`` and ``y [M, d]`` with a Gaussian kernel.

    ``bandwidth`` (input units) defaults to the median pairwise distance of the pooled points.
    Near 0 (possibly slightly negative) for two samples of one distribution.
    """
    x, y = x.double(), y.double()
    if len(x) < 2 or len(y) < 2:
        raise ValueError("MMD needs at least two points in each set")
    if bandwidth is None:
        pooled = torch.cat([x, y])
        bandwidth = float(torch.cdist(pooled, pooled).median()) or 1.0
    gamma = 1.0 / (2 * bandwidth * bandwidth)
    kxx = torch.exp(-gamma * torch.cdist(x, x).pow(2))
    kyy = torch.exp(-gamma * torch.cdist(y, y).pow(2))
    kxy = torch.exp(-gamma * torch.cdist(x, y).pow(2))
    n, m = len(x), len(y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def density_report(
    energy_fn: EnergyFn,
    true_mass: Tensor,
    points: Tensor,
    data_x: Tensor,
    data_y: Tensor,
    num_classes: int,
    samples: Tensor | None = None,
) -> dict[str, object]:
    """TV of the model's density against ``true_mass``, mass per class region (model and truth), and
    the samples' MMD^2 against ``data_x`` when ``samples`` are given."""
    model_mass = model_cell_mass(energy_fn, points)
    regions = nearest_label_regions(points, data_x, data_y)
    report: dict[str, object] = {
        "tv": total_variation(model_mass, true_mass),
        "mode_mass": region_masses(model_mass, regions, num_classes),
        "true_mode_mass": region_masses(true_mass, regions, num_classes),
    }
    if samples is not None:
        report["samples_mmd2"] = mmd2_gaussian(samples, data_x)
    return report


__all__ = [
    "density_report",
    "gaussian_mixture_cell_mass",
    "grid_points",
    "histogram_cell_mass",
    "mmd2_gaussian",
    "model_cell_mass",
    "nearest_label_regions",
    "region_masses",
    "total_variation",
]
