"""Data-parallel training with torchrun (gloo on CPU): runs, checkpoints, equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.runlog import read_metrics

from conftest import RECIPES, ROOT, TINY_DIGITS

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo multi-process tests need POSIX")


def _jemkit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "jemkit", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _train_losses(run: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r]


def test_two_process_jem_run_finishes_and_its_checkpoint_loads(tmp_path):
    out = tmp_path / "ddp"
    result = _jemkit("run", str(RECIPES / "jem_digits.yaml"), "--nproc", "2", "--out", str(out), *TINY_DIGITS)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "completed"
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1]).state
    shards = state["sampler_ranks"]
    assert len(shards) == 2 and shards[0]["buffer"].shape == (200, 1, 8, 8)
    assert not (shards[0]["buffer"] == shards[1]["buffer"]).all(), "each rank keeps its own buffer shard"
    assert state["progress"]["world_size"] == 2
    # The same run directory resumes on one process (shard 0 is reused).
    resumed = _jemkit("run", "--resume", str(out), "train.max_steps=5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Cross-entropy training is deterministic given the batch: DDP must reproduce it."""
    common = [
        "model.backbone.channels=[8,16]", "model.backbone.feature_dim=16", "data.noise_std=0.0",
        "train.batch_size=16", "train.max_steps=6", "train.log_every=1", "train.samples_per_class=1",
    ]
    single, double = tmp_path / "one", tmp_path / "two"
    first = _jemkit("run", str(RECIPES / "baseline_digits.yaml"), "--out", str(single), *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _jemkit("run", str(RECIPES / "baseline_digits.yaml"), "--nproc", "2", "--out", str(double), *common)
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = _train_losses(single), _train_losses(double)
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, abs=1e-4)
    acc = lambda d: json.loads((d / "summary.json").read_text())["test/acc"]  # noqa: E731
    assert acc(single) == pytest.approx(acc(double), abs=0.01)


def test_global_batch_must_split_over_processes(tmp_path):
    result = _jemkit(
        "run", str(RECIPES / "jem_digits.yaml"), "--nproc", "2", "--out", str(tmp_path / "r"), *TINY_DIGITS,
        "train.batch_size=15",
    )
    assert result.returncode != 0
    assert "does not split evenly over 2 processes" in result.stderr.replace("\n", " ")
