"""What lifecycle and logger hooks receive: a RunView (never the trainer), the documented arguments
at the documented moments, and metrics as plain floats along the whole loop."""

from __future__ import annotations

import math
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf.errors import ReadonlyConfigError

from jemkit import hookimpl
from jemkit.config import load_recipe
from jemkit.contracts import (
    HISTOGRAM_ENERGY_DATA,
    HISTOGRAM_ENERGY_SAMPLES,
    BuildContext,
    DataSplits,
    JointEnergyModel,
    Loss,
    LossOutput,
    RunView,
    Sampler,
)
from jemkit.plugin_manager import load_plugins
from jemkit.runlog import read_metrics
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS

pytestmark = pytest.mark.usefixtures("one_thread")

FIXED_PRECISION = ["performance.autocast=none", "performance.channels_last=false"]


class Recorder:
    """A plugin that records every lifecycle and logger hook call, and logs and writes a little."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.views: list[RunView] = []
        self.step_metrics: dict[int, dict[str, float]] = {}
        self.records: list[dict] = []
        self.histograms: list[tuple[int, str, torch.Tensor]] = []
        self.images: list[tuple[int, str, Path]] = []
        self.summary: dict | None = None
        self.written: Path | None = None

    @hookimpl
    def jemkit_run_start(self, run):
        self.calls.append(("start", run.step))
        self.views.append(run)

    @hookimpl
    def jemkit_step_end(self, run, step, metrics):
        self.calls.append(("step", step))
        self.views.append(run)
        self.step_metrics[step] = {key: metrics[key] for key in metrics}
        run.log({"recorder/half_step": step / 2, "recorder/tensor": torch.tensor(float(step) ** 2)})

    @hookimpl
    def jemkit_run_end(self, run, summary):
        self.calls.append(("end", run.step))
        self.summary = dict(summary)
        self.written = run.write_file("notes/summary.txt", f"steps={summary['steps']}")
        run.log({"recorder/at_end": 7.0})

    @hookimpl
    def jemkit_log_record(self, run, record):
        self.records.append(dict(record))

    @hookimpl
    def jemkit_log_histogram(self, run, step, name, values):
        self.histograms.append((step, name, values))

    @hookimpl
    def jemkit_log_image(self, run, step, name, path):
        self.images.append((step, name, path))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    recorder = Recorder()
    plugins = load_plugins([("recorder", recorder)], entry_points=False)
    run_dir = tmp_path_factory.mktemp("view") / "run"
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, *FIXED_PRECISION]), run_dir)
    trainer.prepare_run_dir()
    summary = trainer.fit()
    return recorder, trainer, summary, run_dir


def test_hooks_receive_a_run_view_not_the_trainer(recorded):
    recorder, trainer, _, run_dir = recorded
    view = recorder.views[0]
    assert all(v is view for v in recorder.views), "one view per plugin, kept for the whole run"
    assert isinstance(view, RunView) and not isinstance(view, Trainer)
    assert view.plugin == "recorder"
    assert view.run_dir == run_dir and view.step == 3 and view.epoch == trainer.epoch
    assert isinstance(view.model, JointEnergyModel) and view.model is trainer.model
    assert isinstance(view.optimizer, torch.optim.Optimizer) and isinstance(view.sampler, Sampler)
    assert isinstance(view.data, DataSplits) and isinstance(view.context, BuildContext)
    assert view.device == torch.device("cpu") and view.is_main is True
    assert view.config.train.max_steps == 3 and view.config.name == "jem_digits"
    with pytest.raises(ReadonlyConfigError):
        view.config.train.max_steps = 99
    assert trainer.cfg.train.max_steps == 3
    with pytest.raises(AttributeError, match="RunView has no attribute 'progress'"):
        view.progress  # noqa: B018


def test_old_trainer_attributes_still_answer_with_a_deprecation_warning(recorded):
    view = recorded[0].views[0]
    with pytest.warns(DeprecationWarning, match="run.experiment reaches into the trainer"):
        assert view.experiment.optimizer is view.optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert view.optimizer is not None, "the documented surface does not warn"


def test_lifecycle_hooks_are_called_in_order_with_the_step(recorded):
    recorder, _, summary, _ = recorded
    assert recorder.calls == [("start", 0), ("step", 1), ("step", 2), ("step", 3), ("end", 3)]
    assert recorder.summary == summary and recorder.summary["steps"] == 3


def test_step_end_metrics_are_plain_floats_equal_to_the_logged_ones(recorded):
    recorder, _, _, run_dir = recorded
    logged = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r}
    for step, metrics in recorder.step_metrics.items():
        assert {"train/loss", "train/acc", "train/energy_data", "train/energy_samples", "sampler/grad_norm"} <= set(metrics)
        assert all(type(value) is float for value in metrics.values()), metrics
        for key in ("train/loss", "train/acc", "train/energy_data", "sampler/grad_norm"):
            assert metrics[key] == logged[step][key], (step, key)  # log_every=1: the record is that step's value


def test_log_record_sees_every_record_as_written(recorded):
    recorder, _, _, run_dir = recorded
    assert recorder.records == read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in recorder.records if "train/loss" in r] == [1, 2, 3]
    assert any("test/acc" in r for r in recorder.records)


def test_run_log_joins_the_next_record(recorded):
    recorder, _, _, run_dir = recorded
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = {r["step"]: r for r in records if "train/loss" in r}
    for step in (1, 2, 3):
        assert steps[step]["recorder/half_step"] == step / 2
        assert steps[step]["recorder/tensor"] == float(step) ** 2
    assert records[-1]["recorder/at_end"] == 7.0 and records[-1]["step"] == 3, "logged at the end: a last record"
    assert not any("recorder/half_step" in r for r in records if r.get("event")), "events stay as they are"


def test_histograms_are_the_last_batch_energies_at_every_log_step(recorded):
    recorder, trainer, _, run_dir = recorded
    batch = trainer.params.batch_size
    by_step: dict[int, dict[str, torch.Tensor]] = {}
    for step, name, values in recorder.histograms:
        by_step.setdefault(step, {})[name] = values
    assert sorted(by_step) == [1, 2, 3]
    logged = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "train/loss" in r}
    for step, histograms in by_step.items():
        assert {HISTOGRAM_ENERGY_DATA, HISTOGRAM_ENERGY_SAMPLES} <= set(histograms)
        for values in histograms.values():
            assert values.dim() == 1 and values.dtype == torch.float32 and values.device.type == "cpu"
            assert values.shape == (batch,) and not values.requires_grad
        assert float(histograms[HISTOGRAM_ENERGY_DATA].mean()) == pytest.approx(logged[step]["train/energy_data"], rel=1e-5)
        assert float(histograms[HISTOGRAM_ENERGY_SAMPLES].mean()) == pytest.approx(
            logged[step]["train/energy_samples"], rel=1e-5
        )


def test_log_image_names_each_sample_grid(recorded):
    recorder, _, _, run_dir = recorded
    assert recorder.images == [(3, "samples/final", run_dir / "samples" / "final.png")]
    assert recorder.images[0][2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_file_writes_under_the_plugins_folder(recorded, tmp_path):
    recorder, _, _, run_dir = recorded
    assert recorder.written == run_dir / "plugins" / "recorder" / "notes" / "summary.txt"
    assert recorder.written.read_text() == "steps=3"
    assert not list(recorder.written.parent.glob(".*.tmp")), "written through a temporary file, then renamed"
    view = recorder.views[0]
    for bad in ("../escape.txt", "/etc/passwd", ""):
        with pytest.raises(ValueError, match="relative path without '..'"):
            view.write_file(bad, "x")


def test_a_loss_with_float_metrics_reaches_the_hooks_as_floats(tmp_path):
    seen: list[dict[str, float]] = []
    plugin = types.SimpleNamespace()

    class FloatLoss(Loss):
        needs_sampler = False

        def __call__(self, model, batch, sampler):
            logits = model(batch.x)
            ce = torch.nn.functional.cross_entropy(logits, batch.y)
            acc = (logits.argmax(1) == batch.y).float().mean()
            return LossOutput(ce, {"loss": float(ce.detach()), "acc": float(acc), "ratio": 0.25})

    @hookimpl
    def jemkit_register_losses(registry):
        registry.register("float_metrics", lambda params, context: FloatLoss())

    @hookimpl
    def jemkit_step_end(run, step, metrics):
        seen.append(dict(metrics))

    plugin.jemkit_register_losses = jemkit_register_losses
    plugin.jemkit_step_end = jemkit_step_end
    plugins = load_plugins([("floats", plugin)], entry_points=False)
    tiny = [o for o in TINY_DIGITS if not o.startswith("sampler.init")]
    cfg = load_recipe(RECIPES / "baseline_digits.yaml", [*tiny, *FIXED_PRECISION, "loss.name=float_metrics"])
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    trainer.prepare_run_dir()
    trainer.fit()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(seen) == 3 and all(type(v) is float for metrics in seen for v in metrics.values())
    assert [m["train/ratio"] for m in seen] == [0.25] * 3
    assert [m["train/loss"] for m in seen] == [r["train/loss"] for r in records]
    assert all(math.isfinite(m["train/acc"]) and 0 <= m["train/acc"] <= 1 for m in seen)


def _guide_logger_example() -> str:
    """The Weights & Biases logger of CONTRIBUTING.md's plugin author's guide, as written there."""
    guide = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text(encoding="utf-8")
    start = guide.index("A Weights & Biases logger in full")
    block = guide[guide.index("```python", start) + len("```python") : guide.index("```", guide.index("```python", start) + 3)]
    return textwrap.dedent(block)


def test_the_guide_logger_example_logs_every_step_record(tmp_path, monkeypatch):
    logged: list[tuple[dict, int]] = []
    finished: list[bool] = []
    fake_run = types.SimpleNamespace(log=lambda values, step: logged.append((values, step)), finish=lambda: finished.append(True))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: fake_run))
    example = types.ModuleType("jemkit_wandb")
    exec(compile(_guide_logger_example(), "CONTRIBUTING.md", "exec"), example.__dict__)
    assert len([line for line in _guide_logger_example().splitlines() if line.strip()]) <= 18
    plugins = load_plugins([("wandb", example)], entry_points=False)
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, *FIXED_PRECISION, "loggers=[wandb]"])
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    trainer.prepare_run_dir()
    trainer.fit()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "event" not in r]
    assert [step for _, step in logged] == [r["step"] for r in records]
    train = {step: values for values, step in logged if "train/loss" in values}
    assert sorted(train) == [1, 2, 3] and finished == [True]
    assert train[3]["train/loss"] == next(r for r in records if r["step"] == 3 and "train/loss" in r)["train/loss"]


def test_the_plugin_surface_is_reexported_from_jemkit():
    import jemkit
    import jemkit.contracts as contracts

    for name in contracts.__all__:
        assert getattr(jemkit, name) is getattr(contracts, name), name
    assert jemkit.RunView is RunView and jemkit.hookimpl is hookimpl


def test_the_contract_kit_checks_loss_histograms():
    from jemkit.testing import ContractViolation, check_loss

    class HistogramLoss(Loss):
        def __init__(self, detach: bool) -> None:
            self.detach = detach

        def __call__(self, model, batch, sampler):
            logits = model(batch.x)
            ce = torch.nn.functional.cross_entropy(logits, batch.y)
            energy = model.energy_from_logits(logits)
            values = energy.detach() if self.detach else energy
            metrics = {"loss": ce.detach(), "acc": (logits.argmax(1) == batch.y).float().mean()}
            return LossOutput(ce + 0.0 * energy.mean(), metrics, {HISTOGRAM_ENERGY_DATA: values})

    check_loss(lambda params, context: HistogramLoss(detach=True))
    with pytest.raises(ContractViolation, match="histogram 'energy/data' must be a detached 1-D tensor"):
        check_loss(lambda params, context: HistogramLoss(detach=False))
