"""``jemkit sample RUN_DIR --out FILE.png``: draw samples from a trained run's checkpoint.

The model and sampler are rebuilt from ``RUN_DIR/config.yaml`` and the input shape and classes
the run recorded (``RUN_DIR/data_info.json``, :mod:`jemkit.data_info`), so no data set is needed
on disk; a run that recorded none, a sampler fitted on the training data (JEM++'s informative
initialiser) and drawings of non-image inputs build the data set as before (plugins drawing image
runs get ``data=None``). The weights and sampler state are loaded from a checkpoint
(``--checkpoint``: ``last``, the newest step checkpoint in ``RUN_DIR/checkpoints``, by default;
``best``, a step number or a path), and the chains run with the recipe's transition. A plugin implementing
``jemkit_draw_samples`` draws the PNG (the built-in ``toy_plot`` draws 2-D runs' samples over the
learned density); image runs no plugin draws give a PNG grid.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from jemkit.cli.eval import CHECKPOINT_HELP, DEVICE_HELP
from jemkit.config import read_run_config
from jemkit.errors import JemkitError, RecipeError

#: Chain starting points ``--from`` accepts.
SOURCES: tuple[str, ...] = ("buffer", "noise")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``sample`` subcommand."""
    parser = subparsers.add_parser(
        "sample",
        help="draw samples from a trained run",
        description=(
            "Draw samples from a trained run's checkpoint with the run's own sampler and write them "
            "as a PNG (a grid for images, a density plot for 2-D data)."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="directory of an earlier `jemkit run`")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.png", help="PNG file to write")
    parser.add_argument("--checkpoint", default="last", metavar="WHICH", help=CHECKPOINT_HELP)
    parser.add_argument("--class", dest="class_index", type=int, metavar="K", help="sample p(x|y=K) instead of p(x)")
    parser.add_argument(
        "--steps", type=int, metavar="N", help="transition steps per chain (default: the recipe's sampler.steps)"
    )
    parser.add_argument("--n", type=int, default=64, metavar="N", help="number of samples (default 64)")
    parser.add_argument(
        "--from",
        dest="source",
        choices=SOURCES,
        default="buffer",
        help="chain starts. buffer (default): the run's own initialiser as the checkpoint left it, i.e. its "
        "replay buffer, where, as in training, each chain restarts from uniform noise with probability "
        "sampler.init.reinit_freq (JEM: 0.05; see --reinit), or the fresh draws of a stateless initialiser. "
        "noise: every chain from uniform noise in [-1, 1]",
    )
    parser.add_argument(
        "--reinit",
        type=float,
        metavar="P",
        help="with --from buffer: probability that a chain restarts from noise instead of a stored buffer "
        "state (default: the recipe's sampler.init.reinit_freq; 0: none does)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the chains (default 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.set_defaults(handler=sample_command)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise RecipeError(f"--n must be at least 1, got {args.n}.")
    if args.steps is not None and args.steps < 0:
        raise RecipeError(f"--steps must be non-negative, got {args.steps}.")
    if args.out.suffix.lower() != ".png":
        raise RecipeError(f"--out {str(args.out)!r} must name a .png file.")
    if args.reinit is not None:
        if not 0.0 <= args.reinit <= 1.0:
            raise RecipeError(f"--reinit is a probability in [0, 1], got {args.reinit}.")
        if args.source != "buffer":
            raise RecipeError("--reinit applies to --from buffer; with --from noise every chain starts from noise.")


def sample_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit sample``: rebuild a run's model and sampler, load a checkpoint, write samples as PNG."""
    _check_args(args)
    # Fail fast on the run directory and the checkpoint, before the heavy imports and the build.
    read_run_config(args.run_dir)
    from jemkit.checkpoint import resolve_checkpoint
    from jemkit.disk import disk_full_error, is_no_room

    checkpoint_path = resolve_checkpoint(args.run_dir, args.checkpoint)

    import torch

    from jemkit import defaults
    from jemkit.build import build_by_name, resolve_device
    from jemkit.cli import report_plugin_failures
    from jemkit.performance import autocast
    from jemkit.plugin_manager import load_plugins
    from jemkit.rng import seed_everything
    from jemkit.run_open import load_data, open_run
    from jemkit.samples import save_sample_grid

    plugins = load_plugins()
    report_plugin_failures(plugins, errors)
    device = resolve_device(args.device) if args.device else None
    run = open_run(
        plugins, args.run_dir, checkpoint_path, device, restore_sampler=args.source == "buffer", with_data=False
    )
    cfg, context, model, sampler, device = run.cfg, run.context, run.model, run.sampler, run.context.device
    num_classes = context.num_classes
    if args.class_index is not None and not 0 <= args.class_index < num_classes:
        raise RecipeError(
            f"--class {args.class_index} is not a class of this run: its data set has {num_classes} "
            f"classes, indices 0 to {num_classes - 1}."
        )
    if args.source == "noise":
        sampler.init = build_by_name(plugins, "chain_init", defaults.FRESH_CHAIN_INIT, context, source="--from noise")
    if args.reinit is not None:
        _set_reinit(sampler.init, args.reinit)

    seed_everything(args.seed)
    y = None if args.class_index is None else torch.full((args.n,), args.class_index, dtype=torch.long, device=device)
    with autocast(device, run.performance):  # the precision the run trained with
        x = sampler.sample(model, args.n, y=y, steps=args.steps, device=device, persist=False)
    shape = tuple(context.input_shape)
    title = str(cfg.get("name", ""))
    # Image grids need no data; drawings of other inputs (toy_plot's density) show training points.
    data = run.data if run.data is not None or len(shape) == 3 else load_data(plugins, run)
    drawn = plugins.hook.jemkit_draw_samples(
        path=args.out, model=model, samples=x, data=data, context=context, title=title
    )
    if drawn is None and len(shape) == 3:
        try:
            save_sample_grid(x, args.out, nrow=math.ceil(math.sqrt(args.n)))
        except OSError as error:
            if not is_no_room(error):
                raise
            intact = "No partial PNG was left there."
            raise disk_full_error(error, args.out, intact=intact, what=repr(str(args.out)), smaller="fewer samples, --n") from None
    elif drawn is None:
        raise JemkitError(
            f"jemkit sample draws images (C, H, W) as a grid and other inputs through plugins that implement "
            f"jemkit_draw_samples (the built-in toy_plot draws 2-D points), but no installed plugin draws this "
            f"run's inputs of shape {shape}."
        )
    diagnostics = "  ".join(f"{k} {v:.4g}" for k, v in sampler.last_diagnostics.items())
    console.print(f"wrote {args.n} samples from {checkpoint_path} to {args.out}  {diagnostics}", highlight=False)
    return 0


def _set_reinit(init: Any, probability: float) -> None:
    """Set a buffer initialiser's restart probability (``--reinit``); an error for one without."""
    if not hasattr(init, "reinit_freq"):
        raise RecipeError(
            f"--reinit: this run's chain initialiser ({type(init).__name__}) keeps no replay buffer, so no chain "
            "is re-initialised; leave --reinit out."
        )
    init.reinit_freq = float(probability)
