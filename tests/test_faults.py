"""Fault injection, the quick part: a run survives what a hostile operator and a bad disk do to it.

Each test injects one kind of fault into a tiny digits run and checks what the issue "runs you can
trust" promises: SIGKILL inside a checkpoint write loses nothing and the resumed run ends
bit-identical to an uninterrupted one; every flipped bit of a checkpoint is detected; a full disk
(``RLIMIT_FSIZE``) is a clear error that names the path and the bytes and leaves the previous
checkpoint intact; two writers of one run directory cannot both write; SIGTERM at start-up and
during the final sample grid ends the process at once with a message. The heavier versions (many
random kill moments, every kind of write filled, concurrent resumes) are in
``tests/test_faults_slow.py`` (``-m slow``); ``docs/reliability.md`` reports their figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from jemkit.checkpoint import SLOW_WRITE_ENV, list_checkpoints, load_checkpoint
from jemkit.errors import CheckpointError
from jemkit.runlog import read_metrics

from conftest import RECIPES, ROOT, TINY_DIGITS, run_cli

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

#: A tiny digits run that checkpoints every 2 of its 6 steps (keeping two).
FAULT_RUN = [o for o in TINY_DIGITS if not o.startswith("train.max_steps")] + [
    "train.max_steps=6",
    "train.checkpoint_every_steps=2",
    "train.keep_checkpoints=2",
]
RECIPE = RECIPES / "jem_digits.yaml"


# --------------------------------------------------------------------------- helpers


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m jemkit`` child: unbuffered, two torch threads like the tests."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    env.update(extra)
    return env


def jemkit_process(*args: Any, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """``python -m jemkit ARGS`` as a child process (stdout and stderr captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jemkit", *map(str, args)],
        cwd=ROOT, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def suggested_commands(text: str) -> list[list[str]]:
    """Every ``jemkit ...`` command an error message suggests (between backticks), as argv lists."""
    return [shlex.split(found)[1:] for found in re.findall(r"`(jemkit [^`]+)`", " ".join(text.split()))]


def wait_for(condition: Any, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def final_state(run_dir: Path) -> dict[str, Any]:
    """The newest step checkpoint's state (verified on load)."""
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).state


def assert_same_training(a: Path, b: Path) -> None:
    """Two run directories ended with bit-identical weights, optimiser state, buffer and losses."""
    sa, sb = final_state(a), final_state(b)
    assert sa["progress"]["step"] == sb["progress"]["step"]
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    assert torch.equal(sa["sampler"]["buffer"], sb["sampler"]["buffer"])
    for index, moments in sa["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], sb["optimizer"]["state"][index]["exp_avg"]), index

    def losses(d: Path) -> list[float]:
        return [r["train/loss"] for r in read_metrics(d / "metrics.jsonl") if "train/loss" in r]

    assert losses(a) == losses(b)


def writing_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted tiny run every interrupted one must match."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("run", RECIPE, "--out", out, *FAULT_RUN)
    assert result.code == 0, result.err
    return out


# --------------------------------------------------------------------------- SIGKILL


def test_sigkill_inside_a_checkpoint_write_loses_nothing(tmp_path, reference):
    out = tmp_path / "run"
    # Each checkpoint write is stretched over 1.5 s (test-only hook), so the kill lands inside one.
    child = jemkit_process("run", RECIPE, "--out", out, *FAULT_RUN, env=child_env(**{SLOW_WRITE_ENV: "1.5"}))
    try:
        wait_for(lambda: len(list_checkpoints(out / "checkpoints")) >= 1 and writing_checkpoint(out), what="a write")
    finally:
        child.kill()
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert writing_checkpoint(out), "the kill left the temporary file of the write it interrupted"
    for path in list_checkpoints(out / "checkpoints"):
        assert load_checkpoint(path).verified  # every checkpoint on disk is complete and verifies
    resumed = run_cli("run", "--resume", out)
    assert resumed.code == 0, resumed.err
    assert "temporary" in resumed.out and not writing_checkpoint(out)
    assert_same_training(out, reference)


# --------------------------------------------------------------------------- bit flips


def test_every_random_bit_flip_of_a_checkpoint_is_detected(tmp_path, reference):
    source = list_checkpoints(reference / "checkpoints")[-1]
    data = source.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(11)
    positions = [rng.randrange(header, len(data)) for _ in range(150)] + [rng.randrange(0, header) for _ in range(50)]
    target = tmp_path / "checkpoints" / source.name
    target.parent.mkdir()
    detected = 0
    for position in positions:
        corrupt = bytearray(data)
        corrupt[position] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(corrupt))
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(target)
        assert str(target) in str(error.value)
        detected += 1
    assert detected == len(positions)


def test_a_flipped_exponent_bit_in_a_weight_stops_eval_sample_and_resume(tmp_path, reference):
    """The issue's silent corruption: one exponent bit of one weight. Nothing loads it; resume sets
    the file aside, says so, and continues from the newest checkpoint that verifies."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest = list_checkpoints(run / "checkpoints")[-1]
    state = load_checkpoint(newest).state
    name = next(k for k, v in state["model"].items() if v.dtype == torch.float32 and v.numel() > 10)
    # Find the weight's bytes in the file and flip the top exponent bit of its first value.
    data = bytearray(newest.read_bytes())
    raw = state["model"][name].reshape(-1)[:4].numpy().tobytes()
    at = bytes(data).index(raw)
    data[at + 3] ^= 0x40
    newest.write_bytes(bytes(data))

    for args in (("eval", run, "--only", "acc"), ("sample", run, "--out", tmp_path / "s.png")):
        result = run_cli(*args)
        text = " ".join(result.err.split())
        assert result.code == 2 and "is damaged" in text and f"model.{name}" in text, result.err
    resumed = run_cli("run", "--resume", run)
    text = " ".join((resumed.out + resumed.err).split())
    assert resumed.code == 0, resumed.err
    assert f"corrupt_{newest.name}" in text and f"model.{name}" in text and "set aside as damaged" in text
    assert (newest.parent / f"corrupt_{newest.name}").exists()
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert_same_training(run, reference)  # the steps after the older checkpoint were trained again, exactly


# --------------------------------------------------------------------------- two writers


def test_two_writers_of_one_run_directory_cannot_both_write(tmp_path):
    out = tmp_path / "run"
    first, second = (jemkit_process("run", RECIPE, "--out", out, *FAULT_RUN) for _ in range(2))
    results = [(p, *p.communicate(timeout=600)) for p in (first, second)]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-500:]) for p, _, err in results]
    loser = next((p, err) for p, _, err in results if p.returncode == 2)
    message = " ".join(loser[1].split())
    winner = next(p for p, _, _ in results if p.returncode == 0)
    # Refused by the lock (naming the holder) or, when the winner had finished, by the fresh-run check.
    assert f"being written by process {winner.pid} on host" in message or "already holds files" in message, message
    assert "Traceback" not in message
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6], "one run's records, not two interleaved"


# --------------------------------------------------------------------------- disk full


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_full_disk_during_a_checkpoint_write_is_a_clear_error_and_keeps_the_previous_one(tmp_path):
    run = tmp_path / "run"
    assert run_cli("run", RECIPE, "--out", run, *FAULT_RUN, "train.max_steps=2").code == 0
    before = {p.name: p.read_bytes() for p in list_checkpoints(run / "checkpoints")}
    size = max(len(b) for b in before.values())
    # Every file this process writes may grow to half a checkpoint: the step-3 checkpoint cannot be written.
    child = jemkit_process(
        "run", "--resume", run, "train.max_steps=4", "train.checkpoint_every_steps=1",
        preexec_fn=_limit_file_size(size // 2),
    )
    _, err = child.communicate(timeout=600)
    message = " ".join(err.split())
    assert child.returncode == 2, err
    assert "Traceback" not in err and "Could not write" in message and "step_000003.safetensors" in message
    assert re.search(r"needed [\d,]+ bytes", message) and "file-size limit" in message
    assert {p.name: p.read_bytes() for p in list_checkpoints(run / "checkpoints")} == before, "previous intact"
    assert not writing_checkpoint(run)
    (command,) = suggested_commands(err)[-1:]
    again = run_cli(*command)  # with the limit gone, the printed command continues
    assert again.code == 0, again.err
    assert json.loads((run / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_full_disk_under_eval_and_sample_is_a_clear_error_that_leaves_nothing_partial(tmp_path, reference, command):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    png = tmp_path / "samples.png"
    sample = ("sample", run, "--out", png, "--n", "16")
    args = ("eval", run, "--only", "acc,calibration") if command == "eval" else sample
    child = jemkit_process(*args, preexec_fn=_limit_file_size(1024))  # the first figure or PNG is larger
    _, err = child.communicate(timeout=600)
    message = " ".join(err.split())
    assert child.returncode == 2 and "Traceback" not in err, err
    assert "Could not write" in message and "file-size limit" in message, message
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before, "no partial report or temporary left"
    if command == "eval":
        assert "The partial report was removed" in message
        (again,) = suggested_commands(err)[-1:]
        assert again == ["eval", str(run), "--only", "acc,calibration"]
        assert run_cli(*again).code == 0  # the printed command, without the limit
        assert (run / "eval" / "latest" / "report.json").is_file()
    else:
        assert str(png) in message and not list(tmp_path.glob("*.png*")) and not list(tmp_path.glob(".*.tmp"))


# --------------------------------------------------------------------------- signals


def test_sigterm_during_start_up_ends_with_a_message(tmp_path):
    child = jemkit_process("run", RECIPE, "--out", tmp_path / "run", *FAULT_RUN)
    time.sleep(0.5)  # importing torch, loading plugins or building the run
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Stopped by SIGTERM" in err or "stopped by SIGTERM" in err
    assert "Traceback" not in err


def test_sigterm_during_the_final_sample_grid_stops_within_seconds(tmp_path):
    out = tmp_path / "run"
    # A final sample grid of 20,000 extra transitions takes minutes; the stop must not wait for it.
    child = jemkit_process("run", RECIPE, "--out", out, *FAULT_RUN, "train.sample_extra_steps=20000")
    try:
        wait_for(
            lambda: any("test/acc" in r for r in read_metrics(out / "metrics.jsonl"))
            if (out / "metrics.jsonl").exists() else False,
            timeout=300, what="the final evaluation",
        )
        wait_for(lambda: (out / "checkpoints" / "step_000006.safetensors").exists(), what="the final checkpoint")
        time.sleep(1.0)  # inside the sample grid now
        child.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = child.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert took < 10, f"took {took:.1f} s to stop"
    message = " ".join(err.split())
    assert "Stopped by SIGTERM during the final sample grid at step 6" in message
    assert not (out / "summary.json").exists()
    (command,) = suggested_commands(err)
    finished = run_cli(*command, "train.sample_extra_steps=0")
    assert finished.code == 0, finished.err
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
