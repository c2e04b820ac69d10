"""Divergence guard: notices a run going wrong so the trainer can roll back instead of dying.

The JEM reference code aborts when ``abs(loss) > 1e8`` and its authors restarted most runs by
hand from the last checkpoint with a new seed. The guard trips on a non-finite loss, a loss
above ``max_abs_loss``, or a data-vs-sample energy gap above ``max_energy_gap``; the trainer
then restores the last checkpoint, reseeds, optionally scales the learning rate, logs the event
and continues, up to ``max_rollbacks`` times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class GuardParams:
    """Settings of the ``guard:`` recipe section."""

    #: Roll back on a trip; ``false`` stops the run at the first trip (the reference behaviour).
    enabled: bool = True
    #: Trip when ``abs(loss)`` exceeds this (the JEM reference code aborts past 1e8).
    max_abs_loss: float = 1.0e8
    #: Trip when ``abs(mean E(samples) - mean E(data))`` exceeds this (energy units); null: off.
    max_energy_gap: float | None = 1.0e4
    #: Give up (a clear error with every event) after this many rollbacks.
    max_rollbacks: int = 3
    #: Multiply the learning rate by this at every rollback (1.0 leaves it unchanged).
    lr_scale: float = 0.5
    #: Reseed the RNGs after a rollback so the sampler's chains take another path.
    reseed: bool = True

    def __post_init__(self) -> None:
        if self.max_abs_loss <= 0:
            raise ValueError(f"max_abs_loss must be positive, got {self.max_abs_loss}")
        if self.max_energy_gap is not None and self.max_energy_gap <= 0:
            raise ValueError(f"max_energy_gap must be positive or null, got {self.max_energy_gap}")
        if self.max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be non-negative, got {self.max_rollbacks}")
        if not 0 < self.lr_scale <= 1:
            raise ValueError(f"lr_scale must be in (0, 1], got {self.lr_scale}")


@dataclass(frozen=True)
class Trip:
    """Why the guard tripped, at which step (the step that would have been taken)."""

    step: int
    reason: str

    def as_record(self) -> dict[str, Any]:
        return {"step": self.step, "reason": self.reason}


class DivergenceTrip(Exception):
    """Raised inside the training step when the guard trips; handled by the trainer."""

    def __init__(self, trip: Trip) -> None:
        super().__init__(trip.reason)
        self.trip = trip


def check_step(params: GuardParams, step: int, loss: float, energy_data: float | None, energy_samples: float | None) -> Trip | None:
    """The trip for this step's loss and energies, or ``None`` if all is well."""
    if not math.isfinite(loss):
        return Trip(step, f"non-finite loss ({loss})")
    if abs(loss) > params.max_abs_loss:
        return Trip(step, f"loss {loss:.4g} beyond max_abs_loss {params.max_abs_loss:g}")
    if params.max_energy_gap is not None and energy_data is not None and energy_samples is not None:
        gap = energy_samples - energy_data
        if not math.isfinite(gap) or abs(gap) > params.max_energy_gap:
            return Trip(step, f"energy gap {gap:.4g} beyond max_energy_gap {params.max_energy_gap:g}")
    return None
