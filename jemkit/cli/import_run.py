"""``jemkit import FORMAT CKPT --out RUN_DIR``: another code base's checkpoint as a jemkit run directory.

``FORMAT`` names a registered importer (registry kind ``importer``; ``jemkit list-plugins`` lists
them, hyphens and underscores are the same: ``jem-ref`` is ``jem_ref``). The work is
:func:`jemkit.importing.import_checkpoint`'s; the run it writes opens with ``jemkit eval`` and
``jemkit sample``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``import`` subcommand."""
    parser = subparsers.add_parser(
        "import",
        help="turn another code base's checkpoint into a jemkit run directory",
        description=(
            "Turn a checkpoint of another JEM code base into a new jemkit run directory (config.yaml, "
            "checkpoints/step_000000.safetensors, imported.json) that `jemkit eval` and `jemkit sample` open. "
            "FORMAT is a registered importer, e.g. jem-ref for the reference JEM code (github wgrathwohl/JEM); "
            "`jemkit list-plugins` lists them. Foreign files are read without running code from them."
        ),
    )
    parser.add_argument("format", metavar="FORMAT", help="importer name, e.g. jem-ref")
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="the checkpoint file to import")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="RUN_DIR", help="new run directory (must not exist, or be empty)"
    )
    parser.add_argument("--name", help="the run's recipe name (default: the checkpoint's file name without suffix)")
    parser.add_argument(
        "--data-root", metavar="DIR", help="folder holding the run's data set, for `jemkit eval` (sets data.root)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of the imported recipe, e.g. data.name=svhn (repeatable)",
    )
    parser.set_defaults(handler=import_command)
    return parser


def import_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit import``: run the importer, write the run directory, say what was inferred."""
    from jemkit.cli import report_plugin_failures
    from jemkit.importing import RECORD_NAME, check_output, check_source, import_checkpoint
    from jemkit.plugin_manager import load_plugins

    check_source(args.checkpoint)  # before loading every plugin
    check_output(args.out)
    plugins = load_plugins()
    report_plugin_failures(plugins, errors)
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    result = import_checkpoint(plugins, args.format, args.checkpoint, args.out, name=args.name, overrides=overrides)
    inferred = result.record["inferred"]
    arch = inferred.get("architecture", {})
    found = ", ".join(f"{k} {v}" for k, v in arch.items()) if arch else "see imported.json"
    run_dir = escape(str(result.run_dir))
    console.print(
        f"imported {escape(str(args.checkpoint))} ({result.record['format']}: {escape(found)}) into "
        f"{run_dir}; what was inferred is in {RECORD_NAME}.\n"
        f"next: jemkit sample {run_dir} --out samples.png, or jemkit eval {run_dir}",
        highlight=False,
        soft_wrap=True,
    )
    return 0
