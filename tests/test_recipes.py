"""Recipe validation: every bad recipe is a clear one-paragraph error, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from jemkit.build import build_experiment
from jemkit.config import load_recipe
from jemkit.errors import RecipeError, RegistryError

from conftest import RECIPES


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _assert_clean_error(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out
    assert "error:" in result.err
    for needle in needles:
        assert needle in result.err.replace("\n", " "), (needle, result.err)


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe, plugins):
    """Every shipped recipe parses, and its component sections validate against their dataclasses."""
    from jemkit.build import build_train_params
    from jemkit.config import component_params, section

    cfg = load_recipe(recipe)
    build_train_params(cfg)
    for kind, dotted in [
        ("data", "data"),
        ("backbone", "model.backbone"),
        ("head", "model.head"),
        ("loss", "loss"),
        ("optimizer", "optimizer"),
    ]:
        name, params = component_params(plugins.registries[kind], section(cfg, dotted), dotted)
        assert name in plugins.registries[kind]


def test_missing_recipe_file(cli, tmp_path):
    result = cli("run", tmp_path / "nope.yaml")
    _assert_clean_error(result, "does not exist", "nope.yaml")


def test_invalid_yaml(cli, tmp_path):
    path = _write(tmp_path, "data: {name: digits\nmodel: [\n")
    _assert_clean_error(cli("run", path), "not valid YAML")


def test_unknown_component_name(cli, tmp_path):
    text = (RECIPES / "jem_digits.yaml").read_text().replace("name: sgld", "name: sgdl")
    result = cli("run", _write(tmp_path, text), "--out", tmp_path / "run")
    _assert_clean_error(result, "Unknown transition 'sgdl'", "Did you mean 'sgld'", "jemkit list-plugins")
    assert not (tmp_path / "run").exists(), "nothing is written for a bad recipe"


def test_unknown_key(cli, tmp_path):
    result = cli("run", RECIPES / "jem_digits.yaml", "sampler.transition.step_sise=0.5", "--out", tmp_path / "run")
    _assert_clean_error(result, "sampler.transition.step_sise", "Did you mean 'step_size'")


def test_wrong_type(cli, tmp_path):
    result = cli("run", RECIPES / "jem_digits.yaml", "sampler.init.size=lots", "--out", tmp_path / "run")
    _assert_clean_error(result, "sampler.init.size")


def test_value_rejected_by_component(cli, tmp_path):
    result = cli("run", RECIPES / "jem_digits.yaml", "sampler.init.reinit_freq=1.5", "--out", tmp_path / "run")
    _assert_clean_error(result, "sampler.init", "reinit_freq")


def test_unknown_top_level_key(cli, tmp_path):
    text = (RECIPES / "jem_digits.yaml").read_text() + "\nepochs: 3\n"
    _assert_clean_error(cli("run", _write(tmp_path, text)), "unknown top-level key", "'epochs'")


def test_missing_section(cli, tmp_path):
    _assert_clean_error(cli("run", _write(tmp_path, "data: {name: digits}\n")), "missing required section", "model")


def test_section_without_name(cli, tmp_path):
    text = (RECIPES / "jem_digits.yaml").read_text().replace("head: {name: linear}", "head: {bias: true}")
    _assert_clean_error(cli("run", _write(tmp_path, text)), "model.head", "needs a `name:`")


def test_bad_override_syntax(cli):
    result = cli("run", RECIPES / "jem_digits.yaml", "train.epochs")
    assert result.code == 2
    assert "Traceback" not in result.err


def test_bad_train_key(cli, tmp_path):
    result = cli("run", RECIPES / "jem_digits.yaml", "train.epoch=3", "--out", tmp_path / "run")
    _assert_clean_error(result, "train.epoch", "Did you mean 'epochs'")


def test_print_config_applies_overrides(cli):
    result = cli("run", RECIPES / "jem_digits.yaml", "train.epochs=7", "--print-config")
    assert result.code == 0
    cfg = OmegaConf.create(result.out)
    assert cfg.train.epochs == 7 and cfg.name == "jem_digits"


def test_out_dir_with_files_is_not_overwritten(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("{}\n")
    result = cli("run", RECIPES / "jem_digits.yaml", "--out", out)
    _assert_clean_error(result, "already holds files", "--resume")
    assert (out / "metrics.jsonl").read_text() == "{}\n"


def test_unknown_name_in_build_raises_registry_error(plugins):
    cfg = load_recipe(RECIPES / "jem_digits.yaml", ["optimizer.name=adamw"])
    with pytest.raises(RegistryError, match="Unknown optimizer 'adamw'"):
        build_experiment(plugins, cfg)


def test_override_parse_error_is_recipe_error():
    with pytest.raises(RecipeError):
        load_recipe(RECIPES / "jem_digits.yaml", ["=3"])


def test_switching_a_component_by_override_starts_its_section_afresh():
    from jemkit.config import load_recipe

    cfg = load_recipe(RECIPES / "jem_digits.yaml", ["sampler.transition.name=mala", "sampler.transition.step_size=0.02"])
    assert dict(cfg.sampler.transition) == {"name": "mala", "step_size": 0.02}  # sgld's noise is gone
    assert cfg.sampler.init.name == "replay_buffer" and cfg.sampler.init.size == 10000  # siblings untouched
    same = load_recipe(RECIPES / "jem_digits.yaml", ["sampler.transition.name=sgld", "sampler.transition.noise=0.0"])
    assert dict(same.sampler.transition) == {"name": "sgld", "step_size": 1.0, "noise": 0.0}  # same name: merged


def test_sections_a_recipe_leaves_out_are_the_defaults_table(plugins):
    """Without seed, sampler and schedule a recipe gets the registered components jemkit.defaults names."""
    import torch

    from jemkit import defaults
    from jemkit.build import build_by_name

    cfg = load_recipe(RECIPES / "jem_digits.yaml", ["train.batch_size=16", "performance.channels_last=false"])
    for key in ("seed", "sampler", "schedule"):
        del cfg[key]
    experiment = build_experiment(plugins, cfg)
    assert experiment.context.seed == defaults.SEED == 1
    sampler = experiment.sampler
    assert (sampler.steps, sampler.model_mode) == (defaults.SAMPLER_STEPS, defaults.SAMPLER_MODEL_MODE) == (20, "eval")
    init = build_by_name(plugins, "chain_init", defaults.CHAIN_INIT, experiment.context)
    transition = build_by_name(plugins, "transition", defaults.TRANSITION, experiment.context)
    assert type(sampler.init) is type(init) and type(sampler.transition) is type(transition)
    assert (sampler.transition.step_size, sampler.transition.noise) == (1.0, 0.01), "the transition's own defaults"
    schedule = experiment.schedule
    spare = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert type(schedule) is type(build_by_name(plugins, "schedule", defaults.SCHEDULE, experiment.context, spare))
    lr = [group["lr"] for group in experiment.optimizer.param_groups]
    for _ in range(5):
        experiment.optimizer.step()
        schedule.step()
    assert [group["lr"] for group in experiment.optimizer.param_groups] == lr, "the default schedule keeps the LR"


def test_calibrated_digits_recipe_is_the_measured_ablation_arm():
    """jem_calibrated_digits.yaml is jem_digits.yaml with exactly the three keys of the arm
    `ablation_px01_longer_l2` of scripts/calibration_ablation.sh, whose numbers its comment quotes."""
    calibrated = OmegaConf.to_container(load_recipe(RECIPES / "jem_calibrated_digits.yaml"))
    arm = OmegaConf.to_container(
        load_recipe(RECIPES / "jem_digits.yaml", ["loss.px=0.1", "train.epochs=60", "loss.energy_l2=0.01"])
    )
    differ = {key for key in calibrated.keys() | arm.keys() if calibrated.get(key) != arm.get(key)}
    assert differ == {"name", "description"}, differ
    script = (RECIPES.parent / "scripts" / "calibration_ablation.sh").read_text()
    assert '"ablation_px01_longer_l2 loss.px=0.1 train.epochs=60 loss.energy_l2=0.01"' in script
