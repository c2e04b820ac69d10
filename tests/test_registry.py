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


# --------------------------------------------------------------------------- all-or-nothing registration


def _half_registering_plugin():
    """Registers a backbone and a transition, then collides with the built-in 'sgld'."""
    half = types.SimpleNamespace()
    started = []

    @hookimpl
    def jemkit_register_backbones(registry):
        registry.register("half_backbone", _factory)

    @hookimpl
    def jemkit_register_transitions(registry):
        registry.register("half_step", _factory)
        registry.register("sgld", _factory)

    @hookimpl
    def jemkit_run_start(run):
        started.append(run)

    half.jemkit_register_backbones = jemkit_register_backbones
    half.jemkit_register_transitions = jemkit_register_transitions
    half.jemkit_run_start = jemkit_run_start
    return half, started


def test_a_plugin_failing_part_way_keeps_none_of_its_components():
    half, started = _half_registering_plugin()
    loaded = load_plugins([("half", half)], entry_points=False)
    assert [(f.plugin, f.stage) for f in loaded.failures] == [("half", "register")]
    error = loaded.failures[0].error
    assert "Two plugins register a transition named 'sgld'" in error
    assert "backbone 'half_backbone'" in error and "transition 'half_step'" in error
    assert "half_backbone" not in loaded.registries["backbone"]
    assert "half_step" not in loaded.registries["transition"]
    assert loaded.registries["transition"].get("sgld").plugin == "sampling"
    assert "half" not in loaded.origins and not loaded.manager.has_plugin("half")
    loaded.hook.jemkit_run_start(run="probe")
    assert started == [], "a skipped plugin's lifecycle hooks must not run"
    assert len(loaded.registries["backbone"]) == len(load_plugins(entry_points=False).registries["backbone"])


def test_list_plugins_json_stays_a_list_of_rows_when_a_plugin_fails(cli, monkeypatch):
    half, _ = _half_registering_plugin()
    loaded = load_plugins([("half", half)])
    monkeypatch.setattr("jemkit.cli.list_plugins.load_plugins", lambda: loaded)
    result = cli("list-plugins", "--json")
    assert result.code == 0
    rows = json.loads(result.out)
    assert isinstance(rows, list) and all(set(row) == {"plugin", "origin", "kind", "name", "description"} for row in rows)
    assert not [row for row in rows if row["plugin"] == "half"]
    assert "Plugin 'half' (in-process) was skipped" in result.err


def _described_plugin():
    plugin = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_transitions(registry):
        registry.register("boxed_step", _factory, description="samples clamped to [low, high], [bold]noise[/bold] off")

    @hookimpl
    def jemkit_register_backbones(registry):
        raise RuntimeError("needs [cuda] extras")

    plugin.jemkit_register_transitions = jemkit_register_transitions
    broken = types.SimpleNamespace(jemkit_register_backbones=jemkit_register_backbones)
    return load_plugins([("boxed", plugin), ("broken", broken)], entry_points=False)


def test_rich_output_shows_descriptions_and_errors_literally(cli, monkeypatch):
    loaded = _described_plugin()
    monkeypatch.setattr("jemkit.cli.list_plugins.load_plugins", lambda: loaded)
    monkeypatch.setenv("COLUMNS", "250")
    table = cli("list-plugins", "boxed_step")
    assert "samples clamped to [low, high], [bold]noise[/bold] off" in table.out
    assert "needs [cuda] extras" in table.err
    params = cli("list-plugins", "--params", "boxed_step")
    assert "samples clamped to [low, high], [bold]noise[/bold] off" in params.out


# --------------------------------------------------------------------------- plugin subcommands


def _command_plugin(name, *, handler=True, fail_after=False):
    plugin = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_commands(subparsers):
        parser = subparsers.add_parser(name, help="a probe command")
        parser.add_argument("--times", type=int, default=1)
        if handler:
            parser.set_defaults(handler=lambda args, console, errors: console.print("probe " * args.times) or 0)
        if fail_after:
            raise RuntimeError("broke after adding its command")

    plugin.jemkit_register_commands = jemkit_register_commands
    return plugin


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (_command_plugin("run"), "conflicting subparser: run"),
        (_command_plugin("probe-x", handler=False), "have no handler"),
        (_command_plugin("probe-y", fail_after=True), "broke after adding its command"),
    ],
    ids=["name-taken", "no-handler", "raises"],
)
def test_a_plugin_command_that_cannot_be_added_is_reported_and_none_of_it_stays(plugin, reason):
    from jemkit.cli import builtin_parser
    from jemkit.plugin_manager import register_commands

    parser, commands = builtin_parser()
    builtin = dict(commands.choices)
    loaded = load_plugins([("probe", plugin)], entry_points=False)
    assert register_commands(loaded, commands) == {}
    assert commands.choices == builtin
    assert [(f.plugin, f.stage) for f in loaded.failures] == [("probe", "commands")]
    assert reason in loaded.failures[0].error and "none of its commands were added" in loaded.failures[0].error
    assert "probe-x" not in parser.format_help() and "probe-y" not in parser.format_help()


def test_a_plugin_command_runs_through_the_jemkit_command_line(cli, monkeypatch):
    loaded = load_plugins([("probe", _command_plugin("probe-cmd"))], entry_points=False)
    monkeypatch.setattr("jemkit.plugin_manager.load_plugins", lambda: loaded)
    result = cli("probe-cmd", "--times", "3")
    assert result.code == 0, result.err
    assert result.out.split() == ["probe", "probe", "probe"]


# --------------------------------------------------------------------------- recipe names


def test_unknown_name_names_the_recipe_file_and_key(cli, tmp_path):
    from conftest import RECIPES

    result = cli("run", RECIPES / "jem_digits.yaml", "sampler.transition.name=sgldd", "--out", tmp_path / "run")
    assert result.code == 2 and "Traceback" not in result.err
    assert "jem_digits.yaml, key sampler.transition.name: Unknown transition 'sgldd'" in result.err.replace("\n", " ")
    assert "Did you mean 'sgld'" in result.err


def test_switching_a_component_name_says_which_keys_were_dropped(cli):
    from conftest import RECIPES

    recipe = RECIPES / "jem_digits.yaml"
    switched = cli("run", recipe, "sampler.transition.name=langevin", "--print-config")
    assert switched.code == 0
    message = " ".join(switched.err.split())
    assert "sampler.transition.name=langevin replaces the 'sgld' section sampler.transition" in message
    assert "its keys step_size, noise are dropped" in message
    kept = cli("run", recipe, "sampler.transition.name=langevin", "sampler.transition.step_size=0.01", "--print-config")
    assert "its keys noise are dropped" in " ".join(kept.err.split())
    same = cli("run", recipe, "sampler.transition.name=sgld", "--print-config")
    assert same.code == 0 and "dropped" not in same.err
