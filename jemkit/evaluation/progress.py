"""Progress reporting for long evaluations: rich progress bars, or nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Steps:
    """Opens one progress task per evaluation phase on a ``rich.progress.Progress`` (or none)."""

    def __init__(self, progress: Any = None) -> None:
        self.progress = progress

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A callable ``advance(k)`` for ``total`` units of work; the task is removed when done."""
        if self.progress is None:
            yield lambda k=1: None
            return
        task_id = self.progress.add_task(description, total=max(total, 1))
        try:
            yield lambda k=1: self.progress.advance(task_id, k)
        finally:
            self.progress.remove_task(task_id)
