"""Figures that explain themselves: grid lines visible on any background, labelled diagrams."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from jemkit.evaluation import figures
from jemkit.evaluation.calibration import reliability_bins

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_lines_show_between_white_black_and_grey_images():
    # Saturated samples (all white, all black) and a mid grey, 8x8 each, two per row.
    x = torch.stack([torch.full((1, 8, 8), v) for v in (1.0, -1.0, 0.0, 1.0)])
    image = figures.grid_image(x, per_row=2, min_side=8)
    g = figures.GUTTER
    assert image.shape == (2 * (8 + g) + g, 2 * (8 + g) + g, 3)
    assert image[g, g].tolist() == [1.0, 1.0, 1.0] and image[g, 8 + 2 * g].tolist() == [0.0, 0.0, 0.0]
    # Every gutter column between two images holds both a light and a dark line, whatever the images.
    gutter = image[g : g + 8, 8 + g : 8 + 2 * g]  # between the white and the black image
    assert gutter.min() == 0.0 and gutter.max() == 1.0
    columns = gutter[0, :, 0].tolist()
    assert columns == [1.0, 0.0, 1.0], "light, dark, light"
    rows = image[8 + g : 8 + 2 * g, g, 0].tolist()  # between the rows
    assert rows == [1.0, 0.0, 1.0]


def test_sample_grid_has_a_header_and_row_labels(tmp_path):
    x = torch.rand(20, 1, 8, 8) * 2 - 1
    header = "jem, checkpoint step 550\ninit U(-1, 1), 100 steps of sgld"
    path = figures.sample_grid(x, tmp_path / "grid.png", 2, header, [f"class {k}" for k in range(10)])
    assert path.read_bytes()[:8] == PNG_MAGIC
    width, height = Image.open(path).size
    assert height > width, "ten rows of two samples"


def test_reliability_diagram_draws_accuracy_and_confidence_side_by_side_with_counts(tmp_path):
    probs = torch.softmax(torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1))
    bins = reliability_bins(probs, y, 10)
    fig = figures.reliability_figure(bins, 0.1, "run")
    ax = fig.axes[0]
    accuracy, confidence = ax.containers  # two bar groups, neither stacked on the other
    for a, c in zip(accuracy, confidence):
        assert a.get_y() == 0.0 and c.get_y() == 0.0
        assert a.get_x() + a.get_width() <= c.get_x() + 1e-12, "the confidence bar stands beside the accuracy bar"
    counts = sorted(int(t.get_text()) for t in ax.texts)
    assert counts == sorted(int(n) for n in bins["count"] if n > 0) and sum(counts) == 200
    assert "ECE 0.1000 on 200 inputs" in ax.get_title() and ax.get_ylabel() and ax.get_xlabel()
    path = figures.reliability_diagram(bins, 0.1, "run", tmp_path / "rel.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_score_histograms_label_their_axes_and_carry_the_auroc(tmp_path):
    inside = {s: torch.randn(50) + 2 for s in ("log_px", "max_pyx", "grad_norm")}
    outside = {s: torch.randn(60) for s in ("log_px", "max_pyx", "grad_norm")}
    aurocs = {"log_px": 0.9, "max_pyx": 0.8, "grad_norm": 0.7}
    fig = figures.score_histogram_figure(inside, outside, "run: test vs noise", aurocs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["log_px: AUROC 0.9000", "max_pyx: AUROC 0.8000", "grad_norm: AUROC 0.7000"]
    assert all(ax.get_ylabel() == "density" and "higher = more in-distribution" in ax.get_xlabel() for ax in fig.axes)
    path = figures.score_histograms(inside, outside, "run: test vs noise", tmp_path / "ood.png", aurocs)
    assert path.read_bytes()[:8] == PNG_MAGIC
