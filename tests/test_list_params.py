"""``jemkit list-plugins --params``: each component's recipe keys, types, defaults and docs."""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, field

import pytest

from jemkit import hookimpl
from jemkit.cli import main
from jemkit.errors import RegistryError
from jemkit.param_schema import describe_params, field_docs, json_value, type_name
from jemkit.plugin_manager import load_plugins

PARAM_KEYS = {"name", "type", "default", "required", "doc"}


def _by_name(infos):
    return {p.name: p for p in infos}


def _default_of(params_cls, name):
    """The default of field ``name`` straight from the dataclass (calling a default_factory)."""
    f = next(f for f in dataclasses.fields(params_cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@dataclass
class _Documented:
    """A params class exercising every doc convention."""

    #: Width of the probe,
    #: in pixels.
    width: int
    height: int = 4  #: Trailing doc.
    label: str = "#: not a doc"
    ratio: float | None = None
    """Docstring after the field.

    Second paragraph, not shown."""
    sizes: list[int] = field(default_factory=lambda: [1, 2], metadata={"doc": "From metadata."})
    # an ordinary comment is not a doc
    plain: bool = True


@dataclass
class _Derived(_Documented):
    #: Overridden doc.
    plain: bool = False
    extra: str = ""


def _probe_plugin(params_cls):
    @hookimpl
    def jemkit_register_transitions(registry):
        def build_probe(params, context):
            """A probe transition with a required parameter."""
            return params

        registry.register("probe_step", build_probe, params=params_cls)

    return types.SimpleNamespace(jemkit_register_transitions=jemkit_register_transitions)


@pytest.fixture
def probe_plugins(monkeypatch):
    """``jemkit.cli`` loads the built-in plugins plus a ``probe_step`` transition with params ``_Documented``."""
    loaded = load_plugins([("probe", _probe_plugin(_Documented))], entry_points=False)
    assert not loaded.failures, [f.message() for f in loaded.failures]
    monkeypatch.setattr("jemkit.cli.list_plugins.load_plugins", lambda: loaded)
    return loaded


def _json(capsys, *args):
    code = main(["list-plugins", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


# --------------------------------------------------------------------------- introspection


def test_sgld_step_size_default_comes_from_its_dataclass(plugins):
    params_cls = plugins.registries["transition"].get("sgld").params
    infos = _by_name(describe_params(params_cls))
    step = infos["step_size"]
    assert step.type == "float"
    assert not step.required
    assert step.default == _default_of(params_cls, "step_size") == params_cls().step_size
    assert [p.name for p in describe_params(params_cls)] == [f.name for f in dataclasses.fields(params_cls)]


def test_hmc_docs_come_from_the_comments_above_its_fields(plugins):
    infos = _by_name(describe_params(plugins.registries["transition"].get("hmc").params))
    assert infos["leapfrog_steps"].doc.startswith("Leapfrog steps L per transition")
    assert infos["leapfrog_steps"].type == "int"
    # A two-line ``#:`` block is joined into one line.
    jitter = infos["step_jitter"].doc
    assert "drawn per transition; breaks the periodic" in jitter and "\n" not in jitter
    assert infos["step_size"].doc == ""  # no comment above it


def test_list_default_factory_is_shown_as_its_value(plugins):
    params_cls = plugins.registries["optimizer"].get("adam").params
    betas = _by_name(describe_params(params_cls))["betas"]
    assert betas.type == "list[float]"
    assert betas.to_json()["default"] == list(_default_of(params_cls, "betas"))
    assert betas.default_text() == json.dumps(list(_default_of(params_cls, "betas")))


def test_required_field_and_every_doc_convention():
    infos = _by_name(describe_params(_Documented))
    width = infos["width"]
    assert width.required and width.default_text() == "required"
    assert width.to_json() == {
        "name": "width", "type": "int", "default": None, "required": True, "doc": "Width of the probe, in pixels.",
    }
    assert infos["height"].doc == "Trailing doc." and infos["height"].default == 4
    assert infos["label"].doc == "" and infos["label"].default_text() == '"#: not a doc"'
    assert infos["ratio"].doc == "Docstring after the field."
    assert infos["ratio"].type == "float | None" and infos["ratio"].to_json()["default"] is None
    assert infos["ratio"].default_text() == "null"
    assert infos["sizes"].doc == "From metadata." and infos["sizes"].default == [1, 2]
    assert infos["plain"].doc == ""


def test_subclass_docs_override_and_inherit():
    docs = field_docs(_Derived)
    assert docs["plain"] == "Overridden doc."
    assert docs["width"] == "Width of the probe, in pixels."
    assert [p.name for p in describe_params(_Derived)][-1] == "extra"


def test_no_source_no_docs_and_no_crash():
    built = dataclasses.make_dataclass("Built", [("n", int), ("xs", list[int], field(default_factory=list))])
    infos = describe_params(built)
    assert [(p.name, p.type, p.required, p.doc) for p in infos] == [("n", "int", True, ""), ("xs", "list[int]", False, "")]
    assert describe_params(None) == []


def test_type_names_and_json_values():
    from typing import Optional

    assert type_name(int) == "int"
    assert type_name(list[int]) == "list[int]"
    assert type_name(Optional[int]) == "Optional[int]"
    assert type_name("dict[str,  int]") == "dict[str, int]"
    assert json_value((1, float("inf"))) == [1, "inf"]
    assert json.loads(json.dumps(json_value({"a": {1, 2}, "b": object}))) == {"a": [1, 2], "b": repr(object)}


def test_registries_named_keeps_every_kind_and_suggests(plugins):
    picked = plugins.registries.named(["constant", "sgld"])
    assert {(c.kind, c.name) for c in picked} == {("schedule", "constant"), ("ood", "constant"), ("transition", "sgld")}
    with pytest.raises(RegistryError, match=r"Unknown component 'sgdl'\. Did you mean .*'sgld'"):
        plugins.registries.named(["sgld", "sgdl"])


# --------------------------------------------------------------------------- command line


def test_json_params_schema(capsys, plugins):
    rows = _json(capsys, "--params", "--json")
    assert {(r["kind"], r["name"]) for r in rows} == {(c.kind, c.name) for c in plugins.registries.components()}
    for row in rows:
        assert set(row) == {"plugin", "origin", "kind", "name", "description", "params"}
        for param in row["params"]:
            assert set(param) == PARAM_KEYS
            assert isinstance(param["doc"], str) and isinstance(param["type"], str)
            assert param["required"] or param["default"] is not None or "None" in param["type"]
    sgld = next(r for r in rows if (r["kind"], r["name"]) == ("transition", "sgld"))
    step = next(p for p in sgld["params"] if p["name"] == "step_size")
    assert step["default"] == plugins.registries["transition"].get("sgld").params().step_size
    cross_entropy = next(r for r in rows if r["name"] == "cross_entropy")
    assert cross_entropy["params"] == []


def test_json_without_params_is_unchanged(capsys):
    rows = _json(capsys, "--json", "sgld")
    assert [set(r) for r in rows] == [{"plugin", "origin", "kind", "name", "description"}]


def test_names_restrict_the_output(capsys):
    rows = _json(capsys, "--params", "--json", "sgld", "adam", "constant")
    assert sorted((r["kind"], r["name"]) for r in rows) == [
        ("ood", "constant"), ("optimizer", "adam"), ("schedule", "constant"), ("transition", "sgld"),
    ]
    assert next(r for r in rows if r["kind"] == "schedule")["params"] == []


def test_required_param_in_json_and_table(capsys, monkeypatch, probe_plugins):
    rows = _json(capsys, "--params", "--json", "probe_step")
    assert [r["name"] for r in rows] == ["probe_step"]
    width = rows[0]["params"][0]
    assert width == {"name": "width", "type": "int", "default": None, "required": True, "doc": "Width of the probe, in pixels."}

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list-plugins", "--params", "probe_step"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["width"][:3] == ["width", "int", "required"] and "Width of the probe, in pixels." in out
    assert rows["sizes"][1:4] == ["list[int]", "[1,", "2]"] and "From metadata." in out


def test_unknown_name_is_one_paragraph_with_a_suggestion(capsys):
    code = main(["list-plugins", "--params", "sgld", "sgdl"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert "Unknown component 'sgdl'" in captured.err
    assert "Did you mean" in captured.err and "'sgld'" in captured.err
    assert "jemkit list-plugins" in captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_table_lists_parameters_under_each_component(capsys, monkeypatch, plugins):
    monkeypatch.setenv("COLUMNS", "80")  # a plain terminal: one column per field, nothing folded
    assert main(["list-plugins", "--params", "sgld", "cross_entropy"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    sgld_row = next(i for i, line in enumerate(lines) if line.startswith("transition sgld"))
    step_size = plugins.registries["transition"].get("sgld").params().step_size
    step_row = next(i for i, line in enumerate(lines) if line.split()[:1] == ["step_size"])
    assert step_row > sgld_row
    assert lines[step_row].split()[:3] == ["step_size", "float", json.dumps(step_size)]
    assert "Multiplier of the energy gradient" in lines[step_row]
    assert "[sampling, built-in]" in out
    assert "(no parameters)" in out and any(line.startswith("loss cross_entropy") for line in lines)
    assert "adam" not in out  # restricted to the named components
