"""``jemkit new-plugin NAME --kind KIND [--out DIR]``: write an installable plugin package."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from jemkit.scaffold import SCAFFOLD_KINDS


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit new-plugin``."""
    parser = subparsers.add_parser(
        "new-plugin", help="write a new third-party plugin package (one component, tests, recipe)",
        description="Write an installable plugin package for one component: pyproject.toml with the jemkit "
        "entry point, the module (parameters dataclass, component, factory, registration hook), tests "
        "that run jemkit.testing, a recipe that uses it, and a README.",
    )
    parser.add_argument("name", help="component name, e.g. momentum-sgld (package jemkit-momentum-sgld)")
    parser.add_argument("--kind", required=True, choices=SCAFFOLD_KINDS, help="the kind of component")
    parser.add_argument("--out", type=Path, help="folder to write (default ./jemkit-NAME); must not hold files")
    parser.set_defaults(handler=new_plugin_command)


def new_plugin_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit new-plugin``: write the package and say how to install, test and run it."""
    from jemkit.plugin_manager import load_plugins
    from jemkit.scaffold import PluginNames, new_plugin

    taken = set(load_plugins().registries[args.kind].names())
    folder = new_plugin(args.name, args.kind, args.out, taken)
    names = PluginNames.from_name(args.name)
    where = escape(str(folder))
    console.print(f"wrote {args.kind} plugin [bold]{names.distribution}[/bold] in {where}", highlight=False)
    console.print(
        f"next:\n  pip install -e {where}\n  jemkit list-plugins {names.component}\n"
        f"  python -m pytest {where}/tests\n  jemkit run {where}/recipe.yaml",
        highlight=False,
    )
    return 0
