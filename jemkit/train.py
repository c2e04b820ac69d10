"""The training loop: one JEM (or plain classifier) iteration after another.

The :class:`Trainer` owns the run directory::

    config.yaml            the resolved recipe
    metrics.jsonl          one JSON object per logged step (``step``, ``epoch``, ``train/...``, ``test/acc``)
    summary.json           final metrics (``test/acc``, ``steps``, ``wall_seconds``, ...)
    checkpoints/           ``step_XXXXXXXX.safetensors`` (whole training state) and ``best.safetensors``
    samples/               sample grids (PNG)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from jemkit import __version__
from jemkit.build import Experiment, build_experiment
from jemkit.checkpoint import (
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from jemkit.config import to_yaml
from jemkit.contracts import Batch
from jemkit.build import RANK_SEED_STRIDE, resolve_device, seed_everything
from jemkit.distributed import (
    DataParallelModel,
    DistInfo,
    any_rank,
    barrier,
    from_environment,
    gather_objects,
    initialise,
    gather_states,
    local_slice,
    mean_over_ranks,
)
from jemkit.item_seeds import SeededItems
from jemkit.performance import autocast, prepare_input
from jemkit.errors import CheckpointError, DivergenceError, Interrupted
from jemkit.guard import DivergenceTrip, Trip, check_step
from jemkit.plugin_manager import PluginSet
from jemkit.runlog import MetricsWriter, NullMetricsWriter, truncate_metrics, write_json_atomic
from jemkit.sampler import RecordingSampler
from jemkit.samples import save_sample_grid


@contextlib.contextmanager
def preserved_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block (evaluation, sample grids) without perturbing the training RNG streams.

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


#: Offset of the evaluation seed from the run's seed (evaluation noise is fixed per run).
EVAL_SEED_OFFSET = 7_777


def evaluate_accuracy(model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """Accuracy and mean cross-entropy (nats) of ``model`` on ``dataset`` in eval mode."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += y.numel()
    model.train(was_training)
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


class Trainer:
    """Runs one experiment in a run directory; also the ``run`` object lifecycle hooks receive."""

    def __init__(
        self, plugins: PluginSet, cfg: DictConfig, run_dir: Path, console: Any = None, source: str = "recipe"
    ) -> None:
        self.plugins = plugins
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.console = console
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.sample_dir = self.run_dir / "samples"
        #: This process's rank and the world size (one process unless started by torchrun).
        self.dist: DistInfo = from_environment()
        if self.dist.enabled:
            initialise(self.dist, resolve_device(cfg.get("device", "auto")))
        self.experiment: Experiment = build_experiment(plugins, cfg, self.run_dir, source, self.dist)
        #: What the loss calls: the model, or its DistributedDataParallel facade under torchrun.
        self.train_model = self._wrap_for_training()
        self.step = 0
        self.epoch = 0
        #: Batches of the current epoch already consumed (non-zero only after a mid-epoch resume).
        self.batch_in_epoch = 0
        self.previous_wall = 0.0
        self.best_metric: float | None = None
        #: Product of the LR scalings applied by rollbacks so far.
        self.lr_scale = 1.0
        #: One record per rollback (step, reason, to_step, ...), also in metrics.jsonl.
        self.rollback_events: list[dict[str, Any]] = []
        #: Checkpoint the latest rollback restored, until a newer one is written.
        self._rollback_target: Path | None = None
        self.last_eval: dict[str, float] = {}
        self._stop_signal: int | None = None
        self._train_sums: dict[str, Tensor] = {}
        self._train_count = 0

    # ------------------------------------------------------------------ shortcuts
    @property
    def model(self):
        return self.experiment.model

    @property
    def sampler(self):
        return self.experiment.sampler

    @property
    def params(self):
        return self.experiment.train

    @property
    def device(self) -> torch.device:
        return self.experiment.context.device

    def _wrap_for_training(self) -> Any:
        if not self.dist.enabled:
            return self.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DataParallelModel(DistributedDataParallel(self.model, device_ids=device_ids))

    # ------------------------------------------------------------------ run directory
    def prepare_run_dir(self) -> None:
        """Create the run directory and write the resolved recipe (rank 0; the others wait)."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(exist_ok=True)
            self.sample_dir.mkdir(exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.cfg), encoding="utf-8")
        barrier(self.dist)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """The whole training state, as stored in a checkpoint."""
        e = self.experiment
        sampler_state = e.sampler.state_dict()
        rng = rng_state()
        state: dict[str, Any] = {
            "model": e.model.state_dict(),
            "optimizer": e.optimizer.state_dict(),
            "schedule": e.schedule.state_dict(),
            "sampler": sampler_state,
            "rng": rng,
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "wall_seconds": self.previous_wall + self._elapsed(),
                "best_metric": self.best_metric,
                "lr_scale": self.lr_scale,
                "rollback_events": self.rollback_events,
                "world_size": self.dist.world_size,
            },
        }
        if self.dist.enabled:  # every rank's replay-buffer shard and RNG streams
            state["sampler_ranks"] = gather_states(sampler_state, self.dist, self.device)
            state["rng_ranks"] = gather_objects(rng, self.dist)
        return state

    def metadata(self) -> dict[str, str]:
        return {
            "jemkit.recipe": to_yaml(self.cfg),
            "jemkit.versions": json.dumps(
                {"jemkit": __version__, "torch": torch.__version__, "python": platform.python_version()}
            ),
            "jemkit.plugins": json.dumps(self.plugins.origins),
        }

    def save(self, path: Path | None = None) -> Path:
        """Write a checkpoint of the current step (atomically) and prune old ones.

        Every rank must call this (it gathers their sampler states); rank 0 writes.
        """
        path = path or self.checkpoint_dir / checkpoint_name(self.step)
        state = self.state()
        if self.dist.is_main:
            save_checkpoint(path, state, self.metadata())
            if path.parent == self.checkpoint_dir and path.name != "best.safetensors":
                best = self.checkpoint_dir / "best.safetensors"
                prune_checkpoints(self.checkpoint_dir, self.params.keep_checkpoints, protect={best})
        barrier(self.dist)
        if path.name != "best.safetensors":
            self._rollback_target = None  # a newer checkpoint exists: the last rollback target is cleared
        return path

    def restore(self, path: Path) -> None:
        """Load a checkpoint written by :meth:`save` into this trainer."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        state = checkpoint.state
        e = self.experiment
        try:
            e.model.load_state_dict(state["model"])
            e.optimizer.load_state_dict(state["optimizer"])
            e.schedule.load_state_dict(state["schedule"])
            shards = state.get("sampler_ranks")
            # A run resumed on a different number of ranks reuses the saved shards round-robin.
            e.sampler.load_state_dict(shards[self.dist.rank % len(shards)] if shards else state["sampler"])
            progress = state["progress"]
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"Checkpoint {str(path)!r} does not fit this recipe's model or sampler: {str(exc).splitlines()[0]}. "
                "Resume with the recipe the checkpoint was written by (its config.yaml), or start a new run."
            ) from None
        rng_ranks = state.get("rng_ranks")
        if self.dist.rank == 0:
            set_rng_state(state["rng"])
        elif rng_ranks and len(rng_ranks) == self.dist.world_size:
            set_rng_state(rng_ranks[self.dist.rank])
        else:  # a new rank (world size grew): a fresh stream of its own
            seed_everything(self.experiment.context.seed + RANK_SEED_STRIDE * self.dist.rank + int(progress["step"]))
        self.step = int(progress["step"])
        self.epoch = int(progress["epoch"])
        self.batch_in_epoch = int(progress["batch_in_epoch"])
        self.previous_wall = float(progress["wall_seconds"])
        self.best_metric = progress.get("best_metric")
        self.lr_scale = float(progress.get("lr_scale", 1.0))
        self.rollback_events = list(progress.get("rollback_events", []))

    def latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.checkpoint_dir)
        return found[-1] if found else None

    # ------------------------------------------------------------------ data
    def _loader(self, epoch: int) -> DataLoader:
        """Training batches of ``epoch`` from batch ``batch_in_epoch`` on.

        The order depends only on (seed, epoch) and the augmentation of each item only on (seed,
        epoch, index) (:class:`~jemkit.item_seeds.SeededItems`); neither touches the global RNGs. A
        run resumed mid-epoch therefore sees exactly the batches the uninterrupted run would have
        seen, with any number of loader workers.
        """
        p = self.params
        generator = torch.Generator()
        generator.manual_seed(self.experiment.context.seed * 100003 + epoch)
        steps = self.experiment.context.steps_per_epoch or 1
        order = torch.randperm(len(self.experiment.data.train), generator=generator)
        batches = order[: steps * p.batch_size].view(steps, p.batch_size)[self.batch_in_epoch :].tolist()
        batches = [local_slice(batch, self.dist) for batch in batches]
        return DataLoader(
            SeededItems(self.experiment.data.train, self.experiment.context.seed, epoch),
            batch_sampler=batches,
            generator=generator,
            num_workers=min(p.num_workers, usable_cpus()),
            pin_memory=self.device.type == "cuda",
        )

    def _batches(self, epoch: int) -> Iterator[Batch]:
        non_blocking = self.device.type == "cuda"
        for item in self._loader(epoch):
            # Data sets yield (x, y), or (x, y, x_px) with un-augmented inputs for the p(x) term.
            x, y, *rest = (t.to(self.device, non_blocking=non_blocking) for t in item)
            perf = self.experiment.performance
            x_px = prepare_input(rest[0], perf) if rest else None
            yield Batch(x=prepare_input(x, perf), y=y, x_px=x_px)

    # ------------------------------------------------------------------ one iteration
    def train_step(self, batch: Batch) -> dict[str, Tensor]:
        """One optimiser step; returns the step's metrics as 0-dim tensors (``loss``, ``acc``, ...).

        Raises :class:`DivergenceTrip` before any weight update when the guard trips.
        """
        e = self.experiment
        e.model.train()
        closure_needed = getattr(e.optimizer, "requires_closure", False)
        sampler = RecordingSampler(e.sampler) if closure_needed else e.sampler
        model = self.train_model
        with autocast(self.device, e.performance):
            output = e.loss(model, batch, sampler)
        loss = output.loss
        e.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Reading the loss on the host waits for the device. With the backward pass already queued,
        # that wait covers the backward instead of leaving the device idle while the host launches
        # it. A trip still comes before any weight update.
        self._check(loss, output.metrics)
        if closure_needed:
            # SAM-style optimisers re-evaluate the loss at perturbed weights, on the same negatives.
            def closure() -> Tensor:
                e.optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, e.performance):
                    again = e.loss(model, batch, sampler.replay()).loss
                again.backward()
                return again.detach()

            e.optimizer.step(closure)
        else:
            e.optimizer.step()
        e.schedule.step()
        metrics = dict(output.metrics)
        for key, value in e.sampler.last_diagnostic_tensors.items() if e.loss.needs_sampler else ():
            metrics[f"sampler/{key}"] = value
        return metrics

    def _check(self, loss: Tensor, metrics: dict[str, Tensor]) -> None:
        energy_data, energy_samples = metrics.get("energy_data"), metrics.get("energy_samples")
        trip = check_step(
            self.experiment.guard,
            self.step + 1,
            float(loss.detach()),
            None if energy_data is None else float(energy_data),
            None if energy_samples is None else float(energy_samples),
        )
        if any_rank(trip is not None, self.dist, self.device):  # all ranks roll back together
            raise DivergenceTrip(trip or Trip(self.step + 1, "divergence on another rank"))

    def rollback(self, trip: Trip) -> dict[str, Any]:
        """Restore the last checkpoint after ``trip``, reseed, scale the LR; the event record.

        Raises :class:`DivergenceError` with the whole history once ``max_rollbacks`` is spent
        (or at once when the guard is disabled).
        """
        guard = self.experiment.guard
        history = [*self.rollback_events, {**trip.as_record()}]
        target = self._rollback_target
        if target is not None and target.exists() and list_checkpoints(self.checkpoint_dir)[0] != target:
            # Tripped again before any newer checkpoint: the one we rolled back to may itself hold
            # the damage (written after it was done). Set it aside and go one further back; the
            # oldest checkpoint stays, to retry from with a new seed and a lower LR.
            os.replace(target, target.with_name("suspect_" + target.name))
        latest = self.latest_checkpoint()
        if not guard.enabled or len(history) > guard.max_rollbacks or latest is None:
            lines = "; ".join(f"step {ev['step']}: {ev['reason']}" for ev in history)
            where = f"The last good checkpoint is {str(latest)!r}. " if latest else ""
            raise DivergenceError(
                f"Training diverged and was not recovered after {len(history) - 1} rollback(s) "
                f"(guard.max_rollbacks={guard.max_rollbacks}, enabled={guard.enabled}): {lines}. "
                f"{where}Stabilise the recipe (lower optimizer.lr, more sampler.steps, loss.energy_l2=0.1) "
                f"and resume with `jemkit run --resume {self.run_dir} seed=N`."
            )
        self.restore(latest)
        self._rollback_target = latest
        self.rollback_events = history
        # The checkpoint carries the LR scale in force when it was written; apply the rest.
        scale = guard.lr_scale ** len(history)
        factor = scale / self.lr_scale
        for group in self.experiment.optimizer.param_groups:
            group["lr"] *= factor
        schedule = self.experiment.schedule
        schedule.base_lrs = [base * factor for base in schedule.base_lrs]
        self.lr_scale = scale
        if guard.reseed:
            seed_everything(self.experiment.context.seed + 7919 * len(history))
        self._train_sums, self._train_count = {}, 0
        event = {
            "step": trip.step,
            "event": "rollback",
            "reason": trip.reason,
            "to_step": self.step,
            "rollbacks": len(history),
            "lr_scale": scale,
            "checkpoint": latest.name,
        }
        history[-1].update(event)
        return event

    # ------------------------------------------------------------------ logging
    def _accumulate(self, metrics: dict[str, Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            self._train_sums[key] = self._train_sums[key] + value if key in self._train_sums else value
        self._train_count += 1

    def _flush_train_metrics(self) -> dict[str, float]:
        if not self._train_count:
            return {}
        sums = mean_over_ranks(self._train_sums, self.dist, self.device)
        averaged = {f"train/{k}" if "/" not in k else k: float(v) / self._train_count for k, v in sums.items()}
        self._train_sums, self._train_count = {}, 0
        if "train/energy_data" in averaged and "train/energy_samples" in averaged:
            averaged["train/energy_gap"] = averaged["train/energy_samples"] - averaged["train/energy_data"]
        return averaged

    def _mark_throughput(self) -> None:
        """Start a new throughput window at the current step."""
        self._window_step, self._window_start = self.step, time.perf_counter()

    def _throughput(self) -> float:
        """Training iterations per second of wall time since the last log record (all work included)."""
        now = time.perf_counter()
        rate = (self.step - self._window_step) / max(now - self._window_start, 1e-9)
        self._window_step, self._window_start = self.step, now
        return rate

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0

    def evaluate(self) -> dict[str, float]:
        """Accuracy on the evaluation split (test, or validation when ``train.eval_on_val``)."""
        data = self.experiment.data
        split, dataset = ("val", data.val) if self.params.eval_on_val and data.val is not None else ("test", data.test)
        with preserved_rng(seed=self.experiment.context.seed + EVAL_SEED_OFFSET):
            result = evaluate_accuracy(self.model, dataset, self.device)
        self.last_eval = {f"{split}/acc": result["acc"], f"{split}/loss": result["loss"]}
        return self.last_eval

    def write_samples(self, name: str, extra_steps: int = 0) -> Path | None:
        """Class-conditional sample grid (one row per class) from the training sampler; PNG path."""
        context = self.experiment.context
        if context.input_shape is None or len(context.input_shape) != 3 or not context.num_classes:
            return None
        per_class = self.params.samples_per_class
        if not self.dist.is_main:
            return None
        y = torch.arange(context.num_classes, device=self.device).repeat_interleave(per_class)
        with preserved_rng():
            x = self.sampler.sample(self.model, y.numel(), y=y, steps=self.sampler.steps + extra_steps, persist=False)
        self.sampler.clear_diagnostics()
        return save_sample_grid(x, self.sample_dir / f"{name}.png", nrow=per_class)

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: Any = None) -> dict[str, Any]:
        """Train to the end (or ``max_steps``), checkpointing, logging and sampling on the way.

        A guard trip rolls back to the last checkpoint and continues (see :mod:`jemkit.guard`);
        SIGINT/SIGTERM write a checkpoint and raise :class:`Interrupted`.
        """
        p = self.params
        hooks = self.plugins.hook
        self._writer = MetricsWriter(self.run_dir / "metrics.jsonl") if self.dist.is_main else NullMetricsWriter()
        self._progress = progress
        self._total_steps = self.experiment.context.total_steps or (self.experiment.context.steps_per_epoch or 1) * p.epochs
        self._t0 = time.perf_counter()
        self._mark_throughput()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._wants_step_hook = bool(hooks.jemkit_step_end.get_hookimpls())
        hooks.jemkit_run_start(run=self)
        self._task = progress.add_task("train", total=self._total_steps, completed=self.step, status="") if progress else None
        try:
            if self.latest_checkpoint() is None:
                self.save()  # step 0: the guard can always roll back somewhere
            while self.epoch < p.epochs and self.step < self._total_steps:
                try:
                    finished = self._train_epoch()
                except DivergenceTrip as tripped:
                    event = self.rollback(tripped.trip)
                    self._mark_throughput()
                    self._writer.truncate(self.step)
                    self._writer.write(event)
                    self._say(
                        f"[yellow]guard:[/yellow] {event['reason']} at step {event['step']}; rolled back to "
                        f"step {event['to_step']} (rollback {event['rollbacks']}, lr x{event['lr_scale']:g})"
                    )
                    continue
                if finished:
                    break
            if not self.last_eval:
                evaluated = self.evaluate()
                self._writer.write({"step": self.step, "epoch": self.epoch, **evaluated})
            self.write_samples("final", extra_steps=p.sample_extra_steps)
            summary = self._summary("completed")
            if self.dist.is_main:
                write_json_atomic(self.run_dir / "summary.json", summary)
            hooks.jemkit_run_end(run=self, summary=summary)
            return summary
        finally:
            self._writer.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _say(self, text: str) -> None:
        if not self.dist.is_main:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        elif self.console is not None:
            self.console.print(text)

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch, then evaluate/sample/checkpoint; True when done."""
        p = self.params
        e = self.experiment
        hooks = self.plugins.hook
        progress, task = self._progress, self._task
        total_steps = self._total_steps
        for batch in self._batches(self.epoch):
            metrics = self.train_step(batch)
            self.step += 1
            self.batch_in_epoch += 1
            self._accumulate(metrics)
            if self._wants_step_hook:
                plain = {f"train/{k}" if "/" not in k else k: float(v) for k, v in metrics.items()}
                hooks.jemkit_step_end(run=self, step=self.step, metrics=plain)
            last_of_run = self.step >= total_steps
            if self.step % p.log_every == 0 or last_of_run:
                record = self._flush_train_metrics()
                record["lr"] = e.optimizer.param_groups[0]["lr"]
                record["time/it_per_s"] = self._throughput()
                self._writer.write({"step": self.step, "epoch": self.epoch, **record})
                if progress is not None:
                    progress.update(task, completed=self.step, status=_status_text(record, self.last_eval))
            elif progress is not None:
                progress.update(task, completed=self.step)
            if p.checkpoint_every_steps and self.step % p.checkpoint_every_steps == 0:
                self.save()
            if any_rank(self._stop_signal is not None, self.dist, self.device):
                path = self.save()
                name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal on another rank"
                raise Interrupted(
                    f"Stopped by {name} at step {self.step}; "
                    f"checkpoint written to {str(path)!r}. Continue with `jemkit run --resume {self.run_dir}`."
                )
            if last_of_run:
                break
        epoch_done = self.batch_in_epoch >= (e.context.steps_per_epoch or 1)
        if epoch_done:
            self.epoch += 1
            self.batch_in_epoch = 0
        finished = self.step >= total_steps or self.epoch >= p.epochs
        if finished or (epoch_done and self.epoch % p.eval_every_epochs == 0):
            evaluated = self.evaluate()
            self._writer.write({"step": self.step, "epoch": self.epoch, **evaluated})
            self._keep_best(evaluated)
            if progress is not None:
                progress.update(task, status=_status_text({}, self.last_eval))
            else:
                self._say(f"epoch {self.epoch}  step {self.step}  " + _status_text({}, evaluated))
        if p.sample_every_epochs and epoch_done and self.epoch % p.sample_every_epochs == 0 and not finished:
            self.write_samples(f"epoch_{self.epoch:04d}")
        if finished or (epoch_done and self.epoch % p.checkpoint_every_epochs == 0):
            self.save()
        return finished

    def _keep_best(self, evaluated: dict[str, float]) -> None:
        """Write ``checkpoints/best.safetensors`` when ``train.best_metric`` improves."""
        p = self.params
        value = next((v for k, v in evaluated.items() if k.split("/", 1)[-1] == p.best_metric), None)
        if value is None:
            return
        better = self.best_metric is None or (value > self.best_metric if p.best_mode == "max" else value < self.best_metric)
        if better:
            self.best_metric = value
            self.save(self.checkpoint_dir / "best.safetensors")

    def _summary(self, status: str) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "recipe": str(self.cfg.get("name")),
            "status": status,
            **self.last_eval,
            "steps": self.step,
            "epochs": self.epoch,
            "rollbacks": len(self.rollback_events),
            "wall_seconds": round(self.previous_wall + self._elapsed(), 3),
            "device": str(self.device),
        }
        return summary

    def resume_from_latest(self) -> Path:
        """Restore the newest checkpoint of the run directory; error if there is none."""
        latest = self.latest_checkpoint()
        if latest is None:
            raise CheckpointError(
                f"Run directory {str(self.run_dir)!r} has no checkpoint to resume from "
                f"(looked in {str(self.checkpoint_dir)!r}). Start the run afresh with `jemkit run RECIPE`."
            )
        self.restore(latest)
        if self.dist.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        return latest


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _status_text(record: dict[str, float], last_eval: dict[str, float]) -> str:
    parts = []
    if "train/loss" in record:
        parts.append(f"loss {record['train/loss']:.3f}")
    if "train/acc" in record:
        parts.append(f"acc {record['train/acc']:.3f}")
    if "train/energy_gap" in record:
        parts.append(f"E gap {record['train/energy_gap']:+.3f}")
    for key, value in last_eval.items():
        if key.endswith("/acc"):
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)
