"""What a run's inputs are, recorded in the run so that its model opens without the data set.

A model alone tells neither the shape of its inputs nor what its classes are called, and
rebuilding the run's data set to learn them needs the data on disk (CIFAR-10 for the paper runs).
So every run records a :class:`DataInfo` twice: as the checkpoint metadata entry ``jemkit.data``
(:data:`METADATA_KEY`, written with each checkpoint) and as ``RUN_DIR/data_info.json``
(:data:`INFO_FILE`), both the JSON of :meth:`DataInfo.to_json`::

    {"format": 1, "name": "digits", "input_shape": [1, 8, 8], "num_classes": 10,
     "class_names": ["0", ..., "9"], "noise_std": 0.03, "value_range": [-1.0, 1.0],
     "num_train": 1294, "num_test": 360}

:func:`jemkit.run_open.open_run` builds the model from it when the caller needs no data
(``jemkit sample``, :func:`jemkit.load_run`); a run written before this record existed has
neither, and opening it builds the data set as before.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from jemkit.contracts import BuildContext, DataSplits

#: Checkpoint metadata entry holding the JSON of :meth:`DataInfo.to_json`.
METADATA_KEY = "jemkit.data"
#: File in the run directory holding the same JSON.
INFO_FILE = "data_info.json"
#: Version of the record's layout.
FORMAT = 1
#: Range of every input jemkit's data sets produce (before any input noise).
VALUE_RANGE: tuple[float, float] = (-1.0, 1.0)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataInfo:
    """The inputs and classes of a run: enough to build its model and label its outputs."""

    #: Registered name of the run's data set (``digits``, ``cifar10``, ...); ``None`` if unknown.
    name: str | None
    #: Shape of one input without the batch dimension, e.g. ``(3, 32, 32)``.
    input_shape: tuple[int, ...]
    #: Number of classes (width of the logits).
    num_classes: int
    #: Name of each class, index by index; ``None`` when the data set names none.
    class_names: tuple[str, ...] | None = None
    #: Std of the Gaussian noise the recipe adds to inputs, in ``[-1, 1]`` units; ``None`` when the
    #: recipe leaves the data set's default.
    noise_std: float | None = None
    #: Range inputs are scaled to before noise: ``(-1.0, 1.0)`` for every jemkit data set.
    value_range: tuple[float, float] = field(default=VALUE_RANGE)
    #: Examples in the training and test splits (``None`` when not known, e.g. imported runs).
    num_train: int | None = None
    num_test: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able containers (the layout of the module docstring)."""
        return {
            "format": FORMAT,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "noise_std": self.noise_std,
            "value_range": list(self.value_range),
            "num_train": self.num_train,
            "num_test": self.num_test,
        }

    @classmethod
    def from_json(cls, obj: Any) -> DataInfo:
        """The inverse of :meth:`to_json`; ``ValueError`` for a record that is not one."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        shape = obj.get("input_shape")
        if not isinstance(shape, list) or not shape or not all(_positive_int(s) for s in shape):
            raise ValueError(f"input_shape must be a list of positive integers, got {shape!r}")
        classes = obj.get("num_classes")
        if not _positive_int(classes):
            raise ValueError(f"num_classes must be a positive integer, got {classes!r}")
        names = obj.get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != classes):
            raise ValueError(f"class_names must be a list of {classes} names or null, got {names!r}")
        low, high = obj.get("value_range", list(VALUE_RANGE))
        noise = obj.get("noise_std")
        return cls(
            name=None if obj.get("name") is None else str(obj["name"]),
            input_shape=tuple(int(s) for s in shape),
            num_classes=int(classes),
            class_names=None if names is None else tuple(str(n) for n in names),
            noise_std=None if noise is None else float(noise),
            value_range=(float(low), float(high)),
            num_train=_optional_int(obj.get("num_train")),
            num_test=_optional_int(obj.get("num_test")),
        )

    def fill(self, context: BuildContext) -> BuildContext:
        """Set ``context.input_shape`` and ``context.num_classes`` as building the data set would."""
        context.input_shape = tuple(self.input_shape)
        context.num_classes = self.num_classes
        return context


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _recipe_noise(cfg: DictConfig | Mapping[str, Any]) -> float | None:
    data = cfg.get("data") if cfg is not None else None
    value = data.get("noise_std") if isinstance(data, (DictConfig, Mapping)) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def describe_data(cfg: DictConfig | Mapping[str, Any], data: DataSplits) -> DataInfo:
    """The :class:`DataInfo` of the data set ``data`` built from recipe ``cfg``."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    section = cfg.get("data") if isinstance(cfg, Mapping) else None
    name = section.get("name") if isinstance(section, Mapping) else None
    return DataInfo(
        name=None if name is None else str(name),
        input_shape=tuple(int(s) for s in data.input_shape),
        num_classes=int(data.num_classes),
        class_names=None if data.class_names is None else tuple(str(n) for n in data.class_names),
        noise_std=_recipe_noise(cfg),
        num_train=_length(data.train),
        num_test=_length(data.test),
    )


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an iterable data set without a length
        return None


def metadata_entry(info: DataInfo) -> dict[str, str]:
    """``{METADATA_KEY: json}``: the checkpoint metadata entry of ``info``."""
    return {METADATA_KEY: json.dumps(info.to_json())}


def write_data_info(run_dir: Path | str, info: DataInfo) -> Path:
    """Write ``RUN_DIR/data_info.json`` atomically; its path."""
    from jemkit.runlog import write_json_atomic

    path = Path(run_dir) / INFO_FILE
    write_json_atomic(path, info.to_json())
    return path


def read_data_info(run_dir: Path | str | None, metadata: Mapping[str, str] | None = None) -> DataInfo | None:
    """The run's :class:`DataInfo`: from the checkpoint ``metadata`` when it has the entry, else from
    ``RUN_DIR/data_info.json``; ``None`` for a run that recorded neither (written before the
    record existed). A damaged record counts as none (a warning on the ``jemkit`` logger)."""
    sources: list[tuple[str, Any]] = []
    if metadata and METADATA_KEY in metadata:
        sources.append((f"checkpoint metadata {METADATA_KEY!r}", lambda: json.loads(metadata[METADATA_KEY])))
    if run_dir is not None and (Path(run_dir) / INFO_FILE).is_file():
        path = Path(run_dir) / INFO_FILE
        sources.append((str(path), lambda: json.loads(path.read_text(encoding="utf-8"))))
    for where, read in sources:
        try:
            return DataInfo.from_json(read())
        except (ValueError, TypeError, OSError) as exc:
            log.warning(f"{where} is not a readable data record ({exc}); the run's data set is built instead.")
    return None


__all__ = [
    "FORMAT",
    "INFO_FILE",
    "METADATA_KEY",
    "VALUE_RANGE",
    "DataInfo",
    "describe_data",
    "metadata_entry",
    "read_data_info",
    "write_data_info",
]
