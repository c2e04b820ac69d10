"""Property-based tests: malformed recipes and overrides end in a clear error or a valid run.

Never a traceback: every failure a user can cause must surface as a ``JemkitError``.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pytest
import torch

from jemkit.config import load_recipe
from jemkit.errors import JemkitError
from jemkit.plugin_manager import load_plugins
from jemkit.train import Trainer

from conftest import RECIPES, TINY_DIGITS

PLUGINS = load_plugins(entry_points=False)

REAL_KEYS = [
    "seed", "device", "name",
    "data.name", "data.noise_std", "data.test_fraction", "data.val_size",
    "model.backbone.name", "model.backbone.channels", "model.backbone.feature_dim", "model.backbone.norm",
    "model.backbone.leak", "model.backbone.dropout", "model.head.name", "model.head.bias",
    "sampler.steps", "sampler.model_mode", "sampler.init.name", "sampler.init.size",
    "sampler.init.reinit_freq", "sampler.init.class_conditional", "sampler.transition.name",
    "sampler.transition.step_size", "sampler.transition.noise",
    "loss.name", "loss.px", "loss.pyx", "loss.pxy", "loss.energy_l2",
    "optimizer.name", "optimizer.lr", "optimizer.betas", "optimizer.weight_decay",
    "schedule.name", "schedule.warmup_steps", "schedule.milestones", "schedule.gamma",
    "train.batch_size", "train.epochs", "train.log_every", "train.keep_checkpoints", "train.best_mode",
    "guard.max_abs_loss", "guard.lr_scale", "guard.max_rollbacks",
]

identifier = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=8)
keys = st.one_of(st.sampled_from(REAL_KEYS), st.lists(identifier, min_size=1, max_size=3).map(".".join))
scalars = st.one_of(
    st.integers(min_value=-3, max_value=100_000),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    st.text(alphabet=string.ascii_letters + string.digits + "_-.:[]{}, ", max_size=10),
)
values = st.one_of(scalars, st.lists(st.integers(min_value=-2, max_value=64), max_size=4))


def _format(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _names_a_key(message: str, keys: list[str]) -> bool:
    """Whether ``message`` names one of the dotted ``keys`` or a section on its path (``'v'`` for an
    unknown ``v.w``, ``sampler.init`` for ``sampler.init.size``) as a whole word."""
    for key in keys:
        parts = key.split(".")
        for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if re.search(rf"(?<![\w.]){re.escape(prefix)}(?!\w)", message):
                return True
    return False


def _attempt(tmp: Path, recipe: Path, overrides: list[str], keys: list[str] | None = None) -> None:
    """Build and run one step; only JemkitError may escape, and with ``keys`` its message names
    one of them (the offending override)."""
    try:
        cfg = load_recipe(recipe, [*TINY_DIGITS, "train.max_steps=1", *overrides])
        trainer = Trainer(PLUGINS, cfg, tmp)
        trainer.prepare_run_dir()
        trainer.fit()
    except JemkitError as exc:
        assert str(exc).strip(), "an error must say what is wrong"
        if keys is not None:
            assert _names_a_key(str(exc), keys), (overrides, str(exc))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_random_overrides_end_in_clear_error_or_valid_run(tmp_path_factory, pairs):
    overrides = [f"{key}={_format(value)}" for key, value in pairs]
    _attempt(tmp_path_factory.mktemp("run"), RECIPES / "jem_digits.yaml", overrides, keys=[key for key, _ in pairs])


def test_names_a_key_matches_whole_keys_and_sections_only():
    assert _names_a_key("unknown top-level key(s) 'v'. A recipe's sections are ...", ["v.w"])
    assert _names_a_key("sampler.init: size must be at least 1", ["sampler.init.size"])
    assert not _names_a_key("move the setting", ["v.w"])  # 'v' inside a word is not the key
    assert not _names_a_key("train.batch_size=15 does not split", ["batch_size"])


#: Valid overrides and what each must change in the built experiment ``e``.
VALID = [
    ("sampler.steps=3", lambda e: e.sampler.steps == 3),
    ("sampler.model_mode=train", lambda e: e.sampler.model_mode == "train"),
    ("sampler.init.reinit_freq=0.5", lambda e: e.sampler.init.reinit_freq == 0.5),
    ("sampler.init.class_conditional=true", lambda e: e.sampler.init.num_classes == 10),
    ("sampler.transition.step_size=0.5", lambda e: e.sampler.transition.step_size == 0.5),
    ("loss.px=0.5", lambda e: e.loss.params.px == 0.5),
    ("loss.pxy=1.0", lambda e: e.loss.params.pxy == 1.0),
    ("optimizer.lr=0.01", lambda e: e.optimizer.defaults["lr"] == 0.01),
    ("schedule.warmup_steps=0", lambda e: e.optimizer.param_groups[0]["lr"] == 1e-3),
    ("model.backbone.feature_dim=8", lambda e: e.model.head.fc.in_features == 8),
    ("model.backbone.norm=batch", lambda e: any(isinstance(m, torch.nn.BatchNorm2d) for m in e.model.modules())),
    ("train.batch_size=8", lambda e: e.train.batch_size == 8),
]


@pytest.mark.parametrize("override, applied", VALID, ids=[o for o, _ in VALID])
def test_valid_overrides_build_and_train_one_step(tmp_path, override, applied):
    cfg = load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, "train.max_steps=1", override])
    trainer = Trainer(PLUGINS, cfg, tmp_path / "run")
    assert applied(trainer.experiment), override
    batch = next(trainer._batches(0))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_step(batch)
    assert math.isfinite(float(metrics["loss"])), metrics
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters())), "one step trains"


recipe_lines = st.lists(
    st.one_of(
        st.sampled_from((RECIPES / "jem_digits.yaml").read_text().splitlines()),
        st.text(alphabet=string.printable, max_size=30),
    ),
    max_size=30,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=recipe_lines)
def test_mangled_recipe_files_end_in_clear_error_or_valid_run(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("recipe")
    recipe = folder / "mangled.yaml"
    recipe.write_text("\n".join(lines))
    _attempt(folder / "run", recipe, [])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_binary_garbage_recipe_is_a_clear_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("recipe")
    recipe = folder / "garbage.yaml"
    recipe.write_bytes(data)
    _attempt(folder / "run", recipe, [])


# --------------------------------------------------------------------------- the issue's hostile inputs

import pytest  # noqa: E402

from jemkit.config import to_yaml  # noqa: E402

HOSTILE = [
    # (override, words the one-paragraph error must contain)
    ("seed=99999999999999999999999", ["seed must be an integer from 0 to 4294967295"]),
    ("seed=-1", ["seed must be an integer"]),
    ("device=mps", ["device 'mps'", "device=cpu"]),
    ("device=meta", ["cpu, cuda, cuda:N or mps"]),
    ("train=5", ["section 'train' must be a mapping", "got 5"]),
    ("guard=0", ["section 'guard' must be a mapping"]),
    ("sampler.init.size=1e10", ["sampler.init.size"]),
    ("sampler.init.size=10000000000", ["sampler.init.size=10000000000", "bytes of memory", "chains fit"]),
    ("description='${evil:x}'", ["description", "resolver jemkit does not know"]),
    ("description=${nope}", ["description", "refers to a key that does not exist"]),
    ("description=${description}", ["description", "refers to itself"]),
    ("description=${oc.env:JEMKIT_TEST_SURELY_UNSET}", ["JEMKIT_TEST_SURELY_UNSET", "set the variable"]),
    ("name=../../x", ["name '../../x' is not a plain name"]),
    ("name=/tmp/elsewhere", ["is not a plain name"]),
]


@pytest.mark.parametrize("override, words", HOSTILE, ids=[o for o, _ in HOSTILE])
def test_each_hostile_input_of_the_issue_is_a_clear_error(tmp_path, override, words):
    try:
        cfg = load_recipe(RECIPES / "jem_digits.yaml", [*TINY_DIGITS, "train.max_steps=1", override])
        Trainer(PLUGINS, cfg, tmp_path / "run")
    except JemkitError as exc:
        message = str(exc)
    else:
        pytest.fail(f"{override} was accepted")
    for word in words:
        assert word in message, (word, message)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.safetensors"))


def test_interpolations_in_a_recipe_file_are_checked_when_it_loads(tmp_path):
    text = (RECIPES / "jem_digits.yaml").read_text()
    for value, words in (("'${evil:x}'", "resolver"), ("'${model.nope}'", "does not exist"), ("'${description}'", "itself")):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"description: {value}\n" + "\n".join(l for l in text.splitlines() if not l.startswith("description")))
        try:
            load_recipe(recipe)
        except JemkitError as exc:
            assert "description" in str(exc) and words in str(exc), str(exc)
        else:
            pytest.fail(f"{value} was accepted")


def test_values_from_the_environment_stay_interpolations(monkeypatch):
    monkeypatch.setenv("JEMKIT_TEST_SECRET", "hunter2")
    cfg = load_recipe(
        RECIPES / "jem_digits.yaml",
        ["description=${oc.env:JEMKIT_TEST_SECRET}", "name=${oc.env:JEMKIT_TEST_NAME,digits}", "data.noise_std=${oc.env:JEMKIT_TEST_NOISE,0.03}"],
    )
    assert cfg.description == "hunter2"  # the run itself uses the value ...
    text = to_yaml(cfg)
    assert "hunter2" not in text  # ... but the stored recipe holds the interpolation
    assert "${oc.env:JEMKIT_TEST_SECRET}" in text and "${oc.env:JEMKIT_TEST_NOISE,0.03}" in text
    from jemkit.config import environment_variables

    assert environment_variables(cfg) == ["JEMKIT_TEST_NAME", "JEMKIT_TEST_NOISE", "JEMKIT_TEST_SECRET"]


# --------------------------------------------------------------------------- fuzzing --resume

from conftest import run_cli  # noqa: E402

_resumed_run: dict[str, object] = {}


def _trained_run(tmp_path_factory) -> object:
    if "path" not in _resumed_run:
        out = tmp_path_factory.mktemp("fuzz_resume") / "run"
        result = run_cli("run", RECIPES / "jem_digits.yaml", "--out", out, *TINY_DIGITS, "train.max_steps=2")
        assert result.code == 0, result.err
        _resumed_run["path"] = out
    return _resumed_run["path"]


checkpoints = st.one_of(
    st.none(), st.sampled_from(["last", "best", "0", "2", "-1", "1e3", "../x", "", "step_000002.safetensors"]),
    st.text(alphabet=string.printable, max_size=12),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(keys, values), max_size=2), which=checkpoints)
def test_random_resume_overrides_and_checkpoints_end_in_clear_error_or_valid_run(tmp_path_factory, pairs, which):
    import shutil

    source = _trained_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(source, run)
    args = ["run", "--resume", run, *[f"{key}={_format(value)}" for key, value in pairs], "train.max_steps=3"]
    if which is not None:
        args += ["--checkpoint", which]
    try:
        result = run_cli(*args)  # only a JemkitError (exit 2, one paragraph) may come out, never a traceback
    except SystemExit as exc:  # argparse's usage error (an option-like --checkpoint value)
        assert exc.code == 2
        return
    assert result.code in (0, 2), result.err
    if result.code == 2:
        assert "error:" in result.err and "Traceback" not in result.err
        if which is None and pairs:  # only the overrides can be at fault: the message names one of them
            assert _names_a_key(result.err, [key for key, _ in pairs]), (pairs, result.err)
