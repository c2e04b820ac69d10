"""The ``jemkit_summary_entries`` hook: plugins add entries to ``summary.json`` before it is written."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from jemkit import hookimpl
from jemkit.config import load_recipe
from jemkit.culprit import PluginCodeError
from jemkit.plugin_hooks import json_value
from jemkit.plugin_manager import load_plugins
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS


def _plugin(entries):
    seen: dict[str, object] = {}

    @hookimpl
    def jemkit_summary_entries(run, summary):
        seen["before"] = dict(summary)
        return entries

    @hookimpl
    def jemkit_run_end(run, summary):
        seen["end"] = dict(summary)

    return types.SimpleNamespace(jemkit_summary_entries=jemkit_summary_entries, jemkit_run_end=jemkit_run_end), seen


def _train(tmp_path, plugin):
    plugins = load_plugins([("adder", plugin)], entry_points=False)
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS), tmp_path / "run")
    trainer.prepare_run_dir()
    return trainer.fit()


def test_a_plugins_entries_join_the_summary_file_and_run_end(tmp_path):
    plugin, seen = _plugin({"adder/score": torch.tensor(0.25), "adder/list": [1, np.float64(2.5)], "adder/nan": float("nan")})
    returned = _train(tmp_path, plugin)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert seen["before"]["steps"] == 3 and "adder/score" not in seen["before"]
    for summary in (returned, written, seen["end"]):
        assert summary["adder/score"] == 0.25 and summary["adder/list"] == [1, 2.5] and summary["adder/nan"] == "nan"
        assert summary["steps"] == 3


@pytest.mark.parametrize(
    "entries, problem",
    [({"steps": 7}, "'steps' is not a new string key"), ({"adder/x": object()}, "['adder/x'] is a object"), ([1], "returned a list")],
)
def test_a_bad_entry_names_the_plugin(tmp_path, entries, problem):
    plugin, _ = _plugin(entries)
    with pytest.raises(PluginCodeError) as caught:
        _train(tmp_path, plugin)
    message = str(caught.value)
    assert "adder" in message and "jemkit_summary_entries" in message and problem in message
    assert not (tmp_path / "run" / "summary.json").exists()


def test_json_value_turns_tensors_and_numpy_into_plain_json():
    value = {"a": (torch.tensor(3), np.int64(4)), "b": [float("inf"), True, None, "x"]}
    assert json_value(value, ("k",)) == {"a": [3, 4], "b": ["inf", True, None, "x"]}
    json.dumps(json_value(value, ("k",)), allow_nan=False)
    with pytest.raises(TypeError, match=r"\['k'\]\['a'\]"):
        json_value({"a": torch.ones(2)}, ("k",))
