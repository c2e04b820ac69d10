"""Plugin state in checkpoints (jemkit_save_state / jemkit_load_state) and the built-in ema plugin:
saved at every checkpoint under the plugin's name, handed back on resume and rollback, a resumed
EMA run bit-identical to an uninterrupted one, and the averaged weights used when a run is opened."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
from torch import nn

from jemkit import hookimpl
from jemkit.checkpoint import list_checkpoints, load_checkpoint
from jemkit.config import load_recipe
from jemkit.culprit import PluginCodeError
from jemkit.guard import Trip
from jemkit.plugin_manager import load_plugins
from jemkit.run_open import open_run
from jemkit.train import Trainer
from jemkit_plugins.training.ema import EMAParams, WeightAverage

from conftest import RECIPES, TINY_DIGITS

pytestmark = pytest.mark.usefixtures("one_thread")

#: Tiny digits runs in a fixed precision (so that two runs compute the same numbers), with checkpoints.
COMMON = [
    *TINY_DIGITS[:-4],
    "train.log_every=1",
    "train.sample_extra_steps=0",
    "train.batch_size=16",
    "train.samples_per_class=1",
    "performance.autocast=none",
    "performance.channels_last=false",
]
EMA = "ema={decay: 0.75, use_for_eval: true}"


def _final(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1]).state


# --------------------------------------------------------------------------- generic plugin state


class Counter:
    """A stateful plugin: counts its steps in a tensor and a nested dict, saves and restores them."""

    def __init__(self) -> None:
        self.count = torch.zeros(2)
        self.meta = {"steps": [], "name": "counter"}
        self.loaded: list[tuple[int, dict]] = []
        self.events: list[str] = []

    @hookimpl
    def jemkit_run_start(self, run):
        self.events.append("start")

    @hookimpl
    def jemkit_step_end(self, run, step):
        self.count += torch.tensor([1.0, float(step)])
        self.meta["steps"].append(step)

    @hookimpl
    def jemkit_save_state(self, run):
        return {"count": self.count.clone(), "meta": {"steps": list(self.meta["steps"]), "name": self.meta["name"]}}

    @hookimpl
    def jemkit_load_state(self, run, state):
        self.events.append("load")
        self.loaded.append((run.step, state))
        if state:
            self.count = state["count"].clone()
            self.meta = {"steps": list(state["meta"]["steps"]), "name": state["meta"]["name"]}


def test_plugin_state_is_saved_under_the_plugin_name_and_restored_on_resume(tmp_path):
    first = Counter()
    plugins = load_plugins([("counter", first)], entry_points=False)
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*COMMON, "train.max_steps=3"])
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    trainer.prepare_run_dir()
    trainer.fit()
    saved = _final(tmp_path / "run")["plugins"]["counter"]
    assert torch.equal(saved["count"], torch.tensor([3.0, 6.0])) and saved["meta"] == {"steps": [1, 2, 3], "name": "counter"}
    assert first.loaded == [], "a fresh run restores nothing"

    second = Counter()
    again = load_plugins([("counter", second)], entry_points=False)
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*COMMON, "train.max_steps=5"])
    resumed = Trainer(again, cfg, tmp_path / "run")
    resumed.resume_from_latest()
    assert [step for step, _ in second.loaded] == [3], "run.step is the checkpoint's step while loading"
    assert second.meta["steps"] == [1, 2, 3] and torch.equal(second.count, torch.tensor([3.0, 6.0]))
    resumed.fit()
    assert second.events == ["load", "start"], "state comes back before run_start"
    assert torch.equal(_final(tmp_path / "run")["plugins"]["counter"]["count"], torch.tensor([5.0, 15.0]))


def test_plugin_state_comes_back_on_rollback_and_an_empty_one_for_a_plugin_that_saved_none(tmp_path):
    counter = Counter()
    silent = types.SimpleNamespace(loads=[])

    @hookimpl
    def jemkit_load_state(run, state):
        silent.loads.append(state)

    silent.jemkit_load_state = jemkit_load_state
    plugins = load_plugins([("counter", counter), ("silent", silent)], entry_points=False)
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*COMMON, "train.max_steps=3", "train.checkpoint_every_steps=2"])
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    trainer.prepare_run_dir()
    trainer.fit()  # checkpoints at steps 0, 2 and 3 (the end)
    counter.count += 100
    trainer.rollback(Trip(4, "a test trip"))
    assert trainer.step == 3 and torch.equal(counter.count, torch.tensor([3.0, 6.0]))
    assert silent.loads == [{}], "a plugin that saved nothing gets an empty mapping"


def test_state_a_checkpoint_cannot_hold_names_the_plugin(tmp_path):
    bad = types.SimpleNamespace()

    @hookimpl
    def jemkit_save_state(run):
        return {"model": run.model}  # a module, not its state dict

    bad.jemkit_save_state = jemkit_save_state
    plugins = load_plugins([("keeper", bad)], entry_points=False)
    trainer = Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", [*COMMON, "train.max_steps=1"]), tmp_path / "run")
    trainer.prepare_run_dir()
    with pytest.raises(PluginCodeError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert "hook jemkit_save_state (plugin 'keeper')" in message and "JointEnergyModel" in message
    assert "['keeper']['model']" in message


# --------------------------------------------------------------------------- the ema plugin


def test_weight_average_moves_by_one_minus_decay_per_step():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(2.0)
    average = WeightAverage.start(EMAParams(decay=0.5), model)
    for value in (4.0, 8.0):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
    # 2 -> 0.5 * 2 + 0.5 * 4 = 3 -> 0.5 * 3 + 0.5 * 8 = 5.5
    assert average.averages["weight"].item() == 5.5 and average.updates == 2
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        EMAParams(decay=1.0)


def test_a_resumed_ema_run_ends_bit_identical_to_an_uninterrupted_one(cli, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", full, *COMMON, EMA, "train.max_steps=6").code == 0
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", part, *COMMON, EMA, "train.max_steps=3").code == 0
    halfway = _final(part)["plugins"]["ema"]
    assert halfway["updates"] == 3
    resumed = cli("run", "--resume", part, "train.max_steps=6")
    assert resumed.code == 0, resumed.err
    a, b = _final(full), _final(part)
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ema_a, ema_b = a["plugins"]["ema"], b["plugins"]["ema"]
    assert ema_a["updates"] == ema_b["updates"] == 6
    assert set(ema_a["averages"]) == set(a["model"])
    for key in ema_a["averages"]:
        assert torch.equal(ema_a["averages"][key], ema_b["averages"][key]), key
    weight = "head.linear.weight" if "head.linear.weight" in a["model"] else next(iter(a["model"]))
    assert not torch.equal(ema_a["averages"][weight], a["model"][weight]), "the average lags the weights"


def test_without_an_ema_section_nothing_is_averaged_or_saved(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", run, *COMMON, "train.max_steps=2").code == 0
    assert "plugins" not in _final(run) or "ema" not in _final(run)["plugins"]


def test_eval_sample_and_api_open_the_averaged_weights_when_the_recipe_asks(plugins, cli, tmp_path):
    run = tmp_path / "run"
    assert cli("run", RECIPES / "jem_digits.yaml", "--out", run, *COMMON, EMA, "train.max_steps=3").code == 0
    state = _final(run)
    opened = open_run(plugins, run)
    assert opened.weights_from == "ema"
    for key, value in opened.model.state_dict().items():
        assert torch.equal(value, state["plugins"]["ema"]["averages"][key]), key
    assert any(not torch.equal(state["model"][k], state["plugins"]["ema"]["averages"][k]) for k in state["model"])
    import jemkit

    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(jemkit.load_run(run, device="cpu").model.classify(x), opened.model(x)), "the Python API too"

    trained = tmp_path / "trained"
    assert cli(
        "run", RECIPES / "jem_digits.yaml", "--out", trained, *COMMON, "ema={decay: 0.75, use_for_eval: false}",
        "train.max_steps=3",
    ).code == 0
    plain = open_run(plugins, trained)
    assert plain.weights_from is None
    final = _final(trained)
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, final["model"][key]), key


def test_a_bad_ema_section_is_a_recipe_error(cli, tmp_path):
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", tmp_path / "run", *COMMON, "ema={decay: 1.5}")
    assert result.code == 2 and "Traceback" not in result.err
    assert "decay must lie strictly between 0 and 1" in " ".join(result.err.split())
    typo = cli("run", RECIPES / "jem_digits.yaml", "--out", tmp_path / "typo", *COMMON, "ema={decai: 0.9}")
    assert typo.code == 2 and "ema.decai" in typo.err and "Did you mean 'decay'" in " ".join(typo.err.split())
