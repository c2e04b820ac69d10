"""Plain, line-based progress for output that is not a terminal (cluster logs, pipes, files).

A terminal gets rich's live progress bars; a log file would get nothing until the end (rich
hides them) or a mess of redraws. :class:`ProgressLines` writes one self-contained line instead::

    [eval 0:01:23] phase 3/9 jem: PGD: 120/360 (33%), phase ETA 0:00:40

when a phase starts, when it ends and, from a background thread, at least every ``interval``
seconds while the reporter is open (so a log shows the job is alive even when one unit of work
takes long, or between phases).
It has the subset of ``rich.progress.Progress``'s interface that jemkit's commands use
(``add_task``, ``advance``, ``remove_task``, used as a context manager), plus :meth:`note` for a
free-form line. ``phases`` is the number of tasks the command plans to open; it is only used for
the ``phase k/N`` counter (raised if more tasks arrive).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

__all__ = ["ProgressLines", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative duration in seconds (rounded down)."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    description: str
    total: int
    phase: int
    started: float
    done: int = 0


class ProgressLines:
    """Progress as plain lines on ``stream``: phase ``k`` of ``phases``, done/total and an ETA.

    ``interval`` (seconds) bounds the time between two lines while a task runs; ``clock`` returns
    seconds (monotonic). Thread-safe: the heartbeat thread and the worker share one lock.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        label: str = "jemkit",
        phases: int = 0,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds, got {interval}")
        self.stream = stream
        self.label = label
        self.phases = phases
        self.interval = interval
        self.clock = clock
        self._start = clock()
        self._tasks: dict[int, _Task] = {}
        self._next_id = 0
        self._phase = 0
        self._last_line = self._start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> ProgressLines:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the heartbeat thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, name="jemkit-progress-lines", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ rich.progress.Progress's interface
    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        """Open a task of ``total`` units (a new phase); prints its first line; returns its id."""
        with self._lock:
            self._phase += 1
            self.phases = max(self.phases, self._phase)
            task_id, self._next_id = self._next_id, self._next_id + 1
            self._tasks[task_id] = _Task(description, max(int(total or 0), 0), self._phase, self.clock())
            self._write(self._line(self._tasks[task_id]))
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Count ``advance`` more units done; prints a line when ``interval`` has passed since the last."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            task.done = min(task.done + int(advance), task.total) if task.total else task.done + int(advance)
            if self.clock() - self._last_line >= self.interval:
                self._write(self._line(task))

    def remove_task(self, task_id: int) -> None:
        """Close a task; prints its last line with the phase's duration."""
        with self._lock:
            task = self._tasks.pop(task_id, None)
            if task is not None:
                took = format_seconds(self.clock() - task.started)
                self._write(f"{self._prefix()} phase {task.phase}/{self.phases} {task.description}: done in {took}")

    def note(self, text: str) -> None:
        """A free-form line (``loaded checkpoint ...``) with the elapsed-time prefix."""
        with self._lock:
            self._write(f"{self._prefix()} {text}")

    # ------------------------------------------------------------------ internals
    def _prefix(self) -> str:
        return f"[{self.label} {format_seconds(self.clock() - self._start)}]"

    def _line(self, task: _Task) -> str:
        head = f"{self._prefix()} phase {task.phase}/{self.phases} {task.description}:"
        if not task.total:
            return f"{head} {task.done} done"
        percent = 100.0 * task.done / task.total
        text = f"{head} {task.done}/{task.total} ({percent:.0f}%)"
        elapsed = self.clock() - task.started
        if task.done > 0:
            eta = elapsed * (task.total - task.done) / task.done
            text += f", phase ETA {format_seconds(eta)}"
        else:
            text += ", phase ETA unknown"
        return text

    def _write(self, line: str) -> None:
        """Write one line (the caller holds the lock)."""
        self._last_line = self.clock()
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or file: progress is not worth a crash
            pass

    def _heartbeat(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            with self._lock:
                since = self.clock() - self._last_line
                if since >= self.interval:
                    if self._tasks:
                        self._write(self._line(self._tasks[max(self._tasks)]))
                    else:  # between phases (loading, writing figures): still say that work goes on
                        self._write(f"{self._prefix()} working ({self._phase}/{self.phases} phases done)")
                    since = 0.0
            wait = max(0.01, self.interval - since)
