"""Writes that fail for lack of room: free bytes, the file-size limit, and the error a user reads.

A full disk (``ENOSPC``), a full quota (``EDQUOT``) and a file larger than the process may write
(``EFBIG``: ``ulimit -f``, ``RLIMIT_FSIZE``) all end a write the same way for a user: nothing is
wrong with jemkit or the run, there is no room. :func:`disk_full_error` turns such an
:class:`OSError` into a :class:`~jemkit.errors.DiskFullError` that names the path, the bytes the
write needed (when known) and the bytes free, and says what stays intact.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from jemkit.errors import DiskFullError

#: errno values that mean "no room for this write".
NO_ROOM = frozenset(filter(None, (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG)))


def is_no_room(error: BaseException) -> bool:
    """Whether ``error`` is an :class:`OSError` saying the disk, quota or file-size limit is full."""
    return isinstance(error, OSError) and error.errno in NO_ROOM


def free_bytes(path: Path | str) -> int | None:
    """Bytes free to this user on the file system holding ``path`` (its nearest existing ancestor)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def file_size_limit() -> int | None:
    """The soft ``RLIMIT_FSIZE`` of this process in bytes (``None``: unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown number of bytes"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def disk_full_error(
    error: OSError,
    path: Path | str,
    needed: int | None = None,
    intact: str = "",
    what: str | None = None,
    smaller: str = "fewer replay-buffer chains",
) -> DiskFullError:
    """The clear error for a write to ``path`` that failed with ``error`` (see :data:`NO_ROOM`).

    ``needed`` is the size of the write in bytes (when known); ``intact`` a sentence saying what the
    failed write left untouched (e.g. the previous checkpoint); ``what`` names the target when it is
    not one file (default: the quoted path); ``smaller`` how to write less (for a file-size limit).
    """
    path = Path(path)
    free = free_bytes(path if path.is_dir() else path.parent)
    if error.errno == errno.EFBIG:
        limit = file_size_limit()
        cause = (
            f"the file is larger than this process may write (file-size limit, `ulimit -f`: "
            f"{_size(limit) if limit is not None else 'set'})"
        )
        fix = f"raise the limit (`ulimit -f unlimited`) or write smaller files ({smaller})"
    else:
        cause = f"the file system is full ({_size(free)} free there)"
        fix = "free space on that disk (or put the run on another with --out)"
    size = f"needed {_size(needed)}" if needed is not None else "needed more room"
    return DiskFullError(
        f"Could not write {what or repr(str(path))}: {cause}; the write {size}. {intact + ' ' if intact else ''}"
        f"To go on, {fix}."
    )


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` through ``PATH.tmp`` and a rename: a failed write (a full disk)
    leaves the previous file, or none, never a truncated one."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


__all__ = ["NO_ROOM", "disk_full_error", "file_size_limit", "free_bytes", "is_no_room", "write_text_atomic"]
