"""TensorBoard logger: the run's metrics, energy histograms and sample grids as TensorBoard events.

A logger plugin (it implements the logging hooks of :mod:`jemkit.hookspecs`), switched on by the
recipe key ``loggers: [tensorboard]`` (the shipped recipes have it). It writes event files under
``RUN_DIR/tensorboard/``; watch them with ``tensorboard --logdir runs``. What it writes:

- every number of every ``metrics.jsonl`` record as a scalar with the record's tag and ``step``
  (``train/loss``, ``test/acc``, ``lr``, ``time/it_per_s``, ...); events (records with
  ``event``, e.g. a rollback) as text under ``events/<event>``;
- each histogram the run logs (``energy/data`` and ``energy/samples``: per-input energies of the
  last batch, lower is more likely);
- each sample grid PNG the run writes, as an image (``samples/epoch_0002``, ``samples/final``);
- the final summary as text (``summary``).

A resumed run purges the events after its checkpoint's step, and a rollback those after the step
it rolled back to, as ``metrics.jsonl`` drops its records (TensorBoard's session-restart marker).
Only rank 0 writes. The ``tensorboard`` package is an optional extra (``pip install
'jemkit[tensorboard]'``); without it the run goes on after a one-line warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jemkit import hookimpl
from jemkit.config import enabled_loggers

if TYPE_CHECKING:
    from torch import Tensor

    from jemkit.contracts import RunView

#: Name a recipe lists under ``loggers`` (this plugin's name).
NAME = "tensorboard"
#: Folder of the event files inside the run directory.
EVENTS_DIR = "tensorboard"

log = logging.getLogger("jemkit.loggers.tensorboard")

#: By resolved run directory: the RunView of the run that opened the writer, and the writer
#: (``None`` for a run that writes none: the package is missing).
_writers: dict[str, tuple[Any, Any]] = {}


def events_dir(run_dir: Path | str) -> Path:
    """Where the event files of the run in ``run_dir`` go."""
    return Path(run_dir) / EVENTS_DIR


def _key(run: RunView) -> str:
    return str(Path(run.run_dir).resolve())


def _enabled(run: RunView) -> bool:
    config = getattr(run, "config", None)
    return config is not None and bool(getattr(run, "is_main", True)) and NAME in enabled_loggers(config)


def _open(run: RunView) -> Any:
    """The run's ``SummaryWriter`` (opened on first use), or ``None`` when the recipe does not
    list this logger or the ``tensorboard`` package is missing (warned once per run).

    Opened at ``run.step > 0`` (a resumed run), it purges the events after that step that earlier
    processes wrote, as ``metrics.jsonl`` drops its records after the checkpoint."""
    if not _enabled(run):
        return None
    key = _key(run)
    if key in _writers:
        owner, writer = _writers[key]
        if owner is run:
            return writer
        _close(key)  # left open by an earlier run in this directory that did not end (same process)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        log.warning(
            "the recipe lists loggers: [tensorboard], but the tensorboard package is not installed, so this run "
            "writes no TensorBoard events; install it with `pip install 'jemkit[tensorboard]'`."
        )
        _writers[key] = (run, None)
        return None
    _quiet_writer_thread_without_room()
    _start_after_existing_event_files(events_dir(run.run_dir))
    step = int(getattr(run, "step", 0) or 0)
    writer = SummaryWriter(log_dir=str(events_dir(run.run_dir)), purge_step=step + 1 if step > 0 else None)
    _writers[key] = (run, writer)
    return writer


def _start_after_existing_event_files(folder: Path) -> None:
    """Readers take event files in name order, ``...tfevents.<second>.<host>.<pid>.<count>``, and the
    package's writer count is not zero-padded: a second writer of one process opened in the same
    second as an earlier file could sort before it (10 < 9). Wait for the next second then."""
    import time

    now = int(time.time())
    if any(f".tfevents.{now:010d}." in path.name for path in folder.glob("events.out.tfevents.*")):
        time.sleep(max(0.0, now + 1.02 - time.time()))


def _quiet_writer_thread_without_room() -> None:
    """Keep the ``tensorboard`` package's writer thread from printing a traceback when its write
    finds no room (disk, quota, ``ulimit -f``). The thread keeps the error and the writer raises it
    in the main thread at the next ``add_*``, ``flush`` or ``close``; jemkit then reports it as the
    disk-full paragraph it gives for its own writes. Other threads and other errors go to the
    excepthook that was installed before (installed once per process)."""
    global _excepthook_installed
    if _excepthook_installed:
        return
    import threading

    from jemkit.disk import is_no_room

    previous = threading.excepthook

    def excepthook(args: threading.ExceptHookArgs) -> None:
        writer_thread = type(args.thread).__name__ == "_AsyncWriterThread"
        if writer_thread and args.exc_value is not None and is_no_room(args.exc_value):
            return
        previous(args)

    threading.excepthook = excepthook
    _excepthook_installed = True


_excepthook_installed = False


def purge_after(writer: Any, step: int) -> None:
    """Mark a restart at ``step + 1``: TensorBoard's readers drop the events after ``step`` that
    were written before the mark (what ``SummaryWriter(purge_step=...)`` writes on opening; torch
    offers no public call for it later)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    writer._get_file_writer().add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))


def _close(key: str) -> None:
    _, writer = _writers.pop(key, (None, None))
    if writer is not None:
        writer.close()


def scalar(value: Any) -> float | None:
    """``value`` as a float when it is a number (a non-finite one as metrics.jsonl stores it, the
    string ``nan``/``inf``/``-inf``, or a one-element tensor), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
        return float(value)
    if hasattr(value, "numel") and callable(value.numel) and value.numel() == 1:
        return float(value.detach().float().item())
    return None


# --------------------------------------------------------------------------- lifecycle


@hookimpl
def jemkit_run_start(run: RunView) -> None:
    """Open the writer (a resumed run purges the events after its step)."""
    _open(run)


@hookimpl
def jemkit_log_record(run: RunView, record: Mapping[str, Any]) -> None:
    """Every number of a ``metrics.jsonl`` record as a scalar at its ``step``; events as text."""
    writer = _open(run)
    if writer is None:
        return
    step = int(record.get("step", getattr(run, "step", 0)))
    if "event" in record:
        if record["event"] == "rollback" and scalar(record.get("to_step")) is not None:
            purge_after(writer, int(record["to_step"]))
        writer.add_text(f"events/{record['event']}", f"`{json.dumps(dict(record), default=str)}`", step)
    else:
        for tag, value in record.items():
            number = scalar(value)
            if tag != "step" and number is not None:
                writer.add_scalar(tag, number, step)
    writer.flush()


@hookimpl
def jemkit_log_histogram(run: RunView, step: int, name: str, values: Tensor) -> None:
    """A histogram of ``values`` (1-D float tensor) under ``name``; non-finite entries are left out."""
    writer = _open(run)
    if writer is None:
        return
    flat = values.detach().float().cpu().reshape(-1)
    finite = flat[flat.isfinite()]
    if finite.numel():
        writer.add_histogram(name, finite, step)


@hookimpl
def jemkit_log_image(run: RunView, step: int, name: str, path: Path) -> None:
    """The PNG at ``path`` (a sample grid) as an image under ``name``."""
    writer = _open(run)
    if writer is None:
        return
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    writer.add_image(name, pixels, step, dataformats="HWC")
    writer.flush()


@hookimpl
def jemkit_run_end(run: RunView, summary: Mapping[str, Any]) -> None:
    """The summary as text, then close the event files."""
    writer = _open(run)
    if writer is not None:
        rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items())
        writer.add_text("summary", f"| key | value |\n|---|---|\n{rows}", int(getattr(run, "step", 0) or 0))
    if _enabled(run):
        _close(_key(run))
