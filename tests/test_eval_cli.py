"""``jemkit eval`` end to end on tiny digits runs: the report, a baseline column, and clear errors;
one folder per evaluation, intervals, sample diversity, a baseline on another split refused, progress
lines for logs."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from jemkit.errors import JemkitError
from jemkit.run_index import eval_report_path
from jemkit.evaluation.settings import REFINE_NOISE_DIGITS, REFINE_STEP_DIGITS

from conftest import RECIPES, TINY_DIGITS, run_cli

#: Small evaluation settings: a few seconds per run on a CPU.
EVAL_SMALL = [
    "--max-test",
    "60",
    "--ood-n",
    "30",
    "--robust-n",
    "20",
    "--pgd-steps",
    "2",
    "--eps",
    "0,0.1,0.3",
    "--eps-l2",
    "0,1",
    "--n-samples",
    "30",
    "--sgld-steps",
    "3",
    "--refine-steps",
    "1",
    "--grid-per-class",
    "2",
    "--batch-size",
    "64",
    "--extractor-param",
    "epochs=1",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny JEM run and a tiny baseline run on digits, and a shared weights cache."""
    root = tmp_path_factory.mktemp("eval_runs")
    jem, base = root / "jem", root / "base"
    assert run_cli("run", RECIPES / "jem_digits.yaml", "--out", jem, *TINY_DIGITS).code == 0
    tiny_base = [
        "model.backbone.channels=[8,16]",
        "model.backbone.feature_dim=16",
        "train.max_steps=3",
        "train.samples_per_class=2",
    ]
    assert run_cli("run", RECIPES / "baseline_digits.yaml", "--out", base, *tiny_base).code == 0
    return jem, base


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path_factory.getbasetemp() / "jemkit_cache"))
    monkeypatch.delenv("JEMKIT_INCEPTION_WEIGHTS", raising=False)


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".eval"))


def _unit(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _check_run(entry: dict) -> None:
    acc = entry["accuracy"]
    assert _unit(acc["clean"]) and _unit(acc["refined"]) and acc["n"] == 60 and acc["nll"] > 0
    transition = acc["refine"]["transition"]
    assert acc["refine"]["steps"] == 1 and transition["source"] == "cli", "digits runs refine with the profile's SGLD"
    assert (transition["step_size"], transition["noise"]) == (REFINE_STEP_DIGITS, REFINE_NOISE_DIGITS)
    assert _unit(entry["calibration"]["ece"]) and entry["calibration"]["bins"] == 15
    assert sum(entry["calibration"]["reliability"]["count"]) == 60
    assert set(entry["ood"]) == {"uniform_noise", "interpolations", "inverted", "sklearn_patches"}
    for scores in entry["ood"].values():
        assert set(scores) == {"log_px", "max_pyx", "grad_norm"}
        assert all(_unit(m["auroc"]) and _unit(m["fpr95"]) for m in scores.values())
    attacks = entry["robustness"]["attacks"]
    assert [p["eps"] for p in attacks["linf"]] == [0.0, 0.1, 0.3] and [p["eps"] for p in attacks["l2"]] == [0.0, 1.0]
    assert all(_unit(p["accuracy"]) for curve in attacks.values() for p in curve)
    generation = entry["generation"]
    for quality in (generation["fresh"]["conditional"], generation["fresh"]["unconditional"]):
        assert quality["fid"] >= 0 and 1.0 <= quality["inception_score"]["mean"] <= 10.0 + 1e-9
        assert quality["protocol"]["feature_extractor"] == "digits_classifier" and quality["protocol"]["samples"] == 30
    conditional = generation["fresh"]["conditional"]
    assert _unit(conditional["class_accuracy"]) and len(conditional["per_class_accuracy"]) == 10
    assert "class_accuracy" not in generation["fresh"]["unconditional"]
    _check_statistics(entry)


def _inside(point: float, interval: list[float]) -> bool:
    low, high = interval
    return low - 1e-6 <= point <= high + 1e-6  # torchmetrics AUROC is float32


def _check_statistics(entry: dict) -> None:
    """Intervals that contain their point estimates, KID, diversity, precision/recall and labels."""
    acc = entry["accuracy"]
    for key in ("clean", "refined", "nll"):
        assert _inside(acc[key], acc[f"{key}_ci95"]), (key, acc)
    assert acc["clean_ci95"][1] > acc["clean_ci95"][0], "60 inputs leave room for doubt"
    low, high = entry["calibration"]["ece_ci95"]  # biased upward: need not contain the point
    assert 0.0 <= low <= high <= 1.0
    for scores in entry["ood"].values():
        for m in scores.values():
            assert _inside(m["auroc"], m["auroc_ci95"]) and _inside(m["fpr95"], m["fpr95_ci95"]), m
    for curve in entry["robustness"]["attacks"].values():
        assert all(_inside(p["accuracy"], p["accuracy_ci95"]) for p in curve)
    for curve in entry["robustness"].get("defended", {}).values():
        for point in curve:
            assert all(_inside(point[k], point[f"{k}_ci95"]) for k in ("accuracy", "transfer", "worst"))
    generation = entry["generation"]
    qualities = [generation["fresh"]["conditional"], generation["fresh"]["unconditional"]]
    qualities += [generation["buffer"]] if generation["buffer"] else []
    for quality in qualities:
        assert quality["kid"]["std"] >= 0 and abs(quality["kid"]["mean"]) < 1e6
        assert _unit(quality["precision"]) and _unit(quality["recall"]) and quality["diversity"] >= 0
        assert quality["labels"]["fid"] == "digits-FID" and quality["labels"]["kid"] == "digits-KID"
        low, high = quality["inception_score"]["mean_ci95"]
        assert 1.0 - 1e-9 <= low <= high <= 10.0 + 1e-9
    conditional = generation["fresh"]["conditional"]
    assert _inside(conditional["class_accuracy"], conditional["class_accuracy_ci95"])
    per_class = conditional["class_diversity"]["per_class"]
    assert len(per_class) == 10 and all(v is None or v >= 0 for v in per_class)
    defined = [v for v in per_class if v is not None]
    assert conditional["class_diversity"]["mean"] == pytest.approx(sum(defined) / len(defined))
    assert "class_diversity" not in generation["fresh"]["unconditional"]


def test_eval_writes_report_tables_and_figures(cli, runs):
    jem, _ = runs
    defence = ["--defence", "--defence-steps", "1", "--defence-copies", "2"]
    result = cli("eval", jem, *EVAL_SMALL, *defence)
    assert result.code == 0, result.err
    folder = jem / "eval" / "latest"
    report = json.loads((folder / "report.json").read_text())
    assert set(report) >= {"runs", "settings", "protocol", "data", "real_data", "figures"}
    assert list(report["runs"]) == ["jem"]
    entry = report["runs"]["jem"]
    _check_run(entry)
    assert entry["generation"]["buffer"]["protocol"]["source"].endswith("at the checkpoint")
    assert entry["checkpoint"]["step"] == 3
    robustness = entry["robustness"]
    assert set(robustness["defended"]) == {"linf", "l2"} and robustness["defence"]["attack"].startswith("end to end")
    for curve in robustness["defended"].values():
        for point in curve:
            assert _unit(point["accuracy"]) and _unit(point["transfer"]) and _unit(point["worst"])
            assert point["worst"] <= min(point["accuracy"], point["transfer"])
    settings = report["settings"]
    assert settings["profile"] == "digits" and settings["eps_linf"] == [0.0, 0.1, 0.3] and settings["bins"] == 15
    assert settings["ood_params"]["uniform_noise"] == {"size": 1000, "seed": 0}
    assert set(report["protocol"]) == {"accuracy", "calibration", "ood", "robustness", "generation"}
    markdown = (folder / "report.md").read_text()
    assert "defended (worst case), L-inf eps=0.3" in markdown
    figures = sorted(p.name for p in (folder / "figures").glob("*.png"))
    assert len(figures) >= 10 and "robustness_linf.png" in figures and "jem_reliability.png" in figures
    for name in figures:
        assert f"figures/{name}" in markdown, name
        assert (folder / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for title in ("## Accuracy", "## Calibration", "## OOD detection: AUROC", "## Robust accuracy", "## Generation"):
        assert title in markdown
    assert "test accuracy" in result.out and "ECE (15 bins)" in result.out, "tables printed"
    assert _leftovers(jem) == []
    # Metric names say whose features they use; intervals print beside the values.
    for label in ("fresh conditional: digits-FID", "digits-KID (mean ± sd)", "fresh conditional: digits-IS"):
        assert label in markdown, label
    assert "Inception" not in "".join(line for line in markdown.splitlines() if line.startswith("| fresh"))
    clean = entry["accuracy"]["clean_ci95"]
    assert f"| test accuracy | {entry['accuracy']['clean']:.4f} [{clean[0]:.4f}, {clean[1]:.4f}] |" in markdown
    assert "fresh conditional: diversity of class 3" in markdown and "summary.json's test/loss" in markdown
    assert report["command"].startswith(f"jemkit eval {jem} ") and "--defence-steps 1" in report["command"]
    assert f"Command: `{report['command']}`" in markdown
    assert report["settings"]["bootstrap"] == {"n_boot": 1000, "level": 0.95, "seed": 0}
    # Output that is not a terminal gets plain progress lines and names the checkpoint loaded.
    out = " ".join(result.out.split())
    assert "jem: loaded checkpoint" in out and "step_000003.safetensors (step 3)" in out
    phases = [line for line in result.out.splitlines() if line.startswith("[eval ") and " phase " in line]
    assert len(phases) >= 10 and all(" phase " in line and "/6 " in line for line in phases), phases
    assert any("done in" in line for line in phases) and any("/60 (" in line for line in phases)


def test_eval_with_baseline_has_a_column_per_run(cli, runs):
    jem, base = runs
    result = cli("eval", jem, "--baseline", base, *EVAL_SMALL, "--only", "acc,calibration,ood,robustness,generation")
    assert result.code == 0, result.err
    report = json.loads((jem / "eval" / "latest" / "report.json").read_text())
    assert list(report["runs"]) == ["jem", "base"]
    for entry in report["runs"].values():
        _check_run(entry)
    assert report["runs"]["base"]["generation"]["buffer"] is None, "the baseline's sampler has no replay buffer"
    markdown = (jem / "eval" / "latest" / "report.md").read_text()
    table_headers = [line for line in markdown.splitlines() if line.startswith("| metric |")]
    assert len(table_headers) == 6 and all(line == "| metric | jem | base |" for line in table_headers)
    assert (jem / "eval" / "latest" / "figures" / "base_reliability.png").exists()


def test_only_runs_the_chosen_sections(cli, runs):
    jem, _ = runs
    result = cli("eval", jem, "--only", "acc,calibration", "--max-test", "40", "--refine-steps", "0", "--bins", "5")
    assert result.code == 0, result.err
    entry = json.loads((jem / "eval" / "latest" / "report.json").read_text())["runs"]["jem"]
    assert {"accuracy", "calibration"} <= set(entry) and not {"ood", "robustness", "generation"} & set(entry)
    assert entry["accuracy"]["clean"] == entry["accuracy"]["refined"], "zero refinement steps change nothing"
    assert len(entry["calibration"]["reliability"]["count"]) == 5
    scaled = entry["calibration"]["temperature_scaled"]
    assert len(scaled["temperature"]) == 2 and all(t > 0 for t in scaled["temperature"])
    assert 0.0 <= scaled["ece"] <= 1.0 and "cross-fit" in scaled["fitted_on"]
    lo, hi = scaled["ece_ci95"]
    assert lo <= hi
    markdown = (jem / "eval" / "latest" / "report.md").read_text()
    assert "ECE after temperature scaling" in markdown


def test_run_directory_without_checkpoint_is_a_clear_error(cli, runs, tmp_path):
    jem, _ = runs
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(jem / "config.yaml", empty / "config.yaml")
    result = cli("eval", empty, "--only", "acc")
    assert result.code == 2 and "no checkpoint" in result.err and "Traceback" not in result.err
    assert sorted(p.name for p in empty.iterdir()) == ["checkpoints", "config.yaml"], "nothing written"
    missing = cli("eval", tmp_path / "nowhere")
    assert missing.code == 2 and "does not exist" in missing.err


def test_unknown_ood_set_gets_did_you_mean_and_writes_nothing(cli, runs, tmp_path):
    jem, _ = runs
    run = tmp_path / "run"
    shutil.copytree(jem, run, ignore=shutil.ignore_patterns("eval"))
    result = cli("eval", run, "--only", "ood", "--ood-sets", "uniform_noise,invertd")
    assert result.code == 2 and "Did you mean 'inverted'" in result.err and "jemkit list-plugins" in result.err
    assert not (run / "eval").exists() and _leftovers(run) == []
    stray = cli("eval", run, "--only", "ood", "--ood-sets", "inverted", "--ood-param", "celeba_folder.root=/x")
    assert stray.code == 2 and "not among --ood-sets" in stray.err
    bad_key = cli("eval", run, "--only", "ood", "--ood-sets", "uniform_noise", "--ood-param", "uniform_noise.sise=3")
    assert bad_key.code == 2 and "Did you mean 'size'" in bad_key.err


def test_missing_inception_weights_is_a_clear_error(cli, runs, tmp_path):
    jem, _ = runs
    run = tmp_path / "run"
    shutil.copytree(jem, run, ignore=shutil.ignore_patterns("eval"))
    result = cli("eval", run, "--only", "generation", "--feature-extractor", "inception", "--n-samples", "10")
    assert result.code == 2 and "--inception-weights" in result.err and "JEMKIT_INCEPTION_WEIGHTS" in result.err
    assert "Traceback" not in result.err and not (run / "eval").exists() and _leftovers(run) == []


def test_refine_step_size_run_uses_the_runs_own_transition(cli, runs, tmp_path):
    jem, _ = runs
    out = tmp_path / "own"
    result = cli("eval", jem, "--only", "acc", "--max-test", "20", "--refine-steps", "1", "--bootstrap", "0",
                 "--refine-step-size", "run", "--out", out)
    assert result.code == 0, result.err
    transition = json.loads((out / "report.json").read_text())["runs"]["jem"]["accuracy"]["refine"]["transition"]
    assert transition["source"] == "run" and transition["step_size"] == 1.0, transition
    bad = cli("eval", jem, "--only", "acc", "--refine-step-size", "run", "--refine-noise", "0.01")
    assert bad.code == 2 and "--refine-noise" in bad.err and "Traceback" not in bad.err
    from jemkit.cli.eval import _step_or_run  # argparse's type: its message ends the usage error

    assert (_step_or_run("run"), _step_or_run("0.03"), _step_or_run("1/100")) == ("run", 0.03, 0.01)
    with pytest.raises(argparse.ArgumentTypeError, match="neither a step size .* nor 'run'"):
        _step_or_run("fast")


def test_failure_midway_keeps_the_previous_report_and_leaves_no_partial_files(cli, runs, tmp_path, monkeypatch):
    from jemkit.evaluation import runner

    jem, _ = runs
    run = tmp_path / "run"
    shutil.copytree(jem, run, ignore=shutil.ignore_patterns("eval"))
    assert cli("eval", run, "--only", "acc", "--max-test", "20", "--refine-steps", "0").code == 0
    before = (run / "eval" / "latest" / "report.json").read_text()

    def broken(self, run_, probs):  # noqa: ARG001
        (self.out / "figures").mkdir(exist_ok=True)
        (self.out / "figures" / "half.png").write_bytes(b"partial")
        raise JemkitError("simulated failure in the middle of the evaluation")

    monkeypatch.setattr(runner.Evaluation, "calibration", broken)
    result = cli("eval", run, "--only", "acc,calibration", "--max-test", "20", "--refine-steps", "0")
    assert result.code == 2 and "simulated failure" in result.err
    assert (run / "eval" / "latest" / "report.json").read_text() == before
    assert not (run / "eval" / "figures" / "half.png").exists() and _leftovers(run) == []


def test_bad_settings_name_the_flag(cli, runs):
    jem, _ = runs
    for args, needle in (
        (["--only", "acc,speed"], "--only"),
        (["--norms", "l3"], "--norms"),
        (["--bins", "0"], "--bins"),
        (["--eps", "-0.1"], "--eps"),
        (["--refine-step-size", "0.5"], "--refine-noise"),
    ):
        result = cli("eval", jem, *args)
        assert result.code == 2 and needle in result.err and "Traceback" not in result.err, (args, result.err)


def _fresh_copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("eval"))
    return to


QUICK = ["--only", "acc", "--refine-steps", "0", "--max-test", "40"]


def test_every_evaluation_keeps_its_own_folder_and_latest_moves(cli, runs, tmp_path):
    jem, _ = runs
    run = _fresh_copy(jem, tmp_path / "run")
    first = cli("eval", run, *QUICK)
    assert first.code == 0, first.err
    second = cli("eval", run, "--only", "acc", "--refine-steps", "0")  # all 360 test inputs
    assert second.code == 0, second.err
    folders = sorted(p for p in (run / "eval").iterdir() if p.name != "latest")
    assert len(folders) == 2 and all((f / "report.json").is_file() and (f / "report.md").is_file() for f in folders)
    reports = [json.loads((f / "report.json").read_text()) for f in folders]
    assert [r["runs"]["run"]["accuracy"]["n"] for r in reports] == [40, 360], "both kept, oldest first"
    assert (run / "eval" / "latest").resolve() == folders[1].resolve()
    assert eval_report_path(run) == run / "eval" / "latest" / "report.json", "jemkit compare follows latest"
    assert str(folders[1]) in " ".join(second.out.split())
    widths = [r["runs"]["run"]["accuracy"]["clean_ci95"] for r in reports]
    assert widths[1][1] - widths[1][0] < 0.6 * (widths[0][1] - widths[0][0]), "9x the inputs: a narrower interval"
    assert "--max-test 40" in reports[0]["command"] and "--max-test" not in reports[1]["command"]
    assert _leftovers(run) == []


def test_two_evaluations_of_one_run_may_overlap_but_never_one_with_training(cli, runs, tmp_path):
    """Evaluations share the run's lock (each adds its own folder); training holds it alone."""
    from jemkit.run_lock import RunLock

    jem, _ = runs
    run = _fresh_copy(jem, tmp_path / "run")
    other = RunLock(run, "evaluation", shared=True).acquire()  # as a second `jemkit eval` holds it
    try:
        alongside = cli("eval", run, *QUICK, "--out", run / "eval" / "alongside")
        assert alongside.code == 0, alongside.err
        assert (run / "eval" / "alongside" / "report.json").is_file()
    finally:
        other.release()
    trainer = RunLock(run, "training").acquire()
    try:
        refused = cli("eval", run, *QUICK, "--out", run / "eval" / "refused")
        assert refused.code == 2 and "training since" in " ".join(refused.err.split()), refused.err
        assert not (run / "eval" / "refused").exists()
    finally:
        trainer.release()
    assert _leftovers(run) == []


def test_out_writes_a_new_folder_and_never_a_filled_one(cli, runs, tmp_path, monkeypatch):
    jem, _ = runs
    run = _fresh_copy(jem, tmp_path / "run")
    elsewhere = tmp_path / "reports" / "acc"
    result = cli("eval", run, *QUICK, "--out", elsewhere, "--bootstrap", "0")
    assert result.code == 0, result.err
    report = json.loads((elsewhere / "report.json").read_text())
    assert "clean_ci95" not in report["runs"]["run"]["accuracy"], "--bootstrap 0: no intervals"
    assert not (run / "eval").exists(), "a folder outside RUN_DIR/eval leaves eval/latest alone"
    again = cli("eval", run, *QUICK, "--out", elsewhere)
    assert again.code == 2 and "already exists" in again.err and "never replaces" in " ".join(again.err.split())
    assert json.loads((elsewhere / "report.json").read_text()) == report

    import os

    def no_symlinks(*args, **kwargs):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    inside = run / "eval" / "named"
    assert cli("eval", run, *QUICK, "--out", inside).code == 0
    latest = run / "eval" / "latest"
    assert latest.is_file() and not latest.is_symlink() and latest.read_text().strip() == "named"
    assert eval_report_path(run) == run / "eval" / "named" / "report.json"


def test_bootstrap_and_the_old_steps_flag(cli, runs, tmp_path):
    jem, _ = runs
    run = _fresh_copy(jem, tmp_path / "run")
    result = cli("eval", run, *QUICK, "--bootstrap", "200", "--sgld-steps", "7")
    assert result.code == 0, result.err
    report = json.loads((run / "eval" / "latest" / "report.json").read_text())
    assert report["settings"]["sgld_steps"] == 7 and report["settings"]["n_boot"] == 200
    assert "--steps 7" in report["command"], "recorded under the current name"
    bad = cli("eval", run, "--only", "acc", "--bootstrap", "-1")
    assert bad.code == 2 and "--bootstrap" in bad.err


def test_checkpoint_by_step_and_best(cli, runs, tmp_path):
    jem, _ = runs
    run = _fresh_copy(jem, tmp_path / "run")
    for which, name in (("0", "step_000000.safetensors"), ("best", "best.safetensors")):
        result = cli("eval", run, *QUICK, "--bootstrap", "0", "--checkpoint", which)
        assert result.code == 0, result.err
        entry = json.loads((run / "eval" / "latest" / "report.json").read_text())["runs"]["run"]
        assert Path(entry["checkpoint"]["path"]).name == name and name in " ".join(result.out.split())


def test_typo_in_only_gets_did_you_mean(cli, runs):
    jem, _ = runs
    result = cli("eval", jem, "--only", "acc,calibraton")
    assert result.code == 2 and "did you mean 'calibration'?" in " ".join(result.err.split())


def test_run_dir_that_is_a_file_is_a_clear_error(cli, runs, tmp_path):
    jem, base = runs
    checkpoint = sorted((jem / "checkpoints").glob("step_*.safetensors"))[-1]
    for args in ((checkpoint,), (jem, "--baseline", checkpoint)):
        result = cli("eval", *args, "--only", "acc")
        text = " ".join(result.err.split())
        assert result.code == 2 and "is a file, not a run directory" in text and "--checkpoint" in text, text
        assert "does not exist" not in text and "Traceback" not in result.err


def test_baseline_with_another_split_is_refused(cli, runs, tmp_path):
    jem, base = runs
    other = _fresh_copy(base, tmp_path / "base99")
    config = other / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("name: digits", "name: digits\n  split_seed: 99\n  test_fraction: 0.3"))
    result = cli("eval", jem, "--baseline", other, "--only", "acc")
    text = " ".join(result.err.split())
    assert result.code == 2 and "Traceback" not in result.err
    assert "data.split_seed: 99 in the baseline, 1234 in the evaluated run" in text, text
    assert "data.test_fraction: 0.3 in the baseline, 0.2 in the evaluated run" in text
    assert "noise_std" not in text, "only the keys that differ"
    assert not (other / "eval").exists()
    # The defaults written out are no difference; an input-noise difference is.
    config.write_text(original.replace("name: digits", "name: digits\n  split_seed: 1234\n  val_size: 0"))
    same = cli("eval", _fresh_copy(jem, tmp_path / "jem"), "--baseline", other, *QUICK)
    assert same.code == 0, same.err
    config.write_text(original.replace("noise_std: 0.03", "noise_std: 0.0"))
    noisy = cli("eval", jem, "--baseline", other, "--only", "acc")
    assert noisy.code == 2 and "data.noise_std: 0.0 in the baseline, 0.03 in the evaluated run" in " ".join(
        noisy.err.split()
    )


def test_report_nll_is_the_training_loss_without_input_noise(cli, tmp_path):
    """The report's NLL and summary.json's test/loss differ only by their input-noise draws."""
    run = tmp_path / "noiseless"
    assert run_cli("run", RECIPES / "jem_digits.yaml", "--out", run, *TINY_DIGITS, "data.noise_std=0").code == 0
    result = cli("eval", run, "--only", "acc", "--refine-steps", "0", "--bootstrap", "0")
    assert result.code == 0, result.err
    accuracy = json.loads((run / "eval" / "latest" / "report.json").read_text())["runs"]["noiseless"]["accuracy"]
    summary = json.loads((run / "summary.json").read_text())
    assert accuracy["n"] == 360 and accuracy["clean"] == summary["test/acc"]
    assert accuracy["nll"] == pytest.approx(summary["test/loss"], rel=1e-5)


def test_baseline_on_another_data_set_is_refused(cli, runs, tmp_path):
    jem, base = runs
    other = tmp_path / "other"
    shutil.copytree(base, other)
    config = other / "config.yaml"
    config.write_text(config.read_text().replace("name: digits", "name: cifar10"))
    result = cli("eval", jem, "--baseline", other, "--only", "acc")
    assert result.code == 2 and "must share the data set" in result.err
