"""`jemkit compare` and `jemkit runs` on fabricated run directories: statistics against hand
computations, grouping by a config key, the Markdown table, eval report numbers, the PNG."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from jemkit.compare import compare, describe, markdown
from jemkit.run_index import eval_numbers, find_runs, read_run

#: Student's t quantile t(0.975, 2 dof), from a printed table (4.3027) to more digits.
T_975_2 = 4.302652729911275


def make_run(
    path: Path,
    *,
    acc: float | None,
    recipe: str = "jem_digits",
    lr: float = 1e-3,
    seed: int = 1,
    curve: list[float] | None = None,
    wall: float = 10.0,
) -> Path:
    """A run directory as `jemkit run` writes it: config.yaml, metrics.jsonl, summary.json
    (left out when ``acc`` is None, as for a run still training)."""
    path.mkdir(parents=True)
    config = {"name": recipe, "seed": seed, "optimizer": {"name": "adam", "lr": lr}, "train": {"epochs": 1}}
    (path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    curve = curve or [2.3, 2.0, 1.5]
    lines = [json.dumps({"step": i + 1, "epoch": 0, "train/loss": v}) for i, v in enumerate(curve)]
    if acc is not None:
        lines.append(json.dumps({"step": len(curve), "epoch": 1, "test/acc": acc}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if acc is not None:
        summary = {"recipe": recipe, "status": "completed", "test/acc": acc, "steps": len(curve),
                   "epochs": 1, "rollbacks": 0, "wall_seconds": wall, "device": "cpu"}
        (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


@pytest.fixture
def three_runs(tmp_path):
    root = tmp_path / "runs"
    for seed, acc in zip((1, 2, 3), (0.9, 0.92, 0.94)):
        make_run(root / f"jem-s{seed}", acc=acc, seed=seed, wall=10.0 * seed)
    return root


def test_describe_matches_a_hand_computation():
    stats = describe([0.9, 0.92, 0.94])
    # mean 0.92; squared deviations 0.0004 + 0 + 0.0004 over n-1 = 2: sd = 0.02
    assert stats.n == 3
    assert stats.mean == pytest.approx(0.92, abs=1e-12)
    assert stats.sd == pytest.approx(0.02, abs=1e-12)
    half = T_975_2 * 0.02 / math.sqrt(3)  # 0.049683
    assert stats.ci_low == pytest.approx(0.92 - half, abs=1e-9)
    assert stats.ci_high == pytest.approx(0.92 + half, abs=1e-9)
    # a 99% interval is wider than the 95% one
    assert describe([0.9, 0.92, 0.94], level=0.99).ci_low < stats.ci_low


def test_one_value_has_no_sd_or_interval():
    stats = describe([0.5])
    assert (stats.n, stats.mean, stats.sd, stats.ci_low, stats.ci_high) == (1, 0.5, None, None, None)
    assert stats.to_json() == {"n": 1, "mean": 0.5, "sd": None, "ci95": None}


def test_compare_json_on_three_runs(cli, three_runs):
    result = cli("compare", three_runs, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["group_by"] == ["recipe"]
    [group] = report["groups"]
    assert group["label"] == "jem_digits" and len(group["runs"]) == 3
    acc = group["metrics"]["test/acc"]
    half = T_975_2 * 0.02 / math.sqrt(3)
    assert acc["n"] == 3
    assert acc["mean"] == pytest.approx(0.92) and acc["sd"] == pytest.approx(0.02)
    assert acc["ci95"] == pytest.approx([0.92 - half, 0.92 + half])
    wall = group["metrics"]["wall_seconds"]  # 10, 20, 30: mean 20, sd 10
    assert wall["mean"] == pytest.approx(20.0) and wall["sd"] == pytest.approx(10.0)
    assert "device" not in group["metrics"] and "status" not in group["metrics"]  # text is not a number


def test_compare_table_and_markdown(cli, three_runs, tmp_path):
    md = tmp_path / "docs" / "table.md"
    result = cli("compare", three_runs, "--metrics", "test/acc", "--md", md)
    assert result.code == 0, result.err
    # sd 0.02 has two significant digits at three decimals; mean and CI use the same places
    half = T_975_2 * 0.02 / math.sqrt(3)
    row = f"| test/acc | jem_digits | 3 | 0.920 ± 0.020 | [{0.92 - half:.3f}, {0.92 + half:.3f}] |"
    assert row == "| test/acc | jem_digits | 3 | 0.920 ± 0.020 | [0.870, 0.970] |"
    lines = md.read_text(encoding="utf-8").splitlines()
    assert lines[2:] == ["| metric | group | n | mean ± sd | 95% CI |", "| --- | --- | ---: | ---: | ---: |", row]
    assert "test/acc" in result.out and "0.920 ± 0.020" in result.out and "[0.870, 0.970]" in result.out
    assert "wall_seconds" not in result.out  # --metrics filtered it out


def test_n_of_one_is_empty_not_nan(tmp_path):
    run = read_run(make_run(tmp_path / "solo", acc=0.8))
    text = markdown(compare([run], metrics=["test/acc"]))
    assert text.splitlines()[-1] == "| test/acc | jem_digits | 1 | 0.8 |  |"
    assert "nan" not in text.lower()


def test_group_by_a_config_key(cli, tmp_path):
    root = tmp_path / "sweep"
    for lr, accs in ((0.01, (0.5, 0.7)), (0.001, (0.9, 0.94, 0.98))):
        for seed, acc in enumerate(accs, 1):
            make_run(root / f"lr{lr}-s{seed}", acc=acc, lr=lr, seed=seed)
    result = cli("compare", root, "--group-by", "optimizer.lr", "--metrics", "test/*", "--json")
    assert result.code == 0, result.err
    groups = json.loads(result.out)["groups"]
    assert [g["label"] for g in groups] == ["optimizer.lr=0.001", "optimizer.lr=0.01"]  # sorted by value
    small, large = (g["metrics"]["test/acc"] for g in groups)
    assert small["n"] == 3 and small["mean"] == pytest.approx(0.94) and small["sd"] == pytest.approx(0.04)
    assert large["n"] == 2 and large["mean"] == pytest.approx(0.6)
    assert large["sd"] == pytest.approx(math.sqrt(0.02))  # (0.1^2 + 0.1^2) / 1
    # two keys: one group per combination
    two = cli("compare", root, "--group-by", "optimizer.lr,seed", "--json")
    labels = [g["label"] for g in json.loads(two.out)["groups"]]
    assert labels[:2] == ["optimizer.lr=0.001,seed=1", "optimizer.lr=0.001,seed=2"] and len(labels) == 5


def test_eval_report_numbers_are_flattened(tmp_path):
    run = make_run(tmp_path / "r1", acc=0.9)

    def report(clean: float) -> dict:
        return {"format": "jemkit-eval/1", "runs": {
            "baseline": {"accuracy": {"clean": 0.1}},
            "r1": {"run_dir": str(run), "accuracy": {"clean": clean, "n": 360},
                   "calibration": {"ece": 0.03, "reliability": {"accuracy": [0.1, 0.2]}},
                   "robustness": {"attacks": {"linf": [{"eps": 0.0, "accuracy": clean}, {"eps": 0.1, "accuracy": 0.4}]}},
                   "generation": {"buffer": None}}}}

    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps(report(0.91)))
    numbers = eval_numbers(run)
    assert numbers == {
        "eval.accuracy.clean": 0.91, "eval.accuracy.n": 360.0, "eval.calibration.ece": 0.03,
        "eval.robustness.attacks.linf.0.eps": 0.0, "eval.robustness.attacks.linf.0.accuracy": 0.91,
        "eval.robustness.attacks.linf.1.eps": 0.1, "eval.robustness.attacks.linf.1.accuracy": 0.4,
    }
    # a newer evaluation under eval/<stamp>/ with eval/latest pointing at it wins
    newer = run / "eval" / "20250101-000000"
    newer.mkdir()
    (newer / "report.json").write_text(json.dumps(report(0.95)))
    (run / "eval" / "latest").write_text("20250101-000000\n")
    assert eval_numbers(run)["eval.accuracy.clean"] == 0.95
    (run / "eval" / "latest").unlink()
    os.symlink(newer.name, run / "eval" / "latest")
    assert eval_numbers(run)["eval.accuracy.clean"] == 0.95


def test_compare_includes_eval_numbers(cli, tmp_path):
    root = tmp_path / "runs"
    for name, clean in (("a", 0.8), ("b", 0.9)):
        run = make_run(root / name, acc=clean)
        (run / "eval").mkdir()
        (run / "eval" / "report.json").write_text(json.dumps({"runs": {name: {"accuracy": {"clean": clean}}}}))
    result = cli("compare", root, "--metrics", "eval.accuracy.*", "--json")
    assert result.code == 0, result.err
    stats = json.loads(result.out)["groups"][0]["metrics"]
    assert list(stats) == ["eval.accuracy.clean"]
    assert stats["eval.accuracy.clean"]["mean"] == pytest.approx(0.85)
    assert stats["eval.accuracy.clean"]["sd"] == pytest.approx(math.sqrt(0.005))


def test_unknown_metric_is_a_clear_error(cli, three_runs):
    result = cli("compare", three_runs, "--metrics", "test/accuracy")
    assert result.code == 2
    assert "test/accuracy" in result.err and "Did you mean 'test/acc'" in result.err


def test_plot_writes_a_png(cli, tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a", acc=0.9, curve=[2.3, 1.9, 1.2])
    make_run(root / "b", acc=0.8, curve=[2.2, 2.0, 1.4])
    make_run(root / "c", acc=0.5, lr=0.1, curve=[2.3, 2.3])
    out = tmp_path / "plots" / "loss.png"
    result = cli("compare", root, "--plot", "train/loss", "--out", out, "--group-by", "optimizer.lr", "--band", "sd")
    assert result.code == 0, result.err
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    missing = cli("compare", root, "--plot", "train/los", "--out", out)
    assert missing.code == 2 and "Did you mean 'train/loss'" in missing.err


def test_runs_lists_status_steps_and_accuracy(cli, tmp_path):
    root = tmp_path / "runs"
    make_run(root / "done", acc=0.93, wall=75.0)
    make_run(root / "sweep" / "seed=1", acc=None, curve=[2.3, 2.1, 2.0, 1.8])  # still training
    (root / "done" / "checkpoints").mkdir()
    (root / "done" / "checkpoints" / "config.yaml").write_text("not: a run")  # a run's parts are not searched
    assert [p.relative_to(root).as_posix() for p in find_runs(root)] == ["done", "sweep/seed=1"]
    result = cli("runs", root, "--json")
    assert result.code == 0, result.err
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert rows["done"]["status"] == "completed" and rows["done"]["steps"] == 3
    assert rows["done"]["test/acc"] == 0.93 and rows["done"]["wall_seconds"] == 75.0
    assert rows["done"]["recipe"] == "jem_digits" and rows["done"]["started"]
    assert rows["sweep/seed=1"]["status"] == "running-or-stopped"
    assert rows["sweep/seed=1"]["steps"] == 4 and rows["sweep/seed=1"]["test/acc"] is None
    table = cli("runs", root)
    assert table.code == 0 and "completed" in table.out and "1:15" in table.out and "0.9300" in table.out


def test_runs_on_a_missing_folder_is_a_clear_error(cli, tmp_path):
    result = cli("runs", tmp_path / "nowhere")
    assert result.code == 2 and "is not a directory" in result.err
