"""Hook specifications: every hook a jemkit plugin may implement.

Registration hooks receive the :class:`~jemkit.registry.Registry` of one kind and call
``registry.register(name, factory, params=ParamsDataclass)``. Lifecycle, logger and state hooks
receive a :class:`~jemkit.contracts.RunView` (never the trainer itself) and let loggers, EMA or
FID tracking plug in without touching the loop. Only specifications live here; implementations
are in plugins.

The trainer calls lifecycle, logger and state hooks plugin by plugin (pluggy's order), each with
the plugin's own ``RunView``; wrappers (``hookwrapper``/``wrapper``) are not called for them. An
exception a hook raises stops the run with one paragraph naming the plugin, its package and the
hook (:mod:`jemkit.culprit`). On data-parallel runs every rank calls every hook; the logger hooks
are called on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from omegaconf import DictConfig
    from torch import Tensor

    from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel, RunView
    from jemkit.registry import Registry

PROJECT_NAME = "jemkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------- registration


@hookspec
def jemkit_register_backbones(registry: Registry) -> None:
    """Register backbones: ``factory(params, context) -> Backbone`` (inputs to features)."""


@hookspec
def jemkit_register_heads(registry: Registry) -> None:
    """Register energy heads: ``factory(params, context) -> EnergyHead`` (features to logits)."""


@hookspec
def jemkit_register_chain_inits(registry: Registry) -> None:
    """Register chain initialisers: ``factory(params, context) -> ChainInit``."""


@hookspec
def jemkit_register_transitions(registry: Registry) -> None:
    """Register sampler transitions: ``factory(params, context) -> Transition``."""


@hookspec
def jemkit_register_losses(registry: Registry) -> None:
    """Register training losses: ``factory(params, context) -> Loss``."""


@hookspec
def jemkit_register_data(registry: Registry) -> None:
    """Register data sets: ``factory(params, context) -> DataSplits``."""


@hookspec
def jemkit_register_optimizers(registry: Registry) -> None:
    """Register optimisers: ``factory(params, context, parameters) -> torch.optim.Optimizer``."""


@hookspec
def jemkit_register_schedules(registry: Registry) -> None:
    """Register LR schedules: ``factory(params, context, optimizer) -> LRScheduler`` (stepped per iteration)."""


@hookspec
def jemkit_register_ood_sets(registry: Registry) -> None:
    """Register out-of-distribution sets: ``factory(params, context) -> Dataset`` of ``(x, y)``.

    Inputs have the in-distribution model's ``context.input_shape`` and lie in ``[-1, 1]``;
    ``context.train_data`` / ``context.test_data`` hold the in-distribution splits.
    """


@hookspec
def jemkit_register_feature_extractors(registry: Registry) -> None:
    """Register feature extractors for FID/IS: ``factory(params, context) -> FeatureExtractor``."""


@hookspec
def jemkit_register_importers(registry: Registry) -> None:
    """Register checkpoint importers for ``jemkit import FORMAT CKPT --out RUN_DIR``:
    ``factory(params, context) -> jemkit.importing.Importer``, whose ``read(path)`` turns a foreign
    checkpoint into a recipe, model state and sampler state (see :mod:`jemkit.importing`)."""


# --------------------------------------------------------------------------- lifecycle


@hookspec
def jemkit_run_start(run: RunView) -> None:
    """Called once the run is built, before the first iteration (also after a resume, then after
    :func:`jemkit_load_state`)."""


@hookspec
def jemkit_step_end(run: RunView, step: int, metrics: Mapping[str, float]) -> None:
    """Called after every optimiser step with that step's metrics under their logged names
    (``train/loss``, ``train/acc``, ``sampler/grad_norm``, ...).

    ``step`` counts optimiser steps from 1 (``run.step == step``). ``metrics`` is read-only and each
    value becomes a float when read (reading waits for the device, so read only what you need).
    To log values of your own, call ``run.log({...})``: they join the next ``metrics.jsonl`` record.
    """


@hookspec
def jemkit_summary_entries(run: RunView, summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return entries to add to the summary of a completed run, or ``None`` to add nothing.

    Called once after the final evaluation and sample grid, before ``summary.json`` is written
    and before :func:`jemkit_run_end`; ``summary`` (read-only) holds the trainer's entries and
    those of plugins called earlier. Keys are new strings, best prefixed by topic
    (``density/tv``); values are numbers, strings, booleans, ``None`` or lists and dicts of them
    (0-dim tensors become numbers). Numeric entries appear in ``jemkit compare`` and sweeps. A key
    already in the summary, or a value JSON cannot hold, is the plugin's error.
    """


@hookspec
def jemkit_run_end(run: RunView, summary: Mapping[str, Any]) -> None:
    """Called once after training with the final summary (``test/acc``, ``steps``, ...), after
    ``summary.json`` is written."""


# --------------------------------------------------------------------------- loggers


@hookspec
def jemkit_log_record(run: RunView, record: Mapping[str, Any]) -> None:
    """Called with every record as written to ``metrics.jsonl`` (the same keys, numbers as JSON
    numbers, non-finite ones as the strings ``"nan"``/``"inf"``), rank 0 only.

    Step records carry ``step`` and ``epoch`` with ``train/...``, ``sampler/...``, ``lr``,
    ``time/it_per_s`` or evaluation keys (``test/acc``, ``test/loss``); events carry ``event``
    (``rollback``, ...) and the ``step`` they happened at. After a rollback the steps after the
    restored checkpoint are trained (and recorded) again.
    """


@hookspec
def jemkit_log_histogram(run: RunView, step: int, name: str, values: Tensor) -> None:
    """Called at every log step (rank 0) with 1-D float CPU tensors of per-input values of the
    step's last batch: at least ``energy/data`` and ``energy/samples`` (per-input energies ``E(x)``,
    lower is more likely) for a loss with a ``p(x)`` term (:attr:`LossOutput.histograms`)."""


@hookspec
def jemkit_log_image(run: RunView, step: int, name: str, path: Path) -> None:
    """Called (rank 0) for each sample grid PNG the run writes; ``name`` is its path in the run
    directory without suffix, e.g. ``samples/epoch_0002`` or ``samples/final``."""


# --------------------------------------------------------------------------- plugin state


@hookspec
def jemkit_save_state(run: RunView) -> Mapping[str, Any] | None:
    """Return the state this plugin keeps, to be stored in every checkpoint under its name (or
    ``None`` to store nothing).

    Called plugin by plugin on every rank whenever a checkpoint is written (rank 0's is kept).
    The state may nest dicts (string or integer keys), lists and tuples of tensors, numpy arrays,
    ``None``, booleans, numbers and strings; tensors are copied to the CPU when written.
    """


@hookspec
def jemkit_load_state(run: RunView, state: Mapping[str, Any]) -> None:
    """Restore what :func:`jemkit_save_state` returned (``{}`` when the checkpoint holds nothing for
    this plugin, e.g. a run started without it).

    Called on resume and on every rollback of the divergence guard, after the model, optimiser,
    schedule and sampler are restored and ``run.step`` is the checkpoint's step; tensors are on
    ``run.device``. A resumed run whose plugins save and load all they keep continues bit for
    bit (on the CPU) where it stopped.
    """


@hookspec(firstresult=True)
def jemkit_inference_weights(config: DictConfig, state: Mapping[str, Any]) -> Mapping[str, Tensor] | None:
    """Weights that ``jemkit eval``, ``jemkit sample`` and the Python API load instead of the trained ones.

    Called plugin by plugin when a run is opened at a checkpoint, with the run's resolved recipe
    and the state this plugin saved in that checkpoint (``{}`` when none). Return a complete model
    state dict (e.g. an exponential moving average of the weights, when the recipe asks for it)
    or ``None`` to leave the trained weights; the first plugin that returns weights wins.
    """


# --------------------------------------------------------------------------- command line


@hookspec
def jemkit_register_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``jemkit`` subcommands: ``parser = subparsers.add_parser("name", help=...)``, its
    arguments, then ``parser.set_defaults(handler=fn)``.

    ``fn(args, console, errors) -> int`` receives the parsed ``argparse.Namespace`` and two
    ``rich`` consoles (stdout and stderr) and returns the exit code; a
    :class:`~jemkit.errors.JemkitError` it raises is printed as one paragraph (exit code 2). A
    plugin whose hook raises, or takes a name already in use, keeps none of its commands and is
    reported. Plugin commands are loaded only when the command line names no built-in command.
    """


# --------------------------------------------------------------------------- drawing


@hookspec(firstresult=True)
def jemkit_draw_samples(
    path: Path,
    model: JointEnergyModel,
    samples: Tensor,
    data: DataSplits | None,
    context: BuildContext,
    title: str,
) -> Path | None:
    """Draw ``samples`` ``[N, *context.input_shape]`` of ``model`` as a PNG at ``path`` (``jemkit sample``).

    ``data`` holds the run's splits (a picture may show training inputs beside the samples; ``None``
    for image inputs ``(C, H, W)``, which ``jemkit sample`` draws without building the data set) and
    ``title`` is the run's name. Return ``path`` once written, or ``None`` to leave inputs of this
    shape to another plugin; the first plugin that draws wins. Image inputs ``(C, H, W)`` that no
    plugin draws become a sample grid; the built-in ``toy_plot`` draws 2-D inputs over the density.
    """


#: Registration hook name for each component kind.
REGISTRATION_HOOKS: dict[str, str] = {
    "backbone": "jemkit_register_backbones",
    "head": "jemkit_register_heads",
    "chain_init": "jemkit_register_chain_inits",
    "transition": "jemkit_register_transitions",
    "loss": "jemkit_register_losses",
    "data": "jemkit_register_data",
    "optimizer": "jemkit_register_optimizers",
    "schedule": "jemkit_register_schedules",
    "ood": "jemkit_register_ood_sets",
    "feature_extractor": "jemkit_register_feature_extractors",
    "importer": "jemkit_register_importers",
}
