"""One writer per run directory: an OS file lock that dies with the process holding it.

``RUN_DIR/.jemkit.lock`` is locked with ``fcntl.flock`` (non-blocking) by the process that writes
the directory: exclusively by training (``jemkit run``, ``jemkit run --resume``), shared by
``jemkit eval`` while it writes a report inside the directory. Evaluations only add their own new
folders (assembled in a private temporary folder, then renamed into place), so several may run
at once on one run; none runs while the run trains, and training waits for none. The kernel
releases the lock when the process exits for any reason, ``kill -9`` included, so a lock left
behind by a dead process never blocks. The file's content (pid, host,
command, start time) only serves the error message a second writer gets; it is never trusted to
decide whether the lock is held.

On systems without ``fcntl`` (Windows) the lock is a no-op: jemkit's run directories are then
unprotected, as before.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from jemkit.errors import RunLockedError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Name of the lock file inside a run directory.
LOCK_NAME = ".jemkit.lock"


def holder_info(path: Path) -> dict[str, Any]:
    """What the lock file says about its holder (pid, host, command, started); empty if unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "another process (its lock file gives no details)"
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    purpose = f"{info['purpose']} since" if isinstance(info.get("purpose"), str) else "started"
    return f"process {info.get('pid', '?')} on host {info.get('host', '?')} ({purpose} {when}: {info.get('command', '?')})"


class RunLock:
    """Lock on a run directory (exclusive, or ``shared`` among evaluations) for the lifetime of this
    object (a context manager).

    ``purpose`` ("training", "evaluation") goes into the lock file and the holder's description.
    A ``shared`` lock (evaluations) coexists with other shared ones and excludes an exclusive one
    (training). Acquiring a lock that conflicts with one held by another live process raises
    :class:`RunLockedError` naming the holder; a lock whose process died is free (the OS dropped it).
    """

    def __init__(
        self, run_dir: Path | str, purpose: str = "training", hint: str | None = None, shared: bool = False
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.purpose = purpose
        self.shared = shared
        #: The way forward a refused writer reads (default: wait, or pass another --out).
        self.hint = hint
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the run directory if needed); idempotent for this object."""
        if self._fd is not None or fcntl is None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, self._mode() | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._locked_error() from None
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "command": " ".join(["jemkit", *sys.argv[1:]])[:500],
            "started": time.time(),
        }
        payload = (json.dumps(info) + "\n").encode("utf-8")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
        except OSError:
            pass  # the description is a courtesy (a shared holder may overwrite another's); the lock protects
        self._fd = fd
        return self

    def _locked_error(self) -> RunLockedError:
        hint = self.hint or "Wait for that process to finish (or stop it), or pass another --out."
        return RunLockedError(
            f"Run directory {str(self.run_dir)!r} is being written by {_describe_holder(holder_info(self.path))}. "
            f"Two writers would interleave metrics.jsonl and checkpoints. {hint} A lock left by a process that "
            "died frees itself; nothing needs deleting."
        )

    def check_free(self) -> None:
        """Raise :class:`RunLockedError` if another process holds the lock now; creates and keeps
        nothing (a check before long work that takes the lock only at its end)."""
        if self._fd is not None or fcntl is None or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, self._mode() | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._locked_error() from None
        finally:
            os.close(fd)

    def _mode(self) -> int:
        return fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX

    def release(self) -> None:
        """Give the lock up (the file stays: deleting it would race with a new holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "holder_info"]
