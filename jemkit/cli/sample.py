"""``jemkit sample RUN_DIR --out FILE.png``: draw samples from a trained run's checkpoint.

The model and sampler are rebuilt from ``RUN_DIR/config.yaml`` (the data set is built too: it
gives the input shape and classes, and fitted initialisers read their cache from the run
directory), the weights and sampler state are loaded from the newest step checkpoint in
``RUN_DIR/checkpoints`` (or ``--checkpoint PATH``), and the chains run with the recipe's
transition. Image runs give a PNG grid; 2-D runs give the density picture of
:mod:`jemkit_plugins.evaluation.toy_plot` with the samples.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from jemkit.config import read_run_config
from jemkit.errors import CheckpointError, JemkitError, RecipeError

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
    parser.add_argument(
        "--checkpoint", type=Path, metavar="PATH", help="checkpoint file (default: newest in RUN_DIR/checkpoints)"
    )
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
        help="chain starts: the run's own initialiser as the checkpoint left it (buffer, default: its "
        "replay buffer, or the fresh draws of a stateless initialiser) or uniform noise in [-1, 1] (noise)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the chains (default 0)")
    parser.add_argument("--device", help="device to sample on (default: the recipe's device)")
    parser.set_defaults(handler=sample_command)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise RecipeError(f"--n must be at least 1, got {args.n}.")
    if args.steps is not None and args.steps < 0:
        raise RecipeError(f"--steps must be non-negative, got {args.steps}.")
    if args.out.suffix.lower() != ".png":
        raise RecipeError(f"--out {str(args.out)!r} must name a .png file.")


def _checkpoint_path(run_dir: Path, explicit: Path | None) -> Path:
    from jemkit.checkpoint import list_checkpoints

    if explicit is not None:
        if not explicit.is_file():
            raise CheckpointError(f"Checkpoint {str(explicit)!r} does not exist. Pass an existing .safetensors file.")
        return explicit
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise CheckpointError(
            f"Run directory {str(run_dir)!r} has no checkpoint (looked in {str(run_dir / 'checkpoints')!r}). "
            "Train it first (`jemkit run`), or pass --checkpoint PATH."
        )
    return found[-1]


def sample_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit sample``: rebuild a run's model and sampler, load a checkpoint, write samples as PNG."""
    _check_args(args)
    cfg = read_run_config(args.run_dir)
    checkpoint_path = _checkpoint_path(args.run_dir, args.checkpoint)
    if args.device:
        cfg.device = args.device

    import torch  # heavy imports only once the arguments are known to be good

    from jemkit.build import build_data, build_model, build_sampler, resolve_device, seed_everything
    from jemkit.checkpoint import load_checkpoint
    from jemkit.cli import report_plugin_failures
    from jemkit.contracts import BuildContext
    from jemkit.plugin_manager import load_plugins
    from jemkit.samples import save_sample_grid
    from jemkit_plugins.samplers.sampling import UniformNoise

    plugins = load_plugins()
    report_plugin_failures(plugins, errors)
    source = str(args.run_dir / "config.yaml")
    device = resolve_device(cfg.get("device", "auto"))
    seed_everything(int(cfg.get("seed", 1)))
    context = BuildContext(device=device, run_dir=args.run_dir, seed=int(cfg.get("seed", 1)))
    data = build_data(plugins, cfg, context, source)
    if args.class_index is not None and not 0 <= args.class_index < data.num_classes:
        raise RecipeError(
            f"--class {args.class_index} is not a class of this run: its data set has {data.num_classes} "
            f"classes, indices 0 to {data.num_classes - 1}."
        )
    model = build_model(plugins, cfg, context, source)
    sampler = build_sampler(plugins, cfg, context, source)
    state = load_checkpoint(checkpoint_path, map_location=device).state
    try:
        model.load_state_dict(state["model"])
        if args.source == "buffer":
            sampler.load_state_dict(state.get("sampler", {}))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"Checkpoint {str(checkpoint_path)!r} does not fit the model or sampler of {source}: "
            f"{str(exc).splitlines()[0]}. Pass a checkpoint written by this run."
        ) from None
    if args.source == "noise":
        sampler.init = UniformNoise(tuple(context.input_shape))

    seed_everything(args.seed)
    y = None if args.class_index is None else torch.full((args.n,), args.class_index, dtype=torch.long, device=device)
    x = sampler.sample(model, args.n, y=y, steps=args.steps, device=device, persist=False)
    shape = tuple(context.input_shape)
    if len(shape) == 3:
        save_sample_grid(x, args.out, nrow=math.ceil(math.sqrt(args.n)))
    elif shape == (2,):
        from jemkit_plugins.evaluation.toy_plot import save_density_plot, training_inputs

        data_x = training_inputs(data.train, 2000)
        save_density_plot(args.out, model, data_x, x, title=str(cfg.get("name", "")))
    else:
        raise JemkitError(
            f"jemkit sample draws images (C, H, W) or 2-D points, but this run's inputs have shape {shape}."
        )
    diagnostics = "  ".join(f"{k} {v:.4g}" for k, v in sampler.last_diagnostics.items())
    console.print(f"wrote {args.n} samples from {checkpoint_path} to {args.out}  {diagnostics}", highlight=False)
    return 0
