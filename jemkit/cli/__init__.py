"""The ``jemkit`` command line: one module per subcommand.

Each module named in :data:`COMMAND_MODULES` has ``add_parser(subparsers)``, which registers its
parser with ``set_defaults(handler=...)``; a handler is ``(args, console, errors) -> int``. A new
subcommand is one module plus one line here. Every error a user can cause ends in one clear
paragraph on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rich.console import Console

from jemkit import __version__
from jemkit.errors import Interrupted, JemkitError
from jemkit.plugin_manager import PluginSet

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

#: Subcommand modules, in the order ``jemkit --help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "jemkit.cli.run",
    "jemkit.cli.list_plugins",
    "jemkit.cli.sample",
    "jemkit.cli.eval",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jemkit", description="Train and evaluate Joint Energy-based Models from YAML recipes."
    )
    parser.add_argument("--version", action="version", version=f"jemkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
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
    except Interrupted as exc:
        errors.print(f"[yellow]{exc}[/yellow]", highlight=False)
        return EXIT_INTERRUPTED
    except JemkitError as exc:
        errors.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR


def report_plugin_failures(plugins: PluginSet, errors: Console) -> None:
    """Print one warning paragraph per plugin that failed to load or register."""
    for failure in plugins.failures:
        errors.print(f"[yellow]warning:[/yellow] {failure.message()}", highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
