"""Divergence guard, rollbacks, and signals: a run recovers or stops with a clear report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from jemkit import hookimpl
from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.config import load_recipe
from jemkit.errors import DivergenceError
from jemkit.guard import GuardParams, check_step
from jemkit.plugin_manager import load_plugins
from jemkit.runlog import read_metrics
from jemkit.train import Trainer

from conftest import RECIPES, ROOT, TINY_DIGITS


def test_check_step_trips_on_each_condition():
    params = GuardParams(max_abs_loss=100.0, max_energy_gap=10.0)
    assert check_step(params, 5, 1.0, -2.0, -1.0) is None
    assert "non-finite" in check_step(params, 5, math.nan, None, None).reason
    assert "non-finite" in check_step(params, 5, math.inf, None, None).reason
    assert "max_abs_loss" in check_step(params, 5, -101.0, None, None).reason
    trip = check_step(params, 7, 1.0, -20.0, -5.0)
    assert trip.step == 7 and "energy gap 15" in trip.reason
    assert check_step(GuardParams(max_energy_gap=None), 1, 1.0, -1e9, 1e9) is None


def test_guard_params_are_validated(cli):
    result = cli("run", RECIPES / "jem_digits.yaml", "guard.lr_scale=2")
    assert result.code == 2 and "lr_scale" in result.err


def test_persistent_divergence_stops_after_max_rollbacks_with_a_report(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS,
        "guard.max_abs_loss=0.001", "guard.max_rollbacks=2",
    )
    assert result.code == 2, result.err
    message = result.err.replace("\n", " ")
    assert "not recovered after 2 rollback(s)" in message
    assert message.count("beyond max_abs_loss") == 3
    assert "energy_l2" in message and "--resume" in message and "Traceback" not in message
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "rollback"]
    assert [e["rollbacks"] for e in events] == [1, 2]
    assert [e["lr_scale"] for e in events] == [0.5, 0.25]
    assert list_checkpoints(out / "checkpoints"), "the step-0 checkpoint stays loadable"


def test_disabled_guard_stops_at_the_first_trip(cli, tmp_path):
    result = cli(
        "run", RECIPES / "jem_digits.yaml", "--out", tmp_path / "run", *TINY_DIGITS,
        "guard.max_abs_loss=0.001", "guard.enabled=false",
    )
    assert result.code == 2
    assert "after 0 rollback(s)" in result.err.replace("\n", " ")


class LrSpike:
    """A plugin that sabotages training once: at ``step`` it sets the LR to 1e6."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.fired = False

    @hookimpl
    def jemkit_step_end(self, run, step, metrics):
        if step == self.step and not self.fired:
            self.fired = True
            for group in run.optimizer.param_groups:
                group["lr"] = 1.0e6


class NanWeights:
    """A plugin that corrupts the model once: at ``step`` every weight becomes NaN."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.fired = False

    @hookimpl
    def jemkit_step_end(self, run, step, metrics):
        if step == self.step and not self.fired:
            self.fired = True
            with torch.no_grad():
                for p in run.model.parameters():
                    p.fill_(math.nan)


@pytest.mark.parametrize(
    "saboteur, rolled_back_to",
    [
        # The spiked step is taken before anything trips, and checkpoint 6 holds its damage:
        # the guard sets checkpoint 6 aside after the second trip and goes back to step 3.
        (LrSpike(5), [6, 3]),
        # NaN weights trip at the very next step, before checkpoint 6 is written.
        (NanWeights(5), [3]),
    ],
    ids=["lr_spike", "nan_weights"],
)
def test_injected_divergence_is_rolled_back_and_the_run_finishes(tmp_path, saboteur, rolled_back_to):
    plugins = load_plugins([("saboteur", saboteur)], entry_points=False)
    overrides = [*TINY_DIGITS, "train.max_steps=10", "train.checkpoint_every_steps=3", "guard.max_energy_gap=50"]
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", overrides), tmp_path / "run")
    trainer.prepare_run_dir()
    summary = trainer.fit()
    assert saboteur.fired
    assert summary["status"] == "completed" and summary["steps"] == 10
    assert summary["rollbacks"] == len(rolled_back_to)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    events = [r for r in records if r.get("event") == "rollback"]
    assert [e["to_step"] for e in events] == rolled_back_to
    assert [e["lr_scale"] for e in events] == [0.5**k for k in range(1, len(events) + 1)]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(1, 11)), "records after the checkpoint were replaced, not duplicated"
    assert all(math.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    # Warm-up over 100 steps: lr ∝ (step + 1); the rollbacks scaled it by the last event's factor.
    assert lrs[10] == pytest.approx(events[-1]["lr_scale"] * lrs[1] * 11 / 2, rel=1e-6)
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()
    state = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1]).state
    assert state["progress"]["lr_scale"] == events[-1]["lr_scale"]
    assert len(state["progress"]["rollback_events"]) == len(events)


def test_rollback_error_when_history_is_exhausted(tmp_path):
    plugins = load_plugins(entry_points=False)
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, "guard.max_rollbacks=0"]), tmp_path)
    trainer.prepare_run_dir()
    trainer.save()
    from jemkit.guard import Trip

    with pytest.raises(DivergenceError, match="step 4: test trip"):
        trainer.rollback(Trip(4, "test trip"))


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    overrides = [o for o in TINY_DIGITS if not o.startswith("train.max_steps")] + ["train.max_steps=400"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jemkit", "run", str(RECIPES / "jem_digits.yaml"), "--out", str(out), *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "SIGTERM" in stderr and "--resume" in stderr
    latest = list_checkpoints(out / "checkpoints")[-1]
    stopped_at = load_checkpoint(latest).state["progress"]["step"]
    assert 5 <= stopped_at < 400
    resumed = subprocess.run(
        [sys.executable, "-m", "jemkit", "run", "--resume", str(out), "train.max_steps=" + str(stopped_at + 3)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "summary.json").read_text())["steps"] == stopped_at + 3


# --------------------------------------------------------------------------- giving up, and how to go on


def test_a_diverged_run_records_its_end_and_the_printed_resume_continues(cli, tmp_path):
    import re
    import shlex

    out = tmp_path / "run"
    result = cli(
        "run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS,
        "guard.max_abs_loss=0.001", "guard.max_rollbacks=1",
    )
    assert result.code == 2, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["rollbacks"] == 1
    assert [h["step"] for h in summary["history"]] == [1, 1] and "max_abs_loss" in summary["reason"]
    events = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event")]
    final = events[-1]
    assert final["event"] == "diverged" and final["parked_at_step"] == 0 and len(final["history"]) == 2
    parked = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).state["progress"]
    assert len(parked["rollback_events"]) == 2 and parked["lr_scale"] == 0.25  # the rollback made all the same
    (command,) = re.findall(r"`(jemkit [^`]+)`", " ".join(result.err.split()))
    assert command.endswith("guard.max_rollbacks=5")
    again = cli(*shlex.split(command)[1:])  # as printed: it trips again (same recipe), with 3 more rollbacks
    assert again.code == 2 and "not recovered after 5 rollback(s)" in " ".join(again.err.split())
    rollbacks = [r["rollbacks"] for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "rollback"]
    assert rollbacks == [1, 3, 4, 5]
    fixed = cli(*shlex.split(command)[1:], "guard.max_abs_loss=1e8")  # the same command with a recipe fix
    assert fixed.code == 0, fixed.err
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


class NanTransition:
    """A plugin whose transition returns NaN chains."""

    @hookimpl
    def jemkit_register_transitions(self, registry):
        from jemkit.contracts import StepResult, Transition

        class Broken(Transition):
            def step(self, x, energy_fn):
                energy = energy_fn(x)
                return StepResult(x=x * math.nan, energy=energy.detach(), grad_norm=torch.zeros(()))

        registry.register("nan_step", lambda params, context: Broken(), description="returns NaN chains")


def test_a_transition_that_returns_nan_is_named_not_the_learning_rate(tmp_path):
    plugins = load_plugins([("nan_plugin", NanTransition())], entry_points=False)
    cfg = load_recipe(
        RECIPES / "jem_digits.yaml",
        [*TINY_DIGITS, "sampler.transition.name=nan_step", "guard.max_rollbacks=1"],
    )
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    trainer.prepare_run_dir()
    with pytest.raises(DivergenceError) as error:
        trainer.fit()
    message = str(error.value)
    assert "nan_step" in message and "chains" in message and "the LR is not the cause" in message
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"
