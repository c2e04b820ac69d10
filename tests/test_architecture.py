"""The layering rules, checked on the source: the kernel names no plugin, and plugins reach the
kernel only through its contracts and services, never through the evaluation command's internals."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, those inside functions and classes included.

    Relative imports resolve against the file's package (``plugins/`` is installed as
    ``jemkit_plugins``); ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parts = path.relative_to(root).parent.parts
    package = ["jemkit_plugins", *parts[1:]] if parts and parts[0] == "plugins" else list(parts)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(p for p in (*package[: len(package) - node.level + 1], base) if p)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def offences(folder: Path, forbidden: str, root: Path = ROOT) -> list[str]:
    """``file:line imports module`` for every import of ``forbidden`` (or a submodule) under ``folder``."""
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in imported_modules(path, root):
            if module == forbidden or module.startswith(forbidden + "."):
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


def test_the_walk_finds_every_kind_of_import(tmp_path):
    source = tmp_path / "plugins" / "samplers" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "import os.path\n"
        "from jemkit import evaluation\n"
        "def later():\n"
        "    from jemkit.evaluation.runner import evaluate\n"
        "    class Inner:\n"
        "        import jemkit_plugins.models.heads as heads\n"
        "from .sampling import SGLD\n"
        "from .. import data\n"
    )
    modules = {module for _, module in imported_modules(source, tmp_path)}
    assert {"os.path", "jemkit.evaluation", "jemkit.evaluation.runner", "jemkit_plugins.models.heads"} <= modules
    assert {"jemkit_plugins.samplers.sampling", "jemkit_plugins.data"} <= modules
    kernel = tmp_path / "jemkit" / "cli" / "probe.py"
    kernel.parent.mkdir(parents=True)
    kernel.write_text("import torch\n\ndef draw():\n    from jemkit_plugins.evaluation import toy_plot\n")
    assert offences(tmp_path / "jemkit", "jemkit_plugins", tmp_path) == [
        "jemkit/cli/probe.py:4 imports jemkit_plugins.evaluation",
        "jemkit/cli/probe.py:4 imports jemkit_plugins.evaluation.toy_plot",
    ]
    assert offences(tmp_path / "plugins", "jemkit.evaluation", tmp_path)[0] == (
        "plugins/samplers/probe.py:2 imports jemkit.evaluation"
    )
    assert offences(tmp_path / "plugins", "jemkit.eval", tmp_path) == [], "a prefix is not a parent module"


def test_the_kernel_never_imports_the_first_party_plugins():
    assert len(list((ROOT / "jemkit").rglob("*.py"))) > 20
    bad = offences(ROOT / "jemkit", "jemkit_plugins")
    assert not bad, "the kernel must look plugins up through registries and hooks:\n" + "\n".join(bad)


def test_plugins_never_import_the_evaluation_command():
    assert len(list((ROOT / "plugins").rglob("*.py"))) > 10
    bad = offences(ROOT / "plugins", "jemkit.evaluation")
    assert not bad, "plugins use jemkit.contracts (e.g. FeatureExtractor), not jemkit.evaluation:\n" + "\n".join(bad)
