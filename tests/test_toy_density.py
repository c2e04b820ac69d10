"""Density quality of 2-D models, on densities known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from jemkit_plugins.data.data_toy import TOY_DISTRIBUTIONS, eight_centres
from jemkit_plugins.evaluation.toy_density import (
    DENSITY_EXTENT,
    DENSITY_RESOLUTION,
    checkerboard_modes,
    density_report,
    describe_quality,
    gaussian_mixture_cell_mass,
    grid_points,
    histogram_cell_mass,
    mmd2_gaussian,
    model_cell_mass,
    nearest_label_regions,
    region_masses,
    total_variation,
    toy_summary,
    toy_true_mass,
)


def test_tv_of_two_unit_gaussians_matches_the_closed_form():
    # TV(N(-a, 1), N(a, 1)) in 1-D is 2 * Phi(a) - 1; in 2-D with shifts along x only, the same.
    points, _ = grid_points(extent=8.0, resolution=400)
    a = 0.5
    p = gaussian_mixture_cell_mass(points, torch.tensor([[-a, 0.0]]), 1.0)
    q = gaussian_mixture_cell_mass(points, torch.tensor([[a, 0.0]]), 1.0)
    expected = math.erf(a / math.sqrt(2))  # 2 * Phi(a) - 1
    assert total_variation(p, q) == pytest.approx(expected, abs=2e-3)
    assert total_variation(p, p) == 0.0


def test_model_mass_of_a_quadratic_energy_is_the_gaussian():
    points, _ = grid_points(extent=1.0, resolution=120)
    centre, std = torch.tensor([[0.2, -0.1]]), 0.15
    energy = lambda x: (x.double() - centre).pow(2).sum(1) / (2 * std * std)  # noqa: E731
    assert total_variation(model_cell_mass(energy, points), gaussian_mixture_cell_mass(points, centre, std)) < 1e-5


def test_eight_gaussians_mode_masses_are_one_eighth_and_a_collapsed_model_is_caught():
    dist = TOY_DISTRIBUTIONS["eight_gaussians"]
    points, _ = grid_points(extent=1.2, resolution=160)
    true = gaussian_mixture_cell_mass(points, eight_centres(), dist.default_noise)
    data_x, data_y = dist.sample(4000, torch.Generator().manual_seed(0))
    regions = nearest_label_regions(points, data_x, data_y)
    masses = region_masses(true, regions, 8)
    assert all(m == pytest.approx(0.125, abs=0.005) for m in masses)
    # A model whose exp(-E) puts 60 % of the mass on mode 0: TV and mode masses show it.
    weights = torch.full((8,), 0.4 / 7)
    weights[0] = 0.6
    lopsided = lambda x: -torch.logsumexp(  # noqa: E731
        weights.double().log() - torch.cdist(x.double(), eight_centres().double()).pow(2) / (2 * 0.06**2), dim=1
    )
    report = density_report(lopsided, true, points, data_x, data_y, 8, samples=data_x[:500])
    assert report["mode_mass"][0] == pytest.approx(0.6, abs=0.01)
    assert report["tv"] == pytest.approx(0.6 - 0.125, abs=0.01)
    assert abs(report["samples_mmd2"]) < 0.01


def test_histogram_of_many_draws_matches_the_analytic_mixture():
    dist = TOY_DISTRIBUTIONS["eight_gaussians"]
    points, _ = grid_points(extent=1.2, resolution=40)
    x, _ = dist.sample(400_000, torch.Generator().manual_seed(1))
    hist = histogram_cell_mass(x, 1.2, 40)
    assert total_variation(hist, gaussian_mixture_cell_mass(points, eight_centres(), dist.default_noise)) < 0.05


def test_mmd_separates_shifted_samples():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
    assert abs(mmd2_gaussian(a, b)) < 0.01
    assert mmd2_gaussian(a, b + 1.0) > 0.1


# --------------------------------------------------------------------------- the toys' summary entries


@pytest.mark.parametrize("name", ["rings", "two_moons"])
def test_analytic_curve_densities_match_a_histogram_of_many_draws(name):
    """The rings' and moons' closed-form mixtures are the generators' densities (sampling error of
    2M draws is about 0.01 in TV; a ring radius or moon centre off by 0.03 costs 0.3 or more)."""
    dist = TOY_DISTRIBUTIONS[name]
    points, _ = grid_points(DENSITY_EXTENT, DENSITY_RESOLUTION)
    analytic = toy_true_mass(name, dist.sample, dist.default_noise, points)
    hist = histogram_cell_mass(dist.sample(2_000_000, torch.Generator().manual_seed(5))[0], DENSITY_EXTENT, DENSITY_RESOLUTION)
    assert total_variation(analytic, hist) < 0.03
    shifted = histogram_cell_mass(
        dist.sample(2_000_000, torch.Generator().manual_seed(5))[0] * 1.05, DENSITY_EXTENT, DENSITY_RESOLUTION
    )
    assert total_variation(analytic, shifted) > 0.2


def test_checkerboard_truth_is_uniform_on_its_eight_dark_squares():
    dist = TOY_DISTRIBUTIONS["checkerboard"]
    points, _ = grid_points(DENSITY_EXTENT, DENSITY_RESOLUTION)
    truth = toy_true_mass("checkerboard", dist.sample, 0.0, points)
    hist = histogram_cell_mass(dist.sample(1_000_000, torch.Generator().manual_seed(6))[0], DENSITY_EXTENT, DENSITY_RESOLUTION)
    assert total_variation(truth, hist) < 0.03
    squares = checkerboard_modes(torch.tensor([[-0.9, -0.9], [0.1, -0.9], [-0.6, -0.4], [0.9, 0.9], [1.3, 1.3]]))
    assert squares.tolist() == [0, 1, 2, 7, 7]


def _eight_gaussian_energy(weights: torch.Tensor):
    def energy(x: torch.Tensor) -> torch.Tensor:
        sq = torch.cdist(x.double(), eight_centres().double()).pow(2)
        return -torch.logsumexp(weights.double().log() - sq / (2 * 0.06**2), dim=1)

    return energy


def test_toy_summary_of_the_true_density_and_of_a_lopsided_one():
    dist = TOY_DISTRIBUTIONS["eight_gaussians"]
    exact = toy_summary(_eight_gaussian_energy(torch.full((8,), 1 / 8)), "eight_gaussians", dist.sample, 8, 0.06)
    assert exact["density/tv"] < 0.01 and exact["density/mode_mass_err"] < 0.01
    assert exact["density/true_modes"] == pytest.approx([0.125] * 8, abs=0.002)
    weights = torch.full((8,), 0.55 / 7)
    weights[3] = 0.45
    samples = dist.sample(1000, torch.Generator().manual_seed(8))[0]
    lopsided = toy_summary(_eight_gaussian_energy(weights), "eight_gaussians", dist.sample, 8, 0.06, samples=samples)
    assert lopsided["density/mode_mass_max"] == pytest.approx(0.45, abs=0.01)
    assert lopsided["density/mode_masses"][3] == lopsided["density/mode_mass_max"]
    assert lopsided["density/mode_mass_min"] == pytest.approx(0.55 / 7, abs=0.01)
    assert lopsided["density/mode_mass_err"] == pytest.approx(0.45 - 0.125, abs=0.01)
    assert lopsided["density/tv"] == pytest.approx(0.45 - 0.125, abs=0.01)
    assert abs(lopsided["samples/mmd2"]) < 0.005  # the samples are real data
    line = describe_quality(lopsided)
    assert "TV 0.32" in line and "/45.0/" in line and "(true 12.5/12.5/" in line
