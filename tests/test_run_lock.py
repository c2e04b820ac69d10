"""One writer per run directory: a second writer is refused by name, a dead holder never blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jemkit.errors import RunLockedError
from jemkit.run_lock import LOCK_NAME, RunLock, holder_info

pytest.importorskip("fcntl")

_HOLD = """
import sys, time
from jemkit.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        message = str(info.value)
        assert f"process {proc.pid} on host" in message and str(tmp_path) in message
        assert holder_info(tmp_path / LOCK_NAME)["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunLock(tmp_path) as lock:  # the OS dropped the dead holder's lock
        assert lock.held
        assert holder_info(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert not lock.held


def test_release_lets_the_next_writer_in_and_acquire_is_idempotent(tmp_path):
    first = RunLock(tmp_path / "new" / "run").acquire()  # creates the directory
    assert first.acquire() is first
    with pytest.raises(RunLockedError):
        RunLock(tmp_path / "new" / "run").acquire()  # a second lock object in the same process is refused too
    first.release()
    first.release()  # twice is harmless
    second = RunLock(tmp_path / "new" / "run").acquire()
    assert second.held
    second.release()


def test_evaluations_share_the_lock_but_exclude_training_and_are_excluded_by_it(tmp_path):
    """Shared (evaluation) locks coexist; an exclusive (training) lock and a shared one never do."""
    first = RunLock(tmp_path, "evaluation", shared=True).acquire()
    second = RunLock(tmp_path, "evaluation", shared=True).acquire()  # another open file: flock allows it
    second.check_free()  # a third evaluation would be allowed too
    with pytest.raises(RunLockedError) as refused:
        RunLock(tmp_path, "training").acquire()
    assert "evaluation since" in str(refused.value)
    with pytest.raises(RunLockedError):
        RunLock(tmp_path, "training").check_free()
    first.release()
    with pytest.raises(RunLockedError):
        RunLock(tmp_path, "training").acquire()  # one evaluation still holds it
    second.release()
    training = RunLock(tmp_path, "training").acquire()
    with pytest.raises(RunLockedError) as refused:
        RunLock(tmp_path, "evaluation", shared=True).acquire()
    assert "training since" in str(refused.value)
    with pytest.raises(RunLockedError):
        RunLock(tmp_path, "evaluation", shared=True).check_free()
    training.release()
