"""Shared fixtures: plugin sets, tiny recipes, and a CLI runner that captures output."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


def gaussian_classes_model(centres: list[list[float]]):
    """A JointEnergyModel with identity 2-D features and logits ``-|x - c_k|^2 / 2``:
    ``E(x, y=k)`` is a unit Gaussian around ``centres[k]``. Its backbone has no ``first_layer``."""
    from torch import nn

    from jemkit.contracts import Backbone, EnergyHead, JointEnergyModel

    class Identity(Backbone):
        def __init__(self):
            super().__init__()
            self.feature_dim = 2
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x.flatten(1) * self.scale

    class NegDistance(EnergyHead):
        def __init__(self):
            super().__init__()
            self.num_classes = len(centres)
            self.centres = nn.Parameter(torch.tensor(centres))

        def forward(self, f):
            return -0.5 * (f[:, None, :] - self.centres[None]).pow(2).sum(-1)

    return JointEnergyModel(Identity(), NegDistance())


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def plugins():
    from jemkit.plugin_manager import load_plugins

    loaded = load_plugins()
    assert not loaded.failures, [f.message() for f in loaded.failures]
    return loaded


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run ``jemkit ARGS`` in-process and capture exit code, stdout and stderr."""
    from jemkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


TINY_DIGITS = [
    "model.backbone.channels=[8,16]",
    "model.backbone.feature_dim=16",
    "sampler.steps=2",
    "sampler.init.size=200",
    "train.epochs=1",
    "train.max_steps=3",
    "train.batch_size=16",
    "train.log_every=1",
    "train.samples_per_class=2",
    "train.sample_extra_steps=0",
]


@pytest.fixture
def tiny_digits_overrides():
    return list(TINY_DIGITS)


def python() -> str:
    return sys.executable
