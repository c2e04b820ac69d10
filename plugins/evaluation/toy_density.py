"""Density quality of a 2-D model: its normalised ``exp(-E)`` on a grid against the true density.

All densities here are *cell masses* on a regular grid over a square box: non-negative values that
sum to 1 (the density times the cell area, normalised over the box). Energies are in nats (lower =
more likely), so the model's mass of cell ``i`` is ``exp(-E(x_i)) / sum_j exp(-E(x_j))``.

- Total variation ``TV = 0.5 * sum_i |p_model(i) - p_true(i)|`` lies in ``[0, 1]`` (0: identical).
- Mode masses: the grid cells are split into regions (for the toys, one region per class: each
  cell belongs to the class of its nearest data point), and each region's total mass is reported
  for the model and for the truth; for ``eight_gaussians`` each should be 1/8.
- Samples against data: the unbiased squared maximum mean discrepancy (Gaussian kernel).

:func:`toy_summary` measures a model trained on one of the 2-D toy sets (``jemkit_plugins.data.data_toy``)
and returns the entries the ``toy_plot`` plugin adds to the run's ``summary.json``:

========================== ===================================================================
key                        meaning
========================== ===================================================================
``density/tv``             TV between the model's cell masses and the truth, on a
                           ``DENSITY_RESOLUTION``-square grid over ``[-DENSITY_EXTENT, DENSITY_EXTENT]^2``
                           (0 identical, 1 disjoint); mass outside the box is not counted
``density/mode_masses``    the model's mass in each mode region (fractions summing to 1)
``density/true_modes``     the true mass of the same regions
``density/mode_mass_min``  smallest, and ``density/mode_mass_max`` largest, entry of ``mode_masses``
``density/mode_mass_err``  ``max_k |mode_masses[k] - true_modes[k]|`` (0 is a perfect split)
``samples/mmd2``           unbiased MMD^2 of the model's samples against fresh data, Gaussian kernel of
                           bandwidth ``MMD_BANDWIDTH`` (~0 when they match; uniform noise gives ~0.05)
========================== ===================================================================

The modes are the classes (the eight Gaussians, the two moons, the three rings), except for
``checkerboard``, whose modes are its eight dark squares. The truth is analytic for the shipped toys
at their default jitter (:func:`toy_true_mass`) and a histogram of ``TRUE_DRAWS`` fresh draws
otherwise (its sampling error adds about 0.02 to the TV).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


#: Half-width of the square box on which toy densities are compared (input units).
DENSITY_EXTENT = 1.5
#: Grid cells per axis of that box.
DENSITY_RESOLUTION = 120
#: Fresh draws whose histogram is the true density of toys without a closed form.
TRUE_DRAWS = 1_000_000
#: Fresh draws that label the mode regions (each grid cell takes the mode of its nearest draw).
REGION_DRAWS = 2000
#: Gaussian-kernel bandwidth of ``samples/mmd2`` (input units; the eight Gaussians' std is 0.06).
MMD_BANDWIDTH = 0.1
#: Fresh data points the samples are compared with.
MMD_DATA = 1000
#: Side of a checkerboard square; the board spans ``[-1, 1]^2``.
CHECKER_SQUARE = 0.5

#: ``draw(n, generator) -> (x [n, 2], y [n])``: fresh labelled points of a toy distribution.
DrawFn = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


def checkerboard_modes(x: Tensor) -> Tensor:
    """The dark square (0-7, bottom row first) of each point ``x [N, 2]`` (points off the board take the nearest square)."""
    col, row = torch.floor((x.double() + 1.0) / CHECKER_SQUARE).long().clamp(0, 3).unbind(1)
    return row * 2 + col // 2


def toy_modes(name: str, x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, int]:
    """The mode of each labelled point and the number of modes: dark squares for ``checkerboard``, else classes."""
    if name == "checkerboard":
        return checkerboard_modes(x), 8
    return y.long(), num_classes


#: Points per curve that stand in for the rings' and moons' curves in their analytic mixtures.
CURVE_POINTS = 240


def curve_mixture(name: str) -> tuple[Tensor, Tensor] | None:
    """Centres ``[K, 2]`` and weights ``[K]`` of an equal-std Gaussian mixture that is the rings' or
    the moons' density (points spaced evenly along each curve, far closer than the jitter); else ``None``."""
    from jemkit_plugins.data.data_toy import RING_RADII

    u = (torch.arange(CURVE_POINTS, dtype=torch.float64) + 0.5) / CURVE_POINTS
    if name == "rings":
        radii = torch.tensor(RING_RADII, dtype=torch.float64)
        angle = 2 * math.pi * u
        centres = torch.cat([r * torch.stack([angle.cos(), angle.sin()], 1) for r in radii])
        weights = (radii / radii.sum()).repeat_interleave(CURVE_POINTS) / CURVE_POINTS
        return centres, weights
    if name == "two_moons":
        t = math.pi * u
        upper = torch.stack([t.cos(), t.sin()], 1)
        lower = torch.stack([1.0 - t.cos(), 0.5 - t.sin()], 1)
        centres = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 1.5
        return centres, torch.full((2 * CURVE_POINTS,), 0.5 / CURVE_POINTS, dtype=torch.float64)
    return None


def toy_true_mass(name: str, draw: DrawFn, noise: float | None, points: Tensor) -> Tensor:
    """True cell masses on ``grid_points(DENSITY_EXTENT, DENSITY_RESOLUTION)``: the analytic mixture
    for ``eight_gaussians`` (``noise``: the jitter std), rings and moons (:func:`curve_mixture`), the
    uniform board for a noise-free ``checkerboard``, else a histogram of ``TRUE_DRAWS`` fresh draws."""
    if name == "eight_gaussians" and noise is not None:
        from jemkit_plugins.data.data_toy import eight_centres

        return gaussian_mixture_cell_mass(points, eight_centres(), noise)
    curves = curve_mixture(name) if noise else None
    if curves is not None:
        return gaussian_mixture_cell_mass(points, curves[0], noise, curves[1])
    if name == "checkerboard" and noise == 0:  # uniform on the dark squares (the grid's cells tile them)
        col, row = torch.floor((points.double() + 1.0) / CHECKER_SQUARE).long().unbind(1)
        on_board = (points.abs() < 1.0).all(dim=1)
        dark = (on_board & ((row + col) % 2 == 0)).double()
        return dark / dark.sum()
    x, _ = draw(TRUE_DRAWS, torch.Generator().manual_seed(1))
    return histogram_cell_mass(x, DENSITY_EXTENT, DENSITY_RESOLUTION)


def toy_summary(
    energy_fn: EnergyFn,
    name: str,
    draw: DrawFn,
    num_classes: int,
    noise: float | None = None,
    samples: Tensor | None = None,
) -> dict[str, Any]:
    """The ``density/...`` (and with ``samples``, ``samples/mmd2``) summary entries of a model of the
    toy distribution ``name`` (see the module's table). ``draw`` gives fresh data, ``noise`` is the
    data's jitter std (used for the analytic eight Gaussians)."""
    points, _ = grid_points(DENSITY_EXTENT, DENSITY_RESOLUTION)
    true_mass = toy_true_mass(name, draw, noise, points)
    region_x, region_y = draw(REGION_DRAWS, torch.Generator().manual_seed(2))
    modes, num_modes = toy_modes(name, region_x, region_y, num_classes)
    report = density_report(energy_fn, true_mass, points, region_x, modes, num_modes)
    model_modes, true_modes = report["mode_mass"], report["true_mode_mass"]
    entries: dict[str, Any] = {
        "density/tv": round(float(report["tv"]), 5),
        "density/mode_masses": [round(m, 5) for m in model_modes],
        "density/true_modes": [round(m, 5) for m in true_modes],
        "density/mode_mass_min": round(min(model_modes), 5),
        "density/mode_mass_max": round(max(model_modes), 5),
        "density/mode_mass_err": round(max(abs(m - t) for m, t in zip(model_modes, true_modes)), 5),
    }
    if samples is not None:
        data, _ = draw(MMD_DATA, torch.Generator().manual_seed(3))
        mmd2 = mmd2_gaussian(samples.detach().cpu().view(-1, 2), data, MMD_BANDWIDTH)
        entries["samples/mmd2"] = round(mmd2, 6) if math.isfinite(mmd2) else mmd2
    return entries


def describe_quality(entries: dict[str, Any]) -> str:
    """One line for a figure: TV, the mode masses in per cent against the truth, and the samples' MMD^2."""
    parts = []
    if "density/tv" in entries:
        parts.append(f"TV {entries['density/tv']:.3f}")
    if "density/mode_masses" in entries:
        model = "/".join(f"{100 * m:.1f}" for m in entries["density/mode_masses"])
        true = "/".join(f"{100 * m:.1f}" for m in entries["density/true_modes"])
        parts.append(f"mode masses {model} % (true {true} %)")
    if "samples/mmd2" in entries:
        parts.append(f"samples MMD\u00b2 {entries['samples/mmd2']:.4f}")
    return "   ".join(parts)


__all__ = [
    "DENSITY_EXTENT",
    "DENSITY_RESOLUTION",
    "MMD_BANDWIDTH",
    "checkerboard_modes",
    "describe_quality",
    "toy_modes",
    "toy_summary",
    "toy_true_mass",
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
