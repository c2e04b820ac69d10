"""Small helpers shared by the built-in data plugins: input noise, dataset views, held-out splits.

All inputs handled here are float tensors already scaled to ``[-1, 1]``; labels are returned as
0-d ``int64`` tensors so that every built-in data set collates to the same dtypes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from jemkit.errors import DataError


def check_noise_std(noise_std: float) -> None:
    """Raise ``ValueError`` unless ``noise_std`` is a finite number ``>= 0``."""
    if not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0 (std in the [-1, 1] input scale), got {noise_std!r}")


def check_val_size(val_size: int) -> None:
    """Raise ``ValueError`` unless ``val_size`` is an integer ``>= 0``."""
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise ValueError(f"val_size must be an integer >= 0 (examples held out of train), got {val_size!r}")


class GaussianNoise:
    """Transform adding fresh ``N(0, std^2)`` noise to a float tensor on every call (``std`` >= 0)."""

    def __init__(self, std: float) -> None:
        check_noise_std(std)
        self.std = float(std)

    def __call__(self, x: Tensor) -> Tensor:
        if self.std == 0.0:
            return x
        return x + self.std * torch.randn_like(x)

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class TensorPairs(Dataset):
    """In-memory ``(x, y)`` pairs, with fresh Gaussian input noise of ``noise_std`` on each read.

    ``x`` is a float tensor ``[N, *input_shape]`` in ``[-1, 1]``; ``y`` an ``int64`` tensor ``[N]``.
    """

    def __init__(self, x: Tensor, y: Tensor, noise_std: float = 0.0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x = x
        self.targets = y.long()
        self.noise = GaussianNoise(noise_std)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.noise(self.x[index]), self.targets[index]


class TransformedView(Dataset):
    """The items ``base[indices]`` with ``transform`` applied to the input and the label as ``int64``.

    Several views (augmented train, plain train, validation) share one loaded ``base`` data set.
    ``targets`` (``int64 [len(view)]``) is known without reading any input when passed in.
    """

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int] | Tensor | None = None,
        transform: Callable[[Any], Tensor] | None = None,
        targets: Tensor | None = None,
    ) -> None:
        self.base = base
        self.indices = torch.arange(len(base)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.transform = transform
        self.targets = None if targets is None else torch.as_tensor(targets, dtype=torch.long)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[int(self.indices[index])]
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.as_tensor(y, dtype=torch.long)


def holdout_split(n: int, val_size: int, seed: int, what: str = "data set") -> tuple[Tensor, Tensor]:
    """Random ``(keep, held_out)`` index tensors over ``range(n)``, ``len(held_out) == val_size``.

    The permutation comes from a ``torch.Generator`` seeded with ``seed``, so the split is the same
    on every machine and independent of the global RNG. Both index tensors are sorted.
    """
    check_val_size(val_size)
    if val_size >= n:
        raise DataError(
            f"val_size={val_size} would hold out all {n} training examples of {what}; choose a "
            f"val_size below {n} (0 disables the validation split)."
        )
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    held_out, keep = order[:val_size], order[val_size:]
    return keep.sort().values, held_out.sort().values
