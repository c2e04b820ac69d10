"""A run's checkpoints: what one holds, writing and pruning them, restoring and resuming from them.

Every checkpoint of a run (the file format is :mod:`jemkit.checkpoint`'s, the names and where
they live too) holds the whole training state::

    model, optimizer, schedule    state dicts
    sampler                       rank 0's sampler state (the replay buffer)
    rng                           rank 0's RNG streams (:func:`jemkit.rng.rng_state`)
    progress                      :meth:`Progress.record`: step, epoch, batch_in_epoch, wall_seconds,
                                  best_metric, lr_scale, rollback_events, world_size
    sampler_ranks, rng_ranks      every rank's sampler state and RNG streams (data-parallel runs only)

and, as metadata, the resolved recipe, the versions and the plugin origins. Restoring it puts
every one of these back, so a resumed run continues bit for bit (on CPU) where it stopped.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jemkit import __version__
from jemkit.checkpoint import (
    BEST_NAME,
    checkpoint_dir,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from jemkit.config import to_yaml
from jemkit.distributed import DistInfo, barrier, gather_objects, gather_states
from jemkit.errors import CheckpointError
from jemkit.rng import RANK_SEED_STRIDE, rng_state, seed_everything, set_rng_state
from jemkit.runlog import truncate_metrics

if TYPE_CHECKING:
    from jemkit.build import Experiment


@dataclass
class Progress:
    """Where a run stands; the ``progress`` entry of its checkpoints."""

    #: Optimiser steps taken.
    step: int = 0
    #: Epochs completed.
    epoch: int = 0
    #: Batches of the current epoch already consumed (non-zero only after a mid-epoch checkpoint).
    batch_in_epoch: int = 0
    #: Wall-clock seconds spent by earlier processes of this run (before the latest resume).
    previous_wall: float = 0.0
    #: Best value of ``train.best_metric`` so far (``None`` before the first evaluation).
    best_metric: float | None = None
    #: Product of the LR scalings applied by rollbacks so far.
    lr_scale: float = 1.0
    #: One record per rollback (step, reason, to_step, ...), also in metrics.jsonl.
    rollback_events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, elapsed: float, world_size: int) -> dict[str, Any]:
        """The checkpoint entry, with ``elapsed`` seconds of this process added to the wall time."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "wall_seconds": self.previous_wall + elapsed,
            "best_metric": self.best_metric,
            "lr_scale": self.lr_scale,
            "rollback_events": self.rollback_events,
            "world_size": world_size,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Progress:
        """The inverse of :meth:`record` (``lr_scale`` and ``rollback_events`` may be absent)."""
        return cls(
            step=int(record["step"]),
            epoch=int(record["epoch"]),
            batch_in_epoch=int(record["batch_in_epoch"]),
            previous_wall=float(record["wall_seconds"]),
            best_metric=record.get("best_metric"),
            lr_scale=float(record.get("lr_scale", 1.0)),
            rollback_events=list(record.get("rollback_events", [])),
        )


def sampler_state(state: dict[str, Any], rank: int = 0) -> Any:
    """The sampler state that ``rank`` restores from a checkpoint's ``state``.

    A data-parallel checkpoint holds every rank's shard; a run resumed on a different number of
    ranks reuses them round-robin. A single-process checkpoint holds one.
    """
    shards = state.get("sampler_ranks")
    return shards[rank % len(shards)] if shards else state["sampler"]


def checkpoint_mismatch(path: Path, source: str, error: Exception) -> CheckpointError:
    """The error for a checkpoint whose state dicts do not fit the model or sampler of ``source``."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CheckpointError(
        f"Checkpoint {str(path)!r} does not fit this recipe's model or sampler ({source}): {detail}. "
        "A checkpoint loads only with the recipe that wrote it: resume or open the run directory it was "
        "written in (its config.yaml), or start a new run."
    )


#: What a state dict that does not fit raises (``load_state_dict`` and missing checkpoint keys).
MISMATCH_ERRORS = (KeyError, RuntimeError, ValueError, TypeError)


class RunState:
    """Writes, prunes, finds and restores the checkpoints of one run directory.

    Every rank holds one; all of them must call :meth:`save` together (it gathers their sampler
    states and RNG streams), and rank 0 writes the files.
    """

    def __init__(
        self, experiment: Experiment, run_dir: Path, dist: DistInfo, plugin_origins: dict[str, str], source: str
    ) -> None:
        self.experiment = experiment
        self.run_dir = Path(run_dir)
        #: ``RUN_DIR/checkpoints``.
        self.directory = checkpoint_dir(self.run_dir)
        self.dist = dist
        self.plugin_origins = plugin_origins
        #: Where the recipe came from, for error messages.
        self.source = source

    def state_dict(self, progress: Progress, elapsed: float) -> dict[str, Any]:
        """The whole training state, as stored in a checkpoint (see the module docstring)."""
        e = self.experiment
        sampler = e.sampler.state_dict()
        rng = rng_state()
        state: dict[str, Any] = {
            "model": e.model.state_dict(),
            "optimizer": e.optimizer.state_dict(),
            "schedule": e.schedule.state_dict(),
            "sampler": sampler,
            "rng": rng,
            "progress": progress.record(elapsed, self.dist.world_size),
        }
        if self.dist.enabled:  # every rank's replay-buffer shard and RNG streams
            state["sampler_ranks"] = gather_states(sampler, self.dist, e.context.device)
            state["rng_ranks"] = gather_objects(rng, self.dist)
        return state

    def metadata(self) -> dict[str, str]:
        """The checkpoint's string metadata: resolved recipe, versions, plugin origins."""
        versions = {"jemkit": __version__, "torch": torch.__version__, "python": platform.python_version()}
        return {
            "jemkit.recipe": to_yaml(self.experiment.cfg),
            "jemkit.versions": json.dumps(versions),
            "jemkit.plugins": json.dumps(self.plugin_origins),
        }

    def save(self, progress: Progress, elapsed: float, path: Path | None = None) -> Path:
        """Write a checkpoint of ``progress`` (atomically; default: the step checkpoint) and prune
        the step checkpoints beyond ``train.keep_checkpoints``; returns its path."""
        path = path or self.directory / checkpoint_name(progress.step)
        state = self.state_dict(progress, elapsed)
        if self.dist.is_main:
            save_checkpoint(path, state, self.metadata())
            if path.parent == self.directory and path.name != BEST_NAME:
                keep = self.experiment.train.keep_checkpoints
                prune_checkpoints(self.directory, keep, protect={self.directory / BEST_NAME})
        barrier(self.dist)
        return path

    def restore(self, path: Path) -> Progress:
        """Load every part of the checkpoint at ``path`` into the experiment and the RNGs; its progress."""
        checkpoint = load_checkpoint(path, map_location=self.experiment.context.device)
        state = checkpoint.state
        e = self.experiment
        try:
            e.model.load_state_dict(state["model"])
            e.optimizer.load_state_dict(state["optimizer"])
            e.schedule.load_state_dict(state["schedule"])
            e.sampler.load_state_dict(sampler_state(state, self.dist.rank))
            progress = Progress.from_record(state["progress"])
        except MISMATCH_ERRORS as exc:
            raise checkpoint_mismatch(path, self.source, exc) from None
        rng_ranks = state.get("rng_ranks")
        if self.dist.rank == 0:
            set_rng_state(state["rng"])
        elif rng_ranks and len(rng_ranks) == self.dist.world_size:
            set_rng_state(rng_ranks[self.dist.rank])
        else:  # a new rank (world size grew): a fresh stream of its own
            seed_everything(e.context.seed + RANK_SEED_STRIDE * self.dist.rank + progress.step)
        return progress

    def latest(self) -> Path | None:
        """The newest step checkpoint, or ``None``."""
        return latest_checkpoint(self.directory)

    def resume(self) -> tuple[Path, Progress]:
        """Restore the newest step checkpoint and drop the metrics records written after it.

        Raises :class:`CheckpointError` when the run directory has none.
        """
        latest = self.latest()
        if latest is None:
            raise CheckpointError(
                f"Run directory {str(self.run_dir)!r} has no checkpoint to resume from "
                f"(looked in {str(self.directory)!r}). Start the run afresh with `jemkit run RECIPE`."
            )
        progress = self.restore(latest)
        if self.dist.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", progress.step)
        return latest, progress
