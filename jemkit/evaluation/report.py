"""The evaluation report as tables: ``report.json``, ``report.md`` (figures by relative path) and rich tables.

Every table has one row per metric and one column per evaluated run, so a ``--baseline`` run sits
beside the evaluated run. A number with a ``<key>_ci95`` sibling in ``report.json`` prints as
``value [low, high]`` (its 95% interval: bootstrap, or block jackknife for the set-vs-set sample
metrics); KID prints as ``mean ± sd [low, high]``. Sample metrics
are named for their features (``digits-FID`` vs ``Inception FID``,
:func:`~jemkit.evaluation.metric_names.metric_label`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from jemkit.evaluation.metric_names import metric_label
from jemkit.evaluation.scores import SCORES

_NORM_LABEL = {"linf": "L-inf", "l2": "L2"}
_SECTION_PROTOCOL = {
    "Accuracy": "accuracy",
    "Calibration": "calibration",
    "OOD detection: AUROC": "ood",
    "OOD detection: FPR at 95% TPR": "ood",
    "Robust accuracy": "robustness",
    "Generation": "generation",
}


@dataclass(frozen=True)
class Cell:
    """A number with its 95% interval ``(low, high)`` or its standard deviation, for printing."""

    value: Any
    ci: tuple[float, float] | None = None
    sd: float | None = None


@dataclass
class ReportTable:
    """Rows of ``(label, one value per run)`` with the figures that belong to them."""

    title: str
    runs: list[str]
    rows: list[tuple[str, list[Any]]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, values: list[Any]) -> None:
        if any(_value(v) is not None for v in values):
            self.rows.append((label, values))


def _get(node: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def _value(cell: Any) -> Any:
    return cell.value if isinstance(cell, Cell) else cell


def _with_ci(node: Any, *keys: Any) -> Cell | None:
    """The number at ``keys`` with its interval, the sibling ``<last key>_ci95`` when there is one."""
    value = _get(node, *keys)
    if value is None:
        return None
    interval = _get(node, *keys[:-1], f"{keys[-1]}_ci95")
    ci = (float(interval[0]), float(interval[1])) if isinstance(interval, list) and len(interval) == 2 else None
    return Cell(value, ci)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def _format(value: Any) -> str:
    if isinstance(value, Cell):
        if value.value is None:
            return "-"
        text = _number(value.value)
        if value.sd is not None:
            text += f" ± {_number(value.sd)}"
        if value.ci is not None:
            text += f" [{_number(value.ci[0])}, {_number(value.ci[1])}]"
        return text
    if value is None:
        return "-"
    return _number(value)


def build_tables(report: dict[str, Any]) -> list[ReportTable]:
    """The report's tables, in section order, for every section present in any run."""
    runs: dict[str, Any] = report["runs"]
    names = list(runs)
    per_run = lambda *keys: [_with_ci(runs[n], *keys) for n in names]  # noqa: E731
    tables: list[ReportTable] = []

    if any("accuracy" in r for r in runs.values()):
        t = ReportTable("Accuracy", names)
        t.add("test accuracy", per_run("accuracy", "clean"))
        steps = next((_get(r, "accuracy", "refine", "steps") for r in runs.values() if "accuracy" in r), None)
        t.add(f"accuracy after {steps} SGLD refinement steps", per_run("accuracy", "refined"))
        t.add("test NLL (nats)", per_run("accuracy", "nll"))
        tables.append(t)

    if any("calibration" in r for r in runs.values()):
        t = ReportTable("Calibration", names)
        bins = report["settings"].get("bins")
        t.add(f"ECE ({bins} bins)", per_run("calibration", "ece"))
        t.add("ECE after temperature scaling", per_run("calibration", "temperature_scaled", "ece"))
        t.figures = [
            (f"{n}: reliability diagram", runs[n]["figures"]["reliability"])
            for n in names
            if "reliability" in runs[n].get("figures", {})
        ]
        tables.append(t)

    if any("ood" in r for r in runs.values()):
        sets = list(next(r["ood"] for r in runs.values() if "ood" in r))
        for metric, title in (("auroc", "OOD detection: AUROC"), ("fpr95", "OOD detection: FPR at 95% TPR")):
            t = ReportTable(title, names)
            for name in sets:
                for score in SCORES:
                    t.add(f"{name}: {score}", per_run("ood", name, score, metric))
            if metric == "auroc":
                t.figures = [
                    (f"{n}: scores, test vs {s}", runs[n]["figures"][f"ood_{s}"])
                    for n in names
                    for s in sets
                    if f"ood_{s}" in runs[n].get("figures", {})
                ]
            tables.append(t)

    if any("robustness" in r for r in runs.values()):
        steps = report["settings"].get("pgd_steps")
        t = ReportTable("Robust accuracy", names)
        t.title = f"Robust accuracy (PGD-{steps}; eps in [-1, 1] input units)"
        groups = (
            ("attacks", "accuracy", ""),
            ("defended", "accuracy", "defended (adaptive), "),
            ("defended", "transfer", "defended (transfer), "),
            ("defended", "worst", "defended (worst case), "),
        )
        for group, field_name, prefix in groups:
            for norm in report["settings"].get("norms", []):
                points = next(
                    (_get(r, "robustness", group, norm) for r in runs.values() if _get(r, "robustness", group, norm)),
                    None,
                )
                for i, point in enumerate(points or []):
                    values = [_with_ci(runs[n], "robustness", group, norm, i, field_name) for n in names]
                    t.add(f"{prefix}{_NORM_LABEL[norm]} eps={point['eps']:.4g}", values)
        t.figures = [
            (f"PGD {_NORM_LABEL[k.split('_', 1)[1]]}", v)
            for k, v in report.get("figures", {}).items()
            if k.startswith("robustness_")
        ]
        tables.append(t)

    if any("generation" in r for r in runs.values()):
        t = ReportTable("Generation", names)
        extractor = str(report["settings"].get("feature_extractor", "inception"))
        label_of = {
            key: metric_label(extractor, key)
            for key in ("fid", "inception_score", "kid", "precision", "recall", "diversity")
        }

        def kid(*keys: Any) -> list[Cell | None]:
            values = [_get(runs[n], *keys, "kid") for n in names]
            cells = [_with_ci(v, "mean") if isinstance(v, dict) else None for v in values]
            return [Cell(c.value, c.ci, sd=v["std"]) if c is not None else None for c, v in zip(cells, values)]

        for source, mode in (("fresh", "conditional"), ("fresh", "unconditional"), ("buffer", None)):
            keys = ("generation", source, mode) if mode else ("generation", source)
            label = f"{source} {mode}" if mode else "replay buffer"
            t.add(f"{label}: {label_of['fid']}", per_run(*keys, "fid"))
            t.add(f"{label}: {label_of['kid']} (mean ± sd)", kid(*keys))
            t.add(f"{label}: {label_of['inception_score']}", per_run(*keys, "inception_score", "mean"))
            t.add(f"{label}: class-conditional accuracy", per_run(*keys, "class_accuracy"))
            t.add(f"{label}: {label_of['precision']}", per_run(*keys, "precision"))
            t.add(f"{label}: {label_of['recall']}", per_run(*keys, "recall"))
            t.add(f"{label}: {label_of['diversity']}, 1 = as varied as real", per_run(*keys, "diversity"))
            t.add(f"{label}: class diversity, mean over classes", per_run(*keys, "class_diversity", "mean"))
        per_class = [_get(runs[n], "generation", "fresh", "conditional", "class_diversity", "per_class") for n in names]
        for k in range(max((len(p) for p in per_class if isinstance(p, list)), default=0)):
            t.add(f"fresh conditional: diversity of class {k}", [_get(p, k) for p in per_class])
        real = _get(report, "real_data", "fid")
        if real is not None:
            t.add(f"real data (floor): {label_of['fid']}", [real] * len(names))
        real_kid = _get(report, "real_data", "kid")
        if isinstance(real_kid, dict):
            floor = Cell(real_kid["mean"], sd=real_kid["std"])
            t.add(f"real data (floor): {label_of['kid']} (mean ± sd)", [floor] * len(names))
        t.figures = [
            (f"{n}: {key.replace('_', ' ')} samples", runs[n]["figures"][key])
            for n in names
            for key in ("fresh_conditional", "fresh_unconditional", "buffer")
            if key in runs[n].get("figures", {})
        ]
        tables.append(t)
    return tables


def rich_tables(report: dict[str, Any]) -> list[Table]:
    """The report's tables for the terminal."""
    out = []
    for t in build_tables(report):
        table = Table(title=t.title)
        table.add_column("metric")
        for name in t.runs:
            table.add_column(name, justify="right")
        for label, values in t.rows:
            table.add_row(label, *(_format(v) for v in values))
        out.append(table)
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: a header naming the runs, one table per section with its protocol and figures, the settings."""
    runs = report["runs"]
    lines = ["# jemkit eval report", "", f"jemkit {report['jemkit_version']}, {report['created']}.", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += ["| run | run directory | recipe | checkpoint (step) |", "| --- | --- | --- | --- |"]
    for name, run in runs.items():
        lines.append(
            f"| {name} | `{run['run_dir']}` | {run['recipe']} | "
            f"`{Path(run['checkpoint']['path']).name}` ({run['checkpoint']['step']}) |"
        )
    data = report["data"]
    lines += [
        "",
        f"Data: {data['name']!r}, {data['test_examples']} test examples, inputs {data['input_shape']} in [-1, 1].",
        "",
    ]
    described: set[str] = set()
    for t in build_tables(report):
        lines += [
            f"## {t.title}",
            "",
            "| metric | " + " | ".join(_md_escape(n) for n in t.runs) + " |",
            "| --- | " + " | ".join("---:" for _ in t.runs) + " |",
        ]
        for label, values in t.rows:
            lines.append(f"| {_md_escape(label)} | " + " | ".join(_format(v) for v in values) + " |")
        key = next((v for k, v in _SECTION_PROTOCOL.items() if t.title.startswith(k)), None)
        if key and key in report["protocol"] and key not in described:
            described.add(key)
            lines += ["", f"Protocol: {report['protocol'][key]}"]
        for caption, path in t.figures:
            lines += ["", f"![{caption}]({path})"]
        lines.append("")
    lines += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    return "\n".join(lines)


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """Write ``report.json`` and ``report.md`` into ``folder``."""
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
