"""Claims of README.md, CONTRIBUTING.md, docs/ that no other test held: each test quotes its claim.

The map from every headline claim to its test is docs/testing.md. These tests read the documents
themselves where the claim is about what the document shows (a code example, a list of names, a
table of hooks), so that the document and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from jemkit.config import load_recipe
from jemkit.plugin_manager import load_plugins

from conftest import RECIPES, ROOT, TINY_DIGITS

README = (ROOT / "README.md").read_text(encoding="utf-8")
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")


def _code_block(text: str, language: str, containing: str) -> str:
    """The fenced ``language`` block of ``text`` that contains ``containing`` (exactly one)."""
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S) if containing in b]
    assert len(blocks) == 1, f"expected one ```{language} block with {containing!r}, found {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def builtin_plugins():
    """The first-party plugins alone (no entry points: the example plugin may be installed)."""
    loaded = load_plugins(entry_points=False)
    assert not loaded.failures, [f.message() for f in loaded.failures]
    return loaded


# --------------------------------------------------------------------------- README: Write a plugin


@pytest.fixture(scope="module")
def readme_plugin() -> Iterator[types.ModuleType]:
    """README "Write a plugin": the ``jemkit_mysampler.py`` example, executed as written."""
    module = types.ModuleType("jemkit_mysampler")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the class is made
    try:
        exec(compile(_code_block(README, "python", "# jemkit_mysampler.py"), "README.md", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


def test_readme_plugin_example_passes_the_contract_kit_and_is_noise_free_descent(readme_plugin):
    """README: "This one adds a sampler transition ... Noise-free gradient descent on the energy"."""
    from jemkit.testing import check_component, plugin_components

    (component,) = plugin_components(readme_plugin)
    assert (component.kind, component.name) == ("transition", "my_sgd")
    assert component.description == "Noise-free gradient descent on E(x)"
    check_component(component)  # shapes, determinism, dtype/device moves, the graph_safe claim
    transition = component.factory(component.params(step_size=0.25), None)
    centre = torch.tensor([0.5, -1.0])
    x = torch.tensor([[2.0, 3.0], [-1.0, 0.0]])
    result = transition.step(x, lambda z: 0.5 * (z - centre).pow(2).sum(1))  # E = |x - c|^2 / 2
    # one step of descent: x - 0.25 * (x - c), by hand
    assert torch.allclose(result.x, torch.tensor([[1.625, 2.0], [-0.625, -0.25]]))
    assert torch.allclose(result.energy, torch.tensor([0.5 * (1.5**2 + 4.0**2), 0.5 * (1.5**2 + 1.0**2)]))
    assert float(result.grad_norm) == pytest.approx((18.25**0.5 + 3.25**0.5) / 2)  # mean of |x - c|


def test_readme_plugin_example_is_used_by_a_recipe_with_one_line(readme_plugin, tmp_path):
    """README: "a recipe uses it with `sampler: {transition: {name: my_sgd, step_size: 0.5}, ...}`"."""
    from jemkit.train import Trainer

    plugins = load_plugins([("my_sgd", readme_plugin)])
    assert not plugins.failures, [f.message() for f in plugins.failures]
    assert "my_sgd" in plugins.registries["transition"]
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, "sampler.transition={name: my_sgd, step_size: 0.5}"])
    trainer = Trainer(plugins, cfg, tmp_path / "run")
    transition = trainer.sampler.transition
    assert type(transition).__name__ == "MySGD" and transition.step_size == 0.5


# --------------------------------------------------------------------------- README: Recipes


def test_readme_lists_every_builtin_transition_and_initialiser(builtin_plugins):
    """README "Recipes": "Transitions: `sgld` ..., `hmc`; initialisers: `uniform` ..., `informative_buffer`"."""
    line = " ".join(README.split("Transitions:", 1)[1].split("\n\n", 1)[0].split())
    transitions, initialisers = line.split("initialisers:")
    assert sorted(re.findall(r"`(\w+)`", transitions)) == builtin_plugins.registries["transition"].names()
    assert sorted(re.findall(r"`(\w+)`", initialisers)) == builtin_plugins.registries["chain_init"].names()


def test_readme_recipe_table_names_the_shipped_recipes():
    """README "Recipes": the table names every shipped recipe file, and only those."""
    table = README.split("## Recipes", 1)[1].split("\n\n", 2)[1]
    named: set[str] = set()
    for cell in re.findall(r"`(recipes/[^`]+)`", table):
        brace = re.fullmatch(r"(.*)\{(.*)\}(.*)", cell)
        options = brace.group(2).split(",") if brace else [""]
        named |= {f"{brace.group(1)}{o}{brace.group(3)}" if brace else cell for o in options}
    shipped = {f"recipes/{p.name}" for p in RECIPES.glob("*.yaml")}
    assert named == shipped


def test_readme_sampler_and_loss_snippet_is_the_digits_recipe_and_builds(builtin_plugins, tmp_path):
    """README "Recipes": the YAML example (K = 20, eval mode, a 10,000-slot buffer with reinit 0.05,
    SGLD step 1.0 and noise 0.01, the JEM loss) is valid and is what jem_digits.yaml holds."""
    from jemkit.config import component_params, section
    from jemkit.train import Trainer

    snippet = OmegaConf.create(_code_block(README, "yaml", "K transitions per iteration"))
    recipe = load_recipe(RECIPES / "jem_digits.yaml")
    shipped = OmegaConf.to_container(recipe.sampler)
    for dotted, value in _leaves(OmegaConf.to_container(snippet.sampler)):
        assert _get(shipped, dotted) == value, f"sampler.{dotted}"
    name, params = component_params(builtin_plugins.registries["loss"], section(recipe, "loss"), "loss")
    resolved = {"name": name, **vars(params)}  # the recipe with the loss's defaults filled in
    for key, value in OmegaConf.to_container(snippet.loss).items():
        assert resolved[key] == value, f"loss.{key}"
    merged = OmegaConf.merge(load_recipe(RECIPES / "jem_digits.yaml", TINY_DIGITS[:2]), snippet)
    trainer = Trainer(builtin_plugins, merged, tmp_path / "run")
    assert trainer.sampler.steps == 20 and trainer.sampler.init.buffer.shape[0] == 10_000
    assert trainer.sampler.init.reinit_freq == 0.05


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def _get(node, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


# --------------------------------------------------------------------------- README: Training that survives


def test_a_replay_buffer_the_run_directory_cannot_hold_is_refused_before_training(builtin_plugins, monkeypatch, tmp_path):
    """README "Clear errors, not tracebacks": "a replay buffer that cannot fit in memory or on disk
    (predicted from `sampler.init.size` before allocating)" is one paragraph with the fix. The disk
    half: keep_checkpoints step checkpoints + best + one being written, each holding the buffer."""
    from jemkit import build
    from jemkit.errors import RecipeError
    from jemkit.train import Trainer

    plugins = builtin_plugins
    overrides = [*TINY_DIGITS, "sampler.init.size=1000", "train.keep_checkpoints=3"]
    buffer = 1000 * (4 * 8 * 8 + 8)  # 1,000 chains of 1x8x8 float32 plus an int64 label: 264,000 bytes
    need = buffer * (3 + 2)  # 1,320,000 bytes
    monkeypatch.setattr(build, "free_bytes", lambda path: need - 1)
    with pytest.raises(RecipeError) as refused:
        Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", overrides), tmp_path / "a")
    message = str(refused.value)
    assert f"{need:,} bytes on the disk of" in message and f"{need - 1:,} bytes free" in message
    assert f"at most {(need - 1) // (buffer // 1000 * 5):,} chains fit" in message  # 999
    assert "Lower sampler.init.size or train.keep_checkpoints" in message and "\n" not in message
    assert not any((tmp_path / "a").rglob("*.safetensors"))
    monkeypatch.setattr(build, "free_bytes", lambda path: need)  # exactly enough room
    Trainer(plugins, load_recipe(RECIPES / "jem_digits.yaml", overrides), tmp_path / "b")


def test_a_second_writer_is_told_the_holders_pid_host_and_start_time(tmp_path):
    """README "One writer per run directory": "a second writer is refused with the holder's pid,
    host and start time"."""
    import os
    import socket
    import time

    pytest.importorskip("fcntl")
    from jemkit.errors import RunLockedError
    from jemkit.run_lock import LOCK_NAME, RunLock, holder_info

    holder = RunLock(tmp_path, purpose="training").acquire()
    started = holder_info(tmp_path / LOCK_NAME)["started"]
    assert abs(started - time.time()) < 60
    with pytest.raises(RunLockedError) as refused:
        RunLock(tmp_path, purpose="evaluation").acquire()  # another open file: flock refuses it
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    assert f"process {os.getpid()} on host {socket.gethostname()} (training since {when}:" in str(refused.value)
    holder.release()
    successor = RunLock(tmp_path, purpose="evaluation").acquire()
    assert successor.held
    successor.release()


# --------------------------------------------------------------------------- README: Scale out and speed up


def test_cuda_graphs_capture_exactly_the_transitions_the_readme_names(builtin_plugins):
    """README "Scale out and speed up": `performance.cuda_graphs` captures the K-step loop for
    "sgld, langevin and proximal_sgld" (the transitions that declare `graph_safe`)."""
    from jemkit.testing import tiny_context

    safe = set()
    for component in builtin_plugins.registries["transition"]:
        built = component.factory(component.params() if component.params else None, tiny_context())
        if built.graph_safe:
            safe.add(component.name)
    assert safe == {"sgld", "langevin", "proximal_sgld"}


# --------------------------------------------------------------------------- README: Sweeps


@pytest.mark.parametrize(
    "jobs, environment, expected",
    [(1, {}, None), (2, {}, "4"), (3, {}, "2"), (16, {}, "1"), (4, {"OMP_NUM_THREADS": "7"}, "7")],
)
def test_sweep_members_get_their_share_of_the_cores(monkeypatch, jobs, environment, expected):
    """README "Sweeps": "`--jobs N` at a time (then `OMP_NUM_THREADS` = cores / N unless set)";
    and each member, as a `jemkit` process, sleeps idle OpenMP threads (`OMP_WAIT_POLICY=PASSIVE`)."""
    from jemkit import sweep

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    env = sweep.member_env(jobs)
    assert env.get("OMP_NUM_THREADS") == expected
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


# --------------------------------------------------------------------------- CONTRIBUTING: hooks and CLI


def _hook_table(heading: str) -> list[list[str]]:
    """Body rows (cells without backticks) of the first Markdown table after ``heading``."""
    lines = CONTRIBUTING.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.strip().startswith("|"):
            break
        table.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
    return table[2:]  # after the header and its --- row


#: Hook specifications the plugin guide does not describe (none: every one has its row).
NOT_IN_THE_GUIDE: set[str] = set()


def test_contributing_hook_tables_are_the_hook_specifications():
    """CONTRIBUTING "Write a component" (kind | hook | returns) and "Hooks, RunView and state"
    (hook | when | arguments) name real hooks, each kind with its registration hook, and together
    with `jemkit_register_commands` they cover every hook specification."""
    from jemkit import hookspecs

    specs = {name for name in dir(hookspecs) if name.startswith("jemkit_")}
    registration = {row[0]: row[1] for row in _hook_table("3. Register it from the matching hook:")}
    assert registration == hookspecs.REGISTRATION_HOOKS
    lifecycle = [row[0] for row in _hook_table("The trainer calls each plugin's implementation in turn:")]
    assert set(lifecycle) <= specs and len(lifecycle) == len(set(lifecycle)) == 11
    assert "`jemkit_register_commands(subparsers)`" in CONTRIBUTING
    documented = set(registration.values()) | set(lifecycle) | {"jemkit_register_commands"}
    assert documented <= specs
    assert specs - documented == NOT_IN_THE_GUIDE


def test_every_cli_module_is_a_listed_subcommand_with_add_parser():
    """CONTRIBUTING: "`jemkit/cli/`, has one module per subcommand, each with `add_parser(subparsers)`,
    listed in `jemkit.cli.COMMAND_MODULES`"."""
    from jemkit.cli import COMMAND_MODULES, builtin_parser

    modules = {f"jemkit.cli.{p.stem}" for p in (ROOT / "jemkit" / "cli").glob("*.py") if p.stem != "__init__"}
    assert set(COMMAND_MODULES) == modules
    for name in COMMAND_MODULES:
        assert callable(importlib.import_module(name).add_parser), name
    parser, _ = builtin_parser()
    (commands,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert len(commands.choices) >= len(COMMAND_MODULES)
    for command in ("run", "eval", "sample", "list-plugins", "runs", "compare", "doctor", "new-plugin", "import"):
        assert command in commands.choices, command


def test_every_test_that_needs_cuda_carries_the_gpu_marker():
    """CONTRIBUTING "Develop and test": "GPU-only tests carry the `gpu` marker" (so that the
    default suite and `-m slow` leave them to benchmarks/gpu_check.sh): every test skipped without
    CUDA is marked `gpu`, by its decorators or by its module's `pytestmark`."""
    needing, unmarked = [], []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_marks = " ".join(
            ast.unparse(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = module_marks + " " + " ".join(ast.unparse(d) for d in node.decorator_list)
                if "cuda.is_available" in marks:
                    needing.append(f"{path.name}::{node.name}")
                    if "mark.gpu" not in marks:
                        unmarked.append(f"{path.name}::{node.name}")
    assert "test_gpu.py::test_cuda_graph_replay_matches_the_eager_loop" in needing, "the walk finds CUDA tests"
    assert "test_checkpoint.py::test_cuda_tensors_and_rng" in needing
    assert unmarked == []


# --------------------------------------------------------------------------- docs/architecture.md: layers


def _runtime_jemkit_imports(path: Path) -> set[str]:
    """``jemkit``/``jemkit_plugins`` modules ``path`` imports, leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ("jemkit", "jemkit_plugins")}


def test_the_contracts_layer_imports_nothing_above_it():
    """docs/architecture.md: "Four layers, each importing only from the layers below it": the
    contracts (`contracts.py`, `hookspecs.py`, `errors.py`) import no other jemkit module at run time."""
    layer = {"jemkit.contracts", "jemkit.hookspecs", "jemkit.errors"}
    for name in ("contracts.py", "hookspecs.py", "errors.py"):
        assert _runtime_jemkit_imports(ROOT / "jemkit" / name) <= layer, name


def test_only_the_entry_points_import_the_cli():
    """docs/architecture.md: the CLI is the top layer: no kernel service and no plugin imports
    `jemkit.cli`, except the two entry points that run a command (`entry.py`, the console script,
    and `api.py`, whose `jemkit.train` "runs exactly `jemkit run`")."""
    importers = set()
    for folder in ("jemkit", "plugins"):
        for path in (ROOT / folder).rglob("*.py"):
            if "cli" in path.relative_to(ROOT).parts:
                continue
            if any(m == "jemkit.cli" or m.startswith("jemkit.cli.") for m in _runtime_jemkit_imports(path)):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"jemkit/entry.py", "jemkit/api.py"}


# --------------------------------------------------------------------------- docs/results_single_seed.md: protocol


def test_the_digits_evaluation_protocol_is_the_one_results_md_states():
    """docs/results_single_seed.md "Protocol": refined after 10 transitions; ECE with 15 bins; OOD sets of 1,000
    inputs (inverted: the test inputs); PGD-20, step 2.5 eps / 20, no random start, L-inf 0.1/0.2/0.3
    and L2 0.5/1/2 on all 360 test inputs; 1,000 unconditional samples and 100 per class after 100
    steps; KID over 100 subsets; precision/recall with k = 3; 1,000 bootstrap replicates; seed 0."""
    from jemkit.evaluation import pgd
    from jemkit.evaluation.settings import resolve_settings
    from jemkit_plugins.evaluation import ood_sets

    s = resolve_settings("digits", {})
    assert (s.refine_steps, s.bins, s.pgd_steps, s.pgd_random_start) == (10, 15, 20, False)
    assert pgd.STEP_FACTOR == 2.5
    assert [e for e in s.eps_linf if e] == [0.1, 0.2, 0.3] and [e for e in s.eps_l2 if e] == [0.5, 1.0, 2.0]
    assert s.robust_n >= 360 and s.max_test is None
    assert (s.n_samples, s.n_samples // 10, s.sgld_steps) == (1000, 100, 100)
    assert (s.kid_subsets, s.pr_k, s.n_boot, s.seed) == (100, 3, 1000, 0)
    assert s.ood_sets == ["uniform_noise", "interpolations", "inverted", "sklearn_patches"]
    for params in (ood_sets.NoiseParams, ood_sets.InterpolationParams, ood_sets.PatchParams):
        assert params().size == 1000 <= s.ood_n, params.__name__


def test_the_shipped_digits_classifier_has_the_stated_test_accuracy():
    """docs/results_single_seed.md "Protocol": the digits classifier's "clean test accuracy 0.9806" (353 of the
    360 test images); the v2 weights shipped with jemkit give it on every machine."""
    from jemkit.contracts import BuildContext
    from jemkit_plugins.data.data_digits import DigitsParams, build_digits
    from jemkit_plugins.evaluation import feature_extractors as fx

    extractor = fx.build_digits_classifier(fx.DigitsClassifierParams(), BuildContext(input_shape=(1, 8, 8)))
    test = build_digits(DigitsParams(), BuildContext()).test
    with torch.no_grad():
        right = int((extractor.features_and_logits(test.x)[1].argmax(1) == test.targets).sum())
    assert (right, len(test.targets)) == (353, 360)
    assert round(right / 360, 4) == 0.9806 and "clean test accuracy 0.9806" in extractor.weights
