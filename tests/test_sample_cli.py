"""``jemkit sample``: draws a PNG from a trained run's checkpoint; every user error is one clear message."""

from __future__ import annotations

import shutil

import pytest

from jemkit.checkpoint import list_checkpoints

from conftest import RECIPES, TINY_DIGITS, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Tiny models run fastest on one thread and do not fight other jobs for the 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny trained JEM digits run (replay buffer), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("sample") / "run"
    result = run_cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS)
    assert result.code == 0, result.err
    return out


def _assert_clean_error(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out and "error:" in result.err
    text = " ".join(result.err.split())
    for needle in needles:
        assert needle in text, (needle, result.err)


def test_sample_writes_a_png_grid(digits_run, tmp_path, cli):
    out = tmp_path / "grid.png"
    result = cli("sample", digits_run, "--out", out, "--n", "12", "--steps", "3")
    assert result.code == 0, result.err
    assert _is_png(out)
    assert "wrote 12 samples" in " ".join(result.out.split())


@pytest.mark.parametrize("source", ["noise", "buffer"])
def test_class_conditional_samples_from_noise_or_buffer(digits_run, tmp_path, cli, source):
    out = tmp_path / "nested" / f"class3-{source}.png"
    result = cli("sample", digits_run, "--class", "3", "--n", "4", "--steps", "2", "--from", source, "--out", out)
    assert result.code == 0, result.err
    assert _is_png(out)


def test_explicit_checkpoint(digits_run, tmp_path, cli):
    checkpoint = list_checkpoints(digits_run / "checkpoints")[-1]
    out = tmp_path / "explicit.png"
    result = cli("sample", digits_run, "--checkpoint", checkpoint, "--n", "4", "--steps", "1", "--out", out)
    assert result.code == 0, result.err
    assert _is_png(out)


def test_missing_run_dir_is_a_clear_error(tmp_path, cli):
    _assert_clean_error(cli("sample", tmp_path / "nothing", "--out", tmp_path / "x.png"), "does not exist")


def test_run_dir_without_config_is_a_clear_error(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    result = cli("sample", tmp_path / "empty", "--out", tmp_path / "x.png")
    _assert_clean_error(result, "config.yaml", "not a jemkit run")


def test_run_without_checkpoint_is_a_clear_error(digits_run, tmp_path, cli):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(digits_run / "config.yaml", bare / "config.yaml")
    _assert_clean_error(cli("sample", bare, "--out", tmp_path / "x.png"), "has no checkpoint", "--checkpoint")
    missing = tmp_path / "gone.safetensors"
    _assert_clean_error(cli("sample", bare, "--checkpoint", missing, "--out", tmp_path / "x.png"), "does not exist")


def test_corrupt_checkpoint_is_a_clear_error(digits_run, tmp_path, cli):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 50)
    result = cli("sample", digits_run, "--checkpoint", bad, "--out", tmp_path / "x.png")
    assert result.code == 2 and "Traceback" not in result.err and str(bad) in result.err.replace("\n", "")


@pytest.mark.parametrize("bad", ["10", "-1"])
def test_bad_class_index_is_a_clear_error(digits_run, tmp_path, cli, bad):
    out = tmp_path / "x.png"
    _assert_clean_error(cli("sample", digits_run, f"--class={bad}", "--out", out), f"--class {bad}", "10 classes")
    assert not out.exists()


def test_bad_counts_and_output_name_are_clear_errors(digits_run, tmp_path, cli):
    _assert_clean_error(cli("sample", digits_run, "--n", "0", "--out", tmp_path / "x.png"), "--n must be at least 1")
    _assert_clean_error(cli("sample", digits_run, "--steps", "-2", "--out", tmp_path / "x.png"), "--steps")
    _assert_clean_error(cli("sample", digits_run, "--out", tmp_path / "x.jpg"), ".png")


def test_sample_from_a_toy_run_draws_the_density_picture(tmp_path, cli):
    run = tmp_path / "toy"
    tiny = [
        "train.max_steps=3", "train.epochs=1", "train.sample_extra_steps=0",
        "data.n_train=400", "data.n_test=100", "sampler.init.size=100",
    ]
    assert cli("run", RECIPES / "toy_moons.yaml", "--out", run, *tiny).code == 0
    out = tmp_path / "toy.png"
    result = cli("sample", run, "--n", "50", "--steps", "5", "--out", out)
    assert result.code == 0, result.err
    assert _is_png(out)


def test_run_dir_that_is_a_file_is_a_clear_error(digits_run, tmp_path, cli):
    checkpoint = list_checkpoints(digits_run / "checkpoints")[-1]
    result = cli("sample", checkpoint, "--out", tmp_path / "x.png")
    _assert_clean_error(result, "is a file, not a run directory", "--checkpoint")
    assert "does not exist" not in result.err


def _drawn_samples(monkeypatch, cli, *args):
    """Run ``jemkit sample ARGS`` and return the samples it drew (``[N, C, H, W]``)."""
    import jemkit.samples

    drawn = {}

    def capture(x, path, nrow=10, **kwargs):
        drawn["x"] = x.detach().cpu()
        path.write_bytes(PNG_MAGIC)
        return path

    monkeypatch.setattr(jemkit.samples, "save_sample_grid", capture)
    result = cli("sample", *args)
    assert result.code == 0, result.err
    return drawn["x"]


def test_reinit_controls_how_many_buffer_chains_restart_from_noise(digits_run, tmp_path, cli, monkeypatch):
    from jemkit.checkpoint import load_checkpoint

    buffer = load_checkpoint(list_checkpoints(digits_run / "checkpoints")[-1]).state["sampler"]["buffer"]
    flat = buffer.flatten(1)
    common = ["--steps", "0", "--n", "32", "--out", tmp_path / "x.png"]

    def stored(x):  # whether each sample is one of the buffer's stored states
        return [bool((flat == row).all(dim=1).any()) for row in x.flatten(1)]

    kept = _drawn_samples(monkeypatch, cli, digits_run, "--reinit", "0", *common)
    assert all(stored(kept)), "--reinit 0: every chain continues a stored state"
    fresh = _drawn_samples(monkeypatch, cli, digits_run, "--reinit", "1", *common)
    assert not any(stored(fresh)) and fresh.min() >= -1 and fresh.max() <= 1, "--reinit 1: every chain from noise"


def test_reinit_errors_are_clear(digits_run, tmp_path, cli):
    out = tmp_path / "x.png"
    _assert_clean_error(cli("sample", digits_run, "--reinit", "1.5", "--out", out), "--reinit", "[0, 1]")
    _assert_clean_error(cli("sample", digits_run, "--from", "noise", "--reinit", "0", "--out", out), "--from buffer")
    assert not out.exists()


def test_eval_and_sample_share_their_vocabulary():
    from jemkit.cli import _parser

    parser = _parser(["eval"])
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps subparsers privately
    options = {name: {o: a for a in commands[name]._actions for o in a.option_strings} for name in ("eval", "sample")}
    for flag in ("--checkpoint", "--steps", "--device", "--seed", "--out"):
        assert flag in options["eval"] and flag in options["sample"], flag
    for flag in ("--checkpoint", "--device"):
        assert options["eval"][flag].help == options["sample"][flag].help, flag
    assert options["sample"]["--device"].default == "auto" and options["sample"]["--checkpoint"].default == "last"
    assert "reinit" in options["sample"]["--from"].help and "--reinit" in options["sample"]
