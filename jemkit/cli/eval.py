"""``jemkit eval RUN_DIR``: measure what the JEM paper measures and write a new report folder,
``RUN_DIR/eval/<timestamp>/`` (or ``--out DIR``), with ``RUN_DIR/eval/latest`` naming the newest.

Registered through ``jemkit.cli.COMMAND_MODULES``. Heavy imports happen only when the command
runs, so other commands stay fast. On a terminal the progress is rich's bars; otherwise (a log
file, a pipe) plain lines (:mod:`jemkit.progress_lines`), at least one every
:data:`PROGRESS_INTERVAL` seconds.
"""

from __future__ import annotations

import argparse
import shlex
from fractions import Fraction
from pathlib import Path
from typing import Any

from rich.console import Console

from jemkit.errors import JemkitError

_SECTIONS = "acc,calibration,ood,robustness,generation"

#: Longest time in seconds between two progress lines when the output is not a terminal.
PROGRESS_INTERVAL = 30.0

#: ``--checkpoint`` and ``--device`` read the same in ``jemkit eval`` and ``jemkit sample``.
CHECKPOINT_HELP = (
    "last (default: the newest step checkpoint), best (best.safetensors), a step number, or a checkpoint file path"
)
DEVICE_HELP = "auto (default: CUDA when available, else CPU), cpu, cuda or cuda:N"


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _number(text: str) -> float:
    """A float, or a fraction such as ``8/255``."""
    text = text.strip()
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (write 0.1 or 8/255)") from None


def _step_or_run(text: str) -> float | str:
    """``run`` (the run's own sampler transition) or a step size."""
    from jemkit.evaluation.settings import RUN_TRANSITION

    if text.strip() == RUN_TRANSITION:
        return RUN_TRANSITION
    try:
        return _number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a step size (e.g. 0.03) nor 'run'") from None


def _numbers(text: str) -> list[float]:
    return [_number(part) for part in _names(text)]


def _assignment(text: str) -> tuple[str, str]:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    return key.strip(), value


def add_parser(subparsers: Any) -> None:
    """Register ``jemkit eval`` and its options."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained run (accuracy, calibration, OOD, robustness, generation)",
        description=(
            "Evaluate a finished run and write report.json, report.md and PNG figures into a new folder, "
            "RUN_DIR/eval/<timestamp>/ (or --out DIR); RUN_DIR/eval/latest names the newest, and no evaluation "
            "replaces another. Defaults come from the run's data set (digits or CIFAR-sized); every setting used "
            "and the command line are recorded in the report. Every number measured on test inputs carries a "
            "95% bootstrap interval. Inputs and PGD epsilons are in [-1, 1] units."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="directory of a finished `jemkit run`")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="RUN_DIR",
        help="a second run evaluated on the same inputs, one column per run; its recipe must define the same test "
        "set (data set, split seed, test fraction, validation size, input noise)",
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write the report here (a new or empty folder) instead of "
        "RUN_DIR/eval/<timestamp>/"
    )
    p.add_argument("--only", type=_names, metavar="LIST", help=f"sections to run (default all): {_SECTIONS}")
    p.add_argument("--checkpoint", metavar="WHICH", help=CHECKPOINT_HELP)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, help="seed of every random draw of the evaluation (default 0)")
    p.add_argument(
        "--bootstrap",
        type=int,
        metavar="N",
        help="bootstrap replicates of the 95%% intervals (default 1000; 0: no intervals)",
    )
    p.add_argument("--batch-size", type=int, help="batch size (default 256)")
    p.add_argument("--max-test", type=int, metavar="N", help="use a seeded subset of N test examples (default all)")

    g = p.add_argument_group("accuracy and calibration")
    g.add_argument(
        "--refine-steps", type=int, metavar="K", help="SGLD refinement steps before the refined accuracy (default 10)"
    )
    g.add_argument(
        "--refine-step-size",
        type=_step_or_run,
        metavar="STEP|run",
        help="refinement and defence: SGLD of this step size (with --refine-noise), or 'run' for the run's own "
        "sampler transition (default: the run's, except digits runs: 0.03 with noise 0.01)",
    )
    g.add_argument("--refine-noise", type=float, help="noise std of that SGLD ([-1, 1] units)")
    g.add_argument("--bins", type=int, help="confidence bins of the ECE and reliability diagram (default 15)")

    g = p.add_argument_group("OOD detection")
    g.add_argument(
        "--ood-sets", type=_names, metavar="LIST", help="OOD sets (registry kind 'ood'); default per data set"
    )
    g.add_argument(
        "--ood-param",
        type=_assignment,
        action="append",
        default=[],
        metavar="SET.KEY=VALUE",
        help="parameter of an OOD set, e.g. celeba_folder.root=/data/img_align_celeba (repeatable)",
    )
    g.add_argument(
        "--ood-n", type=int, metavar="N", help="at most N inputs per OOD set and of the test split (default 2000)"
    )

    g = p.add_argument_group("robustness (PGD)")
    g.add_argument("--norms", type=_names, metavar="LIST", help="linf,l2 (default both)")
    g.add_argument("--eps", type=_numbers, metavar="LIST", help="L-inf epsilons in [-1, 1] units, e.g. 0,8/255,16/255")
    g.add_argument("--eps-l2", type=_numbers, metavar="LIST", help="L2 epsilons in [-1, 1] units")
    g.add_argument("--pgd-steps", type=int, help="PGD steps (default 20)")
    g.add_argument(
        "--random-start", action="store_true", default=None, help="start PGD at a random point of the eps-ball"
    )
    g.add_argument("--robust-n", type=int, metavar="N", help="attack the first N test examples")
    g.add_argument(
        "--defence",
        action="store_true",
        default=None,
        help="also attack the JEM defence (SGLD refinement + noisy copies)",
    )
    g.add_argument("--defence-steps", type=int, metavar="K", help="refinement steps of the defence (default 10)")
    g.add_argument("--defence-copies", type=int, metavar="M", help="noisy copies whose logits are averaged (default 4)")
    g.add_argument("--defence-noise", type=float, help="noise std of the copies, [-1, 1] units (default 0.03)")
    g.add_argument(
        "--defence-attack",
        choices=("end_to_end", "bpda"),
        help="gradients through the refinement: exact through the SGLD steps (default) or BPDA (identity)",
    )

    g = p.add_argument_group("generation")
    g.add_argument("--n-samples", type=int, metavar="N", help="samples per generated set")
    g.add_argument(
        "--steps", dest="sgld_steps", type=int, metavar="N", help="transition steps of fresh chains from U(-1, 1)"
    )
    g.add_argument("--sgld-steps", dest="sgld_steps", type=int, help=argparse.SUPPRESS)  # the old name
    g.add_argument("--grid-per-class", type=int, metavar="N", help="samples per class in the grids (default 10)")
    g.add_argument(
        "--feature-extractor", metavar="NAME", help="registry kind 'feature_extractor' (default per data set)"
    )
    g.add_argument(
        "--extractor-param",
        type=_assignment,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter of the feature extractor (repeatable)",
    )
    g.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="torchvision inception_v3 weights (.safetensors/.pth); default $JEMKIT_INCEPTION_WEIGHTS",
    )
    g.add_argument("--is-splits", type=int, help="splits of the IS (digits-IS, Inception Score, ...)")
    g.add_argument(
        "--fid-reference",
        choices=("test", "train"),
        help="real images FID/KID/diversity compare against (default test)",
    )
    g.add_argument("--kid-subsets", type=int, metavar="N", help="KID: random subset pairs (default 100)")
    g.add_argument("--kid-subset-size", type=int, metavar="N", help="KID: rows per subset (default 1000)")
    g.add_argument("--pr-k", type=int, metavar="K", help="precision/recall: k-th nearest neighbour radius (default 3)")
    p.set_defaults(handler=eval_command, command_line=lambda args: command_line(p, args))


def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user chose on the command line (``None``: use the default)."""
    ood_params: dict[str, dict[str, Any]] = {}
    for key, value in args.ood_param:
        if "." not in key:
            from jemkit.errors import EvalError

            raise EvalError(f"--ood-param {key}={value}: write SET.KEY=VALUE, e.g. celeba_folder.root=/data/celeba.")
        name, field = key.split(".", 1)
        ood_params.setdefault(name, {})[field] = _yaml_value(value)
    return {
        "sections": args.only,
        "checkpoint": args.checkpoint,
        "device": args.device,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "max_test": args.max_test,
        "refine_steps": args.refine_steps,
        "refine_step_size": args.refine_step_size,
        "refine_noise": args.refine_noise,
        "bins": args.bins,
        "ood_sets": args.ood_sets,
        "ood_params": ood_params or None,
        "ood_n": args.ood_n,
        "norms": args.norms,
        "eps_linf": args.eps,
        "eps_l2": args.eps_l2,
        "pgd_steps": args.pgd_steps,
        "pgd_random_start": args.random_start,
        "robust_n": args.robust_n,
        "defence": args.defence,
        "defence_steps": args.defence_steps,
        "defence_copies": args.defence_copies,
        "defence_noise": args.defence_noise,
        "defence_attack": args.defence_attack,
        "n_samples": args.n_samples,
        "sgld_steps": args.sgld_steps,
        "grid_per_class": args.grid_per_class,
        "feature_extractor": args.feature_extractor,
        "extractor_params": {k: _yaml_value(v) for k, v in args.extractor_param} or None,
        "inception_weights": args.inception_weights,
        "is_splits": args.is_splits,
        "fid_reference": args.fid_reference,
        "n_boot": args.bootstrap,
        "kid_subsets": args.kid_subsets,
        "kid_subset_size": args.kid_subset_size,
        "pr_k": args.pr_k,
    }


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``jemkit eval RUN_DIR --flag value ...``: the command that repeats this evaluation (the options
    given, under their current names), for the report."""
    words = ["jemkit", "eval", str(args.run_dir)]
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == [] or value is False:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:
            words.append(flag)
        elif action.dest in ("ood_param", "extractor_param"):
            for key, item in value:
                words += [flag, f"{key}={item}"]
        elif isinstance(value, list):
            words += [flag, ",".join(_plain(v) for v in value)]
        else:
            words += [flag, _plain(value)]
    return shlex.join(words)


def _plain(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def eval_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """``jemkit eval``: evaluate, write a new report folder atomically, print the tables."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from jemkit.cli import report_plugin_failures
    from jemkit.evaluation.report import rich_tables
    from jemkit.evaluation.runner import evaluate
    from jemkit.plugin_manager import load_plugins
    from jemkit.progress_lines import ProgressLines

    overrides = overrides_from_args(args)
    plugins = load_plugins()
    report_plugin_failures(plugins, errors)
    progress: Any
    if console.is_terminal:
        progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
    else:  # a log file or a pipe: plain lines, at least one every PROGRESS_INTERVAL seconds
        progress = ProgressLines(console.file, label="eval", interval=PROGRESS_INTERVAL)
    command = args.command_line(args) if hasattr(args, "command_line") else None
    with progress:
        report, folder = evaluate(
            plugins, args.run_dir, args.baseline, overrides, progress, out=args.out, command=command
        )
    for table in rich_tables(report):
        console.print(table)
    console.print(f"report: {folder / 'report.md'} and {folder / 'report.json'}", highlight=False, soft_wrap=True)
    return 0


__all__ = ["JemkitError", "add_parser", "eval_command", "overrides_from_args"]
