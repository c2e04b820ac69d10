"""Sample grids as PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import save_image


def save_sample_grid(x: Tensor, path: Path, nrow: int = 10, min_side: int = 32) -> Path:
    """Write images ``x`` ``[N, C, H, W]`` in ``[-1, 1]`` as one PNG grid, ``nrow`` images a row.

    The file appears complete or not at all (written beside it, then renamed). Images smaller than
    ``min_side`` pixels are enlarged (nearest neighbour) so that tiny inputs such as 8x8 digits
    stay visible.
    """
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.shape[-1] < min_side:
        factor = -(-min_side // x.shape[-1])
        x = F.interpolate(x, scale_factor=factor, mode="nearest")
    if x.shape[1] not in (1, 3):
        x = x[:, :1]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a failed write leaves no half a PNG
    try:
        save_image((x + 1) / 2, partial, nrow=nrow, padding=2, pad_value=1.0, format="png")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


__all__ = ["save_sample_grid"]
