"""scripts/toy_density.py: toy sweeps -> the density-quality document (tiny runs: the pipeline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import toy_density  # noqa: E402


def test_aim_is_every_mode_within_a_third_of_its_share():
    run = toy_density.ToyRun("1", [0.165, 0.085] + [0.125] * 6, [0.125] * 8, 0.04, 0.4, 0.02, 30.0)
    assert run.worst_relative == pytest.approx(0.32) and run.meets_aim  # 4 points of 12.5 % is within
    off = toy_density.ToyRun("2", [0.166, 0.084] + [0.125] * 6, [0.125] * 8, 0.041, 0.5, 0.03, None)
    assert not off.meets_aim
    moons = toy_density.ToyRun("3", [0.34, 0.66], [0.5, 0.5], 0.16, 0.2, 0.002, None)
    assert moons.meets_aim  # 16 points of a 50 % moon is the same relative gap
    arm = toy_density.Arm("x", "toy_moons.yaml")
    row = toy_density.summary_row(arm, [run, off])
    assert row.startswith("| x | 2 | 33 | 4.1 | 1 of 2 | not met | 0.450 ± 0.071 [")


def test_missing_density_entries_are_a_clear_error(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(toy_density.ResultsError, match="no density quality.*toy_plot"):
        toy_density.read_toy_run(tmp_path)


def test_tiny_sweeps_give_one_row_per_seed_and_resume(tmp_path):
    out = tmp_path / "toys.md"
    command = [sys.executable, str(ROOT / "scripts" / "toy_density.py"), "--tiny", "--toys", "moons,8gaussians_balanced",
               "--seeds", "1,2", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = out.read_text(encoding="utf-8")
    seeds = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith(("| moons | ", "| 8gaussians_balanced | "))]
    assert sorted(map(tuple, seeds)) == [("| 8gaussians_balanced", "1"), ("| 8gaussians_balanced", "2"),
                                        ("| 8gaussians_balanced", "2"), ("| moons", "1"), ("| moons", "2"),
                                        ("| moons", "2")], text  # two per-seed rows and one n = 2 summary row each
    for seed in (1, 2):  # the per-seed numbers are the runs' own summary entries
        summary = json.loads((tmp_path / "runs" / "moons" / f"seed={seed}" / "summary.json").read_text())
        masses = " / ".join(f"{100 * v:.1f}" for v in summary["density/mode_masses"])
        masses_, truth = summary["density/mode_masses"], summary["density/true_modes"]
        relative = max(abs(m / t - 1) for m, t in zip(masses_, truth))
        assert f"| moons | {seed} | {100 * relative:.0f} | {100 * summary['density/mode_mass_err']:.1f} | " in text
        assert masses in text and len(summary["density/mode_masses"]) == 2
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "jemkit run" not in again.stdout, again.stdout  # nothing trained again
    # the same sweeps asked for without --tiny: refused, since they were trained with other overrides
    full = [arg for arg in command if arg != "--tiny"]
    refused = subprocess.run(full, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "was trained with other settings of loggers, train" in refused.stderr, refused.stderr
    assert "jemkit run" not in refused.stdout
    unknown = subprocess.run([*command[:2], "--toys", "swirl"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "Unknown toy arm(s) swirl. Choose from 8gaussians" in unknown.stderr


def test_a_sweep_is_stale_when_its_resolved_settings_differ(tmp_path):
    from results import _stale

    text = (ROOT / "recipes" / "toy_moons.yaml").read_text()
    recipe = tmp_path / "toy_moons.yaml"
    recipe.write_text(text)
    (tmp_path / "sweep" / "recipe").mkdir(parents=True)
    (tmp_path / "sweep" / "recipe" / "toy_moons.yaml").write_text(text)
    copy = "recipe/toy_moons.yaml"
    assert _stale(tmp_path / "sweep", copy, [], recipe, []) == ""
    assert "other settings of train than toy_moons.yaml with train.epochs=6" in _stale(
        tmp_path / "sweep", copy, [], recipe, ["train.epochs=6"])
    # the recipe now holds what the sweep got as an override, and a new comment: the same experiment
    recipe.write_text("# six epochs\n" + text.replace("  epochs: 40", "  epochs: 6"))
    assert _stale(tmp_path / "sweep", copy, ["train.epochs=6"], recipe, []) == ""
    assert "other settings of train" in _stale(tmp_path / "sweep", copy, [], recipe, [])
