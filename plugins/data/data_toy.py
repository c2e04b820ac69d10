"""2-D toy data sets generated on the fly (no download): two_moons, rings, eight_gaussians, checkerboard.

Every point is a float32 ``[2]`` vector in roughly ``[-1, 1]^2`` (the scale of image inputs, so
the same samplers and step sizes apply), with a class label for the classifier half of the
model. Each distribution can draw fresh samples: ``TOY_DISTRIBUTIONS[name].sample(n, generator)``,
and so can the splits a toy data set builds (``splits.train.sample(n, generator)``).

=================  =======  ==============================================  =====================
name               classes  shape (all coordinates in [-1, 1])               label
=================  =======  ==============================================  =====================
two_moons          2        two interleaved half circles, scaled by 1/1.5    moon id
rings              3        circles of radius 0.3, 0.6, 0.9 (sizes 1:2:3)    ring id
eight_gaussians    8        N(c_k, 0.06^2 I), c_k on the circle r = 0.75     mode id
checkerboard       2        uniform on 8 of 16 squares of a 4x4 board        row parity of square
=================  =======  ==============================================  =====================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from jemkit import hookimpl
from jemkit.contracts import BuildContext, DataSplits
from jemkit_plugins.data.data_common import TensorPairs

if TYPE_CHECKING:
    from jemkit.registry import Registry

#: ``draw(n, generator, noise) -> (x float32 [n, 2], y int64 [n])``
Draw = Callable[[int, torch.Generator, float], tuple[Tensor, Tensor]]


def _labels(n: int, num_classes: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, num_classes, (n,), generator=generator)


def _jitter(x: Tensor, noise: float, generator: torch.Generator) -> Tensor:
    return x + noise * torch.randn(x.shape, generator=generator) if noise > 0 else x


def draw_two_moons(n: int, generator: torch.Generator, noise: float) -> tuple[Tensor, Tensor]:
    """Moon 0: ``(cos t, sin t)``; moon 1: ``(1 - cos t, 0.5 - sin t)``, ``t ~ U(0, pi)``; centred, scaled by 1/1.5."""
    y = _labels(n, 2, generator)
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    x = torch.where(y.view(-1, 1) == 0, upper, lower)
    x = (x - torch.tensor([0.5, 0.25])) / 1.5
    return _jitter(x, noise, generator), y


RING_RADII = (0.3, 0.6, 0.9)


def draw_rings(n: int, generator: torch.Generator, noise: float) -> tuple[Tensor, Tensor]:
    """Concentric circles of radius 0.3, 0.6, 0.9, uniform along their length (class sizes 1 : 2 : 3)."""
    radii = torch.tensor(RING_RADII)
    y = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    radius = torch.tensor(RING_RADII)[y]
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    x = radius.view(-1, 1) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return _jitter(x, noise, generator), y


#: Radius of the circle the eight mode centres lie on.
EIGHT_RADIUS = 0.75


def eight_centres() -> Tensor:
    """The eight mode centres ``[8, 2]``: angles ``k * pi / 4`` on the circle of radius 0.75."""
    angle = torch.arange(8) * math.pi / 4
    return EIGHT_RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], 1)


def draw_eight_gaussians(n: int, generator: torch.Generator, noise: float) -> tuple[Tensor, Tensor]:
    """Equal mixture of ``N(c_k, noise^2 I)`` over the eight centres; label = mode k."""
    y = _labels(n, 8, generator)
    return _jitter(eight_centres()[y], noise, generator), y


def draw_checkerboard(n: int, generator: torch.Generator, noise: float) -> tuple[Tensor, Tensor]:
    """Uniform on the 8 squares (side 0.5) of a 4x4 board on ``[-1, 1]^2`` where row + column is even.

    Label: the row's parity (0 for rows 0 and 2 from the bottom, 1 for rows 1 and 3).
    """
    square = torch.randint(0, 8, (n,), generator=generator)
    row = square // 2
    col = 2 * (square % 2) + row % 2  # (row + col) even
    corner = torch.stack([col, row], 1).float() * 0.5 - 1.0
    x = corner + 0.5 * torch.rand(n, 2, generator=generator)
    return _jitter(x, noise, generator), (row % 2).long()


@dataclass(frozen=True)
class ToyDistribution:
    """One 2-D toy distribution: how to draw it, its classes and default noise."""

    name: str
    draw: Draw
    num_classes: int
    class_names: tuple[str, ...]
    default_noise: float
    description: str

    def sample(
        self, n: int, generator: torch.Generator | None = None, noise: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` fresh points ``x float32 [n, 2]`` and labels ``y int64 [n]`` (``noise`` defaults per set)."""
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        x, y = self.draw(n, generator, self.default_noise if noise is None else noise)
        return x.float(), y.long()


TOY_DISTRIBUTIONS: dict[str, ToyDistribution] = {
    d.name: d
    for d in (
        ToyDistribution(
            "two_moons", draw_two_moons, 2, ("upper", "lower"), 0.05,
            "2-D toy: two interleaved moons in [-1, 1]^2, 2 classes (moon id), generated on the fly",
        ),
        ToyDistribution(
            "rings", draw_rings, 3, ("r0.3", "r0.6", "r0.9"), 0.03,
            "2-D toy: three concentric rings (radius 0.3, 0.6, 0.9, uniform along their length), 3 classes (ring id)",
        ),
        ToyDistribution(
            "eight_gaussians", draw_eight_gaussians, 8, tuple(f"mode{k}" for k in range(8)), 0.06,
            "2-D toy: eight Gaussians on a circle of radius 0.75, 8 classes (mode id), generated on the fly",
        ),
        ToyDistribution(
            "checkerboard", draw_checkerboard, 2, ("even_row", "odd_row"), 0.0,
            "2-D toy: uniform on the dark squares of a 4x4 board on [-1, 1]^2, 2 classes (row parity)",
        ),
    )
}


class ToyPairs(TensorPairs):
    """Stored ``(x, y)`` pairs of a toy distribution that can also draw fresh ones (``sample``)."""

    def __init__(self, x: Tensor, y: Tensor, distribution: ToyDistribution, noise: float | None) -> None:
        super().__init__(x, y)
        self.distribution = distribution
        self.noise_level = noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` fresh draws from the same distribution and noise as the stored pairs."""
        return self.distribution.sample(n, generator, self.noise_level)


@dataclass
class ToyParams:
    """Sizes, noise and seed of a generated 2-D toy data set."""

    n_train: int = 4000
    n_test: int = 1000
    #: Std of isotropic Gaussian jitter in input units (``null``: the set's default).
    noise: float | None = None
    #: Seed of the generator (test points use ``seed + 1``).
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train and n_test must be positive, got {self.n_train}, {self.n_test}")
        if self.noise is not None and not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0 or null, got {self.noise}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


def build_toy(name: str, params: ToyParams) -> DataSplits:
    """Train and test splits of the toy distribution ``name`` (independent draws, fixed seeds)."""
    dist = TOY_DISTRIBUTIONS[name]
    train_x, train_y = dist.sample(params.n_train, torch.Generator().manual_seed(params.seed), params.noise)
    test_x, test_y = dist.sample(params.n_test, torch.Generator().manual_seed(params.seed + 1), params.noise)
    train = ToyPairs(train_x, train_y, dist, params.noise)
    return DataSplits(
        train=train,
        test=ToyPairs(test_x, test_y, dist, params.noise),
        num_classes=dist.num_classes,
        input_shape=(2,),
        train_plain=train,
        class_names=list(dist.class_names),
    )


def _factory(name: str) -> Callable[[ToyParams, BuildContext], DataSplits]:
    def factory(params: ToyParams, context: BuildContext) -> DataSplits:
        return build_toy(name, params)

    factory.__doc__ = TOY_DISTRIBUTIONS[name].description
    return factory


@hookimpl
def jemkit_register_data(registry: Registry) -> None:
    for name, dist in TOY_DISTRIBUTIONS.items():
        registry.register(name, _factory(name), params=ToyParams, description=dist.description)
