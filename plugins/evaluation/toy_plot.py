"""End-of-run picture for 2-D models: the learned density ``exp(-E(x))`` with the data and model samples.

A lifecycle-hook plugin on the public :class:`~jemkit.contracts.RunView`: at ``jemkit_run_end``
it acts only when the input shape is ``(2,)`` and writes ``run_dir/samples/density.png`` (left: density and training data; right: density
and samples from the run's sampler). The density is ``exp(-(E - min E))`` over the grid, so the
most likely grid point has value 1. The trainer's own sample grid handles only images.
Through ``jemkit_draw_samples`` it also draws the samples of ``jemkit sample`` for 2-D runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel, RunView
from jemkit.rng import rng_state, set_rng_state

#: File name of the picture inside ``run_dir/samples``.
DENSITY_FILE = "density.png"
#: Grid points per axis.
GRID_RESOLUTION = 160
#: Model samples drawn for the picture.
PLOT_SAMPLES = 1000
#: Training points shown.
PLOT_DATA = 2000


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


def save_density_plot(path: Path, model: JointEnergyModel, data: Tensor, samples: Tensor, title: str = "") -> Path:
    """Write the two-panel PNG (density + data, density + samples) to ``path``; returns ``path``."""
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
    figure.tight_layout()
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


@hookimpl
def jemkit_run_end(run: RunView, summary: Mapping[str, Any]) -> None:
    """For 2-D inputs, write ``samples/density.png``; other runs are left alone."""
    if tuple(run.context.input_shape or ()) != (2,) or not run.is_main:
        return
    state = rng_state()  # the picture must not perturb the RNG streams
    try:
        extra = OmegaConf.select(run.config, "train.sample_extra_steps", default=0) or 0
        steps = getattr(run.sampler, "steps", 0) + int(extra)
        samples = run.sampler.sample(run.model, PLOT_SAMPLES, steps=steps, persist=False)
        data = training_inputs(run.data.train, PLOT_DATA)
        name = str(run.config.get("name", ""))
        save_density_plot(Path(run.run_dir) / "samples" / DENSITY_FILE, run.model, data, samples, title=name)
    finally:
        set_rng_state(state)


@hookimpl
def jemkit_draw_samples(
    path: Path, model: JointEnergyModel, samples: Tensor, data: DataSplits, context: BuildContext, title: str
) -> Path | None:
    """For 2-D inputs, the density picture with ``PLOT_DATA`` training points and ``samples``; else ``None``."""
    if tuple(context.input_shape or ()) != (2,):
        return None
    return save_density_plot(path, model, training_inputs(data.train, PLOT_DATA), samples, title=title)
