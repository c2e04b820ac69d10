"""Opening a run directory at a checkpoint: ``resolve_checkpoint``, ``open_run``, and a run written
before the trainer was split into rooms (``tests/fixtures/run_before_refactor``) that still
resumes and evaluates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from jemkit.checkpoint import checkpoint_name, load_checkpoint, resolve_checkpoint, save_checkpoint
from jemkit.errors import CheckpointError
from jemkit.run_open import open_run
from jemkit.runlog import read_metrics

from conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "run_before_refactor"

# Tiny models run fastest on one thread and do not fight other jobs for the cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def old_run(tmp_path) -> Path:
    """A private copy of the run directory written by the code before the restructuring."""
    copy = tmp_path / "old_run"
    shutil.copytree(FIXTURE, copy)
    return copy


# --------------------------------------------------------------------------- the old run


def test_run_from_before_the_restructuring_resumes(cli, old_run):
    before = read_metrics(old_run / "metrics.jsonl")
    result = cli("run", "--resume", old_run, "train.max_steps=5")
    assert result.code == 0, result.err
    assert "step 3" in " ".join(result.out.split()), "resumed from the step-3 checkpoint"
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["status"] == "completed"
    records = read_metrics(old_run / "metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5]
    old_losses = [r["train/loss"] for r in before if "train/loss" in r]
    assert [r["train/loss"] for r in records if "train/loss" in r][:3] == old_losses, "records up to 3 kept"
    state = load_checkpoint(old_run / "checkpoints" / checkpoint_name(5)).state
    assert state["progress"]["step"] == 5
    assert not (old_run / "checkpoints" / checkpoint_name(3)).exists(), "pruned: the recipe keeps one"


def test_run_from_before_the_restructuring_evaluates(cli, old_run):
    result = cli("eval", old_run, "--only", "acc")
    assert result.code == 0, result.err
    reports = sorted((old_run / "eval").rglob("report.json"))  # eval/report.json or eval/<time>/report.json
    assert reports, "jemkit eval wrote a report"
    entry = json.loads(reports[0].read_text())["runs"]["old_run"]
    assert entry["checkpoint"]["step"] == 3
    assert entry["checkpoint"]["path"].endswith(checkpoint_name(3))
    # The same weights on the whole digits test split (360 images) as the training run's own
    # evaluation: the accuracy it recorded in summary.json.
    trained = json.loads((FIXTURE / "summary.json").read_text())["test/acc"]
    assert entry["accuracy"]["n"] == 360
    assert entry["accuracy"]["clean"] == pytest.approx(trained, abs=1e-12)


def test_open_run_restores_the_checkpoint_of_the_old_run(plugins, old_run):
    state = load_checkpoint(old_run / "checkpoints" / checkpoint_name(3)).state
    run = open_run(plugins, old_run, device=torch.device("cpu"))
    assert run.step == 3 and run.checkpoint.name == checkpoint_name(3)
    assert run.source == str(old_run / "config.yaml") and run.cfg.name == "jem_digits"
    assert run.data is not None and run.context.num_classes == 10 and run.context.input_shape == (1, 8, 8)
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    assert torch.equal(run.sampler.init.buffer, state["sampler"]["buffer"])
    assert "jemkit.recipe" in run.metadata and "jemkit.versions" in run.metadata

    fresh = open_run(plugins, old_run, 3, torch.device("cpu"), context=run.context, restore_sampler=False)
    assert fresh.data is None and fresh.context.num_classes == 10
    assert not torch.equal(fresh.sampler.init.buffer, state["sampler"]["buffer"]), "a freshly built buffer"
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key


def test_open_run_with_a_checkpoint_of_another_model_is_a_clear_error(plugins, old_run):
    cfg = OmegaConf.load(old_run / "config.yaml")
    cfg.model.backbone.feature_dim = 32
    (old_run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(CheckpointError, match="does not fit this recipe's model or sampler") as error:
        open_run(plugins, old_run, device=torch.device("cpu"))
    assert str(old_run / "config.yaml") in str(error.value)


def test_open_run_errors_name_the_problem(plugins, tmp_path, old_run):
    with pytest.raises(Exception, match="does not exist"):
        open_run(plugins, tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="best.safetensors' does not exist"):
        open_run(plugins, old_run, "best")


# --------------------------------------------------------------------------- resolve_checkpoint


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with step checkpoints 0, 3 and 12 and a best checkpoint."""
    run = tmp_path / "run"
    for step in (0, 3, 12):
        save_checkpoint(run / "checkpoints" / checkpoint_name(step), {"step": step})
    save_checkpoint(run / "checkpoints" / "best.safetensors", {"step": 3})
    return run


def test_resolve_last_best_and_steps(run_dir):
    folder = run_dir / "checkpoints"
    assert resolve_checkpoint(run_dir) == folder / "step_000012.safetensors"
    assert resolve_checkpoint(run_dir, "last") == folder / "step_000012.safetensors"
    assert resolve_checkpoint(run_dir, "best") == folder / "best.safetensors"
    assert resolve_checkpoint(run_dir, 3) == folder / "step_000003.safetensors"
    assert resolve_checkpoint(run_dir, "3") == folder / "step_000003.safetensors"
    assert resolve_checkpoint(run_dir, "000") == folder / "step_000000.safetensors"


def test_resolve_a_path(run_dir, tmp_path, monkeypatch):
    elsewhere = save_checkpoint(tmp_path / "elsewhere" / "my.safetensors", {"step": 1})
    assert resolve_checkpoint(run_dir, elsewhere) == elsewhere
    assert resolve_checkpoint(run_dir, str(elsewhere)) == elsewhere
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint(run_dir, "elsewhere/my.safetensors") == Path("elsewhere/my.safetensors")
    # a bare file name is also looked up in the run's checkpoint folder
    assert resolve_checkpoint(run_dir, "step_000003.safetensors") == run_dir / "checkpoints" / "step_000003.safetensors"


def test_resolve_missing_checkpoints_are_clear_errors(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 5 .* steps available: 0, 3, 12"):
        resolve_checkpoint(run_dir, 5)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(run_dir, tmp_path / "gone.safetensors")
    with pytest.raises(CheckpointError, match="negative"):
        resolve_checkpoint(run_dir, -1)
    (run_dir / "checkpoints" / "best.safetensors").unlink()
    with pytest.raises(CheckpointError, match="best.safetensors' does not exist.*steps available: 0, 3, 12"):
        resolve_checkpoint(run_dir, "best")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="has no checkpoint") as error:
        resolve_checkpoint(empty, "last")
    message = str(error.value)
    assert "\n" not in message and "--checkpoint" in message and "jemkit run" in message
