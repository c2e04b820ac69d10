"""Where an evaluation's report goes, so that no evaluation ever replaces another.

Each ``jemkit eval`` writes a new folder: ``RUN_DIR/eval/<YYYYmmdd-HHMMSS>`` (local time; ``-2``,
``-3``, ... when that name is taken) or the ``--out`` folder, which must not hold a report yet.
The report is assembled in a hidden temporary folder beside the run directory (or beside
``--out``) and renamed into place only when complete, so a failure leaves no partial folder.
``RUN_DIR/eval/latest`` then names the newest evaluation of the run: a relative symbolic link
where the file system allows one, else a text file holding the folder's path relative to
``RUN_DIR/eval`` (:func:`jemkit.run_index.eval_report_path` reads both). A ``--out`` folder
outside ``RUN_DIR/eval`` leaves ``latest`` alone: it is the user's own copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from jemkit.errors import EvalError

#: Folder of a run's evaluations, inside its run directory.
EVAL_DIR = "eval"
#: Name of the pointer to the newest evaluation, inside ``RUN_DIR/eval``.
LATEST = "latest"
#: Prefix of the temporary folder a report is assembled in.
TMP_PREFIX = f".{EVAL_DIR}-tmp-"


def choose_target(run_dir: Path, out: Path | None) -> Path:
    """The folder this evaluation will write: ``--out`` (checked now, before any work) or a new
    ``RUN_DIR/eval/<timestamp>``."""
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise EvalError(
                f"--out {str(out)!r} already exists and is not an empty folder; an evaluation never replaces "
                "earlier results. Name a new folder, or leave --out away for RUN_DIR/eval/<timestamp>."
            )
        return out
    base = Path(run_dir) / EVAL_DIR / time.strftime("%Y%m%d-%H%M%S")
    target, k = base, 1
    while target.exists() or target.is_symlink():
        k += 1
        target = base.with_name(f"{base.name}-{k}")
    return target


def temporary_folder(run_dir: Path, target: Path) -> Path:
    """A new hidden folder on the target's file system to assemble the report in."""
    holder = Path(run_dir) if is_inside(target, Path(run_dir)) else target.parent
    holder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=holder))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the report is an ordinary folder
    return tmp


def publish(tmp: Path, target: Path, run_dir: Path, chosen: bool = True) -> Path:
    """Move the finished folder ``tmp`` to ``target`` and point ``RUN_DIR/eval/latest`` at it when it
    lies inside ``RUN_DIR/eval``; returns the folder written. A ``chosen`` (``--out``) target that
    filled up meanwhile is an error; a timestamped one taken meanwhile gets the next free suffix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not chosen:
        base, k = target, 1
        while target.exists() or target.is_symlink():
            k += 1
            target = base.with_name(f"{base.name}-{k}")
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        shutil.rmtree(tmp, ignore_errors=True)
        raise EvalError(f"--out {str(target)!r} was filled while the evaluation ran; nothing was replaced.")
    if target.is_dir():
        target.rmdir()  # an empty --out folder the user made
    os.replace(tmp, target)
    eval_dir = Path(run_dir) / EVAL_DIR
    if is_inside(target, eval_dir):
        point_latest(eval_dir, target)
    return target


def point_latest(eval_dir: Path, target: Path) -> None:
    """Make ``eval_dir/latest`` name ``target`` (replaced atomically)."""
    relative = os.path.relpath(target.resolve(), eval_dir.resolve())
    latest = eval_dir / LATEST
    if latest.is_dir() and not latest.is_symlink():
        return  # a real folder called "latest" (the user's): leave it
    staged = eval_dir / f".{LATEST}-{os.getpid()}-{time.time_ns()}"
    try:
        os.symlink(relative, staged, target_is_directory=True)
    except (OSError, NotImplementedError):  # no symbolic links here: a text file naming the folder
        staged.write_text(relative + "\n", encoding="utf-8")
    os.replace(staged, latest)


def latest_folder(run_dir: Path) -> Path | None:
    """The folder ``RUN_DIR/eval/latest`` names (link or text file), or ``None``."""
    eval_dir = Path(run_dir) / EVAL_DIR
    latest = eval_dir / LATEST
    if latest.is_symlink() or latest.is_dir():
        return latest.resolve() if latest.exists() else None
    if latest.is_file():
        folder = eval_dir / latest.read_text(encoding="utf-8").strip()
        return folder if folder.is_dir() else None
    return None


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (both resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
