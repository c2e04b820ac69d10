"""Built-in data set ``digits``: scikit-learn's bundled 8x8 handwritten digits (no download).

1,797 grey images of the digits 0-9, stored as ``[1, 8, 8]`` float32 in ``[-1, 1]`` (pixel
intensities 0..16 mapped linearly), labels ``int64`` in ``[0, 10)``. A fixed stratified split
makes it a fast, CPU-sized stand-in for CIFAR-10 in tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from jemkit import hookimpl
from jemkit.contracts import BuildContext, DataSplits
from jemkit_plugins.data.data_common import TensorPairs, check_noise_std, check_val_size, holdout_split

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: Largest pixel intensity in ``sklearn.datasets.load_digits`` (values are integers 0..16).
DIGITS_MAX_INTENSITY = 16.0


@dataclass
class DigitsParams:
    """Split and noise settings of the ``digits`` data set."""

    #: Fraction of the 1,797 images in the test split, in (0, 1).
    test_fraction: float = 0.2
    #: Seed of the stratified train/test split and of the validation hold-out.
    split_seed: int = 1234
    #: Std of Gaussian noise added to train, validation and test inputs (in the [-1, 1] scale), fresh on every read.
    noise_std: float = 0.0
    #: Images held out of the training split as a validation split (0: none).
    val_size: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.test_fraction, bool)
            or not isinstance(self.test_fraction, (int, float))
            or not 0.0 < self.test_fraction < 1.0
        ):
            raise ValueError(f"test_fraction must be a number strictly between 0 and 1, got {self.test_fraction!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ValueError(f"split_seed must be an integer, got {self.split_seed!r}")
        check_noise_std(self.noise_std)
        check_val_size(self.val_size)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All digits as ``(x float32 [1797, 1, 8, 8] in [-1, 1], y int64 [1797])``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)
    x = x * (2.0 / DIGITS_MAX_INTENSITY) - 1.0
    return x, bunch.target.astype(np.int64)


def build_digits(params: DigitsParams, context: BuildContext) -> DataSplits:
    """scikit-learn 8x8 digits (bundled, no download): 1x8x8 in [-1, 1], 10 classes, stratified split."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits_arrays()
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=params.test_fraction, random_state=params.split_seed, stratify=y
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)

    val = None
    if params.val_size > 0:
        keep, held_out = holdout_split(len(train_idx), params.val_size, params.split_seed, what="digits")
        val_idx, train_idx = train_idx[held_out.numpy()], train_idx[keep.numpy()]
        val = TensorPairs(x_t[val_idx], y_t[val_idx], params.noise_std)

    train = TensorPairs(x_t[train_idx], y_t[train_idx], params.noise_std)
    test = TensorPairs(x_t[test_idx], y_t[test_idx], params.noise_std)
    return DataSplits(
        train=train,
        test=test,
        num_classes=10,
        input_shape=(1, 8, 8),
        val=val,
        train_plain=train,  # no augmentation: the plain training split is the training split
        class_names=[str(d) for d in range(10)],
    )


@hookimpl
def jemkit_register_data(registry: Registry) -> None:
    registry.register(
        "digits",
        build_digits,
        params=DigitsParams,
        description="scikit-learn 8x8 digits, bundled (no download): 1x8x8 in [-1, 1], 10 classes",
    )
