"""Property-based tests: malformed recipes and overrides end in a clear error or a valid run.

Never a traceback: every failure a user can cause must surface as a ``JemkitError``.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def _attempt(tmp: Path, recipe: Path, overrides: list[str]) -> None:
    """Build and run one step; only JemkitError may escape."""
    try:
        cfg = load_recipe(recipe, [*TINY_DIGITS, "train.max_steps=1", *overrides])
        trainer = Trainer(PLUGINS, cfg, tmp)
        trainer.prepare_run_dir()
        trainer.fit()
    except JemkitError as exc:
        assert str(exc).strip(), "an error must say what is wrong"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(keys, values), min_size=1, max_size=3))
def test_random_overrides_end_in_clear_error_or_valid_run(tmp_path_factory, pairs):
    overrides = [f"{key}={_format(value)}" for key, value in pairs]
    _attempt(tmp_path_factory.mktemp("run"), RECIPES / "jem_digits.yaml", overrides)


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
