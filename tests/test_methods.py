"""The method zoo: sampler listing, SAM, un-augmented p(x) inputs, and the JEM++ / SADA-JEM / JEM variant recipes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from jemkit.build import build_experiment
from jemkit.config import load_recipe
from jemkit.contracts import BuildContext
from jemkit.runlog import read_metrics
from jemkit.train import Trainer
from jemkit_plugins.data.data_torchvision import ImageDataParams, build_cifar10
from jemkit_plugins.samplers.informative import CACHE_FILE
from jemkit_plugins.samplers.jempp import PYLD
from jemkit_plugins.samplers.mcmc import HMC, MALA
from jemkit_plugins.training.sam import SAM, SAMParams, build_sam
from jemkit_plugins.samplers.sampling import SGLD

from conftest import RECIPES, TINY_DIGITS
from fakedata import write_fake_cifar10

SAMPLERS = ("sgld", "langevin", "proximal_sgld", "mala", "hmc", "pyld")


def test_list_plugins_shows_every_sampler_with_a_description(cli):
    result = cli("list-plugins", "--json")
    assert result.code == 0, result.err
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.out)}
    expected = [("transition", name) for name in SAMPLERS] + [
        ("chain_init", "uniform"),
        ("chain_init", "replay_buffer"),
        ("chain_init", "informative"),
        ("chain_init", "informative_buffer"),
        ("optimizer", "sam"),
        ("data", "two_moons"),
        ("data", "rings"),
        ("data", "eight_gaussians"),
        ("data", "checkerboard"),
    ]
    for key in expected:
        assert key in rows, key
        description = rows[key]["description"]
        assert description.strip() and "\n" not in description, (key, description)
        assert rows[key]["origin"] == "built-in"


# --------------------------------------------------------------------------- SAM


def _quadratic_loss(w: nn.Parameter) -> torch.Tensor:
    return (torch.tensor([1.0, 4.0]) * w.pow(2)).sum()  # gradient [2 w0, 8 w1]


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_matches_hand_computation(adaptive):
    w = nn.Parameter(torch.tensor([1.0, -0.5]))
    rho, lr = 0.1, 0.05
    optimizer = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr, momentum=0.0)
    assert optimizer.requires_closure
    optimizer.zero_grad()
    _quadratic_loss(w).backward()

    def closure():
        optimizer.zero_grad()
        loss = _quadratic_loss(w)
        loss.backward()
        return loss.detach()

    w0 = w.detach().clone()
    g = torch.tensor([2.0, 8.0]) * w0
    t = w0.abs() if adaptive else torch.ones(2)
    e = rho * t.pow(2) * g / (t * g).norm()
    g_perturbed = torch.tensor([2.0, 8.0]) * (w0 + e)
    optimizer.step(closure)
    assert torch.allclose(w.detach(), w0 - lr * g_perturbed, atol=1e-6)


def test_sam_without_closure_is_its_base_optimiser():
    a, b = nn.Parameter(torch.tensor([1.0, -0.5])), nn.Parameter(torch.tensor([1.0, -0.5]))
    sam = SAM([a], torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD([b], lr=0.1, momentum=0.9)
    for _ in range(3):
        for opt, w in ((sam, a), (sgd, b)):
            opt.zero_grad()
            _quadratic_loss(w).backward()
            opt.step()
    assert torch.equal(a, b)


def test_sam_state_round_trip_and_schedule_drive_the_base():
    w = nn.Parameter(torch.tensor([1.0, -0.5]))
    params = SAMParams(rho=2.0, adaptive=True, base="sgd", lr=0.1, momentum=0.9, weight_decay=4e-4)
    optimizer = build_sam(params, BuildContext(), [w])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    optimizer.zero_grad()
    _quadratic_loss(w).backward()
    optimizer.step(lambda: _quadratic_loss(w))
    schedule.step()
    assert optimizer.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    state = optimizer.state_dict()
    assert "momentum_buffer" in state["state"][0] and state["param_groups"][0]["rho"] == 2.0

    clone_w = nn.Parameter(w.detach().clone())
    clone = build_sam(params, BuildContext(), [clone_w])
    clone.load_state_dict(state)
    assert clone.param_groups is clone.base_optimizer.param_groups
    momentum = optimizer.base_optimizer.state[w]["momentum_buffer"]
    assert torch.equal(clone.base_optimizer.state[clone_w]["momentum_buffer"], momentum)
    assert clone.param_groups[0]["lr"] == pytest.approx(0.05)


def test_sam_with_adam_base_and_bad_params():
    w = nn.Parameter(torch.tensor([1.0, -0.5]))
    optimizer = build_sam(SAMParams(base="adam", lr=1e-2), BuildContext(), [w])
    assert isinstance(optimizer.base_optimizer, torch.optim.Adam)
    for bad in (dict(base="rmsprop"), dict(rho=-1.0), dict(lr=0.0)):
        with pytest.raises(ValueError):
            SAMParams(**bad)


# --------------------------------------------------------------------------- un-augmented p(x) inputs


def test_px_unaugmented_yields_augmented_label_and_plain_triples(tmp_path):
    write_fake_cifar10(tmp_path)
    params = ImageDataParams(root=str(tmp_path), download=False, noise_std=0.0, augment=True, px_unaugmented=True)
    splits = build_cifar10(params, BuildContext())
    x_aug, y, x_plain = splits.train[3]
    plain_x, plain_y = splits.train_plain[3]
    assert torch.equal(x_plain, plain_x) and int(y) == int(plain_y)
    assert torch.equal(splits.train.targets, splits.train_plain.targets)
    reads = [splits.train[3][0] for _ in range(20)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:]), "the classifier input is still augmented"
    assert len(splits.test[0]) == 2, "only the training split carries plain inputs"
    with pytest.raises(ValueError):
        ImageDataParams(px_unaugmented="yes")


CIFAR_TINY = [
    "model.backbone.depth=10",
    "model.backbone.widen_factor=1",
    "sampler.steps=2",
    "sampler.init.size=20",
    "sampler.init.on_device=false",
    "data.download=false",
    "train.batch_size=8",
    "train.max_steps=2",
    "train.samples_per_class=1",
]


def test_sadajem_cifar10_recipe_runs_on_tiny_real_format_data(cli, tmp_path):
    """SAM, un-augmented p(x) inputs and informative init over 3072-d inputs, end to end."""
    root = tmp_path / "data"
    write_fake_cifar10(root, n_per_batch=10)  # every class present: one Gaussian per class
    out = tmp_path / "run"
    result = cli("run", RECIPES / "sadajem_cifar10.yaml", "--out", out, f"data.root={root}", *CIFAR_TINY)
    assert result.code == 0, result.err
    assert (out / CACHE_FILE).is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------- digits recipes, tiny


# conftest's tiny digits run, without the replay-buffer size: these recipes start chains elsewhere
TINY = [item for item in TINY_DIGITS if not item.startswith("sampler.init.")]


@pytest.mark.parametrize(
    "recipe", ["jempp_digits", "sadajem_digits", "jem_shortrun_digits", "jem_energy_l2_digits"]
)
def test_method_recipe_runs_tiny(cli, tmp_path, recipe):
    out = tmp_path / "run"
    extra = [] if recipe == "jem_shortrun_digits" else ["sampler.init.size=200"]
    result = cli("run", RECIPES / f"{recipe}.yaml", "--out", out, *TINY, *extra)
    assert result.code == 0, result.err
    train = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert len(train) == 3 and all("sampler/grad_norm" in r for r in train)
    assert (out / "samples" / "final.png").is_file()


def test_jempp_run_caches_the_informative_fit_and_resume_reuses_it(plugins, tmp_path):
    cfg = load_recipe(RECIPES / "jempp_digits.yaml", [*TINY, "sampler.init.size=200"])
    first = Trainer(plugins, cfg, tmp_path / "run")
    assert not first.sampler.init.gaussians.loaded_from_cache
    first.prepare_run_dir()
    first.fit()
    assert (tmp_path / "run" / CACHE_FILE).is_file()
    resumed = Trainer(plugins, cfg, tmp_path / "run")
    assert resumed.sampler.init.gaussians.loaded_from_cache
    resumed.resume_from_latest()
    assert torch.equal(resumed.sampler.init.buffer, first.sampler.init.buffer)


def test_a_jempp_recipe_that_fails_to_build_writes_nothing(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jempp_digits.yaml", "--out", out, *TINY, "optimizer.lr=-1")
    assert result.code == 2 and "optimizer" in result.err and "Traceback" not in result.err
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "cls"), [("pyld", PYLD), ("mala", MALA), ("hmc", HMC), ("langevin", SGLD), ("sgld", SGLD)]
)
def test_swapping_the_transition_is_one_recipe_line(plugins, tmp_path, name, cls):
    text = (RECIPES / "jempp_digits.yaml").read_text()
    line = next(line for line in text.splitlines() if line.strip().startswith("transition:"))
    recipe = tmp_path / "swapped.yaml"
    recipe.write_text(text.replace(line, f"  transition: {{name: {name}}}"))
    experiment = build_experiment(plugins, load_recipe(recipe, [*TINY, "sampler.init.size=200"]))
    assert type(experiment.sampler.transition) is cls
    x = experiment.sampler.sample(experiment.model, 4)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    assert experiment.sampler.last_diagnostics["grad_norm"] > 0


def test_sadajem_digits_uses_sam_over_the_recorded_negatives(plugins, tmp_path):
    cfg = load_recipe(RECIPES / "sadajem_digits.yaml", [*TINY, "sampler.init.size=200"])
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    assert isinstance(trainer.experiment.optimizer, SAM)
    calls = {"n": 0}
    sample = trainer.sampler.sample

    def counting(*args, **kwargs):
        calls["n"] += 1
        return sample(*args, **kwargs)

    trainer.sampler.sample = counting
    batch = next(iter(trainer._batches(0)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(batch)
    assert calls["n"] == 1, "the SAM closure reuses the negatives drawn for the first evaluation"
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


# --------------------------------------------------------------------------- full runs (slow)


# one_thread (conftest): on a busy 2-core machine two spinning OpenMP threads can slow a step 40x.


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["jempp_digits", "sadajem_digits"])
def test_method_digits_recipe_reaches_accuracy_floor(cli, tmp_path, recipe, one_thread):
    """JEM++ and SADA-JEM on digits reach test/acc >= 0.95 within 10 minutes on 2 CPU cores (about 1-2 minutes idle)."""
    out = tmp_path / "run"
    result = cli("run", RECIPES / f"{recipe}.yaml", "--out", out)
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test/acc"] >= 0.95, summary
    assert summary["wall_seconds"] < 600, summary
    assert (out / "samples" / "final.png").is_file()
