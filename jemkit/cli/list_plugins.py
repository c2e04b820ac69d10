"""``jemkit list-plugins [NAME ...] [--params] [--json]``: every component and where it comes from."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jemkit import __version__
from jemkit.cli import report_plugin_failures
from jemkit.param_schema import ParamInfo, describe_params
from jemkit.plugin_manager import PluginSet, load_plugins
from jemkit.registry import Component


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit list-plugins``."""
    listing = subparsers.add_parser("list-plugins", help="list plugins and their components")
    listing.add_argument("names", nargs="*", metavar="NAME", help="only the components with these names (any kind)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument(
        "--params", action="store_true",
        help="also list each component's parameters (recipe keys): type, default and doc",
    )
    listing.set_defaults(handler=list_plugins)


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
    for row in rows:  # Text cells: a description such as "clamped to [low, high]" is not rich markup
        table.add_row(*(Text(str(row[k])) for k in ("plugin", "origin", "kind", "name", "description")))
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
