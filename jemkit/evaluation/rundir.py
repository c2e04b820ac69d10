"""Open a finished run directory for evaluation: its recipe, data, model and sampler at a checkpoint.

A run directory (see :mod:`jemkit.train`) holds ``config.yaml`` and ``checkpoints/``; the model
weights and the sampler state (a replay buffer) are restored from the chosen checkpoint. The
optimiser, schedule and RNG states in the checkpoint are not needed and not restored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from jemkit.build import build_data, build_model, build_sampler, seed_everything
from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.config import read_run_config
from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel
from jemkit.errors import CheckpointError
from jemkit.plugin_manager import PluginSet
from jemkit.sampler import Sampler


@dataclass
class LoadedRun:
    """A trained run ready to evaluate (weights frozen, eval mode)."""

    name: str
    run_dir: Path
    cfg: DictConfig
    context: BuildContext
    model: JointEnergyModel
    sampler: Sampler
    checkpoint: Path
    step: int


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """``last`` (newest step checkpoint), ``best`` (``best.safetensors``) or an explicit checkpoint path."""
    folder = run_dir / "checkpoints"
    if which == "last":
        found = list_checkpoints(folder)
        if not found:
            raise CheckpointError(
                f"Run directory {str(run_dir)!r} has no checkpoint to evaluate (looked for step_*.safetensors in "
                f"{str(folder)!r}). Train it first (`jemkit run RECIPE --out {run_dir}`), or let an interrupted "
                f"run finish with `jemkit run --resume {run_dir}`."
            )
        return found[-1]
    path = folder / "best.safetensors" if which == "best" else Path(which)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist. Use --checkpoint last, best, or the path of a checkpoint file."
        )
    return path


def load_run(
    plugins: PluginSet,
    run_dir: Path,
    name: str,
    checkpoint: str,
    device: torch.device,
    context: BuildContext | None = None,
) -> tuple[LoadedRun, DataSplits | None]:
    """Build the run's model and sampler and restore them from ``checkpoint``.

    Without ``context`` the run's own data set is built (it fills the context and is returned);
    with one (a baseline compared on the primary run's data) the data is not built again.
    """
    cfg = read_run_config(run_dir)
    source = str(run_dir / "config.yaml")
    path = find_checkpoint(run_dir, checkpoint)
    seed_everything(int(cfg.get("seed", 1)))
    data = None
    if context is None:
        context = BuildContext(device=device, run_dir=run_dir, seed=int(cfg.get("seed", 1)))
        data = build_data(plugins, cfg, context, source)
    else:
        context = dataclasses.replace(context, feature_dim=None, run_dir=run_dir)
    model = build_model(plugins, cfg, context, source)
    sampler = build_sampler(plugins, cfg, context, source)  # with the recipe's cuda_graphs, for generation
    state = load_checkpoint(path, map_location=device).state
    try:
        model.load_state_dict(state["model"])
        sampler.load_state_dict(state.get("sampler", {}))
        step = int(state.get("progress", {}).get("step", -1))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit the model or sampler of {source!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. Evaluate the run directory the "
            "checkpoint was written in."
        ) from None
    model.eval().requires_grad_(False)
    return LoadedRun(name, run_dir, cfg, context, model, sampler, path, step), data
