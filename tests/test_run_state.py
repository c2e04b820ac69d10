"""The rooms around the training loop: checkpoint progress (run_state), RNGs (rng), the metric
averager and clock (runlog), and a Trainer whose every attribute exists from ``__init__``."""

from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from jemkit import hookimpl
from jemkit.config import load_recipe
from jemkit.contracts import Loss, LossOutput
from jemkit.distributed import DistInfo
from jemkit.errors import CheckpointError, RecipeError
from jemkit.plugin_manager import load_plugins
from jemkit.rng import preserved_rng, recipe_seed, rng_state, seed_everything, set_rng_state
from jemkit.run_state import Progress
from jemkit.runlog import MetricAverager, Stopwatch, metric_name, read_metrics, status_text
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS

pytestmark = pytest.mark.usefixtures("one_thread")

#: A tiny plain classifier on digits (no sampling while training).
TINY_BASELINE = [
    "model.backbone.channels=[8,16]",
    "model.backbone.feature_dim=16",
    "train.max_steps=3",
    "train.batch_size=16",
    "train.log_every=1",
    "train.samples_per_class=1",
    "sampler.steps=1",
    "performance.autocast=none",  # fixed, so that both runs compute in the same precision
    "performance.channels_last=false",
]


# --------------------------------------------------------------------------- progress


def test_progress_record_round_trip_adds_this_process_wall_time():
    progress = Progress(step=7, epoch=1, batch_in_epoch=2, previous_wall=10.0, best_metric=0.5, lr_scale=0.25,
                        rollback_events=[{"step": 5, "reason": "test"}])
    record = progress.record(elapsed=2.5, world_size=2)
    assert record["wall_seconds"] == 12.5 and record["world_size"] == 2
    again = Progress.from_record(record)
    assert again == Progress(7, 1, 2, 12.5, 0.5, 0.25, [{"step": 5, "reason": "test"}])


def test_progress_of_a_checkpoint_without_guard_fields():
    record = {"step": 3, "epoch": 0, "batch_in_epoch": 3, "wall_seconds": 1.0, "best_metric": None}
    progress = Progress.from_record(record)
    assert progress.lr_scale == 1.0 and progress.rollback_events == [] and progress.step == 3


# --------------------------------------------------------------------------- rng


def test_preserved_rng_leaves_every_stream_as_it_was():
    seed_everything(5)
    state = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_state(state)
    with preserved_rng(seed=123):
        inside = float(torch.rand(()))
        random.random()
        np.random.rand()
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    with preserved_rng(seed=123):
        assert float(torch.rand(())) == inside, "a seeded block draws the same numbers every time"


def test_recipe_seed_default_and_validation():
    assert recipe_seed(OmegaConf.create({"name": "x"})) == 1
    assert recipe_seed(OmegaConf.create({"seed": 42})) == 42
    with pytest.raises(RecipeError, match="'seed' must be an integer"):
        recipe_seed(OmegaConf.create({"seed": "one"}), "r.yaml")
    with pytest.raises(RecipeError):
        recipe_seed(OmegaConf.create({"seed": True}))


# --------------------------------------------------------------------------- runlog


def test_metric_averager_takes_floats_and_tensors():
    averager = MetricAverager(DistInfo(), torch.device("cpu"))
    assert averager.flush() == {}
    averager.add({"loss": 1.0, "acc": torch.tensor(0.5), "energy_data": -2.0, "energy_samples": torch.tensor(1.0)})
    averager.add({"loss": 3.0, "acc": torch.tensor(1.0), "energy_data": -4.0, "energy_samples": torch.tensor(3.0),
                  "sampler/grad_norm": 0.25})
    record = averager.flush()
    assert record["train/loss"] == 2.0 and record["train/acc"] == 0.75
    assert record["train/energy_gap"] == pytest.approx(2.0 - (-3.0))
    assert record["sampler/grad_norm"] == 0.125, "summed over two steps, seen in one"
    assert averager.flush() == {}, "a flush starts a new window"
    averager.add({"loss": 9.0})
    averager.reset()
    assert averager.flush() == {}


def test_metric_names_and_status_text():
    assert metric_name("loss") == "train/loss" and metric_name("sampler/grad_norm") == "sampler/grad_norm"
    text = status_text({"train/loss": 1.23456, "train/acc": 0.5, "train/energy_gap": -0.25}, {"test/acc": 0.9, "test/loss": 1.0})
    assert text == "loss 1.235  acc 0.500  E gap -0.250  test/acc 0.9000"


def test_stopwatch_reads_zero_before_it_starts():
    clock = Stopwatch()
    assert clock.elapsed() == 0.0
    clock.start(step=4)
    assert clock.elapsed() >= 0.0
    assert clock.rate(step=4) == 0.0 and clock.rate(step=6) > 0.0


# --------------------------------------------------------------------------- the trainer


class FloatMetricsLoss(Loss):
    """Cross-entropy whose metrics are plain floats, as ``LossOutput.metrics`` documents."""

    needs_sampler = False

    def __call__(self, model, batch, sampler) -> LossOutput:
        logits = model(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        acc = (logits.argmax(1) == batch.y).float().mean()
        return LossOutput(loss=ce, metrics={"loss": float(ce.detach()), "acc": float(acc)})


def _float_loss_plugin():
    plugin = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_losses(registry):
        registry.register("float_ce", lambda params, context: FloatMetricsLoss(), description="CE, float metrics")

    plugin.jemkit_register_losses = jemkit_register_losses
    return plugin


def test_a_loss_with_float_metrics_trains_and_logs_what_tensors_would(tmp_path):
    plugins = load_plugins([("float_metrics", _float_loss_plugin())], entry_points=False)
    losses = {}
    for name in ("cross_entropy", "float_ce"):
        cfg = load_recipe(RECIPES / "baseline_digits.yaml", [*TINY_BASELINE, f"loss.name={name}"])
        trainer = Trainer(plugins, cfg, tmp_path / name)
        trainer.prepare_run_dir()
        assert trainer.fit()["steps"] == 3
        records = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if "train/loss" in r]
        losses[name] = [(r["train/loss"], r["train/acc"]) for r in records]
    assert len(losses["float_ce"]) == 3
    assert losses["float_ce"] == losses["cross_entropy"], "the same numbers as 0-dim tensor metrics"


def test_every_trainer_attribute_is_set_in_init(plugins, tmp_path):
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS), tmp_path / "run")
    before = set(vars(trainer))
    trainer.prepare_run_dir()
    trainer.fit()
    assert set(vars(trainer)) == before
    assert trainer.step == trainer.progress.step == 3


def test_resume_without_checkpoints_is_a_clear_error(plugins, tmp_path):
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS), tmp_path / "run")
    with pytest.raises(CheckpointError, match="has no checkpoint to resume from"):
        trainer.resume_from_latest()
