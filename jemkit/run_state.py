"""A run's checkpoints: what one holds, writing and pruning them, restoring and resuming from them.

Every checkpoint of a run (the file format is :mod:`jemkit.checkpoint`'s, the names and where
they live too) holds the whole training state::

    model, optimizer, schedule    state dicts
    sampler                       rank 0's sampler state (the replay buffer)
    rng                           rank 0's RNG streams (:func:`jemkit.rng.rng_state`)
    progress                      :meth:`Progress.record`: step, epoch, batch_in_epoch, wall_seconds,
                                  best_metric, lr_scale, rollback_events, world_size
    sampler_ranks, rng_ranks      every rank's sampler state and RNG streams (data-parallel runs only)
    plugins                       plugin name -> the state its ``jemkit_save_state`` hook returned
                                  (absent when no plugin keeps state; :mod:`jemkit.plugin_hooks`)

and, as metadata, the resolved recipe (values read with ``${oc.env:NAME}`` kept as that
interpolation), the versions, the plugin origins, the names of the environment variables the recipe
reads (``jemkit.environment``) and the data record (``jemkit.data``: input shape, classes;
:mod:`jemkit.data_info`). Restoring it puts every one of these back, so a resumed run continues bit
for bit (on CPU) where it stopped. :meth:`RunState.resume` chooses the checkpoint (the newest that
loads, or the one ``--checkpoint`` names), sets damaged or superseded ones aside without deleting
them, and applies the optimiser settings a resume changes.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jemkit import __version__
from jemkit.checkpoint import (
    BEST_NAME,
    SUFFIX,
    TREE_KEY,
    Checkpoint,
    checkpoint_dir,
    checkpoint_name,
    checkpoint_step,
    command,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_temporaries,
    resolve_checkpoint,
    save_checkpoint,
    set_aside,
)
from jemkit.config import UNSET, Change, environment_variables, to_yaml
from jemkit.data_info import DataInfo, describe_data, metadata_entry, write_data_info
from jemkit.distributed import DistInfo, barrier, broadcast_object, gather_objects, gather_states
from jemkit.errors import CheckpointError, RecipeError
from jemkit.rng import RANK_SEED_STRIDE, rng_state, seed_everything, set_rng_state
from jemkit.runlog import read_metrics, truncate_metrics

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


#: The metrics file of a run directory (:mod:`jemkit.runlog`).
METRICS_FILE = "metrics.jsonl"


@dataclass
class ResumePoint:
    """Where a resumed run continues, and what resuming changed (its ``resume`` event)."""

    #: The checkpoint restored; ``None``: the run starts from step 0 (it had no complete checkpoint).
    path: Path | None
    progress: Progress
    #: Damaged checkpoints renamed ``corrupt_*``: they did not verify, so an older one was chosen.
    set_aside: list[Path] = field(default_factory=list)
    #: Why the newest of ``set_aside`` did not load (the first sentence of its error); ``""`` if none.
    damage: str = ""
    #: Checkpoints of later steps than an explicitly chosen one, renamed ``superseded_*``.
    superseded: list[Path] = field(default_factory=list)
    #: The recipe changes the overrides made (``key``, ``old``, ``new``), all of them applied.
    changes: list[dict[str, Any]] = field(default_factory=list)
    #: The ``key=value`` overrides as given.
    overrides: list[str] = field(default_factory=list)
    #: Whether optimiser settings changed (the resumed checkpoint is then written again with them).
    optimizer_changed: bool = False

    def event(self) -> dict[str, Any]:
        """The ``{"event": "resume", ...}`` record for ``metrics.jsonl``."""
        return {
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "event": "resume",
            "checkpoint": self.path.name if self.path is not None else None,
            "overrides": self.overrides,
            "changes": self.changes,
            "superseded": [p.name for p in self.superseded],
            "set_aside": [p.name for p in self.set_aside],
            **({"damage": self.damage} if self.damage else {}),
        }

    def describe(self) -> str:
        """One line for the console."""
        where = f"{self.path} (step {self.progress.step})" if self.path else "step 0 (the run has no complete checkpoint)"
        parts = [f"resuming from {where}"]
        if self.set_aside:
            parts.append(
                "set aside as damaged (renamed, not deleted; restore one from a backup under its old name to "
                f"use it): {', '.join(p.name for p in self.set_aside)} - {self.damage}"
            )
        if self.superseded:
            parts.append("set aside as later than the chosen checkpoint: " + ", ".join(p.name for p in self.superseded))
        if self.changes:
            parts.append("changed: " + ", ".join(f"{c['key']}={c['new']!r}" for c in self.changes))
        return "; ".join(parts)


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
        #: Collects and restores plugin state (``save() -> dict``, ``load(states, progress)``); set by
        #: the trainer (:class:`jemkit.run_view.TrainerPluginState`), ``None``: no plugin state.
        self.plugin_state: Any = None

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
        plugins = self.plugin_state.save() if self.plugin_state is not None else {}
        if plugins:
            state["plugins"] = plugins
        return state

    def metadata(self) -> dict[str, str]:
        """The checkpoint's string metadata: resolved recipe, versions, plugin origins."""
        versions = {"jemkit": __version__, "torch": torch.__version__, "python": platform.python_version()}
        return {
            "jemkit.recipe": to_yaml(self.experiment.cfg),
            "jemkit.versions": json.dumps(versions),
            "jemkit.plugins": json.dumps(self.plugin_origins),
            "jemkit.environment": json.dumps(environment_variables(self.experiment.cfg)),  # names only, never values
            **metadata_entry(self.data_info()),  # input shape, classes, preprocessing: jemkit.data_info
        }

    def data_info(self) -> DataInfo:
        """The run's inputs and classes (entry ``jemkit.data`` and ``RUN_DIR/data_info.json``), so that
        its model opens without the data set (:mod:`jemkit.data_info`)."""
        return describe_data(self.experiment.cfg, self.experiment.data)

    def save(self, progress: Progress, elapsed: float, path: Path | None = None) -> Path:
        """Write a checkpoint of ``progress`` (atomically; default: the step checkpoint) and prune
        the step checkpoints beyond ``train.keep_checkpoints``; returns its path."""
        path = path or self.directory / checkpoint_name(progress.step)
        state = self.state_dict(progress, elapsed)
        if self.dist.is_main:
            save_checkpoint(path, state, self.metadata())
            write_data_info(self.run_dir, self.data_info())
            if path.parent == self.directory and path.name != BEST_NAME:
                keep = self.experiment.train.keep_checkpoints
                prune_checkpoints(self.directory, keep, protect={self.directory / BEST_NAME})
        barrier(self.dist)
        return path

    def restore(self, path: Path, checkpoint: Checkpoint | None = None) -> Progress:
        """Load every part of the checkpoint at ``path`` (or the already loaded ``checkpoint`` of it)
        into the experiment and the RNGs; its progress."""
        if checkpoint is None:
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
        if self.plugin_state is not None:  # after model, optimiser and sampler; before the RNGs
            self.plugin_state.load(state.get("plugins") or {}, progress)
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

    def clean_leftovers(self) -> list[Path]:
        """Remove the temporary files that killed writes left (checkpoints, metrics, summary); only
        while holding the run directory's lock. Returns the removed paths."""
        removed = remove_temporaries(self.directory)
        for pattern in ("*.json.tmp", "*.jsonl.tmp", "*.yaml.tmp"):
            for path in self.run_dir.glob(pattern):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def resume(
        self, which: str | int | Path | None = "last", changes: Sequence[Change] = (), overrides: Sequence[str] = ()
    ) -> ResumePoint:
        """Restore the checkpoint ``which`` names (default: the newest) and drop the metrics records
        written after it; apply the recipe ``changes`` a resumed run may make (optimiser settings:
        :meth:`apply_changes`). Every rank calls this; rank 0 chooses the checkpoint.

        ``last``: the newest step checkpoint that verifies. Newer ones that do not load (damaged,
        truncated) are set aside as ``corrupt_<name>`` (never deleted); the console line and the
        ``resume`` event name them and why. A run directory without any step checkpoint starts from
        step 0, unless its metrics show training beyond step 0 (then the checkpoints were removed:
        an error).
        ``best``, a step or a path: that checkpoint; step checkpoints (and ``best.safetensors``) of
        later steps are set aside as ``superseded_<name>``, since the run's history now branches.
        """
        self._check_optimizer_changes(changes)
        fresh = [dict(group) for group in self.experiment.optimizer.param_groups]
        loaded: Checkpoint | None = None
        decision: dict[str, Any] | None = None
        if self.dist.is_main:
            try:
                decision, loaded = self._choose(which)
            except CheckpointError as exc:
                decision = {"error": str(exc)}
        decision = broadcast_object(decision, self.dist)
        assert decision is not None
        if decision.get("error"):
            raise CheckpointError(decision["error"])
        path = Path(decision["path"]) if decision["path"] is not None else None
        progress = Progress() if path is None else self.restore(path, loaded)
        applied = self.apply_changes(changes, fresh)
        if self.dist.is_main:
            truncate_metrics(self.run_dir / METRICS_FILE, progress.step)
        return ResumePoint(
            path=path,
            progress=progress,
            set_aside=[Path(p) for p in decision["set_aside"]],
            damage=decision.get("damage", ""),
            superseded=[Path(p) for p in decision["superseded"]],
            changes=[c.as_record() for c in changes],
            overrides=list(overrides),
            optimizer_changed=bool(applied),
        )

    def _choose(self, which: str | int | Path | None) -> tuple[dict[str, Any], Checkpoint | None]:
        """Rank 0's choice of the checkpoint to resume from (see :meth:`resume`), loaded."""
        device = self.experiment.context.device
        if which is None or (isinstance(which, str) and which == "last"):
            candidates = list(reversed(list_checkpoints(self.directory)))
            if not candidates:
                self._check_nothing_lost()
                return {"path": None, "set_aside": [], "superseded": []}, None
            try:
                loaded = load_checkpoint(candidates[0], map_location=device)
            except CheckpointError as damaged:
                return self._skip_damaged(candidates, damaged, device)
            return {"path": str(candidates[0]), "set_aside": [], "superseded": []}, loaded
        path = resolve_checkpoint(self.run_dir, which)
        loaded = load_checkpoint(path, map_location=device)
        step = int(loaded.state.get("progress", {}).get("step", -1))
        superseded = []
        for newer in list_checkpoints(self.directory):
            if (checkpoint_step(newer) or 0) > step and newer.resolve() != path.resolve():
                superseded.append(str(set_aside(newer, "superseded")))
        best = self.directory / BEST_NAME
        if best.is_file() and best.resolve() != path.resolve() and (_peek_step(best) or 0) > step:
            superseded.append(str(set_aside(best, "superseded")))
        return {"path": str(path), "set_aside": [], "superseded": superseded}, loaded

    def _skip_damaged(
        self, candidates: list[Path], damaged: CheckpointError, device: Any
    ) -> tuple[dict[str, Any], Checkpoint | None]:
        """The newest checkpoint does not load: set it aside as ``corrupt_<name>``, and every older one
        that does not load either, and continue from the newest that verifies (the ``set_aside`` and
        ``damage`` of the decision say what was skipped and why). None verifies: step 0 if the run
        never trained past it, else the error of :meth:`_check_nothing_lost`."""
        moved = [set_aside(candidates[0], "corrupt")]
        for older in candidates[1:]:
            try:
                loaded = load_checkpoint(older, map_location=device)
            except CheckpointError:
                moved.append(set_aside(older, "corrupt"))
                continue
            return self._skipped(older, moved, damaged), loaded
        self._check_nothing_lost()
        return self._skipped(None, moved, damaged), None

    @staticmethod
    def _skipped(path: Path | None, moved: list[Path], damaged: CheckpointError) -> dict[str, Any]:
        """The decision to resume from ``path`` (``None``: step 0) past the damaged ``moved`` files."""
        damage = _first_sentence(str(damaged))
        chosen = None if path is None else str(path)
        return {"path": chosen, "set_aside": [str(p) for p in moved], "superseded": [], "damage": damage}

    def _check_nothing_lost(self) -> None:
        """Before a resume from step 0: an error when the run had trained past step 0 (its checkpoints
        were removed, so starting over would silently replace its history)."""
        trained = trained_steps(self.run_dir)
        if not trained:
            return
        config = self.run_dir / "config.yaml"
        fresh = free_name(Path(f"{self.run_dir}-restart"))
        aside = sorted(p.name for p in self.directory.glob(f"*_step_*{SUFFIX}")) if self.directory.is_dir() else []
        kept = f" (set-aside files there: {', '.join(aside)})" if aside else ""
        raise CheckpointError(
            f"Run directory {str(self.run_dir)!r} has no checkpoint to resume from (looked for step_*{SUFFIX} in "
            f"{str(self.directory)!r}{kept}), but its metrics.jsonl records training up to step {trained}: starting "
            "over in place would replace that history. Restore a checkpoint into that folder from a backup, pass "
            f"--checkpoint PATH with one, or train the recipe again in a new directory: "
            f"`{command('run', config, '--out', fresh)}`."
        )

    def _check_optimizer_changes(self, changes: Sequence[Change]) -> None:
        """Refuse optimiser changes the optimiser cannot take mid-run (no such per-group setting)."""
        groups = self.experiment.optimizer.param_groups
        for change in changes:
            if not change.key.startswith("optimizer.") or change.key == "optimizer.name":
                continue
            name = change.key.split(".", 1)[1]
            if "." in name or change.new is UNSET or any(name not in group for group in groups):
                raise RecipeError(
                    f"--resume cannot change {change.key} ({change.old!r} -> {change.new!r}): the optimiser keeps no "
                    f"setting {name!r} that could change mid-run, so the override would not be applied. Resume "
                    "without it, or start a new run with it: "
                    f"`{command('run', self.run_dir / 'config.yaml', f'{change.key}={change.new}', '--out', free_name(Path(f'{self.run_dir}-new')))}`."
                )

    def apply_changes(self, changes: Sequence[Change], fresh: list[dict[str, Any]]) -> list[str]:
        """Apply the optimiser changes of a resume after the checkpoint's state was restored.

        ``fresh`` holds the optimiser's parameter groups as built from the new recipe (before the
        restore). ``optimizer.lr`` rescales every group's LR and the schedule's base LRs by new/old
        recipe LR, so the schedule (and any guard scaling) carries on from this step with the new
        base; any other ``optimizer.<key>`` replaces that setting in every group. Returns the keys
        applied.
        """
        optimizer, schedule = self.experiment.optimizer, self.experiment.schedule
        applied = []
        for change in changes:
            if not change.key.startswith("optimizer.") or change.key == "optimizer.name":
                continue
            name = change.key.split(".", 1)[1]
            for index, (group, new) in enumerate(zip(optimizer.param_groups, fresh)):
                if name == "lr":
                    old_base = group.get("initial_lr", group["lr"])
                    new_base = new.get("initial_lr", new["lr"])
                    factor = new_base / old_base if old_base else 1.0
                    group["lr"] *= factor
                    if "initial_lr" in group:
                        group["initial_lr"] = new_base
                    if hasattr(schedule, "base_lrs") and index < len(schedule.base_lrs):
                        schedule.base_lrs[index] *= factor
                    last = getattr(schedule, "_last_lr", None)
                    if isinstance(last, list) and index < len(last):
                        last[index] = group["lr"]
                else:
                    group[name] = new[name]
            applied.append(change.key)
        return applied


def trained_steps(run_dir: Path) -> int:
    """The highest training step ``RUN_DIR/metrics.jsonl`` records (0 when none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    steps = [r.get("step", 0) for r in read_metrics(path) if not r.get("event") and isinstance(r.get("step"), int)]
    return max(steps, default=0)


def _peek_step(path: Path) -> int | None:
    """The ``progress.step`` of a checkpoint, read from its header only (``None`` if unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            tree = json.loads((handle.metadata() or {})[TREE_KEY])
        progress = dict(dict(tree["$dict"])["progress"]["$dict"])
        return int(progress["step"])
    except Exception:  # any unreadable header: the caller treats the file as not newer
        return None


def free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist yet."""
    candidate, k = path, 1
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.name}-{k}")
    return candidate


def _first_sentence(text: str) -> str:
    """The first sentence of an error message (up to a full stop before a capital letter)."""
    for index in range(len(text) - 2):
        if text[index] == "." and text[index + 1] == " " and text[index + 2].isupper():
            return text[: index + 1]
    return text
