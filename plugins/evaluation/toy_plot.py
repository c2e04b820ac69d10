"""End-of-run picture and density quality for 2-D models: the learned density ``exp(-E(x))`` with the
data and model samples, and how far both are from the truth.

A lifecycle-hook plugin on the public :class:`~jemkit.contracts.RunView`; it acts only when the
input shape is ``(2,)``. At ``jemkit_summary_entries`` (runs on toy sets that can draw fresh data)
it draws ``PLOT_SAMPLES`` samples from the run's sampler and adds the density-quality entries of
:func:`jemkit_plugins.evaluation.toy_density.toy_summary` to ``summary.json``: ``density/tv``,
``density/mode_masses``, ``density/true_modes``, ``density/mode_mass_min``, ``density/mode_mass_max``,
``density/mode_mass_err`` and ``samples/mmd2`` (meanings and units in that module). At
``jemkit_run_end`` it writes ``run_dir/samples/density.png`` (left: density and training data; right:
density and those samples) with the same numbers under the panels. The density is
``exp(-(E - min E))`` over the grid, so the most likely grid point has value 1. The trainer's own
sample grid handles only images. Through ``jemkit_draw_samples`` it also draws the samples of
``jemkit sample`` for 2-D runs, with the numbers of those samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import torch
from omegaconf import OmegaConf
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel, RunView
from jemkit.rng import rng_state, set_rng_state
from jemkit_plugins.evaluation.toy_density import describe_quality, toy_summary

#: File name of the picture inside ``run_dir/samples``.
DENSITY_FILE = "density.png"
#: Grid points per axis.
GRID_RESOLUTION = 160
#: Model samples drawn for the picture.
PLOT_SAMPLES = 1000
#: Training points shown.
PLOT_DATA = 2000

#: Samples and summary entries of a run, from ``jemkit_summary_entries`` to its ``jemkit_run_end``.
_FINAL: WeakKeyDictionary[JointEnergyModel, tuple[Tensor, dict[str, Any] | None]] = WeakKeyDictionary()


def plot_limit(*points: Tensor) -> float:
    """Half-width of a square plotting window holding every point with a 10% margin (at least 1.2)."""
    largest = max((float(p.abs().max()) for p in points if p.numel()), default=1.0)
    return max(1.2, 1.1 * largest)


@torch.no_grad()
def density_grid(model: JointEnergyModel, limit: float, resolution: int = GRID_RESOLUTION) -> Tensor:
    """``exp(-(E - min E))`` on a ``resolution x resolution`` grid over ``[-limit, limit]^2``; rows run along y."""
    device = next(model.parameters()).device
    axis = torch.linspace(-limit, limit, resolution, device=device)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    was_training = model.training
    model.eval()
    try:
        energy = torch.cat([model.energy(chunk) for chunk in points.split(8192)])
    finally:
        model.train(was_training)
    return torch.exp(-(energy - energy.min())).view(resolution, resolution).cpu()


def save_density_plot(
    path: Path,
    model: JointEnergyModel,
    data: Tensor,
    samples: Tensor,
    title: str = "",
    quality: Mapping[str, Any] | None = None,
) -> Path:
    """Write the two-panel PNG (density + data, density + samples) to ``path``; returns ``path``.

    ``quality`` (entries of :func:`~jemkit_plugins.evaluation.toy_density.toy_summary`) is written
    under the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = data.detach().float().cpu().view(-1, 2)
    samples = samples.detach().float().cpu().view(-1, 2)
    limit = plot_limit(data, samples)
    density = density_grid(model, limit)
    figure = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(figure)
    for index, (points, label, colour) in enumerate(((data, "data", "white"), (samples, "model samples", "red"))):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.imshow(density.numpy(), origin="lower", extent=(-limit, limit, -limit, limit), cmap="viridis")
        axes.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=4, c=colour, alpha=0.8, linewidths=0)
        axes.set_xlim(-limit, limit)
        axes.set_ylim(-limit, limit)
        axes.set_aspect("equal")
        axes.set_title(f"exp(-E(x)) and {label}")
    if title:
        figure.suptitle(title)
    note = describe_quality(dict(quality)) if quality else ""
    figure.tight_layout(rect=(0, 0.05, 1, 1) if note else (0, 0, 1, 1))
    if note:
        figure.text(0.5, 0.015, note, ha="center", va="bottom", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def training_inputs(dataset: Any, limit: int) -> Tensor:
    """``limit`` fresh data points ``[n, 2]`` when the data set can draw them (toy sets), else up to
    ``limit`` stored training inputs."""
    sample = getattr(dataset, "sample", None)
    if callable(sample):
        return sample(limit, torch.Generator().manual_seed(0))[0]
    x = getattr(dataset, "x", None)
    if isinstance(x, Tensor):
        return x[:limit]
    return torch.stack([dataset[i][0] for i in range(min(limit, len(dataset)))])


def density_quality(model: JointEnergyModel, dataset: Any, samples: Tensor | None) -> dict[str, Any] | None:
    """The ``density/...`` and ``samples/mmd2`` entries for a model of a toy set (one whose splits
    draw fresh points and know their distribution); ``None`` for other 2-D data."""
    distribution = getattr(dataset, "distribution", None)
    draw = getattr(dataset, "sample", None)
    if distribution is None or not callable(draw):
        return None
    noise = getattr(dataset, "noise_level", None)
    noise = distribution.default_noise if noise is None else noise
    was_training = model.training
    model.eval()
    try:
        return toy_summary(
            lambda x: model.energy(x.to(next(model.parameters()).device)).cpu(),
            distribution.name, draw, distribution.num_classes, noise, samples,
        )
    finally:
        model.train(was_training)


def final_samples(run: RunView) -> Tensor:
    """``PLOT_SAMPLES`` samples of the run's sampler with the final sample grid's steps (RNG streams kept)."""
    state = rng_state()  # the picture must not perturb the RNG streams
    try:
        extra = OmegaConf.select(run.config, "train.sample_extra_steps", default=0) or 0
        steps = getattr(run.sampler, "steps", 0) + int(extra)
        return run.sampler.sample(run.model, PLOT_SAMPLES, steps=steps, persist=False)
    finally:
        set_rng_state(state)


@hookimpl
def jemkit_summary_entries(run: RunView, summary: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """For 2-D runs on toy sets, the density-quality entries (see the module docstring)."""
    if tuple(run.context.input_shape or ()) != (2,) or not run.is_main:
        return None
    samples = final_samples(run)
    quality = density_quality(run.model, run.data.train, samples)
    _FINAL[run.model] = (samples, quality)
    return quality


@hookimpl
def jemkit_run_end(run: RunView, summary: Mapping[str, Any]) -> None:
    """For 2-D inputs, write ``samples/density.png``; other runs are left alone."""
    if tuple(run.context.input_shape or ()) != (2,) or not run.is_main:
        return
    samples, quality = _FINAL.pop(run.model, (None, None))  # none after a diverged run
    if samples is None:
        samples = final_samples(run)
    data = training_inputs(run.data.train, PLOT_DATA)
    name = str(run.config.get("name", ""))
    path = Path(run.run_dir) / "samples" / DENSITY_FILE
    save_density_plot(path, run.model, data, samples, title=name, quality=quality)


@hookimpl
def jemkit_draw_samples(
    path: Path, model: JointEnergyModel, samples: Tensor, data: DataSplits, context: BuildContext, title: str
) -> Path | None:
    """For 2-D inputs, the density picture with ``PLOT_DATA`` training points and ``samples`` (and,
    for toy sets, the density quality with these samples' MMD^2); else ``None``."""
    if tuple(context.input_shape or ()) != (2,):
        return None
    quality = density_quality(model, data.train, samples) if data is not None else None
    train = training_inputs(data.train, PLOT_DATA) if data is not None else samples[:0]
    return save_density_plot(path, model, train, samples, title=title, quality=quality)
