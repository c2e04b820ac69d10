"""``jemkit runs [DIR] [--json]``: the runs below a folder, their status and headline numbers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jemkit.run_index import RunInfo, list_runs


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit runs``."""
    runs = subparsers.add_parser(
        "runs", help="list runs: status, steps, test accuracy, wall time",
        description="List every run directory (a folder with config.yaml) below DIR: name, recipe, status "
        "(completed, diverged, or running-or-stopped while there is no summary.json), steps, test/acc, "
        "wall time and start time (from file times: the latest start or resume).",
    )
    runs.add_argument(
        "dir", nargs="?", type=Path, default=Path("runs"), metavar="DIR", help="folder to search (default runs/)"
    )
    runs.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    runs.set_defaults(handler=runs_command)


def runs_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit runs``: a table (or JSON rows) of the runs below ``args.dir``."""
    found = list_runs(args.dir)
    if args.json:
        sys.stdout.write(json.dumps([run.as_row() for run in found], indent=2) + "\n")
        return 0
    if not found:
        errors.print(f"no runs below {args.dir} (a run directory holds config.yaml)", highlight=False)
        return 0
    console.print(runs_table(found, str(args.dir)))
    return 0


def runs_table(runs: list[RunInfo], title: str) -> Table:
    """One row per run: name, recipe, status, steps, test/acc, wall time, start."""
    table = Table(title=f"{len(runs)} run(s) in {title}")
    for column in ("name", "recipe", "status", "steps", "test/acc", "wall", "started"):
        justify = "right" if column in ("steps", "test/acc", "wall") else "left"
        table.add_column(column, justify=justify, overflow="fold")
    for run in runs:
        table.add_row(*(Text(cell) for cell in (
            run.name,
            run.recipe,
            run.status,
            "" if run.steps is None else str(run.steps),
            "" if run.test_acc is None else f"{run.test_acc:.4f}",
            format_duration(run.wall_seconds),
            "" if run.started is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)),
        )))
    return table


def format_duration(seconds: float | None) -> str:
    """``12.3 s`` under a minute, else ``H:MM:SS``; empty for ``None``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
