"""2-D toy world: the generated distributions, the density picture, and a trained toy model's samples in MMD."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jemkit.config import load_recipe
from jemkit.contracts import BuildContext, DataSplits
from jemkit.sampler import Sampler
from jemkit.train import Trainer
from jemkit_plugins.data.data_toy import RING_RADII, TOY_DISTRIBUTIONS, ToyParams, eight_centres
from jemkit_plugins.samplers.sampling import UniformNoise
from jemkit_plugins.evaluation.toy_plot import DENSITY_FILE

from conftest import RECIPES, TINY_DIGITS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Fixed RBF bandwidth of the MMD, in input units.
MMD_BANDWIDTH = 0.1
TOY_RECIPES = {
    "two_moons": "toy_moons",
    "rings": "toy_rings",
    "eight_gaussians": "toy_8gaussians",
    "checkerboard": "toy_checkerboard",
}


# Tiny models run fastest on one thread and do not fight other jobs for the 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float = MMD_BANDWIDTH) -> float:
    """Unbiased squared maximum mean discrepancy with kernel ``exp(-|u - v|^2 / (2 h^2))``."""

    def kernel(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth**2))

    n, m = len(a), len(b)
    kaa, kbb = kernel(a, a), kernel(b, b)
    within_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    within_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(within_a + within_b - 2 * kernel(a, b).mean())


# --------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("name", sorted(TOY_DISTRIBUTIONS))
def test_toy_draws_are_labelled_2d_points_in_range_and_reproducible(name):
    dist = TOY_DISTRIBUTIONS[name]
    x, y = dist.sample(3000, torch.Generator().manual_seed(0))
    assert x.shape == (3000, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(dist.num_classes)) and len(dist.class_names) == dist.num_classes
    assert x.abs().max() < 1.3, "points lie in roughly [-1, 1]^2"
    again, _ = dist.sample(3000, torch.Generator().manual_seed(0))
    other, _ = dist.sample(3000, torch.Generator().manual_seed(1))
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_rings_lie_on_their_radius():
    x, y = TOY_DISTRIBUTIONS["rings"].sample(3000, torch.Generator().manual_seed(2), noise=0.0)
    assert torch.allclose(x.norm(dim=1), torch.tensor(RING_RADII)[y], atol=1e-5)


def test_eight_gaussians_centre_on_their_mode():
    x, y = TOY_DISTRIBUTIONS["eight_gaussians"].sample(8000, torch.Generator().manual_seed(3))
    for k in range(8):
        rows = x[y == k]
        standard_error = 0.06 / math.sqrt(len(rows))
        assert torch.allclose(rows.mean(0), eight_centres()[k], atol=5 * standard_error)
        assert rows.std(0).sub(0.06).abs().max() < 0.01


def test_checkerboard_fills_dark_squares_labelled_by_row_parity():
    x, y = TOY_DISTRIBUTIONS["checkerboard"].sample(4000, torch.Generator().manual_seed(4))
    col, row = ((x + 1.0) / 0.5).floor().long().unbind(1)
    assert ((row + col) % 2 == 0).all() and row.min() >= 0 and row.max() <= 3
    assert torch.equal(y, row % 2)
    occupied = torch.bincount(row * 4 + col, minlength=16)
    assert (occupied[(torch.arange(16) // 4 + torch.arange(16) % 4) % 2 == 0] > 400).all()


def test_two_moons_are_separated_by_label():
    x, y = TOY_DISTRIBUTIONS["two_moons"].sample(2000, torch.Generator().manual_seed(5), noise=0.0)
    upper, lower = x[y == 0], x[y == 1]
    assert upper[:, 1].mean() > lower[:, 1].mean() + 0.3
    # noise-free moons are half circles of radius 1/1.5 around their centres
    radius = (upper - torch.tensor([-0.5 / 1.5, -0.25 / 1.5])).norm(dim=1)
    assert torch.allclose(radius, torch.full_like(radius, 1 / 1.5), atol=1e-5)


@pytest.mark.parametrize("name", sorted(TOY_DISTRIBUTIONS))
def test_registered_toy_data_builds_splits_that_draw_fresh_points(plugins, name):
    component = plugins.registries["data"].get(name)
    splits = component.factory(ToyParams(n_train=300, n_test=100, seed=7), BuildContext())
    assert isinstance(splits, DataSplits) and splits.input_shape == (2,)
    assert (len(splits.train), len(splits.test)) == (300, 100)
    assert not torch.equal(splits.train.x[:100], splits.test.x)
    fresh, labels = splits.train.sample(50, torch.Generator().manual_seed(0))
    assert fresh.shape == (50, 2) and labels.max() < splits.num_classes


def test_toy_params_are_validated():
    for bad in (dict(n_train=0), dict(noise=-0.1), dict(seed=1.5)):
        with pytest.raises(ValueError):
            ToyParams(**bad)


# --------------------------------------------------------------------------- the density picture


def test_density_picture_only_for_2d_runs(cli, tmp_path):
    toy, digits = tmp_path / "toy", tmp_path / "digits"
    tiny_toy = [
        "train.max_steps=3", "train.epochs=1", "train.sample_extra_steps=0",
        "data.n_train=400", "data.n_test=100", "sampler.init.size=100",
    ]
    assert cli("run", RECIPES / "toy_rings.yaml", "--out", toy, *tiny_toy).code == 0
    picture = toy / "samples" / DENSITY_FILE
    assert picture.stat().st_size > 1000 and picture.read_bytes()[:8] == PNG_MAGIC
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", digits, *TINY_DIGITS).code == 0
    assert not (digits / "samples" / DENSITY_FILE).exists()
    # The density quality joins the toy run's summary (rings: three modes holding 1/6, 1/3, 1/2).
    summary = json.loads((toy / "summary.json").read_text())
    masses = summary["density/mode_masses"]
    assert len(masses) == 3 and sum(masses) == pytest.approx(1.0, abs=1e-3) and min(masses) >= 0
    assert summary["density/true_modes"] == pytest.approx([1 / 6, 1 / 3, 1 / 2], abs=0.01)
    assert (summary["density/mode_mass_min"], summary["density/mode_mass_max"]) == (min(masses), max(masses))
    errors = [abs(m - t) for m, t in zip(masses, summary["density/true_modes"])]
    assert summary["density/mode_mass_err"] == pytest.approx(max(errors), abs=1e-4)
    assert 0.0 < summary["density/tv"] <= 1.0 and summary["samples/mmd2"] > -0.01
    assert not any(key.startswith(("density/", "samples/mmd2")) for key in json.loads((digits / "summary.json").read_text()))


def test_the_draw_samples_hook_draws_2d_samples_and_declines_other_inputs(plugins, tmp_path):
    """``jemkit sample``'s picture comes from the ``jemkit_draw_samples`` hook: toy_plot draws 2-D runs
    (the density with training points and samples) and returns None for images, left to the grid."""
    from omegaconf import OmegaConf

    from jemkit.build import build_data, build_model

    cfg = OmegaConf.create(
        {
            "data": {"name": "two_moons", "n_train": 300, "n_test": 100},
            "model": {"backbone": {"name": "mlp"}, "head": {"name": "linear"}},
        }
    )
    context = BuildContext()
    data = build_data(plugins, cfg, context)
    model = build_model(plugins, cfg, context)
    samples = torch.rand(40, 2) * 2 - 1
    out = tmp_path / "drawn" / "moons.png"
    drawn = plugins.hook.jemkit_draw_samples(
        path=out, model=model, samples=samples, data=data, context=context, title="moons"
    )
    assert drawn == out and out.stat().st_size > 1000 and out.read_bytes()[:8] == PNG_MAGIC
    images = BuildContext(input_shape=(1, 8, 8), num_classes=10)
    other = tmp_path / "image.png"
    declined = plugins.hook.jemkit_draw_samples(
        path=other, model=model, samples=torch.rand(4, 1, 8, 8), data=data, context=images, title=""
    )
    assert declined is None and not other.exists()


# --------------------------------------------------------------------------- a trained toy model, in MMD


def _mmd_of_trained_model(plugins, tmp_path, recipe: str, overrides: list[str]) -> tuple[float, float, dict]:
    """Train ``recipe``; MMD^2 to fresh data of 1000 uniform-noise starts and of the same starts after
    100 steps, and the run's summary."""
    cfg = load_recipe(RECIPES / f"{recipe}.yaml", overrides)
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    trainer.prepare_run_dir()
    summary = trainer.fit()
    assert (tmp_path / "run" / "samples" / DENSITY_FILE).is_file()
    data, _ = trainer.experiment.data.train.sample(1000, torch.Generator().manual_seed(11))
    sampler = Sampler(UniformNoise((2,)), trainer.sampler.transition, steps=100)
    torch.manual_seed(13)
    noise = UniformNoise((2,)).noise(1000)
    torch.manual_seed(13)  # the sampler starts from the very same noise
    samples = sampler.sample(trainer.model, 1000)
    return mmd2(noise, data), mmd2(samples, data), summary


def test_trained_toy_model_samples_are_closer_to_the_data_than_noise(plugins, tmp_path):
    """toy_8gaussians, shortened to 500 iterations: Langevin from noise ends far closer to the data."""
    noise_mmd, model_mmd, _ = _mmd_of_trained_model(plugins, tmp_path, "toy_8gaussians", ["train.epochs=25"])
    assert noise_mmd > 0.04, noise_mmd  # uniform noise is far from eight tight modes
    assert model_mmd < noise_mmd / 4, (noise_mmd, model_mmd)


@pytest.mark.slow
@pytest.mark.parametrize("data_name", sorted(TOY_RECIPES))
def test_full_toy_recipes_learn_their_density(plugins, tmp_path, data_name):
    """Each shipped toy recipe, trained in full (under a minute), halves the MMD of uniform noise or
    better, and gives every mode its share of exp(-E)'s mass within 32 % (issue 17's aim: 4 points of
    12.5 %; docs/results_toys.md measures seeds 1-5, seed 1's worst gaps are 2-20 %)."""
    noise_mmd, model_mmd, summary = _mmd_of_trained_model(plugins, tmp_path, TOY_RECIPES[data_name], [])
    assert model_mmd < noise_mmd / 2, (noise_mmd, model_mmd)
    masses, truth = summary["density/mode_masses"], summary["density/true_modes"]
    assert max(abs(m / t - 1) for m, t in zip(masses, truth)) <= 0.32, (masses, truth)


@pytest.mark.slow
def test_balanced_eight_gaussians_recipe_gives_every_mode_its_share_of_the_mass(plugins, tmp_path):
    """toy_8gaussians_balanced as shipped (seed 1, about a minute): each of the eight equal modes holds
    12.5 % +- 4 % of the model's normalised exp(-E) (issue 17's aim), as summary.json reports it.
    Measured worst gaps: 1.3-2.9 points over seeds 1-5 (docs/results_toys.md)."""
    trainer = Trainer(plugins, load_recipe(RECIPES / "toy_8gaussians_balanced.yaml", []), tmp_path / "run")
    trainer.prepare_run_dir()
    summary = trainer.fit()
    masses = summary["density/mode_masses"]
    assert len(masses) == 8 and all(abs(m - 0.125) <= 0.04 for m in masses), masses
    assert summary["density/mode_mass_err"] <= 0.04
    assert summary["density/tv"] < 0.7 and summary["samples/mmd2"] < 0.05, summary
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["density/mode_masses"] == masses
