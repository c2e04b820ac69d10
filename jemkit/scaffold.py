"""``jemkit new-plugin``: write an installable third-party plugin package for one component.

The package (from the templates in ``jemkit/templates``) holds a ``pyproject.toml`` with the
``jemkit`` entry point, one module with a documented parameters dataclass, the component, its
factory and its registration hook, a test that runs :mod:`jemkit.testing` and checks the
component's behaviour, a short recipe that uses it, and a README (install, use, test, publish).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jemkit import __version__
from jemkit.errors import JemkitError
from jemkit.hookspecs import REGISTRATION_HOOKS

#: Component kinds ``new-plugin`` writes a template for.
SCAFFOLD_KINDS: tuple[str, ...] = ("transition", "backbone", "head", "loss", "chain_init", "data")

#: Recipe section (dotted) that chooses a component of each kind.
SECTIONS: dict[str, str] = {
    "transition": "sampler.transition",
    "backbone": "model.backbone",
    "head": "model.head",
    "loss": "loss",
    "chain_init": "sampler.init",
    "data": "data",
}

#: The recipe's sections when the plugin provides none of them: a tiny JEM run on digits.
RECIPE_DEFAULTS: dict[str, str] = {
    "data": "{name: digits, noise_std: 0.03}",
    "backbone": "{name: convnet, channels: [8, 16], feature_dim: 16, norm: none}",
    "head": "{name: linear}",
    "init": "{name: replay_buffer, size: 500, reinit_freq: 0.05}",
    "transition": "{name: sgld, step_size: 1.0, noise: 0.01}",
    "loss": "{name: jem, pyx: 1.0, px: 0.1, pxy: 0.0}",
}
#: Recipe slot of each kind (``chain_init`` fills ``init``).
SLOTS: dict[str, str] = {"chain_init": "init"}
#: What else a kind's recipe changes: 2-D data needs a backbone for vectors.
RECIPE_EXTRAS: dict[str, dict[str, str]] = {"data": {"backbone": "{name: mlp, hidden: [32, 32]}"}}

#: Extra imports of a kind's test module, and the names it takes from jemkit.
TEST_IMPORTS: dict[str, str] = {"loss": "import torch.nn.functional as F\n"}
CONTRACTS_NAMES: dict[str, str] = {"loss": "Batch, BuildContext"}
TESTING_NAMES: dict[str, str] = {"loss": "check_component, contract_cases, tiny_model"}

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")


class ScaffoldError(JemkitError):
    """``jemkit new-plugin`` cannot write the package as asked."""


@dataclass(frozen=True)
class PluginNames:
    """The names one plugin package uses, derived from the name given to ``new-plugin``."""

    #: Registry name of the component and entry-point name: ``momentum_sgld``.
    component: str
    #: Import name of the module: ``jemkit_momentum_sgld``.
    module: str
    #: Distribution name on PyPI: ``jemkit-momentum-sgld``.
    distribution: str
    #: Class of the component: ``MomentumSgld``; its parameters: ``MomentumSgldParams``.
    class_name: str

    @classmethod
    def from_name(cls, name: str) -> PluginNames:
        """``momentum-sgld``, ``momentum_sgld`` or ``jemkit-momentum-sgld`` all give the same names."""
        raw = name.strip().lower()
        for prefix in ("jemkit-", "jemkit_"):
            if raw.startswith(prefix):
                raw = raw[len(prefix):]
        if not _NAME.match(raw):
            raise ScaffoldError(
                f"Plugin name {name!r} is not usable: use lower-case letters, digits, '-' or '_', starting "
                "with a letter, e.g. `jemkit new-plugin momentum-sgld --kind transition`."
            )
        component = raw.replace("-", "_")
        return cls(
            component=component,
            module=f"jemkit_{component}",
            distribution=f"jemkit-{component.replace('_', '-')}",
            class_name="".join(part.capitalize() for part in component.split("_")),
        )


def _template(name: str) -> string.Template:
    return string.Template((resources.files("jemkit") / "templates" / name).read_text(encoding="utf-8"))


def _recipe_sections(kind: str, component: str) -> dict[str, str]:
    sections = dict(RECIPE_DEFAULTS)
    sections.update(RECIPE_EXTRAS.get(kind, {}))
    sections[SLOTS.get(kind, kind)] = f"{{name: {component}}}"
    return sections


def render(names: PluginNames, kind: str) -> dict[str, str]:
    """The package's files (relative path -> text) for a component of ``kind``."""
    if kind not in SCAFFOLD_KINDS:
        raise ScaffoldError(f"Unknown kind {kind!r} for new-plugin; choose one of {', '.join(SCAFFOLD_KINDS)}.")
    values = {
        "component": names.component,
        "module": names.module,
        "distribution": names.distribution,
        "distribution_underscored": names.distribution.replace("-", "_"),
        "class_name": names.class_name,
        "params_class": f"{names.class_name}Params",
        "kind": kind,
        "hook": REGISTRATION_HOOKS[kind],
        "section": SECTIONS[kind],
        "jemkit_version": __version__,
        "extra_imports": TEST_IMPORTS.get(kind, ""),
        "contracts_names": CONTRACTS_NAMES.get(kind, "BuildContext"),
        "testing_names": TESTING_NAMES.get(kind, "check_component, contract_cases"),
        **_recipe_sections(kind, names.component),
    }
    values["behaviour_tests"] = _template(f"{kind}_test.py.tmpl").substitute(values).rstrip()
    return {
        "pyproject.toml": _template("pyproject.toml.tmpl").substitute(values),
        "README.md": _template("README.md.tmpl").substitute(values),
        f"{names.module}.py": _template(f"{kind}.py.tmpl").substitute(values),
        f"tests/test_{names.component}.py": _template("test.py.tmpl").substitute(values),
        "recipe.yaml": _template("recipe.yaml.tmpl").substitute(values),
    }


def new_plugin(name: str, kind: str, out: Path | None = None, taken: set[str] | frozenset[str] = frozenset()) -> Path:
    """Write the plugin package for component ``name`` of ``kind`` into ``out`` (default
    ``./jemkit-<name>``); returns the folder. ``taken`` holds the names of the installed
    components of that kind: reusing one would make jemkit skip the new plugin."""
    names = PluginNames.from_name(name)
    files = render(names, kind)
    if names.component in taken:
        raise ScaffoldError(
            f"A {kind} named {names.component!r} is already installed (see `jemkit list-plugins "
            f"{names.component}`); jemkit would skip a second one. Choose another name."
        )
    folder = Path(out) if out is not None else Path.cwd() / names.distribution
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScaffoldError(
            f"{str(folder)!r} already exists and is not an empty folder; new-plugin never overwrites files. "
            "Pass another --out, or remove it first."
        )
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


__all__ = ["PluginNames", "SCAFFOLD_KINDS", "ScaffoldError", "new_plugin", "render"]
