"""Per-item RNG seeds for training data: augmentation that depends on (seed, epoch, index) alone.

Random augmentations (crops, flips, input noise) draw from torch's global CPU generator. Read
through :class:`SeededItems`, each item draws from its own seed and the global generator is left
as it was, so the training batches are the same

* in the main process and in any number of ``DataLoader`` worker processes,
* after resuming mid-epoch (no need to replay the RNG draws of the skipped batches),
* whatever the sampler or the model drew from the global generator in between.

Only torch's CPU generator is seeded (what torchvision transforms and jemkit's noise use); a
transform that draws from ``random`` or ``numpy`` keeps its own streams.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

_MASK = (1 << 63) - 1


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of ``epoch`` of a run seeded with ``seed`` (a fixed mix)."""
    value = (int(seed) & _MASK) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + int(index) * 0x94D049BB133111EB
    value ^= value >> 31
    return value & _MASK


class SeededItems(Dataset):
    """``dataset[i]`` read under the seed :func:`item_seed` ``(seed, epoch, i)``; global RNG unchanged."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        generator = torch.default_generator  # torch.manual_seed would cost ~100x more per item
        state = generator.get_state()
        generator.manual_seed(item_seed(self.seed, self.epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)
