"""Registry and plugin-manager behaviour: duplicates, did-you-mean, broken plugins."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass

import pytest

from jemkit import hookimpl
from jemkit.errors import RegistryError
from jemkit.plugin_manager import BUILTIN_PLUGINS, load_plugins
from jemkit.registry import KINDS, Registry


@dataclass
class _Params:
    size: int = 3


def _factory(params, context):
    """A test component."""
    return params


def test_register_and_get():
    registry = Registry("transition")
    registry.register("mala", _factory, params=_Params)
    component = registry.get("mala")
    assert component.factory is _factory
    assert component.description == "A test component."
    assert registry.names() == ["mala"]


def test_duplicate_name_is_an_error():
    registry = Registry("transition")
    registry.current_plugin = "first"
    registry.register("mala", _factory)
    registry.current_plugin = "second"
    with pytest.raises(RegistryError, match="'first' and 'second'"):
        registry.register("mala", _factory)


def test_unknown_name_suggests_close_match_and_list_plugins():
    registry = Registry("chain_init")
    registry.register("replay_buffer", _factory)
    registry.register("uniform", _factory)
    with pytest.raises(RegistryError) as info:
        registry.get("replay_bufer")
    message = str(info.value)
    assert "Did you mean 'replay_buffer'" in message
    assert "jemkit list-plugins" in message


def test_params_must_be_dataclass():
    registry = Registry("loss")
    with pytest.raises(RegistryError, match="not a dataclass"):
        registry.register("bad", _factory, params=dict)


def test_every_builtin_kind_is_populated(plugins):
    for kind in KINDS:
        assert len(plugins.registries[kind]) > 0, kind
    assert set(plugins.origins) >= {m.rsplit(".", 1)[-1] for m in BUILTIN_PLUGINS}


def test_plugin_failing_at_import_is_reported_and_others_work():
    loaded = load_plugins(builtins=(*BUILTIN_PLUGINS, "jemkit_plugins.does_not_exist"), entry_points=False)
    assert [f.plugin for f in loaded.failures] == ["does_not_exist"]
    assert "ModuleNotFoundError" in loaded.failures[0].error
    assert "sgld" in loaded.registries["transition"]


def test_plugin_failing_while_registering_is_skipped():
    broken = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_transitions(registry):
        raise RuntimeError("boom during registration")

    broken.jemkit_register_transitions = jemkit_register_transitions
    loaded = load_plugins([("broken", broken)], entry_points=False)
    assert len(loaded.failures) == 1
    assert loaded.failures[0].plugin == "broken"
    assert "boom during registration" in loaded.failures[0].error
    assert "sgld" in loaded.registries["transition"]


def test_misspelled_hook_is_rejected():
    typo = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_transition(registry):  # missing trailing "s"
        pass

    typo.jemkit_register_transition = jemkit_register_transition
    loaded = load_plugins([("typo", typo)], entry_points=False)
    assert [f.plugin for f in loaded.failures] == ["typo"]
    assert "jemkit_register_transitions" in loaded.failures[0].error


def test_duplicate_component_from_second_plugin_is_reported():
    shadow = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_transitions(registry):
        registry.register("sgld", _factory)

    shadow.jemkit_register_transitions = jemkit_register_transitions
    loaded = load_plugins([("shadow", shadow)], entry_points=False)
    assert [f.plugin for f in loaded.failures] == ["shadow"]
    assert "Two plugins register a transition named 'sgld'" in loaded.failures[0].error
    assert loaded.registries["transition"].get("sgld").plugin == "sampling"


def test_list_plugins_json(cli):
    result = cli("list-plugins", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    keys = {"plugin", "origin", "kind", "name", "description"}
    assert all(set(row) == keys for row in rows)
    names = {(row["kind"], row["name"]) for row in rows}
    for expected in [
        ("backbone", "wrn"),
        ("backbone", "convnet"),
        ("head", "linear"),
        ("transition", "sgld"),
        ("chain_init", "uniform"),
        ("chain_init", "replay_buffer"),
        ("loss", "jem"),
        ("loss", "cross_entropy"),
        ("data", "digits"),
        ("data", "cifar10"),
        ("optimizer", "adam"),
        ("optimizer", "sgd"),
    ]:
        assert expected in names
    sgld = next(r for r in rows if r["name"] == "sgld")
    assert sgld["origin"] == "built-in" and sgld["description"]


def test_list_plugins_table(cli):
    result = cli("list-plugins")
    assert result.code == 0
    assert "replay_buffer" in result.out and "built-in" in result.out
