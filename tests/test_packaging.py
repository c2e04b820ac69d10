"""What a regular (non-editable) install ships: every package of the source tree."""

from __future__ import annotations

import pytest

from conftest import ROOT


def test_every_source_package_is_listed_for_setuptools():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    source = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jemkit").rglob("__init__.py")}
    assert "jemkit.evaluation" in source
    missing = source - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}: `pip install .` drops them"
    assert config["package-dir"]["jemkit_plugins"] == "plugins" and "jemkit_plugins" in listed


def test_every_plugin_subpackage_is_listed_for_setuptools():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    plugins = ROOT / "plugins"
    source = {
        ".".join(("jemkit_plugins", *p.parent.relative_to(plugins).parts)) for p in plugins.rglob("__init__.py")
    }
    assert {"jemkit_plugins.models", "jemkit_plugins.samplers"} <= source
    missing = source - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"
