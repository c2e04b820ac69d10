"""The ``jemkit`` command line: ``run`` and ``list-plugins``.

Every error a user can cause ends in one clear paragraph on stderr and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from jemkit import __version__
from jemkit.config import apply_overrides, check_structure, load_recipe, read_run_config, to_yaml
from jemkit.entry import apply_env_defaults
from jemkit.errors import JemkitError, RecipeError
from jemkit.param_schema import ParamInfo, describe_params
from jemkit.plugin_manager import PluginSet, load_plugins
from jemkit.registry import Component

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: Modules that add further subcommands: each has ``add_parser(subparsers)``, which registers
#: its parser with ``set_defaults(handler=...)``; a handler is ``(args, console, errors) -> int``.
COMMAND_MODULES: tuple[str, ...] = ("jemkit.cli_sample", "jemkit.cli_eval")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jemkit", description="Train and evaluate Joint Energy-based Models from YAML recipes."
    )
    parser.add_argument("--version", action="version", version=f"jemkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="train a recipe", description="Train the experiment a recipe describes.")
    run.add_argument("recipe", nargs="?", help="recipe YAML file, e.g. recipes/jem_digits.yaml")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=5")
    run.add_argument("--out", type=Path, help="run directory (default runs/<recipe-name>-<timestamp>)")
    run.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    run.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train data-parallel on N local processes (launches torchrun; gloo on CPU, NCCL on CUDA)",
    )
    run.set_defaults(handler=run_command)

    listing = commands.add_parser("list-plugins", help="list plugins and their components")
    listing.add_argument("names", nargs="*", metavar="NAME", help="only the components with these names (any kind)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument(
        "--params", action="store_true",
        help="also list each component's parameters (recipe keys): type, default and doc",
    )
    listing.set_defaults(handler=list_plugins)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jemkit`` console script; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`run RECIPE --out DIR key=value`); argparse leaves those over.
    stray = [item for item in extra if item.startswith("-") or "=" not in item or args.command != "run"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    console = Console()
    errors = Console(stderr=True)
    try:
        return args.handler(args, console, errors)
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED
    except JemkitError as exc:
        from jemkit.train import Interrupted

        if isinstance(exc, Interrupted):
            errors.print(f"[yellow]{exc}[/yellow]", highlight=False)
            return EXIT_INTERRUPTED
        errors.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


def report_plugin_failures(plugins: PluginSet, errors: Console) -> None:
    """Print one warning paragraph per plugin that failed to load or register."""
    for failure in plugins.failures:
        errors.print(f"[yellow]warning:[/yellow] {failure.message()}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- list-plugins


def plugin_rows(plugins: PluginSet, components: list[Component] | None = None) -> list[dict[str, Any]]:
    """One row per component (default: every registered one): plugin, origin, kind, name, description."""
    return [
        {
            "plugin": c.plugin,
            "origin": plugins.origins.get(c.plugin, "?"),
            "kind": c.kind,
            "name": c.name,
            "description": c.description,
        }
        for c in (plugins.registries.components() if components is None else components)
    ]


def list_plugins(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit list-plugins [NAME ...] [--params]``: a table (or JSON) of components, their
    origin and, with ``--params``, their parameters."""
    plugins = load_plugins()
    report_plugin_failures(plugins, errors)
    components = plugins.registries.named(args.names) if args.names else plugins.registries.components()
    rows = plugin_rows(plugins, components)
    params = [describe_params(c.params) for c in components] if args.params else None
    if args.json:
        for row, infos in zip(rows, params or ()):
            row["params"] = [p.to_json() for p in infos]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if params is not None:
        for row, infos in zip(rows, params):
            console.print(_component_heading(row))
            console.print(_params_table(infos))
        return 0
    table = Table(title=f"jemkit {__version__} plugins", show_lines=False)
    for column in ("plugin", "origin", "kind", "name", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(row[k] for k in ("plugin", "origin", "kind", "name", "description")))
    console.print(table)
    return 0


def _component_heading(row: dict[str, Any]) -> Text:
    """``kind name``, its description, and where it comes from: one heading per component."""
    return Text.assemble(
        "\n", (f"{row['kind']} ", "cyan"), (row["name"], "bold"), f"  {row['description']}",
        (f"  [{row['plugin']}, {row['origin']}]", "dim"),
    )


def _params_table(infos: list[ParamInfo]) -> Table | Text:
    """A component's parameters: recipe key, type, default (``required`` when none) and doc."""
    if not infos:
        return Text("  (no parameters)", style="dim")
    table = Table(box=None, padding=(0, 2, 0, 2), show_edge=False, header_style="dim")
    for column in ("parameter", "type", "default", "doc"):
        table.add_column(column, overflow="fold")
    for p in infos:
        table.add_row(Text(p.name), Text(p.type), Text(p.default_text()), Text(p.doc, style="dim"))
    return table


# --------------------------------------------------------------------------- run


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

    from jemkit import distributed  # heavy imports (torch) only when training
    from jemkit.build import resolve_device
    from jemkit.train import Trainer

    dist_info = distributed.from_environment()
    if dist_info.enabled:
        distributed.initialise(dist_info, resolve_device(cfg.get("device", "auto")))
        run_dir = Path(distributed.broadcast_object(str(run_dir), dist_info))  # rank 0's timestamp
        if not dist_info.is_main:
            console.quiet = True
    plugins = load_plugins()
    if dist_info.is_main:
        report_plugin_failures(plugins, errors)
    if args.resume is None:
        _check_fresh_run_dir(run_dir)
    distributed.barrier(dist_info)
    trainer = Trainer(plugins, cfg, run_dir, console=console, source=source)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
