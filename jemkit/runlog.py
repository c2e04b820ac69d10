"""Run-directory files: ``metrics.jsonl`` (one JSON object per logged step) and ``summary.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


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
