"""Built-in data sets ``cifar10``, ``cifar100`` and ``svhn`` through ``torchvision.datasets``.

Images are ``[3, 32, 32]`` float32 scaled to ``[-1, 1]``, then Gaussian input noise is added to
every split (JEM's recipe: sigma 0.03). Training images are augmented with a random 32-px crop
of the 4-px reflect-padded image and a horizontal flip (no flip for SVHN, whose digits are not
mirror-symmetric). A missing data set is downloaded once into ``root``; when that is impossible
(offline) a :class:`~jemkit.errors.DataError` says where jemkit looked and how to fix it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.datasets import VisionDataset

from jemkit import hookimpl
from jemkit.contracts import BuildContext, DataSplits
from jemkit.errors import DataError
from jemkit_plugins.data.data_common import (
    GaussianNoise,
    TransformedView,
    check_noise_std,
    check_val_size,
    holdout_split,
)

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: Seconds a single network operation of a download may stall before it fails.
DOWNLOAD_SOCKET_TIMEOUT_S = 20.0
#: Side of the square images of every data set here, in pixels.
IMAGE_SIZE = 32
#: Padding (pixels, reflect mode) before the random crop of the training augmentation.
CROP_PADDING = 4


@dataclass
class ImageDataParams:
    """Where the images live, how to augment them, and the input noise."""

    #: Folder holding (or receiving) the data set; ``~`` is expanded, relative paths start at the cwd.
    root: str = "data"
    #: Download the data set into ``root`` when it is missing there.
    download: bool = True
    #: Random crop (4-px reflect padding) and horizontal flip (not for SVHN) on the training split.
    augment: bool = True
    #: Std of Gaussian noise added to train, validation and test inputs (in the [-1, 1] scale), fresh on every read.
    noise_std: float = 0.03
    #: Training images held out as a validation split (JEM holds out 5000; 0: none).
    val_size: int = 0
    #: Seed of the validation hold-out.
    split_seed: int = 1234
    #: Training items become ``(x_augmented, y, x_plain)`` triples, so the p(x) term sees
    #: un-augmented images (SADA-JEM); the classifier still trains on the augmented ones.
    px_unaugmented: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.root, (str, os.PathLike)) or not str(self.root).strip():
            raise ValueError(f"root must be a non-empty folder path, got {self.root!r}")
        for name in ("download", "augment", "px_unaugmented"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_noise_std(self.noise_std)
        check_val_size(self.val_size)
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ValueError(f"split_seed must be an integer, got {self.split_seed!r}")


# --------------------------------------------------------------------------- torchvision classes
#
# torchvision checks the md5 of every file on each load, which rejects anything but the original
# release files (small test copies included). These subclasses only check that the files exist
# when they are already on disk; downloads still go through torchvision's own routines, which
# verify the md5 of what they fetch. Parsing (pickled batches, .mat files) is torchvision's.


class _CIFAR10(datasets.CIFAR10):
    meta = {**datasets.CIFAR10.meta, "md5": None}  # _load_meta: existence check only

    def _check_integrity(self) -> bool:
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, name)) for name in names)


class _CIFAR100(datasets.CIFAR100):
    meta = {**datasets.CIFAR100.meta, "md5": None}
    _check_integrity = _CIFAR10._check_integrity


class _SVHN(datasets.SVHN):
    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))

    def download(self) -> None:
        if not self._check_integrity():  # torchvision would re-download any file whose md5 differs
            super().download()


# --------------------------------------------------------------------------- data set table


@dataclass(frozen=True)
class _ImageSet:
    """How to find, open and describe one torchvision data set."""

    name: str
    title: str
    num_classes: int
    flip: bool
    #: Files that must exist under root, relative to it.
    files: tuple[str, ...]
    #: What a user may place under root by hand, for the error message.
    manual: str
    download_size: str
    #: ``open(root, train, download) -> (dataset, targets, class_names)``
    open: Callable[[str, bool, bool], tuple[VisionDataset, list[int], list[str]]]


def _open_cifar(cls: type[datasets.CIFAR10]) -> Callable[[str, bool, bool], tuple[VisionDataset, list[int], list[str]]]:
    def open_split(root: str, train: bool, download: bool) -> tuple[VisionDataset, list[int], list[str]]:
        dataset = cls(root, train=train, download=download)
        return dataset, list(dataset.targets), list(dataset.classes)

    return open_split


def _open_svhn(root: str, train: bool, download: bool) -> tuple[VisionDataset, list[int], list[str]]:
    try:
        import scipy.io  # noqa: F401  (torchvision's SVHN reads .mat files with scipy)
    except ImportError as exc:
        raise DataError(
            "Data set 'svhn' needs scipy to read its .mat files; install it with `pip install scipy`."
        ) from exc
    dataset = _SVHN(root, split="train" if train else "test", download=download)
    return dataset, [int(label) for label in dataset.labels], [str(d) for d in range(10)]


def _cifar_files(cls: type[datasets.CIFAR10]) -> tuple[str, ...]:
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return tuple(f"{cls.base_folder}/{name}" for name in names)


IMAGE_SETS: dict[str, _ImageSet] = {
    "cifar10": _ImageSet(
        name="cifar10",
        title="CIFAR-10",
        num_classes=10,
        flip=True,
        files=_cifar_files(_CIFAR10),
        manual="the extracted `cifar-10-batches-py` folder (from cifar-10-python.tar.gz)",
        download_size="about 170 MB",
        open=_open_cifar(_CIFAR10),
    ),
    "cifar100": _ImageSet(
        name="cifar100",
        title="CIFAR-100",
        num_classes=100,
        flip=True,
        files=_cifar_files(_CIFAR100),
        manual="the extracted `cifar-100-python` folder (from cifar-100-python.tar.gz)",
        download_size="about 170 MB",
        open=_open_cifar(_CIFAR100),
    ),
    "svhn": _ImageSet(
        name="svhn",
        title="SVHN",
        num_classes=10,
        flip=False,
        files=("train_32x32.mat", "test_32x32.mat"),
        manual="the files `train_32x32.mat` and `test_32x32.mat`",
        download_size="about 250 MB",
        open=_open_svhn,
    ),
}


# --------------------------------------------------------------------------- loading


def image_transform(augment: bool, flip: bool, noise_std: float) -> transforms.Compose:
    """PIL image to float32 ``[3, 32, 32]`` in ``[-1, 1]`` plus ``N(0, noise_std^2)`` noise.

    With ``augment``: random 32-px crop of the 4-px reflect-padded image, then (if ``flip``) a
    horizontal flip with probability 0.5.
    """
    steps: list[Callable] = []
    if augment:
        steps.append(transforms.RandomCrop(IMAGE_SIZE, padding=CROP_PADDING, padding_mode="reflect"))
        if flip:
            steps.append(transforms.RandomHorizontalFlip())
    steps += [
        transforms.ToTensor(),  # [0, 1]
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]
        GaussianNoise(noise_std),
    ]
    return transforms.Compose(steps)


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Make stalled network operations fail after ``seconds`` (restores the previous default)."""
    previous = socket.getdefaulttimeout()
    if previous is None or previous > seconds:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _brief(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _missing(spec: _ImageSet, root: Path) -> list[str]:
    return [name for name in spec.files if not (root / name).is_file()]


def _not_found_error(spec: _ImageSet, root: Path, missing: list[str], reason: str) -> DataError:
    names: list[str] = []
    for name in missing:
        folder = name.split("/")[0]
        if "/" in name and not (root / folder).is_dir():
            name = folder + "/"  # a missing folder stands for all the files in it
        if name not in names:
            names.append(name)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return DataError(
        f"Data set {spec.name!r} ({spec.title}) was not found in {root} (missing {shown}), and {reason}. "
        f"To fix it, run once with internet access and data.download=true so jemkit downloads it "
        f"({spec.download_size}) into that folder, or place {spec.manual} directly under {root}, "
        f"or set data.root=... to the folder that already holds it."
    )


def _unreadable_error(spec: _ImageSet, root: Path, exc: BaseException) -> DataError:
    return DataError(
        f"Data set {spec.name!r} ({spec.title}) was found in {root} but could not be read "
        f"({_brief(exc)}). The files may be truncated or not in the original format: delete "
        f"{', '.join(sorted({name.split('/')[0] for name in spec.files}))} there and run again with "
        f"internet access and data.download=true to fetch a fresh copy, or set data.root=... to a "
        f"folder holding a good copy."
    )


def _open_both(spec: _ImageSet, root: Path, download: bool) -> tuple[
    tuple[VisionDataset, list[int], list[str]], tuple[VisionDataset, list[int], list[str]]
]:
    """Open the train and test splits, downloading first when files are missing and allowed."""
    missing = _missing(spec, root)
    if missing and not download:
        raise _not_found_error(spec, root, missing, "downloading is disabled (data.download=false)")
    try:
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            train = spec.open(str(root), True, bool(missing))
            test = spec.open(str(root), False, bool(missing))
    except DataError:
        raise
    except Exception as exc:  # any failure to fetch or parse the files becomes one clear paragraph
        still_missing = _missing(spec, root)
        if still_missing:
            raise _not_found_error(spec, root, still_missing, f"the download failed ({_brief(exc)})") from exc
        raise _unreadable_error(spec, root, exc) from exc
    return train, test


class WithPlainInputs(Dataset):
    """Items ``(x, y, x_plain)``: an augmented view's item plus the same image without augmentation."""

    def __init__(self, augmented: TransformedView, plain: TransformedView) -> None:
        self.augmented = augmented
        self.plain = plain
        self.targets = augmented.targets

    def __len__(self) -> int:
        return len(self.augmented)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.augmented[index]
        return x, y, self.plain[index][0]


def build_image_data(name: str, params: ImageDataParams) -> DataSplits:
    """Train/test (and optional validation) splits of the torchvision data set ``name``."""
    spec = IMAGE_SETS[name]
    root = Path(params.root).expanduser().resolve()
    (train_base, train_targets, class_names), (test_base, test_targets, _) = _open_both(spec, root, params.download)

    plain = image_transform(augment=False, flip=False, noise_std=params.noise_std)
    train_tf = image_transform(augment=params.augment, flip=spec.flip, noise_std=params.noise_std)
    train_y = torch.tensor(train_targets, dtype=torch.long)

    keep, val = torch.arange(len(train_base)), None
    if params.val_size > 0:
        keep, held_out = holdout_split(len(train_base), params.val_size, params.split_seed, what=name)
        val = TransformedView(train_base, held_out, plain, targets=train_y)
    train = TransformedView(train_base, keep, train_tf, targets=train_y)
    train_plain = TransformedView(train_base, keep, plain, targets=train_y) if params.augment else train
    if params.px_unaugmented:
        train = WithPlainInputs(train, TransformedView(train_base, keep, plain, targets=train_y))
    test = TransformedView(test_base, None, plain, targets=torch.tensor(test_targets, dtype=torch.long))
    return DataSplits(
        train=train,
        test=test,
        num_classes=spec.num_classes,
        input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
        val=val,
        train_plain=train_plain,
        class_names=class_names,
    )


def build_cifar10(params: ImageDataParams, context: BuildContext) -> DataSplits:
    """CIFAR-10 via torchvision: 3x32x32 in [-1, 1], 10 classes, crop+flip augmentation."""
    return build_image_data("cifar10", params)


def build_cifar100(params: ImageDataParams, context: BuildContext) -> DataSplits:
    """CIFAR-100 via torchvision: 3x32x32 in [-1, 1], 100 fine classes, crop+flip augmentation."""
    return build_image_data("cifar100", params)


def build_svhn(params: ImageDataParams, context: BuildContext) -> DataSplits:
    """SVHN via torchvision: 3x32x32 in [-1, 1], 10 digit classes (0-9), crop augmentation, no flip."""
    return build_image_data("svhn", params)


@hookimpl
def jemkit_register_data(registry: Registry) -> None:
    for name, factory in (("cifar10", build_cifar10), ("cifar100", build_cifar100), ("svhn", build_svhn)):
        registry.register(name, factory, params=ImageDataParams)
