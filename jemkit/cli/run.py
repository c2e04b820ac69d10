"""``jemkit run RECIPE [key=value ...]`` and ``jemkit run --resume RUN_DIR``: train a recipe.

The process that trains (or resumes) a run directory holds its lock (:class:`jemkit.run_lock.RunLock`)
from before it writes anything until it exits, so a second writer is refused by name. Temporary
files that killed writes left behind are removed at the start. A resumed run applies each
override for real or refuses it (:func:`jemkit.config.check_resume_changes`); ``--checkpoint``
picks what it continues from. A full disk, an unwritable ``--out`` and SIGINT/SIGTERM end in one
clear paragraph that says what is intact and which command continues.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from jemkit import sweep
from jemkit.checkpoint import command, latest_checkpoint
from jemkit.cli import report_plugin_failures
from jemkit.config import (
    apply_overrides,
    check_resume_changes,
    check_structure,
    environment_variables,
    load_recipe,
    read_run_config,
    recipe_changes,
    to_yaml,
)
from jemkit.disk import disk_full_error, is_no_room
from jemkit.entry import apply_env_defaults
from jemkit.errors import DiskFullError, Interrupted, JemkitError, RecipeError
from jemkit.plugin_manager import load_plugins
from jemkit.run_lock import LOCK_NAME, RunLock
from jemkit.run_state import free_name
from jemkit.stopping import StopRequested

#: ``--checkpoint`` of ``jemkit run --resume``.
CHECKPOINT_HELP = (
    "with --resume: what to continue from: last (default: the newest step checkpoint), best, a step number "
    "or a checkpoint file; step checkpoints of later steps are then set aside as superseded_* (not deleted)"
)


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
    run.add_argument("--checkpoint", metavar="WHICH", help=CHECKPOINT_HELP)
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


def _holds_files(path: Path) -> bool:
    """Whether ``path`` holds any file besides the run lock (empty folders do not count: a run that
    stopped before writing anything leaves only those)."""
    for root, _, files in os.walk(path):
        if any(not (Path(root) == path and name == LOCK_NAME) for name in files):
            return True
    return False


def _remove_if_unused(run_dir: Path) -> None:
    """Delete ``run_dir`` (this process created it and still holds its lock) if it holds no file but
    the lock: only empty folders."""
    if not run_dir.is_dir() or _holds_files(run_dir):
        return
    (run_dir / LOCK_NAME).unlink(missing_ok=True)
    for root, _, _ in sorted(os.walk(run_dir), key=lambda item: -len(item[0])):
        try:
            os.rmdir(root)
        except OSError:
            return


def _check_fresh_run_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RecipeError(f"--out {str(path)!r} is a file, not a directory. Choose another run directory.")
    if path.is_dir() and _holds_files(path):
        raise RecipeError(
            f"Run directory {str(path)!r} already holds files; jemkit does not overwrite a run. "
            f"Continue it with `{command('run', '--resume', path)}`, or pass another --out."
        )


def _unwritable(path: Path, error: OSError, resume: bool) -> RecipeError:
    """The error for a run directory that cannot be created or written."""
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    reasons = {
        errno.EROFS: "the file system there is read-only",
        errno.ENOTDIR: f"{str(blocker)!r} is a file, not a folder" if blocker else "a part of the path is a file",
        errno.EEXIST: f"{str(blocker)!r} is a file, not a folder" if blocker else "a file is in the way",
        errno.EACCES: "this user may not write there",
        errno.EPERM: "the system does not allow writing there",
        errno.ENOENT: "that location cannot hold new folders (a virtual file system such as /proc)",
    }
    reason = reasons.get(error.errno or 0, error.strerror or str(error))
    fix = (
        "Copy the run directory to a writable disk and resume the copy."
        if resume
        else "Pass --out with a folder on a writable disk (or leave --out away for runs/<name>-<time>)."
    )
    return RecipeError(f"Cannot write the run directory {str(path)!r}: {reason} ({error.strerror or error}). {fix}")


def _lock(run_dir: Path, resume: bool) -> RunLock:
    """Take the run directory's lock (creating the directory); clear errors for unwritable places."""
    hint = (
        "Wait for that process to finish, or stop it (SIGTERM makes it write a checkpoint), then run "
        f"`{command('run', '--resume', run_dir)}` again."
        if resume
        else None
    )
    try:
        return RunLock(run_dir, "training", hint).acquire()
    except OSError as exc:
        raise _unwritable(run_dir, exc, resume) from None


def _resume_config(run_dir: Path, overrides: list[str]):
    """The stored recipe of ``run_dir`` with ``overrides`` applied."""
    cfg = apply_overrides(read_run_config(run_dir), overrides, source=str(run_dir / "config.yaml"))
    check_structure(cfg, source=str(run_dir / "config.yaml"))
    return cfg


def _continue_command(args: argparse.Namespace, run_dir: Path, overrides: list[str]) -> str:
    """The command that continues after a stop or a failed write: ``--resume`` once the run directory
    holds its recipe, else the command that started it."""
    if (run_dir / "config.yaml").is_file():
        return command("run", "--resume", run_dir)
    return command("run", args.recipe, *overrides, "--out", run_dir)


def run_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit run``: train a recipe, or resume a run directory."""
    if sweep.sweep_requested(args):  # --seeds, -m or --resume SWEEP_DIR: see jemkit/sweep.py
        return sweep.sweep_command(args, console, errors, default_dir=default_run_dir)
    if args.checkpoint is not None and args.resume is None:
        raise RecipeError(
            "--checkpoint picks the checkpoint a resumed run continues from; pass it together with --resume RUN_DIR."
        )
    overrides = list(args.overrides)
    changes: list[Any] = []
    if args.resume is not None:
        if args.recipe is not None:
            if "=" not in args.recipe:
                raise RecipeError(
                    "Pass either a recipe or --resume RUN_DIR, not both: a resumed run uses the "
                    "config.yaml stored in its directory (overrides key=value still apply)."
                )
            overrides.insert(0, args.recipe)
        stored = read_run_config(args.resume)
        cfg = _resume_config(args.resume, overrides)
        changes = recipe_changes(stored, cfg)
        new_run = command("run", args.resume / "config.yaml", *overrides, "--out", free_name(Path(f"{args.resume}-new")))
        check_resume_changes(changes, new_run)
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
    try:
        return _train(args, console, errors, cfg, run_dir, source, overrides, changes)
    except StopRequested as stop:  # before or after fit(), which handles its own phases
        again = _continue_command(args, run_dir, overrides)
        raise Interrupted(
            f"Stopped by {stop.name} during start-up, before training began; the run directory is as it was. "
            f"Start it again with `{again}`."
        ) from None


def _train(
    args: argparse.Namespace,
    console: Console,
    errors: Console,
    cfg: Any,
    run_dir: Path,
    source: str,
    overrides: list[str],
    changes: list[Any],
) -> int:
    from jemkit import defaults, distributed  # heavy imports (torch) only when training
    from jemkit.build import resolve_device
    from jemkit.train import Trainer

    dist_info = distributed.join(resolve_device(cfg.get("device", defaults.DEVICE)))  # the one set-up
    if dist_info.enabled:
        run_dir = Path(distributed.broadcast_object(str(run_dir), dist_info))  # rank 0's timestamp
        if not dist_info.is_main:
            console.quiet = True
    resume = args.resume is not None
    lock: RunLock | None = None
    created = not run_dir.exists()
    finished = False
    if dist_info.is_main:
        if not resume:
            _check_fresh_run_dir(run_dir)
        lock = _lock(run_dir, resume)
    try:
        if dist_info.is_main and not resume:
            _check_fresh_run_dir(run_dir)  # again, now that no other writer can start meanwhile
        plugins = load_plugins()
        if dist_info.is_main:
            report_plugin_failures(plugins, errors)
        distributed.barrier(dist_info)
        trainer = Trainer(plugins, cfg, run_dir, console=console, source=source, dist=dist_info)
        if dist_info.is_main:
            removed = trainer.run_state.clean_leftovers()
            if removed:
                console.print(f"removed {len(removed)} temporary file(s) of interrupted writes", highlight=False)
        if resume:
            point = trainer.resume(args.checkpoint or "last", changes, overrides)
            console.print(f"[bold]{cfg.name}[/bold]: {point.describe()}", highlight=False, soft_wrap=True)
        variables = environment_variables(cfg)
        if variables:  # their names only: config.yaml and checkpoints keep ${oc.env:NAME}, never the values
            trainer.pending_events.append({"step": trainer.step, "event": "environment", "variables": variables})
        trainer.prepare_run_dir()
        console.print(f"run [bold]{cfg.name}[/bold] on {trainer.device} -> {run_dir}")
        with _progress(console, trainer) as progress:
            summary = trainer.fit(None if progress.disable else progress)
        finished = True
    except DiskFullError as exc:
        raise DiskFullError(f"{exc} Then continue with `{_continue_command(args, run_dir, overrides)}`.") from None
    except JemkitError as exc:
        if not is_no_room(exc.__cause__):
            raise
        # a plugin (a logger) whose write failed for lack of room: the same clear error as jemkit's own writes
        raise _no_room(exc.__cause__, args, run_dir, overrides) from None
    except OSError as exc:
        if is_no_room(exc):
            raise _no_room(exc, args, run_dir, overrides) from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise _unwritable(run_dir, exc, resume) from None
        raise
    finally:
        if lock is not None:
            if created and not finished:
                _remove_if_unused(run_dir)  # a run that failed before writing anything leaves no folder
            lock.release()
    console.print(summary_table(summary, run_dir))
    distributed.shutdown()
    return 0


def _no_room(exc: Any, args: argparse.Namespace, run_dir: Path, overrides: list[str]) -> DiskFullError:
    """The error for a write of the run that failed for lack of room (``exc``: the OSError)."""
    latest = latest_checkpoint(run_dir / "checkpoints")
    intact = f"The newest checkpoint, {latest.name}, is intact." if latest else ""
    where = f"{str(exc.filename)!r}" if exc.filename else f"a file in the run directory {str(run_dir)!r}"
    error = disk_full_error(exc, exc.filename or run_dir, intact=intact, what=where)
    return DiskFullError(f"{error} Then continue with `{_continue_command(args, run_dir, overrides)}`.")


def launch_local_processes(args: argparse.Namespace, run_dir: Path, errors: Console) -> int:
    """``jemkit run --nproc N``: the same command under ``torchrun --standalone`` on N processes."""
    import subprocess

    if args.nproc < 1:
        raise RecipeError(f"--nproc must be at least 1, got {args.nproc}.")
    argv = ["run"]
    if args.resume is not None:
        argv += ["--resume", str(args.resume)]
        if args.checkpoint is not None:
            argv += ["--checkpoint", str(args.checkpoint)]
    else:
        argv += [str(args.recipe), "--out", str(run_dir)]
    argv += list(args.overrides)
    command_line = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
        "-m", "jemkit", *argv,
    ]
    errors.print(f"launching {args.nproc} processes: {' '.join(command_line)}", highlight=False, soft_wrap=True)
    env = dict(os.environ)
    apply_env_defaults(env)  # OMP_WAIT_POLICY=PASSIVE for the workers even when main() ran in-process
    return subprocess.call(command_line, env=env)


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
        if key == "history":
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table
