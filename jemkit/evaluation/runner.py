"""``jemkit eval``: evaluate one run (and optionally a baseline run) and write a new report folder.

Order of work: resolve the settings, check that a baseline shares the test set
(:mod:`~jemkit.evaluation.baseline`), choose the output folder (:mod:`~jemkit.evaluation.outdir`:
``RUN_DIR/eval/<timestamp>`` or ``--out``), open the runs, build and check every OOD set, the
feature extractor and the defence's transition (:mod:`~jemkit.evaluation.components`, so that a
bad name or a missing file fails before any long computation), draw the shared inputs once
(:mod:`~jemkit.evaluation.inputs`: test split, OOD sets, reference features; every run sees the
very same inputs), evaluate each run section by section (:mod:`~jemkit.evaluation.sections`),
then write figures, ``report.json`` and ``report.md`` into a temporary folder that becomes the
output folder only when all of it is done, and point ``RUN_DIR/eval/latest`` at it. No
evaluation replaces another. This module only orchestrates those steps.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from jemkit import __version__
from jemkit.build import resolve_device
from jemkit.checkpoint import command as command_text
from jemkit.config import read_run_config
from jemkit.contracts import DataSplits
from jemkit.disk import disk_full_error, is_no_room
from jemkit.errors import DiskFullError, EvalError
from jemkit.evaluation.baseline import check_same_test_set
from jemkit.evaluation.components import EvalComponents, build_components, defence_transition
from jemkit.evaluation.inputs import Inputs, prepare_inputs
from jemkit.evaluation.outdir import EVAL_DIR, choose_target, is_inside, publish, temporary_folder
from jemkit.evaluation.progress import Steps
from jemkit.evaluation.protocol import protocol
from jemkit.evaluation.report import write_report
from jemkit.evaluation.rundir import LoadedRun, load_run
from jemkit.evaluation.sections import Evaluation
from jemkit.evaluation.settings import EvalSettings, resolve_settings
from jemkit.plugin_manager import PluginSet
from jemkit.run_lock import RunLock

__all__ = ["EVAL_DIR", "Evaluation", "evaluate"]


def evaluate(
    plugins: PluginSet,
    run_dir: Path,
    baseline_dir: Path | None,
    overrides: dict[str, Any],
    progress: Any = None,
    out: Path | None = None,
    command: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate ``run_dir`` (and ``baseline_dir``) into a new folder (``out``, else
    ``RUN_DIR/eval/<timestamp>``); returns the report and that folder. ``command`` (the command
    line) is recorded in the report; ``progress`` is a rich ``Progress`` or
    :class:`~jemkit.progress_lines.ProgressLines` (or ``None``)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    data_name = _data_name(cfg)
    settings = resolve_settings(data_name, overrides)
    if baseline_dir is not None:
        check_same_test_set(plugins, cfg, run_dir, read_run_config(Path(baseline_dir)), Path(baseline_dir))
    target = choose_target(run_dir, out)
    lock = _run_lock(run_dir, target)  # one writer per run directory (None: the report goes elsewhere)
    if lock is not None:
        lock.check_free()  # fail before the long work when another process writes the run
    device = resolve_device(settings.device)
    steps = Steps(progress)
    runs, data = _open_runs(plugins, run_dir, baseline_dir, settings, device, steps)
    context = runs[0].context

    # Everything that can fail on a name or a missing file, before any long computation.
    components = build_components(plugins, settings, context)
    if "robustness" in settings.sections and settings.defence:
        for run in runs:
            defence_transition(plugins, settings, run)

    if progress is not None and hasattr(progress, "phases"):
        progress.phases = Evaluation.planned_phases(settings, len(runs), components.extractor is not None)
    inputs = prepare_inputs(settings, data, data_name, components, steps, device)
    with _held(lock, run_dir), _no_room_is_clear(target, command):
        tmp = temporary_folder(run_dir, target)
        try:
            evaluation = Evaluation(plugins, runs, settings, inputs, tmp, steps, device)
            results = evaluation.run_all()
            report = _report(results, evaluation, settings, inputs, components, data_name, runs[0], device)
            report["command"] = command
            _check_finite(report)
            write_report(tmp, report)
            target = publish(tmp, target, run_dir, chosen=out is not None)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return report, target


#: What a report write that ran out of room leaves behind.
REPORT_INTACT = "The partial report was removed; the run, its checkpoints and earlier reports are untouched."


@contextlib.contextmanager
def _no_room_is_clear(target: Path, command: str | None) -> Iterator[None]:
    """A report write that fails for lack of room (disk, quota, ``ulimit -f``) becomes the clear
    :class:`~jemkit.errors.DiskFullError`; the partial report is gone by then."""
    try:
        yield
    except OSError as error:
        if not is_no_room(error):
            raise
        again = f" Then evaluate again: `{command}`." if command else ""
        what = f"the evaluation report {str(target)!r}"
        clear = disk_full_error(error, error.filename or target.parent, intact=REPORT_INTACT, what=what, smaller="--only")
        raise DiskFullError(f"{clear}{again}") from None


def _run_lock(run_dir: Path, target: Path) -> RunLock | None:
    """The run directory's shared lock when the report goes inside it (``RUN_DIR/eval``), else ``None``."""
    if not is_inside(target, run_dir):
        return None
    outside = command_text("eval", run_dir, "--out", f"{run_dir.resolve().name}-eval")
    return RunLock(
        run_dir,
        "evaluation",
        hint=f"Wait for it to finish, or evaluate meanwhile into a folder outside the run directory: `{outside}`.",
        shared=True,  # evaluations add separate folders: several may run at once, never during training
    )


@contextlib.contextmanager
def _held(lock: RunLock | None, run_dir: Path) -> Iterator[None]:
    """Hold ``lock`` (if any) while the evaluation writes into the run directory."""
    if lock is None:
        yield
        return
    try:
        lock.acquire()
    except OSError as exc:
        raise EvalError(
            f"Cannot write the evaluation into {str(run_dir)!r} ({exc.strerror or exc}). Evaluate into a folder "
            f"elsewhere with --out."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _data_name(cfg: Any) -> str:
    """The ``data.name`` of a run's recipe (``?`` when absent)."""
    return str(cfg.data.name) if "data" in cfg and "name" in cfg.data else "?"


def _open_runs(
    plugins: PluginSet,
    run_dir: Path,
    baseline_dir: Path | None,
    settings: EvalSettings,
    device: torch.device,
    steps: Steps,
) -> tuple[list[LoadedRun], DataSplits]:
    """The evaluated run (with its data set) and the baseline run (tested on that data set)."""
    dirs = [run_dir] + ([Path(baseline_dir)] if baseline_dir is not None else [])
    names = _unique_names(dirs)
    primary, data = load_run(plugins, run_dir, names[0], settings.checkpoint, device)
    assert data is not None
    runs = [primary]
    if baseline_dir is not None:
        runs.append(load_run(plugins, Path(baseline_dir), names[1], settings.checkpoint, device, primary.context)[0])
    for run in runs:
        steps.note(f"{run.name}: loaded checkpoint {run.checkpoint} (step {run.step}) on {device}")
    return runs, data


def _report(
    results: dict[str, Any],
    evaluation: Evaluation,
    settings: EvalSettings,
    inputs: Inputs,
    components: EvalComponents,
    data_name: str,
    primary: LoadedRun,
    device: torch.device,
) -> dict[str, Any]:
    """``report.json`` (layout in :mod:`jemkit.evaluation`)."""
    context = primary.context
    return {
        "format": "jemkit-eval/1",
        "jemkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": results,
        "data": {
            "name": data_name,
            "input_shape": list(context.input_shape or ()),
            "num_classes": context.num_classes,
            "test_examples": len(inputs.x_test),
            "ood_examples": {name: len(x) for name, x in inputs.ood.items()},
        },
        "real_data": None
        if inputs.real_fid is None
        else {"fid": inputs.real_fid, "kid": inputs.real_kid, "protocol": inputs.real_info},
        "settings": {
            **settings.to_dict(),
            "ood_params": components.ood_params,
            "extractor_params": components.extractor_params,
            "device": str(device),
            "bootstrap": {"n_boot": settings.n_boot, "level": 0.95, "seed": settings.seed},
        },
        "protocol": protocol(settings, inputs, data_name, int(context.num_classes or 1), primary.cfg),
        "figures": evaluation.figures.get("all", {}),
    }


def _unique_names(dirs: list[Path]) -> list[str]:
    names: list[str] = []
    for d in dirs:
        base = d.resolve().name or "run"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def _check_finite(node: Any, path: str = "report") -> None:
    """NaN or infinite numbers mean a broken measurement: fail instead of writing them."""
    if isinstance(node, float) and not math.isfinite(node):
        raise EvalError(f"{path} is {node}: the model produced non-finite outputs; nothing was written.")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{path}[{i}]")
