"""Built-in out-of-distribution sets (registry kind ``ood``) for ``jemkit eval``.

Every factory returns a data set of ``(x, y)`` whose inputs have the evaluated model's
``context.input_shape`` and lie in ``[-1, 1]`` (plus the input noise, ``noise_std``, that JEM adds
to every evaluation image). Labels are those of the source where it has classes, else ``-1``.
Synthetic sets are drawn once, at construction, from a ``torch.Generator`` seeded with ``seed``.

CIFAR-sized models: ``svhn``, ``cifar100`` (torchvision, through the data plugins' loaders),
``celeba_folder`` (a local folder of images), ``interpolations``, ``uniform_noise``, ``constant``.
Digits-sized models: ``uniform_noise``, ``interpolations``, ``inverted``, ``sklearn_patches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from jemkit import hookimpl
from jemkit.contracts import BuildContext
from jemkit.errors import DataError
from jemkit_plugins.data.data_common import GaussianNoise, TensorPairs, check_noise_std
from jemkit_plugins.data.data_torchvision import IMAGE_SIZE, ImageDataParams, build_image_data

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: Label of OOD inputs that have no class.
NO_CLASS = -1
#: File suffixes ``celeba_folder`` reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer (number of OOD inputs), got {size!r}")


def _shape(context: BuildContext, name: str) -> tuple[int, ...]:
    if context.input_shape is None:
        raise ValueError(f"OOD set {name!r} needs the in-distribution input shape")
    return tuple(int(s) for s in context.input_shape)


def _image_shape(context: BuildContext, name: str) -> tuple[int, int, int]:
    shape = _shape(context, name)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"OOD set {name!r} makes grey or RGB images, but the model takes inputs of shape {shape}")
    return shape  # type: ignore[return-value]


def _test_data(context: BuildContext, name: str) -> Dataset:
    if context.test_data is None or len(context.test_data) == 0:  # type: ignore[arg-type]
        raise ValueError(f"OOD set {name!r} is made from the in-distribution test split, which is missing")
    return context.test_data


def _no_labels(n: int) -> Tensor:
    return torch.full((n,), NO_CLASS, dtype=torch.long)


# --------------------------------------------------------------------------- synthetic sets


@dataclass
class NoiseParams:
    """``size`` inputs of i.i.d. ``U(-1, 1)`` pixels."""

    size: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _check_size(self.size)


def build_uniform_noise(params: NoiseParams, context: BuildContext) -> Dataset:
    """Uniform noise: every input value drawn i.i.d. from U(-1, 1)."""
    shape = _shape(context, "uniform_noise")
    generator = torch.Generator().manual_seed(params.seed)
    x = torch.rand((params.size, *shape), generator=generator) * 2 - 1
    return TensorPairs(x, _no_labels(params.size))


@dataclass
class ConstantParams:
    """``size`` constant images, each of one random colour (every channel ``U(-1, 1)``)."""

    size: int = 1000
    seed: int = 0
    #: Std of the Gaussian input noise added on every read ([-1, 1] units).
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        _check_size(self.size)
        check_noise_std(self.noise_std)


def build_constant(params: ConstantParams, context: BuildContext) -> Dataset:
    """Constant images of a random colour (plus input noise)."""
    c, h, w = _image_shape(context, "constant")
    generator = torch.Generator().manual_seed(params.seed)
    colours = torch.rand((params.size, c, 1, 1), generator=generator) * 2 - 1
    return TensorPairs(colours.expand(-1, c, h, w).contiguous(), _no_labels(params.size), params.noise_std)


@dataclass
class InterpolationParams:
    """``size`` mixtures ``mix * a + (1 - mix) * b`` of random pairs ``(a, b)`` of test inputs."""

    size: int = 1000
    mix: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_size(self.size)
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"mix must lie in [0, 1], got {self.mix}")


def build_interpolations(params: InterpolationParams, context: BuildContext) -> Dataset:
    """Interpolations of random pairs of in-distribution test inputs (JEM: mixing 0.5)."""
    test = _test_data(context, "interpolations")
    n = len(test)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(params.seed)
    first = torch.randint(0, n, (params.size,), generator=generator)
    # the second index differs from the first whenever there are two inputs to choose from
    second = (first + torch.randint(1, max(n, 2), (params.size,), generator=generator)) % n
    x = torch.stack([params.mix * test[int(i)][0] + (1 - params.mix) * test[int(j)][0] for i, j in zip(first, second)])
    return TensorPairs(x, _no_labels(params.size))


class _Negated(Dataset):
    """``(-x, y)`` for every ``(x, y)`` of ``base``."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[index]
        return -x, torch.as_tensor(y, dtype=torch.long)


def build_inverted(params: None, context: BuildContext) -> Dataset:
    """Inverted test inputs -x (for digits: light strokes on a dark ground become dark on light)."""
    return _Negated(_test_data(context, "inverted"))


@dataclass
class PatchParams:
    """``size`` patches of the model's input size cut from scikit-learn's two bundled photographs."""

    size: int = 1000
    seed: int = 0
    #: Average-pool the photographs by this factor before cutting (1: patches of raw pixels).
    downscale: int = 4
    #: Std of the Gaussian input noise added on every read ([-1, 1] units).
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        _check_size(self.size)
        if isinstance(self.downscale, bool) or not isinstance(self.downscale, int) or self.downscale < 1:
            raise ValueError(f"downscale must be a positive integer, got {self.downscale!r}")
        check_noise_std(self.noise_std)


def sample_image_patches(params: PatchParams, shape: tuple[int, int, int]) -> Tensor:
    """Random ``shape`` patches (grey or RGB, in ``[-1, 1]``) of ``sklearn.datasets.load_sample_images``."""
    from sklearn.datasets import load_sample_images

    c, h, w = shape
    photos = []
    for image in load_sample_images().images:  # uint8 [H, W, 3]
        t = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        if c == 1:
            t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]).unsqueeze(0)  # ITU-R 601 luma
        photos.append(F.avg_pool2d(t.unsqueeze(0), params.downscale).squeeze(0) * 2 - 1)
    generator = torch.Generator().manual_seed(params.seed)
    which = torch.randint(0, len(photos), (params.size,), generator=generator)
    patches = []
    for k in which.tolist():
        photo = photos[k]
        if photo.shape[1] < h or photo.shape[2] < w:
            raise ValueError(f"downscale {params.downscale} leaves the photographs smaller than a {h}x{w} patch")
        top = int(torch.randint(0, photo.shape[1] - h + 1, (), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - w + 1, (), generator=generator))
        patches.append(photo[:, top : top + h, left : left + w])
    return torch.stack(patches).clamp(-1, 1)


def build_sklearn_patches(params: PatchParams, context: BuildContext) -> Dataset:
    """Patches of scikit-learn's bundled photos (china, flower), grey for 1-channel models, in [-1, 1]."""
    x = sample_image_patches(params, _image_shape(context, "sklearn_patches"))
    return TensorPairs(x, _no_labels(params.size), params.noise_std)


# --------------------------------------------------------------------------- image folders and torchvision


@dataclass
class TorchvisionOODParams:
    """Where the torchvision data set lives; its test split is used, without augmentation."""

    root: str = "data"
    download: bool = True
    #: Std of the Gaussian input noise added on every read ([-1, 1] units; JEM: 0.03).
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        if not str(self.root).strip():
            raise ValueError("root must be a non-empty folder path")
        check_noise_std(self.noise_std)


def _require_cifar_shape(context: BuildContext, name: str) -> None:
    shape = _shape(context, name)
    if shape != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"OOD set {name!r} holds 3x{IMAGE_SIZE}x{IMAGE_SIZE} images, but the model takes inputs of shape {shape}"
        )


def _torchvision_test(name: str, params: TorchvisionOODParams, context: BuildContext) -> Dataset:
    _require_cifar_shape(context, name)
    image_params = ImageDataParams(
        root=params.root, download=params.download, augment=False, noise_std=params.noise_std
    )
    return build_image_data(name, image_params).test


def build_svhn_ood(params: TorchvisionOODParams, context: BuildContext) -> Dataset:
    """SVHN test split (torchvision; 26,032 street-number images) as OOD inputs for CIFAR models."""
    return _torchvision_test("svhn", params, context)


def build_cifar100_ood(params: TorchvisionOODParams, context: BuildContext) -> Dataset:
    """CIFAR-100 test split (torchvision; 10,000 images) as OOD inputs for CIFAR-10 models."""
    return _torchvision_test("cifar100", params, context)


@dataclass
class ImageFolderParams:
    """A local folder of CelebA images (e.g. the extracted ``img_align_celeba``); nothing is downloaded."""

    root: str = ""
    #: Use at most this many images (the first ones in sorted path order).
    max_images: int = 10000
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        _check_size(self.max_images)
        check_noise_std(self.noise_std)


class ImageFiles(Dataset):
    """Image files resized (shorter side) and centre-cropped to ``(C, H, W)``, scaled to ``[-1, 1]`` plus noise."""

    def __init__(self, paths: list[Path], shape: tuple[int, int, int], noise_std: float) -> None:
        from torchvision import transforms

        self.paths = paths
        self.mode = "L" if shape[0] == 1 else "RGB"
        self.transform = transforms.Compose(
            [
                transforms.Resize(min(shape[1:])),
                transforms.CenterCrop(shape[1:]),
                transforms.ToTensor(),
                transforms.Normalize([0.5] * shape[0], [0.5] * shape[0]),
                GaussianNoise(noise_std),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                x = self.transform(image.convert(self.mode))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"Image {str(path)!r} could not be read ({exc}); remove it from the folder.") from None
        return x, torch.tensor(NO_CLASS)


def build_celeba_folder(params: ImageFolderParams, context: BuildContext) -> Dataset:
    """CelebA from a local folder of images, resized and centre-cropped to the input shape."""
    shape = _image_shape(context, "celeba_folder")
    how = (
        "Download and extract CelebA's img_align_celeba yourself and pass "
        "--ood-param celeba_folder.root=PATH, or leave celeba_folder out of --ood-sets."
    )
    if not str(params.root).strip():
        raise DataError(f"OOD set 'celeba_folder' needs a folder of CelebA images and none was given. {how}")
    root = Path(params.root).expanduser()
    if not root.is_dir():
        raise DataError(f"OOD set 'celeba_folder': folder {str(root)!r} does not exist. {how}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(
            f"OOD set 'celeba_folder': folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}). {how}"
        )
    return ImageFiles(paths[: params.max_images], shape, params.noise_std)


@hookimpl
def jemkit_register_ood_sets(registry: Registry) -> None:
    registry.register("uniform_noise", build_uniform_noise, params=NoiseParams)
    registry.register("constant", build_constant, params=ConstantParams)
    registry.register("interpolations", build_interpolations, params=InterpolationParams)
    registry.register("inverted", build_inverted)
    registry.register("sklearn_patches", build_sklearn_patches, params=PatchParams)
    registry.register("svhn", build_svhn_ood, params=TorchvisionOODParams)
    registry.register("cifar100", build_cifar100_ood, params=TorchvisionOODParams)
    registry.register("celeba_folder", build_celeba_folder, params=ImageFolderParams)
