"""The Python API (``jemkit.train``, ``load_run``, ``load_recipe``, ``list_components``, ``Run``)
and the data record that lets a run open without its data set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

import jemkit
from jemkit.checkpoint import latest_checkpoint, load_checkpoint
from jemkit.data_info import INFO_FILE, METADATA_KEY, DataInfo, read_data_info
from jemkit.errors import DataError, JemkitError, RecipeError, RegistryError
from jemkit.runlog import read_metrics
from jemkit.run_open import open_run

from conftest import RECIPES, ROOT, TINY_DIGITS, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
OLD_RUN = ROOT / "tests" / "fixtures" / "run_before_refactor"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny JEM digits run trained through ``jemkit.train`` (shared by this module's tests)."""
    out = tmp_path_factory.mktemp("api") / "run"
    run = jemkit.train(RECIPES / "jem_digits.yaml", TINY_DIGITS, out=out, quiet=True)
    return run


def _no_data_set(monkeypatch):
    """Make building a data set fail, as on a machine without the data."""

    def missing(*args, **kwargs):
        raise DataError("the data set is not on this machine")

    monkeypatch.setattr("jemkit.run_open.build_data", missing)


# --------------------------------------------------------------------------- import and names


def test_import_jemkit_stays_light_and_exports_the_api():
    code = (
        "import sys, jemkit; assert 'torch' not in sys.modules, 'import jemkit imported torch'; "
        "assert set(jemkit.__all__) >= {'train', 'load_run', 'load_recipe', 'list_components', 'Run'}; "
        "from jemkit.train import Trainer; import jemkit.train as module; "
        "assert callable(jemkit.train) and jemkit.train is module and module.Trainer is Trainer; "
        "from jemkit import train; assert train is module; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --------------------------------------------------------------------------- train and the Run


def test_train_returns_the_run_it_wrote(trained):
    assert isinstance(trained, jemkit.Run)
    assert trained.step == 3 and trained.name == "jem_digits"
    assert isinstance(trained.config, DictConfig) and trained.config.sampler.steps == 2
    summary = json.loads((trained.run_dir / "summary.json").read_text())
    assert trained.summary == summary and summary["steps"] == 3
    assert trained.metrics == read_metrics(trained.run_dir / "metrics.jsonl")
    assert [r["step"] for r in trained.metrics if "train/loss" in r] == [1, 2, 3]
    assert trained.checkpoint == latest_checkpoint(trained.run_dir / "checkpoints")
    assert trained.weights_from is None  # the recipe asks for no weight average


def test_the_run_records_its_inputs_and_classes(trained):
    recorded = json.loads((trained.run_dir / INFO_FILE).read_text())
    metadata = load_checkpoint(trained.checkpoint).metadata
    assert json.loads(metadata[METADATA_KEY]) == recorded
    info = DataInfo.from_json(recorded)
    assert info.name == "digits" and info.input_shape == (1, 8, 8) and info.num_classes == 10
    assert info.class_names == tuple(str(d) for d in range(10))
    assert info.noise_std == trained.config.data.noise_std and info.value_range == (-1.0, 1.0)
    assert trained.data_info == info and trained.class_names == list(info.class_names)
    assert trained.input_shape == (1, 8, 8) and trained.num_classes == 10


def test_model_calls_agree_with_the_network(trained):
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # > one chunk
    module = trained.model.module
    with torch.no_grad():
        logits = module(x)
    assert torch.allclose(trained.model.classify(x), logits, atol=1e-5)
    assert torch.allclose(trained.model.energy(x), -torch.logsumexp(logits, 1), atol=1e-5)
    assert torch.allclose(trained.model.log_px(x), torch.logsumexp(logits, 1), atol=1e-5)
    y = torch.arange(300) % 10
    assert torch.allclose(trained.model.energy(x, y), -logits[torch.arange(300), y], atol=1e-5)
    assert torch.allclose(trained.model.energy(x, 4), -logits[:, 4], atol=1e-5)
    assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_load_run_needs_no_data_set_and_matches_open_run(trained, plugins, monkeypatch):
    reference = open_run(plugins, trained.run_dir, device=torch.device("cpu"))  # builds the data set
    assert reference.data is not None
    _no_data_set(monkeypatch)
    run = jemkit.load_run(trained.run_dir, device="cpu")
    assert run._opened.data is None and run.step == 3
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(run.model.classify(x), reference.model(x))
    assert torch.equal(run.sampler.state_dict()["buffer"], reference.sampler.state_dict()["buffer"])
    with pytest.raises(DataError):  # the data set really is missing: opening with data fails
        open_run(plugins, trained.run_dir, device=torch.device("cpu"))


def test_load_run_other_checkpoints_and_errors(trained, tmp_path):
    first = jemkit.load_run(trained.run_dir, checkpoint=0, device="cpu")
    assert first.step == 0
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    assert not torch.equal(first.model.classify(x), trained.model.classify(x))
    by_path = jemkit.load_run(trained.run_dir, checkpoint=trained.checkpoint, device=torch.device("cpu"))
    assert by_path.step == 3
    with pytest.raises(JemkitError, match="does not exist"):
        jemkit.load_run(tmp_path / "nowhere")


def test_a_run_without_the_record_builds_its_data_set(plugins, tmp_path):
    run = jemkit.load_run(OLD_RUN, device="cpu")  # written before the record existed
    assert read_data_info(OLD_RUN) is None
    assert run._opened.data is not None and run.num_classes == 10 and run.class_names == [str(d) for d in range(10)]


def test_sample(trained):
    buffer = trained.sampler.state_dict()["buffer"].clone()
    x = trained.sample(6, y=3, steps=2, seed=0)
    assert x.shape == (6, 1, 8, 8) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(trained.sample(6, y=3, steps=2, seed=0), x)  # seeded: reproducible
    assert not torch.equal(trained.sample(6, y=3, steps=2, seed=1), x)
    labels = trained.sample(4, y=[0, 1, 2, 3], steps=1, seed=0, init="noise")
    assert labels.shape == (4, 1, 8, 8)
    noise_start = trained.sample(4, steps=0, init="noise", seed=5)  # no steps: the chains' start
    assert noise_start.min() >= -1 and noise_start.max() <= 1
    assert torch.equal(trained.sampler.state_dict()["buffer"], buffer)  # sampling leaves the buffer alone
    state = torch.random.get_rng_state()
    trained.sample(2, steps=1, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for bad, message in (
        (dict(n=0), "positive number"),
        (dict(n=2, init="replay"), "init must be one of"),
        (dict(n=2, y=10), r"\[0, 9\]"),
        (dict(n=2, y=[1, 2, 3]), "3 class labels for 2"),
        (dict(n=2, steps=-1), "non-negative"),
        (dict(n=2, y=1.5), "integers"),
    ):
        with pytest.raises(JemkitError, match=message):
            trained.sample(**bad)


def test_train_resumes_an_existing_run(trained, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(trained.run_dir, out)
    resumed = jemkit.train(None, ["train.max_steps=5"], out=out, resume=True, quiet=True)
    assert resumed.step == 5 and resumed.summary["steps"] == 5
    assert [r["step"] for r in resumed.metrics if "train/loss" in r] == [1, 2, 3, 4, 5]
    with pytest.raises(RecipeError, match="needs out=RUN_DIR"):
        jemkit.train(RECIPES / "jem_digits.yaml", resume=True)
    with pytest.raises(RecipeError, match="holds no checkpoint"):
        jemkit.train(None, out=tmp_path / "empty", resume=True)
    with pytest.raises(RecipeError, match="already holds files"):
        jemkit.train(RECIPES / "jem_digits.yaml", TINY_DIGITS, out=out, quiet=True)


def test_train_takes_a_dict_recipe(tmp_path):
    recipe = OmegaConf.to_container(jemkit.load_recipe(RECIPES / "jem_digits.yaml"), resolve=True)
    del recipe["name"]
    run = jemkit.train(recipe, TINY_DIGITS, out=tmp_path / "dict", quiet=True)
    assert run.name == "recipe" and run.step == 3
    assert run.config.model.backbone.channels == [8, 16]
    assert (run.run_dir / "config.yaml").is_file() and run.summary["status"] == "completed"


# --------------------------------------------------------------------------- recipes and components


def test_load_recipe_from_a_path_a_dict_and_a_dictconfig():
    from_file = jemkit.load_recipe(RECIPES / "jem_digits.yaml", ["train.epochs=2"])
    assert from_file.name == "jem_digits" and from_file.train.epochs == 2
    as_dict = OmegaConf.to_container(from_file, resolve=True)
    assert jemkit.load_recipe(as_dict, ["sampler.steps=3"]).sampler.steps == 3
    before = OmegaConf.to_yaml(from_file)
    changed = jemkit.load_recipe(from_file, ["optimizer.lr=0.5"])
    assert changed.optimizer.lr == 0.5 and OmegaConf.to_yaml(from_file) == before  # the input is not modified
    with pytest.raises(RecipeError, match="does not exist"):
        jemkit.load_recipe(RECIPES / "nope.yaml")
    with pytest.raises(RecipeError, match="missing required section"):
        jemkit.load_recipe({"name": "x"})
    with pytest.raises(RecipeError, match="YAML file path, a dict"):
        jemkit.load_recipe(42)
    with pytest.raises(RecipeError, match="list of key=value"):
        jemkit.load_recipe(RECIPES / "jem_digits.yaml", "train.epochs=2")


def test_list_components(plugins):
    every = jemkit.list_components()
    assert {row["kind"] for row in every} >= {"backbone", "transition", "data", "importer"}
    transitions = jemkit.list_components("transition")
    assert {row["kind"] for row in transitions} == {"transition"}
    assert {"sgld", "mala"} <= {row["name"] for row in transitions}
    assert set(transitions[0]) == {"plugin", "origin", "kind", "name", "description"}
    assert len(every) == len(plugins.registries.components())
    with pytest.raises(RegistryError, match="Did you mean 'transition'"):
        jemkit.list_components("transitoin")


# --------------------------------------------------------------------------- jemkit sample and the example


def test_jemkit_sample_needs_no_data_set(trained, tmp_path, monkeypatch):
    _no_data_set(monkeypatch)
    result = run_cli("sample", trained.run_dir, "--class", "2", "--n", "4", "--steps", "1", "--out", tmp_path / "s.png")
    assert result.code == 0, result.err
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_the_python_api_example_runs(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), str(tmp_path / "example")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in ("trained jem_digits for 250 steps", "accuracy on 200 digits", "AUROC", "classified as the class"):
        assert line in out, out
    summary = json.loads((tmp_path / "example" / "summary.json").read_text())
    assert f"test/acc {summary['test/acc']:.3f}" in out
    assert (tmp_path / "example" / "python_api_samples.png").is_file()
    assert any((tmp_path / "example" / "tensorboard").iterdir())


def test_a_sampler_that_needs_the_training_data_gets_it(trained, monkeypatch):
    """JEM++'s informative initialiser fits on the training data: such a run opens with its data set."""
    import jemkit.run_open as run_open

    real = run_open.build_sampler

    def needs_data(plugins, cfg, context, source="recipe"):
        if context.train_data is None:
            raise RecipeError("informative initialisation fits class Gaussians on the training data")
        return real(plugins, cfg, context, source)

    monkeypatch.setattr(run_open, "build_sampler", needs_data)
    run = jemkit.load_run(trained.run_dir, device="cpu")
    assert run._opened.data is not None and run.step == 3
    assert run.sample(2, y=1, steps=1, seed=0).shape == (2, 1, 8, 8)
