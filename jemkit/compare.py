"""Comparing runs: group them, summarise every number with mean, sd and a 95% CI, draw curves.

The numbers of a run are the numeric values of its ``summary.json`` (``test/acc``, ``steps``,
``wall_seconds``, ...) and every numeric leaf of its newest eval report, keyed ``eval.<dotted
path>`` (see :func:`jemkit.run_index.eval_numbers`). Runs are grouped by recipe name, or by the
values of dotted config keys (``optimizer.lr``). Per group and number: the mean, the sample
standard deviation (``n - 1`` in the denominator) and the 95% confidence interval of the mean
from Student's t with ``n - 1`` degrees of freedom, ``mean ± t(0.975, n-1) * sd / sqrt(n)``.
With a single value, sd and CI are ``None`` (empty in tables), never NaN.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from jemkit.errors import JemkitError
from jemkit.run_index import MISSING, RunInfo, config_value, curve, eval_numbers, metric_names, summary_numbers


@dataclass(frozen=True)
class Stats:
    """Summary of ``n`` values of one number: mean, sample sd and the CI of the mean."""

    n: int
    mean: float
    #: Sample standard deviation (``n - 1`` denominator); ``None`` when ``n == 1``.
    sd: float | None
    #: Bounds of the confidence interval of the mean (Student t, ``n - 1`` dof); ``None`` when ``n == 1``.
    ci_low: float | None
    ci_high: float | None

    def to_json(self) -> dict[str, Any]:
        ci = None if self.ci_low is None else [self.ci_low, self.ci_high]
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "ci95": ci}


def describe(values: Sequence[float], level: float = 0.95) -> Stats:
    """Mean, sample sd and the two-sided ``level`` Student-t interval of the mean of ``values``."""
    n = len(values)
    if n == 0:
        raise ValueError("describe() needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Stats(1, mean, None, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy.stats import t  # imported here: scipy.stats takes a while to load

    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Stats(n, mean, sd, mean - half, mean + half)


@dataclass
class Group:
    """Runs that share a recipe (or the values of the ``--group-by`` keys) and their statistics."""

    label: str
    runs: list[RunInfo]
    #: Number name -> statistics over the runs that have that number.
    stats: dict[str, Stats]


@dataclass
class Comparison:
    """The result of :func:`compare`: groups in display order and the numbers compared."""

    #: Dotted config keys the runs were grouped by; empty: by recipe name.
    group_by: list[str]
    groups: list[Group]
    #: Number names, summary values first, then eval values, in first-seen order.
    metrics: list[str]

    def to_json(self) -> dict[str, Any]:
        """``{"group_by", "groups": [{"label", "runs": [paths], "metrics": {name: stats}}]}``."""
        return {
            "group_by": self.group_by or ["recipe"],
            "groups": [
                {
                    "label": g.label,
                    "runs": [str(r.path) for r in g.runs],
                    "metrics": {m: g.stats[m].to_json() for m in self.metrics if m in g.stats},
                }
                for g in self.groups
            ],
        }


def run_numbers(run: RunInfo) -> dict[str, float]:
    """A run's numbers: numeric ``summary.json`` values, then ``eval.*`` report leaves."""
    return {**summary_numbers(run.summary), **eval_numbers(run.path)}


def group_label(run: RunInfo, keys: Sequence[str]) -> str:
    """``recipe`` name with no keys, else ``key=value`` pairs joined by commas."""
    if not keys:
        return run.recipe
    return ",".join(f"{key}={format_value(config_value(run.config, key))}" for key in keys)


def group_runs(runs: Iterable[RunInfo], keys: Sequence[str] = ()) -> list[tuple[str, list[RunInfo]]]:
    """Runs grouped by recipe (first-seen order) or by the values of ``keys`` (sorted by value)."""
    groups: dict[str, list[RunInfo]] = {}
    order: dict[str, tuple[Any, ...]] = {}
    for run in runs:
        label = group_label(run, keys)
        groups.setdefault(label, []).append(run)
        order.setdefault(label, tuple(_sort_key(config_value(run.config, k)) for k in keys))
    labels = list(groups)
    if keys:
        labels.sort(key=lambda label: order[label])
    return [(label, groups[label]) for label in labels]


def compare(
    runs: Sequence[RunInfo], group_by: Sequence[str] = (), metrics: Sequence[str] | None = None
) -> Comparison:
    """Group ``runs`` and describe each number per group.

    ``metrics`` are names or shell-style patterns (``test/*``, ``eval.ood.*.auroc``); a pattern
    that matches no number is a :class:`JemkitError` with a did-you-mean.
    """
    numbers = {id(run): run_numbers(run) for run in runs}
    available: dict[str, None] = {}
    for run in runs:
        for name in numbers[id(run)]:
            available.setdefault(name, None)
    chosen = select_metrics(list(available), metrics) if metrics else list(available)
    groups = []
    for label, members in group_runs(runs, group_by):
        stats = {}
        for name in chosen:
            values = [numbers[id(r)][name] for r in members if name in numbers[id(r)]]
            if values:
                stats[name] = describe(values)
        groups.append(Group(label, members, stats))
    return Comparison(list(group_by), groups, chosen)


def select_metrics(available: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The names of ``available`` matching any of ``patterns`` (exact names or fnmatch patterns)."""
    chosen: dict[str, None] = {}
    for pattern in patterns:
        matched = [name for name in available if name == pattern or fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            close = difflib.get_close_matches(pattern, list(available), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise JemkitError(
                f"No run has a number named {pattern!r}.{hint} The runs have: "
                f"{', '.join(available) or 'no numbers (no summary.json or eval report yet)'}."
            )
        for name in matched:
            chosen.setdefault(name, None)
    return list(chosen)


# ---------------------------------------------------------------------- tables
def format_number(value: float | None) -> str:
    """Four significant digits (``0.92``, ``113.5``, ``0.0001``); empty for ``None``."""
    if value is None:
        return ""
    return f"{value:.4g}"


def format_value(value: Any) -> str:
    """A config value as it reads in a group label (``0.001``, ``[8, 16]``, ``unset``)."""
    if value is MISSING:
        return "unset"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def sd_decimals(sd: float) -> int | None:
    """Decimal places that show ``sd`` to two significant digits (``0.02`` -> 3, ``12.3`` -> 0);
    ``None`` for a zero sd (then values use :func:`format_number`)."""
    if sd <= 0:
        return None
    return min(12, max(0, 1 - math.floor(math.log10(sd))))


def _cells(stats: Stats) -> tuple[str, str, str]:
    """``(n, mean ± sd, [low, high])`` as text, mean and CI to the decimals of the sd's two
    significant digits (``0.920 ± 0.020``); sd and CI empty for a single value."""
    if stats.sd is None:
        return str(stats.n), format_number(stats.mean), ""
    places = sd_decimals(stats.sd)

    def show(value: float | None) -> str:
        return format_number(value) if places is None or value is None else f"{value:.{places}f}"

    return str(stats.n), f"{show(stats.mean)} ± {show(stats.sd)}", f"[{show(stats.ci_low)}, {show(stats.ci_high)}]"


def _rows(comparison: Comparison) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for metric in comparison.metrics:
        for group in comparison.groups:
            if metric in group.stats:
                rows.append((metric, group.label, *_cells(group.stats[metric])))
    return rows


def _grouping_text(comparison: Comparison) -> str:
    return ", ".join(comparison.group_by) if comparison.group_by else "recipe"


def rich_table(comparison: Comparison) -> Table:
    """The comparison as a rich table: metric, group, n, mean ± sd, 95% CI."""
    runs = sum(len(g.runs) for g in comparison.groups)
    table = Table(title=f"{runs} run(s) grouped by {_grouping_text(comparison)}: mean ± sd (n-1), 95% CI (Student t)")
    table.add_column("metric", no_wrap=True)
    table.add_column("group", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("mean ± sd", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    for row in _rows(comparison):
        table.add_row(*(Text(cell) for cell in row))  # Text: a label like [adam] is not markup
    return table


def markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table (one row per number and group) with a caption line."""
    lines = [
        f"Runs grouped by {_grouping_text(comparison)}; mean ± sample sd (n-1) and the 95% confidence "
        "interval of the mean (Student t, n-1 degrees of freedom); sd and CI are empty for n = 1.",
        "",
        "| metric | group | n | mean ± sd | 95% CI |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in _rows(comparison):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- learning curves
#: Band choices of :func:`plot_curves`: the runs' minimum to maximum, or the mean ± one sd.
BANDS = ("minmax", "sd")


def plot_curves(
    runs: Sequence[RunInfo], metric: str, out: Path | str, group_by: Sequence[str] = (), band: str = "minmax"
) -> Path:
    """Overlay ``metric`` from every run's ``metrics.jsonl`` against the step in one PNG.

    Each run is a thin line; each group gets its mean (over the runs that logged that step) as a
    thick line and a shaded band (``minmax``: lowest to highest run; ``sd``: mean ± sample sd,
    where at least two runs logged the step). Returns the written path.
    """
    if band not in BANDS:
        raise JemkitError(f"--band must be one of {', '.join(BANDS)}, got {band!r}.")
    curves = {id(run): curve(run.path, metric) for run in runs}
    if not any(curves.values()):
        logged: dict[str, None] = {}
        for run in runs:
            for name in metric_names(run.path):
                logged.setdefault(name, None)
        close = difflib.get_close_matches(metric, list(logged), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise JemkitError(
            f"No run logged {metric!r} in metrics.jsonl.{hint} Logged metrics: {', '.join(logged) or 'none'}."
        )
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend change
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    for index, (label, members) in enumerate(group_runs(runs, group_by)):
        colour = colours[index % len(colours)]
        per_step: dict[int, list[float]] = {}
        for run in members:
            points = curves[id(run)]
            if points:
                axes.plot([s for s, _ in points], [v for _, v in points], color=colour, alpha=0.3, linewidth=0.8)
            for step, value in points:
                per_step.setdefault(step, []).append(value)
        if not per_step:
            continue
        steps = sorted(per_step)
        means = [math.fsum(per_step[s]) / len(per_step[s]) for s in steps]
        if band == "minmax":
            low = [min(per_step[s]) for s in steps]
            high = [max(per_step[s]) for s in steps]
        else:
            sds = [describe(per_step[s]).sd or 0.0 for s in steps]
            low = [m - d for m, d in zip(means, sds)]
            high = [m + d for m, d in zip(means, sds)]
        n_runs = sum(1 for r in members if curves[id(r)])
        axes.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
        axes.plot(steps, means, color=colour, linewidth=2.0, label=f"{label} (n={n_runs})")
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean and {'min-max' if band == 'minmax' else '± sd'} band per group")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is MISSING:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, format_value(value))
