"""The ``jemkit`` command line: one module per subcommand.

Each module named in :data:`COMMAND_MODULES` has ``add_parser(subparsers)``, which registers its
parser with ``set_defaults(handler=...)``; a handler is ``(args, console, errors) -> int``. A new
subcommand is one module plus one line here. Every error a user can cause ends in one clear
paragraph on stderr and a non-zero exit code, never a traceback. An exception inside a plugin's
code is a paragraph naming the plugin followed by the plugin's own frames; the global ``--debug``
flag (anywhere on the command line, or ``JEMKIT_DEBUG=1``) prints whole tracebacks instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from jemkit import __version__
from jemkit.disk import disk_full_error, is_no_room
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
    "jemkit.cli.runs",
    "jemkit.cli.compare",
    "jemkit.cli.doctor",
    "jemkit.cli.new_plugin",
    "jemkit.cli.import_run",
)


def builtin_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The ``jemkit`` parser with the built-in commands only, and its sub-parser action."""
    parser = argparse.ArgumentParser(
        prog="jemkit", description="Train and evaluate Joint Energy-based Models from YAML recipes."
    )
    parser.add_argument("--version", action="version", version=f"jemkit {__version__}")
    parser.add_argument(
        "--debug", action="store_true",
        help="print whole tracebacks: of an error inside a plugin's code, and of every other error (also JEMKIT_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(commands)
    return parser, commands


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The built-in commands, plus the plugins' (``jemkit_register_commands``) when ``argv`` may
    name one, so built-in commands start without loading every plugin."""
    parser, commands = builtin_parser()
    if _may_name_plugin_command(argv, commands.choices):
        _add_plugin_commands(commands)
    return parser


def _may_name_plugin_command(argv: Sequence[str], builtin: Mapping[str, Any]) -> bool:
    """Whether ``argv`` names no built-in command (a plugin's, ``--help``, or none at all)."""
    if "--version" in argv:
        return False
    first = next((item for item in argv if not item.startswith("-")), None)
    return first is None or first not in builtin


def _add_plugin_commands(commands: Any) -> None:
    from jemkit.plugin_manager import load_plugins, register_commands

    plugins = load_plugins()
    register_commands(plugins, commands)
    report_plugin_failures(plugins, Console(stderr=True))


class _WarningPrinter(logging.Handler):
    """Prints the ``jemkit`` logger's warnings (recipe keys an override dropped, ...) on stderr."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jemkit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get("JEMKIT_DEBUG", "") not in ("", "0")
    argv = [item for item in argv if item != DEBUG_FLAG]  # global: accepted after the command too
    parser = _parser(argv)
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`run RECIPE --out DIR key=value`); argparse leaves those over.
    stray = [item for item in extra if item.startswith("-") or "=" not in item or args.command != "run"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    console = Console()
    errors = Console(stderr=True)
    log, printer = logging.getLogger("jemkit"), _WarningPrinter(errors)
    log.addHandler(printer)
    try:
        return args.handler(args, console, errors)
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/yellow]")
        return EXIT_INTERRUPTED
    except Interrupted as exc:
        errors.print(f"[yellow]{escape(str(exc))}[/yellow]", highlight=False, soft_wrap=True)  # commands unbroken
        return EXIT_INTERRUPTED
    except JemkitError as exc:
        errors.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        print_traceback(exc, errors, debug)
        return EXIT_USER_ERROR
    except OSError as exc:  # any command's write that found no room (run and eval say more themselves)
        if not is_no_room(exc):
            raise
        what = repr(str(exc.filename)) if exc.filename else "an output file of this command"
        error = disk_full_error(exc, exc.filename or os.getcwd(), what=what, smaller="fewer or smaller outputs")
        errors.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
        print_traceback(exc, errors, debug)
        return EXIT_USER_ERROR
    finally:
        log.removeHandler(printer)


#: The global flag that prints whole tracebacks.
DEBUG_FLAG = "--debug"


def print_traceback(exc: JemkitError, errors: Console, debug: bool) -> None:
    """After an error's paragraph: the plugin's frames of an error inside plugin code (the whole
    traceback with ``debug``), and with ``debug`` the traceback of any other error too."""
    text = getattr(exc, "traceback_text", None)
    if callable(text):
        errors.print(escape(text(full=debug)), highlight=False, soft_wrap=True, style="dim")
    elif debug:
        errors.print(escape("".join(traceback.format_exception(exc)).rstrip()), highlight=False, soft_wrap=True)


def report_plugin_failures(plugins: PluginSet, errors: Console) -> None:
    """Print one warning paragraph per plugin that failed to load or register."""
    for failure in plugins.failures:
        errors.print(f"[yellow]warning:[/yellow] {escape(failure.message())}", highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
