"""Reading run directories back: what ``jemkit runs`` lists and ``jemkit compare`` aggregates.

A run directory is any directory holding ``config.yaml``; beside it ``summary.json`` (written
when the run completes), ``metrics.jsonl`` (one JSON object per logged step) and, after
``jemkit eval``, ``eval/latest/report.json`` (newest evaluation) or ``eval/report.json``. Nothing
here imports torch or writes a file, and a damaged file never stops a listing: the run is shown
with what could be read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jemkit.errors import JemkitError

#: Status of a run directory without ``summary.json``: still training, stopped, crashed or diverged.
RUNNING_OR_STOPPED = "running-or-stopped"
#: Status of a run directory whose ``config.yaml`` or ``summary.json`` cannot be parsed.
UNREADABLE = "unreadable"


@dataclass
class RunInfo:
    """What one run directory says about itself (missing files give ``None``)."""

    #: The run directory.
    path: Path
    #: The directory relative to the searched root (``path.name`` when it is the root itself).
    name: str
    #: ``name:`` of the stored recipe (``"?"`` when unreadable).
    recipe: str
    #: ``summary.json``'s ``status`` (``completed``, ``diverged``, ...), else ``running-or-stopped``.
    status: str
    #: The stored recipe as plain Python containers (empty when unreadable).
    config: dict[str, Any] = field(default_factory=dict)
    #: ``summary.json`` as a dict, or ``None`` when the run has not completed.
    summary: dict[str, Any] | None = None
    #: Optimiser steps: the summary's ``steps``, else the last step in ``metrics.jsonl``.
    steps: int | None = None
    #: Test accuracy in [0, 1]: the summary's ``test/acc``, else the last one logged.
    test_acc: float | None = None
    #: Training wall time in seconds (summary's ``wall_seconds``; resumed runs add their parts).
    wall_seconds: float | None = None
    #: Start time (Unix seconds), see :func:`start_time`.
    started: float | None = None

    def as_row(self) -> dict[str, Any]:
        """The listing row as JSON-friendly values (``started`` as local ISO-8601 text)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "recipe": self.recipe,
            "status": self.status,
            "steps": self.steps,
            "test/acc": self.test_acc,
            "wall_seconds": self.wall_seconds,
            "started": _iso(self.started),
        }


def find_runs(root: Path | str) -> list[Path]:
    """Every run directory at or below ``root``, sorted by path; neither a run's own folders nor
    hidden folders are searched.

    Raises :class:`JemkitError` when ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise JemkitError(
            f"{str(root)!r} is not a directory. Pass a run directory, a sweep directory or a folder "
            "holding runs (default runs/)."
        )
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        if "config.yaml" in files:
            found.append(Path(current))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # hidden: e.g. a sweep's .unfinished/
    return sorted(found)


def read_run(path: Path | str, root: Path | str | None = None) -> RunInfo:
    """Read one run directory; ``root`` only sets :attr:`RunInfo.name` (relative path)."""
    path = Path(path)
    name = path.name
    if root is not None:
        relative = os.path.relpath(path, root)
        name = path.name if relative == "." else relative
    config = _read_yaml(path / "config.yaml")
    summary, summary_ok = _read_summary(path / "summary.json")
    records = read_jsonl(path / "metrics.jsonl")
    info = RunInfo(path=path, name=name, recipe="?", status=RUNNING_OR_STOPPED, config=config or {})
    if config is None or not summary_ok:
        info.status = UNREADABLE
    if config:
        info.recipe = str(config.get("name", "?"))
    if summary is not None:
        info.summary = summary
        info.status = str(summary.get("status", "completed"))
        info.recipe = str(summary.get("recipe", info.recipe))
    info.steps = _int_or_none((summary or {}).get("steps"))
    if info.steps is None:
        info.steps = next((_int_or_none(r.get("step")) for r in reversed(records) if "step" in r), None)
    info.test_acc = number((summary or {}).get("test/acc"))
    if info.test_acc is None:
        info.test_acc = next((number(r["test/acc"]) for r in reversed(records) if "test/acc" in r), None)
    info.wall_seconds = number((summary or {}).get("wall_seconds"))
    info.started = start_time(path, info.wall_seconds if summary is not None else None)
    return info


def list_runs(root: Path | str) -> list[RunInfo]:
    """:func:`read_run` for every run :func:`find_runs` finds below ``root``."""
    return [read_run(p, root) for p in find_runs(root)]


def start_time(run_dir: Path, wall_seconds: float | None = None) -> float | None:
    """When the run started, in Unix seconds, from file times (runs record no start time).

    ``config.yaml`` is written when training starts and again at each resume, so its time is the
    start of the latest session. For a completed run, ``summary.json``'s time minus the total
    ``wall_seconds`` is used when earlier (exact for a run that was never resumed).
    """
    try:
        started = (run_dir / "config.yaml").stat().st_mtime
    except OSError:
        return None
    if wall_seconds is not None:
        try:
            started = min(started, (run_dir / "summary.json").stat().st_mtime - wall_seconds)
        except OSError:
            pass
    return started


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, skipping unparsable lines (e.g. a truncated last one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def eval_report_path(run_dir: Path | str) -> Path | None:
    """The newest evaluation report of a run: ``eval/latest/report.json``, else ``eval/report.json``.

    ``eval/latest`` may be a link to (or directory of) the newest evaluation, or a text file
    naming that folder inside ``eval/``.
    """
    folder = Path(run_dir) / "eval"
    latest = folder / "latest"
    candidates = [latest / "report.json"]
    if latest.is_file():
        try:
            candidates.append(folder / latest.read_text(encoding="utf-8").strip() / "report.json")
        except OSError:
            pass
    candidates.append(folder / "report.json")
    return next((c for c in candidates if c.is_file()), None)


def eval_numbers(run_dir: Path | str) -> dict[str, float]:
    """Every numeric leaf of the run's own entry in its newest eval report, keyed ``eval.<dotted>``.

    The entry is ``runs[<run directory name>]``, else the one whose ``run_dir`` is this directory,
    else the first (``jemkit eval`` writes the evaluated run first, a ``--baseline`` after it).
    Lists of dicts are indexed by position (``eval.robustness.attacks.linf.0.accuracy``); lists
    of plain numbers (curves, per-class values) are left out. Empty when there is no report.
    """
    path = eval_report_path(run_dir)
    if path is None:
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    runs = report.get("runs") if isinstance(report, dict) else None
    if not isinstance(runs, dict) or not runs:
        return {}
    run_dir = Path(run_dir)
    entry = runs.get(run_dir.name)
    if entry is None:
        entry = next((e for e in runs.values() if isinstance(e, dict) and _same_dir(e.get("run_dir"), run_dir)), None)
    if entry is None:
        entry = next(iter(runs.values()))
    return numeric_leaves(entry, "eval") if isinstance(entry, dict) else {}


def numeric_leaves(node: Any, prefix: str = "") -> dict[str, float]:
    """Flatten the finite numbers of nested dicts (and lists of dicts) to ``{dotted.key: value}``."""
    found: dict[str, float] = {}
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        value = number(node)
        if value is not None and prefix:
            found[prefix] = value
        return found
    for key, value in items:
        found.update(numeric_leaves(value, f"{prefix}.{key}" if prefix else key))
    return found


def summary_numbers(summary: dict[str, Any] | None) -> dict[str, float]:
    """The finite numeric values of ``summary.json`` (``test/acc``, ``steps``, ``wall_seconds``, ...)."""
    found: dict[str, float] = {}
    for key, value in (summary or {}).items():
        value = number(value)
        if value is not None:
            found[str(key)] = value
    return found


def curve(run_dir: Path | str, metric: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``metric`` in ``metrics.jsonl``, by step; the last record of a step wins
    (a record written after a rollback replaces the one before it)."""
    by_step: dict[int, float] = {}
    for record in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        step, value = _int_or_none(record.get("step")), number(record.get(metric))
        if step is not None and value is not None and not record.get("event"):
            by_step[step] = value
    return sorted(by_step.items())


def metric_names(run_dir: Path | str) -> list[str]:
    """The numeric keys logged in ``metrics.jsonl`` (besides ``step`` and ``epoch``), in first-seen order."""
    names: dict[str, None] = {}
    for record in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        if record.get("event"):
            continue
        for key, value in record.items():
            if key not in ("step", "epoch") and number(value) is not None:
                names.setdefault(key, None)
    return list(names)


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` (``optimizer.lr``) of a plain config dict; :data:`MISSING` if absent."""
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: What :func:`config_value` returns for a key the config does not have.
MISSING: Any = _Missing()


def number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (booleans, text such as ``"nan"``, non-finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_summary(path: Path) -> tuple[dict[str, Any] | None, bool]:
    """``(summary or None, readable)``: a missing file is readable, a damaged one is not."""
    if not path.is_file():
        return None, True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None, False
    return (data, True) if isinstance(data, dict) else (None, False)


def _same_dir(text: Any, run_dir: Path) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return Path(text).resolve() == run_dir.resolve()
    except OSError:
        return False


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    import datetime

    return datetime.datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")
