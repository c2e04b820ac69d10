"""Every random number generator jemkit touches: seeding, capturing, restoring.

A run draws from four global streams: python ``random``, numpy's legacy global generator,
torch's CPU generator and one generator per CUDA device. :func:`seed_everything` seeds them all,
:func:`rng_state` captures them (the ``rng`` entry of a checkpoint), :func:`set_rng_state` puts
them back, and :func:`preserved_rng` runs a block without disturbing them. Data order and
augmentation never use these streams (see :mod:`jemkit.item_seeds`).

The seeds derived from a run's ``seed`` are fixed offsets, so they stay the same across versions
and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from jemkit import defaults
from jemkit.errors import RecipeError

#: Offset between the RNG seeds of consecutive ranks (rank ``r`` draws from ``seed + r * stride``).
RANK_SEED_STRIDE = 1_000_003
#: Offset of the evaluation seed from the run's seed (evaluation noise is fixed per run).
EVAL_SEED_OFFSET = 7_777
#: After the ``n``-th rollback the guard reseeds with ``seed + n * ROLLBACK_SEED_STRIDE``.
ROLLBACK_SEED_STRIDE = 7_919


def recipe_seed(cfg: DictConfig, source: str = "recipe") -> int:
    """The recipe's ``seed`` (:data:`jemkit.defaults.SEED` when absent); an int or a :class:`RecipeError`."""
    seed = cfg.get("seed", defaults.SEED)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"{source}: 'seed' must be an integer, got {seed!r}.")
    return seed


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) RNGs with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states of python ``random``, numpy, torch CPU and every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state` (possibly after a checkpoint round trip).

    Sources absent from ``state`` are left alone. CUDA states are restored for the devices
    present (none if CUDA is unavailable), so a GPU run can be inspected on a CPU machine.
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "numpy" in state:
        np.random.set_state(_numpy_state(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        for index, device_state in enumerate(list(state["cuda"])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(device_state, dtype=torch.uint8).cpu(), index)


def _numpy_state(state: Any) -> Any:
    """Numpy's legacy tuple or dict RNG state with its key as a uint32 array again."""
    if isinstance(state, Mapping):
        inner = dict(state["state"])
        inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
        return {**state, "state": inner}
    name, key, pos, has_gauss, gauss = state
    return (str(name), np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(gauss))


@contextlib.contextmanager
def preserved_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block (evaluation, sample grids, plots) without perturbing the global RNG streams.

    Runs that evaluate at different intervals then train identically, and a resumed run matches
    an uninterrupted one. With ``seed`` the block itself is deterministic (evaluation noise is the
    same at every evaluation and on every rank).
    """
    state = rng_state()
    try:
        if seed is not None:
            seed_everything(seed)
        yield
    finally:
        set_rng_state(state)
