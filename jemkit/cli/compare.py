"""``jemkit compare RUN_OR_SWEEP ...``: mean, sd, 95% CI and n of every number, per group of runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from jemkit.compare import BANDS, compare, markdown, plot_curves, rich_table
from jemkit.errors import JemkitError
from jemkit.run_index import RunInfo, find_runs, read_run


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit compare``."""
    cmp = subparsers.add_parser(
        "compare", help="compare runs: mean, sd, 95%% CI per group",
        description="Group runs (by recipe, or --group-by config keys) and give, for every numeric value "
        "of summary.json and of the newest eval report (eval.<dotted key>), the mean, the sample standard "
        "deviation (n-1), the 95% confidence interval of the mean (Student t, n-1 degrees of freedom) and n.",
    )
    cmp.add_argument(
        "paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP", help="run directories, sweep directories or folders of runs"
    )
    cmp.add_argument(
        "--group-by", metavar="KEY[,KEY]",
        help="dotted config key(s) whose values form the groups, e.g. optimizer.lr (default: the recipe name)",
    )
    cmp.add_argument("--metrics", metavar="A,B", help="only these numbers (names or patterns such as 'test/*')")
    cmp.add_argument("--md", type=Path, metavar="FILE", help="also write the table as Markdown to FILE")
    cmp.add_argument("--json", action="store_true", help="print JSON instead of the table")
    cmp.add_argument("--plot", metavar="METRIC", help="overlay METRIC's learning curves from metrics.jsonl in a PNG")
    cmp.add_argument("--out", type=Path, metavar="FILE.png", help="where --plot writes (default <METRIC>.png)")
    cmp.add_argument(
        "--band", choices=BANDS, default="minmax", help="--plot band per group: min-max of the runs or mean ± sd"
    )
    cmp.set_defaults(handler=compare_command)


def collect_runs(paths: list[Path]) -> list[RunInfo]:
    """Every run at or below ``paths``, each once, named relative to the path it was found under."""
    seen: set[Path] = set()
    runs: list[RunInfo] = []
    for path in paths:
        for run_dir in find_runs(path):
            key = run_dir.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(read_run(run_dir, path.parent if run_dir == path else path))
    if not runs:
        raise JemkitError(
            f"No run directories (folders with config.yaml) in {', '.join(map(str, paths))}. Pass run or "
            "sweep directories written by `jemkit run`."
        )
    return runs


def compare_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit compare``: print (or write) the comparison table and, with ``--plot``, the curves."""
    if args.out is not None and not args.plot:
        raise JemkitError("--out names the PNG of --plot METRIC; add --plot (e.g. --plot test/acc) or drop --out.")
    runs = collect_runs(args.paths)
    keys = _split(args.group_by)
    comparison = compare(runs, keys, _split(args.metrics) or None)
    notes = errors if args.json else console
    unfinished = [r.name for r in runs if r.summary is None]
    if unfinished:
        notes.print(
            f"note: {len(unfinished)} run(s) without summary.json (running, stopped or failed) add only their "
            f"eval numbers and curves: {', '.join(unfinished)}",
            highlight=False, markup=False, soft_wrap=True,
        )
    if args.json:
        sys.stdout.write(json.dumps(comparison.to_json(), indent=2) + "\n")
    else:
        console.print(rich_table(comparison))
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(comparison), encoding="utf-8")
        notes.print(f"wrote {args.md}", highlight=False, markup=False)
    if args.plot:
        out = args.out or Path(args.plot.replace("/", "_") + ".png")
        plot_curves(runs, args.plot, out, keys, band=args.band)
        notes.print(f"wrote {out}", highlight=False, markup=False)
    return 0


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]
