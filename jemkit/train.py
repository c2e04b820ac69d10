"""The training loop: one JEM (or plain classifier) iteration after another.

The :class:`Trainer` owns the run directory::

    config.yaml            the resolved recipe
    metrics.jsonl          one JSON object per logged step (``step``, ``epoch``, ``train/...``, ``test/acc``)
    summary.json           final metrics (``test/acc``, ``steps``, ``wall_seconds``, ...)
    checkpoints/           ``step_XXXXXX.safetensors`` (whole training state) and ``best.safetensors``
    samples/               sample grids (PNG)

It holds the loop; the rooms around it do the rest: :mod:`jemkit.run_state` (what a checkpoint
holds; save, restore, prune, resume), :mod:`jemkit.guard` (trips and rollbacks),
:mod:`jemkit.runlog` (metrics files, averaging, throughput, status text), :mod:`jemkit.rng`
(seeds and RNG states), :mod:`jemkit.distributed` (data parallelism), :mod:`jemkit.plugin_hooks`
and :mod:`jemkit.run_view` (what plugins see and when they are called) and :mod:`jemkit.culprit`
(an exception in plugin code names the component and plugin).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from jemkit import defaults
from jemkit.build import Experiment, build_experiment, resolve_device
from jemkit.checkpoint import BEST_NAME, checkpoint_name, command
from jemkit.config import to_yaml
from jemkit.contracts import METRIC_ENERGY_DATA, METRIC_ENERGY_SAMPLES, Batch
from jemkit.culprit import ComponentIndex, blame, describe_nonfinite_chains, latest_checkpoint_of, naming_missing_plugins
from jemkit.disk import write_text_atomic
from jemkit.distributed import DataParallelModel, DistInfo, any_rank, barrier, join, local_slice
from jemkit.errors import CheckpointError, Interrupted
from jemkit.guard import DivergenceTrip, GuardGaveUp, Rollbacks, Trip, check_step
from jemkit.item_seeds import SeededItems
from jemkit.performance import autocast, prepare_input
from jemkit.plugin_hooks import PluginHooks
from jemkit.plugin_manager import PluginSet
from jemkit.precision import PrecisionChoice, settle_for_run
from jemkit.rng import EVAL_SEED_OFFSET, preserved_rng
from jemkit.run_state import Progress, ResumePoint, RunState
from jemkit.run_view import FloatMetrics, HookedWriter, PendingMetrics, TrainerPluginState, TrainerRunView, read_only_config
from jemkit.runlog import (
    MetricAverager,
    MetricsWriter,
    NullMetricsWriter,
    Stopwatch,
    metric_name,
    status_text,
    write_json_atomic,
)
from jemkit.sampler import RecordingSampler
from jemkit.samples import save_sample_grid
from jemkit.stopping import STOP_SIGNALS, StopRequested, signal_name


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


def _progress_field(name: str) -> property:
    """A :class:`Trainer` attribute that reads and writes ``trainer.progress.<name>``."""

    def get(self: Trainer) -> Any:
        return getattr(self.progress, name)

    def set(self: Trainer, value: Any) -> None:
        setattr(self.progress, name, value)

    return property(get, set, doc=f"``progress.{name}`` (see :class:`~jemkit.run_state.Progress`).")


class Trainer:
    """Runs one experiment in a run directory.

    Plugins never see the trainer: lifecycle, logger and state hooks receive a
    :class:`~jemkit.contracts.RunView` (:meth:`view`), called plugin by plugin through
    :attr:`hooks`. ``dist`` is this process's place in a data-parallel job; without it the trainer
    joins the job its environment describes (:func:`jemkit.distributed.join`).
    """

    step = _progress_field("step")
    epoch = _progress_field("epoch")
    batch_in_epoch = _progress_field("batch_in_epoch")

    def __init__(
        self,
        plugins: PluginSet,
        cfg: DictConfig,
        run_dir: Path,
        console: Any = None,
        source: str = "recipe",
        dist: DistInfo | None = None,
    ) -> None:
        self.plugins = plugins
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.console = console
        self.sample_dir = self.run_dir / "samples"
        #: This process's rank and the world size (one process unless started by torchrun).
        self.dist: DistInfo = dist if dist is not None else join(resolve_device(cfg.get("device", defaults.DEVICE)))
        with naming_missing_plugins(plugins, latest_checkpoint_of(self.run_dir)):  # a resumed run's uninstalled plugin
            self.experiment: Experiment = build_experiment(plugins, cfg, self.run_dir, source, self.dist)
        #: What the loss calls: the model, or its DistributedDataParallel facade under torchrun.
        self.train_model = self._wrap_for_training()
        context = self.experiment.context
        #: Iterations the run trains for (``train.max_steps`` or epochs x steps per epoch).
        self.total_steps: int = context.total_steps or (context.steps_per_epoch or 1) * self.params.epochs
        #: Step, epoch, position in the epoch, best metric, LR scale, rollbacks: what checkpoints carry.
        self.progress = Progress()
        self.run_state = RunState(self.experiment, self.run_dir, self.dist, plugins.origins, source)
        self.rollbacks = Rollbacks(self.experiment.guard, self.run_state, context.seed)
        self.metrics = MetricAverager(self.dist, self.device)
        self.clock = Stopwatch()
        self.writer: MetricsWriter | NullMetricsWriter = NullMetricsWriter()  # the real one while fit() runs
        self.last_eval: dict[str, float] = {}
        #: The precision and memory format ``fit()`` settled on (``performance: auto`` timed or stored).
        self.precision: PrecisionChoice | None = None
        self._bar: Any = None  # rich Progress while fit() runs with one
        self._task: Any = None
        #: The experiment's components, to name the one whose code raised (:mod:`jemkit.culprit`).
        self.components = ComponentIndex.of_experiment(plugins, self.experiment, source)
        self._pending = PendingMetrics()  # what plugins passed to run.log, until the next record
        self._config_view = read_only_config(cfg)
        self._views: dict[str, TrainerRunView] = {}
        #: Lifecycle, logger and state hooks, called plugin by plugin with each plugin's RunView.
        self.hooks = PluginHooks(plugins, self.view, cfg, source)
        self.run_state.plugin_state = TrainerPluginState(self)
        self._wants_step_hook = self.hooks.implemented("jemkit_step_end")
        #: Per-input values of the latest batch for jemkit_log_histogram (LossOutput.histograms).
        self._histograms: dict[str, Tensor] = {}
        self._stop_signal: int | None = None
        #: What the trainer is doing (start-up, training, checkpoint write, evaluation, sample grid,
        #: final evaluation, final sample grid, summary): how a stop request is handled (fit()).
        self.phase = "start-up"
        self._stopped_in: str | None = None
        #: Step of the newest step checkpoint this trainer wrote or restored (None: none yet).
        self._saved_step: int | None = None
        #: Events to write into metrics.jsonl when fit() opens it (a resume, its overrides).
        self.pending_events: list[dict[str, Any]] = []

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

    def view(self, plugin: str) -> TrainerRunView:
        """The :class:`~jemkit.contracts.RunView` that ``plugin``'s hooks receive (one per plugin)."""
        if plugin not in self._views:
            self._views[plugin] = TrainerRunView(self, plugin, self._config_view, self._pending)
        return self._views[plugin]

    def _wrap_for_training(self) -> Any:
        if not self.dist.enabled:
            return self.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DataParallelModel(DistributedDataParallel(self.model, device_ids=device_ids))

    # ------------------------------------------------------------------ run directory and checkpoints
    def prepare_run_dir(self) -> None:
        """Create the run directory and write the resolved recipe (rank 0; the others wait)."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run_state.directory.mkdir(exist_ok=True)
            self.sample_dir.mkdir(exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", to_yaml(self.cfg))  # never half a recipe
        barrier(self.dist)

    def save(self, path: Path | None = None) -> Path:
        """Write a checkpoint of the current step (every rank calls this; rank 0 writes). A stop
        request during the write waits for it to finish."""
        with self._in_phase("checkpoint write"):
            path = self.run_state.save(self.progress, self.clock.elapsed(), path)
        if path.name != BEST_NAME:
            self.rollbacks.checkpoint_written()
            self._saved_step = self.step
        return path

    def restore(self, path: Path) -> None:
        """Load a checkpoint written by :meth:`save` into this trainer."""
        self.progress = self.run_state.restore(path)
        self._saved_step = self.step

    def resume_from_latest(self) -> Path:
        """Restore the newest checkpoint of the run directory (an error if there is none); its path."""
        point = self.resume()
        if point.path is None:
            raise CheckpointError(f"Run directory {str(self.run_dir)!r} has no checkpoint to resume from.")
        return point.path

    def resume(self, which: str | int | Path | None = "last", changes: Any = (), overrides: Any = ()) -> ResumePoint:
        """Continue the run in the run directory from the checkpoint ``which`` names (default: the
        newest; see :meth:`jemkit.run_state.RunState.resume`), with the recipe ``changes`` of the
        resume applied; its ``resume`` event goes into metrics.jsonl when :meth:`fit` starts."""
        point = self.run_state.resume(which, changes, overrides)
        self.progress = point.progress
        if point.path is not None and point.path == self.run_state.directory / checkpoint_name(self.step):
            self._saved_step = self.step  # a stop before the next step needs no new checkpoint
        if point.optimizer_changed:  # the step checkpoint now holds the settings the run uses from here on
            self.save()
        self.pending_events.append(point.event())
        return point

    def rollback(self, trip: Trip) -> dict[str, Any]:
        """Restore the last good checkpoint after ``trip``; the event record (see :class:`Rollbacks`)."""
        self.progress, event = self.rollbacks.roll_back(trip, self.progress.rollback_events)
        self.metrics.reset()
        self._saved_step = self.step  # the checkpoint just restored
        return event

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
        items = iter(self._loader(epoch))
        while True:
            with blame(self.components.by_kind.get("data"), "while loading a training batch"):
                item = next(items, None)
            if item is None:
                return
            # Data sets yield (x, y), or (x, y, x_px) with un-augmented inputs for the p(x) term.
            x, y, *rest = (t.to(self.device, non_blocking=non_blocking) for t in item)
            perf = self.experiment.performance
            x_px = prepare_input(rest[0], perf) if rest else None
            yield Batch(x=prepare_input(x, perf), y=y, x_px=x_px)

    # ------------------------------------------------------------------ one iteration
    def train_step(self, batch: Batch) -> dict[str, Tensor | float]:
        """One optimiser step; the step's metrics (``loss``, ``acc``, ...) as floats or 0-dim tensors.

        Raises :class:`DivergenceTrip` before any weight update when the guard trips.
        """
        e = self.experiment
        e.model.train()
        closure_needed = getattr(e.optimizer, "requires_closure", False)
        sampler = RecordingSampler(e.sampler) if closure_needed else e.sampler
        model = self.train_model
        during = f"in training step {self.step + 1}"
        with blame(self.components.by_kind.get("loss"), during, self.components), autocast(self.device, e.performance):
            output = e.loss(model, batch, sampler)
        loss = output.loss
        self._histograms = getattr(output, "histograms", None) or {}
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

            with blame(self.components.by_kind.get("optimizer"), during, self.components):
                e.optimizer.step(closure)
        else:
            with blame(self.components.by_kind.get("optimizer"), during, self.components):
                e.optimizer.step()
        with blame(self.components.by_kind.get("schedule"), during, self.components):
            e.schedule.step()
        metrics = dict(output.metrics)
        for key, value in e.sampler.last_diagnostic_tensors.items() if e.loss.needs_sampler else ():
            metrics[f"sampler/{key}"] = value
        return metrics

    def _check(self, loss: Tensor, metrics: dict[str, Tensor | float]) -> None:
        energy_data, energy_samples = metrics.get(METRIC_ENERGY_DATA), metrics.get(METRIC_ENERGY_SAMPLES)
        trip = check_step(
            self.experiment.guard,
            self.step + 1,
            float(loss.detach()),
            None if energy_data is None else float(energy_data),
            None if energy_samples is None else float(energy_samples),
        )
        if trip is not None and self.experiment.loss.needs_sampler:
            chains = describe_nonfinite_chains(self.experiment.sampler, self.components)  # names a NaN transition
            if chains:
                trip = Trip(trip.step, f"{trip.reason}; {chains}")
        if any_rank(trip is not None, self.dist, self.device):  # all ranks roll back together
            raise DivergenceTrip(trip or Trip(self.step + 1, "divergence on another rank"))

    # ------------------------------------------------------------------ evaluation and samples
    def evaluate(self) -> dict[str, float]:
        """Accuracy on the evaluation split (test, or validation when ``train.eval_on_val``)."""
        data = self.experiment.data
        split, dataset = ("val", data.val) if self.params.eval_on_val and data.val is not None else ("test", data.test)
        with preserved_rng(seed=self.experiment.context.seed + EVAL_SEED_OFFSET):
            with blame(None, f"while evaluating on the {split} split", self.components):
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
        with preserved_rng(), blame(None, "while drawing a sample grid", self.components):
            x = self.sampler.sample(self.model, y.numel(), y=y, steps=self.sampler.steps + extra_steps, persist=False)
        self.sampler.clear_diagnostics()
        path = save_sample_grid(x, self.sample_dir / f"{name}.png", nrow=per_class)
        self.hooks.call("jemkit_log_image", step=self.step, name=f"samples/{name}", path=path)
        return path

    # ------------------------------------------------------------------ signals
    #: Phases in which a stop request waits for the step or write under way, then a checkpoint.
    DEFERRED_PHASES = ("training", "checkpoint write")

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGINT/SIGTERM while fit() runs: noted inside a step or a checkpoint write (the loop
        checkpoints and stops after it), raised at once in every other phase."""
        self._stop_signal = signum
        if self.phase not in self.DEFERRED_PHASES:
            self._stopped_in = self.phase
            raise StopRequested(signum)

    @contextlib.contextmanager
    def _in_phase(self, name: str) -> Iterator[None]:
        previous = self.phase
        self._enter(name)
        try:
            yield
        finally:
            self.phase = previous

    def _enter(self, name: str) -> None:
        """Switch to phase ``name``; a stop noted earlier (during a step or a write) takes effect
        now when the new phase does not wait."""
        self.phase = name
        if self._stop_signal is not None and name not in self.DEFERRED_PHASES:
            self._stopped_in = name
            raise StopRequested(self._stop_signal)

    def _interrupted(self, stop: StopRequested) -> Interrupted:
        """The error for a stop request raised outside a training step (see :meth:`_on_signal`):
        a checkpoint is written first when training had run since the last one."""
        phase = self._stopped_in or self.phase
        again = command("run", "--resume", self.run_dir)
        if self._saved_step is None and self.step == 0:
            return Interrupted(
                f"Stopped by {stop.name} during {phase}, before the first training step; nothing was trained. "
                f"Start it again with `{again}`."
            )
        if self._saved_step != self.step:
            self._stop_signal = stop.signum
            path = self.save()
            return Interrupted(
                f"Stopped by {stop.name} during the {phase} at step {self.step}; checkpoint written to "
                f"{str(path)!r}. Continue with `{again}`."
            )
        latest = self.run_state.latest()
        done = self.step >= self.total_steps or self.epoch >= self.params.epochs
        rest = "writes the final evaluation, sample grid and summary" if done else "continues the run"
        return Interrupted(
            f"Stopped by {stop.name} during the {phase} at step {self.step}; the checkpoint of that step, "
            f"{str(latest)!r}, holds the training so far. `{again}` {rest}."
        )

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: Any = None) -> dict[str, Any]:
        """Train to the end (or ``max_steps``), checkpointing, logging and sampling on the way.

        ``progress`` is an optional rich ``Progress`` to show a bar in. A guard trip rolls back to
        the last checkpoint and continues (see :mod:`jemkit.guard`); SIGINT/SIGTERM write a
        checkpoint and raise :class:`Interrupted`.
        """
        p = self.params
        self.writer = HookedWriter(
            MetricsWriter(self.run_dir / "metrics.jsonl") if self.dist.is_main else NullMetricsWriter(),
            self._pending,
            self._log_record if self.dist.is_main and self.hooks.implemented("jemkit_log_record") else None,
        )
        self._bar = progress
        self.clock.start(self.step)
        self.phase = "start-up"
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            for event in self.pending_events:
                self.writer.write(event)
            self.pending_events = []
            # performance.autocast / channels_last: `auto` timed on the first batch, or kept from precision.json
            self.precision = settle_for_run(self.experiment, self.run_dir, self.dist)
            self.writer.write(self.precision.event(self.step))
            self._say(self.precision.describe())
            self.clock.mark(self.step)  # throughput counts training only
            self.hooks.call("jemkit_run_start")
            self._task = progress.add_task("train", total=self.total_steps, completed=self.step, status="") if progress else None
            if self.run_state.latest() is None:
                self.save()  # step 0: the guard can always roll back somewhere
            if self._stop_signal is not None:
                self._stop()
            self.phase = "training"
            while self.epoch < p.epochs and self.step < self.total_steps:
                if any_rank(self._stop_signal is not None, self.dist, self.device):  # noted in the last write
                    self._stop()
                try:
                    finished = self._train_epoch()
                except DivergenceTrip as tripped:
                    try:
                        event = self.rollback(tripped.trip)
                    except GuardGaveUp as gave_up:
                        raise self._diverged(gave_up) from None
                    self.clock.mark(self.step)
                    self.writer.truncate(self.step)
                    self.writer.write(event)
                    self._say(
                        f"[yellow]guard:[/yellow] {event['reason']} at step {event['step']}; rolled back to "
                        f"step {event['to_step']} (rollback {event['rollbacks']}, lr x{event['lr_scale']:g})"
                    )
                    continue
                if finished:
                    break
            if not self.last_eval:
                with self._in_phase("final evaluation"):
                    evaluated = self.evaluate()
                self.writer.write({"step": self.step, "epoch": self.epoch, **evaluated})
            with self._in_phase("final sample grid"):
                self.write_samples("final", extra_steps=p.sample_extra_steps)
            self._enter("summary")
            summary = self._summary("completed")
            summary.update(self.hooks.summary_entries(summary))  # plugins' entries (toy density, ...)
            if self.dist.is_main:
                write_json_atomic(self.run_dir / "summary.json", summary)
            self.hooks.call("jemkit_run_end", summary=summary)
            if self._pending:  # logged in jemkit_run_end: one last record
                self.writer.write({"step": self.step, "epoch": self.epoch})
            return summary
        except StopRequested as stop:
            raise self._interrupted(stop) from None
        finally:
            self.writer.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _say(self, text: str) -> None:
        if not self.dist.is_main:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.console is not None:
            self.console.print(text)

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch, then evaluate/sample/checkpoint; True when done."""
        p = self.params
        bar, task = self._bar, self._task
        for batch in self._batches(self.epoch):
            metrics = self.train_step(batch)
            self.step += 1
            self.batch_in_epoch += 1
            self.metrics.add(metrics)
            if self._wants_step_hook:  # values become floats only when a plugin reads them
                logged = FloatMetrics({metric_name(k): v for k, v in metrics.items()})
                self.hooks.call("jemkit_step_end", step=self.step, metrics=logged)
            last_of_run = self.step >= self.total_steps
            if self.step % p.log_every == 0 or last_of_run:
                record = self.metrics.flush()
                record["lr"] = self.experiment.optimizer.param_groups[0]["lr"]
                record["time/it_per_s"] = self.clock.rate(self.step)
                self.writer.write({"step": self.step, "epoch": self.epoch, **record})
                self._log_histograms()
                if bar is not None:
                    bar.update(task, completed=self.step, status=status_text(record, self.last_eval))
            elif bar is not None:
                bar.update(task, completed=self.step)
            if p.checkpoint_every_steps and self.step % p.checkpoint_every_steps == 0:
                self.save()
            if any_rank(self._stop_signal is not None, self.dist, self.device):
                self._stop()
            if last_of_run:
                break
        epoch_done = self.batch_in_epoch >= (self.experiment.context.steps_per_epoch or 1)
        if epoch_done:
            self.epoch += 1
            self.batch_in_epoch = 0
        finished = self.step >= self.total_steps or self.epoch >= p.epochs
        if finished or (epoch_done and self.epoch % p.eval_every_epochs == 0):
            with self._in_phase("evaluation"):
                evaluated = self.evaluate()
            self.writer.write({"step": self.step, "epoch": self.epoch, **evaluated})
            self._keep_best(evaluated)
            if bar is not None:
                bar.update(task, status=status_text({}, self.last_eval))
            else:
                self._say(f"epoch {self.epoch}  step {self.step}  " + status_text({}, evaluated))
        if p.sample_every_epochs and epoch_done and self.epoch % p.sample_every_epochs == 0 and not finished:
            with self._in_phase("sample grid"):
                self.write_samples(f"epoch_{self.epoch:04d}")
        if finished or (epoch_done and self.epoch % p.checkpoint_every_epochs == 0):
            self.save()
        return finished

    def _log_record(self, record: dict[str, Any]) -> None:
        self.hooks.call("jemkit_log_record", record=record)

    def _log_histograms(self) -> None:
        """Hand the latest batch's per-input values (energies of data and samples) to the loggers."""
        if not (self.dist.is_main and self._histograms and self.hooks.implemented("jemkit_log_histogram")):
            return
        for name, values in self._histograms.items():
            cpu = values.detach().float().reshape(-1).cpu()
            self.hooks.call("jemkit_log_histogram", step=self.step, name=name, values=cpu)

    def _stop(self) -> None:
        """After SIGINT/SIGTERM (on any rank): write a checkpoint (unless this step has one) and
        raise :class:`Interrupted`."""
        latest = self.run_state.latest()
        path = latest if self._saved_step == self.step and latest is not None else self.save()
        name = signal_name(self._stop_signal) if self._stop_signal else "a signal on another rank"
        raise Interrupted(
            f"Stopped by {name} at step {self.step}; "
            f"checkpoint written to {str(path)!r}. Continue with `{command('run', '--resume', self.run_dir)}`."
        )

    def _diverged(self, gave_up: GuardGaveUp) -> GuardGaveUp:
        """The guard gave up: write the parked rollback as the last checkpoint (when there is one),
        the final trip as a ``diverged`` event and ``summary.json`` with the history; returns the
        error to raise."""
        self.metrics.reset()
        if gave_up.parked is not None:
            self.progress = gave_up.parked
            self.writer.truncate(self.step)
            self.save()
        trip = gave_up.history[-1]
        self.writer.write(
            {
                "step": trip["step"],
                "event": "diverged",
                "reason": trip["reason"],
                "rollbacks": len(gave_up.history) - 1,
                "parked_at_step": self.step if gave_up.parked is not None else None,
                "checkpoint": gave_up.checkpoint.name if gave_up.checkpoint is not None else None,
                "history": gave_up.history,
            }
        )
        summary = {
            **self._summary("diverged"),
            "rollbacks": len(gave_up.history) - 1,
            "reason": trip["reason"],
            "history": gave_up.history,
        }
        if self.dist.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        self.hooks.call("jemkit_run_end", summary=summary)
        return gave_up

    def _keep_best(self, evaluated: dict[str, float]) -> None:
        """Write ``checkpoints/best.safetensors`` when ``train.best_metric`` improves."""
        p = self.params
        value = next((v for k, v in evaluated.items() if k.split("/", 1)[-1] == p.best_metric), None)
        if value is None:
            return
        best = self.progress.best_metric
        better = best is None or (value > best if p.best_mode == "max" else value < best)
        if better:
            self.progress.best_metric = value
            self.save(self.run_state.directory / BEST_NAME)

    def _summary(self, status: str) -> dict[str, Any]:
        return {
            "recipe": str(self.cfg.get("name")),
            "status": status,
            **self.last_eval,
            "steps": self.step,
            "epochs": self.epoch,
            "rollbacks": len(self.progress.rollback_events),
            "wall_seconds": round(self.progress.previous_wall + self.clock.elapsed(), 3),
            "device": str(self.device),
            **(self.precision.summary() if self.precision is not None else {}),
        }


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
