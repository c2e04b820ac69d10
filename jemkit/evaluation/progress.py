"""Progress reporting for long evaluations: rich progress bars on a terminal, plain lines
(:class:`jemkit.progress_lines.ProgressLines`) otherwise, or nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Steps:
    """Opens one progress task per evaluation phase on a progress reporter (or none).

    The reporter has ``rich.progress.Progress``'s ``add_task``/``advance``/``remove_task``;
    :meth:`note` prints a line through its ``note`` method (``ProgressLines``) or its console.
    """

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

    def note(self, text: str) -> None:
        """One line of information (which checkpoint was loaded, where the report goes)."""
        if self.progress is None:
            return
        note = getattr(self.progress, "note", None)
        if callable(note):
            note(text)
        elif getattr(self.progress, "console", None) is not None:
            self.progress.console.print(text, highlight=False, markup=False)
