"""Errors that name the culprit: an exception inside a plugin's code (factory, transition step,
backbone, loss, hook) is one paragraph naming the component, its kind, the plugin, the package and
version and the recipe key, then the plugin's own frames (all of them with --debug); a transition
that returns NaN is named; an uninstalled plugin package recorded by a run says what to install."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from jemkit import hookimpl
from jemkit.config import load_recipe, read_run_config
from jemkit.contracts import Backbone, StepResult, Transition, energy_and_grad
from jemkit.culprit import Culprit, PluginCodeError, blame, describe_nonfinite_chains
from jemkit.errors import JemkitError, RecipeError, RegistryError
from jemkit.plugin_manager import load_plugins
from jemkit.registry import missing_plugin_packages, unknown_name_error, with_install_hint
from jemkit.run_open import open_run
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).name
TINY = [*TINY_DIGITS, "train.max_steps=2", "performance.autocast=none", "performance.channels_last=false"]
PACKAGE = ("jemkit-boomer", "1.2.3")


def _tiny(*overrides: str) -> list[str]:
    """The tiny overrides plus ``overrides``, without the backbone's when they pick another backbone."""
    other_backbone = any(o.startswith("model.backbone=") for o in overrides)
    return [*(o for o in TINY if not (other_backbone and o.startswith("model.backbone."))), *overrides]


def _kick(x: torch.Tensor) -> torch.Tensor:
    return x / (1 // int(x.numel() < 0))  # 1 // 0: the plugin's own bug, two frames deep


class ExplodingStep(Transition):
    def step(self, x, energy_fn):
        energy, grad = energy_and_grad(energy_fn, x)
        return StepResult(_kick(x - grad), energy, grad.flatten(1).norm(dim=1).mean())


class NanAtSecondStep(Transition):
    """Finite on odd calls, NaN chains on even ones: with K = 2 the second step of a call breaks."""

    def __init__(self) -> None:
        self.calls = 0

    def step(self, x, energy_fn):
        self.calls += 1
        energy, grad = energy_and_grad(energy_fn, x)
        out = x - 0.1 * grad
        if self.calls % 2 == 0:
            out = out * math.nan
        return StepResult(out, energy, grad.flatten(1).norm(dim=1).mean())


class BrokenBackbone(Backbone):
    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 16
        self.linear = nn.Linear(64, 16)

    def forward(self, x):
        if self.training:
            raise IndexError("feature slot 64 out of range")
        return self.linear(x.flatten(1))


class MlpBackbone(Backbone):
    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 16
        self.linear = nn.Linear(64, 16)

    def forward(self, x):
        return torch.relu(self.linear(x.flatten(1)))


@dataclass
class _NoParams:
    pass


def _fragile(params, context):
    """Needs a driver it does not find."""
    raise RuntimeError("libfancy.so: cannot open shared object file")


def boomer_plugin(**hooks) -> types.SimpleNamespace:
    """An outside plugin: transitions, a backbone, a fragile factory, and any extra hooks."""
    plugin = types.SimpleNamespace(**hooks)

    @hookimpl
    def jemkit_register_transitions(registry):
        registry.register("explode", lambda params, context: ExplodingStep())
        registry.register("nan_step", lambda params, context: NanAtSecondStep())
        registry.register("fragile", _fragile, params=_NoParams)

    @hookimpl
    def jemkit_register_backbones(registry):
        registry.register("broken", lambda params, context: BrokenBackbone())

    plugin.jemkit_register_transitions = jemkit_register_transitions
    plugin.jemkit_register_backbones = jemkit_register_backbones
    return plugin


def _plugins(**hooks):
    loaded = load_plugins([("boomer", boomer_plugin(**hooks))], entry_points=False)
    loaded.distributions["boomer"] = PACKAGE  # as if installed from the package jemkit-boomer 1.2.3
    return loaded


def _train(plugins, tmp_path, *overrides):
    recipe = RECIPES / "jem_digits.yaml"
    trainer = Trainer(plugins, load_recipe(recipe, _tiny(*overrides)), tmp_path / "run", source=str(recipe))
    trainer.prepare_run_dir()
    return trainer.fit()


# --------------------------------------------------------------------------- the paragraph


def test_an_exception_in_a_transition_names_it_its_plugin_package_and_key(tmp_path):
    with pytest.raises(PluginCodeError) as caught:
        _train(_plugins(), tmp_path, "sampler.transition.name=explode")
    error = caught.value
    message = str(error)
    assert "\n" not in message, "one paragraph"
    assert "transition 'explode' (plugin 'boomer' from package jemkit-boomer 1.2.3;" in message
    assert f"recipe key sampler.transition in {RECIPES / 'jem_digits.yaml'}" in message
    assert "raised ZeroDivisionError: integer division or modulo by zero in training step 1" in message
    assert "not in jemkit: report it to the authors of jemkit-boomer" in message and "sampler.transition.name" in message
    assert isinstance(error.error, ZeroDivisionError) and error.__cause__ is error.error
    assert error.culprit == Culprit(
        "transition", "explode", "boomer", *PACKAGE, "sampler.transition", str(RECIPES / "jem_digits.yaml"),
        error.culprit.files,
    )
    frames = error.traceback_text()
    assert frames.startswith("Traceback (the plugin's frames")
    assert "in _kick" in frames and "in step" in frames and HERE in frames
    assert "train.py" not in frames and "sampler.py" not in frames, "only the plugin's own frames"
    assert frames.rstrip().endswith("ZeroDivisionError: integer division or modulo by zero")
    full = error.traceback_text(full=True)
    assert "train.py" in full and "sampler.py" in full and "in _kick" in full


def test_a_backbone_reached_through_the_loss_is_named_not_the_loss(tmp_path):
    with pytest.raises(PluginCodeError) as caught:
        _train(_plugins(), tmp_path, "model.backbone={name: broken}")
    message = str(caught.value)
    assert message.startswith("The backbone 'broken' (plugin 'boomer' from package jemkit-boomer 1.2.3; recipe key model.backbone")
    assert "raised IndexError: feature slot 64 out of range" in message


def test_an_exception_in_a_factory_names_the_component(tmp_path):
    plugins = _plugins()
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*TINY, "sampler.transition={name: fragile}"])
    with pytest.raises(PluginCodeError) as caught:
        Trainer(plugins, cfg, tmp_path / "run")
    message = str(caught.value)
    assert "transition 'fragile' (plugin 'boomer' from package jemkit-boomer 1.2.3; recipe key sampler.transition" in message
    assert "raised RuntimeError: libfancy.so: cannot open shared object file while its factory built it" in message
    assert "in _fragile" in caught.value.traceback_text()


def test_an_exception_in_a_hook_names_the_hook_and_plugin(tmp_path):
    @hookimpl
    def jemkit_step_end(run, step, metrics):
        if step == 2:
            metrics["train/nonexistent"]

    with pytest.raises(PluginCodeError) as caught:
        _train(_plugins(jemkit_step_end=jemkit_step_end), tmp_path)
    message = str(caught.value)
    assert message.startswith("The hook jemkit_step_end (plugin 'boomer' from package jemkit-boomer 1.2.3) raised KeyError")
    assert "after an optimiser step" in message and "report it to the authors of jemkit-boomer" in message
    assert "in jemkit_step_end" in caught.value.traceback_text()


def test_a_jemkit_error_a_plugin_raises_on_purpose_keeps_its_message(tmp_path):
    @hookimpl
    def jemkit_run_start(run):
        raise RecipeError("boomer needs `boomer: {level: 3}` in the recipe.")

    with pytest.raises(RecipeError, match=r"^boomer needs `boomer: \{level: 3\}` in the recipe.$"):
        _train(_plugins(jemkit_run_start=jemkit_run_start), tmp_path)


def test_blame_passes_through_when_nobody_is_known():
    with pytest.raises(KeyError):
        with blame(None, "testing"):
            {}["x"]
    culprit = Culprit("loss", "jem", "losses", "jemkit", "0.1.0", "loss", "r.yaml")
    with pytest.raises(PluginCodeError, match=r"^The loss 'jem' \(plugin 'losses', built into jemkit 0.1.0; recipe key loss in r.yaml\)"):
        with blame(culprit, "testing"):
            {}["x"]


# --------------------------------------------------------------------------- the command line


def test_the_command_line_prints_the_paragraph_and_the_plugin_frames(cli, monkeypatch, tmp_path):
    monkeypatch.setattr("jemkit.cli.run.load_plugins", _plugins)
    args = ["run", RECIPES / "jem_digits.yaml", *TINY, "sampler.transition.name=explode"]
    short = cli(*args, "--out", tmp_path / "a")
    assert short.code == 2
    err = " ".join(short.err.split())
    assert "error: The transition 'explode' (plugin 'boomer' from package jemkit-boomer 1.2.3;" in err
    assert "Traceback (the plugin's frames, most recent call last)" in short.err and "in _kick" in short.err
    assert "train.py" not in short.err
    debug = cli("--debug", *args, "--out", tmp_path / "b")
    assert debug.code == 2 and "Traceback (most recent call last)" in debug.err
    assert "train.py" in debug.err and "in _kick" in debug.err
    after = cli(*args, "--out", tmp_path / "c", "--debug")
    assert after.code == 2 and "train.py" in after.err, "--debug is accepted after the command too"


# --------------------------------------------------------------------------- non-finite chains


def test_a_transition_returning_nan_is_named(tmp_path):
    with pytest.raises(JemkitError) as caught:
        _train(_plugins(), tmp_path, "sampler.transition.name=nan_step", "guard.enabled=false")
    message = " ".join(str(caught.value).split())
    assert "transition 'nan_step' (plugin 'boomer' from package jemkit-boomer 1.2.3" in message
    assert "returned non-finite chains, energies or gradient norms at step 2 of 2" in message


def test_the_sampler_records_the_first_nonfinite_step_without_reading_it():
    from jemkit.sampler import Sampler
    from jemkit_plugins.samplers.sampling import UniformNoise

    init = UniformNoise((2,))
    sampler = Sampler(init, NanAtSecondStep(), steps=3)
    centres = torch.zeros(1, 2)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def energy(self, x, y=None):
            return 0.5 * self.w * (x - centres).pow(2).sum(1)

    sampler.sample(Quadratic(), 4)
    assert isinstance(sampler.last_nonfinite_step, torch.Tensor) and int(sampler.last_nonfinite_step) == 2
    assert describe_nonfinite_chains(sampler) == (
        "the sampler's transition returned non-finite chains, energies or gradient norms at step 2 of 3"
    )
    finite = Sampler(init, ExplodingStep(), steps=0)
    finite.sample(Quadratic(), 4)
    assert finite.last_nonfinite_step is None and describe_nonfinite_chains(finite) is None


# --------------------------------------------------------------------------- uninstalled plugin packages


def _resmlp_plugins():
    plugin = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_backbones(registry):
        registry.register("resmlp", lambda params, context: MlpBackbone())

    plugin.jemkit_register_backbones = jemkit_register_backbones
    loaded = load_plugins([("jemkit_resmlp", plugin)], entry_points=False)
    loaded.origins["jemkit_resmlp"] = "jemkit-resmlp 0.3.1"  # as an installed package records itself
    loaded.distributions["jemkit_resmlp"] = ("jemkit-resmlp", "0.3.1")
    return loaded


@pytest.fixture(scope="module")
def resmlp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resmlp") / "run"
    cfg = load_recipe(RECIPES / "jem_digits.yaml", _tiny("model.backbone={name: resmlp}", "train.max_steps=1"))
    trainer = Trainer(_resmlp_plugins(), cfg, run_dir)
    trainer.prepare_run_dir()
    trainer.fit()
    return run_dir


def _says_what_to_install(text: str) -> None:
    text = " ".join(text.split())
    assert "Unknown backbone 'resmlp': the run was made with plugin 'jemkit_resmlp' from jemkit-resmlp 0.3.1" in text
    assert "`pip install 'jemkit-resmlp==0.3.1'`" in text
    assert "Did you mean" not in text


def test_opening_a_run_whose_plugin_package_is_gone_says_what_to_install(plugins, resmlp_run):
    with pytest.raises(RegistryError) as caught:
        open_run(plugins, resmlp_run)
    _says_what_to_install(str(caught.value))
    assert f"{resmlp_run / 'config.yaml'}, key model.backbone.name" in str(caught.value)


def test_resuming_a_run_whose_plugin_package_is_gone_says_what_to_install(plugins, resmlp_run, cli, monkeypatch):
    with pytest.raises(RegistryError) as caught:
        Trainer(plugins, read_run_config(resmlp_run), resmlp_run)
    _says_what_to_install(str(caught.value))
    monkeypatch.setattr("jemkit.cli.run.load_plugins", lambda: plugins)
    result = cli("run", "--resume", resmlp_run)
    assert result.code == 2 and "Traceback" not in result.err
    _says_what_to_install(result.err)


def test_install_hint_only_for_recorded_packages_that_are_missing_or_differ():
    error = unknown_name_error("resmlp", ["mlp", "wrn"], "backbone", "r.yaml, key model.backbone.name")
    recorded = {"backbones": "built-in", "jemkit_resmlp": "jemkit-resmlp 0.3.1", "probe": "in-process"}
    assert missing_plugin_packages(recorded, {"backbones": "built-in", "jemkit_resmlp": "jemkit-resmlp 0.3.1"}) == []
    assert with_install_hint(error, recorded, {"jemkit_resmlp": "jemkit-resmlp 0.3.1"}) is error
    older = with_install_hint(error, recorded, {"jemkit_resmlp": "jemkit-resmlp 0.2.0"})
    assert "from jemkit-resmlp 0.3.1 (installed now: jemkit-resmlp 0.2.0)" in str(older)
    assert str(older).startswith("r.yaml, key model.backbone.name: Unknown backbone 'resmlp'")
    assert "installed backbone components: mlp, wrn" in str(older)
