"""End-to-end runs through the CLI and the Trainer: run directory, checkpoints, resume, errors."""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch

from jemkit import hookimpl
from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.config import load_recipe
from jemkit.plugin_manager import load_plugins
from jemkit.runlog import read_metrics
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS
from fakedata import write_fake_cifar10


def _final_state(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).state


def test_tiny_digits_run_writes_the_run_directory(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS)
    assert result.code == 0, result.err
    assert (out / "config.yaml").read_text().count("name: jem_digits") == 1
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("epoch", "train/acc", "train/energy_data", "train/energy_samples", "train/energy_gap", "lr"):
        assert key in train[0], key
    assert any("test/acc" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "completed"
    assert 0.0 <= summary["test/acc"] <= 1.0 and summary["wall_seconds"] > 0
    # 3 warm-up steps leave the model at chance (observed 37/360 = 0.1028), so no floor here (the
    # trained floors are in test_claims.py); the summary is the final evaluation, a count over the
    # 360 test digits.
    final_eval = [r["test/acc"] for r in records if "test/acc" in r][-1]
    assert summary["test/acc"] == final_eval and (summary["test/acc"] * 360) == pytest.approx(round(summary["test/acc"] * 360))
    # one step per record here: the three rates together cannot exceed steps per training second
    rates = [r["time/it_per_s"] for r in train]
    assert all(rate > 0 for rate in rates)
    assert sum(1 / rate for rate in rates) <= summary["wall_seconds"]
    png = out / "samples" / "final.png"
    assert png.stat().st_size > 100 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = _final_state(out)
    assert state["progress"]["step"] == 3
    assert state["sampler"]["buffer"].shape == (200, 1, 8, 8)


def test_checkpoint_round_trip_restores_identical_weights_and_buffer(plugins, tmp_path):
    cfg = load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS)
    first = Trainer(plugins, cfg, tmp_path / "a")
    first.prepare_run_dir()
    first.fit()
    path = first.save()
    second = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, "seed=99"]), tmp_path / "b")
    assert not torch.equal(second.sampler.init.buffer, first.sampler.init.buffer)
    second.restore(path)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(first.sampler.init.buffer, second.sampler.init.buffer)
    assert second.step == first.step == 3
    opt_a, opt_b = first.experiment.optimizer.state_dict(), second.experiment.optimizer.state_dict()
    assert torch.equal(opt_a["state"][0]["exp_avg"], opt_b["state"][0]["exp_avg"])
    assert second.experiment.schedule.last_epoch == first.experiment.schedule.last_epoch


def test_resumed_run_matches_uninterrupted_run(cli, tmp_path):
    common = [*TINY_DIGITS[:-4], "train.log_every=1", "train.sample_extra_steps=0", "train.batch_size=16"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", full, *common, "train.max_steps=6").code == 0
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", part, *common, "train.max_steps=3").code == 0
    resumed = cli("run", "--resume", part, "train.max_steps=6")
    assert resumed.code == 0, resumed.err
    a, b = _final_state(full), _final_state(part)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["sampler"]["buffer"], b["sampler"]["buffer"])
    losses = lambda d: [r["train/loss"] for r in read_metrics(d / "metrics.jsonl") if "train/loss" in r]  # noqa: E731
    assert losses(full) == losses(part)
    assert json.loads((full / "summary.json").read_text())["test/acc"] == json.loads(
        (part / "summary.json").read_text()
    )["test/acc"]


def test_resume_errors_are_clear(cli, tmp_path):
    missing = cli("run", "--resume", tmp_path / "nothing")
    assert missing.code == 2 and "does not exist" in missing.err and "Traceback" not in missing.err
    run = tmp_path / "run"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", run, *TINY_DIGITS).code == 0
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    (run / "checkpoints" / "best.safetensors").unlink()
    older = list_checkpoints(run / "checkpoints")[-2]
    resumed = cli("run", "--resume", run)  # the truncated newest is set aside; the older one continues
    said = " ".join((resumed.out + resumed.err).split())
    assert resumed.code == 0 and "Traceback" not in resumed.err, resumed.err
    assert f"resuming from {older}" in said and f"corrupt_{checkpoint.name}" in said
    assert "is not a readable safetensors file" in said  # why it was set aside
    assert (checkpoint.parent / f"corrupt_{checkpoint.name}").exists() and checkpoint.exists()  # trained again
    (event,) = [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "resume"]
    assert event["checkpoint"] == older.name and event["set_aside"] == [f"corrupt_{checkpoint.name}"]
    for path in list_checkpoints(run / "checkpoints"):
        path.unlink()
    empty = cli("run", "--resume", run)
    assert empty.code == 2 and "no checkpoint" in empty.err


def test_checkpoint_of_another_shape_is_a_clear_error(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", run, *TINY_DIGITS).code == 0
    wider = cli("run", "--resume", run, "model.backbone.feature_dim=32")
    assert wider.code == 2
    assert "does not fit this recipe" in wider.err and "Traceback" not in wider.err


def test_lifecycle_hooks_see_every_step(tmp_path):
    seen: dict[str, list] = {"start": [], "steps": [], "end": []}
    recorder = types.SimpleNamespace()

    @hookimpl
    def jemkit_run_start(run):
        seen["start"].append(run.step)

    @hookimpl
    def jemkit_step_end(run, step, metrics):
        seen["steps"].append((step, metrics["train/loss"]))

    @hookimpl
    def jemkit_run_end(run, summary):
        seen["end"].append(summary["steps"])

    recorder.jemkit_run_start = jemkit_run_start
    recorder.jemkit_step_end = jemkit_step_end
    recorder.jemkit_run_end = jemkit_run_end
    plugins = load_plugins([("recorder", recorder)], entry_points=False)
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS), tmp_path / "run")
    trainer.prepare_run_dir()
    trainer.fit()
    assert seen["start"] == [0] and seen["end"] == [3]
    assert [s for s, _ in seen["steps"]] == [1, 2, 3]
    assert all(isinstance(loss, float) for _, loss in seen["steps"])


def test_baseline_recipe_runs_without_sampling_in_training(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", RECIPES / "baseline_digits.yaml", "--out", out, "train.max_steps=5", "train.log_every=1")
    assert result.code == 0, result.err
    train = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    assert train and not any("train/energy_samples" in r or "sampler/grad_norm" in r for r in train)


CIFAR_TINY = [
    "model.backbone.depth=10",
    "model.backbone.widen_factor=1",
    "sampler.steps=2",
    "sampler.init.size=64",
    "data.val_size=0",
    "data.download=false",
    "train.batch_size=8",
    "train.max_steps=2",
    "train.samples_per_class=1",
]


def test_cifar10_recipe_runs_on_tiny_real_format_data(cli, tmp_path):
    root = tmp_path / "data"
    write_fake_cifar10(root, n_per_batch=8)
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_cifar10.yaml", "--out", out, f"data.root={root}", *CIFAR_TINY)
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    state = _final_state(out)
    assert state["sampler"]["buffer"].shape == (64, 3, 32, 32)
    assert (out / "samples" / "final.png").exists()


def test_cifar10_recipe_offline_without_data_is_a_clear_error(cli, tmp_path):
    result = cli("run", RECIPES / "jem_cifar10.yaml", "--out", tmp_path / "run", f"data.root={tmp_path / 'empty'}")
    assert result.code == 2
    message = result.err
    assert "CIFAR-10" in message and str(tmp_path / "empty") in message
    assert "cifar-10-batches-py" in message and "data.root" in message
    assert "Traceback" not in result.err
    assert not (tmp_path / "run").exists()


def test_full_digits_recipe_reaches_accuracy_floor(cli, tmp_path):
    """The quick start itself: JEM on digits reaches test/acc >= 0.97 (a few minutes on 2 cores)."""
    out = tmp_path / "run"
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", out)
    assert result.code == 0, result.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test/acc"] >= 0.97, summary
    assert (out / "samples" / "final.png").exists()
    records = read_metrics(out / "metrics.jsonl")
    last = [r for r in records if "train/energy_samples" in r][-1]
    assert abs(last["train/energy_gap"]) < 5.0, "data and sample energies stay close in a healthy run"


# --------------------------------------------------------------------------- runs you can trust: no dead ends

import os  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from conftest import ROOT, run_cli  # noqa: E402
from jemkit.checkpoint import checkpoint_name, read_metadata  # noqa: E402

#: A tiny run that checkpoints every step (keeping all six).
STEPWISE = [*TINY_DIGITS[:-5], "train.max_steps=4", "train.log_every=1", "train.samples_per_class=2",
            "train.sample_extra_steps=0", "train.checkpoint_every_steps=1", "train.keep_checkpoints=6"]


def suggested(text: str) -> list[list[str]]:
    """The ``jemkit ...`` commands a message suggests (between backticks), as argument lists."""
    return [shlex.split(found)[1:] for found in re.findall(r"`(jemkit [^`]+)`", " ".join(text.split()))]


@pytest.fixture(scope="module")
def stepwise_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stepwise") / "run"
    result = run_cli("run", RECIPES / "jem_digits.yaml", "--out", out, *STEPWISE)
    assert result.code == 0, result.err
    return out


@pytest.fixture
def run_copy(stepwise_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(stepwise_run, copy)
    return copy


def test_checkpoint_selects_what_resume_starts_from_and_sets_later_ones_aside(run_copy):
    result = run_cli("run", "--resume", run_copy, "--checkpoint", "2", "train.max_steps=3")
    assert result.code == 0, result.err
    assert "step 2" in " ".join(result.out.split())
    names = {p.name for p in (run_copy / "checkpoints").iterdir()}
    assert {"superseded_step_000003.safetensors", "superseded_step_000004.safetensors"} <= names
    assert [r["step"] for r in read_metrics(run_copy / "metrics.jsonl") if "train/loss" in r] == [1, 2, 3]
    resume = [r for r in read_metrics(run_copy / "metrics.jsonl") if r.get("event") == "resume"][-1]
    assert resume["checkpoint"] == checkpoint_name(2) and resume["superseded"]
    for which in ("best", "last", str(run_copy / "checkpoints" / checkpoint_name(1))):
        again = run_cli("run", "--resume", run_copy, "--checkpoint", which, "train.max_steps=3")
        assert again.code == 0, (which, again.err)
    missing = run_cli("run", "--resume", run_copy, "--checkpoint", "99")
    assert missing.code == 2 and "steps available" in missing.err
    alone = run_cli("run", RECIPES / "jem_digits.yaml", "--checkpoint", "2")
    assert alone.code == 2 and "--resume" in alone.err


def test_an_lr_override_on_resume_is_applied_and_recorded(run_copy):
    result = run_cli("run", "--resume", run_copy, "--checkpoint", "2", "optimizer.lr=0.5", "train.max_steps=4")
    assert result.code == 0, result.err
    records = read_metrics(run_copy / "metrics.jsonl")
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    # warm-up over 100 steps: lr = base * (step + 1) / 100, with the new base from step 3 on
    old = lrs[1] * 100 / 2
    assert lrs[2] == pytest.approx(old * 3 / 100) and lrs[3] == pytest.approx(0.5 * 4 / 100)
    assert lrs[4] == pytest.approx(0.5 * 5 / 100)
    assert "lr: 0.5" in (run_copy / "config.yaml").read_text()
    event = [r for r in records if r.get("event") == "resume"][-1]
    assert {"key": "optimizer.lr", "old": pytest.approx(old), "new": 0.5} in event["changes"]
    assert "optimizer.lr=0.5" in event["overrides"]
    state = load_checkpoint(run_copy / "checkpoints" / checkpoint_name(4)).state
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.5
    assert "lr: 0.5" in read_metadata(run_copy / "checkpoints" / checkpoint_name(4))["jemkit.recipe"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.backbone.feature_dim=32", "model.backbone.feature_dim"),
        ("seed=7", "seed"),
        ("sampler.init.size=300", "sampler.init.size"),
        ("train.batch_size=8", "train.batch_size"),
        ("schedule.warmup_steps=5", "schedule.warmup_steps"),
        ("optimizer.name=sgd", "optimizer.name"),
        ("data.noise_std=0.1", "data.noise_std"),
    ],
)
def test_an_override_resume_cannot_apply_is_refused_naming_the_key(run_copy, override, key):
    before = (run_copy / "config.yaml").read_text()
    result = run_cli("run", "--resume", run_copy, override)
    assert result.code == 2 and "Traceback" not in result.err
    message = " ".join(result.err.split())
    assert f"--resume cannot change {key}" in message and "nothing was changed" in message
    assert (run_copy / "config.yaml").read_text() == before, "config.yaml never claims what the run does not use"
    (command,) = suggested(result.err)
    assert command[:2] == ["run", str(run_copy / "config.yaml")] and override in command


def test_the_new_run_an_override_refusal_suggests_starts_as_printed(run_copy):
    result = run_cli("run", "--resume", run_copy, "model.backbone.feature_dim=8", "train.max_steps=1")
    (command,) = suggested(result.err)
    started = run_cli(*command)
    assert started.code == 0, started.err
    new_dir = Path(command[command.index("--out") + 1])
    assert "feature_dim: 8" in (new_dir / "config.yaml").read_text()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(run_copy):
    for path in (run_copy / "checkpoints").iterdir():
        path.unlink()
    stale = run_copy / "checkpoints" / f".{checkpoint_name(0)}.4242.0badc0de.tmp"
    stale.write_bytes(b"half a checkpoint")
    (run_copy / "metrics.jsonl").write_text('{"step": 0, "epoch": 0, "event": "precision"}\n')
    (run_copy / "summary.json").unlink()
    fresh = run_cli("run", RECIPES / "jem_digits.yaml", "--out", run_copy, *STEPWISE)
    assert fresh.code == 2
    (command,) = suggested(fresh.err)
    assert command == ["run", "--resume", str(run_copy)]
    resumed = run_cli(*command)
    assert resumed.code == 0, resumed.err
    assert "step 0" in resumed.out and not stale.exists()
    assert json.loads((run_copy / "summary.json").read_text())["steps"] == 4


def test_a_run_whose_checkpoints_were_removed_is_not_silently_restarted(run_copy):
    for path in (run_copy / "checkpoints").iterdir():
        path.unlink()
    result = run_cli("run", "--resume", run_copy)
    message = " ".join(result.err.split())
    assert result.code == 2 and "no checkpoint" in message and "up to step 4" in message
    (command,) = suggested(result.err)
    assert command[:2] == ["run", str(run_copy / "config.yaml")]
    restarted = run_cli(*command)
    assert restarted.code == 0, restarted.err


@pytest.mark.parametrize("where", ["beneath_a_file", "under_proc", "read_only"])
def test_an_out_that_cannot_be_written_is_a_clear_error(tmp_path, where):
    if where == "beneath_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
        words = ["is a file, not a folder"]
    elif where == "under_proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        out = Path("/proc/jemkit-test/run")
        words = ["cannot hold new folders"]
    else:
        if not shutil.which("unshare"):
            pytest.skip("needs unshare for a read-only mount")
        mount = tmp_path / "ro"
        mount.mkdir()
        probe = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)],
            capture_output=True, text=True, timeout=60,
        )
        if probe.returncode != 0:
            pytest.skip(f"cannot mount a read-only file system here: {probe.stderr[-200:]}")
        script = (
            f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(mount))} && exec {shlex.quote(sys.executable)} -m jemkit run "
            f"{shlex.quote(str(RECIPES / 'jem_digits.yaml'))} --out {shlex.quote(str(mount / 'run'))}"
        )
        proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "read-only" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        return
    result = run_cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS)
    assert result.code == 2 and "Traceback" not in result.err
    message = " ".join(result.err.split())
    assert "Cannot write the run directory" in message and all(w in message for w in words), message


def test_the_resume_event_and_the_environment_variables_are_recorded(run_copy, monkeypatch):
    monkeypatch.setenv("JEMKIT_TEST_NOTE", "private value")
    result = run_cli("run", "--resume", run_copy, "train.max_steps=5", "description=${oc.env:JEMKIT_TEST_NOTE}")
    assert result.code == 0, result.err
    events = [r for r in read_metrics(run_copy / "metrics.jsonl") if r.get("event")]
    resume = next(e for e in events if e["event"] == "resume")
    assert resume["step"] == 4 and resume["checkpoint"] == checkpoint_name(4)
    assert {"key": "train.max_steps", "old": 4, "new": 5} in resume["changes"]
    assert {"event": "environment", "variables": ["JEMKIT_TEST_NOTE"]}.items() <= next(
        e for e in events if e["event"] == "environment").items()
    assert "private value" not in (run_copy / "config.yaml").read_text()
    metadata = read_metadata(run_copy / "checkpoints" / checkpoint_name(5))
    assert "private value" not in json.dumps(metadata) and json.loads(metadata["jemkit.environment"]) == ["JEMKIT_TEST_NOTE"]


HOLD_LOCK = """
import sys, time
from jemkit.run_lock import RunLock
RunLock(sys.argv[1], "training").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_by_name_and_eval_can_write_elsewhere(run_copy, tmp_path, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (("run", "--resume", run_copy), ("eval", run_copy, "--only", "acc")):
            result = run_cli(*args)
            message = " ".join(result.err.split())
            assert result.code == 2 and f"being written by process {holder.pid} on host" in message, message
        monkeypatch.chdir(tmp_path)
        eval_elsewhere = [c for c in suggested(result.err) if c[0] == "eval"]
        (command,) = eval_elsewhere
        evaluated = run_cli(*command, "--only", "acc")
        assert evaluated.code == 0, evaluated.err
    finally:
        holder.kill()
        holder.wait()
    assert run_cli("run", "--resume", run_copy, "train.max_steps=5").code == 0  # the dead holder never blocks
