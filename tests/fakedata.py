"""Tiny CIFAR-10, CIFAR-100 and SVHN copies in the exact on-disk layout torchvision reads.

Images are passed (or generated) as ``uint8 [N, 32, 32, 3]`` (HWC, RGB), labels as class
indices. The writers produce what torchvision parses:

- CIFAR: a folder of pickled dicts whose rows are ``uint8 [3072]`` (1024 red, then green, then
  blue values, each plane row-major) plus a meta file with the class names. torchvision loads them
  with ``pickle.load(f, encoding="latin1")`` and reads string keys.
- SVHN: MATLAB files ``{train,test}_32x32.mat`` with ``X`` ``uint8 [32, 32, 3, N]`` and ``y``
  ``uint8 [N, 1]``, where the digit 0 has the label 10.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random images ``uint8 [n, 32, 32, 3]``."""
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images ``uint8 [N, 32, 32, 3]`` as CIFAR rows ``uint8 [N, 3072]`` (channel planes)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32))


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10_arrays(
    root: Path,
    train: list[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray],
    class_names: list[str] = CIFAR10_CLASSES,
) -> Path:
    """Write ``cifar-10-batches-py`` under ``root`` from five ``(images, labels)`` train batches and a test batch."""
    if len(train) != 5:
        raise ValueError(f"CIFAR-10 has 5 training batches, got {len(train)}")
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i + 1}", batch) for i, batch in enumerate(train)] + [("test_batch", test)]
    for name, (images, labels) in batches:
        _dump(
            folder / name,
            {
                "batch_label": f"fake {name}",
                "labels": [int(label) for label in labels],
                "data": cifar_rows(images),
                "filenames": [f"{name}_{i}.png" for i in range(len(images))],
            },
        )
    per_batch = len(train[0][0])
    meta = {"num_cases_per_batch": per_batch, "label_names": list(class_names), "num_vis": 3072}
    _dump(folder / "batches.meta", meta)
    return folder


def write_fake_cifar10(root: Path, n_per_batch: int = 20, seed: int = 0) -> Path:
    """Random CIFAR-10 copy: 5 train batches and 1 test batch of ``n_per_batch`` images; returns the folder.

    Labels cycle through 0..9 so every class appears in every batch when ``n_per_batch >= 10``.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n_per_batch) % 10
    train = [(random_images(n_per_batch, rng), rng.permutation(labels)) for _ in range(5)]
    test = (random_images(n_per_batch, rng), rng.permutation(labels))
    return write_cifar10_arrays(root, train, test)


def write_fake_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Random CIFAR-100 copy (``train``, ``test``, ``meta`` in ``cifar-100-python``); returns the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.permutation(np.arange(n) % 100)
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": f"fake {name}",
                "fine_labels": [int(label) for label in fine],
                "coarse_labels": [int(label) // 5 for label in fine],
                "data": cifar_rows(random_images(n, rng)),
            },
        )
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        },
    )
    return folder


def write_svhn_arrays(root: Path, split: str, images: np.ndarray, digits: np.ndarray) -> Path:
    """Write ``{split}_32x32.mat`` under ``root`` from HWC images and digits 0-9 (stored as 1-10)."""
    from scipy.io import savemat

    Path(root).mkdir(parents=True, exist_ok=True)
    labels = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    path = Path(root) / f"{split}_32x32.mat"
    savemat(path, {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": labels})
    return path


def write_fake_svhn(root: Path, n_train: int = 60, n_test: int = 30, seed: int = 0) -> Path:
    """Random SVHN copy (``train_32x32.mat``, ``test_32x32.mat``) directly under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        write_svhn_arrays(root, split, random_images(n, rng), rng.permutation(np.arange(n) % 10))
    return Path(root)
