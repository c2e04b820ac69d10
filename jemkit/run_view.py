"""The :class:`~jemkit.contracts.RunView` a training run hands its plugins, and the plumbing behind it.

:class:`TrainerRunView` is the one place that knows the trainer's shape: a plugin reads the step,
the model, the optimiser, the resolved recipe, ... through it and never touches the trainer.
:class:`PendingMetrics` holds what plugins pass to ``run.log`` until the next record,
:class:`HookedWriter` adds them to that record and hands every record to the
``jemkit_log_record`` hook, and :class:`FloatMetrics` is the read-only mapping
``jemkit_step_end`` receives (a value becomes a float only when read).
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from jemkit.runlog import to_number

if TYPE_CHECKING:
    from jemkit.contracts import BuildContext, DataSplits, JointEnergyModel, Sampler
    from jemkit.train import Trainer

#: Trainer attributes hooks used to read before the RunView; still reachable, with a DeprecationWarning.
LEGACY_ATTRIBUTES: dict[str, str] = {
    "experiment": "run.model, run.optimizer, run.sampler, run.data and run.context",
    "cfg": "run.config",
    "params": "run.config.train",
    "plugins": "nothing (the plugin set is internal)",
    "last_eval": "the evaluation records of jemkit_log_record",
}


def read_only_config(cfg: DictConfig) -> DictConfig:
    """A read-only copy of ``cfg`` (changing it raises; the run's own recipe is untouched)."""
    view = cfg.copy()
    OmegaConf.set_readonly(view, True)
    return view


class PendingMetrics:
    """Metrics plugins logged with ``run.log`` that wait for the next ``metrics.jsonl`` record."""

    def __init__(self) -> None:
        self._values: dict[str, float | Tensor] = {}

    def add(self, metrics: Mapping[str, float | Tensor], plugin: str = "?") -> None:
        """Keep ``metrics`` (floats or 0-dim tensors, detached); the latest value of a key wins."""
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"plugin {plugin!r} logged the metric key {key!r}; keys are non-empty strings")
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise TypeError(
                        f"plugin {plugin!r} logged {key!r} as a tensor of shape {tuple(value.shape)}; "
                        "log floats or 0-dim tensors (histograms go to jemkit_log_histogram)"
                    )
                value = value.detach().reshape(())
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"plugin {plugin!r} logged {key!r} as a {type(value).__name__}; log floats or 0-dim tensors")
            self._values[key] = value

    def take(self) -> dict[str, float | Tensor]:
        """Everything logged since the last call, emptied."""
        values, self._values = self._values, {}
        return values

    def __bool__(self) -> bool:
        return bool(self._values)


class HookedWriter:
    """Wraps a metrics writer: step records (those without ``event``) take the plugins' pending
    metrics, and every record, as written, goes to ``on_record`` (the ``jemkit_log_record`` hook)."""

    def __init__(self, inner: Any, pending: PendingMetrics, on_record: Callable[[dict[str, Any]], None] | None) -> None:
        self.inner = inner
        self.pending = pending
        self.on_record = on_record

    def write(self, record: dict[str, Any]) -> None:
        if "event" not in record and self.pending:
            record = {**record, **{k: v for k, v in self.pending.take().items() if k not in record}}
        record = {key: to_number(value) for key, value in record.items()}
        self.inner.write(record)
        if self.on_record is not None:
            self.on_record(record)

    def truncate(self, last_step: int) -> None:
        self.inner.truncate(last_step)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # anything else the inner writer offers
        return getattr(self.inner, name)


class FloatMetrics(Mapping[str, float]):
    """A read-only mapping whose values (floats or 0-dim tensors) are read as floats on access."""

    def __init__(self, values: Mapping[str, float | Tensor]) -> None:
        self._values = values
        self._read: dict[str, float] = {}

    def __getitem__(self, key: str) -> float:
        if key not in self._read:
            self._read[key] = float(self._values[key])
        return self._read[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"FloatMetrics({dict(self)!r})"


def _safe_name(name: str, plugin: str) -> PurePosixPath:
    relative = PurePosixPath(str(name).replace(os.sep, "/"))
    if not str(name) or relative.is_absolute() or ".." in relative.parts or str(relative) in ("", "."):
        raise ValueError(
            f"plugin {plugin!r} asked to write {name!r}; run.write_file takes a relative path without '..' "
            "(it writes under run_dir/plugins/<plugin>/)"
        )
    return relative


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


class TrainerRunView:
    """The :class:`~jemkit.contracts.RunView` of one plugin in a :class:`~jemkit.train.Trainer`'s run."""

    def __init__(self, trainer: Trainer, plugin: str, config: DictConfig, pending: PendingMetrics) -> None:
        self._trainer = trainer
        self._config = config
        self._pending = pending
        #: Name of the plugin this view was made for.
        self.plugin = plugin

    @property
    def step(self) -> int:
        return int(self._trainer.progress.step)

    @property
    def epoch(self) -> int:
        return int(self._trainer.progress.epoch)

    @property
    def run_dir(self) -> Path:
        return self._trainer.run_dir

    @property
    def config(self) -> DictConfig:
        return self._config

    @property
    def model(self) -> JointEnergyModel:
        return self._trainer.experiment.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.experiment.optimizer

    @property
    def sampler(self) -> Sampler:
        return self._trainer.experiment.sampler

    @property
    def data(self) -> DataSplits:
        return self._trainer.experiment.data

    @property
    def context(self) -> BuildContext:
        return self._trainer.experiment.context

    @property
    def device(self) -> torch.device:
        return self._trainer.experiment.context.device

    @property
    def is_main(self) -> bool:
        return bool(self._trainer.dist.is_main)

    def log(self, metrics: Mapping[str, float | Tensor]) -> None:
        self._pending.add(metrics, self.plugin)

    def write_file(self, name: str, data: bytes | str) -> Path:
        path = self._trainer.run_dir / "plugins" / self.plugin / _safe_name(name, self.plugin)
        if self.is_main:
            write_atomic(path, data)
        return path

    def __getattr__(self, name: str) -> Any:
        if name in LEGACY_ATTRIBUTES:
            warnings.warn(
                f"run.{name} reaches into the trainer, which is not part of the plugin surface and will go; "
                f"use {LEGACY_ATTRIBUTES[name]} (see jemkit.contracts.RunView).",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(self._trainer, name)
        raise AttributeError(
            f"RunView has no attribute {name!r}; it offers step, epoch, run_dir, config, model, optimizer, "
            "sampler, data, context, device, is_main, plugin, log() and write_file() (jemkit.contracts.RunView)"
        )

    def __repr__(self) -> str:
        return f"RunView(plugin={self.plugin!r}, step={self.step}, run_dir={str(self.run_dir)!r})"


class TrainerPluginState:
    """What :class:`~jemkit.run_state.RunState` calls to put plugin state into checkpoints and back:
    ``save()`` collects ``jemkit_save_state``; ``load(states, progress)`` makes ``progress`` the
    trainer's (so ``run.step`` is the checkpoint's) and hands each plugin its state."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    def save(self) -> dict[str, Any]:
        return self._trainer.hooks.save_states()

    def load(self, states: Mapping[str, Any], progress: Any) -> None:
        self._trainer.progress = progress
        self._trainer.hooks.load_states(states)


__all__ = [
    "FloatMetrics",
    "TrainerPluginState",
    "HookedWriter",
    "LEGACY_ATTRIBUTES",
    "PendingMetrics",
    "TrainerRunView",
    "read_only_config",
    "write_atomic",
]
