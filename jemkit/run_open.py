"""Open a run directory at a checkpoint: its recipe, data, model and sampler, ready to use.

``jemkit eval`` (through :mod:`jemkit.evaluation.rundir`), ``jemkit sample`` and
:func:`jemkit.load_run` open runs with :func:`open_run` (the last two without building the data set,
from the inputs and classes the run recorded: :mod:`jemkit.data_info`); resuming a run restores
far more (optimiser, schedule, RNGs, progress) and is :mod:`jemkit.run_state`'s job, with the same
checkpoint discovery (:func:`jemkit.checkpoint.resolve_checkpoint`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from jemkit import defaults
from jemkit.build import build_data, build_model, build_performance, build_sampler, resolve_device
from jemkit.checkpoint import load_checkpoint, resolve_checkpoint
from jemkit.config import read_run_config
from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel
from jemkit.culprit import names_missing_plugins
from jemkit.data_info import DataInfo, describe_data, read_data_info
from jemkit.errors import RecipeError
from jemkit.performance import PerformanceParams, apply_precision
from jemkit.plugin_hooks import load_inference_weights
from jemkit.plugin_manager import PluginSet
from jemkit.precision import run_performance
from jemkit.rng import preserved_rng, recipe_seed, seed_everything
from jemkit.run_state import MISMATCH_ERRORS, checkpoint_mismatch, sampler_state
from jemkit.sampler import Sampler


@dataclass
class OpenedRun:
    """A run directory opened at one checkpoint (the model in eval mode, its weights frozen)."""

    run_dir: Path
    #: The run's resolved recipe (``RUN_DIR/config.yaml``).
    cfg: DictConfig
    #: Path of that recipe, for error messages.
    source: str
    context: BuildContext
    #: The run's data set; ``None`` when the caller passed a context (the data is its own) or opened
    #: the run without data (``with_data=False``; :func:`load_data` builds it later).
    data: DataSplits | None
    model: JointEnergyModel
    sampler: Sampler
    #: The checkpoint file that was loaded.
    checkpoint: Path
    #: Optimiser steps the checkpoint was written after (-1 if it does not say).
    step: int
    #: The checkpoint's metadata (resolved recipe, versions, plugin origins).
    metadata: dict[str, str] = field(default_factory=dict)
    #: The precision and memory format the run trained with (its ``precision.json``): the model is
    #: already in that memory format; sample under ``performance.autocast`` as the run did.
    performance: PerformanceParams = field(default_factory=PerformanceParams)
    #: The run's inputs and classes (:mod:`jemkit.data_info`); ``None`` for a run that recorded none
    #: and was opened on another run's context.
    data_info: DataInfo | None = None
    #: The plugin whose ``jemkit_inference_weights`` replaced the trained weights (``ema`` when the
    #: recipe asks for the weight average), or ``None`` for the trained weights.
    weights_from: str | None = None


@names_missing_plugins  # an unknown component the checkpoint's plugin packages provided says what to install
def open_run(
    plugins: PluginSet,
    run_dir: Path | str,
    checkpoint: str | int | Path = "last",
    device: torch.device | None = None,
    *,
    context: BuildContext | None = None,
    restore_sampler: bool = True,
    with_data: bool = True,
) -> OpenedRun:
    """Rebuild the run in ``run_dir`` from its ``config.yaml`` and load the ``checkpoint`` into it.

    ``checkpoint`` is ``last``, ``best``, a step number or a path
    (:func:`~jemkit.checkpoint.resolve_checkpoint`). ``device`` defaults to the recipe's. The RNGs
    are seeded with the run's seed before anything is built. Without ``context`` the run's own data
    set is built (it fills the context: input shape, classes); with one (a baseline compared on
    another run's data) no data set is built. ``restore_sampler=False`` leaves the sampler as built
    (fresh chains) instead of loading its state (the replay buffer). ``with_data=False`` builds no data
    set when the run recorded its inputs and classes (:mod:`jemkit.data_info`; ``OpenedRun.data`` is
    then ``None`` until :func:`load_data`): a model then opens on a machine without the data. A run
    that recorded none, or whose sampler needs the training data (JEM++'s informative initialiser
    fits on it), builds the data set all the same. The model gets the precision
    and memory format the run trained with (:func:`jemkit.precision.run_performance`). The
    optimiser, schedule and RNG states of the checkpoint are not restored. Every problem is a
    :class:`~jemkit.errors.JemkitError` naming the file and the fix.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    source = str(run_dir / "config.yaml")
    path = resolve_checkpoint(run_dir, checkpoint)
    device = device if device is not None else resolve_device(cfg.get("device", defaults.DEVICE))
    seed = recipe_seed(cfg, source)
    loaded = load_checkpoint(path, map_location=device)
    recorded = read_data_info(run_dir, loaded.metadata) if context is not None or not with_data else None
    seed_everything(seed)
    data, from_record = None, False
    if context is not None:
        context = dataclasses.replace(context, feature_dim=None, run_dir=run_dir)
    else:
        context = BuildContext(device=device, run_dir=run_dir, seed=seed)
        if recorded is None:
            data = build_data(plugins, cfg, context, source)
        else:
            recorded.fill(context)  # input shape and classes, as building the data set would
            from_record = True
    model = build_model(plugins, cfg, context, source)
    try:
        sampler = build_sampler(plugins, cfg, context, source)  # with the recipe's cuda_graphs, for generation
    except RecipeError:
        if not from_record:
            raise
        # A sampler that needs the training data: open the run the old way, data set and all.
        return open_run(plugins, run_dir, path, device, restore_sampler=restore_sampler)
    state = loaded.state
    try:
        model.load_state_dict(state["model"])
        # a documented kernel step: a plugin may substitute the weights (jemkit_inference_weights, e.g. an EMA)
        weights_from = load_inference_weights(plugins, cfg, model, state.get("plugins") or {}, source)
        if restore_sampler:
            sampler.load_state_dict(sampler_state(state))
        step = int(state.get("progress", {}).get("step", -1))
    except MISMATCH_ERRORS as exc:
        raise checkpoint_mismatch(path, source, exc) from None
    performance = run_performance(run_dir, build_performance(cfg, source))
    apply_precision(model, performance)
    model.eval().requires_grad_(False)
    return OpenedRun(
        run_dir, cfg, source, context, data, model, sampler, path, step, dict(loaded.metadata), performance,
        data_info=describe_data(cfg, data) if data is not None else recorded, weights_from=weights_from,
    )


def load_data(plugins: PluginSet, run: OpenedRun) -> DataSplits:
    """The data set of ``run``, built now if :func:`open_run` left it out (``with_data=False``).

    Sets ``run.data`` and the context's splits; the global RNGs are left as they were."""
    if run.data is None:
        with preserved_rng(run.context.seed):
            run.data = build_data(plugins, run.cfg, run.context, run.source)
    return run.data
