"""What a run reports: ``metrics.jsonl`` and ``summary.json``, the averaged training metrics that go
into them, throughput, and the one-line status the console shows.

``metrics.jsonl`` holds one JSON object per logged step (``step``, ``epoch``, ``train/...``,
``lr``, ``time/it_per_s``, ``test/...``) and one per event (``{"event": "rollback", ...}``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jemkit.distributed import DistInfo, mean_over_ranks


def to_number(value: Any) -> Any:
    """A JSON-friendly plain number for a 0-dim tensor or number (NaN/inf become strings)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes after each line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: to_number(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def truncate(self, last_step: int) -> None:
        """Drop step records after ``last_step`` (events stay), e.g. after a rollback."""
        self._file.close()
        truncate_metrics(self.path, last_step)
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


class NullMetricsWriter:
    """Stands in for :class:`MetricsWriter` on ranks other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def truncate(self, last_step: int) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a truncated last line is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (used when resuming from an earlier checkpoint)."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step or r.get("event")]
    write_json_lines_atomic(path, kept)


def write_json_lines_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON through a temporary file and rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({k: to_number(v) for k, v in data.items()}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- training metrics


def metric_name(key: str) -> str:
    """The logged name of a loss metric: ``loss`` is ``train/loss``; a key with a ``/`` stays as is."""
    return key if "/" in key else f"train/{key}"


class MetricAverager:
    """Sums a step's metrics between two log records and averages them over steps and ranks.

    Values are plain floats or 0-dim tensors (:attr:`jemkit.contracts.LossOutput.metrics`).
    Tensors are summed where they live, so a CUDA run does not wait for the device at every step;
    the average reads them once per record.
    """

    def __init__(self, dist: DistInfo, device: torch.device) -> None:
        self.dist = dist
        self.device = device
        self._sums: dict[str, Tensor] = {}
        self._count = 0

    def add(self, metrics: dict[str, Tensor | float]) -> None:
        """Add one step's metrics."""
        for key, value in metrics.items():
            value = value.detach().float() if isinstance(value, Tensor) else torch.tensor(float(value))
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._count += 1

    def reset(self) -> None:
        """Forget what was added since the last record (after a rollback)."""
        self._sums, self._count = {}, 0

    def flush(self) -> dict[str, float]:
        """The mean of every metric since the last flush (over steps, then over ranks), with
        ``train/energy_gap = train/energy_samples - train/energy_data`` when both exist; empty
        when nothing was added. Every rank must call this together (one collective)."""
        if not self._count:
            return {}
        sums = mean_over_ranks(self._sums, self.dist, self.device)
        averaged = {metric_name(k): float(v) / self._count for k, v in sums.items()}
        self.reset()
        if "train/energy_data" in averaged and "train/energy_samples" in averaged:
            averaged["train/energy_gap"] = averaged["train/energy_samples"] - averaged["train/energy_data"]
        return averaged


class Stopwatch:
    """Wall-clock seconds since :meth:`start` (0 before it) and training iterations per second."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._window_step = 0
        self._window_start = 0.0

    def start(self, step: int) -> None:
        """Start the clock and a throughput window at ``step``."""
        self._start = time.perf_counter()
        self.mark(step)

    def elapsed(self) -> float:
        """Seconds since :meth:`start`; 0.0 when not started."""
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def mark(self, step: int) -> None:
        """Start a new throughput window at ``step`` (after a rollback the step goes back)."""
        self._window_step, self._window_start = step, time.perf_counter()

    def rate(self, step: int) -> float:
        """Iterations per second of wall time since the last window started (all work included),
        then a new window from here."""
        now = time.perf_counter()
        rate = (step - self._window_step) / max(now - self._window_start, 1e-9)
        self._window_step, self._window_start = step, now
        return rate


def status_text(record: dict[str, float], last_eval: dict[str, float]) -> str:
    """The progress bar's status: training loss, accuracy and energy gap, then evaluation accuracies."""
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
