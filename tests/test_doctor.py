"""``jemkit doctor [--json]``: what a bug report needs, checked against the running process."""

from __future__ import annotations

import json
import os
import platform
import types

import pytest
import torch

import jemkit
from jemkit import hookimpl
from jemkit.doctor import caches, collect, data_roots
from jemkit.plugin_manager import load_plugins


def _doctor_json(cli) -> dict:
    result = cli("doctor", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_versions_devices_and_threads_are_those_of_this_process(cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    report = _doctor_json(cli)
    assert report["jemkit"]["version"] == jemkit.__version__
    assert report["python"]["version"] == platform.python_version()
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_build"] == torch.version.cuda
    assert report["cuda"]["available"] == torch.cuda.is_available()
    assert report["cuda"]["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report["cpu"]["logical_cores"] == os.cpu_count()
    assert 1 <= report["cpu"]["usable_cores"] <= os.cpu_count()
    assert report["threads"]["torch_threads"] == torch.get_num_threads()
    assert report["threads"]["env"] == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": None,
                                        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    flags = report["cpu"]["flags"]
    if flags:  # Linux: /proc/cpuinfo
        assert report["cpu"]["bf16_instructions"] == (flags["avx512_bf16"] or flags["amx_bf16"])


def test_every_plugin_package_with_its_version_components_and_commands(cli, plugins):
    packages = {p["package"]: p for p in _doctor_json(cli)["plugins"]}
    builtin = packages["jemkit"]
    assert builtin["version"] == jemkit.__version__
    listed = {(c["kind"], c["name"]) for c in builtin["components"]}
    assert listed == {(c.kind, c.name) for c in plugins.registries.components() if plugins.origins[c.plugin] == "built-in"}
    example = packages["jemkit-clipped-sgld"]
    assert example["version"] == "0.1.0" and example["plugins"] == ["clipped_sgld"]
    assert example["components"] == [{"kind": "transition", "name": "clipped_sgld", "plugin": "clipped_sgld"}]
    assert example["commands"] == ["clipped-sgld-demo"]


def _broken_plugins():
    """A plugin that fails half-way through registering, one whose command clashes with `run`."""

    def _factory(params, context):
        """A probe."""

    half = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_backbones(registry):
        registry.register("half_backbone", _factory, description="clamped to [low, high]")

    @hookimpl
    def jemkit_register_transitions(registry):
        registry.register("sgld", _factory)  # taken by the built-in sampling plugin

    half.jemkit_register_backbones = jemkit_register_backbones
    half.jemkit_register_transitions = jemkit_register_transitions

    clash = types.SimpleNamespace()

    @hookimpl
    def jemkit_register_commands(subparsers):
        subparsers.add_parser("run").set_defaults(handler=lambda *a: 0)

    clash.jemkit_register_commands = jemkit_register_commands
    return load_plugins([("half", half), ("clash", clash)])


def test_plugin_failures_are_reported_with_their_reasons(cli, monkeypatch):
    monkeypatch.setattr("jemkit.cli.doctor.load_plugins", _broken_plugins)
    report = _doctor_json(cli)
    failures = {f["plugin"]: f for f in report["plugin_failures"]}
    assert set(failures) == {"half", "clash"}
    assert failures["half"]["stage"] == "register" and failures["half"]["origin"] == "in-process"
    assert "Two plugins register a transition named 'sgld'" in failures["half"]["error"]
    assert "backbone 'half_backbone'" in failures["half"]["error"]  # rolled back, and said so
    assert failures["clash"]["stage"] == "commands" and "run" in failures["clash"]["error"]
    components = {(c["kind"], c["name"]) for p in report["plugins"] for c in p["components"]}
    assert ("backbone", "half_backbone") not in components and ("transition", "sgld") in components

    monkeypatch.setenv("COLUMNS", "250")
    table = cli("doctor")
    assert table.code == 0
    assert "plugin failures" in table.out and "Two plugins register a transition named 'sgld'" in table.out


def test_data_roots_say_what_they_hold_and_who_reads_them(tmp_path, plugins):
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "data" / "notes.txt").write_text("x")
    roots = {r["path"]: r for r in data_roots(plugins, cwd=tmp_path)}
    root = roots[str((tmp_path / "data").resolve())]
    assert root["exists"] and root["entries"] == ["cifar-10-batches-py/", "notes.txt"]
    assert "data cifar10" in root["used_by"] and "data digits" not in root["used_by"]  # digits: bundled, no root


def test_cache_sizes_are_measured(tmp_path):
    cache = tmp_path / "cache"
    (cache / "weights").mkdir(parents=True)
    (cache / "weights" / "a.safetensors").write_bytes(b"\0" * 1000)
    (cache / "b.bin").write_bytes(b"\1" * 24)
    rows = caches({"jemkit": cache, "missing": tmp_path / "nowhere"})
    assert rows == [
        {"name": "jemkit", "path": str(cache), "exists": True, "bytes": 1024, "files": 2, "partial": False},
        {"name": "missing", "path": str(tmp_path / "nowhere"), "exists": False, "bytes": 0, "files": 0, "partial": False},
    ]


def test_jemkit_cache_follows_its_environment_variable(monkeypatch, tmp_path, plugins):
    monkeypatch.setenv("JEMKIT_CACHE", str(tmp_path))
    report = collect(plugins)
    assert report["caches"][0]["name"] == "jemkit" and report["caches"][0]["path"] == str(tmp_path)
    json.dumps(report)  # JSON-ready throughout


@pytest.mark.parametrize("argv", [["doctor"], ["doctor", "--json"]])
def test_doctor_is_a_builtin_command(cli, argv):
    assert cli(*argv).code == 0
