"""``jemkit new-plugin``: the package it writes passes jemkit's contract checks, builds its recipe,
and, installed for real, is listed with its package and version, passes its own tests, trains and
resumes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY_DIGITS
from jemkit.build import build_experiment
from jemkit.config import load_recipe
from jemkit.plugin_manager import load_plugins
from jemkit.scaffold import SCAFFOLD_KINDS, SECTIONS, PluginNames, ScaffoldError, new_plugin, render
from jemkit.testing import check_component, plugin_components

tomllib = pytest.importorskip("tomllib")


def _import(folder: Path, names: PluginNames, monkeypatch):
    """The generated module, imported from its file (as the installed package would be)."""
    spec = importlib.util.spec_from_file_location(names.module, folder / f"{names.module}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, names.module, module)
    spec.loader.exec_module(module)
    return module


def test_names_follow_the_python_packaging_conventions():
    for given in ("momentum-sgld", "momentum_sgld", "jemkit-momentum-sgld", "Momentum-SGLD"):
        names = PluginNames.from_name(given)
        assert (names.component, names.module, names.distribution, names.class_name) == (
            "momentum_sgld", "jemkit_momentum_sgld", "jemkit-momentum-sgld", "MomentumSgld",
        )
    for bad in ("", "2fast", "has space", "dots.not.allowed", "trailing-"):
        with pytest.raises(ScaffoldError, match="is not usable"):
            PluginNames.from_name(bad)


def test_cli_refuses_taken_names_and_existing_folders(cli, tmp_path):
    taken = cli("new-plugin", "sgld", "--kind", "transition", "--out", tmp_path / "a")
    assert taken.code == 2 and "A transition named 'sgld' is already installed" in taken.err
    assert "Traceback" not in taken.err and not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    busy = cli("new-plugin", "fresh-step", "--kind", "transition", "--out", tmp_path / "b")
    assert busy.code == 2 and "never overwrites" in busy.err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["keep.txt"]
    with pytest.raises(SystemExit) as wrong_kind:  # argparse: "invalid choice", exit code 2
        cli("new-plugin", "x", "--kind", "sampler")
    assert wrong_kind.value.code == 2


@pytest.mark.parametrize("kind", SCAFFOLD_KINDS)
def test_every_kind_passes_the_contract_checks_and_its_recipe_builds(kind, tmp_path, monkeypatch, cli):
    names = PluginNames.from_name(f"scaffolded-{kind.replace('_', '-')}")
    result = cli("new-plugin", names.component, "--kind", kind, "--out", tmp_path / "pkg")
    assert result.code == 0, result.err
    folder = tmp_path / "pkg"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        render(names, kind)
    )
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["name"] == names.distribution
    assert project["project"]["entry-points"]["jemkit"] == {names.component: names.module}
    compile((folder / "tests" / f"test_{names.component}.py").read_text(), "test", "exec")

    module = _import(folder, names, monkeypatch)
    (component,) = plugin_components(module)
    assert (component.kind, component.name) == (kind, names.component)
    assert component.description != "(no description)"
    check_component(component)

    # Every parameter is documented for `jemkit list-plugins --params`.
    from jemkit.param_schema import describe_params

    assert all(p.doc for p in describe_params(component.params)), describe_params(component.params)

    recipe = folder / "recipe.yaml"
    cfg = load_recipe(recipe)
    assert OmegaConf.select(cfg, f"{SECTIONS[kind]}.name") == names.component
    plugins = load_plugins([(names.component, module)], entry_points=False)
    assert not plugins.failures, [f.message() for f in plugins.failures]
    experiment = build_experiment(plugins, cfg, source=str(recipe))
    assert experiment.train.max_steps is not None and experiment.train.max_steps <= 50  # a short run


# --------------------------------------------------------------------------- installed for real


def _run(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), COLUMNS="200")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _jemkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "jemkit", *map(str, args), cwd=cwd)


@pytest.fixture(params=["transition", "backbone"])
def installed(request, tmp_path_factory):
    """A plugin package written by `jemkit new-plugin`, pip-installed (editable, no dependencies)
    into this environment for the test and uninstalled afterwards."""
    kind = request.param
    names = PluginNames.from_name(f"e2e-probe-{kind}")
    folder = new_plugin(names.component, kind, tmp_path_factory.mktemp("scaffold") / names.distribution)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    request.addfinalizer(lambda: _run(*pip, "uninstall", "-y", names.distribution))
    install = _run(*pip, "install", "--no-build-isolation", "--no-deps", "-e", str(folder))
    assert install.returncode == 0, install.stderr
    return kind, names, folder


def test_generated_package_installs_lists_tests_trains_and_resumes(installed, tmp_path):
    kind, names, folder = installed

    listing = _jemkit("list-plugins", "--json", names.component)
    assert listing.returncode == 0, listing.stderr
    assert "warning" not in listing.stderr, listing.stderr
    assert json.loads(listing.stdout) == [
        {
            "plugin": names.component,
            "origin": f"{names.distribution} 0.1.0",
            "kind": kind,
            "name": names.component,
            "description": json.loads(listing.stdout)[0]["description"],
        }
    ]

    own_tests = _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=folder)
    assert own_tests.returncode == 0, own_tests.stdout + own_tests.stderr
    assert " passed" in own_tests.stdout and "failed" not in own_tests.stdout

    run = tmp_path / "run"
    tiny = [o for o in TINY_DIGITS if not o.startswith(f"{SECTIONS[kind]}.")]
    first = _jemkit("run", folder / "recipe.yaml", "--out", run, *tiny)
    assert first.returncode == 0, first.stderr + first.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 3, summary
    assert OmegaConf.select(OmegaConf.load(run / "config.yaml"), f"{SECTIONS[kind]}.name") == names.component

    resumed = _jemkit("run", "--resume", run, "train.max_steps=5")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 5, summary
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in line]
    assert steps == [1, 2, 3, 4, 5]
