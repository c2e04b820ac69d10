"""Sweeps: grid parsing and member names, and a real two-seed sweep that trains, resumes as a
whole and ends in a comparison (each member its own `python -m jemkit run` process)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from jemkit.sweep import (
    SweepError,
    create_sweep,
    load_sweep,
    member_action,
    member_command,
    member_name,
    parse_grid,
    plan_members,
    split_values,
)

from conftest import RECIPES, TINY_DIGITS


def test_split_values_keeps_lists_and_quotes_together():
    assert split_values("1e-3,1e-4") == ["1e-3", "1e-4"]
    assert split_values("[8,16],[16,32]") == ["[8,16]", "[16,32]"]
    assert split_values("[8,16]") == ["[8,16]"]
    assert split_values("{a: 1, b: 2},x") == ["{a: 1, b: 2}", "x"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    with pytest.raises(SweepError, match="empty value"):
        split_values("1,,2")
    with pytest.raises(SweepError, match="Unbalanced"):
        split_values("[1,2")


def test_parse_grid_seeds_come_first_and_combine_with_m():
    base, grid = parse_grid(["train.epochs=2", "optimizer.lr=0.01,0.001", "model.backbone.channels=[8,16]"], "1,2,3")
    assert base == ["train.epochs=2", "model.backbone.channels=[8,16]"]
    assert grid == {"seed": ["1", "2", "3"], "optimizer.lr": ["0.01", "0.001"]}
    members = plan_members(grid)
    assert len(members) == 6  # the cartesian product, last key fastest
    assert [m.params for m in members[:3]] == [
        {"seed": "1", "optimizer.lr": "0.01"}, {"seed": "1", "optimizer.lr": "0.001"}, {"seed": "2", "optimizer.lr": "0.01"},
    ]
    assert members[1].name == "seed=1,optimizer.lr=0.001"
    assert members[1].overrides == ["seed=1", "optimizer.lr=0.001"]


@pytest.mark.parametrize(
    ("overrides", "seeds", "message"),
    [
        (["seed=1,2"], "3,4", "--seeds and -m seed"),
        (["train.epochs=2"], None, "needs at least one key with several values"),
        (["seed=5"], "1,2", "sets a key the sweep varies"),
        ([], "1,x", "whole numbers"),
        (["optimizer.lr=0.1,0.1"], None, "more than once"),
    ],
)
def test_parse_grid_errors(overrides, seeds, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(overrides, seeds)


def test_member_names_are_filesystem_safe_and_bounded():
    assert member_name({"data.root": "/tmp/my data", "x": "[8, 16]"}) == "data.root=_tmp_my_data,x=_8,_16_"
    long = member_name({"description": "y" * 300})
    assert len(long) == 120 and long != member_name({"description": "y" * 299})
    # names that only differ in unsafe characters still get their own directories
    members = plan_members({"x": ["a/b", "a b"]})
    assert [m.name for m in members] == ["x=a_b", "x=a_b-2"]


def test_member_action_and_commands(tmp_path):
    sweep = create_sweep(RECIPES / "baseline_digits.yaml", ["train.epochs=1"], {"seed": ["1", "2", "3"]}, tmp_path / "sw")
    assert (tmp_path / "sw" / "recipe" / "baseline_digits.yaml").read_text() == (RECIPES / "baseline_digits.yaml").read_text()
    one, two, three = sweep.members
    (sweep.member_dir(one)).mkdir()
    (sweep.member_dir(one) / "summary.json").write_text("{}")
    (sweep.member_dir(two) / "checkpoints").mkdir(parents=True)
    (sweep.member_dir(two) / "checkpoints" / "step_000003.safetensors").write_bytes(b"")
    (sweep.member_dir(three) / "checkpoints").mkdir(parents=True)  # started, crashed before a checkpoint
    assert [member_action(sweep, m) for m in sweep.members] == ["skip", "resume", "start"]
    resume = member_command(sweep, two, "resume")
    assert resume[-3:] == ["run", "--resume", str(sweep.member_dir(two).resolve())]
    start = member_command(sweep, three, "start", nproc=2)
    assert start[start.index("run") + 1] == str((sweep.path / "recipe" / "baseline_digits.yaml").resolve())
    assert start[-4:] == ["train.epochs=1", "seed=3", "--nproc", "2"]
    again = load_sweep(sweep.path)
    assert again.grid == sweep.grid and [m.name for m in again.members] == ["seed=1", "seed=2", "seed=3"]


def test_sweep_refuses_a_used_directory_and_bad_members(cli, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    used = cli("run", RECIPES / "baseline_digits.yaml", "--seeds", "1,2", "--out", tmp_path / "used")
    assert used.code == 2 and "already holds files" in used.err
    bad = cli("run", RECIPES / "baseline_digits.yaml", "-m", "nonsense.key=1,2", "--out", tmp_path / "new")
    assert bad.code == 2 and "unknown top-level key" in bad.err and "Sweep member nonsense.key=1" in bad.err
    assert not (tmp_path / "new").exists()  # nothing created before every member resolved
    jobs = cli("run", RECIPES / "baseline_digits.yaml", "--jobs", "2")
    assert jobs.code == 2 and "--jobs 2" in jobs.err


def test_print_config_shows_every_member(cli, tmp_path):
    result = cli("run", RECIPES / "baseline_digits.yaml", "--seeds", "4,5", "-m", "optimizer.lr=0.1,0.2", "--print-config")
    assert result.code == 0, result.err
    chunks = result.out.split("# --- sweep member ")[1:]
    assert [c.splitlines()[0] for c in chunks] == [
        "seed=4,optimizer.lr=0.1", "seed=4,optimizer.lr=0.2", "seed=5,optimizer.lr=0.1", "seed=5,optimizer.lr=0.2",
    ]
    configs = [yaml.safe_load(c.split("\n", 1)[1]) for c in chunks]
    assert [(c["seed"], c["optimizer"]["lr"]) for c in configs] == [(4, 0.1), (4, 0.2), (5, 0.1), (5, 0.2)]


def test_failed_members_are_reported_and_the_others_still_run(cli, tmp_path):
    # batch_size 0 and -1 fail when each member builds its recipe (exit 2), before any training;
    # two at a time, the first failure does not stop the second member
    out = tmp_path / "sw"
    result = cli("run", RECIPES / "baseline_digits.yaml", "-m", "train.batch_size=0,-1", "--jobs", "2", "--out", out)
    assert result.code == 1
    record = json.loads((out / "sweep.json").read_text())
    assert [(m["status"], m["exit_code"]) for m in record["members"]] == [("failed", 2), ("failed", 2)]
    for member in ("train.batch_size=0", "train.batch_size=-1"):
        log = out / "logs" / f"{member}.log"
        assert "batch_size must be at least 1" in log.read_text()
        assert f"member {member} failed" in result.err and f"{member}.log" in result.err
    assert "jemkit run --resume" in result.err


def test_sweep_trains_resumes_and_compares(cli, tmp_path):
    out = tmp_path / "sweep"
    result = cli("run", RECIPES / "jem_digits.yaml", *TINY_DIGITS, "--seeds", "1,2", "--jobs", "1", "--out", out)
    assert result.code == 0, result.out + result.err
    record = json.loads((out / "sweep.json").read_text())
    assert record["grid"] == {"seed": ["1", "2"]} and record["base_overrides"] == TINY_DIGITS
    assert [(m["dir"], m["status"], m["exit_code"]) for m in record["members"]] == [
        ("seed=1", "completed", 0), ("seed=2", "completed", 0),
    ]
    summaries = {}
    for seed in (1, 2):
        run = out / f"seed={seed}"
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        summaries[seed] = json.loads((run / "summary.json").read_text())
        assert summaries[seed]["steps"] == 3
    assert "test/acc" in result.out and "±" in result.out  # the sweep ends with the comparison

    # a member that lost its summary (stopped at its last checkpoint) is resumed; the other skipped
    (out / "seed=2" / "summary.json").unlink()
    shutil.rmtree(out / "seed=2" / "samples")
    again = cli("run", "--resume", out)
    assert again.code == 0, again.out + again.err
    assert "seed=1: done already" in again.out and "seed=2: resumed" in again.out
    assert (out / "logs" / "seed=1.log").read_text().count("=== ") == 1
    assert "resume: " in (out / "logs" / "seed=2.log").read_text()
    resumed = json.loads((out / "seed=2" / "summary.json").read_text())
    assert resumed["steps"] == 3 and resumed["test/acc"] == summaries[2]["test/acc"]

    compared = cli("compare", out)
    assert compared.code == 0, compared.err
    assert "test/acc" in compared.out and "±" in compared.out
    stats = json.loads(cli("compare", out, "--json", "--metrics", "test/acc").out)["groups"][0]["metrics"]["test/acc"]
    accs = [summaries[1]["test/acc"], summaries[2]["test/acc"]]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(accs) / 2)
    assert stats["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
