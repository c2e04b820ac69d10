"""End-to-end runs through the CLI and the Trainer: run directory, checkpoints, resume, errors."""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch

from jemkit import hookimpl
from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.config import load_recipe
from jemkit.plugin_manager import load_plugins
from jemkit.runlog import read_metrics
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS
from fakedata import write_fake_cifar10


def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).state


def test_tiny_digits_run_writes_the_run_directory(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS)
    assert result.code == 0, result.err
    assert (out / "config.yaml").read_text().count("name: jem_digits") == 1
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("epoch", "train/acc", "train/energy_data", "train/energy_samples", "train/energy_gap", "lr"):
        assert key in train[0], key
    assert any("test/acc" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "completed"
    assert 0.0 <= summary["test/acc"] <= 1.0 and summary["wall_seconds"] > 0
    # one step per record here: the three rates together cannot exceed steps per training second
    rates = [r["time/it_per_s"] for r in train]
    assert all(rate > 0 for rate in rates)
    assert sum(1 / rate for rate in rates) <= summary["wall_seconds"]
    png = out / "samples" / "final.png"
    assert png.stat().st_size > 100 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = _final_state(out)
    assert state["progress"]["step"] == 3
    assert state["sampler"]["buffer"].shape == (200, 1, 8, 8)


def test_checkpoint_round_trip_restores_identical_weights_and_buffer(plugins, tmp_path):
    cfg = load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS)
    first = Trainer(plugins, cfg, tmp_path / "a")
    first.prepare_run_dir()
    first.fit()
    path = first.save()
    second = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, "seed=99"]), tmp_path / "b")
    assert not torch.equal(second.sampler.init.buffer, first.sampler.init.buffer)
    second.restore(path)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(first.sampler.init.buffer, second.sampler.init.buffer)
    assert second.step == first.step == 3
    opt_a, opt_b = first.experiment.optimizer.state_dict(), second.experiment.optimizer.state_dict()
    assert torch.equal(opt_a["state"][0]["exp_avg"], opt_b["state"][0]["exp_avg"])
    assert second.experiment.schedule.last_epoch == first.experiment.schedule.last_epoch


def test_resumed_run_matches_uninterrupted_run(cli, tmp_path):
    common = [*TINY_DIGITS[:-4], "train.log_every=1", "train.sample_extra_steps=0", "train.batch_size=16"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", full, *common, "train.max_steps=6").code == 0
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", part, *common, "train.max_steps=3").code == 0
    resumed = cli("run", "--resume", part, "train.max_steps=6")
    assert resumed.code == 0, resumed.err
    a, b = _final_state(full), _final_state(part)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["sampler"]["buffer"], b["sampler"]["buffer"])
    losses = lambda d: [r["train/loss"] for r in read_metrics(d / "metrics.jsonl") if "train/loss" in r]  # noqa: E731
    assert losses(full) == losses(part)
    assert json.loads((full / "summary.json").read_text())["test/acc"] == json.loads(
        (part / "summary.json").read_text()
    )["test/acc"]


def test_resume_errors_are_clear(cli, tmp_path):
    missing = cli("run", "--resume", tmp_path / "nothing")
    assert missing.code == 2 and "does not exist" in missing.err and "Traceback" not in missing.err
    run = tmp_path / "run"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", run, *TINY_DIGITS).code == 0
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    (run / "checkpoints" / "best.safetensors").unlink()
    corrupt = cli("run", "--resume", run)
    assert corrupt.code == 2 and str(checkpoint) in corrupt.err.replace("\n", "") and "Traceback" not in corrupt.err
    for path in list_checkpoints(run / "checkpoints"):
        path.unlink()
    empty = cli("run", "--resume", run)
    assert empty.code == 2 and "no checkpoint" in empty.err


def test_checkpoint_of_another_shape_is_a_clear_error(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", run, *TINY_DIGITS).code == 0
    wider = cli("run", "--resume", run, "model.backbone.feature_dim=32")
    assert wider.code == 2
    assert "does not fit this recipe" in wider.err and "Traceback" not in wider.err


def test_lifecycle_hooks_see_every_step(tmp_path):
    seen: dict[str, list] = {"start": [], "steps": [], "end": []}
    recorder = types.SimpleNamespace()

    @hookimpl
    def jemkit_run_start(run):
        seen["start"].append(run.step)

    @hookimpl
    def jemkit_step_end(run, step, metrics):
        seen["steps"].append((step, metrics["train/loss"]))

    @hookimpl
    def jemkit_run_end(run, summary):
        seen["end"].append(summary["steps"])

    recorder.jemkit_run_start = jemkit_run_start
    recorder.jemkit_step_end = jemkit_step_end
    recorder.jemkit_run_end = jemkit_run_end
    plugins = load_plugins([("recorder", recorder)], entry_points=False)
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS), tmp_path / "run")
    trainer.prepare_run_dir()
    trainer.fit()
    assert seen["start"] == [0] and seen["end"] == [3]
    assert [s for s, _ in seen["steps"]] == [1, 2, 3]
    assert all(isinstance(loss, float) for _, loss in seen["steps"])


def test_baseline_recipe_runs_without_sampling_in_training(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", RECIPES / "baseline_digits.yaml", "--out", out, "train.max_steps=5", "train.log_every=1")
    assert result.code == 0, result.err
    train = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert train and not any("train/energy_samples" in r or "sampler/grad_norm" in r for r in train)


CIFAR_TINY = [
    "model.backbone.depth=10",
    "model.backbone.widen_factor=1",
    "sampler.steps=2",
    "sampler.init.size=64",
    "data.val_size=0",
    "data.download=false",
    "train.batch_size=8",
    "train.max_steps=2",
    "train.samples_per_class=1",
]


def test_cifar10_recipe_runs_on_tiny_real_format_data(cli, tmp_path):
    root = tmp_path / "data"
    write_fake_cifar10(root, n_per_batch=8)
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_cifar10.yaml", "--out", out, f"data.root={root}", *CIFAR_TINY)
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    state = _final_state(out)
    assert state["sampler"]["buffer"].shape == (64, 3, 32, 32)
    assert (out / "samples" / "final.png").exists()


def test_cifar10_recipe_offline_without_data_is_a_clear_error(cli, tmp_path):
    result = cli("run", RECIPES / "jem_cifar10.yaml", "--out", tmp_path / "run", f"data.root={tmp_path / 'empty'}")
    assert result.code == 2
    message = result.err
    assert "CIFAR-10" in message and str(tmp_path / "empty") in message
    assert "cifar-10-batches-py" in message and "data.root" in message
    assert "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


def test_full_digits_recipe_reaches_accuracy_floor(cli, tmp_path):
    """The quick start itself: JEM on digits reaches test/acc >= 0.97 (a few minutes on 2 cores)."""
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", out)
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test/acc"] >= 0.97, summary
    assert (out / "samples" / "final.png").exists()
    records = read_metrics(out / "metrics.jsonl")
    last = [r for r in records if "train/energy_samples" in r][-1]
    assert abs(last["train/energy_gap"]) < 5.0, "data and sample energies stay close in a healthy run"
