"""SIGINT and SIGTERM: a stop request that ends the process within seconds, with a message.

Python turns SIGINT into :class:`KeyboardInterrupt` but lets SIGTERM kill the process on the
spot (exit -15, no message, nothing written). The ``jemkit`` command therefore installs
:func:`raise_stop` for both signals before it does anything else (:func:`install`): either signal
raises :class:`StopRequested`, a :class:`KeyboardInterrupt` that knows which signal it was, so
every phase of a command (start-up, building, evaluating, sampling) stops at once and the command
says where it stopped. While a run trains, :class:`jemkit.train.Trainer` replaces the handlers with
its own: inside a training step or a checkpoint write it only notes the signal, finishes that step
or write, writes a checkpoint and stops; in its other phases it raises at once.

This module imports nothing heavy: :mod:`jemkit.entry` uses it before torch loads.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

#: The signals that ask jemkit to stop.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (a :class:`KeyboardInterrupt`, so that
    ``except Exception`` blocks let it through)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def name(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int | None) -> str:
    """``SIGTERM`` for 15; ``a signal`` when unknown."""
    if signum is None:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def raise_stop(signum: int, frame: FrameType | None) -> None:
    """A signal handler: raise :class:`StopRequested` where the main thread is."""
    raise StopRequested(signum)


def install() -> bool:
    """Make SIGINT and SIGTERM raise :class:`StopRequested` (main thread only); whether it did."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, raise_stop)
    return True


def ignore_from_now_on() -> bool:
    """Ignore SIGINT and SIGTERM from now on (main thread only); whether it did.

    For a command that has finished its work: Python restores the default handlers during
    interpreter teardown, so a SIGTERM landing there would kill a finished process with exit -15.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    return True


__all__ = ["STOP_SIGNALS", "StopRequested", "ignore_from_now_on", "install", "raise_stop", "signal_name"]
