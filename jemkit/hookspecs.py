"""Hook specifications: every hook a jemkit plugin may implement.

Registration hooks receive the :class:`~jemkit.registry.Registry` of one kind and call
``registry.register(name, factory, params=ParamsDataclass)``. Lifecycle hooks receive the
running :class:`~jemkit.train.Trainer` and let loggers, EMA or FID tracking plug in without
touching the loop. Only specifications live here; implementations are in plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from torch import Tensor

    from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel
    from jemkit.registry import Registry
    from jemkit.train import Trainer

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
def jemkit_run_start(run: Trainer) -> None:
    """Called once the run is built, before the first iteration (also after a resume)."""


@hookspec
def jemkit_step_end(run: Trainer, step: int, metrics: dict[str, Any]) -> None:
    """Called after every optimiser step with that step's metrics (``train/loss``, ...).

    ``step`` counts optimiser steps from 1. A plugin may add entries to ``metrics``; they are
    logged with the rest when the step is a logging step.
    """


@hookspec
def jemkit_run_end(run: Trainer, summary: dict[str, Any]) -> None:
    """Called once after training with the final summary (``test/acc``, ``steps``, ...)."""


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
    data: DataSplits,
    context: BuildContext,
    title: str,
) -> Path | None:
    """Draw ``samples`` ``[N, *context.input_shape]`` of ``model`` as a PNG at ``path`` (``jemkit sample``).

    ``data`` holds the run's splits (a picture may show training inputs beside the samples) and
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
