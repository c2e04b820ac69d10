"""Open a finished run directory for evaluation: :func:`jemkit.run_open.open_run` under a run name.

A run directory (see :mod:`jemkit.train`) holds ``config.yaml`` and ``checkpoints/``; the model
weights and the sampler state (a replay buffer) are restored from the chosen checkpoint. The
optimiser, schedule and RNG states in the checkpoint are not needed and not restored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from jemkit.checkpoint import resolve_checkpoint as find_checkpoint
from jemkit.contracts import BuildContext, DataSplits
from jemkit.plugin_manager import PluginSet
from jemkit.run_open import OpenedRun, open_run

__all__ = ["LoadedRun", "find_checkpoint", "load_run"]


@dataclass
class LoadedRun(OpenedRun):
    """A trained run ready to evaluate (weights frozen, eval mode), under its name in the report."""

    name: str = ""


def load_run(
    plugins: PluginSet,
    run_dir: Path,
    name: str,
    checkpoint: str,
    device: torch.device,
    context: BuildContext | None = None,
) -> tuple[LoadedRun, DataSplits | None]:
    """Open ``run_dir`` at ``checkpoint`` on ``device`` as the run called ``name``; with its data set.

    Without ``context`` the run's own data set is built (it fills the context and is returned);
    with one (a baseline compared on the primary run's data) the data is not built again.
    """
    opened = open_run(plugins, run_dir, checkpoint, device, context=context)
    fields = {f.name: getattr(opened, f.name) for f in dataclasses.fields(OpenedRun)}
    return LoadedRun(**fields, name=name), opened.data
