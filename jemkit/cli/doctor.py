"""``jemkit doctor [--json]``: versions, devices, threads, plugins, data roots and caches for a bug report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from jemkit.plugin_manager import load_plugins


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit doctor``."""
    doctor = subparsers.add_parser(
        "doctor", help="print what a bug report needs (versions, devices, threads, plugins, data, caches)",
        description="Print jemkit, torch, CUDA, CPU and thread facts, every plugin package with its components, "
        "every plugin failure, the data roots and the cache folders. Paste the output into a bug report.",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of tables")
    doctor.set_defaults(handler=doctor_command)


def doctor_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit doctor``: the report of :func:`jemkit.doctor.collect` as tables or JSON."""
    from jemkit.cli import builtin_parser
    from jemkit.doctor import collect

    report = collect(load_plugins(), builtin_parser()[1])  # plugin commands meet the built-in ones
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    console.print(render(report))
    return 0


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:  # Text cells: paths and error messages are not rich markup
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    return table


def render(report: dict[str, Any]) -> Group:
    """The report as rich tables: environment, plugin packages, plugin failures, data roots, caches."""
    from jemkit.doctor import flatten

    parts: list[Any] = [_table("environment", ("fact", "value"), flatten(report))]
    packages = [
        (
            p["package"], p["version"], ", ".join(p["plugins"]),
            ", ".join(f"{c['kind']} {c['name']}" for c in p["components"]) or "-",
            ", ".join(p["commands"]) or "-",
        )
        for p in report["plugins"]
    ]
    parts.append(_table("plugin packages", ("package", "version", "plugins", "components", "commands"), packages))
    failures = [(f["plugin"], f["origin"], f["stage"], f["error"]) for f in report["plugin_failures"]]
    if failures:
        parts.append(_table("plugin failures", ("plugin", "origin", "stage", "reason"), failures))
    else:
        parts.append(Text("plugin failures: none"))
    roots = [
        (r["path"], "yes" if r["exists"] else "no", ", ".join(r["entries"]) or "-", ", ".join(r["used_by"]))
        for r in report["data_roots"]
    ]
    parts.append(_table("data roots (defaults, relative to this folder)", ("path", "exists", "holds", "read by"), roots))
    caches = [
        (c["name"], c["path"], "yes" if c["exists"] else "no",
         f"{c['bytes'] / 2**20:.1f} MiB in {c['files']} files" + (" (at least)" if c["partial"] else ""))
        for c in report["caches"]
    ]
    parts.append(_table("caches", ("cache", "path", "exists", "size"), caches))
    return Group(*parts)
