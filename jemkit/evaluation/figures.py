"""PNG figures of the report (matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from jemkit.evaluation.scores import SCORES

_SCORE_LABELS = {"log_px": "log p(x) = -E(x)", "max_pyx": "max p(y|x)", "grad_norm": "-||d log p(x)/dx||"}


def reliability_diagram(bins: dict[str, list[float]], ece: float, title: str, path: Path) -> Path:
    """Bars of per-bin accuracy against the diagonal of perfect calibration."""
    fig = Figure(figsize=(4.2, 4.2), dpi=100)
    ax = fig.add_subplot()
    width = [upper - lower for lower, upper in zip(bins["lower"], bins["upper"])]
    ax.bar(bins["lower"], bins["accuracy"], width=width, align="edge", edgecolor="black", label="accuracy")
    gap = [c - a if n > 0 else 0.0 for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"])]
    ax.bar(bins["lower"], gap, bottom=bins["accuracy"], width=width, align="edge", color="red", alpha=0.3, label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{title}\nECE {ece:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def score_histograms(inside: dict[str, Tensor], outside: dict[str, Tensor], title: str, path: Path) -> Path:
    """One histogram panel per OOD score: in-distribution test inputs against the OOD set."""
    fig = Figure(figsize=(4.0 * len(SCORES), 3.2), dpi=100)
    for i, name in enumerate(SCORES):
        ax = fig.add_subplot(1, len(SCORES), i + 1)
        a, b = inside[name].double().numpy(), outside[name].double().numpy()
        low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        if not high > low:  # all scores equal: one bin around the common value
            low, high = low - 0.5, high + 0.5
        for values, label in ((a, "in-distribution"), (b, "OOD")):
            ax.hist(values, bins=40, range=(low, high), density=True, histtype="stepfilled", alpha=0.5, label=label)
        ax.set(xlabel=_SCORE_LABELS[name], title=name)
        if i == 0:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def robustness_curves(curves: dict[str, list[tuple[float, float]]], norm: str, path: Path) -> Path:
    """Robust accuracy against epsilon, one line per run (and defended variant)."""
    fig = Figure(figsize=(5.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    for label, points in curves.items():
        eps, acc = zip(*points) if points else ((), ())
        ax.plot(eps, acc, marker="o", linestyle="--" if "defended" in label else "-", label=label)
    name = "L-inf" if norm == "linf" else "L2"
    ax.set(
        xlabel=f"{name} epsilon (inputs in [-1, 1])", ylabel="robust accuracy", ylim=(-0.02, 1.02), title=f"PGD, {name}"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path
