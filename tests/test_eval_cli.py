"""``jemkit eval`` end to end on tiny digits runs: the report, a baseline column, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jemkit.errors import JemkitError

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
    assert acc["refine"]["steps"] == 1 and acc["refine"]["transition"]["source"] == "run"
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


def test_eval_writes_report_tables_and_figures(cli, runs):
    jem, _ = runs
    defence = ["--defence", "--defence-steps", "1", "--defence-copies", "2"]
    result = cli("eval", jem, *EVAL_SMALL, *defence)
    assert result.code == 0, result.err
    folder = jem / "eval"
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


def test_eval_with_baseline_has_a_column_per_run(cli, runs):
    jem, base = runs
    result = cli("eval", jem, "--baseline", base, *EVAL_SMALL, "--only", "acc,calibration,ood,robustness,generation")
    assert result.code == 0, result.err
    report = json.loads((jem / "eval" / "report.json").read_text())
    assert list(report["runs"]) == ["jem", "base"]
    for entry in report["runs"].values():
        _check_run(entry)
    assert report["runs"]["base"]["generation"]["buffer"] is None, "the baseline's sampler has no replay buffer"
    table_headers = [
        line for line in (jem / "eval" / "report.md").read_text().splitlines() if line.startswith("| metric |")
    ]
    assert len(table_headers) == 6 and all(line == "| metric | jem | base |" for line in table_headers)
    assert (jem / "eval" / "figures" / "base_reliability.png").exists()


def test_only_runs_the_chosen_sections(cli, runs):
    jem, _ = runs
    result = cli("eval", jem, "--only", "acc,calibration", "--max-test", "40", "--refine-steps", "0", "--bins", "5")
    assert result.code == 0, result.err
    entry = json.loads((jem / "eval" / "report.json").read_text())["runs"]["jem"]
    assert {"accuracy", "calibration"} <= set(entry) and not {"ood", "robustness", "generation"} & set(entry)
    assert entry["accuracy"]["clean"] == entry["accuracy"]["refined"], "zero refinement steps change nothing"
    assert len(entry["calibration"]["reliability"]["count"]) == 5


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


def test_failure_midway_keeps_the_previous_report_and_leaves_no_partial_files(cli, runs, tmp_path, monkeypatch):
    from jemkit.evaluation import runner

    jem, _ = runs
    run = tmp_path / "run"
    shutil.copytree(jem, run, ignore=shutil.ignore_patterns("eval"))
    assert cli("eval", run, "--only", "acc", "--max-test", "20", "--refine-steps", "0").code == 0
    before = (run / "eval" / "report.json").read_text()

    def broken(self, run_, probs):  # noqa: ARG001
        (self.out / "figures").mkdir(exist_ok=True)
        (self.out / "figures" / "half.png").write_bytes(b"partial")
        raise JemkitError("simulated failure in the middle of the evaluation")

    monkeypatch.setattr(runner.Evaluation, "calibration", broken)
    result = cli("eval", run, "--only", "acc,calibration", "--max-test", "20", "--refine-steps", "0")
    assert result.code == 2 and "simulated failure" in result.err
    assert (run / "eval" / "report.json").read_text() == before
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


def test_baseline_on_another_data_set_is_refused(cli, runs, tmp_path):
    jem, base = runs
    other = tmp_path / "other"
    shutil.copytree(base, other)
    config = other / "config.yaml"
    config.write_text(config.read_text().replace("name: digits", "name: cifar10"))
    result = cli("eval", jem, "--baseline", other, "--only", "acc")
    assert result.code == 2 and "must share the data set" in result.err
