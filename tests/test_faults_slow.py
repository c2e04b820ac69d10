"""Fault injection, the heavy part (``-m slow``): many faults of each kind on a tiny digits run.

* **SIGKILL** at random moments (start-up, training steps, checkpoint writes stretched by the
  test-only ``JEMKIT_TEST_SLOW_WRITE_SECONDS`` hook, final evaluation), then ``--resume`` until the
  run finishes: it must end bit-identical to an uninterrupted run.
* **SIGTERM** at random moments: the process must end within seconds with exit code 130 and a
  message, and the run then finish bit-identical as well.
* **Bit flips**: random single-bit flips anywhere in checkpoint files; every one must be detected.
* **A full disk** at each kind of write the run makes: ``config.yaml``, a checkpoint,
  ``metrics.jsonl`` and the sample grid under ``RLIMIT_FSIZE`` (lowered on the live process with
  ``prlimit`` at the moment that kind of write comes next), ``summary.json`` by an injected ENOSPC
  (it follows the sample grid too closely to time a limit), and a real full file system (a 1 MB
  tmpfs, where ``unshare`` allows one): a clear error, no checkpoint damaged, and the printed
  command finishes the run (bit-identical to the uninterrupted one where it is compared).
* **Two writers**: two ``--resume`` of one run at once, and an evaluation while the run trains.

With ``JEMKIT_FAULT_REPORT=FILE`` every injected fault appends one JSON line (kind, survived,
detected, data lost) to FILE; ``docs/reliability.md`` reports the totals.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jemkit.checkpoint import SLOW_WRITE_ENV, list_checkpoints, load_checkpoint
from jemkit.errors import CheckpointError
from jemkit.run_lock import LOCK_NAME, holder_info
from jemkit.runlog import read_metrics

from conftest import ROOT, TINY_DIGITS, run_cli
from test_faults import (
    RECIPE,
    assert_same_training,
    child_env,
    jemkit_process,
    suggested_commands,
    wait_for,
    writing_checkpoint,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")]

#: A longer tiny run: 24 steps, a checkpoint every 3 (two kept), an evaluation every epoch of 5 steps.
LONG_RUN = [o for o in TINY_DIGITS if not o.startswith(("train.max_steps", "train.epochs"))] + [
    "train.max_steps=24",
    "train.epochs=10",
    "train.checkpoint_every_steps=3",
    "train.keep_checkpoints=2",
    "data.test_fraction=0.9",  # 179 training examples: 11 steps per epoch, so epoch ends fall mid-run
]


def record(kind: str, survived: bool, detected: bool | None = None, lost: int = 0, **details: Any) -> None:
    """Append one injected fault to ``$JEMKIT_FAULT_REPORT`` (when set)."""
    path = os.environ.get("JEMKIT_FAULT_REPORT")
    if not path:
        return
    line = {"kind": kind, "survived": survived, "detected": detected, "lost": lost, **details}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long") / "run"
    child = jemkit_process("run", RECIPE, "--out", out, *LONG_RUN)
    _, err = child.communicate(timeout=900)
    assert child.returncode == 0, err
    return out


def _continue(out: Path) -> list[str]:
    """The command that continues a run directory: --resume once it holds its recipe."""
    if (out / "config.yaml").is_file():
        return ["run", "--resume", str(out)]
    return ["run", str(RECIPE), "--out", str(out), *LONG_RUN]


def _temporaries(out: Path) -> set[str]:
    """Names of the temporary files of checkpoint writes in progress (or left by a kill)."""
    folder = out / "checkpoints"
    return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")} if folder.is_dir() else set()


def _all_checkpoints_verify(out: Path) -> bool:
    for path in [*list_checkpoints(out / "checkpoints"), out / "checkpoints" / "best.safetensors"]:
        if path.exists():
            try:
                load_checkpoint(path)
            except CheckpointError:
                return False
    return True


# --------------------------------------------------------------------------- SIGKILL and SIGTERM at random moments


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_signals_at_random_moments_then_resume_ends_bit_identical(tmp_path, long_reference, sig):
    """Signal a run at random moments (some inside checkpoint writes), resume it each time, and
    compare the finished run with the uninterrupted one; runs until 10 signals have landed."""
    rng = random.Random(2024 + int(sig))
    env = child_env(**{SLOW_WRITE_ENV: "0.6"})  # each checkpoint write takes 0.6 s: kills land inside some
    signals_sent, runs = 0, 0
    while signals_sent < 10:
        runs += 1
        # A signal that lands after the run's work is done is ignored (exit 0) and the run counts as
        # finished; on an idle machine resumed attempts are short, so many sleeps outlast them.
        assert runs <= 15, "too few signals landed before the runs finished"
        out = tmp_path / f"run{runs}"
        for attempt in range(40):
            stale = _temporaries(out)  # left by the previous kill; removed when the run starts
            child = jemkit_process(*_continue(out), env=env)
            started = time.monotonic()
            if rng.random() < 0.4:  # wait for a checkpoint write of this process, then strike inside it
                try:
                    wait_for(lambda: bool(_temporaries(out) - stale) or child.poll() is not None, timeout=120)
                except AssertionError:
                    pass
            else:
                time.sleep(rng.uniform(0.3, 14.0))
            if child.poll() is not None:  # it finished first
                _, err = child.communicate(timeout=60)
                assert child.returncode == 0, err
                break
            was_writing = bool(_temporaries(out) - stale)
            child.send_signal(sig)
            sent = time.monotonic()
            _, err = child.communicate(timeout=120)
            took = time.monotonic() - sent
            if child.returncode == 0:  # it finished between the check and the signal
                break
            signals_sent += 1
            early = False
            if sig == signal.SIGTERM:
                # -15 only when the signal beat the interpreter's own start-up: no Python code of
                # jemkit ran yet (its handlers are installed ~50 ms after launch on an idle machine).
                early = child.returncode == -signal.SIGTERM and sent - started < 1.0
                assert child.returncode == 130 or early, err
                assert "Traceback" not in err
                if child.returncode == 130:
                    assert "SIGTERM" in err and took < 15, (took, err)
            else:
                assert child.returncode == -signal.SIGKILL
            assert _all_checkpoints_verify(out), "a checkpoint on disk does not verify"
            record(sig.name, survived=True, detected=None, lost=0, inside_write=was_writing, exit_code=child.returncode,
                   before_handlers=early, seconds_after_start=round(sent - started, 2), seconds_to_exit=round(took, 2))
        else:
            pytest.fail("the run never finished")
        assert json.loads((out / "summary.json").read_text())["status"] == "completed"
        assert_same_training(out, long_reference)


# --------------------------------------------------------------------------- bit flips


def test_random_bit_flips_anywhere_in_checkpoints_are_all_detected(tmp_path, long_reference):
    rng = random.Random(7)
    sources = [*list_checkpoints(long_reference / "checkpoints"), long_reference / "checkpoints" / "best.safetensors"]
    target = tmp_path / "checkpoints" / "step_000001.safetensors"
    target.parent.mkdir()
    for source in sources:
        data = source.read_bytes()
        header = 8 + int.from_bytes(data[:8], "little")
        for n in range(500):
            position = rng.randrange(0, header) if n % 5 == 0 else rng.randrange(header, len(data))
            corrupt = bytearray(data)
            corrupt[position] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(corrupt))
            try:
                load_checkpoint(target)
                detected = False
            except CheckpointError:
                detected = True
            record("bit flip", survived=detected, detected=detected, lost=0 if detected else 1,
                   region="header" if position < header else "payload")
            assert detected, (source.name, position)


# --------------------------------------------------------------------------- a full disk at each kind of write


def _limit(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def _metrics_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len([r for r in read_metrics(path) if "train/loss" in r]) if path.exists() else 0


#: kind of write -> (the moment to fill the disk, extra overrides)
MOMENTS = {
    "config.yaml": (lambda out: False, []),  # the limit is set before the process starts
    "checkpoint": (lambda out: _metrics_steps(out) >= 4, []),
    "metrics.jsonl": (lambda out: _metrics_steps(out) >= 7, []),
    "sample grid": (lambda out: (out / "checkpoints" / "step_000024.safetensors").exists(), ["train.sample_extra_steps=300"]),
}


@pytest.mark.parametrize("kind", list(MOMENTS))
def test_a_full_disk_at_each_kind_of_write(tmp_path, long_reference, kind):
    moment, extra = MOMENTS[kind]
    out = tmp_path / "run"
    if kind == "config.yaml":
        limit = 64  # smaller than any recipe: config.yaml is the first file that matters
        child = subprocess.Popen(
            [sys.executable, "-m", "jemkit", "run", str(RECIPE), "--out", str(out), *LONG_RUN],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)),
        )
    else:
        # The TensorBoard logger is off here (its own row is the next test): this one checks jemkit's writes.
        child = jemkit_process("run", RECIPE, "--out", out, *LONG_RUN, *extra, "loggers=[]")
        wait_for(lambda: moment(out) or child.poll() is not None, timeout=600, what=kind)
        assert child.poll() is None, "the run ended before the fault"
        if kind == "checkpoint":  # every small file still fits; the next checkpoint does not
            _limit(child.pid, 1024 * 16)
        else:
            _limit(child.pid, 0)
    _, err = child.communicate(timeout=600)
    message = " ".join(err.split())
    assert child.returncode == 2, err
    assert "Traceback" not in err and "Could not write" in message and "file-size limit" in message, message
    if kind == "config.yaml":
        assert "config.yaml" in message
    if kind == "checkpoint":
        assert ".safetensors" in message and "needed" in message
    intact = _all_checkpoints_verify(out)
    assert intact
    (command,) = suggested_commands(err)[-1:]
    finished = run_cli(*command, *(["train.sample_extra_steps=0"] if extra else []))
    assert finished.code == 0, finished.err
    assert_same_training(out, long_reference)
    record("disk full", survived=True, detected=True, lost=0, write=kind)


def test_a_full_disk_under_the_tensorboard_logger_is_still_a_clear_error(tmp_path):
    """With ``loggers: [tensorboard]`` the first write to fail may be the logger's: the run still
    ends with the disk-full paragraph, and the package's writer thread prints no traceback of its own."""
    out = tmp_path / "run"
    child = jemkit_process("run", RECIPE, "--out", out, *LONG_RUN)
    wait_for(lambda: _metrics_steps(out) >= 7 or child.poll() is not None, timeout=600, what="step 7")
    assert child.poll() is None
    _limit(child.pid, 0)
    _, err = child.communicate(timeout=600)
    message = " ".join(err.split())
    assert child.returncode == 2 and "Could not write" in message and "file-size limit" in message, message
    assert "Traceback" not in err and "Exception in thread" not in err, err
    assert _all_checkpoints_verify(out)
    record("disk full", survived=True, detected=True, lost=0, write="tensorboard events (logger on)")


def test_a_full_disk_when_the_summary_is_written(tmp_path, long_reference, monkeypatch):
    """``summary.json`` comes right after the sample grid, too fast to lower a live process's limit
    in between: here the write itself fails with ENOSPC (injected in-process)."""
    import errno

    import jemkit.train

    def full(path: Path, data: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    monkeypatch.setattr(jemkit.train, "write_json_atomic", full)
    failed = run_cli("run", RECIPE, "--out", out, *LONG_RUN)
    monkeypatch.undo()
    message = " ".join(failed.err.split())
    assert failed.code == 2 and "Traceback" not in message and "file system is full" in message, message
    assert _all_checkpoints_verify(out) and not (out / "summary.json").exists()
    (command,) = suggested_commands(failed.err)[-1:]
    finished = run_cli(*command)
    assert finished.code == 0, finished.err
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    record("disk full", survived=True, detected=True, lost=0, write="summary.json (ENOSPC injected)")


UNSHARE_DRIVER = r"""
import json, subprocess, sys
mount, out, result = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], check=True)
proc = subprocess.run([sys.executable, "-m", "jemkit", "run", *sys.argv[4:], "--out", mount + "/run"],
                      capture_output=True, text=True)
subprocess.run(["cp", "-a", mount + "/run", out], check=True)
json.dump({"code": proc.returncode, "err": proc.stderr}, open(result, "w"))
"""


def test_a_real_full_file_system(tmp_path, long_reference):
    if not shutil.which("unshare"):
        pytest.skip("needs unshare for a small tmpfs")
    mount, out, result = tmp_path / "small", tmp_path / "copy", tmp_path / "result.json"
    mount.mkdir()
    # A wider network and a larger replay buffer: two checkpoints fill the 1 MB file system.
    args = [str(RECIPE), *LONG_RUN, "sampler.init.size=1000", "train.keep_checkpoints=1",
            "model.backbone.channels=[32,64]", "model.backbone.feature_dim=64"]
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", UNSHARE_DRIVER,
         str(mount), str(out), str(result), *args],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900,
    )
    if not result.exists():
        pytest.skip(f"no tmpfs here: {proc.stderr[-300:]}")
    outcome = json.loads(result.read_text())
    message = " ".join(outcome["err"].split())
    assert outcome["code"] == 2 and "Traceback" not in message, message
    assert "Could not write" in message and "file system is full" in message
    assert _all_checkpoints_verify(out)
    (command,) = suggested_commands(outcome["err"])[-1:]
    command = [out if part == str(mount / "run") else part for part in command]
    finished = run_cli(*command)
    assert finished.code == 0, finished.err
    record("disk full", survived=True, detected=True, lost=0, write="tmpfs (ENOSPC)")


# --------------------------------------------------------------------------- two writers


def test_two_resumes_at_once_and_an_evaluation_while_training(tmp_path, long_reference):
    out = tmp_path / "run"
    shutil.copytree(long_reference, out)
    for path in list_checkpoints(out / "checkpoints")[1:]:
        path.unlink()  # keep the oldest kept checkpoint: the resumes have steps to train
    first, second = (jemkit_process("run", "--resume", out, "train.sample_extra_steps=200") for _ in range(2))
    results = [(p, *p.communicate(timeout=900)) for p in (first, second)]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, e[-400:]) for p, _, e in results]
    loser = next(e for p, _, e in results if p.returncode == 2)
    assert "being written by process" in " ".join(loser.split()), loser
    assert_same_training(out, long_reference)
    record("two writers", survived=True, detected=True, lost=0, what="two --resume at once")

    trainer = jemkit_process("run", "--resume", out, "--checkpoint", list_checkpoints(out / "checkpoints")[0].name,
                             "train.sample_extra_steps=2000")
    try:
        wait_for(lambda: holder_info(out / LOCK_NAME).get("pid") == trainer.pid or trainer.poll() is not None)
        assert trainer.poll() is None
        refused = run_cli("eval", out, "--only", "acc")
        assert refused.code == 2 and f"being written by process {trainer.pid}" in " ".join(refused.err.split())
        record("two writers", survived=True, detected=True, lost=0, what="eval while training")
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.communicate(timeout=120)
