"""Divergence guard: notices a run going wrong so the trainer can roll back instead of dying.

The JEM reference code aborts when ``abs(loss) > 1e8`` and its authors restarted most runs by
hand from the last checkpoint with a new seed. The guard trips on a non-finite loss, a loss
above ``max_abs_loss``, or a data-vs-sample energy gap above ``max_energy_gap``; the trainer
then restores the last checkpoint, reseeds, optionally scales the learning rate, logs the event
and continues, up to ``max_rollbacks`` times. :func:`check_step` decides whether a step trips;
:class:`Rollbacks` carries the roll back out. When the guard gives up it still makes the rollback it
would have made next and says how to continue from there (:class:`GuardGaveUp`); the trainer
records the final trip as a ``diverged`` event and writes ``summary.json`` with the history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jemkit.checkpoint import command, list_checkpoints, set_aside
from jemkit.errors import DivergenceError
from jemkit.rng import ROLLBACK_SEED_STRIDE, seed_everything

if TYPE_CHECKING:
    from jemkit.run_state import Progress, RunState


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


def scale_learning_rate(
    optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, factor: float
) -> None:
    """Multiply the current learning rate of every parameter group, and the schedule's base rates
    (so later schedule steps keep the scaling), by ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
    schedule.base_lrs = [base * factor for base in schedule.base_lrs]


class Rollbacks:
    """Rolls a run back to its last good checkpoint when the guard trips.

    Remembers which checkpoint the latest rollback restored until a newer one is written
    (:meth:`checkpoint_written`): tripping again before that means the restored checkpoint may
    itself hold the damage, so it is set aside as ``suspect_<name>`` and the next rollback goes one
    checkpoint further back. The oldest checkpoint always stays, to retry from with a new seed and
    a lower learning rate.
    """

    def __init__(self, params: GuardParams, run_state: RunState, seed: int) -> None:
        self.params = params
        self.run_state = run_state
        #: The run's seed; rollback ``n`` reseeds with ``seed + n * ROLLBACK_SEED_STRIDE``.
        self.seed = seed
        #: Checkpoint the latest rollback restored, until a newer one is written.
        self.target: Path | None = None

    def checkpoint_written(self) -> None:
        """A newer step checkpoint exists: the last rollback target is no longer suspect."""
        self.target = None

    def roll_back(self, trip: Trip, rollback_events: list[dict[str, Any]]) -> tuple[Progress, dict[str, Any]]:
        """Restore the last good checkpoint after ``trip`` (given the run's earlier
        ``rollback_events``), reseed and scale the LR; the restored progress and the event record.

        Raises :class:`GuardGaveUp` (a :class:`DivergenceError`) with the whole history once
        ``max_rollbacks`` is spent (or at once when the guard is disabled, or when there is no
        checkpoint). When it gives up with the guard enabled, the rollback it would have made next is
        made all the same (:attr:`GuardGaveUp.parked`): the trainer writes that state as the last
        checkpoint, so that ``--resume RUN_DIR guard.max_rollbacks=N`` continues exactly from there.
        """
        params = self.params
        history = [*rollback_events, {**trip.as_record()}]
        directory = self.run_state.directory
        target = self.target
        if target is not None and target.exists() and list_checkpoints(directory)[0] != target:
            set_aside(target, "suspect")
        latest = self.run_state.latest()
        if not params.enabled or len(history) > params.max_rollbacks or latest is None:
            parked = self._restore(trip, history, latest)[0] if params.enabled and latest is not None else None
            raise self._exhausted(history, latest, parked)
        return self._restore(trip, history, latest)

    def _restore(self, trip: Trip, history: list[dict[str, Any]], latest: Path) -> tuple[Progress, dict[str, Any]]:
        """Roll back to ``latest``: restore it, scale the LR for ``len(history)`` rollbacks, reseed."""
        params = self.params
        progress = self.run_state.restore(latest)
        self.target = latest
        progress.rollback_events = history
        # The checkpoint carries the LR scale in force when it was written; apply the rest.
        scale = params.lr_scale ** len(history)
        experiment = self.run_state.experiment
        scale_learning_rate(experiment.optimizer, experiment.schedule, scale / progress.lr_scale)
        progress.lr_scale = scale
        if params.reseed:
            seed_everything(self.seed + ROLLBACK_SEED_STRIDE * len(history))
        event = {
            "step": trip.step,
            "event": "rollback",
            "reason": trip.reason,
            "to_step": progress.step,
            "rollbacks": len(history),
            "lr_scale": scale,
            "checkpoint": latest.name,
        }
        history[-1].update(event)
        return progress, event

    def _exhausted(self, history: list[dict[str, Any]], latest: Path | None, parked: Progress | None) -> GuardGaveUp:
        params = self.params
        run_dir = self.run_state.run_dir
        lines = "; ".join(f"step {ev['step']}: {ev['reason']}" for ev in history)
        chains = any("chains" in str(ev.get("reason", "")) for ev in history)
        cause = (
            "The sampler's chains went non-finite (see the reasons): make its transition gentler (a smaller "
            "sampler.transition.step_size or noise) or fix that transition; the LR is not the cause. "
            if chains
            else "Stabilise the recipe (lower optimizer.lr, more sampler.steps, loss.energy_l2=0.1). "
        )
        if parked is not None and latest is not None:
            more = len(history) + 3
            way = (
                f"The run is parked at step {parked.step} in {latest.name} (its last good checkpoint, with the LR scaled "
                f"by {parked.lr_scale:g} and a new seed, as the next rollback leaves it): "
                f"`{command('run', '--resume', run_dir, f'guard.max_rollbacks={more}')}` continues from there with "
                f"{more - len(history)} more rollbacks allowed (add any recipe fix to that command)."
            )
        elif latest is not None:
            way = (
                f"The last good checkpoint is {str(latest)!r}: "
                f"`{command('run', '--resume', run_dir, 'guard.enabled=true')}` continues from it with rollbacks on."
            )
        else:
            way = "No checkpoint is left to continue from."
        return GuardGaveUp(
            f"Training diverged and was not recovered after {len(history) - 1} rollback(s) "
            f"(guard.max_rollbacks={params.max_rollbacks}, enabled={params.enabled}): {lines}. {cause}{way}",
            history=history,
            parked=parked,
            checkpoint=latest,
        )


class GuardGaveUp(DivergenceError):
    """The guard gave up: ``history`` holds every trip; ``parked`` is the progress of the rollback
    made all the same (``None`` when none was: guard disabled or no checkpoint); ``checkpoint`` the
    last good checkpoint."""

    def __init__(
        self, message: str, history: list[dict[str, Any]], parked: Progress | None, checkpoint: Path | None
    ) -> None:
        super().__init__(message)
        self.history = history
        self.parked = parked
        self.checkpoint = checkpoint
