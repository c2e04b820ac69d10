"""``jemkit eval``: evaluate one run (and optionally a baseline run) and write ``RUN_DIR/eval/``.

Order of work: resolve the settings, open the runs, build and check every OOD set, the feature
extractor and the defence's transition (:mod:`~jemkit.evaluation.components`, so that a bad name
or a missing file fails before any long computation), draw the shared inputs once
(:mod:`~jemkit.evaluation.inputs`: test split, OOD sets, reference features; every run sees the
very same inputs), evaluate each run section by section (:mod:`~jemkit.evaluation.sections`),
then write figures, ``report.json`` and ``report.md`` into a temporary folder that replaces
``RUN_DIR/eval`` only when all of it is done. This module only orchestrates those steps.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from jemkit import __version__
from jemkit.build import resolve_device
from jemkit.config import read_run_config
from jemkit.contracts import DataSplits
from jemkit.errors import EvalError
from jemkit.evaluation.components import EvalComponents, build_components, defence_transition
from jemkit.evaluation.inputs import Inputs, prepare_inputs
from jemkit.evaluation.progress import Steps
from jemkit.evaluation.protocol import protocol
from jemkit.evaluation.report import write_report
from jemkit.evaluation.rundir import LoadedRun, load_run
from jemkit.evaluation.sections import Evaluation
from jemkit.evaluation.settings import EvalSettings, resolve_settings
from jemkit.plugin_manager import PluginSet

__all__ = ["EVAL_DIR", "Evaluation", "evaluate"]

#: Name of the folder the report is written to, inside the evaluated run directory.
EVAL_DIR = "eval"


def evaluate(
    plugins: PluginSet,
    run_dir: Path,
    baseline_dir: Path | None,
    overrides: dict[str, Any],
    progress: Any = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate ``run_dir`` (and ``baseline_dir``); returns the report and the written ``RUN_DIR/eval`` path."""
    run_dir = Path(run_dir)
    data_name = _data_name(run_dir)
    settings = resolve_settings(data_name, overrides)
    device = resolve_device(settings.device)
    runs, data = _open_runs(plugins, run_dir, baseline_dir, data_name, settings, device)
    context = runs[0].context

    # Everything that can fail on a name or a missing file, before any long computation.
    components = build_components(plugins, settings, context)
    if "robustness" in settings.sections and settings.defence:
        for run in runs:
            defence_transition(plugins, settings, run)

    steps = Steps(progress)
    inputs = prepare_inputs(settings, data, data_name, components, steps, device)
    target = run_dir / EVAL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{EVAL_DIR}-tmp-", dir=run_dir))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the report is an ordinary folder
    try:
        evaluation = Evaluation(plugins, runs, settings, inputs, tmp, steps, device)
        results = evaluation.run_all()
        report = _report(results, evaluation, settings, inputs, components, data_name, runs[0], device)
        _check_finite(report)
        write_report(tmp, report)
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report, target


def _data_name(run_dir: Path) -> str:
    """The ``data.name`` of the run's recipe (``?`` when absent)."""
    cfg = read_run_config(run_dir)
    return str(cfg.data.name) if "data" in cfg and "name" in cfg.data else "?"


def _open_runs(
    plugins: PluginSet,
    run_dir: Path,
    baseline_dir: Path | None,
    data_name: str,
    settings: EvalSettings,
    device: torch.device,
) -> tuple[list[LoadedRun], DataSplits]:
    """The evaluated run (with its data set) and the baseline run, which must share the data set."""
    dirs = [run_dir] + ([Path(baseline_dir)] if baseline_dir is not None else [])
    names = _unique_names(dirs)
    primary, data = load_run(plugins, run_dir, names[0], settings.checkpoint, device)
    assert data is not None
    runs = [primary]
    if baseline_dir is not None:
        base_data = _data_name(Path(baseline_dir))
        if base_data != data_name:
            raise EvalError(
                f"The baseline run {str(baseline_dir)!r} was trained on {base_data!r}, the evaluated run on "
                f"{data_name!r}; a baseline must share the data set (its inputs and classes)."
            )
        runs.append(load_run(plugins, Path(baseline_dir), names[1], settings.checkpoint, device, primary.context)[0])
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
        "real_data": None if inputs.real_fid is None else {"fid": inputs.real_fid, "protocol": inputs.real_info},
        "settings": {
            **settings.to_dict(),
            "ood_params": components.ood_params,
            "extractor_params": components.extractor_params,
            "device": str(device),
        },
        "protocol": protocol(settings, inputs, data_name, int(context.num_classes or 1)),
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


def _publish(tmp: Path, target: Path) -> None:
    """Replace ``target`` with the finished folder ``tmp`` (renames on the same file system)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
