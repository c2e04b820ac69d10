"""``jemkit run RECIPE [key=value ...]`` and ``jemkit run --resume RUN_DIR``: train a recipe."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jemkit import sweep
from jemkit.cli import report_plugin_failures
from jemkit.config import apply_overrides, check_structure, load_recipe, read_run_config, to_yaml
from jemkit.entry import apply_env_defaults
from jemkit.errors import RecipeError
from jemkit.plugin_manager import load_plugins


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit run``."""
    run = subparsers.add_parser("run", help="train a recipe", description="Train the experiment a recipe describes.")
    run.add_argument("recipe", nargs="?", help="recipe YAML file, e.g. recipes/jem_digits.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=5")
    run.add_argument("--out", type=Path, help="run directory (default runs/<recipe-name>-<timestamp>)")
    run.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    run.add_argument(
        "--resume", type=Path, metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (a sweep directory: finish its missing members)",
    )
    run.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train data-parallel on N local processes (launches torchrun; gloo on CPU, NCCL on CUDA)",
    )
    sweep.add_sweep_options(run)
    run.set_defaults(handler=run_command)


def default_run_dir(recipe_name: str, root: Path = Path("runs")) -> Path:
    """``runs/<recipe-name>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{recipe_name}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{recipe_name}-{stamp}-{suffix}"
    return candidate


def _check_fresh_run_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RecipeError(f"--out {str(path)!r} is a file, not a directory. Choose another run directory.")
    if path.is_dir() and any(path.iterdir()):
        raise RecipeError(
            f"Run directory {str(path)!r} already holds files; jemkit does not overwrite a run. "
            f"Continue it with `jemkit run --resume {path}`, or pass another --out."
        )


def _resume_config(run_dir: Path, overrides: list[str]):
    """The stored recipe of ``run_dir`` with ``overrides`` applied."""
    cfg = apply_overrides(read_run_config(run_dir), overrides, source=str(run_dir / "config.yaml"))
    check_structure(cfg, source=str(run_dir / "config.yaml"))
    return cfg


def run_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit run``: train a recipe, or resume a run directory."""
    if sweep.sweep_requested(args):  # --seeds, -m or --resume SWEEP_DIR: see jemkit/sweep.py
        return sweep.sweep_command(args, console, errors, default_dir=default_run_dir)
    overrides = list(args.overrides)
    if args.resume is not None:
        if args.recipe is not None:
            if "=" not in args.recipe:
                raise RecipeError(
                    "Pass either a recipe or --resume RUN_DIR, not both: a resumed run uses the "
                    "config.yaml stored in its directory (overrides key=value still apply)."
                )
            overrides.insert(0, args.recipe)
        cfg = _resume_config(args.resume, overrides)
        run_dir = args.resume
        source = str(args.resume / "config.yaml")
    else:
        if args.recipe is None:
            raise RecipeError("`jemkit run` needs a recipe file, e.g. `jemkit run recipes/jem_digits.yaml`.")
        cfg = load_recipe(args.recipe, overrides)
        run_dir = args.out or default_run_dir(str(cfg.name))
        source = str(args.recipe)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    if args.nproc > 1:
        return launch_local_processes(args, run_dir, errors)

    from jemkit import defaults, distributed  # heavy imports (torch) only when training
    from jemkit.build import resolve_device
    from jemkit.train import Trainer

    dist_info = distributed.join(resolve_device(cfg.get("device", defaults.DEVICE)))  # the one set-up
    if dist_info.enabled:
        run_dir = Path(distributed.broadcast_object(str(run_dir), dist_info))  # rank 0's timestamp
        if not dist_info.is_main:
            console.quiet = True
    plugins = load_plugins()
    if dist_info.is_main:
        report_plugin_failures(plugins, errors)
    if args.resume is None:
        _check_fresh_run_dir(run_dir)
    distributed.barrier(dist_info)
    trainer = Trainer(plugins, cfg, run_dir, console=console, source=source, dist=dist_info)
    if args.resume is not None:
        checkpoint = trainer.resume_from_latest()
        console.print(f"resuming [bold]{cfg.name}[/bold] from {checkpoint} (step {trainer.step})")
    trainer.prepare_run_dir()
    console.print(f"run [bold]{cfg.name}[/bold] on {trainer.device} -> {run_dir}")
    with _progress(console, trainer) as progress:
        summary = trainer.fit(None if progress.disable else progress)
    console.print(summary_table(summary, run_dir))
    distributed.shutdown()
    return 0


def launch_local_processes(args: argparse.Namespace, run_dir: Path, errors: Console) -> int:
    """``jemkit run --nproc N``: the same command under ``torchrun --standalone`` on N processes."""
    import subprocess

    if args.nproc < 1:
        raise RecipeError(f"--nproc must be at least 1, got {args.nproc}.")
    argv = ["run"]
    if args.resume is not None:
        argv += ["--resume", str(args.resume)]
    else:
        argv += [str(args.recipe), "--out", str(run_dir)]
    argv += list(args.overrides)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
        "-m", "jemkit", *argv,
    ]
    errors.print(f"launching {args.nproc} processes: {' '.join(command)}", highlight=False, soft_wrap=True)
    env = dict(os.environ)
    apply_env_defaults(env)  # OMP_WAIT_POLICY=PASSIVE for the workers even when main() ran in-process
    return subprocess.call(command, env=env)


def _progress(console: Console, trainer: Any) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not (trainer.params.progress and console.is_terminal),
    )


def summary_table(summary: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"summary ({run_dir})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table
