"""PNG figures of the report (matplotlib's object API, no global pyplot state).

Every figure says what it shows without the report beside it: axes are labelled, the headline
number (ECE, AUROC) is in the title, and sample grids carry a header naming the run, the
checkpoint step, how the chains started and how many steps they ran, with one label per row.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from jemkit.evaluation.scores import SCORES

_SCORE_LABELS = {"log_px": "log p(x) = -E(x)", "max_pyx": "max p(y|x)", "grad_norm": "-||d log p(x)/dx||"}

#: Pixels between two images of a sample grid: light, dark, light (the dark middle line shows on
#: light samples, the light outer lines on dark or saturated ones).
GUTTER = 3


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def reliability_diagram(bins: dict[str, list[float]], ece: float, title: str, path: Path) -> Path:
    """Write :func:`reliability_figure` to ``path``."""
    return _save(reliability_figure(bins, ece, title), path)


def reliability_figure(bins: dict[str, list[float]], ece: float, title: str) -> Figure:
    """Per-bin accuracy and mean confidence side by side (the gap is their difference, drawn over
    neither), the diagonal of perfect calibration, and each bin's number of inputs above its bars
    (a bar of 2 inputs says little)."""
    fig = Figure(figsize=(5.2, 4.4), dpi=100)
    ax = fig.add_subplot()
    lower, upper = np.asarray(bins["lower"]), np.asarray(bins["upper"])
    width = upper - lower
    count = np.asarray(bins["count"])
    filled = count > 0
    accuracy = np.where(filled, bins["accuracy"], 0.0)
    confidence = np.where(filled, bins["confidence"], 0.0)
    half = 0.45 * width
    ax.bar(lower + 0.05 * width, accuracy, width=half, align="edge", color="tab:blue", edgecolor="black",
           linewidth=0.5, label="accuracy")
    ax.bar(lower + 0.5 * width, confidence, width=half, align="edge", color="tab:orange", edgecolor="black",
           linewidth=0.5, label="mean confidence (gap = difference)")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for left, w, n, top in zip(lower, width, count, np.maximum(accuracy, confidence)):
        if n > 0:
            ax.text(left + w / 2, min(top, 1.0) + 0.015, f"{int(n)}", ha="center", va="bottom", fontsize=6)
    total = int(count.sum())
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.1),
        xlabel="confidence max p(y|x) (bin)",
        ylabel="accuracy / mean confidence",
        title=f"{title}\nECE {ece:.4f} on {total} inputs (numbers: inputs per bin)",
    )
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=7)
    return fig


def score_histograms(
    inside: dict[str, Tensor],
    outside: dict[str, Tensor],
    title: str,
    path: Path,
    aurocs: dict[str, float] | None = None,
) -> Path:
    """Write :func:`score_histogram_figure` to ``path``."""
    return _save(score_histogram_figure(inside, outside, title, aurocs), path)


def score_histogram_figure(
    inside: dict[str, Tensor], outside: dict[str, Tensor], title: str, aurocs: dict[str, float] | None = None
) -> Figure:
    """One histogram panel per OOD score (density of in-distribution test inputs against the OOD
    set, each normalised to area 1), the score's AUROC in the panel title."""
    fig = Figure(figsize=(4.0 * len(SCORES), 3.4), dpi=100)
    for i, name in enumerate(SCORES):
        ax = fig.add_subplot(1, len(SCORES), i + 1)
        a, b = inside[name].double().numpy(), outside[name].double().numpy()
        low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        if not high > low:  # all scores equal: one bin around the common value
            low, high = low - 0.5, high + 0.5
        for values, label in ((a, f"in-distribution (n={len(a)})"), (b, f"OOD (n={len(b)})")):
            ax.hist(values, bins=40, range=(low, high), density=True, histtype="stepfilled", alpha=0.5, label=label)
        panel = name if aurocs is None or name not in aurocs else f"{name}: AUROC {aurocs[name]:.4f}"
        ax.set(xlabel=f"{_SCORE_LABELS[name]} (higher = more in-distribution)", ylabel="density", title=panel)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


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
    return _save(fig, path)


def grid_image(x: Tensor, per_row: int, min_side: int = 32) -> np.ndarray:
    """Images ``x`` ``[N, C, H, W]`` in ``[-1, 1]`` tiled ``per_row`` a row as an ``[H', W', 3]``
    array in ``[0, 1]``, separated by :data:`GUTTER`-pixel light-dark-light lines (visible on
    any background). Images smaller than ``min_side`` are enlarged (nearest neighbour)."""
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.shape[-1] < min_side:
        x = F.interpolate(x, scale_factor=-(-min_side // x.shape[-1]), mode="nearest")
    x = (x[:, :3] + 1) / 2
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 2:
        x = torch.cat([x, x[:, :1]], dim=1)
    n, _, h, w = x.shape
    per_row = max(1, min(per_row, n))
    rows = -(-n // per_row)
    step_h, step_w = h + GUTTER, w + GUTTER
    canvas = torch.ones(3, rows * step_h + GUTTER, per_row * step_w + GUTTER)
    middle = GUTTER // 2
    for r in range(rows + 1):  # dark middle lines of the horizontal and vertical gutters
        canvas[:, r * step_h + middle, :] = 0.0
    for c in range(per_row + 1):
        canvas[:, :, c * step_w + middle] = 0.0
    for i in range(n):
        r, c = divmod(i, per_row)
        top, left = r * step_h + GUTTER, c * step_w + GUTTER
        canvas[:, top : top + h, left : left + w] = x[i]
    return canvas.permute(1, 2, 0).numpy()


def sample_grid(
    x: Tensor,
    path: Path,
    per_row: int,
    header: str,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """A PNG of the samples ``x`` ``[N, C, H, W]`` (``[-1, 1]``), ``per_row`` a row, with ``header``
    above (run, checkpoint step, chain start, steps) and ``row_labels`` (e.g. ``class 3``) left of
    the rows."""
    image = grid_image(x, per_row)
    height, width = image.shape[:2]
    scale = 1.0 / 60  # inches per pixel: 8x8 digits enlarged to 32 px stay about half an inch
    label_space = 0.9 if row_labels else 0.2
    fig_width = max(4.0, width * scale + label_space)
    chars = max(30, int(fig_width * 14))  # characters of an 8-point line across the figure
    lines = [wrapped for line in header.split("\n") for wrapped in textwrap.wrap(line, chars)]
    header = "\n".join(lines)
    fig = Figure(figsize=(fig_width, height * scale + 0.3 + 0.16 * len(lines)), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        n_rows = -(-len(x) // max(1, per_row))
        step = (height - GUTTER) / max(n_rows, 1)
        ax.set_yticks([GUTTER / 2 + step * (k + 0.5) for k in range(n_rows)])
        ax.set_yticklabels(list(row_labels)[:n_rows], fontsize=7)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    ax.set_title(header, fontsize=8)
    return _save(fig, path)
