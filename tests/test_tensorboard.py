"""The built-in TensorBoard logger: event files read back with TensorBoard's own reader agree with
``metrics.jsonl`` step for step; histograms and sample grids arrive; rollbacks and resumes purge
what ``metrics.jsonl`` drops; a missing package is one warning; the recipe key is checked."""

from __future__ import annotations

import io
import logging
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from jemkit.config import check_loggers, load_recipe
from jemkit.errors import RecipeError
from jemkit.plugin_manager import logger_names
from jemkit.runlog import read_metrics
from jemkit.samples import save_sample_grid
from jemkit_plugins.loggers import tensorboard as tb

from conftest import RECIPES, TINY_DIGITS, run_cli

pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'jemkit[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

KEEP_ALL = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}


def read_events(run_dir: Path) -> EventAccumulator:
    """Every event under ``RUN_DIR/tensorboard`` as TensorBoard itself reads them."""
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance=KEEP_ALL)
    accumulator.Reload()
    return accumulator


def number(value: Any) -> float | None:
    """A metrics.jsonl value as a float (non-finite ones are stored as strings), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def same(a: float, b: float) -> bool:
    """Equal up to float32 rounding (TensorBoard stores scalars as float32); NaN equals NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=1e-6)


def expected_scalars(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of every number of the step records (events left out), in order."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if "event" in record:
            continue
        for key, value in record.items():
            if key != "step" and number(value) is not None:
                expected.setdefault(key, []).append((int(record["step"]), number(value)))
    return expected


def assert_scalars_match(run_dir: Path, records: list[dict[str, Any]]) -> None:
    expected = expected_scalars(records)
    events = read_events(run_dir)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(event.step, event.value) for event in events.Scalars(tag)]
        assert [step for step, _ in got] == [step for step, _ in points], tag
        assert all(same(a, b) for (_, a), (_, b) in zip(got, points)), (tag, got, points)


class FakeRun(SimpleNamespace):
    """What the logger reads of a RunView: run_dir, config, is_main, step."""


def fake_run(run_dir: Path, loggers: list[str] | None = ("tensorboard",), step: int = 0, is_main: bool = True) -> FakeRun:
    config = OmegaConf.create({} if loggers is None else {"loggers": list(loggers)})
    return FakeRun(run_dir=run_dir, config=config, step=step, is_main=is_main)


def log_all(run: FakeRun, records: list[dict[str, Any]]) -> None:
    for record in records:
        run.step = int(record["step"])
        tb.jemkit_log_record(run=run, record=record)


# --------------------------------------------------------------------------- the hooks, called directly


def test_every_number_of_every_record_is_a_scalar_at_its_step(tmp_path):
    run = fake_run(tmp_path)
    records = [
        {"step": 0, "event": "precision", "autocast": "fp32", "fp32_ms": 7.5},
        {"step": 1, "epoch": 0, "train/loss": 2.25, "train/acc": 0.125, "lr": 1e-3, "time/it_per_s": 3.75},
        {"step": 2, "epoch": 0, "train/loss": "nan", "train/acc": 0.0625, "lr": 2e-3, "time/it_per_s": 4.125},
        {"step": 3, "epoch": 0, "train/loss": 1.5, "train/acc": 0.5, "lr": 3e-3, "time/it_per_s": 5.0, "note": "x"},
        {"step": 3, "epoch": 1, "test/acc": 0.75, "test/loss": "inf"},
    ]
    tb.jemkit_run_start(run=run)
    log_all(run, records)
    tb.jemkit_run_end(run=run, summary={"test/acc": 0.75, "steps": 3})
    assert_scalars_match(tmp_path, records)
    events = read_events(tmp_path)
    assert "note" not in events.Tags()["scalars"] and "fp32_ms" not in events.Tags()["scalars"]
    assert {"events/precision/text_summary", "summary/text_summary"} <= set(events.Tags()["tensors"])


def test_histograms_and_sample_grids(tmp_path):
    run = fake_run(tmp_path, step=4)
    data = torch.linspace(-3.0, 1.0, 50)
    samples = torch.cat([torch.linspace(0.0, 2.0, 30), torch.tensor([float("nan")])])
    tb.jemkit_log_histogram(run=run, step=4, name="energy/data", values=data)
    tb.jemkit_log_histogram(run=run, step=4, name="energy/samples", values=samples)
    grid = torch.linspace(-1, 1, 6 * 1 * 8 * 8).reshape(6, 1, 8, 8)
    png = save_sample_grid(grid, tmp_path / "samples" / "final.png", nrow=3)
    tb.jemkit_log_image(run=run, step=4, name="samples/final", path=png)
    tb.jemkit_run_end(run=run, summary={})

    events = read_events(tmp_path)
    histogram = events.Histograms("energy/data")[0]
    assert histogram.step == 4
    value = histogram.histogram_value
    assert value.num == 50 and math.isclose(value.sum, float(data.sum()), abs_tol=1e-4)
    assert value.min == pytest.approx(-3.0) and value.max == pytest.approx(1.0)
    finite = events.Histograms("energy/samples")[0].histogram_value
    assert finite.num == 30 and finite.max == pytest.approx(2.0)  # the NaN is left out

    (image,) = events.Images("samples/final")
    from PIL import Image

    written = np.asarray(Image.open(png).convert("RGB"))
    stored = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    assert image.step == 4 and (image.height, image.width) == written.shape[:2]
    assert np.array_equal(stored, written)


def test_a_rollback_and_a_resume_drop_the_events_metrics_jsonl_drops(tmp_path):
    run = fake_run(tmp_path)
    tb.jemkit_run_start(run=run)
    log_all(run, [{"step": s, "train/loss": float(s)} for s in (1, 2, 3, 4)])
    # the guard rolls back from step 4 to the checkpoint of step 2; steps 3 and 4 are trained again
    log_all(run, [{"step": 4, "event": "rollback", "reason": "loss is nan", "to_step": 2, "lr_scale": 0.5}])
    log_all(run, [{"step": s, "train/loss": 10.0 * s} for s in (3, 4)])
    tb.jemkit_run_end(run=run, summary={})
    assert [(e.step, e.value) for e in read_events(tmp_path).Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)
    ]

    # a new process resumes from the checkpoint of step 3: step 4 is trained again. A new process
    # starts in a later second; here (one process) wait for it: event files are named
    # `...tfevents.<second>.<host>.<pid>.<writer count>` and read in name order, and the writer
    # count is not zero-padded, so two files of one second sort wrongly once it passes 9, 99, ...
    time.sleep(1.05 - time.time() % 1.0)
    resumed = fake_run(tmp_path, step=3)
    tb.jemkit_run_start(run=resumed)
    log_all(resumed, [{"step": 4, "train/loss": 400.0}, {"step": 5, "train/loss": 500.0}])
    tb.jemkit_run_end(run=resumed, summary={})
    assert [(e.step, e.value) for e in read_events(tmp_path).Scalars("train/loss")] == [
        (1, 1.0), (2, 2.0), (3, 30.0), (4, 400.0), (5, 500.0)
    ]


@pytest.mark.parametrize("loggers, is_main", [(None, True), ([], True), (["tensorboard"], False)])
def test_nothing_is_written_unless_the_recipe_lists_it_and_on_rank_0(tmp_path, loggers, is_main):
    run = fake_run(tmp_path, loggers=loggers, is_main=is_main)
    tb.jemkit_run_start(run=run)
    tb.jemkit_log_record(run=run, record={"step": 1, "train/loss": 1.0})
    tb.jemkit_log_histogram(run=run, step=1, name="energy/data", values=torch.ones(3))
    tb.jemkit_run_end(run=run, summary={"steps": 1})
    assert not (tmp_path / "tensorboard").exists()


def test_without_the_package_one_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    run = fake_run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="jemkit"):
        tb.jemkit_run_start(run=run)
        log_all(run, [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5}])
        tb.jemkit_log_histogram(run=run, step=2, name="energy/data", values=torch.ones(3))
        tb.jemkit_run_end(run=run, summary={})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and "pip install 'jemkit[tensorboard]'" in message
    assert not (tmp_path / "tensorboard").exists()


# --------------------------------------------------------------------------- the recipe key


def test_every_shipped_recipe_switches_it_on(plugins):
    assert "tensorboard" in logger_names(plugins)
    for path in sorted(RECIPES.glob("*.yaml")):
        assert list(load_recipe(path).loggers) == ["tensorboard"], path.name


def test_an_unknown_logger_is_refused_with_a_suggestion(plugins, tmp_path):
    cfg = OmegaConf.create({"loggers": ["tensorbord"]})
    with pytest.raises(RecipeError, match="Did you mean 'tensorboard'"):
        check_loggers(cfg, logger_names(plugins), "recipe.yaml")
    with pytest.raises(RecipeError, match="list of logger plugin names"):
        check_loggers(OmegaConf.create({"loggers": {"tensorboard": True}}), logger_names(plugins), "recipe.yaml")
    result = run_cli("run", RECIPES / "baseline_digits.yaml", "--out", tmp_path / "r", "loggers=[tensorbord]")
    assert result.code == 2 and "Traceback" not in result.err
    assert "Did you mean 'tensorboard'" in " ".join(result.err.split())


# --------------------------------------------------------------------------- a real run


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_run_and_its_resume_write_what_metrics_jsonl_holds(tmp_path):
    out = tmp_path / "run"
    result = run_cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS)
    assert result.code == 0, result.err
    records = read_metrics(out / "metrics.jsonl")
    assert_scalars_match(out, records)
    events = read_events(out)
    log_steps = sorted({int(r["step"]) for r in records if "train/loss" in r})
    assert log_steps == [1, 2, 3]
    for name in ("energy/data", "energy/samples"):
        histograms = events.Histograms(name)
        assert [h.step for h in histograms] == log_steps
        assert all(h.histogram_value.num == 16 for h in histograms)  # one energy per input of the batch
    assert {"lr", "time/it_per_s", "train/loss", "test/acc"} <= set(events.Tags()["scalars"])
    assert events.Images("samples/final")[0].step == 3

    resumed = run_cli("run", "--resume", out, "train.max_steps=5")
    assert resumed.code == 0, resumed.err
    assert_scalars_match(out, read_metrics(out / "metrics.jsonl"))


#: Fills the disk (a file-size limit of 0) under a SummaryWriter, with or without the plugin's
#: excepthook filter; prints the errno the main thread gets.
NO_ROOM_PROBE = r"""
import importlib, resource, sys, time
from torch.utils.tensorboard import SummaryWriter
if sys.argv[2] == "plugin":
    importlib.import_module("jemkit_plugins.loggers.tensorboard")._quiet_writer_thread_without_room()
writer = SummaryWriter(log_dir=sys.argv[1], flush_secs=0.1)
writer.add_scalar("loss", 1.0, 1)
writer.flush()
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
for step in range(2, 100):
    try:
        writer.add_scalar("loss", 1.0, step)
    except OSError as error:
        print("main thread:", error.errno)
        break
    time.sleep(0.05)
"""


@pytest.mark.parametrize("mode", ["plugin", "bare"])
def test_a_full_disk_in_the_writer_thread_reaches_the_main_thread_without_a_traceback(tmp_path, mode):
    """The package's writer thread prints ``Exception in thread`` when its write finds no room; the
    plugin's filter silences exactly that, and the error still reaches the main thread (EFBIG, 27)."""
    import errno
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", NO_ROOM_PROBE, str(tmp_path / "events"), mode],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"main thread: {errno.EFBIG}"
    assert ("Exception in thread" in done.stderr) == (mode == "bare"), done.stderr
